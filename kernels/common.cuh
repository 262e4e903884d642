// Prelude of every kernel file: the element type, its math functions and constants, and the block
// shape and grid-stride loop of the memory-bound (one thread per element) kernels.
// Each .cu file is compiled once per dtype with -DREAL=float|double -DREAL_IS_DOUBLE=0|1, and the
// files converted to float16 also with -DREAL=half_bits -DREAL_IS_HALF=1
// (cnn_gpu.backend.dtype_options); the defaults below make a file compile on its own.

#ifndef REAL
#define REAL float
#endif
#ifndef REAL_IS_DOUBLE
#define REAL_IS_DOUBLE 0
#endif
#ifndef REAL_IS_HALF
#define REAL_IS_HALF 0
#endif

// --- storage and compute types ----------------------------------------------------------------
// REAL is the element type of the arrays (what kernel pointers point to), acc_t the type kernels
// compute and accumulate in: the dtype itself for float32/float64 (to_acc and to_real are no-ops,
// the code compiles to what it did without them), FP32 for float16. A float16 array holds IEEE
// binary16 bits (half_bits: NVRTC has no cuda_fp16.h without include paths); to_acc widens a value
// exactly, to_real rounds an FP32 result to nearest even once, on its way to memory.
struct __align__(2) half_bits {
    unsigned short bits;
};

#if REAL_IS_HALF
typedef float acc_t;

static __device__ __forceinline__ float to_acc(half_bits h) {
#if defined(CNN_GPU_EMU)
    return cnn_gpu_emu_half_to_float(h.bits);
#else
    float x;
    asm("cvt.f32.f16 %0, %1;" : "=f"(x) : "h"(h.bits));
    return x;
#endif
}

static __device__ __forceinline__ half_bits to_real(float x) {
    half_bits h;
#if defined(CNN_GPU_EMU)
    h.bits = cnn_gpu_emu_float_to_half(x);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
#endif
    return h;
}
#else
typedef REAL acc_t;

static __device__ __forceinline__ acc_t to_acc(REAL x) { return x; }
static __device__ __forceinline__ REAL to_real(acc_t x) { return x; }
#endif

#if REAL_IS_DOUBLE
#define REAL_EXP exp
#define REAL_EXPM1 expm1
#define REAL_LOG log
#define REAL_TANH tanh
#define REAL_SQRT sqrt
#define REAL_ERFC erfc
#else
#define REAL_EXP expf
#define REAL_EXPM1 expm1f
#define REAL_LOG logf
#define REAL_TANH tanhf
#define REAL_SQRT sqrtf
#define REAL_ERFC erfcf
#endif

// IEEE bit patterns (no <cmath> or <limits> under NVRTC), as acc_t; the float value converts
// exactly to double
#define REAL_NEG_INF ((acc_t)__int_as_float(0xff800000))
#define REAL_NAN ((acc_t)__int_as_float(0x7fc00000))

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

// store(i, load(i)) for every i in [0, n), ELEMENTS_PER_THREAD elements a thread per round of the
// grid (launched with blocks_for(ceil(n / ELEMENTS_PER_THREAD)) blocks: gpu._grid.elementwise_blocks):
// thread t of block b takes b's span's elements t + k * BLOCK_THREADS, so every warp access stays
// coalesced. All of a round's loads come before any store and any use of what they loaded (a warp
// issues in order: a use would wait for its load before the next load went out), so a thread keeps
// ELEMENTS_PER_THREAD elements of each input in flight. One element a thread holds too few bytes in
// flight for DRAM speed (Little's law: ~latency x bandwidth, ~1.7 MB on an H100, where 2048 threads
// an SM loading one float16 each hold 0.5 MB). `load` returns the raw values (Loaded), `store` uses them.
#define ELEMENTS_PER_THREAD 4
template <int COUNT>
struct Loaded {
    REAL v[COUNT];
};
// One round of that: the COUNT elements first + k * BLOCK_THREADS below n loaded (load(i)), then
// held = middle() (batch norm's channel constants, after the loads went out), then
// store(i, held, values). for_each_element's rounds and batch norm's plane walks share it.
template <int COUNT, class Load, class Middle, class Store>
static __device__ __forceinline__ void load_then_store(long long first, long long n, Load load, Middle middle,
                                                       Store store)
{
    decltype(load(first)) values[COUNT];
#pragma unroll
    for (int k = 0; k < COUNT; ++k)
        if (first + (long long)k * BLOCK_THREADS < n) values[k] = load(first + (long long)k * BLOCK_THREADS);
    const auto held = middle();
#pragma unroll
    for (int k = 0; k < COUNT; ++k)
        if (first + (long long)k * BLOCK_THREADS < n) store(first + (long long)k * BLOCK_THREADS, held, values[k]);
}

