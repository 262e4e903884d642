// Shared by pool.cu, adaptive_pool.cu and fractional_pool.cu, whose kernels run one body for images and
// volumes. (Kept out of common.cuh: added there, it changed the conv kernels' code, e.g. conv2d_fprop_wide
// float32 sm_90 166 -> 168 registers.)
#pragma once
#include "common.cuh"

// (t, p, q) of flat position `flat` in a T x P x Q grid of one plane: the 2-D kernels pass VOLUME
// false, t = 0, and decode with one division, as before they had a depth.
template <bool VOLUME>
struct Position3 {
    int t, p, q;
    __device__ __forceinline__ Position3(int flat, int P, int Q)
    {
        q = flat % Q;
        const int tp = flat / Q;
        p = VOLUME ? tp % P : tp;
        t = VOLUME ? tp / P : 0;
    }
};

// The maximum of the box [d0, d1) x [h0, h1) x [w0, w1) of a plane of rows of W and planes of H rows, and
// its flat index (d*H + h)*W + w: taps scanned in (d, h, w) order, a later one replacing the maximum only
// if strictly greater (the first maximum wins ties) or NaN (NaN propagates, the last NaN's index kept),
// PyTorch's rule. The box holds a tap; its first seeds the maximum (adaptive and fractional pooling's
// windows, which never reach outside the plane).
struct BoxMax {
    acc_t value;
    int index;
};

__device__ __forceinline__ BoxMax box_max(const REAL* __restrict__ xp, int d0, int d1, int h0, int h1, int w0,
                                          int w1, int H, int W)
{
    int best_index = (d0 * H + h0) * W + w0;
    acc_t best = to_acc(xp[best_index]);
    for (int d = d0; d < d1; ++d)
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) {
                const int index = (d * H + h) * W + w;
                const acc_t v = to_acc(xp[index]);
                if (v > best || v != v) {
                    best = v;
                    best_index = index;
                }
            }
    return BoxMax{best, best_index};
}
