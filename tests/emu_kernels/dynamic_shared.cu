// Reverses each block's chunk of x through dynamic shared memory (extern __shared__), with float4
// loads of the input and a block-wide __syncthreads_count; one REAL per thread.
#ifndef REAL
#define REAL float
#endif

extern "C" __global__ void reverse_chunks(const REAL* __restrict__ x, REAL* __restrict__ y, int* __restrict__ positive,
                                          int n)
{
    extern __shared__ REAL chunk[];
    const int base = blockIdx.x * blockDim.x;
    const int i = base + threadIdx.x;
    REAL v = i < n ? __ldg(&x[i]) : (REAL)0;
    chunk[threadIdx.x] = v;
    const int count = __syncthreads_count(v > (REAL)0);
    const int j = base + (blockDim.x - 1 - threadIdx.x);
    if (j < n) y[j] = chunk[threadIdx.x];
    if (threadIdx.x == 0) positive[blockIdx.x] = count;
}

// Copies x to y four elements at a time (n a multiple of 4) through float4, staged in shared memory.
extern "C" __global__ void copy_float4(const float* __restrict__ x, float* __restrict__ y, int n4)
{
    extern __shared__ float4 staged[];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) staged[threadIdx.x] = reinterpret_cast<const float4*>(x)[i];
    __syncthreads();
    if (i < n4) {
        float4 v = staged[threadIdx.x];
        reinterpret_cast<float4*>(y)[i] = make_float4(v.x, v.y, v.z, v.w);
    }
}
