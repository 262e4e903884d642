// The emulator runtime: runs a CUDA launch on the calling OS thread, one user-space fiber per
// CUDA thread, blocks one after another. Built once into its own shared library (loaded
// RTLD_GLOBAL), used by every kernel module through the functions declared in cuda_emu.h.
//
// Scheduling: a fiber runs until it waits (at __syncthreads or a warp exchange) or exits, then
// switches directly to the next runnable fiber of the block's current order (forward, reverse or
// a random permutation, re-drawn at every barrier). A fault (signal, divergent barrier, deadlock,
// watchdog, Ctrl-C) ends the launch and is described in the launch descriptor.
#include "emu_abi.h"

#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <xmmintrin.h>

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kFiberSlot = kStackBytes + kPage;  // guard page below each stack
constexpr int kMaxThreads = 1024;
constexpr int kWarp = 32;
// The guard zones' bytes: a load from one that nothing reports (the plain build checks the zones
// for stores only) reads a loud value: 8.5e37 as a float, NaN as a half, 2e301 as a double, a large
// positive int, where 0xa5 bytes were -2.9e-16, as good as the zero a padding read expects. Not a
// poison byte: a store of an uninitialised shared value into a zone still changes it.
constexpr unsigned char kCanary = 0x7e;

// The byte that fills shared memory before each block (poison): 0xff (NaN in every float type) under
// the forward schedule; 0x7f (3.4e38 as a float, a large positive int) under reverse; one of those or
// 0xc3 (-391.5 as a float, a negative int) by the seed under random. fmaxf/fminf ignore NaN, and all
// ones is the identity of an unsigned min or an atomicAnd: an uninitialised accumulator hidden by
// one poison shows under another.
unsigned char poison_byte(const cnn_gpu_emu_launch_desc* d) {
    static const unsigned char kPoisons[] = {0xff, 0x7f, 0xc3};
    if (d->schedule == CNN_GPU_EMU_REVERSE) return kPoisons[1];
    if (d->schedule == CNN_GPU_EMU_RANDOM) return kPoisons[d->seed % 3];
    return kPoisons[0];
}
constexpr size_t kAltStackBytes = 64 * 1024;

}  // namespace

// --- context switch ------------------------------------------------------------------------------
// save_sp receives the suspended context's stack pointer; the callee-saved registers, MXCSR and
// the x87 control word live on that stack.
extern "C" void cnn_gpu_emu_switch(void** save_sp, void* load_sp);
extern "C" void cnn_gpu_emu_fiber_start();
asm(R"(
.pushsection .text
.globl cnn_gpu_emu_switch
.hidden cnn_gpu_emu_switch
.type cnn_gpu_emu_switch, @function
cnn_gpu_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size cnn_gpu_emu_switch, .-cnn_gpu_emu_switch

.globl cnn_gpu_emu_fiber_start
.hidden cnn_gpu_emu_fiber_start
.type cnn_gpu_emu_fiber_start, @function
cnn_gpu_emu_fiber_start:
    movq %r12, %rdi
    call *%r13
    ud2
.size cnn_gpu_emu_fiber_start, .-cnn_gpu_emu_fiber_start
.popsection
)");

namespace {

enum FiberState { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP = 2, EXITED = 3 };

struct Launch;
struct Profiler;

// A cp.async copy issued and not yet waited for: its bytes land in `dst` when its group retires.
struct PendingCopy {
    char* dst;
    unsigned int group;   // the issuing thread's commit count when it was issued
    unsigned int bytes;
    void* site;           // where it was issued
    unsigned char data[16];
};

struct Fiber {
    cnn_gpu_emu_thread view;  // first member: kernels hold a pointer to it
    void* sp;
    Launch* launch;
    int state;
    int linear;
    void* wait_site;
    // cp.async: copies in issue order (their groups ascend), kept allocated across launches
    PendingCopy* copies;
    int copy_count;
    int copy_capacity;
    unsigned int groups_committed;
};

struct Warp {
    int size;
    int arrived;
    int phase;  // slot buffer the next exchange writes; double-buffered
    unsigned int epoch;  // completed whole-warp __syncwarp()s in this block: they order the lanes' memory accesses
    // __syncwarp(mask)s among part of the warp (race check): per lane, those it has taken part in,
    // and the most of each lane's that its own follow, directly or through other lanes (a vector
    // clock), so that __syncwarp(mask) orders the accesses of the mask's lanes
    bool partial_clocks;  // set since the block began
    unsigned int partial_count[kWarp];
    unsigned int partial_seen[kWarp][kWarp];
    unsigned long long slots[2][kWarp];
    // exchanges whose mask leaves lanes of the warp out (cnn_gpu_emu_warp_exchange_masked): the
    // lanes waiting in one, each one's mask and value, and what each lane received
    unsigned int partial_waiting;
    unsigned int partial_mask[kWarp];
    unsigned long long partial_value[kWarp];
    unsigned long long received[kWarp][kWarp];
};

// Race check: the last write and up to two reads of each 4-byte word of shared memory and of the
// array arguments, in the current barrier epoch; of each byte of a word once the word has been
// accessed in parts (float16 elements), so that threads touching different bytes never conflict.
// Two accesses of different threads of a block conflict unless a barrier separates them, or a
// __syncwarp() (of both lanes, or a chain of them) does and both are lanes of one warp; in global
// memory, accesses of different blocks conflict unless a __threadfence and an atomic order them
// (Sync, below). An atomic counts as a write that conflicts with plain accesses only: atomics of one
// word are ordered among themselves, and an access that its block's atomic on the word precedes
// (in the same thread, or across a barrier) comes after the word's earlier atomics, which that
// atomic followed (coherence: the last block's reset of an arrival count).
struct Access {
    int thread;
    unsigned int atomic : 1;          // an atomic read-modify-write
    unsigned int partial_clock : 31;  // its lane's partial_count (Warp) at the access (< 2^31 exchanges a block)
    unsigned int warp_epoch;
    unsigned int block;   // position in the launch's block order
    void* site;
    unsigned int epoch;   // the launch's barrier epoch at the access
    unsigned int fences;  // __threadfence() calls of the thread before it
};

struct Region {
    char* begin;
    char* end;
    size_t shadow_base;
};
struct ShadowWord {
    unsigned int write_epoch;
    unsigned int read_epoch;
    int readers;
    unsigned int split;  // 0: tracked as a whole; else 1 + its index among the split words' byte states
    Access writer;
    Access reader[2];
    // with an atomic writer: an earlier atomic of another thread since the last plain write, for an
    // access that is ordered after the writer but not after this one (epoch 0: none)
    Access other_atomic;
};

// Per OS thread: fiber stacks and block bookkeeping, reused across launches.
struct ThreadResources {
    char* stacks = nullptr;
    int stack_capacity = 0;
    Fiber fibers[kMaxThreads];
    int order[kMaxThreads];
    Warp warps[kMaxThreads / kWarp];
    void* alt_stack = nullptr;
    timer_t timer{};
    bool has_timer = false;
};

struct Launch {
    cnn_gpu_emu_launch_desc* desc;
    cnn_gpu_emu_module_state* module;
    ThreadResources* res;
    Fiber* fibers;
    int* order;
    Warp* warps;
    int n;
    int pos;
    int live;
    int at_barrier;
    void* barrier_site;
    const char* barrier_file;
    int barrier_line;
    int barrier_parity;
    int barrier_count[2];
    unsigned long long rng;
    void* main_sp;
    sigjmp_buf jump;
    void* raw_site;        // faulting pc (resolved to object+offset after the launch)
    void* raw_other_site;
    // the periodic tick: ends the launch at its deadline or on Ctrl-C
    volatile sig_atomic_t stop_kind;   // WATCHDOG or INTERRUPTED once the tick has decided to stop
    volatile sig_atomic_t busy;        // in the profiler's bookkeeping: it stops there, not the signal
    volatile sig_atomic_t stop_waited; // instrumented: the tick gave the next access a tick to stop at
    bool instrumented;                 // race check or profile: every access calls the runtime
    bool has_deadline;
    struct timespec deadline;
    unsigned long interrupts_at_start;
    unsigned int block[3];
    // race check
    unsigned int epoch;          // barrier epochs, counted over the whole launch
    unsigned int block_number;   // position of the running block in the launch's order
    ShadowWord* shadow;          // the words of every region, one after another
    ShadowWord* byte_shadow;     // four per split word
    unsigned int split_words, split_capacity;
    Region* regions;             // static shared, dynamic shared, then the array arguments
    int region_count;
    struct Sync* sync;           // fences and atomics between blocks (race check of global memory)
    Profiler* profiler;          // memory-access profile of this launch, if asked for
    unsigned int block_serial;   // 1 + blocks started so far (the profiler's per-block state)
};

// Owns a thread's resources; released when the thread ends (threads of a pool come and go).
struct ResourcesOwner {
    ThreadResources* resources = nullptr;
    ~ResourcesOwner() {
        ThreadResources* r = resources;
        if (!r) return;
        if (r->stacks) munmap(r->stacks, (size_t)r->stack_capacity * kFiberSlot);
        if (r->has_timer) timer_delete(r->timer);
        for (int i = 0; i < kMaxThreads; ++i) free(r->fibers[i].copies);
        free(r->alt_stack);
        free(r);
    }
};
thread_local ResourcesOwner tl_owner;
thread_local Launch* volatile tl_launch;

unsigned long long next_random(Launch* L) {  // xorshift64*
    L->rng ^= L->rng >> 12;
    L->rng ^= L->rng << 25;
    L->rng ^= L->rng >> 27;
    return L->rng * 2685821657736338717ULL;
}

void shuffle(Launch* L, int* a, int n) {
    for (int i = n - 1; i > 0; --i) {
        int j = (int)(next_random(L) % (unsigned long long)(i + 1));
        int t = a[i]; a[i] = a[j]; a[j] = t;
    }
}

void set_order(Launch* L) {
    int n = L->n;
    switch (L->desc->schedule) {
    case CNN_GPU_EMU_REVERSE:
        for (int i = 0; i < n; ++i) L->order[i] = n - 1 - i;
        break;
    case CNN_GPU_EMU_RANDOM:
        for (int i = 0; i < n; ++i) L->order[i] = i;
        shuffle(L, L->order, n);
        break;
    default:
        for (int i = 0; i < n; ++i) L->order[i] = i;
    }
}

unsigned long long gcd(unsigned long long a, unsigned long long b) {
    while (b) { unsigned long long t = a % b; a = b; b = t; }
    return a;
}

void copy_idx(unsigned int* dst, const cnn_gpu_emu_uint3& v) { dst[0] = v.x; dst[1] = v.y; dst[2] = v.z; }

[[noreturn]] void leave_to_main(Launch* L, Fiber* self) {
    L->module->current = nullptr;
    cnn_gpu_emu_switch(&self->sp, L->main_sp);
    __builtin_unreachable();
}

// A fault found by the runtime itself (not a signal): describe it and abandon the block.
[[noreturn]] __attribute__((format(printf, 6, 7)))
void runtime_fault(Launch* L, Fiber* self, int kind, Fiber* other, void* other_site, const char* fmt, ...) {
    cnn_gpu_emu_launch_desc* d = L->desc;
    d->fault_kind = kind;
    d->has_thread = 1;
    copy_idx(d->fault_thread, self->view.thread_idx);
    if (other) {
        d->has_other_thread = 1;
        copy_idx(d->other_thread, other->view.thread_idx);
    }
    L->raw_site = self->wait_site;
    L->raw_other_site = other_site;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->message, sizeof d->message, fmt, ap);
    va_end(ap);
    leave_to_main(L, self);
}

