// Stride phases of a convolution's input gradient (conv2d_dgrad.cu, conv3d_dgrad.cu): along one axis,
// the input positions h with (h + pad) mod stride == phase receive dy[(h + pad - r*dil) / stride] * w[r]
// from the taps r with (r*dil) mod stride == phase only, r = r0 + j*period (period = stride /
// gcd(stride, dil)), the phase's i-th position reading output row i + base - j*step: a dense
// convolution, so no tap multiplies an inserted zero. A phase no tap reaches gets zeros.
__device__ __forceinline__ int gcd(int a, int b)
{
    while (b) { const int rem = a % b; a = b; b = rem; }
    return a;
}

// The taps of one dimension that reach the input pixels of `phase`: r = r0 + j*period for
// j < count, hitting output row p = i + base - j*step for the phase's i-th input row.
struct PhaseTaps {
    int first_pixel, pixels, r0, period, count, base, step;
};

__device__ __forceinline__ PhaseTaps phase_taps(int phase, int size, int taps, int stride, int pad,
                                                int dil)
{
    PhaseTaps t;
    t.period = stride / gcd(stride, dil);
    t.first_pixel = ((phase - pad) % stride + stride) % stride;
    t.pixels = t.first_pixel < size ? (size - t.first_pixel + stride - 1) / stride : 0;
    t.r0 = -1;
    for (int r = 0; r < t.period && r < taps; ++r)
        if ((r * dil) % stride == phase) { t.r0 = r; break; }
    t.count = t.r0 < 0 ? 0 : (taps - t.r0 + t.period - 1) / t.period;
    t.base = t.r0 < 0 ? 0 : (t.first_pixel + pad - t.r0 * dil) / stride;   // exact division
    t.step = t.period * dil / stride;
    return t;
}

// Taps t < taps of one dimension that reach phases below `phase`: those with (t*dil) mod stride
// below it (tap t reaches phase (t*dil) mod stride, see phase_taps).
__device__ __forceinline__ int taps_before(int phase, int taps, int stride, int dil)
{
    int before = 0;
    for (int t = 0; t < taps; ++t) before += (t * dil) % stride < phase;
    return before;
}
