// cp.async through the helpers of kernels/common.cuh (tests/test_emu_cp_async.py): each block
// copies a tile of 2 * blockDim.x chunks of COPY_BYTES bytes in two commit groups (chunk t, then
// chunk t + blockDim.x of thread t), zero-filling chunks past n, and writes it back to y, each
// thread the chunks its right neighbour copied: a value that is read before the copying thread
// waited for it is a NaN in y. PLANT_* macros plant the bugs the tests must catch.
#include "../../kernels/common.cuh"

#ifndef COPY_BYTES
#define COPY_BYTES 16
#endif
#define CHUNK (COPY_BYTES / (int)sizeof(REAL))

// Group 0 (the older) and, unless ONE_GROUP, group 1: returns the first element of each chunk.
static __device__ void copy_tile(const REAL* x, REAL* tile, int n, int& older, int& newer)
{
    const int base = blockIdx.x * 2 * blockDim.x * CHUNK;
    older = threadIdx.x * CHUNK;
    newer = (threadIdx.x + blockDim.x) * CHUNK;
    cp_async<COPY_BYTES>(tile + older, x + base + older, base + older < n);
    cp_async_commit();
    cp_async<COPY_BYTES>(tile + newer, x + base + newer, base + newer < n);
    cp_async_commit();
}

static __device__ void write_chunk(const REAL* tile, REAL* y, int first)
{
    const int base = blockIdx.x * 2 * blockDim.x * CHUNK;
    for (int i = 0; i < CHUNK; ++i) y[base + first + i] = tile[first + i];
}

// The whole tile: correct with both waits; PLANT_LATE_WAIT reads before waiting, PLANT_NO_WAIT
// never waits, PLANT_NO_BARRIER waits but reads the neighbour's chunks without a barrier.
extern "C" __global__ void copy_all(const REAL* __restrict__ x, REAL* __restrict__ y, int n)
{
    __shared__ __align__(16) REAL tile[2 * 64 * CHUNK];
    int older, newer;
    copy_tile(x, tile, n, older, newer);
#if !defined(PLANT_LATE_WAIT) && !defined(PLANT_NO_WAIT)
    cp_async_wait<0>();
#endif
#ifndef PLANT_NO_BARRIER
    __syncthreads();
#endif
    const int right = (threadIdx.x + 1) % blockDim.x;
    write_chunk(tile, y, right * CHUNK);
    write_chunk(tile, y, (right + blockDim.x) * CHUNK);
#ifdef PLANT_LATE_WAIT
    cp_async_wait_all();
#endif
}

// Waits for the older group only (cp.async.wait_group 1), reads the older half of the tile, or
// with READ_NEWER the newer half: only the first is correct.
extern "C" __global__ void copy_older_group(const REAL* __restrict__ x, REAL* __restrict__ y, int n)
{
    __shared__ __align__(16) REAL tile[2 * 64 * CHUNK];
    int older, newer;
    copy_tile(x, tile, n, older, newer);
    cp_async_wait<1>();
    __syncthreads();
    const int right = (threadIdx.x + 1) % blockDim.x;
#ifdef READ_NEWER
    write_chunk(tile, y, (right + blockDim.x) * CHUNK);
#else
    write_chunk(tile, y, right * CHUNK);
#endif
    cp_async_wait_all();
}

// BUG: a cp.async destination must be shared memory.
extern "C" __global__ void copy_to_global(const REAL* __restrict__ x, REAL* __restrict__ y)
{
    cp_async<COPY_BYTES>(y + threadIdx.x * CHUNK, x + threadIdx.x * CHUNK, true);
    cp_async_wait_all();
}

// BUG: cp.async addresses must be aligned to the copy's size.
extern "C" __global__ void copy_misaligned(const REAL* __restrict__ x, REAL* __restrict__ y)
{
    __shared__ __align__(16) REAL tile[64 * CHUNK + CHUNK];
    cp_async<COPY_BYTES>((char*)tile + 2 + threadIdx.x * COPY_BYTES, x + threadIdx.x * CHUNK, true);
    cp_async_wait_all();
    __syncthreads();
    y[threadIdx.x] = tile[threadIdx.x];
}