// No fiber can run: every live thread waits for something that will never happen.
[[noreturn]] void stalled(Launch* L, Fiber* self) {
    // A warp exchange first: its lanes name the culprit precisely.
    for (int i = 0; i < L->n; ++i) {
        Fiber* f = &L->fibers[i];
        if (f->state != AT_WARP) continue;
        int base = i - (i % kWarp);
        Warp* w = &L->warps[i / kWarp];
        // the lanes its exchange waits for (cnn_gpu_emu_warp_exchange_masked), and where each waits
        const unsigned int lanes = w->size == kWarp ? ~0u : (1u << w->size) - 1u;
        auto mask_of = [&](int lane) { return w->partial_waiting >> lane & 1u ? w->partial_mask[lane] : lanes; };
        const unsigned int group = mask_of(i % kWarp);
        for (int j = base; j < base + w->size; ++j) {
            if (!((group >> (j - base)) & 1u)) continue;
            Fiber* g = &L->fibers[j];
            if (g->state == AT_WARP && mask_of(j - base) != group)
                runtime_fault(L, f, CNN_GPU_EMU_WARP_DEADLOCK, g, g->wait_site,
                              "deadlock: lane %d waits in a warp exchange over mask 0x%08x for lane %d, which waits "
                              "in one over mask 0x%08x", f->linear % kWarp, group, g->linear % kWarp,
                              mask_of(j - base));
            if (g->state == EXITED)
                runtime_fault(L, f, CNN_GPU_EMU_WARP_DEADLOCK, g, nullptr,
                              "warp shuffle/vote with exited lanes: lane %d waits for lane %d, which has exited",
                              f->linear % kWarp, g->linear % kWarp);
            if (g->state == AT_BARRIER)
                runtime_fault(L, f, CNN_GPU_EMU_WARP_DEADLOCK, g, g->wait_site,
                              "deadlock: lane %d waits in a warp shuffle/vote while lane %d waits at __syncthreads()",
                              f->linear % kWarp, g->linear % kWarp);
        }
    }
    for (int i = 0; i < L->n; ++i) {
        Fiber* f = &L->fibers[i];
        if (f->state != AT_BARRIER) continue;
        for (int j = 0; j < L->n; ++j)
            if (L->fibers[j].state == EXITED)
                runtime_fault(L, f, CNN_GPU_EMU_BARRIER_UNREACHED, &L->fibers[j], nullptr,
                              "__syncthreads() reached by %d of %d threads; the others exited without reaching it",
                              L->at_barrier, L->n);
    }
    runtime_fault(L, self, CNN_GPU_EMU_SETUP, nullptr, nullptr, "scheduler stalled");
}

inline void switch_fiber(Launch* L, Fiber* from, Fiber* to) {
    if (from == to) return;
    L->module->current = &to->view;
    cnn_gpu_emu_switch(&from->sp, to->sp);
}

// Hand the OS thread to the next runnable fiber after the current position of the order.
void run_next(Launch* L, Fiber* self) {
    int n = L->n, p = L->pos;
    for (int k = 0; k < n; ++k) {
        if (++p == n) p = 0;
        Fiber* f = &L->fibers[L->order[p]];
        if (f->state == RUNNABLE) {
            L->pos = p;
            switch_fiber(L, self, f);
            return;
        }
    }
    stalled(L, self);
}

void fiber_main(Fiber* self) {
    Launch* L = self->launch;
    L->desc->entry(L->desc->args);
    if (self->copy_count) {
        self->wait_site = self->copies[0].site;
        runtime_fault(L, self, CNN_GPU_EMU_CP_ASYNC, nullptr, nullptr,
                      "thread exited with %d cp.async copies never waited for (the first issued here); "
                      "call cp_async_wait_all() before returning", self->copy_count);
    }
    self->state = EXITED;
    if (--L->live == 0) leave_to_main(L, self);
    run_next(L, self);
    __builtin_unreachable();
}

void prepare_fiber(Launch* L, Fiber* f, char* stack_top, unsigned int csr_and_cw[2]) {
    void** sp = (void**)(stack_top - 80);  // 16-aligned; the trampoline starts with rsp % 16 == 0
    memcpy(sp, csr_and_cw, 8);
    sp[1] = nullptr;                        // r15
    sp[2] = nullptr;                        // r14
    sp[3] = (void*)&fiber_main;             // r13: entry called by the trampoline
    sp[4] = f;                              // r12: its argument
    sp[5] = nullptr;                        // rbx
    sp[6] = nullptr;                        // rbp
    sp[7] = (void*)&cnn_gpu_emu_fiber_start;
    f->sp = sp;
    f->launch = L;
    f->state = RUNNABLE;
    f->wait_site = nullptr;
    f->view.in_atomic = 0;
    f->copy_count = 0;
    f->groups_committed = 0;
}

// Stack tops are staggered by a multiple of a cache line: equally aligned tops would all fall in
// the same cache sets and evict each other at every switch.
char* stack_top(ThreadResources* r, int i) {
    return r->stacks + (size_t)(i + 1) * kFiberSlot - (size_t)(i % 64) * 64;
}

bool ensure_stacks(ThreadResources* r, int n) {
    if (r->stack_capacity >= n) return true;
    int capacity = 64;
    while (capacity < n) capacity *= 2;
    if (r->stacks) munmap(r->stacks, (size_t)r->stack_capacity * kFiberSlot);
    r->stack_capacity = 0;
    void* m = mmap(nullptr, (size_t)capacity * kFiberSlot, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) { r->stacks = nullptr; return false; }
    r->stacks = (char*)m;
    for (int i = 0; i < capacity; ++i)
        mprotect(r->stacks + (size_t)i * kFiberSlot, kPage, PROT_NONE);
    r->stack_capacity = capacity;
    return true;
}

// --- signals: faults inside fibers, the watchdog and Ctrl-C ---------------------------------------
// Every launch arms a per-thread timer that ticks every kTickSeconds; the tick ends the launch when
// its deadline has passed or a SIGINT arrived since it started. SIGINT itself is only counted (and
// passed on to Python's handler, which raises KeyboardInterrupt once the launch has returned): it
// may hit any thread, while the tick always hits the launching one.

const int kFaultSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
constexpr int kNumFaultSignals = 4;
struct sigaction g_previous[kNumFaultSignals];
pthread_mutex_t g_signal_lock = PTHREAD_MUTEX_INITIALIZER;
int g_signal_users = 0;
int g_tick_signal = 0;
constexpr double kTickSeconds = 0.05;
constexpr double kMinTickSeconds = 0.001;       // a faster periodic timer starves the launch itself
constexpr double kNoDeadlineSeconds = 1e9;      // from here on (inf too) no deadline: (time_t)inf is undefined
unsigned long g_interrupts = 0;             // SIGINTs seen while launches ran
struct sigaction g_previous_interrupt;      // the handler ours passes SIGINT on to
bool g_interrupt_chained = false;

int fault_signal_index(int sig) {
    for (int i = 0; i < kNumFaultSignals; ++i)
        if (kFaultSignals[i] == sig) return i;
    return -1;
}

void on_fault_signal(int sig, siginfo_t* info, void* context) {
    Launch* L = tl_launch;
    if (L && L->module->current) {
        ucontext_t* uc = (ucontext_t*)context;
        cnn_gpu_emu_launch_desc* d = L->desc;
        Fiber* f = (Fiber*)L->module->current;
        d->signal_number = sig;
        d->fault_address = (unsigned long long)(uintptr_t)info->si_addr;
        d->has_thread = 1;
        copy_idx(d->fault_thread, f->view.thread_idx);
        L->raw_site = (void*)uc->uc_mcontext.gregs[REG_RIP];
        char* addr = (char*)info->si_addr;
        char* stacks = L->res->stacks;
        bool in_guard = sig == SIGSEGV && addr >= stacks &&
                        addr < stacks + (size_t)L->res->stack_capacity * kFiberSlot &&
                        (size_t)(addr - stacks) % kFiberSlot < kPage;
        d->fault_kind = in_guard ? CNN_GPU_EMU_STACK_OVERFLOW : CNN_GPU_EMU_SIGNAL;
        siglongjmp(L->jump, 1);
    }
    // Not ours: hand it to whoever handled it before (Python's faulthandler, or the default).
    int i = fault_signal_index(sig);
    const struct sigaction& prev = g_previous[i];
    if (prev.sa_flags & SA_SIGINFO) {
        prev.sa_sigaction(sig, info, context);
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);  // returning re-executes the instruction and takes the default action
    }
}

void on_interrupt_signal(int sig, siginfo_t* info, void* context) {
    __atomic_fetch_add(&g_interrupts, 1, __ATOMIC_SEQ_CST);
    const struct sigaction& prev = g_previous_interrupt;
    if (prev.sa_flags & SA_SIGINFO) prev.sa_sigaction(sig, info, context);
    else prev.sa_handler(sig);
}

bool past(const struct timespec& t) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > t.tv_sec || (now.tv_sec == t.tv_sec && now.tv_nsec >= t.tv_nsec);
}

void on_tick_signal(int, siginfo_t*, void* context) {
    Launch* L = tl_launch;
    if (!L) return;
    if (__atomic_load_n(&g_interrupts, __ATOMIC_SEQ_CST) != L->interrupts_at_start) L->stop_kind = CNN_GPU_EMU_INTERRUPTED;
    else if (L->has_deadline && past(L->deadline)) L->stop_kind = CNN_GPU_EMU_WATCHDOG;
    // between blocks the block loop notices, in the profiler the profiler does
    if (!L->stop_kind || !L->module->current || L->busy) return;
    // In an instrumented launch the next access stops at its own source line (here the fiber may
    // be in a hook), unless a whole tick passes without one.
    if (L->instrumented && !L->stop_waited) {
        L->stop_waited = 1;
        return;
    }
    cnn_gpu_emu_launch_desc* d = L->desc;
    Fiber* f = (Fiber*)L->module->current;
    d->fault_kind = L->stop_kind;
    d->has_thread = 1;
    copy_idx(d->fault_thread, f->view.thread_idx);
    L->raw_site = (void*)((ucontext_t*)context)->uc_mcontext.gregs[REG_RIP];
    siglongjmp(L->jump, 1);
}

void install_fault_handlers() {
    pthread_mutex_lock(&g_signal_lock);
    if (g_signal_users++ == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault_signal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        for (int i = 0; i < kNumFaultSignals; ++i) sigaction(kFaultSignals[i], &sa, &g_previous[i]);
        // Ctrl-C: only where a handler would run (the default kills the process anyway, promptly)
        struct sigaction current;
        sigaction(SIGINT, nullptr, &current);
        bool handled = (current.sa_flags & SA_SIGINFO) ? current.sa_sigaction != nullptr
                                                       : current.sa_handler != SIG_DFL && current.sa_handler != SIG_IGN;
        g_interrupt_chained = handled && current.sa_sigaction != on_interrupt_signal;
        if (g_interrupt_chained) {
            g_previous_interrupt = current;
            struct sigaction ours = current;
            ours.sa_sigaction = on_interrupt_signal;
            ours.sa_flags = (current.sa_flags | SA_SIGINFO | SA_ONSTACK) & ~SA_RESETHAND;
            sigaction(SIGINT, &ours, nullptr);
        }
    }
    if (!g_tick_signal) {
        g_tick_signal = SIGRTMIN + 5;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_tick_signal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;  // a kernel's printf is not cut short
        sigemptyset(&sa.sa_mask);
        sigaction(g_tick_signal, &sa, nullptr);  // ours for the life of the process
    }
    pthread_mutex_unlock(&g_signal_lock);
}

void remove_fault_handlers() {
    pthread_mutex_lock(&g_signal_lock);
    if (--g_signal_users == 0) {
        for (int i = 0; i < kNumFaultSignals; ++i) sigaction(kFaultSignals[i], &g_previous[i], nullptr);
        if (g_interrupt_chained) sigaction(SIGINT, &g_previous_interrupt, nullptr);
        g_interrupt_chained = false;
    }
    pthread_mutex_unlock(&g_signal_lock);
}

bool arm_tick(ThreadResources* r, double seconds) {
    if (!r->has_timer) {
        struct sigevent ev;
        memset(&ev, 0, sizeof ev);
        ev.sigev_notify = SIGEV_THREAD_ID;
        ev.sigev_signo = g_tick_signal;
        ev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
        if (timer_create(CLOCK_MONOTONIC, &ev, &r->timer) != 0) return false;
        r->has_timer = true;
    }
    struct itimerspec t;
    memset(&t, 0, sizeof t);
    t.it_value.tv_sec = (time_t)seconds;
    t.it_value.tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (t.it_value.tv_sec == 0 && t.it_value.tv_nsec == 0) t.it_value.tv_nsec = 1;
    t.it_interval = t.it_value;
    return timer_settime(r->timer, 0, &t, nullptr) == 0;
}

