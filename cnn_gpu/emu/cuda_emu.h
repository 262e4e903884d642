/* The CUDA C subset the project's kernels use, for g++ on x86-64 (cnn_gpu.emu).
 *
 * Force-included before a kernel source. No system headers are pulled in on purpose: a kernel
 * that relies on something NVRTC does not provide (INFINITY, <cstdint>, std::max) should fail
 * here as it fails there. The module build replaces `extern __shared__` by
 * `extern cnn_gpu_emu_dynamic_shared_decl` and binds those names to the module's
 * dynamic shared memory buffer, and `#pragma unroll` by CNN_GPU_EMU_UNROLL. */
#ifndef CNN_GPU_CUDA_EMU_H
#define CNN_GPU_CUDA_EMU_H

#include "emu_abi.h"

#define CNN_GPU_EMU 1
/* As NVRTC defines them. The architecture is $CNN_GPU_EMU_ARCH (the module build passes it; 800
 * by default), so that both sides of a kernel's `#if __CUDA_ARCH__ >= 800` can be run. */
#define __CUDACC__ 1
#define __CUDACC_RTC__ 1
#ifndef CNN_GPU_EMU_ARCH
#define CNN_GPU_EMU_ARCH 800
#endif
#define __CUDA_ARCH__ CNN_GPU_EMU_ARCH

/* --- qualifiers ---------------------------------------------------------------------------- */
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
/* Block-scope statics shared by the fibers of a block, each in a section of its own: the module's
 * link gathers them into one output section (poisoned at every block) with a guard zone around each
 * (_build.shared_section_script), so that an index past an array's end is caught, not read from or
 * written into the next array. A name starting .bss. makes GCC's section NOBITS: it takes no room
 * in the library file, nor do the far zones the link puts around them. */
#define CNN_GPU_EMU_STRING(x) #x
#define CNN_GPU_EMU_SHARED_SECTION(n) ".bss.cnn_gpu_emu_shared." CNN_GPU_EMU_STRING(n)
#define __shared__ static __attribute__((section(CNN_GPU_EMU_SHARED_SECTION(__COUNTER__))))
#define cnn_gpu_emu_dynamic_shared_decl __attribute__((visibility("hidden")))
/* The module build writes `#pragma unroll N` as CNN_GPU_EMU_UNROLL(N): GCC expands no macros in N. */
#define CNN_GPU_EMU_PRAGMA(text) _Pragma(#text)
#define CNN_GPU_EMU_UNROLL(n) CNN_GPU_EMU_PRAGMA(GCC unroll n)

extern "C" __attribute__((visibility("hidden"))) cnn_gpu_emu_module_state cnn_gpu_emu_module;

/* --- vector types and built-in variables -------------------------------------------------- */
typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;
typedef cnn_gpu_emu_uint3 uint3;
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) double2 { double x, y; };
struct double3 { double x, y, z; };
struct __attribute__((aligned(16))) double4 { double x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct int3 { int x, y, z; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };

static __forceinline__ float2 make_float2(float x, float y) { return {x, y}; }
static __forceinline__ float3 make_float3(float x, float y, float z) { return {x, y, z}; }
static __forceinline__ float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static __forceinline__ double2 make_double2(double x, double y) { return {x, y}; }
static __forceinline__ double3 make_double3(double x, double y, double z) { return {x, y, z}; }
static __forceinline__ double4 make_double4(double x, double y, double z, double w) { return {x, y, z, w}; }
static __forceinline__ int2 make_int2(int x, int y) { return {x, y}; }
static __forceinline__ int3 make_int3(int x, int y, int z) { return {x, y, z}; }
static __forceinline__ int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
static __forceinline__ uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
static __forceinline__ uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return {x, y, z}; }
static __forceinline__ uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }

#define threadIdx (cnn_gpu_emu_module.current->thread_idx)
#define blockIdx (cnn_gpu_emu_module.block_idx)
#define blockDim (cnn_gpu_emu_module.block_dim)
#define gridDim (cnn_gpu_emu_module.grid_dim)
#define warpSize 32

/* --- synchronisation (the runtime library: cnn_gpu_emu_barrier and the warp exchanges, emu_abi.h) */
#define __syncthreads() ((void)cnn_gpu_emu_barrier(cnn_gpu_emu_module.current, 0, __FILE__, __LINE__))
#define __syncthreads_count(p) cnn_gpu_emu_barrier(cnn_gpu_emu_module.current, (p) != 0, __FILE__, __LINE__)
#define __syncthreads_and(p) (cnn_gpu_emu_barrier(cnn_gpu_emu_module.current, (p) != 0, __FILE__, __LINE__) == \
                              (int)(blockDim.x * blockDim.y * blockDim.z))
#define __syncthreads_or(p) (cnn_gpu_emu_barrier(cnn_gpu_emu_module.current, (p) != 0, __FILE__, __LINE__) != 0)

/* Fibers never preempt each other, so memory is coherent at every point a kernel can observe. The
 * instrumented build tells the runtime of each device-scope fence: with an atomic, it orders global
 * memory between blocks for the race check (emu_runtime.cpp, "fences and atomics between blocks"). */
#ifdef CNN_GPU_EMU_INSTRUMENTED
#define CNN_GPU_EMU_DEVICE_FENCE() cnn_gpu_emu_fence(cnn_gpu_emu_module.current)
#else
#define CNN_GPU_EMU_DEVICE_FENCE() ((void)0)
#endif
static __forceinline__ void __threadfence() {
    __asm__ __volatile__("" ::: "memory");
    CNN_GPU_EMU_DEVICE_FENCE();
}
static __forceinline__ void __threadfence_block() { __asm__ __volatile__("" ::: "memory"); }
static __forceinline__ void __threadfence_system() {
    __asm__ __volatile__("" ::: "memory");
    CNN_GPU_EMU_DEVICE_FENCE();
}

/* clock64(): the host's time-stamp counter, so that differences are positive and grow with the work
 * done (not SM clocks: no GPU timing means anything on the emulator) */
