// The race check tracks bytes once a word is accessed in parts (tests/test_emu_race_bytes.py):
// neighbouring 16-bit elements written by different threads share a word but never conflict;
// the PLANT_* kernels touch the same bytes with no barrier between and must be reported.

// Thread t writes 16-bit element t of a shared and of a global array; after the barrier it reads
// its neighbour's (t ^ 1, the other half of the same word).
extern "C" __global__ void neighbouring_halves(unsigned short* __restrict__ out)
{
    __shared__ __align__(4) unsigned short halves[64];
    halves[threadIdx.x] = (unsigned short)(3 * threadIdx.x + 1);
    out[threadIdx.x] = (unsigned short)threadIdx.x;
    __syncthreads();
    out[blockDim.x + threadIdx.x] = halves[threadIdx.x ^ 1];
}

// BUG: threads 2k and 2k + 1 both write element k.
extern "C" __global__ void plant_same_half(unsigned short* __restrict__ out)
{
    __shared__ __align__(4) unsigned short halves[64];
    halves[threadIdx.x / 2] = (unsigned short)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = halves[threadIdx.x / 2];
}

// BUG: each thread reads its neighbour's half with no barrier after the neighbour wrote it.
extern "C" __global__ void plant_unsynchronised_read(unsigned short* __restrict__ out)
{
    __shared__ __align__(4) unsigned short halves[64];
    halves[threadIdx.x] = (unsigned short)threadIdx.x;
    out[threadIdx.x] = halves[threadIdx.x ^ 1];
}

// BUG: thread 0 writes word 0 whole, then thread 1 writes its upper half with no barrier between
// (the byte states a split word starts with carry the word's writer).
extern "C" __global__ void plant_word_then_half(unsigned short* __restrict__ out)
{
    __shared__ __align__(4) unsigned short halves[64];
    if (threadIdx.x == 0) *(unsigned int*)halves = 0x00010002u;
    if (threadIdx.x == 1) halves[1] = 7;
    __syncthreads();
    out[threadIdx.x] = halves[threadIdx.x];
}