void disarm_tick(ThreadResources* r) {
    struct itimerspec t;
    memset(&t, 0, sizeof t);
    timer_settime(r->timer, 0, &t, nullptr);
}

void resolve_site(void* pc, bool is_return_address, char* object, size_t object_size,
                  unsigned long long* offset) {
    if (!pc) return;
    char* p = (char*)pc - (is_return_address ? 1 : 0);
    Dl_info info;
    if (dladdr(p, &info) && info.dli_fname) {
        snprintf(object, object_size, "%s", info.dli_fname);
        *offset = (unsigned long long)(p - (char*)info.dli_fbase);
    }
}

// --- shared memory checks ----------------------------------------------------------------------

char* dynamic_guard_page(cnn_gpu_emu_module_state* m, unsigned long long shared_mem) {
    return m->dynamic_shared + ((shared_mem + kPage - 1) / kPage) * kPage;
}

// A guarded launch's inaccessible pages around shared memory: around dynamic shared memory, the far
// zone before it and everything from the page after the launch's bytes to the far zone's end after
// the capacity; around the static __shared__ arrays, the far zones the link put before the first
// and after the page holding the last (_build.shared_section_script).
bool protect_shared_surroundings(cnn_gpu_emu_module_state* m, unsigned long long shared_mem, int prot) {
    char* back = dynamic_guard_page(m, shared_mem);
    char* end = m->dynamic_shared + m->dynamic_shared_capacity + kPage + CNN_GPU_EMU_FAR_GUARD_BYTES;
    bool done = mprotect(m->dynamic_shared - CNN_GPU_EMU_FAR_GUARD_BYTES, CNN_GPU_EMU_FAR_GUARD_BYTES, prot) == 0 &&
                mprotect(back, (size_t)(end - back), prot) == 0;
    if (m->static_shared_begin != nullptr) {
        char* after = (char*)(((uintptr_t)m->static_shared_end + kPage - 1) / kPage * kPage);
        done = done &&
               mprotect(m->static_shared_begin - CNN_GPU_EMU_FAR_GUARD_BYTES, CNN_GPU_EMU_FAR_GUARD_BYTES, prot) == 0 &&
               mprotect(after, CNN_GPU_EMU_FAR_GUARD_BYTES, prot) == 0;
    }
    return done;
}

// The first byte of [from, to) other than run[0], or nullptr (`run`: kRun copies of one byte; memcmp,
// not a byte loop: the guard zones are checked after every block)
constexpr size_t kRun = 4096;
const char* first_other_byte(const char* from, const char* to, const unsigned char* run) {
    for (const char* p = from; p < to; p += kRun) {
        const size_t n = (size_t)(to - p) < kRun ? (size_t)(to - p) : kRun;
        if (memcmp(p, run, n) != 0)
            for (const char* q = p;; ++q)
                if ((unsigned char)*q != run[0]) return q;
    }
    return nullptr;
}

// kRun canary bytes, made when the library loads (the runtime has no thread-safe local statics)
const struct Canaries {
    unsigned char bytes[kRun];
    Canaries() { memset(bytes, kCanary, sizeof bytes); }
} canaries;

bool canary_intact(const char* from, const char* to) { return !first_other_byte(from, to, canaries.bytes); }

// The guard zones around the static __shared__ arrays (_build.shared_section_script): (offset, bytes)
// pairs in address order
void fill_shared_guards(const cnn_gpu_emu_module_state* m) {
    for (const unsigned long long* g = m->static_shared_guards; g < m->static_shared_guards_end; g += 2)
        memset(m->static_shared_begin + g[0], kCanary, (size_t)g[1]);
}

// The first byte of a guard zone that no longer holds its canary, or nullptr
const char* changed_shared_guard(const cnn_gpu_emu_module_state* m) {
    for (const unsigned long long* g = m->static_shared_guards; g < m->static_shared_guards_end; g += 2) {
        const char* zone = m->static_shared_begin + g[0];
        if (const char* changed = first_other_byte(zone, zone + g[1], canaries.bytes)) return changed;
    }
    return nullptr;
}

// The bytes of the static __shared__ arrays a block wrote over `poison` (the arrays its kernel uses, as
// a GPU counts them: whole): the arrays' table from the library's symbols, or else the spans between
// the guard zones (a span holds one declaration, which may declare several arrays: counted from the
// first to the last byte written, so never long)
unsigned long long written_shared_bytes(const cnn_gpu_emu_module_state* m, unsigned char poison) {
    unsigned char run[kRun];
    memset(run, poison, sizeof run);
    unsigned long long bytes = 0;
    if (m->static_shared_arrays) {
        for (const unsigned long long* a = m->static_shared_arrays; a < m->static_shared_arrays_end; a += 2)
            if (first_other_byte(m->static_shared_begin + a[0], m->static_shared_begin + a[0] + a[1], run))
                bytes += a[1];
        return bytes;
    }
    for (const unsigned long long* g = m->static_shared_guards; g + 2 < m->static_shared_guards_end; g += 2) {
        const char* end = m->static_shared_begin + g[2];
        const char* first = first_other_byte(m->static_shared_begin + g[0] + g[1], end, run);
        if (!first) continue;
        const char* last = end;
        while ((unsigned char)*(last - 1) == poison) --last;   // stops at `first` at the latest
        bytes += (unsigned long long)(last - first);
    }
    return bytes;
}

// The first byte of [a, a + size) in the canary between dynamic shared memory's end and its guard
// page, or nullptr: the plain build sees writes there after the block only, and reads not at all
const char* past_dynamic_shared(cnn_gpu_emu_module_state* m, unsigned long long shared_mem, const char* a,
                                unsigned long size) {
    const char* end = m->dynamic_shared + shared_mem;
    if (a < m->dynamic_shared || a + size <= end || a >= dynamic_guard_page(m, shared_mem)) return nullptr;
    return a > end ? a : end;
}

// The first byte of [a, a + size) in a guard zone, or nullptr
const char* in_shared_guard(const cnn_gpu_emu_module_state* m, const char* a, unsigned long size) {
    if (a + size <= m->static_shared_begin || a >= m->static_shared_end) return nullptr;
    const unsigned long long offset = (unsigned long long)(a - m->static_shared_begin);
    const unsigned long long* low = m->static_shared_guards;
    size_t count = (size_t)(m->static_shared_guards_end - low) / 2;
    while (count > 0) {   // the last zone that starts at or before the access's end
        const size_t half = count / 2;
        if (low[2 * half] < offset + size) {
            low += 2 * (half + 1);
            count -= half + 1;
        } else {
            count = half;
        }
    }
    if (low == m->static_shared_guards) return nullptr;
    low -= 2;
    if (low[0] + low[1] <= offset) return nullptr;
    return m->static_shared_begin + (low[0] > offset ? low[0] : offset);
}

}  // namespace

// --- entry points used by kernels (through cuda_emu.h) ------------------------------------------

namespace {
void sync_barrier(Launch* L, Fiber* self);
void sync_fence(Launch* L, Fiber* self, void* site);
void sync_atomic(Launch* L, Fiber* self, char* address, void* site);
bool in_array_argument(Launch* L, const char* a);
}  // namespace

// __syncthreads and its _count/_and/_or forms: returns how many threads passed a non-zero value.
EXPORT __attribute__((noinline)) int cnn_gpu_emu_barrier(cnn_gpu_emu_thread* me, int value, const char* file,
                                                        int line) {
    Fiber* self = (Fiber*)me;
    Launch* L = self->launch;
    self->wait_site = __builtin_return_address(0);
    if (L->at_barrier > 0 &&
        (line != L->barrier_line || (file != L->barrier_file && strcmp(file, L->barrier_file) != 0))) {
        Fiber* other = nullptr;
        for (int i = 0; i < L->n && !other; ++i)
            if (L->fibers[i].state == AT_BARRIER) other = &L->fibers[i];
        runtime_fault(L, self, CNN_GPU_EMU_DIVERGENT_BARRIER, other, L->barrier_site,
                      "divergent __syncthreads(): threads wait at different barriers");
    }
    L->barrier_site = self->wait_site;
    L->barrier_file = file;
    L->barrier_line = line;
    int parity = L->barrier_parity;
    L->barrier_count[parity] += value != 0;
    self->state = AT_BARRIER;
    if (++L->at_barrier == L->n) {  // everyone arrived (an exited thread never does)
        if (L->sync) sync_barrier(L, self);
        for (int i = 0; i < L->n; ++i) L->fibers[i].state = RUNNABLE;
        L->at_barrier = 0;
        L->epoch++;
        L->barrier_parity ^= 1;
        L->barrier_count[L->barrier_parity] = 0;
        if (L->desc->schedule == CNN_GPU_EMU_RANDOM) shuffle(L, L->order, L->n);
        L->pos = -1;
    }
    run_next(L, self);
    return L->barrier_count[parity];
}

// Warp exchange: every lane of the warp deposits 8 bytes; returns the slot array (32 entries)
// once all lanes have, valid until this lane's next exchange.
// A lane that runs a shuffle, vote or __syncwarp whose mask leaves it out: undefined on a GPU (the
// emulator has every lane of the warp take part, so a mask must hold them all).
EXPORT __attribute__((noinline)) void cnn_gpu_emu_warp_mask_fault(cnn_gpu_emu_thread* me, unsigned int mask) {
    Fiber* self = (Fiber*)me;
    self->wait_site = __builtin_return_address(0);
    runtime_fault(self->launch, self, CNN_GPU_EMU_WARP_MASK, nullptr, nullptr,
                  "lane %u runs a warp shuffle, vote or __syncwarp whose mask 0x%08x leaves it out (undefined "
                  "on a GPU)", self->view.lane, mask);
}

namespace {
const unsigned long long* whole_warp_exchange(Fiber* self, unsigned long long value, void* site, bool orders_memory);
void join_partial_clocks(Warp* w, unsigned int mask);
}

// mma.sync and ldmatrix: the whole warp exchanges operands or row addresses, which orders no memory
// access for the race check
EXPORT __attribute__((noinline)) const unsigned long long* cnn_gpu_emu_warp_exchange(cnn_gpu_emu_thread* me,
                                                                                   unsigned long long value) {
    return whole_warp_exchange((Fiber*)me, value, __builtin_return_address(0), false);
}

// An exchange among the lanes of `mask` (shuffles, votes, __syncwarp): the whole warp's where the mask
// names every lane of it; else the lanes of the mask wait for each other only (other lanes of the warp
// may meanwhile wait in other exchanges: a nested branch's, a later __syncwarp()), and each receives
// their values (all ones from lanes outside it: a GPU leaves those undefined). The exchange completes
// when every lane of the mask waits in one with this mask; lanes that never do (an exited lane, one
// waiting with another mask for this group's lanes) are a deadlock, which stalled() reports. Such an
// exchange, where it is a __syncwarp (orders_memory), orders the memory accesses of the mask's lanes
// for the race check (Warp's partial clocks); shuffles and votes order none, as CUDA promises none.
EXPORT __attribute__((noinline)) const unsigned long long* cnn_gpu_emu_warp_exchange_masked(
    cnn_gpu_emu_thread* me, unsigned long long value, unsigned int mask, int orders_memory) {
    Fiber* self = (Fiber*)me;
    Launch* L = self->launch;
    Warp* w = &L->warps[self->linear / kWarp];
    const unsigned int lanes = w->size == kWarp ? ~0u : (1u << w->size) - 1u;
    mask &= lanes;
    if (mask == lanes) return whole_warp_exchange(self, value, __builtin_return_address(0), orders_memory != 0);
    const int me_lane = (int)self->view.lane;
    w->partial_value[me_lane] = value;
    w->partial_mask[me_lane] = mask;
    w->partial_waiting |= 1u << me_lane;
    unsigned int arrived = 0;
    for (int lane = 0; lane < w->size; ++lane)
        if ((w->partial_waiting >> lane & 1u) && w->partial_mask[lane] == mask) arrived |= 1u << lane;
    if (arrived == mask) {
        Fiber* first = &L->fibers[self->linear - me_lane];
        w->partial_waiting &= ~mask;
        if (L->shadow && orders_memory) join_partial_clocks(w, mask);
        for (int lane = 0; lane < w->size; ++lane) {
            if (!(mask >> lane & 1u)) continue;
            for (int source = 0; source < kWarp; ++source)
                w->received[lane][source] = mask >> source & 1u ? w->partial_value[source] : ~0ull;
            first[lane].state = RUNNABLE;
        }
    } else {
        self->wait_site = __builtin_return_address(0);
        self->state = AT_WARP;
        run_next(L, self);
    }
    return w->received[me_lane];
}

