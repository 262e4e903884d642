// Prelude of every kernel file: the element type, its math functions and constants, and the block
// shape and grid-stride loop of the memory-bound (one thread per element) kernels.
// Each .cu file is compiled once per dtype with -DREAL=float|double -DREAL_IS_DOUBLE=0|1
// (cnn_gpu.backend.dtype_options); the defaults below make a file compile on its own.

#ifndef REAL
#define REAL float
#endif
#ifndef REAL_IS_DOUBLE
#define REAL_IS_DOUBLE 0
#endif

#if REAL_IS_DOUBLE
#define REAL_EXP exp
#define REAL_LOG log
#define REAL_TANH tanh
#define REAL_SQRT sqrt
#else
#define REAL_EXP expf
#define REAL_LOG logf
#define REAL_TANH tanhf
#define REAL_SQRT sqrtf
#endif

// IEEE bit patterns (no <cmath> or <limits> under NVRTC); the float value converts exactly to double
#define REAL_NEG_INF ((REAL)__int_as_float(0xff800000))
#define REAL_NAN ((REAL)__int_as_float(0x7fc00000))

// Memory-bound kernels: 256-thread blocks, and at least 4 resident blocks, which lets ptxas use up
// to 64 registers (with no minimum it caps some kernels at 32 and spills around the slow-path
// calls of division).
#define BLOCK_THREADS 256
#define MIN_BLOCKS 4

// i walks the 64-bit flat index [0, n) over the whole grid along x: consecutive threads take
// consecutive elements (coalesced), any n fits any grid.
#define GRID_STRIDE_LOOP(i, n)                                                          \
    for (long long i = (long long)blockIdx.x * BLOCK_THREADS + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * BLOCK_THREADS)
