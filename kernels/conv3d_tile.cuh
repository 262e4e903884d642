// What the 3-D implicit-GEMM kernels (conv3d_fprop.cu, conv3d_dgrad.cu) add to igemm.cuh's tiles: the
// float64 small tile's occupancy and the three-field tap masks (igemm.cuh's two-field mask with a depth
// field, so one LOP3 still tests a gathered load).

// The fp64 small tile runs 2 blocks an SM (128 registers) where conv2d's runs 3 (80): the depth walk's
// registers spill at 80 (fprop 16 bytes on sm_90 with NVRTC 13.5, dgrad 44 on sm_70 and sm_75;
// cnn_gpu.gpu.conv3d.TILES)
#if REAL_IS_DOUBLE
#define CONV3D_SMALL_BLOCKS 2
#else
#define CONV3D_SMALL_BLOCKS IGEMM_SMALL_BLOCKS
#endif

// Tap-mask fields: taps t of the depth in bits [0, 10), r of the rows in [10, 21), s of the columns in
// [21, 32) (cnn_gpu.gpu.conv3d.MASK_TAPS)
#define MASK_ROWS_AT 10
#define MASK_COLUMNS_AT 21

__device__ __forceinline__ unsigned conv3d_tap_bits(int origin, int taps, int dil, int size, int field)
{
    unsigned bits = 0;
#pragma unroll
    for (int t = 0; t < 11; ++t)
        if (t < min(taps, field) && (unsigned)(origin + t * dil) < (unsigned)size) bits |= 1u << t;
    return bits;
}
// All ones (every tap passes) for a filter past a field: the launcher's zero-bordered copy of the gathered
// operand (x, or dgrad's dy) holds all its taps
__device__ __forceinline__ unsigned conv3d_tap_mask(int d_origin, int T, int dil_d, int D, int h_origin, int R,
                                                    int dil_h, int H, int w_origin, int S, int dil_w, int W)
{
    if (T > MASK_ROWS_AT || R > MASK_COLUMNS_AT - MASK_ROWS_AT || S > 32 - MASK_COLUMNS_AT) return ~0u;
    return conv3d_tap_bits(d_origin, T, dil_d, D, MASK_ROWS_AT)
           | conv3d_tap_bits(h_origin, R, dil_h, H, MASK_COLUMNS_AT - MASK_ROWS_AT) << MASK_ROWS_AT
           | conv3d_tap_bits(w_origin, S, dil_w, W, 32 - MASK_COLUMNS_AT) << MASK_COLUMNS_AT;
}
// The mask bits of tap (t, r, s); a tap past its field selects another bit or none (the clamping
// funnel shifts keep it defined), which only the all-ones mask sees
__device__ __forceinline__ unsigned conv3d_tap_select(int t, int r, int s)
{
    return __funnelshift_lc(0u, 1u, t) | __funnelshift_lc(0u, 1u << MASK_ROWS_AT, r)
           | __funnelshift_lc(0u, 1u << MASK_COLUMNS_AT, s);
}
