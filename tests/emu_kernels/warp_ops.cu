// Every warp primitive once, with its lane arithmetic, for comparison with a NumPy model:
// out[t * 9 + k] = the k-th result of thread t (blocks of 64 threads: two full warps).
extern "C" __global__ void warp_ops(const float* __restrict__ x, const double* __restrict__ d, float* __restrict__ out,
                                    int width)
{
    const int t = threadIdx.x;
    const float v = x[t];
    float* o = out + 9 * t;
    o[0] = __shfl_sync(0xffffffffu, v, 5, width);
    o[1] = __shfl_up_sync(0xffffffffu, v, 3, width);
    o[2] = __shfl_down_sync(0xffffffffu, v, 3, width);
    o[3] = __shfl_xor_sync(0xffffffffu, v, 6, width);
    o[4] = (float)__shfl_down_sync(0xffffffffu, d[t], 1, width);
    const unsigned int ballot = __ballot_sync(0xffffffffu, v > 0.0f);
    o[5] = (float)(ballot & 0xffffu);
    o[6] = (float)(ballot >> 16);
    o[7] = (float)(__any_sync(0xffffffffu, v > 2.0f) + 2 * __all_sync(0xffffffffu, v > -3.0f));
    o[8] = (float)__shfl_sync(0xffffffffu, t, (t + 1) % 32);
}
