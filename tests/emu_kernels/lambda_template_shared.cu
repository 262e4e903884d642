// __shared__ arrays declared in device function templates that are instantiated with a lambda's
// type (tests/test_emu_lambda_shared.py). Such an instantiation has internal linkage, so GCC puts
// its statics in plain .bss rather than where the other __shared__ arrays go; the emulator must
// still give them per-block shared memory: poisoned, race-checked and named in reports.
// They also compile with NVRTC (a lambda defined in device code needs no --extended-lambda).

// The block's values combined by `combine` in a tree; every thread returns the result.
template <typename Combine>
__device__ float block_reduce(float value, Combine combine)
{
    __shared__ float partial[256];
    partial[threadIdx.x] = value;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] = combine(partial[threadIdx.x], partial[threadIdx.x + stride]);
        __syncthreads();
    }
    const float result = partial[0];
    __syncthreads();  // the next call overwrites partial
    return result;
}

// sums[b] = sum of block b's blockDim.x elements of x (blockDim.x a power of two, at most 256).
extern "C" __global__ void block_sums(const float* __restrict__ x, float* __restrict__ sums)
{
    const float total = block_reduce(x[blockIdx.x * blockDim.x + threadIdx.x], [](float a, float b) { return a + b; });
    if (threadIdx.x == 0) sums[blockIdx.x] = total;
}

// BUG: no barrier between each thread's store and its neighbour's read.
template <typename Transform>
__device__ float neighbour_of(float value, Transform transform)
{
    __shared__ float slot[256];
    slot[threadIdx.x] = transform(value);
    return slot[(threadIdx.x + 1) % blockDim.x];
}

extern "C" __global__ void rotate_unsynced(const float* __restrict__ x, float* __restrict__ y)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = neighbour_of(x[i], [](float v) { return 2.0f * v; });
}

// BUG: each thread reads its slot before any thread has written it (shared memory starts
// undefined on a GPU: the emulator's poison makes the read NaN).
template <typename Index>
__device__ float read_before_write(Index index)
{
    __shared__ float scratch[256];
    const float stale = scratch[index(threadIdx.x)];
    __syncthreads();
    scratch[threadIdx.x] = 1.0f;
    return stale;
}

extern "C" __global__ void read_uninitialised(float* __restrict__ y)
{
    y[blockIdx.x * blockDim.x + threadIdx.x] = read_before_write([](unsigned int t) { return t; });
}