namespace {
// A __syncwarp(mask) among part of the warp completes: each lane of the mask counts it, and each
// then follows what any of them followed (the join of their vector clocks)
void join_partial_clocks(Warp* w, unsigned int mask) {
    w->partial_clocks = true;
    unsigned int joined[kWarp] = {};
    for (int lane = 0; lane < kWarp; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        w->partial_count[lane]++;
        for (int other = 0; other < kWarp; ++other)
            if (w->partial_seen[lane][other] > joined[other]) joined[other] = w->partial_seen[lane][other];
    }
    for (int lane = 0; lane < kWarp; ++lane)
        if (mask >> lane & 1u) joined[lane] = w->partial_count[lane];
    for (int lane = 0; lane < kWarp; ++lane)
        if (mask >> lane & 1u) memcpy(w->partial_seen[lane], joined, sizeof joined);
}

const unsigned long long* whole_warp_exchange(Fiber* self, unsigned long long value, void* site, bool orders_memory) {
    Launch* L = self->launch;
    Warp* w = &L->warps[self->linear / kWarp];
    int phase = w->phase;
    w->slots[phase][self->view.lane] = value;
    if (++w->arrived == w->size) {
        w->arrived = 0;
        w->phase ^= 1;
        if (orders_memory) w->epoch++;   // the race check's ordering of the warp's accesses
        Fiber* first = &L->fibers[self->linear - (int)self->view.lane];
        for (int i = 0; i < w->size; ++i)
            if (first[i].state == AT_WARP) first[i].state = RUNNABLE;
    } else {
        self->wait_site = site;
        self->state = AT_WARP;
        run_next(L, self);
    }
    return w->slots[phase];
}

// whether a whole-warp __syncwarp(), or a chain of them among parts of the warp, orders `earlier`
// (an access of another lane of this thread's warp, in this barrier epoch) before this thread's access
bool ordered(const Access& earlier, const Warp& w, int warp, int lane) {
    if (earlier.thread / kWarp != warp) return false;
    return earlier.warp_epoch < w.epoch || w.partial_seen[lane][earlier.thread % kWarp] > earlier.partial_clock;
}

[[noreturn]] void report_race(Launch* L, Fiber* self, void* site, const Access& other, int region,
                              size_t offset, const char* what) {
    self->wait_site = site;
    L->desc->fault_address = (unsigned long long)(uintptr_t)(L->regions[region].begin + offset);
    L->desc->race_region = region;
    if (other.block != L->block_number)
        runtime_fault(L, self, CNN_GPU_EMU_RACE, nullptr, other.site,
                      "global memory race at byte %zu: this thread %s thread %d of another block "
                      "(blocks run in no fixed order; no __threadfence() and atomic order the two)", offset, what,
                      other.thread);
    runtime_fault(L, self, CNN_GPU_EMU_RACE, &L->fibers[other.thread], other.site,
                  "%s memory race at byte %zu: this thread %s thread %d with no __syncthreads() in between "
                  "(missing barrier?)", region == 0 ? "static shared" : region == 1 ? "dynamic shared" : "global",
                  offset, what, other.thread);
}

bool released_to(Launch* L, int me, const Access& earlier);
unsigned int fences_of(Launch* L, int me);

// `atomic`: an atomic read-modify-write (checked as a write)
void check_word(Launch* L, Fiber* self, ShadowWord* w, bool write, bool atomic, void* site, int region,
                size_t offset) {
    const int me = self->linear, warp = me / kWarp;
    const Warp& lanes = L->warps[warp];
    const unsigned int warp_epoch = lanes.epoch, epoch = L->epoch, block = L->block_number;
    // conflicts with an earlier access of another thread: same epoch and not warp-ordered, or
    // (global memory) another block's that no fence and atomic ordered before this one; never two atomics
    auto conflicts = [&](const Access& earlier, unsigned int earlier_epoch) {
        if (atomic && earlier.atomic) return false;
        if (earlier.block != block) return region >= 2 && !released_to(L, me, earlier);
        return earlier_epoch == epoch && earlier.thread != me && !ordered(earlier, lanes, warp, me % kWarp);
    };
    const char* verb = atomic ? "updates atomically" : write ? "writes" : "reads";
    char what[64];
    auto report = [&](const Access& earlier, const char* done) {
        snprintf(what, sizeof what, "%s a word %s by", verb, done);
        report_race(L, self, site, earlier, region, offset, what);
    };
    if (w->write_epoch && conflicts(w->writer, w->write_epoch))
        report(w->writer, w->writer.atomic ? "updated atomically" : "written");
    // the atomics before the writer's come before an access that this block's atomic writer precedes
    // in its thread or across a barrier (coherence; a __syncwarp() is not counted: a lane reading
    // after its warp's atomic does not see another warp's in every order they may run in)
    const bool after_block_atomic =
        w->writer.atomic && w->writer.block == block && (w->writer.thread == me || w->write_epoch != epoch);
    if (w->other_atomic.epoch && !after_block_atomic && conflicts(w->other_atomic, w->other_atomic.epoch))
        report(w->other_atomic, "updated atomically");
    Access access = {me, atomic, lanes.partial_count[me % kWarp], warp_epoch, block, site, epoch, fences_of(L, me)};
    if (write) {
        if (w->read_epoch)
            for (int i = 0; i < w->readers; ++i)
                if (conflicts(w->reader[i], w->read_epoch)) report(w->reader[i], "read");
        if (!atomic)
            w->other_atomic.epoch = 0;
        else if (w->write_epoch && w->writer.atomic && (w->writer.thread != me || w->writer.block != block))
            w->other_atomic = w->writer;
        w->write_epoch = epoch;
        w->writer = access;
        return;
    }
    if (w->read_epoch != epoch) {
        w->read_epoch = epoch;
        w->readers = 1;
        w->reader[0] = access;
        return;
    }
    // Two readers stand for all of the epoch's (reader[1] the latest): a write conflicting with any
    // conflicts with one of them. Readers of two warps are kept while there were two (every writer
    // is outside one of them), else the latest two threads (a writer is ordered after the latest
    // other thread's read only if after all of them: a __syncwarp() of the whole warp).
    Access& latest = w->reader[w->readers - 1];
    if (latest.thread == me && latest.block == block) {
        latest = access;
    } else if (w->readers == 1) {
        w->reader[1] = access;
        w->readers = 2;
    } else {
        const Access& older = w->reader[0];
        const bool two_warps = older.block != latest.block || older.thread / kWarp != latest.thread / kWarp;
        if (!two_warps || latest.block != block || latest.thread / kWarp != warp) w->reader[0] = latest;
        w->reader[1] = access;
    }
}

// slot = realloc(slot, bytes) from a fiber: the tick must not jump out of the realloc (that would
// leave malloc's lock held, and the next malloc would hang), nor before slot holds its result (the
// old block would be freed again); out of memory faults at `site`, naming `what` the memory is for.
template <class T>
void fiber_grow(Launch* L, Fiber* self, void* site, T*& slot, size_t bytes, const char* what) {
    L->busy = 1;
    __asm__ __volatile__("" ::: "memory");
    T* grown = (T*)realloc(slot, bytes);
    if (grown) slot = grown;
    __asm__ __volatile__("" ::: "memory");
    L->busy = 0;
    if (!grown) {
        self->wait_site = site;
        runtime_fault(L, self, CNN_GPU_EMU_SETUP, nullptr, nullptr, "out of memory for %s", what);
    }
}

// --- fences and atomics between blocks (race check of global memory) ----------------------------
// Blocks run in no fixed order, but a block may read what another wrote when a device-scope fence
// and an atomic order them: the release and acquire patterns of the PTX memory model (a fence,
// then an atomic, in the writing block; an atomic, then a fence, in the reading one), as the
// last-block sums of reduce.cu (channel_sum_block) and conv2d_tc.cu (wgrad's partials) use them.
// Modelled, fences being cumulative (a fence orders what its thread has seen: its own accesses,
// and the block's before a barrier it has passed):
// - release: an atomic of thread X covers an access of its block made before a fence that
//   happens before the atomic: a fence of the access's own thread after it (X's, or another
//   thread's before the last barrier), or any fence in a later barrier epoch (X's own, or another
//   thread's before the last barrier). A release record keeps those fence counts per thread and
//   that epoch, at least those of the block's earlier releases through the same word. The atomic's
//   word keeps a clock: per block, the latest release made through it (atomics on one word join
//   theirs: a chain of read-modify-writes carries each release on), with what X had acquired.
//   Not modelled: a plain store to the word ending its release sequence, a failed atomicCAS
//   releasing nothing; atomics are keyed by their 4-byte word.
// - acquire: an atomic of thread Y takes its word's clock. It holds from Y's next fence for Y,
//   from a thread's first fence after the next barrier for the others, and for every thread after
//   a barrier that follows a fence of a thread that held it.
// An access of another block is ordered before this thread's when this thread holds a release of
// that block that covers it. Block-scope fences and warp exchanges order nothing here.

struct ClockEntry {
    unsigned int block;    // position in the launch's block order
    unsigned int release;  // the latest release of that block known (1 + its index)
};
struct Clock {
    ClockEntry* entries;   // sorted by block
    unsigned int count, capacity;
};
struct SyncWord {
    uintptr_t address;     // of an atomic on an array argument
    Clock clock;
};
struct Sync {
    int n;                         // threads per block
    // the running block, per thread
    unsigned int* fences;          // __threadfence() calls so far
    unsigned int* fences_at_barrier;
    unsigned int* fence_epoch;     // epoch of its last fence (0: none)
    Clock* pending;                // taken by its atomics, not yet held
    Clock* held;
    // the running block
    Clock committed;               // the pending clocks at the last barrier: held from a fence after it
    Clock block_held;              // held by every thread: what threads held at the last barrier
    unsigned int fenced_epoch;     // the latest epoch with a fence before the last barrier (0: none)
    unsigned int block_release;    // the block's latest release (0: none)
    // the launch
    unsigned int* release_fences;  // release r: n fence counts at (r - 1) * (n + 1), then its epoch
    unsigned int releases, release_capacity;
    SyncWord* words;               // sorted by address
    unsigned int word_count, word_capacity;
    Clock scratch;
};

unsigned int clock_find(const Clock& c, unsigned int block) {
    unsigned int lo = 0, hi = c.count;
    while (lo < hi) {
        unsigned int mid = (lo + hi) / 2;
        if (c.entries[mid].block < block) lo = mid + 1;
        else hi = mid;
    }
    return lo < c.count && c.entries[lo].block == block ? c.entries[lo].release : 0;
}

void clock_reserve(Launch* L, Fiber* self, void* site, Clock& c, unsigned int count) {
    if (count <= c.capacity) return;
    unsigned int capacity = c.capacity ? 2 * c.capacity : 16;
    while (capacity < count) capacity *= 2;
    fiber_grow(L, self, site, c.entries, capacity * sizeof(ClockEntry), "the race check");
    c.capacity = capacity;
}

// into = the later release of each block in into or from
void clock_join(Launch* L, Fiber* self, void* site, Clock& into, const Clock& from) {
    if (!from.count) return;
    Clock& merged = L->sync->scratch;
    clock_reserve(L, self, site, merged, into.count + from.count);
    unsigned int i = 0, j = 0, k = 0;
    while (i < into.count || j < from.count) {
        if (j == from.count || (i < into.count && into.entries[i].block < from.entries[j].block)) {
            merged.entries[k++] = into.entries[i++];
        } else if (i == into.count || from.entries[j].block < into.entries[i].block) {
            merged.entries[k++] = from.entries[j++];
        } else {
            ClockEntry e = into.entries[i++];
            if (from.entries[j].release > e.release) e.release = from.entries[j].release;
            ++j;
            merged.entries[k++] = e;
        }
    }
    clock_reserve(L, self, site, into, k);
    memcpy(into.entries, merged.entries, k * sizeof(ClockEntry));
    into.count = k;
}

void clock_free(Clock& c) {
    free(c.entries);
    c = Clock{};
}

bool sync_begin(Launch* L) {
    Sync* s = (Sync*)calloc(1, sizeof(Sync));
    L->sync = s;
    if (!s) return false;
    s->n = L->n;
    s->fences = (unsigned int*)calloc((size_t)L->n, sizeof(unsigned int));
    s->fences_at_barrier = (unsigned int*)calloc((size_t)L->n, sizeof(unsigned int));
    s->fence_epoch = (unsigned int*)calloc((size_t)L->n, sizeof(unsigned int));
    s->pending = (Clock*)calloc((size_t)L->n, sizeof(Clock));
    s->held = (Clock*)calloc((size_t)L->n, sizeof(Clock));
    return s->fences && s->fences_at_barrier && s->fence_epoch && s->pending && s->held;
}

void sync_end(Launch* L) {
    Sync* s = L->sync;
    if (!s) return;
    for (int i = 0; s->pending && s->held && i < s->n; ++i) {
        clock_free(s->pending[i]);
        clock_free(s->held[i]);
    }
    for (unsigned int i = 0; i < s->word_count; ++i) clock_free(s->words[i].clock);
    clock_free(s->committed);
    clock_free(s->block_held);
    clock_free(s->scratch);
    free(s->fences);
    free(s->fences_at_barrier);
    free(s->fence_epoch);
    free(s->pending);
    free(s->held);
    free(s->release_fences);
    free(s->words);
    free(s);
    L->sync = nullptr;
}

// before each block: its threads have neither fenced nor acquired anything
void sync_begin_block(Sync* s) {
    memset(s->fences, 0, (size_t)s->n * sizeof(unsigned int));
    memset(s->fences_at_barrier, 0, (size_t)s->n * sizeof(unsigned int));
    memset(s->fence_epoch, 0, (size_t)s->n * sizeof(unsigned int));
    for (int i = 0; i < s->n; ++i) s->pending[i].count = s->held[i].count = 0;
    s->committed.count = s->block_held.count = 0;
    s->fenced_epoch = 0;
    s->block_release = 0;
}

// the last thread to arrive at a barrier, before the barrier's epoch ends
void sync_barrier(Launch* L, Fiber* self) {
    Sync* s = L->sync;
    void* site = self->wait_site;
    for (int t = 0; t < s->n; ++t) {
        s->fences_at_barrier[t] = s->fences[t];
        if (s->fence_epoch[t] > s->fenced_epoch) s->fenced_epoch = s->fence_epoch[t];
        clock_join(L, self, site, s->committed, s->pending[t]);
        s->pending[t].count = 0;
        clock_join(L, self, site, s->block_held, s->held[t]);
    }
}

void sync_fence(Launch* L, Fiber* self, void* site) {
    Sync* s = L->sync;
    const int me = self->linear;
    s->fences[me]++;
    s->fence_epoch[me] = L->epoch;
    clock_join(L, self, site, s->held[me], s->pending[me]);
    s->pending[me].count = 0;
    clock_join(L, self, site, s->held[me], s->committed);
}

// an atomic of this thread on an array argument: acquires the word's clock, then releases
void sync_atomic(Launch* L, Fiber* self, char* address, void* site) {
    Sync* s = L->sync;
    const int me = self->linear, n = s->n;
    const uintptr_t key = (uintptr_t)address & ~(uintptr_t)3;
    unsigned int lo = 0, hi = s->word_count;
    while (lo < hi) {
        unsigned int mid = (lo + hi) / 2;
        if (s->words[mid].address < key) lo = mid + 1;
        else hi = mid;
    }
    const bool found = lo < s->word_count && s->words[lo].address == key;
    if (found) clock_join(L, self, site, s->pending[me], s->words[lo].clock);
    const unsigned int epoch = s->fence_epoch[me] > s->fenced_epoch ? s->fence_epoch[me] : s->fenced_epoch;
    if (!epoch && !s->held[me].count && !s->block_held.count) return;   // no fence yet: releases nothing
    // the release record, written after the last one: what this atomic releases, and what the block
    // released through this word before (the read-modify-write continues the word's release
    // sequence); kept only if it differs from the block's latest record
    const size_t stride = (size_t)n + 1;
    if (s->releases == s->release_capacity) {
        unsigned int capacity = s->release_capacity ? 2 * s->release_capacity : 16;
        fiber_grow(L, self, site, s->release_fences, capacity * stride * sizeof(unsigned int), "the race check");
        s->release_capacity = capacity;
    }
    unsigned int* record = &s->release_fences[s->releases * stride];
    for (int t = 0; t < n; ++t) record[t] = t == me ? s->fences[t] : s->fences_at_barrier[t];
    record[n] = epoch;
    if (const unsigned int before = found ? clock_find(s->words[lo].clock, L->block_number) : 0) {
        const unsigned int* prior = &s->release_fences[(before - 1) * stride];
        for (size_t i = 0; i < stride; ++i) record[i] = record[i] > prior[i] ? record[i] : prior[i];
    }
    const unsigned int* latest = s->block_release ? &s->release_fences[(s->block_release - 1) * stride] : nullptr;
    if (!latest || memcmp(latest, record, stride * sizeof(unsigned int)) != 0) s->block_release = ++s->releases;
    if (!found) {
        if (s->word_count == s->word_capacity) {
            unsigned int capacity = s->word_capacity ? 2 * s->word_capacity : 16;
            fiber_grow(L, self, site, s->words, capacity * sizeof(SyncWord), "the race check");
            s->word_capacity = capacity;
        }
        L->busy = 1;   // no jump while two words share one clock (sync_end would free it twice)
        __asm__ __volatile__("" ::: "memory");
        memmove(&s->words[lo + 1], &s->words[lo], (s->word_count - lo) * sizeof(SyncWord));
        s->words[lo] = SyncWord{key, Clock{}};
        s->word_count++;
        __asm__ __volatile__("" ::: "memory");
        L->busy = 0;
    }
    Clock& clock = s->words[lo].clock;
    ClockEntry entry = {L->block_number, s->block_release};
    const Clock released = {&entry, 1, 1};
    clock_join(L, self, site, clock, released);
    clock_join(L, self, site, clock, s->held[me]);
    clock_join(L, self, site, clock, s->block_held);
}

unsigned int fences_of(Launch* L, int me) {
    return L->sync ? L->sync->fences[me] : 0;
}

// whether `earlier`, an access of another block, is ordered before this thread's access
bool released_to(Launch* L, int me, const Access& earlier) {
    Sync* s = L->sync;
    if (!s) return false;
    unsigned int release = clock_find(s->held[me], earlier.block), shared = clock_find(s->block_held, earlier.block);
    if (shared > release) release = shared;
    if (!release) return false;
    const unsigned int* record = &s->release_fences[(size_t)(release - 1) * ((size_t)s->n + 1)];
    return record[earlier.thread] > earlier.fences || earlier.epoch < record[s->n];
}

bool in_array_argument(Launch* L, const char* a) {
    for (int region = 2; region < L->region_count; ++region)
        if (a >= L->regions[region].begin && a < L->regions[region].end) return true;
    return false;
}

// The four byte states of a word, made on its first access in parts from its word state (each
// byte has the word's history); the word is tracked byte by byte for the rest of the launch.
ShadowWord* byte_states(Launch* L, Fiber* self, ShadowWord* w, void* site) {
    if (!w->split) {
        if (L->split_words == L->split_capacity) {
            unsigned int capacity = L->split_capacity ? 2 * L->split_capacity : 256;
            fiber_grow(L, self, site, L->byte_shadow, (size_t)capacity * 4 * sizeof(ShadowWord), "the race check");
            L->split_capacity = capacity;
        }
        ShadowWord* bytes = &L->byte_shadow[4 * (size_t)L->split_words];
        for (int i = 0; i < 4; ++i) bytes[i] = *w;
        w->split = ++L->split_words;
    }
    return &L->byte_shadow[4 * (size_t)(w->split - 1)];
}

// `atomic`: the read of an atomic read-modify-write, which stands for it (checked as a write)
void race_check(Launch* L, Fiber* self, char* a, unsigned long size, int write, bool atomic, void* site) {
    for (int region = 0; region < L->region_count; ++region) {
        const Region& g = L->regions[region];
        if (a + size > g.begin && a < g.end) {
            const size_t from = (size_t)((a < g.begin ? g.begin : a) - g.begin);
            const size_t to = (size_t)((a + size > g.end ? g.end : a + size) - g.begin);
            for (size_t first = from / 4 * 4; first < to; first += 4) {
                ShadowWord* w = &L->shadow[g.shadow_base + first / 4];
                const size_t lo = from > first ? from : first, hi = to < first + 4 ? to : first + 4;
                if (!w->split && lo == first && hi == first + 4) {
                    check_word(L, self, w, write != 0 || atomic, atomic, site, region, first);
                    continue;
                }
                ShadowWord* bytes = byte_states(L, self, w, site);
                for (size_t b = lo; b < hi; ++b)
                    check_word(L, self, &bytes[b - first], write != 0 || atomic, atomic, site, region, b);
            }
        }
    }
}

// --- memory-access profile --------------------------------------------------------------------------
// Every access of a profiled launch joins a warp-level request: the n-th execution of one instruction
// by the lanes of one warp (lanes that do not execute it are inactive). A request is counted as Nsight
// Compute counts it once all lanes of the warp have joined it, or at the end of the block.

struct Request {
    unsigned long long address[kWarp];
    unsigned int size[kWarp];
    unsigned int lanes;  // bit per lane that joined
};

// Requests a warp keeps open per instruction; lanes further apart than this are counted apart.
constexpr unsigned int kMaxPending = 256;

// One instruction in one warp of the running block.
struct SiteState {
    unsigned int block_serial;     // the block this state belongs to (older: stale, reset on use)
    unsigned int executed[kWarp];  // executions per lane so far
    unsigned int first;            // execution number of pending[0]
    unsigned int count, capacity;
    Request* pending;
};

struct GlobalRange {
    char* begin;
    char* end;
    unsigned char* read;     // a bit per byte: read by the launch
    unsigned char* written;
};

// The profile of one launch: created and read by Python (cnn_gpu_emu_profile_*), filled by the launch.
struct Profiler {
    cnn_gpu_emu_profile_site* sites;  // offset holds the raw pc until the launch ends
    int site_count, site_capacity;
    unsigned long long dram_read_bytes, dram_write_bytes, blocks_run;
    // during the launch
    int warps;                    // per block
    unsigned int* table;          // open addressing: site index + 1, 0 = empty
    unsigned int table_size;      // a power of two, at least twice site_capacity
    SiteState* states;            // site_capacity x warps
    GlobalRange* ranges;
    int range_count;
};

template <class T>
bool grow(T** array, int* capacity, int need) {
    if (need <= *capacity) return true;
    int c = *capacity ? *capacity : 64;
    while (c < need) c *= 2;
    T* p = (T*)realloc(*array, (size_t)c * sizeof(T));
    if (!p) return false;
    memset(p + *capacity, 0, (size_t)(c - *capacity) * sizeof(T));
    *array = p;
    *capacity = c;
    return true;
}

void sort_small(unsigned long long* v, int n) {
    for (int i = 1; i < n; ++i) {
        unsigned long long x = v[i];
        int j = i - 1;
        while (j >= 0 && v[j] > x) { v[j + 1] = v[j]; --j; }
        v[j + 1] = x;
    }
}

int count_distinct(unsigned long long* v, int n) {
    sort_small(v, n);
    int distinct = 0;
    for (int i = 0; i < n; ++i) distinct += i == 0 || v[i] != v[i - 1];
    return distinct;
}

// Accesses wider than 16 bytes (struct copies) count as their first 16 bytes.
constexpr unsigned int kMaxCounted = 16;

void count_request(cnn_gpu_emu_profile_site& site, const Request& r) {
    unsigned long long units[kWarp * (kMaxCounted / 4 + 1)];
    site.requests++;
    unsigned int width = 1;
    for (int lane = 0; lane < kWarp; ++lane)
        if (r.lanes >> lane & 1) {
            site.bytes += r.size[lane];
            if (r.size[lane] > width) width = r.size[lane];
        }
    if (width > kMaxCounted) width = kMaxCounted;
    if (site.space == CNN_GPU_EMU_GLOBAL) {  // distinct 32-byte sectors
        int n = 0;
        for (int lane = 0; lane < kWarp; ++lane)
            if (r.lanes >> lane & 1)
                for (unsigned long long s = r.address[lane] >> 5; s <= (r.address[lane] + width - 1) >> 5; ++s) units[n++] = s;
        site.sectors += count_distinct(units, n);
        return;
    }
    // shared: 64- and 128-bit accesses run in half- and quarter-warp phases; per phase, the bank
    // holding the most distinct 4-byte words sets the wavefronts (one word read by many = broadcast)
    int phase_lanes = width <= 4 ? 32 : width <= 8 ? 16 : 8;
    for (int first = 0; first < kWarp; first += phase_lanes) {
        int n = 0;
        for (int lane = first; lane < first + phase_lanes; ++lane)
            if (r.lanes >> lane & 1)
                for (unsigned long long w = r.address[lane] >> 2; w <= (r.address[lane] + width - 1) >> 2; ++w) units[n++] = w;
        if (!n) continue;
        sort_small(units, n);
        int per_bank[kWarp] = {0}, most = 0;
        for (int i = 0; i < n; ++i)
            if (i == 0 || units[i] != units[i - 1]) {
                int c = ++per_bank[units[i] & (kWarp - 1)];
                if (c > most) most = c;
            }
        site.wavefronts += most;
    }
}

// Counts the requests of a state left from an earlier block and makes it the running block's.
void reset_state(Profiler* P, int site, SiteState* st, unsigned int block_serial) {
    for (unsigned int i = 0; i < st->count; ++i) count_request(P->sites[site], st->pending[i]);
    memset(st->executed, 0, sizeof st->executed);
    st->first = 0;
    st->count = 0;
    st->block_serial = block_serial;
}

unsigned int site_hash(unsigned long long pc, int space, int op) {
    return (unsigned int)((pc * 0x9E3779B97F4A7C15ULL) >> 40) ^ (unsigned int)(space * 7 + op);
}

// Room for `need` sites: the site array, the per-warp states and the hash table (rebuilt).
bool reserve_sites(Profiler* P, int need) {
    int old_capacity = P->site_capacity;
    if (!grow(&P->sites, &P->site_capacity, need)) return false;
    if (P->site_capacity == old_capacity && P->table) return true;
    SiteState* states = (SiteState*)calloc((size_t)P->site_capacity * P->warps, sizeof(SiteState));
    unsigned int size = 4u * (unsigned int)P->site_capacity;
    unsigned int* table = (unsigned int*)calloc(size, sizeof(unsigned int));
    if (!states || !table) {
        free(states);
        free(table);
        return false;
    }
    if (P->states) memcpy(states, P->states, (size_t)old_capacity * P->warps * sizeof(SiteState));
    free(P->states);
    P->states = states;
    for (int i = 0; i < P->site_count; ++i) {
        const cnn_gpu_emu_profile_site& s = P->sites[i];
        unsigned int h = site_hash(s.offset, s.space, s.op);
        while (table[h & (size - 1)]) h++;
        table[h & (size - 1)] = (unsigned int)i + 1;
    }
    free(P->table);
    P->table = table;
    P->table_size = size;
    return true;
}

// The site of (pc, space, op), added when new; -1 when out of memory.
int site_index(Profiler* P, void* pc, int space, int op) {
    const unsigned long long key = (unsigned long long)(uintptr_t)pc;
    for (unsigned int h = site_hash(key, space, op);; h++) {
        unsigned int slot = P->table[h & (P->table_size - 1)];
        if (!slot) break;
        const cnn_gpu_emu_profile_site& s = P->sites[slot - 1];
        if (s.offset == key && s.space == space && s.op == op) return (int)slot - 1;
    }
    const int index = P->site_count;
    if (!reserve_sites(P, index + 1)) return -1;
    unsigned int h = site_hash(key, space, op);
    while (P->table[h & (P->table_size - 1)]) h++;
    P->table[h & (P->table_size - 1)] = (unsigned int)index + 1;
    cnn_gpu_emu_profile_site& s = P->sites[index];
    memset(&s, 0, sizeof s);
    s.offset = key;
    s.space = space;
    s.op = op;
    P->site_count++;
    return index;
}

void mark_bytes(unsigned char* bits, size_t from, size_t to) {
    for (size_t i = from; i < to; ++i) bits[i >> 3] |= (unsigned char)(1u << (i & 7));
}

// false: out of memory
bool record(Launch* L, Fiber* self, char* a, unsigned long size, int write, void* pc) {
    Profiler* P = L->profiler;
    cnn_gpu_emu_module_state* m = L->module;
    int space = 0;
    if ((a >= m->static_shared_begin && a < m->static_shared_end) ||
        (a >= m->dynamic_shared && a < m->dynamic_shared + L->desc->shared_mem)) {
        space = CNN_GPU_EMU_SHARED;
    } else {
        for (int i = 0; i < P->range_count; ++i) {
            GlobalRange& g = P->ranges[i];
            if (a >= g.begin && a < g.end) {
                space = CNN_GPU_EMU_GLOBAL;
                char* end = a + size < g.end ? a + size : g.end;
                mark_bytes(write ? g.written : g.read, (size_t)(a - g.begin), (size_t)(end - g.begin));
                break;
            }
        }
    }
    if (!space) return true;  // the fiber's stack, the emulator's own state
    int op = write ? CNN_GPU_EMU_STORE : CNN_GPU_EMU_LOAD;
    if (self->view.in_atomic) {
        if (write) return true;  // a read-modify-write: its read stands for it (a failed CAS writes nothing)
        op = CNN_GPU_EMU_ATOMIC;
    }
    int site = site_index(P, pc, space, op);
    if (site < 0) return false;
    const int warp = self->linear / kWarp, lane = (int)self->view.lane;
    SiteState* st = &P->states[(size_t)site * P->warps + warp];
    if (st->block_serial != L->block_serial) reset_state(P, site, st, L->block_serial);
    const unsigned int n = st->executed[lane]++;
    if (n < st->first) {  // its request was counted already (see below): this access counts alone
        Request alone;
        alone.address[lane] = (unsigned long long)(uintptr_t)a;
        alone.size[lane] = (unsigned int)size;
        alone.lanes = 1u << lane;
        count_request(P->sites[site], alone);
        return true;
    }
    if (n - st->first >= kMaxPending) {  // a lane far ahead of the others (a spinning loop): count
        const unsigned int drop = kMaxPending / 2;  // the older half as it is, to bound the memory
        for (unsigned int i = 0; i < drop; ++i) count_request(P->sites[site], st->pending[i]);
        memmove(st->pending, st->pending + drop, (st->count - drop) * sizeof(Request));
        st->count -= drop;
        st->first += drop;
    }
    const unsigned int k = n - st->first;
    int capacity = (int)st->capacity;
    if (!grow(&st->pending, &capacity, (int)k + 1)) return false;
    st->capacity = (unsigned int)capacity;
    while (st->count <= k) st->pending[st->count++].lanes = 0;
    Request& r = st->pending[k];
    r.address[lane] = (unsigned long long)(uintptr_t)a;
    r.size[lane] = (unsigned int)size;
    r.lanes |= 1u << lane;
    // a lane's n-th execution follows its (n-1)-th: requests complete in order
    const unsigned int full = self->view.warp_size == kWarp ? 0xffffffffu : (1u << self->view.warp_size) - 1;
    unsigned int done = 0;
    while (done < st->count && st->pending[done].lanes == full) count_request(P->sites[site], st->pending[done++]);
    if (done) {
        memmove(st->pending, st->pending + done, (st->count - done) * sizeof(Request));
        st->count -= done;
        st->first += done;
    }
    return true;
}

bool profile_begin(Launch* L, Profiler* P) {
    const cnn_gpu_emu_launch_desc* d = L->desc;
    P->warps = (L->n + kWarp - 1) / kWarp;
    P->range_count = d->global_count;
    P->ranges = (GlobalRange*)calloc((size_t)(d->global_count ? d->global_count : 1), sizeof(GlobalRange));
    if (!P->ranges) return false;
    for (int i = 0; i < d->global_count; ++i) {
        GlobalRange& g = P->ranges[i];
        g.begin = (char*)d->global_ranges[2 * i];
        g.end = (char*)d->global_ranges[2 * i + 1];
        size_t bytes = ((size_t)(g.end - g.begin) + 7) / 8;
        g.read = (unsigned char*)calloc(bytes ? bytes : 1, 1);
        g.written = (unsigned char*)calloc(bytes ? bytes : 1, 1);
        if (!g.read || !g.written) return false;
    }
    return reserve_sites(P, 64);
}

size_t count_bits(const unsigned char* bits, size_t bytes) {
    size_t n = 0;
    for (size_t i = 0; i < bytes; ++i) n += (size_t)__builtin_popcount(bits[i]);
    return n;
}

// Counts what is still pending, turns pcs into offsets and frees what only the launch needed.
void profile_end(Profiler* P, bool complete) {
    for (int site = 0; site < P->site_count && P->states; ++site)
        for (int w = 0; w < P->warps; ++w) {
            SiteState* st = &P->states[(size_t)site * P->warps + w];
            if (complete) reset_state(P, site, st, 0);
            free(st->pending);
        }
    for (int i = 0; i < P->range_count; ++i) {
        GlobalRange& g = P->ranges[i];
        size_t bytes = ((size_t)(g.end - g.begin) + 7) / 8;
        if (g.read) P->dram_read_bytes += count_bits(g.read, bytes);
        if (g.written) P->dram_write_bytes += count_bits(g.written, bytes);
        free(g.read);
        free(g.written);
    }
    for (int i = 0; i < P->site_count; ++i) {
        char* pc = (char*)(uintptr_t)P->sites[i].offset - 1;  // a return address: the call is just before
        Dl_info info;
        P->sites[i].offset = dladdr(pc, &info) ? (unsigned long long)(pc - (char*)info.dli_fbase) : 0;
    }
    free(P->ranges);
    free(P->table);
    free(P->states);
    P->ranges = nullptr;
    P->table = nullptr;
    P->states = nullptr;
    P->range_count = 0;
}

[[noreturn]] void stop_at_access(Launch* L, Fiber* self, void* site, int kind, const char* why) {
    self->wait_site = site;
    runtime_fault(L, self, kind, nullptr, nullptr, "%s", why);
}

}  // namespace

