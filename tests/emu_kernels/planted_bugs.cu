// Kernels with deliberate bugs: the emulator must report each one (tests/test_emu.py).
// They also compile with NVRTC: the bugs are run-time bugs, not dialect problems.

// y[i] = x[i + 1 within the block] -- correct version and one missing its barrier.
extern "C" __global__ void rotate_with_barrier(const float* __restrict__ x, float* __restrict__ y, int n)
{
    __shared__ float tile[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    if (i < n) y[i] = tile[(threadIdx.x + 1) % blockDim.x];
}

extern "C" __global__ void rotate_missing_barrier(const float* __restrict__ x, float* __restrict__ y, int n)
{
    __shared__ float tile[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.0f;  // each thread stores its element
    if (i < n) y[i] = tile[(threadIdx.x + 1) % blockDim.x];  // BUG: no __syncthreads() before the read
}

// BUG: `<=` writes one element past the end of y.
extern "C" __global__ void write_one_past_end(float* __restrict__ y, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 2.0f * i;
}

// BUG: `<=` reads one element past the end of x (of any length: a guard zone catches it at once).
extern "C" __global__ void read_one_past_end(const float* __restrict__ x, float* __restrict__ y, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i < n ? i : 0] += x[i];
}

// BUG: the last thread writes one element past the dynamic shared memory (blockDim.x floats).
extern "C" __global__ void shared_overrun(float* __restrict__ y)
{
    extern __shared__ float buffer[];
    buffer[threadIdx.x + 1] = (float)threadIdx.x;
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = buffer[threadIdx.x];
}

// y = x through one of two static __shared__ arrays; BUG where offset != 0: each thread stores its
// element at threadIdx.x + offset (`store`) or loads it from there (otherwise), so that the last
// threads (offset > 0) or the first (offset < 0) meet the space between the arrays (a guard zone).
extern "C" __global__ void static_shared_offset(const float* __restrict__ x, float* __restrict__ y, int offset,
                                                int store)
{
    __shared__ float first[128];
    __shared__ float second[128];
    const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    second[t] = -1.0f;
    first[store ? t + offset : t] = x[i];
    __syncthreads();
    y[i] = first[store ? t : t + offset] * (second[t] + 2.0f);
}

// The same through a function template's __shared__ array (GCC places it apart from the others)
template <int SIZE>
__device__ float through_template_array(float value, int offset)
{
    __shared__ float values[SIZE];
    values[(int)threadIdx.x + offset] = value;
    __syncthreads();
    return values[threadIdx.x];
}

extern "C" __global__ void template_shared_offset(const float* __restrict__ x, float* __restrict__ y, int offset)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = through_template_array<128>(x[i], offset);
}

// 32 KB of static shared memory and `blockDim.x` floats of dynamic: BUG where the launch's dynamic
// shared memory passes the 16 KB that CUDA's 48 KB leaves it (without the opt-in attribute)
extern "C" __global__ void static_and_dynamic_shared(float* __restrict__ y)
{
    __shared__ float fixed[8192];
    extern __shared__ float extra[];
    fixed[threadIdx.x] = 1.0f;
    extra[threadIdx.x] = 2.0f;
    __syncthreads();
    y[threadIdx.x] = fixed[(threadIdx.x + 1) % blockDim.x] + extra[threadIdx.x];
}

