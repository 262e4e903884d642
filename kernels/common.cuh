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

// --- tensor cores (sm_80 and newer) ---------------------------------------------------------
// The only inline PTX of the tensor-core kernels. The emulator runs the same calls as warp
// built-ins with the PTX ISA's fragment layouts (cnn_gpu/emu/cuda_emu.h). Below sm_80 these
// trap: the launchers never pick a tensor-core kernel there.

// cvt.rna.tf32.f32: x rounded to TF32 (10 mantissa bits, nearest, ties away from zero), the
// operand format mma .tf32 reads.
static __device__ __forceinline__ unsigned int tf32_from_float(float x) {
#if defined(CNN_GPU_EMU)
    return cnn_gpu_emu_cvt_rna_tf32(x);
#elif __CUDA_ARCH__ >= 800
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    __trap();
    return 0u;
#endif
}

// acc += a * b: a 16x8 TF32 (row-major fragment), b 8x8 TF32 (column-major fragment), acc the
// 16x8 FP32 accumulator fragment (mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32).
static __device__ __forceinline__ void mma_tf32_m16n8k8(float (&acc)[4], const unsigned int (&a)[4],
                                                        const unsigned int (&b)[2]) {
#if defined(CNN_GPU_EMU)
    cnn_gpu_emu_mma_m16n8k8_tf32(acc, a, b, acc);
#elif __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}

// acc += a * b: a 16x16 FP16, b 16x8 FP16 (registers hold two halves, the lower index in the low
// 16 bits), acc FP32 (mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32).
static __device__ __forceinline__ void mma_f16_m16n8k16(float (&acc)[4], const unsigned int (&a)[4],
                                                        const unsigned int (&b)[2]) {
#if defined(CNN_GPU_EMU)
    cnn_gpu_emu_mma_m16n8k16_f16(acc, a, b, acc);
#elif __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}
