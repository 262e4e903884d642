// Access patterns whose Nsight Compute memory counts are known (tests/test_emu_profile.py).

// Coalesced: lane i touches word i; 32 lanes x 4 bytes = 4 sectors per request.
extern "C" __global__ void copy_coalesced(const float* __restrict__ x, float* __restrict__ y, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}

// Lanes 32 elements (128 bytes) apart: every lane its own sector, 32 per request.
extern "C" __global__ void copy_strided(const float* __restrict__ x, float* __restrict__ y, int n, int stride)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i * stride] = x[i * stride];
}

// 16 bytes per lane: 512 bytes, 16 sectors per full-warp request.
extern "C" __global__ void copy_float4(const float* __restrict__ x, float* __restrict__ y, int n4)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) reinterpret_cast<float4*>(y)[i] = reinterpret_cast<const float4*>(x)[i];
}

// A 32x32 tile stored by rows and read by columns: with a row pitch of 32 words every lane of a
// column read hits the same bank (32 wavefronts); a pitch of 33 spreads them over all banks (1).
template <int PITCH>
__device__ void transpose_tile(const float* __restrict__ x, float* __restrict__ y)
{
    __shared__ float tile[32 * PITCH];
    const int tx = threadIdx.x, ty = threadIdx.y;
    tile[ty * PITCH + tx] = x[ty * 32 + tx];
    __syncthreads();
    y[ty * 32 + tx] = tile[tx * PITCH + ty];
}

extern "C" __global__ void transpose_32(const float* __restrict__ x, float* __restrict__ y) { transpose_tile<32>(x, y); }
extern "C" __global__ void transpose_33(const float* __restrict__ x, float* __restrict__ y) { transpose_tile<33>(x, y); }

// Every lane reads the same shared word (a broadcast: 1 wavefront) and adds into one global word.
extern "C" __global__ void broadcast_sum(const float* __restrict__ x, float* __restrict__ total)
{
    __shared__ float first;
    if (threadIdx.x == 0) first = x[0];
    __syncthreads();
    atomicAdd(total, first + x[threadIdx.x]);
}