// Called by the instrumented module (the __tsan_* hooks in cuda_emu.h) for every memory access.
EXPORT void cnn_gpu_emu_access(cnn_gpu_emu_thread* me, void* address, unsigned long size, int write, void* site) {
    if (!me) return;
    Fiber* self = (Fiber*)me;
    Launch* L = self->launch;
    if (L->stop_kind) stop_at_access(L, self, site, L->stop_kind, "stopped by the tick");
    if (L->desc->guard_shared) {
        const char* guard = in_shared_guard(L->module, (const char*)address, size);
        if (guard) {
            L->desc->fault_address = (unsigned long long)guard;
            stop_at_access(L, self, site, CNN_GPU_EMU_SHARED_OVERRUN,
                           write ? "write into a guard zone between __shared__ arrays"
                                 : "read from a guard zone between __shared__ arrays");
        }
        const char* past = past_dynamic_shared(L->module, L->desc->shared_mem, (const char*)address, size);
        if (past) {
            L->desc->fault_address = (unsigned long long)past;
            char why[128];
            snprintf(why, sizeof why, "%s past the end of the %llu bytes of dynamic shared memory",
                     write ? "write" : "read", L->desc->shared_mem);
            stop_at_access(L, self, site, CNN_GPU_EMU_SHARED_OVERRUN, why);
        }
    }
    // an atomic's read stands for it (a read-modify-write)
    if (L->shadow && !(me->in_atomic && write)) race_check(L, self, (char*)address, size, write, me->in_atomic, site);
    if (L->sync && me->in_atomic && !write && in_array_argument(L, (char*)address))
        sync_atomic(L, self, (char*)address, site);
    if (!L->profiler) return;
    L->busy = 1;  // the tick must not jump out of malloc
    __asm__ __volatile__("" ::: "memory");
    bool recorded = record(L, self, (char*)address, size, write, site);
    __asm__ __volatile__("" ::: "memory");
    L->busy = 0;
    if (!recorded) stop_at_access(L, self, site, CNN_GPU_EMU_SETUP, "out of memory for the memory-access profile");
}

