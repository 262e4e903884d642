// Philox4x32-10 (Salmon et al., "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011): a
// counter-based generator, four 32-bit outputs as a pure function of a 128-bit counter and a
// 64-bit key. Kernels key it by (seed, step) and count elements, so any thread draws any element's
// number without state, and cnn_gpu.philox (NumPy) draws the same numbers bit for bit.
// Products are taken in 64 bits (no __umulhi), which the emulator and NVRTC compile alike.

#pragma once

struct Philox4 {
    unsigned int v[4];
};

__device__ __forceinline__ Philox4 philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2, unsigned int c3,
                                                 unsigned int k0, unsigned int k1)
{
    for (int round = 0; round < 10; ++round) {
        const unsigned long long p0 = 0xD2511F53ull * c0;
        const unsigned long long p1 = 0xCD9E8D57ull * c2;
        const unsigned int next0 = (unsigned int)(p1 >> 32) ^ c1 ^ k0;
        const unsigned int next2 = (unsigned int)(p0 >> 32) ^ c3 ^ k1;
        c1 = (unsigned int)p1;
        c3 = (unsigned int)p0;
        c0 = next0;
        c2 = next2;
        k0 += 0x9E3779B9u;  // the Weyl key schedule (the bump after the last round is unused)
        k1 += 0xBB67AE85u;
    }
    Philox4 out;
    out.v[0] = c0;
    out.v[1] = c1;
    out.v[2] = c2;
    out.v[3] = c3;
    return out;
}

// The four numbers of element group `group` (elements 4*group .. 4*group+3) for (seed, step):
// counter (group, step) and key seed, each split into 32-bit halves, low half first.
__device__ __forceinline__ Philox4 philox_group(unsigned long long seed, unsigned long long step,
                                                unsigned long long group)
{
    return philox4x32_10((unsigned int)group, (unsigned int)(group >> 32), (unsigned int)step,
                         (unsigned int)(step >> 32), (unsigned int)seed, (unsigned int)(seed >> 32));
}
