// Shared by pool.cu and adaptive_pool.cu, whose kernels run one body for images and volumes.
// (Kept out of common.cuh: added there, it changed the conv kernels' code, e.g. conv2d_fprop_wide
// float32 sm_90 166 -> 168 registers.)
#pragma once

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