template <class Load, class Store>
static __device__ __forceinline__ void for_each_element(long long n, Load load, Store store)
{
    const long long span = (long long)BLOCK_THREADS * ELEMENTS_PER_THREAD;
    // one round at a time: the launchers' grids make one round a thread, unrolled rounds would not run
#pragma unroll 1
    for (long long first = (long long)blockIdx.x * span + threadIdx.x; first < n; first += (long long)gridDim.x * span)
        load_then_store<ELEMENTS_PER_THREAD>(first, n, load, [] { return 0; },
                        [&](long long i, int, const decltype(load(first))& in) { store(i, in); });
}

// v, which the compiler can no longer rebuild from threadIdx: it otherwise sinks such cheap
// thread-layout arithmetic into hot loops and recomputes it on every iteration. (An empty asm
// statement; it emits no instruction.)
static __device__ __forceinline__ int keep_in_register(int v)
{
    asm("" : "+r"(v));
    return v;
}

// The sum of one value per thread over a BLOCK_THREADS block by a shared-memory halving tree
// (`tree` holds BLOCK_THREADS values): a fixed order, so results are bit-identical run to run.
// Every thread gets it; a caller that writes `tree` again syncs the block first.
static __device__ __forceinline__ acc_t block_sum(acc_t value, acc_t* tree)
{
    const int t = threadIdx.x;
    tree[t] = value;
    __syncthreads();
    for (int half = BLOCK_THREADS / 2; half > 0; half >>= 1) {
        if (t < half) tree[t] += tree[t + half];
        __syncthreads();
    }
    return tree[0];
}

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

