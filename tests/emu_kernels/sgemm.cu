// Tiled shared-memory SGEMM: C[M,N] = A[M,K] * B[K,N], row-major, TILE x TILE threads per block.
#ifndef REAL
#define REAL float
#endif
#define TILE 16

extern "C" __global__ void sgemm(const REAL* __restrict__ A, const REAL* __restrict__ B, REAL* __restrict__ C,
                                 int M, int N, int K)
{
    __shared__ REAL As[TILE][TILE];
    __shared__ REAL Bs[TILE][TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * TILE + ty;
    const int col = blockIdx.x * TILE + tx;
    REAL acc = 0;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : (REAL)0;
        Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(k0 + ty) * N + col] : (REAL)0;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < TILE; ++k)
            acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }
    if (row < M && col < N)
        C[row * N + col] = acc;
}
