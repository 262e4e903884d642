/* The interface between a compiled kernel module and the emulator runtime (emu_runtime.cpp).
 * Included by cuda_emu.h (kernel side) and by the runtime; plain C layout, mirrored in
 * cnn_gpu/emu/_module.py with ctypes. */
#ifndef CNN_GPU_EMU_ABI_H
#define CNN_GPU_EMU_ABI_H

struct cnn_gpu_emu_uint3 { unsigned int x, y, z; };

/* Inaccessible bytes before dynamic shared memory and after its capacity in a guarded launch, and
 * before the static __shared__ arrays and after the page holding their end: an index that is far
 * off (a wrong stride, a negative offset) faults instead of reaching the library's other data. (A
 * GPU's shared window is at most 228 KB: 1 MiB holds most such errors.) */
#define CNN_GPU_EMU_FAR_GUARD_BYTES 1048576ULL

/* What a kernel sees of the CUDA thread it runs as: first member of the runtime's fiber. */
struct cnn_gpu_emu_thread {
    cnn_gpu_emu_uint3 thread_idx;
    unsigned int lane;
    unsigned int warp_size;        /* lanes in this thread's warp (the last warp may be partial) */
    int in_atomic;                 /* inside an atomic: one atomic access for the race check and the profile */
};

/* One per compiled module (hidden global in the .so): the runtime fills it while it runs a
 * launch of that module; kernels read threadIdx/blockIdx/... from it. */
struct cnn_gpu_emu_module_state {
    cnn_gpu_emu_thread* current;
    cnn_gpu_emu_uint3 block_idx;
    cnn_gpu_emu_uint3 block_dim;
    cnn_gpu_emu_uint3 grid_dim;
    char* static_shared_begin;     /* the module's __shared__ arrays, for NaN poisoning */
    char* static_shared_end;
    char* dynamic_shared;          /* page-aligned buffer behind every extern __shared__ array, with
                                    * CNN_GPU_EMU_FAR_GUARD_BYTES before it and after its capacity */
    unsigned long long dynamic_shared_capacity;
    /* the guard zones around the __shared__ arrays: (offset from static_shared_begin, bytes) pairs
     * in address order, from the module's link (_build.shared_section_script) */
    const unsigned long long* static_shared_guards;
    const unsigned long long* static_shared_guards_end;
    /* the arrays: (offset, bytes) pairs from the library's symbols, set by _module._Library (null
     * where they cannot be read: the spans between the guard zones then stand for them) */
    const unsigned long long* static_shared_arrays;
    const unsigned long long* static_shared_arrays_end;
};

enum cnn_gpu_emu_schedule { CNN_GPU_EMU_FORWARD = 0, CNN_GPU_EMU_REVERSE = 1, CNN_GPU_EMU_RANDOM = 2 };

enum cnn_gpu_emu_fault_kind {
    CNN_GPU_EMU_OK = 0,
    CNN_GPU_EMU_SIGNAL = 1,            /* SIGSEGV/SIGBUS/SIGFPE/SIGILL inside a kernel */
    CNN_GPU_EMU_STACK_OVERFLOW = 2,
    CNN_GPU_EMU_DIVERGENT_BARRIER = 3, /* threads wait at different __syncthreads() */
    CNN_GPU_EMU_BARRIER_UNREACHED = 4, /* some threads exited while others wait at a barrier */
    CNN_GPU_EMU_WARP_DEADLOCK = 5,     /* a warp exchange (shuffle/vote) some lanes never join */
    CNN_GPU_EMU_WATCHDOG = 6,
    CNN_GPU_EMU_SHARED_OVERRUN = 7,    /* write past the dynamic shared memory, or into a __shared__ array's guard zone */
    CNN_GPU_EMU_SETUP = 8,             /* the runtime could not set up the launch */
    CNN_GPU_EMU_RACE = 9,              /* two threads touch a byte with nothing ordering them */
    CNN_GPU_EMU_INTERRUPTED = 10,      /* SIGINT (Ctrl-C) during the launch */
    CNN_GPU_EMU_CP_ASYNC = 11,         /* cp.async misused: not into shared memory, never waited for */
    CNN_GPU_EMU_WARP_MASK = 12         /* a lane runs a shuffle, vote or __syncwarp whose mask leaves it out */
};

/* Memory-access profile of one launch (instrumented module, desc->profile): one row per
 * (instruction, memory space, operation), counted as Nsight Compute counts them. */