// Two arrays of one declaration, of which the kernel uses the second (24 KB): with up to 24 KB of
// dynamic shared memory it stays within CUDA's 48 KB
__shared__ float one_of_two_first[6144], one_of_two_second[6144];
extern "C" __global__ void second_of_two_arrays(float* __restrict__ y)
{
    extern __shared__ float extra[];
    for (int i = threadIdx.x; i < 6144; i += blockDim.x) one_of_two_second[i] = (float)i;
    extra[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = one_of_two_second[6143 - threadIdx.x] + extra[threadIdx.x];
}

// BUG: the two halves of the block wait at different barriers.
extern "C" __global__ void divergent_barrier(float* __restrict__ y)
{
    if (threadIdx.x < blockDim.x / 2) {
        y[threadIdx.x] = 1.0f;
        __syncthreads();  // the first half waits here
    } else {
        __syncthreads();  // the second half waits here
        y[threadIdx.x] = 2.0f;
    }
}

// BUG: threads past n return early; the others then wait at a barrier those never reach.
extern "C" __global__ void barrier_after_return(const float* __restrict__ x, float* __restrict__ y, int n)
{
    __shared__ float tile[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    tile[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = tile[threadIdx.x];
}

// BUG: the last lane of each warp exits before its warp shuffles.
extern "C" __global__ void shuffle_after_exit(float* __restrict__ y)
{
    if (threadIdx.x % 32 == 31) return;
    const float v = __shfl_down_sync(0xffffffffu, y[threadIdx.x], 1);
    y[threadIdx.x] = v;
}

// BUG: waits for a flag nobody sets.
extern "C" __global__ void wait_forever(float* __restrict__ flag)
{
    volatile float* f = flag;
    while (f[0] == 0.0f) {
    }
}

// BUG: a null pointer dereference.
extern "C" __global__ void null_dereference(float* __restrict__ y, int offset)
{
    const float* nowhere = (const float*)0;
    y[threadIdx.x] = nowhere[offset + threadIdx.x];
}

// BUG (for the emulator): a 128 KB local array, more than a fiber's 64 KB stack.
extern "C" __global__ void huge_stack_frame(float* __restrict__ y, int i)
{
    volatile float scratch[32768];
    scratch[i] = y[0];
    y[0] = scratch[i];
}

// Warp sums through shared memory, warp-synchronously: correct with __syncwarp() between the
// steps, a race without (lanes of a warp are not in lockstep since Volta).
extern "C" __global__ void warp_sums_synced(const float* __restrict__ x, float* __restrict__ sums)
{
    __shared__ float partial[256];
    const int t = threadIdx.x, lane = t % 32;
    partial[t] = x[blockIdx.x * blockDim.x + t];
    __syncwarp();
    for (int offset = 16; offset > 0; offset /= 2) {
        if (lane < offset) partial[t] += partial[t + offset];
        __syncwarp();
    }
    if (lane == 0) sums[(blockIdx.x * blockDim.x + t) / 32] = partial[t];
}

extern "C" __global__ void warp_sums_unsynced(const float* __restrict__ x, float* __restrict__ sums)
{
    __shared__ float partial[256];
    const int t = threadIdx.x, lane = t % 32;
    partial[t] = x[blockIdx.x * blockDim.x + t];
    for (int offset = 16; offset > 0; offset /= 2)
        if (lane < offset) partial[t] += partial[t + offset];  // BUG: no __syncwarp() between the steps
    if (lane == 0) sums[(blockIdx.x * blockDim.x + t) / 32] = partial[t];
}

// BUG: the steps exchange a value by a shuffle (mode 0) or a vote (1) instead of a __syncwarp()
// (mode 2, correct): only __syncwarp orders the lanes' shared-memory accesses in CUDA.
extern "C" __global__ void warp_sums_exchanged(const float* __restrict__ x, float* __restrict__ sums, int mode)
{
    __shared__ float partial[256];
    const int t = threadIdx.x, lane = t % 32;
    partial[t] = x[blockIdx.x * blockDim.x + t];
    for (int offset = 16; offset > 0; offset /= 2) {
        if (mode == 0)
            (void)__shfl_sync(0xffffffffu, offset, 0);   // BUG: a shuffle orders no memory access
        else if (mode == 1)
            (void)__ballot_sync(0xffffffffu, 1);
        else
            __syncwarp();
        if (lane < offset) partial[t] += partial[t + offset];
    }
    if (lane == 0) sums[(blockIdx.x * blockDim.x + t) / 32] = partial[t];
}

// Each half of a warp sums its 16 values through shared memory, its steps ordered by
// __syncwarp(mask) over the half's lanes (mode 1). BUG in mode 0: no __syncwarp(); in mode 2: the
// upper half also reads the lower half's first value, which its own half's __syncwarp() does not
// order; in mode 3: a shuffle over the half instead of the __syncwarp(), which orders nothing.
__device__ void half_warp_step(unsigned int half, int mode)
{
    if (mode == 3)
        (void)__shfl_sync(half, mode, 0);
    else if (mode != 0)
        __syncwarp(half);
}
extern "C" __global__ void half_warp_sums(const float* __restrict__ x, float* __restrict__ sums, int mode)
{
    __shared__ float partial[64];
    const int t = threadIdx.x, lane = t % 32;
    const unsigned int half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    partial[t] = x[blockIdx.x * blockDim.x + t];
    half_warp_step(half, mode);
    for (int offset = 8; offset > 0; offset /= 2) {
        if (lane % 16 < offset) partial[t] += partial[t + offset];
        half_warp_step(half, mode);
    }
    if (lane % 16 == 0) sums[(blockIdx.x * blockDim.x + t) / 16] = partial[t] + (mode == 2 && lane == 16 ? partial[t - 16] : 0.0f);
}

// Lane 0 writes a shared value, lanes 0-1 sync, lanes 1-2 sync (`chained`), lane 2 reads the value:
// the two exchanges order the write before the read. BUG without the second: nothing orders them.
extern "C" __global__ void syncwarp_chain(const float* __restrict__ x, float* __restrict__ y, int chained)
{
    __shared__ float value;
    const int lane = threadIdx.x;
    if (lane == 0) value = x[0];
    if (lane < 2) __syncwarp(0x3u);
    if (chained && lane >= 1 && lane < 3) __syncwarp(0x6u);
    if (lane == 2) y[0] = value;
}

// Every thread reads a shared value; warp 0 reads it again after a __syncwarp() and, after
// another, its lane 0 overwrites it. BUG unless `synced` (a __syncthreads() before the write):
// nothing orders warp 1's reads before the write. The forward schedule runs warp 1's reads between
// warp 0's, so warp 0 both reads first and reads last.
extern "C" __global__ void reread_then_overwrite(float* __restrict__ y, int synced)
{
    __shared__ float value;
    const int t = threadIdx.x;
    if (t == 0) value = 1.0f;
    __syncthreads();
    float v = value;
    __syncwarp();
    if (t < 32) {
        v += value;
        __syncwarp();
    }
    if (synced) __syncthreads();
    if (t == 0) value = v;   // BUG without the __syncthreads(): warp 1 read value
    y[t] = v;
}

// BUG: every block writes out[0] (meant out[blockIdx.x]); blocks run in no fixed order.
extern "C" __global__ void blocks_write_one_element(const float* __restrict__ x, float* __restrict__ out)
{
    if (threadIdx.x == 0) out[0] = x[blockIdx.x];
}

// BUG: two threads of a block write each element (meant out[threadIdx.x]).
extern "C" __global__ void threads_write_one_element(const float* __restrict__ x, float* __restrict__ out)
{
    out[threadIdx.x / 2] = x[threadIdx.x];
}

// Threads 1.. of a block add their x into a shared total with atomics, and thread 0 writes the total
// out. BUG unless `synced`: no barrier between the atomics and thread 0's read.
extern "C" __global__ void shared_total(const float* __restrict__ x, float* __restrict__ out, int synced)
{
    __shared__ float total;
    if (threadIdx.x == 0) total = 0.0f;
    __syncthreads();
    if (threadIdx.x > 0) atomicAdd(&total, x[blockIdx.x * blockDim.x + threadIdx.x]);
    if (synced) __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

// Lane 0 of each warp adds its warp's number into a shared total, and thread 1 reads the total after
// a __syncwarp(), which orders its warp's atomic before the read and not the other warps': BUG.
extern "C" __global__ void shared_total_warp_synced(float* __restrict__ out)
{
    __shared__ float total;
    if (threadIdx.x == 0) total = 0.0f;
    __syncthreads();
    if (threadIdx.x % 32 == 0) atomicAdd(&total, (float)(threadIdx.x / 32));
    __syncwarp();
    if (threadIdx.x == 1) out[0] = total;
}

// BUG: thread 0 sets a shared flag with atomicExch (its old value unused) while the other threads
// read the flag, no barrier between.
extern "C" __global__ void shared_flag_exchanged(int* __restrict__ out)
{
    __shared__ int flag;
    if (threadIdx.x == 0) flag = 0;
    __syncthreads();
    if (threadIdx.x == 0)
        atomicExch(&flag, 1);
    else
        out[threadIdx.x] = flag;
}

// BUG: block 0 sets out[0] with a plain store while the other blocks add into it with atomics.
extern "C" __global__ void blocks_add_over_a_store(const float* __restrict__ x, float* __restrict__ out)
{
    if (threadIdx.x != 0) return;
    if (blockIdx.x == 0)
        out[0] = x[0];
    else
        atomicAdd(&out[0], x[blockIdx.x]);
}

// x[i - 1]: thread 0 of block 0 reads the element before the start (a padding test left out)
extern "C" __global__ void read_one_before_start(const float* __restrict__ x, float* __restrict__ y, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i - 1] + x[i];
}

// a 16-byte vector load at a 4-byte offset: a GPU faults with "misaligned address"
extern "C" __global__ void misaligned_vector_load(const float* __restrict__ x, float* __restrict__ y)
{
    const float4 v = *(const float4*)(x + 4 * threadIdx.x + 1);
    y[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// the block's maximum into an accumulator nobody initialised: NaN poison hides it from fmaxf
extern "C" __global__ void uninitialised_shared_max(const float* __restrict__ x, float* __restrict__ y)
{
    __shared__ float best[1];
    for (int t = 0; t < (int)blockDim.x; ++t) {
        if ((int)threadIdx.x == t) best[0] = fmaxf(best[0], x[t]);
        __syncthreads();
    }
    if (threadIdx.x == 0) y[0] = best[0];
}

// every lane runs the exchange, but the mask names lanes 0..15 only: undefined on a GPU
extern "C" __global__ void half_mask_shuffle(const float* __restrict__ x, float* __restrict__ y)
{
    y[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, x[threadIdx.x], 1);
}

extern "C" __global__ void half_mask_syncwarp(float* __restrict__ y)
{
    y[threadIdx.x] = 1.0f;
    __syncwarp(0x0000ffffu);
    y[threadIdx.x] += y[threadIdx.x ^ 1];
}

// a sum into a local nobody initialised: a fiber's fresh stack would start it at 0, a GPU at whatever
// its register held
extern "C" __global__ void uninitialised_local_sum(const float* __restrict__ x, float* __restrict__ y, int n)
{
    float sum;
    for (int i = 0; i < n; ++i) sum += x[threadIdx.x * n + i];
    y[threadIdx.x] = sum;
}

// 1 << 32: undefined in C++; x86 shifts by the count mod 32 (1), a GPU's shift clamps it (0)
extern "C" __global__ void shift_by_count(const int* __restrict__ counts, unsigned int* __restrict__ y)
{
    y[threadIdx.x] = 1u << counts[threadIdx.x];
}

// a float that no int holds: undefined in C++; x86 gives INT_MIN, a GPU saturates (NaN: 0)
extern "C" __global__ void float_to_int(const float* __restrict__ x, int* __restrict__ y)
{
    y[threadIdx.x] = (int)x[threadIdx.x];
}
