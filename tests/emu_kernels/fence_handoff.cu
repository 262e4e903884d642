// The last-block hand-off between blocks, as reduce.cu and conv2d_tc.cu's wgrad use it, for the race
// check of global memory (tests/test_emu_fences.py): every thread of every block writes its partial,
// the block counts itself in `arrivals` with an atomic, and the last block to arrive adds up every
// block's partials. Correct where a device-scope fence orders the partials before the atomic (the
// release) and the atomic before the reads (the acquire); the variants leave one of those out.

// How a variant releases its partials and acquires the others'
enum Handoff {
    EVERY_THREAD_FENCES,       // each thread: partial, __threadfence(); then a barrier; thread 0's atomic
    THREAD0_FENCES,            // the partials, a barrier, then thread 0: __threadfence(), atomic (cumulative)
    EVERY_THREAD_COUNTS,       // each thread: partial, __threadfence(), its own atomic (no barrier)
    THREAD0_RESETS,            // THREAD0_FENCES, and the last block's thread 0 sets the count back to 0
                               // after its atomic, for the next launch (conv2d_tc.cu's wgrad)
    THREAD1_RESETS,            // THREAD0_FENCES, and the last block's thread 1 sets the count back to 0
                               // after the barrier that follows thread 0's atomic
    PLANT_NO_RELEASE,          // BUG: no fence between the partials and the atomic
    PLANT_NO_ACQUIRE,          // BUG: the last block reads with no fence after the atomic
    PLANT_BLOCK_SCOPE,         // BUG: __threadfence_block() orders nothing between blocks
    PLANT_WRITE_AFTER_RELEASE, // BUG: a block writes its partial again after it has counted itself
    PLANT_NO_BARRIER,          // BUG: thread 0 fences and counts with no barrier after the others' partials
    PLANT_FENCES_AFTER_BARRIER,// BUG: thread 0 fences before the barrier, the others after it: nothing
                               // orders their fences before thread 0's atomic
    PLANT_RESET_FIRST          // BUG: THREAD0_RESETS with the first block to arrive resetting the count,
                               // under the other blocks' atomics
};

template <Handoff H>
__device__ void last_block_sum(const float* __restrict__ x, float* __restrict__ partials,
                               unsigned int* __restrict__ arrivals, float* __restrict__ out)
{
    __shared__ int last;
    const int t = threadIdx.x, at = blockIdx.x * blockDim.x + t;
    if (H == EVERY_THREAD_COUNTS) {   // any thread may find itself last
        if (t == 0) last = 0;
        __syncthreads();
    }
    partials[at] = 2.0f * x[at];
    if (H == EVERY_THREAD_FENCES || H == PLANT_NO_ACQUIRE || H == PLANT_WRITE_AFTER_RELEASE ||
        (H == PLANT_FENCES_AFTER_BARRIER && t == 0))
        __threadfence();
    if (H == PLANT_BLOCK_SCOPE) __threadfence_block();
    if (H == EVERY_THREAD_COUNTS) {
        __threadfence();
        if (atomicAdd(arrivals, 1u) == gridDim.x * blockDim.x - 1) last = 1;
    } else {
        if (H != PLANT_NO_BARRIER) __syncthreads();
        if (H == PLANT_FENCES_AFTER_BARRIER && t != 0) __threadfence();
        if (t == 0) {
            const bool resets = H == THREAD0_RESETS || H == PLANT_RESET_FIRST;
            if (H == THREAD0_FENCES || H == PLANT_NO_BARRIER || H == THREAD1_RESETS || resets) __threadfence();
            const unsigned int arrived = atomicAdd(arrivals, 1u);
            last = arrived == gridDim.x - 1;
            if (resets && arrived == (H == THREAD0_RESETS ? gridDim.x - 1 : 0u)) *arrivals = 0;
        }
    }
    __syncthreads();
    if (H == PLANT_WRITE_AFTER_RELEASE) partials[at] = 3.0f * x[at];
    if (!last) return;
    if (H == PLANT_BLOCK_SCOPE) __threadfence_block();
    else if (H != PLANT_NO_ACQUIRE) __threadfence();
    if (H == THREAD1_RESETS && t == 1) *arrivals = 0;
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
HANDOFF_KERNEL(every_thread_counts, EVERY_THREAD_COUNTS)
HANDOFF_KERNEL(thread0_resets, THREAD0_RESETS)
HANDOFF_KERNEL(thread1_resets, THREAD1_RESETS)
HANDOFF_KERNEL(plant_no_release, PLANT_NO_RELEASE)
HANDOFF_KERNEL(plant_no_acquire, PLANT_NO_ACQUIRE)
HANDOFF_KERNEL(plant_block_scope, PLANT_BLOCK_SCOPE)
HANDOFF_KERNEL(plant_write_after_release, PLANT_WRITE_AFTER_RELEASE)
HANDOFF_KERNEL(plant_no_barrier, PLANT_NO_BARRIER)
HANDOFF_KERNEL(plant_fences_after_barrier, PLANT_FENCES_AFTER_BARRIER)
HANDOFF_KERNEL(plant_reset_first, PLANT_RESET_FIRST)

// BUG: block 0 releases its partials, block 1 acquires them, block 2 reads them having acquired
// nothing (what block 1 holds is not block 2's). For the forward schedule, three blocks.
extern "C" __global__ void plant_read_without_acquire(const float* __restrict__ x, float* __restrict__ partials,
                                                      unsigned int* __restrict__ arrivals, float* __restrict__ out)
{
    const int t = threadIdx.x;
    if (blockIdx.x == 0) {
        partials[t] = 2.0f * x[t];
        __threadfence();
        __syncthreads();
        if (t == 0) atomicAdd(arrivals, 1u);
    } else if (blockIdx.x == 1) {
        if (t == 0) atomicAdd(arrivals, 1u);
        __syncthreads();
        __threadfence();
    } else {
        out[t] = partials[t];
    }
}