// __threadfence() in the instrumented build: orders global memory between blocks for the race check
EXPORT void cnn_gpu_emu_fence(cnn_gpu_emu_thread* me) {
    if (!me) return;
    Fiber* self = (Fiber*)me;
    Launch* L = self->launch;
    if (L->sync) sync_fence(L, self, __builtin_return_address(0));
}

// --- cp.async (cuda_emu.h): the pending copies of each thread ---------------------------------------

namespace {
bool in_shared(Launch* L, const char* a, unsigned long size) {
    const cnn_gpu_emu_module_state* m = L->module;
    return (a >= m->static_shared_begin && a + size <= m->static_shared_end) ||
           (a >= m->dynamic_shared && a + size <= m->dynamic_shared + L->desc->shared_mem);
}
}  // namespace

// The kernel has read the source (or not: zero-fill) and poisons the destination once this returns;
// the bytes wait here.
EXPORT __attribute__((noinline)) void cnn_gpu_emu_cp_async_issue(cnn_gpu_emu_thread* me, void* dst, const void* src,
                                                                 const void* data, int bytes) {
    Fiber* self = (Fiber*)me;
    Launch* L = self->launch;
    void* site = __builtin_return_address(0);
    if (!in_shared(L, (char*)dst, (unsigned long)bytes)) {
        self->wait_site = site;
        runtime_fault(L, self, CNN_GPU_EMU_CP_ASYNC, nullptr, nullptr,
                      "cp.async destination %p is not in shared memory", dst);
    }
    if ((uintptr_t)dst % (uintptr_t)bytes || (uintptr_t)src % (uintptr_t)bytes) {  // a GPU faults too
        self->wait_site = site;
        runtime_fault(L, self, CNN_GPU_EMU_CP_ASYNC, nullptr, nullptr,
                      "misaligned cp.async of %d bytes: destination %p, source %p", bytes, dst, src);
    }
    if (self->copy_count == self->copy_capacity) {
        int capacity = self->copy_capacity ? 2 * self->copy_capacity : 16;
        fiber_grow(L, self, site, self->copies, (size_t)capacity * sizeof(PendingCopy), "pending cp.async copies");
        self->copy_capacity = capacity;
    }
    PendingCopy& c = self->copies[self->copy_count++];
    c.dst = (char*)dst;
    c.group = self->groups_committed;
    c.bytes = (unsigned int)bytes;
    c.site = site;
    memcpy(c.data, data, (size_t)bytes);
}

