// Block sum with warp shuffles: one partial sum per block, written to out[blockIdx.x].
#ifndef REAL
#define REAL float
#endif

__device__ __forceinline__ REAL warp_sum(REAL v)
{
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

extern "C" __global__ void block_sum(const REAL* __restrict__ x, REAL* __restrict__ out, int n)
{
    __shared__ REAL warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    REAL v = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        v += x[i];
    v = warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : (REAL)0;
        v = warp_sum(v);
        if (lane == 0) out[blockIdx.x] = v;
    }
}
