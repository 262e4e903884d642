// Direct 3x3 convolution, stride 1, padding 1 (NCHW, weights KCRS): the emulator benchmark's conv
// fprop. A block computes a 16x16 output tile of 8 output channels for one image; the input tile
// (18x18) and the 8x3x3 weights of one input channel at a time are staged in shared memory.
#define TILE 16
#define KPB 8

extern "C" __global__ void __launch_bounds__(256)
conv3x3_direct(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
               int C, int H, int W, int K)
{
    __shared__ float xs[TILE + 2][TILE + 2];
    __shared__ float ws[KPB][9];
    const int tiles_w = (W + TILE - 1) / TILE;
    const int oh = (blockIdx.x / tiles_w) * TILE + threadIdx.y;
    const int ow = (blockIdx.x % tiles_w) * TILE + threadIdx.x;
    const int k0 = blockIdx.y * KPB, n = blockIdx.z;
    const int t = threadIdx.y * TILE + threadIdx.x;
    float acc[KPB];
#pragma unroll
    for (int k = 0; k < KPB; ++k) acc[k] = 0.0f;
    for (int c = 0; c < C; ++c) {
        const float* plane = x + ((long long)n * C + c) * H * W;
        for (int l = t; l < (TILE + 2) * (TILE + 2); l += TILE * TILE) {
            const int ih = oh - threadIdx.y + l / (TILE + 2) - 1, iw = ow - threadIdx.x + l % (TILE + 2) - 1;
            xs[l / (TILE + 2)][l % (TILE + 2)] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? plane[ih * W + iw] : 0.0f;
        }
        if (t < KPB * 9) {
            const int k = k0 + t / 9;
            ws[t / 9][t % 9] = k < K ? w[((long long)k * C + c) * 9 + t % 9] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < KPB; ++k)
#pragma unroll
            for (int r = 0; r < 3; ++r)
#pragma unroll
                for (int s = 0; s < 3; ++s)
                    acc[k] += ws[k][r * 3 + s] * xs[threadIdx.y + r][threadIdx.x + s];
        __syncthreads();
    }
    if (oh < H && ow < W)
        for (int k = 0; k < KPB; ++k)
            if (k0 + k < K) y[(((long long)n * K + k0 + k) * H + oh) * W + ow] = acc[k];
}