EXPORT void cnn_gpu_emu_cp_async_commit_group(cnn_gpu_emu_thread* me) { ((Fiber*)me)->groups_committed++; }

EXPORT __attribute__((noinline)) void cnn_gpu_emu_cp_async_wait_group(cnn_gpu_emu_thread* me, int pending) {
    Fiber* self = (Fiber*)me;
    Launch* L = self->launch;
    if (pending < 0) {  // wait_all: commit_group, then wait_group 0
        if (self->copy_count && self->copies[self->copy_count - 1].group == self->groups_committed)
            self->groups_committed++;
        pending = 0;
    }
    if (self->groups_committed <= (unsigned int)pending) return;
    const unsigned int retire_below = self->groups_committed - (unsigned int)pending;
    int retired = 0;
    while (retired < self->copy_count && self->copies[retired].group < retire_below) {
        const PendingCopy& c = self->copies[retired++];
        memcpy(c.dst, c.data, c.bytes);
        if (L->shadow) race_check(L, self, c.dst, c.bytes, 1, false, __builtin_return_address(0));
    }
    self->copy_count -= retired;
    memmove(self->copies, self->copies + retired, (size_t)self->copy_count * sizeof(PendingCopy));
}

EXPORT void* cnn_gpu_emu_profile_new() { return calloc(1, sizeof(Profiler)); }
EXPORT int cnn_gpu_emu_profile_site_count(void* profile) { return ((Profiler*)profile)->site_count; }
EXPORT const cnn_gpu_emu_profile_site* cnn_gpu_emu_profile_sites(void* profile) { return ((Profiler*)profile)->sites; }
// [distinct global bytes read, distinct global bytes written, blocks run]
EXPORT void cnn_gpu_emu_profile_totals(void* profile, unsigned long long* totals) {
    Profiler* P = (Profiler*)profile;
    totals[0] = P->dram_read_bytes;
    totals[1] = P->dram_write_bytes;
    totals[2] = P->blocks_run;
}
EXPORT void cnn_gpu_emu_profile_free(void* profile) {
    if (!profile) return;
    free(((Profiler*)profile)->sites);
    free(profile);
}

EXPORT int cnn_gpu_emu_launch(cnn_gpu_emu_launch_desc* d) {
    d->fault_kind = CNN_GPU_EMU_OK;
    d->message[0] = 0;
    if (!tl_owner.resources) tl_owner.resources = (ThreadResources*)calloc(1, sizeof(ThreadResources));
    ThreadResources* r = tl_owner.resources;
    cnn_gpu_emu_module_state* m = d->module;
    long long n = (long long)d->block[0] * d->block[1] * d->block[2];
    if (!r || n <= 0 || n > kMaxThreads || !ensure_stacks(r, (int)n)) {
        d->fault_kind = CNN_GPU_EMU_SETUP;
        snprintf(d->message, sizeof d->message, "cannot set up %lld fibers", n);
        return d->fault_kind;
    }
    if (!r->alt_stack) r->alt_stack = malloc(kAltStackBytes);

    Launch L_storage;
    Launch* volatile Lp = &L_storage;
    Launch* L = Lp;
    memset(L, 0, sizeof *L);
    L->desc = d;
    L->module = m;
    L->res = r;
    L->fibers = r->fibers;
    L->order = r->order;
    L->warps = r->warps;
    L->n = (int)n;
    L->rng = d->seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    if (!L->rng) L->rng = 1;

    for (int i = 0; i < L->n; ++i) {
        Fiber* f = &L->fibers[i];
        f->linear = i;
        f->view.thread_idx.x = (unsigned)(i % d->block[0]);
        f->view.thread_idx.y = (unsigned)((i / d->block[0]) % d->block[1]);
        f->view.thread_idx.z = (unsigned)(i / (d->block[0] * d->block[1]));
        f->view.lane = (unsigned)(i % kWarp);
        f->view.warp_size = (unsigned)(L->n - (i - i % kWarp) < kWarp ? L->n - (i - i % kWarp) : kWarp);
    }
    for (int w = 0; w * kWarp < L->n; ++w) {
        L->warps[w].size = L->n - w * kWarp < kWarp ? L->n - w * kWarp : kWarp;
    }
    if (d->race_check) {
        L->region_count = 2 + (d->race_check_global ? d->global_count : 0);
        L->regions = (Region*)calloc((size_t)L->region_count, sizeof(Region));
        size_t words = 0;
        for (int i = 0; L->regions && i < L->region_count; ++i) {
            Region& g = L->regions[i];
            if (i == 0) { g.begin = m->static_shared_begin; g.end = m->static_shared_end; }
            else if (i == 1) { g.begin = m->dynamic_shared; g.end = m->dynamic_shared + d->shared_mem; }
            else { g.begin = (char*)d->global_ranges[2 * (i - 2)]; g.end = (char*)d->global_ranges[2 * (i - 2) + 1]; }
            g.shadow_base = words;
            words += (size_t)(g.end - g.begin + 3) / 4;
        }
        L->shadow = L->regions ? (ShadowWord*)calloc(words + 1, sizeof(ShadowWord)) : nullptr;
        if (!L->shadow || (d->race_check_global && !sync_begin(L))) {
            sync_end(L);
            free(L->shadow);
            free(L->regions);
            d->fault_kind = CNN_GPU_EMU_SETUP;
            snprintf(d->message, sizeof d->message, "cannot allocate the race check's shadow memory");
            return d->fault_kind;
        }
    }
    L->profiler = (Profiler*)d->profile;
    L->instrumented = d->race_check || L->profiler;
    if (L->profiler && !profile_begin(L, L->profiler)) {
        profile_end(L->profiler, false);
        sync_end(L);
        free(L->shadow);
        free(L->regions);
        d->fault_kind = CNN_GPU_EMU_SETUP;
        snprintf(d->message, sizeof d->message, "cannot allocate the memory-access profile");
        return d->fault_kind;
    }
    m->block_dim = {d->block[0], d->block[1], d->block[2]};
    m->grid_dim = {d->grid[0], d->grid[1], d->grid[2]};

    bool guard = d->guard_shared && d->shared_mem <= m->dynamic_shared_capacity;
    char* guard_page = dynamic_guard_page(m, d->shared_mem);
    if (guard && !protect_shared_surroundings(m, d->shared_mem, PROT_NONE)) {
        protect_shared_surroundings(m, d->shared_mem, PROT_READ | PROT_WRITE);
        guard = false;
    }

    unsigned int saved_csr = _mm_getcsr();
    unsigned int csr = d->flush_denormals ? (saved_csr | 0x8040u) : (saved_csr & ~0x8040u);
    _mm_setcsr(csr);
    unsigned short cw;
    asm volatile("fnstcw %0" : "=m"(cw));
    unsigned int csr_and_cw[2] = {csr, cw};

    stack_t alt, previous_alt;
    alt.ss_sp = r->alt_stack;
    alt.ss_size = kAltStackBytes;
    alt.ss_flags = 0;
    sigaltstack(&alt, &previous_alt);
    install_fault_handlers();
    L->interrupts_at_start = __atomic_load_n(&g_interrupts, __ATOMIC_SEQ_CST);
    double tick = kTickSeconds;
    if (d->timeout_seconds > 0 && d->timeout_seconds < kNoDeadlineSeconds) {
        clock_gettime(CLOCK_MONOTONIC, &L->deadline);
        double end = (double)L->deadline.tv_nsec * 1e-9 + d->timeout_seconds;
        L->deadline.tv_sec += (time_t)end;
        L->deadline.tv_nsec = (long)((end - (double)(time_t)end) * 1e9);
        L->has_deadline = true;
        if (d->timeout_seconds < tick) tick = d->timeout_seconds > kMinTickSeconds ? d->timeout_seconds : kMinTickSeconds;
    }
    bool ticking = arm_tick(r, tick);

    unsigned long long nblocks = (unsigned long long)d->grid[0] * d->grid[1] * d->grid[2];
    // a sample: `sample_blocks` blocks spread evenly over the grid, in order
    unsigned long long runs = d->sample_blocks && d->sample_blocks < nblocks ? d->sample_blocks : nblocks;
    // random schedule: blocks in the order of an affine bijection b -> (stride*b + offset) mod nblocks
    unsigned long long block_stride = 1, block_offset = 0;
    if (d->schedule == CNN_GPU_EMU_RANDOM && nblocks > 1) {
        block_offset = next_random(L) % nblocks;
        do block_stride = 1 + next_random(L) % (nblocks - 1);
        while (gcd(block_stride, nblocks) != 1);
    }
    tl_launch = L;
    if (sigsetjmp(L->jump, 1) == 0) {
        for (unsigned long long b = 0; b < runs; ++b) {
            if (L->stop_kind) {
                L->desc->fault_kind = L->stop_kind;
                break;
            }
            unsigned long long lb = b;
            if (runs < nblocks) {
                lb = (unsigned long long)((unsigned __int128)b * nblocks / runs);
            } else if (d->schedule == CNN_GPU_EMU_REVERSE) {
                lb = nblocks - 1 - b;
            } else if (d->schedule == CNN_GPU_EMU_RANDOM) {
                lb = (unsigned long long)(((unsigned __int128)b * block_stride + block_offset) % nblocks);
            }
            L->block[0] = (unsigned)(lb % d->grid[0]);
            L->block[1] = (unsigned)((lb / d->grid[0]) % d->grid[1]);
            L->block[2] = (unsigned)(lb / ((unsigned long long)d->grid[0] * d->grid[1]));
            m->block_idx = {L->block[0], L->block[1], L->block[2]};
            L->block_number = (unsigned int)b;
            L->block_serial = (unsigned int)b + 1;
            if (d->poison) {
                const unsigned char poison = poison_byte(d);
                if (m->static_shared_end > m->static_shared_begin)
                    memset(m->static_shared_begin, poison, (size_t)(m->static_shared_end - m->static_shared_begin));
                memset(m->dynamic_shared, poison, d->shared_mem);
            }
            if (guard) memset(m->dynamic_shared + d->shared_mem, kCanary, (size_t)(guard_page - m->dynamic_shared) - d->shared_mem);
            if (d->guard_shared) fill_shared_guards(m);
            for (int i = 0; i < L->n; ++i)
                prepare_fiber(L, &L->fibers[i], stack_top(r, i), csr_and_cw);
            set_order(L);
            L->pos = 0;
            L->live = L->n;
            L->at_barrier = 0;
            L->barrier_parity = 0;
            L->barrier_count[0] = L->barrier_count[1] = 0;
            for (int w = 0; w * kWarp < L->n; ++w) {
                L->warps[w].arrived = 0;
                L->warps[w].phase = 0;
                L->warps[w].epoch = 0;
                L->warps[w].partial_waiting = 0;
                if (L->warps[w].partial_clocks) {
                    L->warps[w].partial_clocks = false;
                    memset(L->warps[w].partial_count, 0, sizeof L->warps[w].partial_count);
                    memset(L->warps[w].partial_seen, 0, sizeof L->warps[w].partial_seen);
                }
            }
            L->epoch++;
            if (L->sync) sync_begin_block(L->sync);
            Fiber* first = &L->fibers[L->order[0]];
            m->current = &first->view;
            cnn_gpu_emu_switch(&L->main_sp, first->sp);
            if (L->desc->fault_kind != CNN_GPU_EMU_OK) break;
            if (L->profiler) L->profiler->blocks_run++;
            if (guard && !canary_intact(m->dynamic_shared + d->shared_mem, guard_page)) {
                L->desc->fault_kind = CNN_GPU_EMU_SHARED_OVERRUN;
                snprintf(d->message, sizeof d->message,
                         "write past the end of the %llu bytes of dynamic shared memory", d->shared_mem);
                break;
            }
            const char* changed = d->guard_shared ? changed_shared_guard(m) : nullptr;
            if (changed) {
                L->desc->fault_kind = CNN_GPU_EMU_SHARED_OVERRUN;
                d->fault_address = (unsigned long long)changed;
                snprintf(d->message, sizeof d->message, "write into a guard zone between __shared__ arrays");
                break;
            }
            // what a GPU refuses before the launch, known here once a block has run: the static arrays'
            // bytes come from those it wrote over the poison
            if (b == 0 && d->poison && (unsigned long long)(m->static_shared_end - m->static_shared_begin) >
                                           d->static_shared_limit) {
                const unsigned long long bytes = written_shared_bytes(m, poison_byte(d));
                if (bytes > d->static_shared_limit) {
                    L->desc->fault_kind = CNN_GPU_EMU_SETUP;
                    snprintf(d->message, sizeof d->message,
                             "too much shared memory: the first block wrote %llu bytes of __shared__ arrays, over "
                             "the %llu this launch leaves them (CUDA allows 48 KB for them and the %llu bytes of "
                             "dynamic shared memory together, or with max_dynamic_shared_size_bytes raised 48 KB "
                             "of them and 227 KB with that attribute): a GPU refuses the launch", bytes,
                             d->static_shared_limit, d->shared_mem);
                    break;
                }
            }
        }
    }
    L = Lp;
    sync_end(L);
    free(L->shadow);
    free(L->byte_shadow);
    free(L->regions);
    if (L->profiler) profile_end(L->profiler, d->fault_kind == CNN_GPU_EMU_OK);
    m->current = nullptr;
    tl_launch = nullptr;
    if (ticking) disarm_tick(r);
    remove_fault_handlers();
    sigaltstack(&previous_alt, nullptr);
    _mm_setcsr(saved_csr);
    if (guard) protect_shared_surroundings(m, d->shared_mem, PROT_READ | PROT_WRITE);

    if (d->fault_kind != CNN_GPU_EMU_OK) {
        memcpy(d->fault_block, L->block, sizeof L->block);
        bool is_return = d->fault_kind != CNN_GPU_EMU_SIGNAL && d->fault_kind != CNN_GPU_EMU_STACK_OVERFLOW &&
                         d->fault_kind != CNN_GPU_EMU_WATCHDOG && d->fault_kind != CNN_GPU_EMU_INTERRUPTED;
        resolve_site(L->raw_site, is_return, d->site_object, sizeof d->site_object, &d->site_offset);
        resolve_site(L->raw_other_site, true, d->other_site_object, sizeof d->other_site_object,
                     &d->other_site_offset);
    }
    return d->fault_kind;
}

