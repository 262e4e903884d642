// CUDA's float-to-integer intrinsics, defined for every input: NaN gives 0, out-of-range values
// saturate (the emulator must not fault on them, as it does on a plain cast of such a value)
extern "C" __global__ void float_to_int_intrinsics(const float* __restrict__ x, int* __restrict__ rounded,
                                                   unsigned int* __restrict__ unsigned_rounded, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    rounded[5 * i] = __float2int_rn(v);
    rounded[5 * i + 1] = __float2int_rz(v);
    rounded[5 * i + 2] = __float2int_rd(v);
    rounded[5 * i + 3] = __float2int_ru(v);
    rounded[5 * i + 4] = __double2int_rz((double)v);
    unsigned_rounded[i] = __float2uint_rn(v);
}

// The fast intrinsics, which the emulator gives with their documented worst error (cuda_emu.h)
extern "C" __global__ void fast_intrinsics(const float* __restrict__ x, const float* __restrict__ y,
                                           float* __restrict__ out, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[3 * i] = __expf(x[i]);
    out[3 * i + 1] = __logf(x[i]);
    out[3 * i + 2] = __fdividef(x[i], y[i]);
}

// Signed int arithmetic that overflows: it wraps on a GPU (two's complement), so the project's walks may
// step past INT_MAX and back; C++ calls it undefined and g++ -O2 would fold v + step > v to step > 0
extern "C" __global__ void wrapping_int(int v, int step, int* __restrict__ out)
{
    out[0] = v + step > v;
    out[1] = v + step;
}
