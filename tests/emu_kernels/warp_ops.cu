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

// Warp exchanges whose mask leaves lanes out, each half of a warp in its own branch with its own mask:
// the lower `low_lanes` lanes and the others each sum their x with a shuffle butterfly (a lane adds its
// partner's value only where the partner is in its group), count their positive x (ballot), vote, and
// pass the result on after __syncwarp(mask). out[t * 4 + k]: sum, count, votes, neighbour's sum.
extern "C" __global__ void masked_groups(const float* __restrict__ x, float* __restrict__ out, int low_lanes)
{
    const int t = threadIdx.x, lane = t % 32;
    const unsigned int low = low_lanes >= 32 ? 0xffffffffu : (1u << low_lanes) - 1u;
    float v = x[t], sum = v;
    float* o = out + 4 * t;
    if (lane < low_lanes) {
        for (int offset = 16; offset > 0; offset /= 2) {
            const float other = __shfl_xor_sync(low, sum, offset);
            if ((lane ^ offset) < low_lanes && (lane & offset) == 0) sum += other;
        }
        sum = __shfl_sync(low, sum, 0);
        o[1] = (float)__popc(__ballot_sync(low, v > 0.0f));
        o[2] = (float)(__any_sync(low, v > 1.0f) + 2 * __all_sync(low, v > -2.5f));
        o[0] = sum;
        __syncwarp(low);
        o[3] = out[4 * (t - lane + (lane + 1) % low_lanes)];
    } else {
        const unsigned int high = ~low;
        for (int offset = 1; offset < 32; offset *= 2) {   // the sum down to the group's first lane
            const float other = __shfl_down_sync(high, sum, offset);
            if (lane + offset < 32) sum += other;
        }
        sum = __shfl_sync(high, sum, low_lanes);
        o[1] = (float)__popc(__ballot_sync(high, v > 0.0f));
        o[2] = (float)(__any_sync(high, v > 1.0f) + 2 * __all_sync(high, v > -2.5f));
        o[0] = sum;
        __syncwarp(high);
        o[3] = out[4 * (t - lane + low_lanes + (lane - low_lanes + 1) % (32 - low_lanes))];
    }
}

// BUG: each half's mask also names a lane of the other half, which waits in the other half's exchange:
// neither completes
extern "C" __global__ void crossed_masks(const float* __restrict__ x, float* __restrict__ out)
{
    const int t = threadIdx.x;
    if (t < 16)
        out[t] = __shfl_xor_sync(0x0001ffffu, x[t], 1);
    else
        out[t] = __shfl_xor_sync(0xffff0001u, x[t], 1);
}

// Masks that overlap without a deadlock (valid CUDA): the first `n` lanes sum their x with shuffles
// under the ballot of their condition while the others wait at the __syncwarp() after the branch;
// inside, the first 8 lanes also exchange under a nested mask (out[32 + t]: lane t's neighbour's x).
extern "C" __global__ void nested_masks(const float* __restrict__ x, float* __restrict__ out, int n)
{
    const int t = threadIdx.x;
    float v = t < n ? x[t] : 0.0f;
    const unsigned int active = __ballot_sync(0xffffffffu, t < n);
    if (t < n) {
        for (int offset = 16; offset > 0; offset /= 2) {
            const float other = __shfl_down_sync(active, v, offset);
            if (t + offset < n) v += other;
        }
        if (t < 8) out[32 + t] = __shfl_xor_sync(active & 0xffu, x[t], 1);
    }
    __syncwarp();
    out[t] = v;
}

// BUG: lane 5 returns before the exchange its group's mask names it in
extern "C" __global__ void masked_exchange_with_exited_lane(const float* __restrict__ x, float* __restrict__ out)
{
    const int t = threadIdx.x;
    if (t >= 16 || t == 5) return;
    out[t] = __shfl_xor_sync(0x0000ffffu, x[t], 1);
}