// x as an mma .tf32 operand, rounded like tf32_from_float: half a TF32 ulp added to the magnitude
// of a finite x, the 13 low bits left in place because mma reads only the top 19 bits of a .tf32
// operand (so they act as cut off). One instruction cheaper than the cvt.rna expansion; only for
// values that go to mma, never to memory that is read as float.
static __device__ __forceinline__ unsigned int tf32_operand(float x) {
    const unsigned int bits = __float_as_uint(x);
    return fabsf(x) < __int_as_float(0x7f800000) ? bits + 0x1000u : bits;
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

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8x8 matrices of 16-bit elements, i.e. 8 rows of
// four 32-bit words each (one TF32 value or two halves per word). Lane 8*i + j gives the shared
// address of row j of matrix i (16 bytes, 16-byte aligned); lane l receives word l % 4 of row
// l / 4 of matrix i in r[i], which is the mma fragment layout (groupID = l / 4, threadID_in_group
// = l % 4) of that 8 x 4-word block.
static __device__ __forceinline__ void ldmatrix_x4(unsigned int (&r)[4], const unsigned int* row) {
#if defined(CNN_GPU_EMU)
    cnn_gpu_emu_ldmatrix_x4(r, row);
#elif __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"((unsigned int)__cvta_generic_to_shared(row)));
#else
    __trap();
#endif
}

// p, opaque to the compiler's address arithmetic: a per-thread base pointer then stays in one
// 64-bit register pair and each load from it costs one IMAD.WIDE, where NVRTC would otherwise
// re-derive every address from the kernel argument (three instructions). Emits no instruction.
template <class T>
static __device__ __forceinline__ const T* register_pointer(const T* p) {
#if !defined(CNN_GPU_EMU)
    asm("" : "+l"(p));
#endif
    return p;
}

// p, made to depend on `word`: loads from the result wait until `word` is computed, so the loads
// that make `word` and those are never in flight together (fewer registers held). No instruction.
template <class T>
static __device__ __forceinline__ const T* pointer_after(const T* p, unsigned int word) {
#if !defined(CNN_GPU_EMU)
    asm("" : "+l"(p) : "r"(word));
#endif
    return p;
}

// --- asynchronous copies (cp.async, sm_80 and newer) ------------------------------------------
// Global -> shared copies that bypass the registers: a thread issues copies, closes them into a
// group (cp_async_commit), and before the data is read waits until at most PENDING of its newest
// groups are still in flight (cp_async_wait<PENDING>), then syncs the block as usual. Other threads
// see the data only after the issuing thread's wait and a __syncthreads(). Drain every copy
// (cp_async_wait_all) before a thread exits or its shared memory is reused: the emulator faults on a
// thread that exits with copies pending, and poisons (NaN) a destination until its copy is waited for.
// Below sm_80 the copies are plain synchronous loads and stores, so code using them stays correct
// there (but gains nothing: kernels stage through registers on those architectures).

// The BYTES-wide unit a synchronous copy moves.
template <int BYTES> struct cp_async_unit;
template <> struct cp_async_unit<4> { typedef unsigned int type; };
template <> struct cp_async_unit<8> { typedef uint2 type; };
template <> struct cp_async_unit<16> { typedef uint4 type; };

// dst: shared memory, src: global memory; BYTES in {4, 8, 16}, both aligned to BYTES. When `valid`
// is false nothing is read (src may be any pointer, e.g. the array's base) and dst gets zeros
// (PTX: src-size 0, "zero-fill"). 16-byte copies bypass L1 (.cg), smaller ones cannot (.ca).
template <int BYTES>
static __device__ __forceinline__ void cp_async(void* dst, const void* src, bool valid) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(CNN_GPU_EMU)
    cnn_gpu_emu_cp_async<BYTES>(dst, src, valid);
#elif __CUDA_ARCH__ >= 800
    const unsigned int shared = (unsigned int)__cvta_generic_to_shared(dst);
    const int src_bytes = valid ? BYTES : 0;
    if (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], %2, %3;"
                     :: "r"(shared), "l"(src), "n"(BYTES), "r"(src_bytes) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;"
                     :: "r"(shared), "l"(src), "n"(BYTES), "r"(src_bytes) : "memory");
#else
    typedef typename cp_async_unit<BYTES>::type unit;
    unit value = {};
    if (valid) value = *(const unit*)src;
    *(unit*)dst = value;
#endif
}

// Closes the copies issued since the last commit into one group (cp.async.commit_group).
static __device__ __forceinline__ void cp_async_commit() {
#if defined(CNN_GPU_EMU)
    cnn_gpu_emu_cp_async_commit();
#elif __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Waits until at most the PENDING newest committed groups of this thread are in flight
// (cp.async.wait_group PENDING); copies not yet committed are not waited for.
template <int PENDING>
static __device__ __forceinline__ void cp_async_wait() {
#if defined(CNN_GPU_EMU)
    cnn_gpu_emu_cp_async_wait(PENDING);
#elif __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" :: "n"(PENDING) : "memory");
#endif
}

// Waits for every copy of this thread, committed or not (cp.async.wait_all).
static __device__ __forceinline__ void cp_async_wait_all() {
#if defined(CNN_GPU_EMU)
    cnn_gpu_emu_cp_async_wait_all();
#elif __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}