static __forceinline__ long long clock64() { return (long long)__builtin_ia32_rdtsc(); }

/* --- warp shuffles and votes: the lanes of the mask exchange (emu_runtime.cpp,
 * cnn_gpu_emu_warp_exchange_masked); a value from a lane outside it has all bits set. They order no
 * memory accesses: CUDA guarantees that of __syncwarp only ---------------------------------------- */
template <class T>
static __forceinline__ unsigned long long cnn_gpu_emu_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    unsigned long long bits = 0;
    __builtin_memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <class T>
static __forceinline__ T cnn_gpu_emu_from_bits(unsigned long long bits) {
    T v;
    __builtin_memcpy(&v, &bits, sizeof(T));
    return v;
}
/* a lane must be in the mask it passes (a GPU leaves a lane outside it undefined) */
static __forceinline__ void cnn_gpu_emu_check_mask(unsigned int mask) {
    cnn_gpu_emu_thread* me = cnn_gpu_emu_module.current;
    if (!((mask >> me->lane) & 1u)) cnn_gpu_emu_warp_mask_fault(me, mask);
}
template <class T>
static __forceinline__ T cnn_gpu_emu_shuffle_from(unsigned int mask, T v, int source, bool own) {
    cnn_gpu_emu_thread* me = cnn_gpu_emu_module.current;
    const unsigned long long* slots = cnn_gpu_emu_warp_exchange_masked(me, cnn_gpu_emu_bits(v), mask, 0);
    if (own || source >= (int)me->warp_size) return v;
    return cnn_gpu_emu_from_bits<T>(slots[source]);
}
template <class T>
static __forceinline__ T __shfl_sync(unsigned int mask, T v, int src_lane, int width = warpSize) {
    cnn_gpu_emu_check_mask(mask);
    int lane = (int)cnn_gpu_emu_module.current->lane;
    int source = (lane & ~(width - 1)) + (src_lane & (width - 1));
    return cnn_gpu_emu_shuffle_from(mask, v, source, false);
}
template <class T>
static __forceinline__ T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = warpSize) {
    cnn_gpu_emu_check_mask(mask);
    int lane = (int)cnn_gpu_emu_module.current->lane;
    return cnn_gpu_emu_shuffle_from(mask, v, lane - (int)delta, (lane & (width - 1)) < (int)delta);
}
template <class T>
static __forceinline__ T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = warpSize) {
    cnn_gpu_emu_check_mask(mask);
    int lane = (int)cnn_gpu_emu_module.current->lane;
    return cnn_gpu_emu_shuffle_from(mask, v, lane + (int)delta, (lane & (width - 1)) + (int)delta >= width);
}
template <class T>
static __forceinline__ T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = warpSize) {
    cnn_gpu_emu_check_mask(mask);
    int lane = (int)cnn_gpu_emu_module.current->lane;
    int source = lane ^ lane_mask;
    return cnn_gpu_emu_shuffle_from(mask, v, source, source >= ((lane / width) + 1) * width);
}
static __forceinline__ unsigned int __ballot_sync(unsigned int mask, int predicate) {
    cnn_gpu_emu_check_mask(mask);
    cnn_gpu_emu_thread* me = cnn_gpu_emu_module.current;
    const unsigned long long* slots = cnn_gpu_emu_warp_exchange_masked(me, predicate != 0, mask, 0);
    int size = (int)me->warp_size;
    unsigned int ballot = 0;
    for (int i = 0; i < size; ++i)
        if ((mask >> i) & 1u) ballot |= (unsigned int)slots[i] << i;
    return ballot;
}
static __forceinline__ int __any_sync(unsigned int mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
static __forceinline__ int __all_sync(unsigned int mask, int predicate) {
    unsigned int size = cnn_gpu_emu_module.current->warp_size;
    unsigned int lanes = mask & (size == 32 ? 0xffffffffu : ((1u << size) - 1u));
    return __ballot_sync(mask, predicate) == lanes;
}
static __forceinline__ void __syncwarp(unsigned int mask = 0xffffffffu) {
    cnn_gpu_emu_check_mask(mask);
    (void)cnn_gpu_emu_warp_exchange_masked(cnn_gpu_emu_module.current, 0, mask, 1);
}
static __forceinline__ unsigned int __activemask() { return 0xffffffffu; }

/* --- tensor cores: mma.sync and cvt.rna.tf32 (warp collectives, like the shuffles) ---------- *
 * Each lane hands its fragment registers to the warp, then computes its own accumulator
 * elements from the whole A and B tiles, with the fragment layouts of the PTX ISA ("Matrix
 * Fragments for mma.m16n8k8 / mma.m16n8k16"): groupID = lane / 4, threadID_in_group = lane % 4.
 * The products of TF32 or FP16 operands are exact in FP32; they are accumulated in FP32 onto C
 * in k order. The hardware's internal order and rounding of that sum are unspecified, so kernels
 * are compared with the oracle within the FP32 accumulation tolerance, not bit for bit.
 * A TF32 operand keeps only its top 19 bits, as the tensor core reads it: a kernel that skips
 * cvt.rna.tf32 gets truncated operands and fails its comparison with the oracle. */
static __forceinline__ unsigned int cnn_gpu_emu_cvt_rna_tf32(float x) {
    unsigned int bits = (unsigned int)cnn_gpu_emu_bits(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) return bits;          /* inf and NaN pass through */
    return (bits + 0x1000u) & 0xffffe000u;                          /* ties away from zero */
}
static __forceinline__ float cnn_gpu_emu_tf32_operand(unsigned int bits) {
    return cnn_gpu_emu_from_bits<float>(bits & 0xffffe000u);
}
static __forceinline__ float cnn_gpu_emu_half_to_float(unsigned int h) {
    unsigned int sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0x1fu) return cnn_gpu_emu_from_bits<float>(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {                                            /* zero or subnormal: m * 2^-24 */
        float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    return cnn_gpu_emu_from_bits<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}
/* Every lane's `count` 32-bit registers, gathered two per exchange: out[lane * count + i]. */
static __noinline__ void cnn_gpu_emu_warp_gather32(const unsigned int* mine, int count, unsigned int* out) {
    cnn_gpu_emu_thread* me = cnn_gpu_emu_module.current;
    for (int i = 0; i < count; i += 2) {
        unsigned long long pair = mine[i] | (i + 1 < count ? (unsigned long long)mine[i + 1] << 32 : 0ull);
        const unsigned long long* slots = cnn_gpu_emu_warp_exchange(me, pair);
        for (int lane = 0; lane < 32; ++lane) {
            out[lane * count + i] = (unsigned int)slots[lane];
            if (i + 1 < count) out[lane * count + i + 1] = (unsigned int)(slots[lane] >> 32);
        }
    }
}
/* Whether `lane`'s fragment registers hold operands that `me` multiplies: a lane computes the
 * accumulator rows group and group + 8 (the A rows of its own group's lanes, in both fragment
 * layouts) and columns 2t and 2t + 1 (the B columns held by the lanes of groups 2t and 2t + 1);
 * the other tile entries are left unset and never read. */
static __forceinline__ bool cnn_gpu_emu_mma_feeds_a(int lane, int me) { return (lane >> 2) == (me >> 2); }
static __forceinline__ bool cnn_gpu_emu_mma_feeds_b(int lane, int me) { return (lane >> 3) == (me & 3); }
/* d = a * b + c for a 16x8 tile: a[m][k] and b[k][n] as gathered above (the rows and columns this
 * lane needs), c and d per lane. */
static __noinline__ void cnn_gpu_emu_mma_tile(float* d, const float* c, const float a[16][16],
                                                 const float b[16][8], int depth) {
    int lane = (int)cnn_gpu_emu_module.current->lane, group = lane >> 2, in_group = lane & 3;
    for (int i = 0; i < 4; ++i) {
        int row = group + (i >= 2 ? 8 : 0), col = in_group * 2 + (i & 1);
        float sum = c[i];
        for (int k = 0; k < depth; ++k) sum = __builtin_fmaf(a[row][k], b[k][col], sum);
        d[i] = sum;
    }
}
/* mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 */
static __noinline__ void cnn_gpu_emu_mma_m16n8k8_tf32(float* d, const unsigned int* a, const unsigned int* b,
                                                         const float* c) {
    unsigned int all_a[32 * 4], all_b[32 * 2];
    cnn_gpu_emu_warp_gather32(a, 4, all_a);
    cnn_gpu_emu_warp_gather32(b, 2, all_b);
    float tile_a[16][16], tile_b[16][8];
    const int my_lane = (int)cnn_gpu_emu_module.current->lane;
    for (int lane = 0; lane < 32; ++lane) {
        int group = lane >> 2, in_group = lane & 3;
        if (cnn_gpu_emu_mma_feeds_a(lane, my_lane))
            for (int i = 0; i < 4; ++i)   /* a0: (g, t)  a1: (g+8, t)  a2: (g, t+4)  a3: (g+8, t+4) */
                tile_a[group + (i & 1) * 8][in_group + (i >> 1) * 4] = cnn_gpu_emu_tf32_operand(all_a[lane * 4 + i]);
        if (cnn_gpu_emu_mma_feeds_b(lane, my_lane))
            for (int i = 0; i < 2; ++i)   /* b0: (t, g)  b1: (t+4, g) */
                tile_b[in_group + i * 4][group] = cnn_gpu_emu_tf32_operand(all_b[lane * 2 + i]);
    }
    cnn_gpu_emu_mma_tile(d, c, tile_a, tile_b, 8);
}
/* mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: registers hold f16x2, low half first */
static __noinline__ void cnn_gpu_emu_mma_m16n8k16_f16(float* d, const unsigned int* a, const unsigned int* b,
                                                         const float* c) {
    unsigned int all_a[32 * 4], all_b[32 * 2];
    cnn_gpu_emu_warp_gather32(a, 4, all_a);
    cnn_gpu_emu_warp_gather32(b, 2, all_b);
    float tile_a[16][16], tile_b[16][8];
    const int my_lane = (int)cnn_gpu_emu_module.current->lane;
    for (int lane = 0; lane < 32; ++lane) {
        int group = lane >> 2, in_group = lane & 3;
        if (cnn_gpu_emu_mma_feeds_a(lane, my_lane))
            for (int i = 0; i < 8; ++i) {  /* a_i: row g (+8 for i%4 >= 2), col 2t + i%2 (+8 for i >= 4) */
                unsigned int h = all_a[lane * 4 + i / 2] >> (16 * (i & 1));
                tile_a[group + ((i >> 1) & 1) * 8][in_group * 2 + (i & 1) + (i >> 2) * 8] = cnn_gpu_emu_half_to_float(h & 0xffffu);
            }
        if (cnn_gpu_emu_mma_feeds_b(lane, my_lane))
            for (int i = 0; i < 4; ++i) {  /* b_i: row 2t + i%2 (+8 for i >= 2), col g */
                unsigned int h = all_b[lane * 2 + i / 2] >> (16 * (i & 1));
                tile_b[in_group * 2 + (i & 1) + (i >> 1) * 8][group] = cnn_gpu_emu_half_to_float(h & 0xffffu);
            }
    }
    cnn_gpu_emu_mma_tile(d, c, tile_a, tile_b, 16);
}
/* ldmatrix.sync.aligned.m8n8.x4.shared.b16 (PTX ISA "ldmatrix"): lane 8i + j holds the address of
 * row j of matrix i (16 bytes of shared memory, 16-byte aligned; whole warps only, else a fault: a
 * global address would be a garbage .shared address on a GPU); lane l receives
 * word l % 4 of row l / 4 of matrix i in r[i]. Each lane reads its own words from shared memory,
 * so the race check, the poison and the profile (one request per matrix) see the hardware's loads. */
static __noinline__ void cnn_gpu_emu_ldmatrix_x4(unsigned int* r, const void* row) {
    cnn_gpu_emu_thread* me = cnn_gpu_emu_module.current;
    const char* at = (const char*)row;
    const cnn_gpu_emu_module_state& m = cnn_gpu_emu_module;
    const bool shared = (at >= m.static_shared_begin && at + 16 <= m.static_shared_end) ||
                        (at >= m.dynamic_shared && at + 16 <= m.dynamic_shared + m.dynamic_shared_capacity);
    if (((unsigned long long)row & 15ull) || !shared || me->warp_size != 32) __builtin_trap();
    const unsigned long long* rows = cnn_gpu_emu_warp_exchange(me, (unsigned long long)row);
    unsigned int lane = me->lane;
    const unsigned int* mine[4];
    for (int i = 0; i < 4; ++i) mine[i] = (const unsigned int*)rows[8 * i + lane / 4] + lane % 4;
    for (int i = 0; i < 4; ++i) r[i] = *mine[i];
}

/* --- instrumented build (-DCNN_GPU_EMU_INSTRUMENTED, -fsanitize=thread): every memory access
 * calls a __tsan_* hook, which hands it to the runtime's race check and memory profile ------- */
#ifdef CNN_GPU_EMU_INSTRUMENTED
#define CNN_GPU_EMU_HOOK(name, size, write)                                                        \
    extern "C" __attribute__((visibility("hidden"), no_sanitize_thread, noinline)) void name(void* a) { \
        cnn_gpu_emu_access(cnn_gpu_emu_module.current, a, size, write, __builtin_return_address(0)); \
    }
#define CNN_GPU_EMU_HOOKS(n)                                                                        \
    CNN_GPU_EMU_HOOK(__tsan_read##n, n, 0) CNN_GPU_EMU_HOOK(__tsan_write##n, n, 1)                 \
    CNN_GPU_EMU_HOOK(__tsan_unaligned_read##n, n, 0) CNN_GPU_EMU_HOOK(__tsan_unaligned_write##n, n, 1) \
    CNN_GPU_EMU_HOOK(__tsan_volatile_read##n, n, 0) CNN_GPU_EMU_HOOK(__tsan_volatile_write##n, n, 1)
CNN_GPU_EMU_HOOKS(1) CNN_GPU_EMU_HOOKS(2) CNN_GPU_EMU_HOOKS(4) CNN_GPU_EMU_HOOKS(8) CNN_GPU_EMU_HOOKS(16)
#undef CNN_GPU_EMU_HOOKS
#undef CNN_GPU_EMU_HOOK
extern "C" __attribute__((visibility("hidden"), no_sanitize_thread)) void __tsan_read_range(void* a, unsigned long n) {
    cnn_gpu_emu_access(cnn_gpu_emu_module.current, a, n, 0, __builtin_return_address(0));
}
extern "C" __attribute__((visibility("hidden"), no_sanitize_thread)) void __tsan_write_range(void* a, unsigned long n) {
    cnn_gpu_emu_access(cnn_gpu_emu_module.current, a, n, 1, __builtin_return_address(0));
}
extern "C" __attribute__((visibility("hidden"))) void __tsan_init() {}
extern "C" __attribute__((visibility("hidden"))) void __tsan_func_entry(void*) {}
extern "C" __attribute__((visibility("hidden"))) void __tsan_func_exit() {}
/* The memory clobbers keep the optimiser (which runs before the instrumentation) from moving or
 * dropping the flag's stores. */
#define CNN_GPU_EMU_ATOMIC_BEGIN()                                    \
    do {                                                              \
        cnn_gpu_emu_module.current->in_atomic = 1;                    \
        __asm__ __volatile__("" ::: "memory");                        \
    } while (0)
#define CNN_GPU_EMU_ATOMIC_END()                                      \
    do {                                                              \
        __asm__ __volatile__("" ::: "memory");                        \
        cnn_gpu_emu_module.current->in_atomic = 0;                    \
    } while (0)
#else
#define CNN_GPU_EMU_ATOMIC_BEGIN() ((void)0)
#define CNN_GPU_EMU_ATOMIC_END() ((void)0)
#endif

/* --- atomics: a fiber is never interrupted inside one ------------------------------------- */
template <class T>
static __forceinline__ T cnn_gpu_emu_atomic_add(T* address, T value) {
    __asm__("" : "+g"(value));  /* keep `a*b` in atomicAdd(p, a*b) rounded, as on the GPU */
    CNN_GPU_EMU_ATOMIC_BEGIN();
    T old = *address;
    *address = old + value;
    CNN_GPU_EMU_ATOMIC_END();
    return old;
}
/* read-modify-write, one atomic access for the race check and the profile: its read (volatile, so
 * that the optimiser keeps it where the old value goes unused, as atomicExch's often does) */
#define CNN_GPU_EMU_RMW(expression)  \
    CNN_GPU_EMU_ATOMIC_BEGIN();      \
    T old = *(volatile T*)a;         \
    expression;                      \
    CNN_GPU_EMU_ATOMIC_END();        \
    return old;
static __forceinline__ float atomicAdd(float* a, float v) { return cnn_gpu_emu_atomic_add(a, v); }
static __forceinline__ double atomicAdd(double* a, double v) { return cnn_gpu_emu_atomic_add(a, v); }
static __forceinline__ int atomicAdd(int* a, int v) { return cnn_gpu_emu_atomic_add(a, v); }
static __forceinline__ unsigned int atomicAdd(unsigned int* a, unsigned int v) { return cnn_gpu_emu_atomic_add(a, v); }
static __forceinline__ unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return cnn_gpu_emu_atomic_add(a, v);
}
template <class T> static __forceinline__ T atomicSub(T* a, T v) { CNN_GPU_EMU_RMW(*a = old - v) }
template <class T> static __forceinline__ T atomicExch(T* a, T v) { CNN_GPU_EMU_RMW(*a = v) }
template <class T> static __forceinline__ T atomicMax(T* a, T v) { CNN_GPU_EMU_RMW(if (v > old) *a = v) }
template <class T> static __forceinline__ T atomicMin(T* a, T v) { CNN_GPU_EMU_RMW(if (v < old) *a = v) }
template <class T> static __forceinline__ T atomicCAS(T* a, T compare, T v) { CNN_GPU_EMU_RMW(if (old == compare) *a = v) }
template <class T> static __forceinline__ T atomicInc(T* a, T limit) { CNN_GPU_EMU_RMW(*a = old >= limit ? 0 : old + 1) }
template <class T> static __forceinline__ T atomicAnd(T* a, T v) { CNN_GPU_EMU_RMW(*a = old & v) }
template <class T> static __forceinline__ T atomicOr(T* a, T v) { CNN_GPU_EMU_RMW(*a = old | v) }
template <class T> static __forceinline__ T atomicXor(T* a, T v) { CNN_GPU_EMU_RMW(*a = old ^ v) }
#undef CNN_GPU_EMU_RMW

/* --- loads ----------------------------------------------------------------------------------- */
template <class T> static __forceinline__ T __ldg(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldcg(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldca(const T* p) { return *p; }
template <class T> static __forceinline__ T __ldcs(const T* p) { return *p; }

/* --- cp.async (kernels/common.cuh: cp_async, cp_async_commit, cp_async_wait[_all]) ----------- *
 * Poisoned until waited: a copy reads its source when issued (nothing when not `valid`: zeros),
 * writes 0xff bytes (a NaN of every float type) into its shared destination at once and leaves the
 * bytes with the runtime, which writes them into the destination when the issuing thread waits
 * for the copy's group. A thread that reads a destination before its copy was waited for (and,
 * for another thread, a barrier after the wait) reads NaN, under every schedule. The read and the
 * poison store are the copy's global load and shared store for the race check and the profile; the
 * race check also sees the retiring write at the wait. A thread that exits with copies pending
 * faults: on a GPU they would land at an unknown time, perhaps in shared memory already reused. */
/* (cnn_gpu_emu_cp_async_issue, _commit_group and _wait_group: emu_abi.h) */
namespace cnn_gpu_emu {
template <int BYTES> struct copy_word;
template <> struct copy_word<4> { typedef unsigned int type; };
template <> struct copy_word<8> { typedef unsigned long long type; };
template <> struct copy_word<16> { typedef unsigned __int128 type; };
}  // namespace cnn_gpu_emu
template <int BYTES>
static __forceinline__ void cnn_gpu_emu_cp_async(void* dst, const void* src, bool valid) {
    typedef typename cnn_gpu_emu::copy_word<BYTES>::type word;
    word value = 0;
    if (valid) value = *(const word*)src;
    cnn_gpu_emu_cp_async_issue(cnn_gpu_emu_module.current, dst, valid ? src : nullptr, &value, BYTES);
    *(word*)dst = ~(word)0;  /* after the runtime has checked that dst is shared memory */
}
static __forceinline__ void cnn_gpu_emu_cp_async_commit() { cnn_gpu_emu_cp_async_commit_group(cnn_gpu_emu_module.current); }
static __forceinline__ void cnn_gpu_emu_cp_async_wait(int pending) {
    cnn_gpu_emu_cp_async_wait_group(cnn_gpu_emu_module.current, pending);
}
static __forceinline__ void cnn_gpu_emu_cp_async_wait_all() { cnn_gpu_emu_cp_async_wait_group(cnn_gpu_emu_module.current, -1); }

/* --- math: the C library for float and double, with CUDA's float overloads ---------------- */
#define CNN_GPU_EMU_UNARY(name)                                                 \
    extern "C" double name(double) noexcept;                                    \
    extern "C" float name##f(float) noexcept;                                   \
    static __forceinline__ float name(float x) { return name##f(x); }
#define CNN_GPU_EMU_BINARY(name)                                                \
    extern "C" double name(double, double) noexcept;                            \
    extern "C" float name##f(float, float) noexcept;                            \
    static __forceinline__ float name(float x, float y) { return name##f(x, y); }
CNN_GPU_EMU_UNARY(sqrt) CNN_GPU_EMU_UNARY(cbrt) CNN_GPU_EMU_UNARY(exp) CNN_GPU_EMU_UNARY(exp2)
CNN_GPU_EMU_UNARY(exp10) CNN_GPU_EMU_UNARY(expm1) CNN_GPU_EMU_UNARY(log) CNN_GPU_EMU_UNARY(log2)
CNN_GPU_EMU_UNARY(log10) CNN_GPU_EMU_UNARY(log1p) CNN_GPU_EMU_UNARY(sin) CNN_GPU_EMU_UNARY(cos)
CNN_GPU_EMU_UNARY(tan) CNN_GPU_EMU_UNARY(asin) CNN_GPU_EMU_UNARY(acos) CNN_GPU_EMU_UNARY(atan)
CNN_GPU_EMU_UNARY(sinh) CNN_GPU_EMU_UNARY(cosh) CNN_GPU_EMU_UNARY(tanh) CNN_GPU_EMU_UNARY(asinh)
CNN_GPU_EMU_UNARY(acosh) CNN_GPU_EMU_UNARY(atanh) CNN_GPU_EMU_UNARY(fabs) CNN_GPU_EMU_UNARY(floor)
CNN_GPU_EMU_UNARY(ceil) CNN_GPU_EMU_UNARY(trunc) CNN_GPU_EMU_UNARY(round) CNN_GPU_EMU_UNARY(rint)
CNN_GPU_EMU_UNARY(nearbyint) CNN_GPU_EMU_UNARY(erf) CNN_GPU_EMU_UNARY(erfc) CNN_GPU_EMU_UNARY(lgamma)
CNN_GPU_EMU_UNARY(tgamma)
CNN_GPU_EMU_BINARY(pow) CNN_GPU_EMU_BINARY(fmax) CNN_GPU_EMU_BINARY(fmin) CNN_GPU_EMU_BINARY(fmod)
CNN_GPU_EMU_BINARY(atan2) CNN_GPU_EMU_BINARY(hypot) CNN_GPU_EMU_BINARY(copysign) CNN_GPU_EMU_BINARY(fdim)
CNN_GPU_EMU_BINARY(remainder)
#undef CNN_GPU_EMU_UNARY
#undef CNN_GPU_EMU_BINARY
extern "C" double fma(double, double, double) noexcept;
extern "C" float fmaf(float, float, float) noexcept;
static __forceinline__ float fma(float x, float y, float z) { return fmaf(x, y, z); }
extern "C" double ldexp(double, int) noexcept;
extern "C" float ldexpf(float, int) noexcept;
extern "C" double frexp(double, int*) noexcept;
extern "C" float frexpf(float, int*) noexcept;
extern "C" void sincos(double, double*, double*) noexcept;
extern "C" void sincosf(float, float*, float*) noexcept;
extern "C" int abs(int) noexcept;
extern "C" long long llabs(long long) noexcept;
extern "C" int printf(const char*, ...);

static __forceinline__ float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static __forceinline__ double rsqrt(double x) { return 1.0 / sqrt(x); }
static __forceinline__ float rcbrtf(float x) { return 1.0f / cbrtf(x); }
static __forceinline__ float fdividef(float x, float y) { return x / y; }
static __forceinline__ float __exp10f(float x) { return exp10f(x); }
static __forceinline__ float __log2f(float x) { return log2f(x); }
static __forceinline__ float __log10f(float x) { return log10f(x); }
static __forceinline__ float __sinf(float x) { return sinf(x); }
static __forceinline__ float __cosf(float x) { return cosf(x); }
static __forceinline__ float __tanf(float x) { return tanf(x); }
static __forceinline__ float __powf(float x, float y) { return powf(x, y); }
static __forceinline__ void __sincosf(float x, float* s, float* c) { sincosf(x, s, c); }
static __forceinline__ float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
static __forceinline__ float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
static __forceinline__ double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
/* The _rn arithmetic intrinsics are never contracted into an FMA. */
template <class T> static __forceinline__ T cnn_gpu_emu_opaque(T v) { __asm__("" : "+x"(v)); return v; }
static __forceinline__ float __fadd_rn(float x, float y) { return cnn_gpu_emu_opaque(x + y); }
static __forceinline__ float __fsub_rn(float x, float y) { return cnn_gpu_emu_opaque(x - y); }
static __forceinline__ float __fmul_rn(float x, float y) { return cnn_gpu_emu_opaque(x * y); }
static __forceinline__ float __fdiv_rn(float x, float y) { return x / y; }
static __forceinline__ float __frcp_rn(float x) { return 1.0f / x; }
static __forceinline__ float __fsqrt_rn(float x) { return sqrtf(x); }
static __forceinline__ double __dadd_rn(double x, double y) { return cnn_gpu_emu_opaque(x + y); }
static __forceinline__ double __dsub_rn(double x, double y) { return cnn_gpu_emu_opaque(x - y); }
static __forceinline__ double __dmul_rn(double x, double y) { return cnn_gpu_emu_opaque(x * y); }
static __forceinline__ double __ddiv_rn(double x, double y) { return x / y; }
static __forceinline__ double __drcp_rn(double x) { return 1.0 / x; }
static __forceinline__ double __dsqrt_rn(double x) { return sqrt(x); }
/* The fast intrinsics __expf, __logf and __fdividef (MUFU.EX2, MUFU.LG2, MUFU.RCP) are given with the
 * error the CUDA C++ Programming Guide bounds them by, as a GPU could have it: the exact result moved
 * by that bound, up or down as the input's second-lowest bit says, but where the unit's result is a
 * power of two (2^k of an integer k, 1/y or log2 y of a power of two y), which it gives exactly (an
 * assumption, not checked on a GPU here: sigmoid's 1 / (1 + 0) = 1 then leaves 1 - s = 0). Kernels
 * that use them are checked against the bound, not the C library's correctly rounded value. */
static __forceinline__ bool cnn_gpu_emu_power_of_two(float y) {
    return ((unsigned int)cnn_gpu_emu_bits(y) & 0x007fffffu) == 0u;
}
static __forceinline__ float cnn_gpu_emu_ulps_off(float r, unsigned int ulps, float input) {
    const unsigned int bits = (unsigned int)cnn_gpu_emu_bits(r), magnitude = bits & 0x7fffffffu;
    if (magnitude == 0u || magnitude >= 0x7f800000u - ulps || magnitude <= ulps) return r;
    const bool up = ((unsigned int)cnn_gpu_emu_bits(input) >> 1) & 1u;
    return cnn_gpu_emu_from_bits<float>(up ? bits + ulps : bits - ulps);
}
/* ex2.approx(x * log2(e)): the product rounded to FP32 (the GPU's FMUL), then 2 ulps (exp2f's bound) */
static __forceinline__ float __expf(float x) {
    const float scaled = cnn_gpu_emu_opaque(x * 1.44269504f);
    return scaled == truncf(scaled) ? exp2f(scaled) : cnn_gpu_emu_ulps_off(exp2f(scaled), 2u, x);
}
/* within 2^-21.41 (3.58e-7) of log(x) for x in [0.5, 2]: 3.2e-7 off before the result's rounding; else 3 ulps */
static __forceinline__ float __logf(float x) {
    if (cnn_gpu_emu_power_of_two(x)) return cnn_gpu_emu_opaque(log2f(x) * 0.693147182f);
    if (x >= 0.5f && x <= 2.0f) {
        const double exact = log((double)x), error = 3.2e-7;
        return (float)((((unsigned int)cnn_gpu_emu_bits(x) >> 1) & 1u) ? exact + error : exact - error);
    }
    return cnn_gpu_emu_ulps_off(logf(x), 3u, x);
}
/* x * rcp.approx(y): 2 ulps for 2^-126 <= |y| <= 2^126; 0 (NaN for an infinite x) for a larger finite y */
static __forceinline__ float __fdividef(float x, float y) {
    if (fabsf(y) > 8.5070592e37f && fabsf(y) < __builtin_inff()) return x * (0.0f * y);
    return cnn_gpu_emu_power_of_two(y) ? x / y : cnn_gpu_emu_ulps_off(x / y, 2u, y);
}

static __forceinline__ float __int_as_float(int v) { return cnn_gpu_emu_from_bits<float>((unsigned int)v); }
static __forceinline__ int __float_as_int(float v) { return (int)(unsigned int)cnn_gpu_emu_bits(v); }
static __forceinline__ float __uint_as_float(unsigned int v) { return cnn_gpu_emu_from_bits<float>(v); }
static __forceinline__ unsigned int __float_as_uint(float v) { return (unsigned int)cnn_gpu_emu_bits(v); }
static __forceinline__ double __longlong_as_double(long long v) { return cnn_gpu_emu_from_bits<double>((unsigned long long)v); }
static __forceinline__ long long __double_as_longlong(double v) { return (long long)cnn_gpu_emu_bits(v); }
static __forceinline__ int __double2hiint(double v) { return (int)(cnn_gpu_emu_bits(v) >> 32); }
static __forceinline__ int __double2loint(double v) { return (int)(unsigned int)cnn_gpu_emu_bits(v); }
static __forceinline__ double __hiloint2double(int hi, int lo) {
    return cnn_gpu_emu_from_bits<double>(((unsigned long long)(unsigned int)hi << 32) | (unsigned int)lo);
}
/* The PTX ISA's float-to-integer conversions (cvt.rni/rzi/rmi/rpi): NaN gives 0, a value past the
 * type's range its nearest end. A C++ cast of those is undefined (and faults here), so the
 * intrinsics saturate first. `whole`: the value already rounded to an integer. */
static __forceinline__ int cnn_gpu_emu_saturated_int(double whole) {
    return whole != whole ? 0 : whole <= -2147483648.0 ? -2147483647 - 1 : whole >= 2147483647.0 ? 2147483647 : (int)whole;
}
static __forceinline__ unsigned int cnn_gpu_emu_saturated_uint(double whole) {
    return whole != whole || whole <= 0.0 ? 0u : whole >= 4294967295.0 ? 4294967295u : (unsigned int)whole;
}
static __forceinline__ int __float2int_rn(float x) { return cnn_gpu_emu_saturated_int(rintf(x)); }
static __forceinline__ int __float2int_rz(float x) { return cnn_gpu_emu_saturated_int(truncf(x)); }
static __forceinline__ int __float2int_rd(float x) { return cnn_gpu_emu_saturated_int(floorf(x)); }
static __forceinline__ int __float2int_ru(float x) { return cnn_gpu_emu_saturated_int(ceilf(x)); }
static __forceinline__ unsigned int __float2uint_rn(float x) { return cnn_gpu_emu_saturated_uint(rintf(x)); }
static __forceinline__ float __int2float_rn(int x) { return (float)x; }
static __forceinline__ int __double2int_rn(double x) { return cnn_gpu_emu_saturated_int(rint(x)); }
static __forceinline__ int __double2int_rz(double x) { return cnn_gpu_emu_saturated_int(trunc(x)); }
static __forceinline__ float __double2float_rn(double x) { return (float)x; }

#define CNN_GPU_EMU_CLASSIFY(name, builtin)                                         \
    static __forceinline__ bool name(float x) { return builtin(x); }              \
    static __forceinline__ bool name(double x) { return builtin(x); }
CNN_GPU_EMU_CLASSIFY(isnan, __builtin_isnan)
CNN_GPU_EMU_CLASSIFY(isinf, __builtin_isinf)
CNN_GPU_EMU_CLASSIFY(isfinite, __builtin_isfinite)
CNN_GPU_EMU_CLASSIFY(signbit, __builtin_signbit)
#undef CNN_GPU_EMU_CLASSIFY

#define CNN_GPU_EMU_MINMAX(T)                                                       \
    static __forceinline__ T min(T a, T b) { return a < b ? a : b; }              \
    static __forceinline__ T max(T a, T b) { return a > b ? a : b; }
CNN_GPU_EMU_MINMAX(int) CNN_GPU_EMU_MINMAX(unsigned int) CNN_GPU_EMU_MINMAX(long long)
CNN_GPU_EMU_MINMAX(unsigned long long)
#undef CNN_GPU_EMU_MINMAX
static __forceinline__ float min(float a, float b) { return fminf(a, b); }
static __forceinline__ float max(float a, float b) { return fmaxf(a, b); }
static __forceinline__ double min(double a, double b) { return fmin(a, b); }
static __forceinline__ double max(double a, double b) { return fmax(a, b); }
static __forceinline__ unsigned int umin(unsigned int a, unsigned int b) { return a < b ? a : b; }
static __forceinline__ unsigned int umax(unsigned int a, unsigned int b) { return a > b ? a : b; }
static __forceinline__ long long llmin(long long a, long long b) { return a < b ? a : b; }
static __forceinline__ long long llmax(long long a, long long b) { return a > b ? a : b; }

/* --- integer intrinsics --------------------------------------------------------------------- */
static __forceinline__ int __popc(unsigned int x) { return __builtin_popcount(x); }
static __forceinline__ int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static __forceinline__ int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
static __forceinline__ int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static __forceinline__ int __ffs(int x) { return __builtin_ffs(x); }
static __forceinline__ int __ffsll(long long x) { return __builtin_ffsll(x); }
static __forceinline__ unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
/* the high word of hi:lo shifted left by min(shift, 32) */
static __forceinline__ unsigned int __funnelshift_lc(unsigned int lo, unsigned int hi, unsigned int shift) {
    const unsigned long long joined = (unsigned long long)hi << 32 | lo;
    return (unsigned int)((joined << (shift < 32u ? shift : 32u)) >> 32);
}
static __forceinline__ int __mul24(int a, int b) { return a * b; }
static __forceinline__ unsigned int __umul24(unsigned int a, unsigned int b) { return a * b; }
static __forceinline__ int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static __forceinline__ unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
static __forceinline__ void __trap() { __builtin_trap(); }

/* --- launch glue used by the generated entry points ------------------------------------------ */
namespace cnn_gpu_emu {
template <class T> struct type_code { static constexpr const char* value = "?"; };
#define CNN_GPU_EMU_TYPE_CODE(T, code)                                                          \
    template <> struct type_code<T> { static constexpr const char* value = code; };             \
    template <> struct type_code<T*> { static constexpr const char* value = "*" code; };        \
    template <> struct type_code<const T*> { static constexpr const char* value = "*" code; };
CNN_GPU_EMU_TYPE_CODE(float, "f4")
CNN_GPU_EMU_TYPE_CODE(double, "f8")
CNN_GPU_EMU_TYPE_CODE(signed char, "i1")
CNN_GPU_EMU_TYPE_CODE(char, "i1")
CNN_GPU_EMU_TYPE_CODE(unsigned char, "u1")
CNN_GPU_EMU_TYPE_CODE(short, "i2")
CNN_GPU_EMU_TYPE_CODE(unsigned short, "u2")
CNN_GPU_EMU_TYPE_CODE(int, "i4")
CNN_GPU_EMU_TYPE_CODE(unsigned int, "u4")
CNN_GPU_EMU_TYPE_CODE(long, "i8")
CNN_GPU_EMU_TYPE_CODE(unsigned long, "u8")
CNN_GPU_EMU_TYPE_CODE(long long, "i8")
CNN_GPU_EMU_TYPE_CODE(unsigned long long, "u8")
CNN_GPU_EMU_TYPE_CODE(bool, "b1")
#undef CNN_GPU_EMU_TYPE_CODE
/* A vector pointer takes an array of its element type (CuPy passes only the address). */
#define CNN_GPU_EMU_VECTOR_POINTER_CODE(T, code)                                                \
    template <> struct type_code<T*> { static constexpr const char* value = "*" code; };        \
    template <> struct type_code<const T*> { static constexpr const char* value = "*" code; };
CNN_GPU_EMU_VECTOR_POINTER_CODE(float2, "f4")
CNN_GPU_EMU_VECTOR_POINTER_CODE(float4, "f4")
CNN_GPU_EMU_VECTOR_POINTER_CODE(double2, "f8")
CNN_GPU_EMU_VECTOR_POINTER_CODE(double4, "f8")
CNN_GPU_EMU_VECTOR_POINTER_CODE(int2, "i4")
CNN_GPU_EMU_VECTOR_POINTER_CODE(int4, "i4")
#undef CNN_GPU_EMU_VECTOR_POINTER_CODE
template <> struct type_code<void*> { static constexpr const char* value = "*"; };
template <> struct type_code<const void*> { static constexpr const char* value = "*"; };

template <class T> struct remove_reference { typedef T type; };
template <unsigned long... I> struct indices {};
template <unsigned long N, unsigned long... I> struct make_indices : make_indices<N - 1, N - 1, I...> {};
template <unsigned long... I> struct make_indices<0, I...> { typedef indices<I...> type; };

template <class... A, unsigned long... I>
inline void invoke(void (*kernel)(A...), void** args, indices<I...>) {
    kernel(*static_cast<typename remove_reference<A>::type*>(args[I])...);
}
template <class... A>
inline void invoke(void (*kernel)(A...), void** args) {
    __asm__("" : "+r"(kernel));  /* not inlined here: fault reports and debuggers see the kernel's frame */
    invoke(kernel, args, typename make_indices<sizeof...(A)>::type());
}
template <class... A>
inline const char* const* signature(void (*)(A...)) {
    static const char* const codes[] = {type_code<A>::value..., nullptr};
    return codes;
}
}  // namespace cnn_gpu_emu

/* --- float16 storage (kernels/common.cuh: half_bits, to_acc, to_real) ------------------------ *
 * What PTX's cvt.rn.f16.f32 does, in software: FP32 -> IEEE binary16 bits rounded to nearest
 * even, subnormal results included, overflow to infinity, a NaN kept quiet with its sign and top
 * payload bits. Integer operations only, so the emulator's FTZ/DAZ mode cannot touch it. The other
 * direction (exact) is cnn_gpu_emu_half_to_float above. A float16 array (NumPy "f2") is passed to a
 * half_bits pointer; common.cuh defines the struct, so it is only named here. */
static __forceinline__ unsigned short cnn_gpu_emu_float_to_half(float x) {
    unsigned int bits = (unsigned int)cnn_gpu_emu_bits(x);
    unsigned int sign = (bits >> 16) & 0x8000u, magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return (unsigned short)(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    if (magnitude >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);   /* >= 65520 (and inf): inf */
    if (magnitude >= 0x38800000u)                                            /* normal: rebias, round */
        return (unsigned short)(sign | ((magnitude - 0x38000000u + 0xfffu + ((magnitude >> 13) & 1u)) >> 13));
    if (magnitude <= 0x33000000u) return (unsigned short)sign;               /* at most 2^-25: zero */
    unsigned int significand = (magnitude & 0x7fffffu) | 0x800000u;          /* subnormal: in 2^-24 units */
    unsigned int shift = 126u - (magnitude >> 23), result = significand >> shift;
    unsigned int rest = significand & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    result += rest > halfway || (rest == halfway && (result & 1u));
    return (unsigned short)(sign | result);
}
struct half_bits;
namespace cnn_gpu_emu {
template <> struct type_code<half_bits*> { static constexpr const char* value = "*f2"; };
template <> struct type_code<const half_bits*> { static constexpr const char* value = "*f2"; };
}  // namespace cnn_gpu_emu

#endif
