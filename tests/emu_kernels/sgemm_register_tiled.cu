// SGEMM with 64x64 block tiles and a 4x4 register tile per thread (256 threads): the emulator
// benchmark's "shared-memory SGEMM". C[M,N] = A[M,K] * B[K,N], row-major.
#define BM 64
#define BN 64
#define BK 16

extern "C" __global__ void __launch_bounds__(256)
sgemm_64x64(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K)
{
    __shared__ float As[BK][BM];  // transposed: As[k][m]
    __shared__ float Bs[BK][BN];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += BK) {
        for (int l = threadIdx.x; l < BM * BK; l += 256) {
            const int m = l / BK, k = l % BK, r = row0 + m, c = k0 + k;
            As[k][m] = (r < M && c < K) ? A[r * K + c] : 0.0f;
        }
        for (int l = threadIdx.x; l < BK * BN; l += 256) {
            const int k = l / BN, n = l % BN, r = k0 + k, c = col0 + n;
            Bs[k][n] = (r < K && c < N) ? B[r * N + c] : 0.0f;
        }
        __syncthreads();
        for (int k = 0; k < BK; ++k) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
            for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            const int r = row0 + ty + 16 * i, c = col0 + tx + 16 * j;
            if (r < M && c < N) C[r * N + c] = acc[i][j];
        }
}
