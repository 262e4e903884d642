// How fast an SM issues mma.sync: the one rate the model takes from a datasheet rather than from this
// project's SASS (roofline.mma_issue_clocks: clocks between two HMMAs on a sub-partition's tensor
// pipe, derived from the dense peak). Measured on a GPU by benchmarks/mma_rate.py (a gpu-check step):
// each warp issues MMA_RATE_CHAINS independent mma.sync per iteration (float32 build: m16n8k8 TF32;
// float16 build: m16n8k16 FP16; both FP32 accumulation) on operands it holds in registers, so the
// loop does nothing else and no memory. Not a GEMM: every warp multiplies the same two tiles.
//
// operands: a lane's six words (a0..a3, b0, b1) at 6 * lane; out: each thread's accumulators,
// MMA_RATE_CHAINS x 4 floats (so the loop is not optimised away); clocks: each warp's clock64()
// cycles from before its first mma to after its last.
#include "mma_tile.cuh"

#define MMA_RATE_CHAINS 8     // independent accumulators per warp: enough to cover the mma's latency
#define MMA_RATE_THREADS 128  // a block: one warp per SM sub-partition

extern "C" __global__ void __launch_bounds__(MMA_RATE_THREADS) mma_rate(const unsigned int* __restrict__ operands, float* __restrict__ out,
                                    long long* __restrict__ clocks, int iterations)
{
    const int lane = threadIdx.x & 31, thread = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int a[4] = {operands[6 * lane], operands[6 * lane + 1], operands[6 * lane + 2],
                               operands[6 * lane + 3]};
    const unsigned int b[2] = {operands[6 * lane + 4], operands[6 * lane + 5]};
    float acc[MMA_RATE_CHAINS][4] = {};
    const long long start = clock64();
#pragma unroll 1
    for (int i = 0; i < iterations; ++i)
#pragma unroll
        for (int c = 0; c < MMA_RATE_CHAINS; ++c) mma_words(acc[c], a, b);
    const long long end = clock64();
#pragma unroll
    for (int c = 0; c < MMA_RATE_CHAINS; ++c)
#pragma unroll
        for (int j = 0; j < 4; ++j) out[(thread * MMA_RATE_CHAINS + c) * 4 + j] = acc[c][j];
    if (lane == 0) clocks[thread / 32] = end - start;
}
