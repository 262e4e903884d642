// The weight-gradient tiles' epilogue, shared by conv2d_wgrad.cu and conv3d_wgrad.cu. A header of its own,
// not igemm.cuh: NVRTC's register allocation of the fprop and dgrad tiles moves with igemm.cuh's text (one
// more helper there gave conv3d_fprop_small float32 a 32-byte spill at its 168 registers on sm_90).

// Store this thread's accumulators of the tile at (m0, n0) to the row-major out[m * columns + column],
// rows m < rows and columns < columns only (the wgrad kernels' dw, its filter taps contiguous)
template <class Tile>
__device__ __forceinline__ void igemm_store_row_major(const REAL (&acc)[Tile::TM][Tile::TN], REAL* out, int m0, int n0,
                                                      int rows, int columns)
{
    const int tm = igemm_tm<Tile>(), tn = igemm_tn<Tile>();
#pragma unroll
    for (int i = 0; i < Tile::TM; ++i) {
        const int m = m0 + igemm_offset<Tile::RUN_M>(i, tm);
        if (m >= rows) continue;
#pragma unroll
        for (int j = 0; j < Tile::TN; ++j) {
            const int column = n0 + igemm_offset<Tile::RUN_N>(j, tn);
            if (column < columns) out[m * columns + column] = acc[i][j];
        }
    }
}
