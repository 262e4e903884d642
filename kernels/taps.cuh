// Strided, dilated taps that reach one position along an axis: the gathers that sum, for each input
// (image) position, the outputs of a convolution-like window reading it (conv2d_depthwise.cu's dgrad,
// fold.cu's col2im). Tap r reads position pos from output (block) o when o*stride - pad + r*dil = pos;
// the taps that do form r0, r0 + period, ... (period = stride / gcd(stride, dil), which the host
// passes), their outputs falling by step = period*dil / stride each.
// First tap r0 whose dilated offset has the pixel's phase, r0*dil = pos + pad (mod stride), and
// the output row it reaches; -1 when no tap does. Later taps are r0 + j*period, rows out - j*step.
__device__ __forceinline__ int first_tap(int pos, int pad, int stride, int dil, int taps, int period,
                                         int* out)
{
    for (int r = 0; r < period && r < taps; ++r) {
        const int offset = pos + pad - r * dil;
        if (offset % stride == 0) {
            *out = offset / stride;
            return r;
        }
    }
    return -1;
}
