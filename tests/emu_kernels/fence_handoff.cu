// The last-block hand-off between blocks, as reduce.cu and conv2d_tc.cu's wgrad use it, for the race
// check of global memory (tests/test_emu_fences.py): every thread of every block writes its partial,
// the block counts itself in `arrivals` with an atomic, and the last block to arrive adds up every
// block's partials. Correct where a device-scope fence orders the partials before the atomic (the
// release) and the atomic before the reads (the acquire); the variants leave one of those out.

// How a variant releases its partials and acquires the others'
enum Handoff {
    EVERY_THREAD_FENCES,       // each thread: partial, __threadfence(); then a barrier; thread 0's atomic
    THREAD0_FENCES,            // the partials, a barrier, then thread 0: __threadfence(), atomic (cumulative)
    PLANT_NO_RELEASE,          // BUG: no fence between the partials and the atomic
    PLANT_NO_ACQUIRE,          // BUG: the last block reads with no fence after the atomic
    PLANT_BLOCK_SCOPE,         // BUG: __threadfence_block() orders nothing between blocks
    PLANT_WRITE_AFTER_RELEASE  // BUG: a block writes its partial again after it has counted itself
};

template <Handoff H>
__device__ void last_block_sum(const float* __restrict__ x, float* __restrict__ partials,
                               unsigned int* __restrict__ arrivals, float* __restrict__ out)
{
    __shared__ int last;
    const int t = threadIdx.x, at = blockIdx.x * blockDim.x + t;
    partials[at] = 2.0f * x[at];
    if (H == EVERY_THREAD_FENCES || H == PLANT_NO_ACQUIRE || H == PLANT_WRITE_AFTER_RELEASE) __threadfence();
    if (H == PLANT_BLOCK_SCOPE) __threadfence_block();
    __syncthreads();
    if (t == 0) {
        if (H == THREAD0_FENCES) __threadfence();
        last = atomicAdd(arrivals, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (H == PLANT_WRITE_AFTER_RELEASE) partials[at] = 3.0f * x[at];
    if (!last) return;
    if (H == PLANT_BLOCK_SCOPE) __threadfence_block();
    else if (H != PLANT_NO_ACQUIRE) __threadfence();
    float sum = 0.0f;
    for (unsigned int b = 0; b < gridDim.x; ++b) sum += partials[b * blockDim.x + t];
    out[t] = sum;
}

#define HANDOFF_KERNEL(name, variant)                                                               \
    extern "C" __global__ void name(const float* __restrict__ x, float* __restrict__ partials,      \
                                    unsigned int* __restrict__ arrivals, float* __restrict__ out) { \
        last_block_sum<variant>(x, partials, arrivals, out);                                        \
    }
HANDOFF_KERNEL(every_thread_fences, EVERY_THREAD_FENCES)
HANDOFF_KERNEL(thread0_fences, THREAD0_FENCES)
HANDOFF_KERNEL(plant_no_release, PLANT_NO_RELEASE)
HANDOFF_KERNEL(plant_no_acquire, PLANT_NO_ACQUIRE)
HANDOFF_KERNEL(plant_block_scope, PLANT_BLOCK_SCOPE)
HANDOFF_KERNEL(plant_write_after_release, PLANT_WRITE_AFTER_RELEASE)