enum cnn_gpu_emu_space { CNN_GPU_EMU_GLOBAL = 1, CNN_GPU_EMU_SHARED = 2 };
enum cnn_gpu_emu_op { CNN_GPU_EMU_LOAD = 0, CNN_GPU_EMU_STORE = 1, CNN_GPU_EMU_ATOMIC = 2 };
struct cnn_gpu_emu_profile_site {
    unsigned long long offset;         /* the access's instruction, relative to the module's base */
    int space;
    int op;
    unsigned long long requests;       /* warp-level instances: the n-th execution by the lanes of a warp */
    unsigned long long sectors;        /* global: distinct 32-byte sectors per request, summed */
    unsigned long long wavefronts;     /* shared: per request the most distinct words in one bank, summed */
    unsigned long long bytes;
};

struct cnn_gpu_emu_launch_desc {
    /* in */
    cnn_gpu_emu_module_state* module;
    void (*entry)(void**);
    void** args;
    unsigned int grid[3];
    unsigned int block[3];
    unsigned long long shared_mem;
    unsigned long long seed;
    double timeout_seconds;            /* watchdog; <= 0, >= 1e9 or inf disables it */
    int schedule;
    int poison;                        /* fill shared memory with NaN (0xff bytes) before each block */
    int guard_shared;                  /* PROT_NONE page + canary after the dynamic shared memory; the
                                          __shared__ arrays' guard zones; the far zones */
    int flush_denormals;               /* FTZ+DAZ in MXCSR, as nvcc/NVRTC -ftz=true */
    int race_check;                    /* the module is instrumented: check shared memory accesses */
    int race_check_global;             /* ... and the array arguments too */
    const unsigned long long* global_ranges;  /* [begin, end) pairs of the array arguments */
    int global_count;
    int race_region;                   /* out: 0 static shared, 1 dynamic shared, 2 + i global range i */
    void* profile;                     /* cnn_gpu_emu_profile_new(): record every access (instrumented module) */
    unsigned long long sample_blocks;  /* > 0: run only this many blocks, spread over the grid */
    unsigned long long static_shared_limit;  /* the most bytes of __shared__ arrays the first block may
                                                write (with poison: a GPU refuses a launch over its limit) */
    /* out: the fault, when cnn_gpu_emu_launch returns non-zero */
    int fault_kind;
    int signal_number;
    int has_thread;
    unsigned int fault_block[3];
    unsigned int fault_thread[3];
    unsigned int other_thread[3];      /* the second party of a divergence/deadlock */
    int has_other_thread;
    unsigned long long fault_address;
    unsigned long long site_offset;    /* instruction of the fault, relative to site_object's base */
    unsigned long long other_site_offset;
    char site_object[512];
    char other_site_object[512];
    char message[512];
};

/* The runtime's functions that kernel modules call (cuda_emu.h). Declared here, where the runtime
 * sees them too, so that a change of one's parameters fails the runtime's build: the modules' cache
 * key covers this file and cuda_emu.h, not the runtime's source, so a module built before a change
 * of the runtime alone binds to the new one. */
#ifdef __cplusplus
extern "C" {
#endif
/* A barrier is identified by its source file and line, not its address: the compiler may duplicate
 * one call site. */
int cnn_gpu_emu_barrier(cnn_gpu_emu_thread* me, int value, const char* file, int line);
/* Warp exchanges: the whole warp's (mma.sync, ldmatrix), or the lanes of a mask's (shuffles, votes,
 * __syncwarp: orders_memory 1, the one of them that orders the lanes' memory accesses, as in CUDA). */
const unsigned long long* cnn_gpu_emu_warp_exchange(cnn_gpu_emu_thread* me, unsigned long long value);
const unsigned long long* cnn_gpu_emu_warp_exchange_masked(cnn_gpu_emu_thread* me, unsigned long long value,
                                                           unsigned int mask, int orders_memory);
void cnn_gpu_emu_warp_mask_fault(cnn_gpu_emu_thread* me, unsigned int mask);
/* the instrumented build's device-scope fences and memory accesses */
void cnn_gpu_emu_fence(cnn_gpu_emu_thread* me);
void cnn_gpu_emu_access(cnn_gpu_emu_thread* me, void* address, unsigned long size, int write, void* site);
/* cp.async. src: null for a zero-fill; data: the bytes the copy will write */
void cnn_gpu_emu_cp_async_issue(cnn_gpu_emu_thread* me, void* dst, const void* src, const void* data, int bytes);
void cnn_gpu_emu_cp_async_commit_group(cnn_gpu_emu_thread* me);
/* retires all but the `pending` newest committed groups; pending < 0: every copy, committed or not */
void cnn_gpu_emu_cp_async_wait_group(cnn_gpu_emu_thread* me, int pending);
#ifdef __cplusplus
}
#endif

#endif
