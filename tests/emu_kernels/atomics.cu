// Per-class counts and sums with atomicAdd (int and REAL), grid-stride over the samples.
#ifndef REAL
#define REAL float
#endif

extern "C" __global__ void class_histogram(const int* __restrict__ labels, const REAL* __restrict__ values, int n,
                                           int* __restrict__ counts, REAL* __restrict__ sums)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int c = labels[i];
        atomicAdd(&counts[c], 1);
        atomicAdd(&sums[c], values[i] * values[i]);
    }
}

// The same counts through a block-local histogram in dynamic shared memory (`classes` ints):
// shared-memory atomics, then one global atomicAdd per class and block.
extern "C" __global__ void class_histogram_shared(const int* __restrict__ labels, int n, int classes,
                                                  int* __restrict__ counts)
{
    extern __shared__ int local_counts[];
    for (int c = threadIdx.x; c < classes; c += blockDim.x) local_counts[c] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&local_counts[labels[i]], 1);
    __syncthreads();
    for (int c = threadIdx.x; c < classes; c += blockDim.x) atomicAdd(&counts[c], local_counts[c]);
}