// Arrays staged between two inaccessible pages, in one of two layouts. At the end: the last byte
// lies right before the back page, so any access past the end faults, and canary bytes fill the gap
// from the front page. At the start: the first byte follows the front page, so any access before the
// start faults, and canary bytes fill the gap up to the back page. With align > 0 the start lies at
// `phase` modulo `align` instead (a misaligned view as misaligned as on a GPU; profiling: cudaMalloc's
// 256-byte alignment), as close to that page as it allows, canary bytes filling both gaps. A launch
// uses one layout for all its arrays; schedules alternate them (cnn_gpu.emu._module), so a sweep
// faults on both sides.
namespace {
constexpr size_t kFrontCanary = 64;
struct GuardedBuffer {
    char* mapping;
    size_t mapping_size;
    char* data;
    size_t size;
};

// Freed mappings (guard page included) are kept for the next launches: mapping fresh pages and
// faulting them in costs several times the copy into them.
constexpr int kPoolSlots = 8;
constexpr size_t kPoolBytes = 64 << 20;
struct Mapping {
    char* begin;
    size_t size;
};
Mapping g_pool[kPoolSlots];
int g_pool_count = 0;
size_t g_pool_bytes = 0;
pthread_mutex_t g_pool_lock = PTHREAD_MUTEX_INITIALIZER;

// The smallest pooled mapping of at least `size` bytes, or a new one; its first and last pages
// inaccessible.
Mapping take_mapping(size_t size) {
    pthread_mutex_lock(&g_pool_lock);
    int best = -1;
    for (int i = 0; i < g_pool_count; ++i)
        if (g_pool[i].size >= size && (best < 0 || g_pool[i].size < g_pool[best].size)) best = i;
    Mapping m = {nullptr, 0};
    if (best >= 0) {
        m = g_pool[best];
        g_pool[best] = g_pool[--g_pool_count];
        g_pool_bytes -= m.size;
    }
    pthread_mutex_unlock(&g_pool_lock);
    if (m.begin) return m;
    char* begin = (char*)mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (begin == MAP_FAILED) return m;
    if (mprotect(begin, kPage, PROT_NONE) != 0 || mprotect(begin + size - kPage, kPage, PROT_NONE) != 0) {
        munmap(begin, size);
        return m;
    }
    return {begin, size};
}

void give_mapping(Mapping m) {
    pthread_mutex_lock(&g_pool_lock);
    bool kept = g_pool_count < kPoolSlots && g_pool_bytes + m.size <= kPoolBytes;
    if (kept) {
        g_pool[g_pool_count++] = m;
        g_pool_bytes += m.size;
    }
    pthread_mutex_unlock(&g_pool_lock);
    if (!kept) munmap(m.begin, m.size);
}
}  // namespace

EXPORT void* cnn_gpu_emu_guard_alloc(unsigned long long size, unsigned long long align, unsigned long long phase,
                                     int at_start, void** data) {
    size_t need = kFrontCanary + size + align;
    Mapping m = take_mapping(((need + kPage - 1) / kPage + 2) * kPage);
    GuardedBuffer* g = m.begin ? (GuardedBuffer*)malloc(sizeof(GuardedBuffer)) : nullptr;
    if (!g) {
        if (m.begin) give_mapping(m);
        return nullptr;
    }
    char* front = m.begin + kPage;   // the first accessible byte
    char* back = m.begin + m.size - kPage;
    g->mapping = m.begin;
    g->mapping_size = m.size;
    if (!align)
        g->data = at_start ? front : back - size;
    else if (at_start)
        g->data = front + phase;   // pages are aligned to `align`
    else
        g->data = (char*)((((uintptr_t)(back - size) - phase) & ~(uintptr_t)(align - 1)) + phase);
    g->size = size;
    memset(front, kCanary, (size_t)(g->data - front));
    memset(g->data + size, kCanary, (size_t)(back - (g->data + size)));
    *data = g->data;
    return g;
}

// 0: canaries intact; 1: a byte before the start was overwritten; 2: one past the end was.
EXPORT int cnn_gpu_emu_guard_check(void* handle) {
    GuardedBuffer* g = (GuardedBuffer*)handle;
    if (!canary_intact(g->mapping + kPage, g->data)) return 1;
    if (!canary_intact(g->data + g->size, g->mapping + g->mapping_size - kPage)) return 2;
    return 0;
}

// The addresses of the buffer's inaccessible front and back pages.
EXPORT void cnn_gpu_emu_guard_pages(void* handle, unsigned long long* front, unsigned long long* back) {
    GuardedBuffer* g = (GuardedBuffer*)handle;
    *front = (unsigned long long)(uintptr_t)g->mapping;
    *back = (unsigned long long)(uintptr_t)(g->mapping + g->mapping_size - kPage);
}

EXPORT void cnn_gpu_emu_guard_free(void* handle) {
    GuardedBuffer* g = (GuardedBuffer*)handle;
    give_mapping({g->mapping, g->mapping_size});
    free(g);
}

EXPORT unsigned long long cnn_gpu_emu_launch_desc_size() { return sizeof(cnn_gpu_emu_launch_desc); }

// For the benchmark: nanoseconds per fiber switch, measured with two fibers ping-ponging.
namespace {
void* g_bench_main_sp;
void* g_bench_sp[2];
long g_bench_rounds;
void bench_fiber(Fiber* f) {
    int me = f->linear;
    for (long i = 0; i < g_bench_rounds; ++i) cnn_gpu_emu_switch(&g_bench_sp[me], g_bench_sp[1 - me]);
    cnn_gpu_emu_switch(&g_bench_sp[me], g_bench_main_sp);
}
}  // namespace

EXPORT double cnn_gpu_emu_switch_benchmark(long rounds) {
    static char stacks[2][16384] __attribute__((aligned(16)));
    Fiber fibers[2];
    unsigned int csr_and_cw[2] = {_mm_getcsr(), 0x37f};
    g_bench_rounds = rounds;
    for (int i = 0; i < 2; ++i) {
        fibers[i].linear = i;
        void** sp = (void**)(stacks[i] + sizeof stacks[i] - 80);
        memcpy(sp, csr_and_cw, 8);
        sp[3] = (void*)&bench_fiber;
        sp[4] = &fibers[i];
        sp[7] = (void*)&cnn_gpu_emu_fiber_start;
        g_bench_sp[i] = sp;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cnn_gpu_emu_switch(&g_bench_main_sp, g_bench_sp[0]);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    return ns / (double)(2 * rounds);
}
