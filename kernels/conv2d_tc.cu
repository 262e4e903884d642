// Convolutions on tensor cores (sm_80 and newer), on the block tiles of mma_tile.cuh: the float32
// build multiplies TF32 operands (mma.sync m16n8k8), the float16 build FP16 ones (m16n8k16, two
// values per operand word), both accumulating in FP32. NCHW tensors of the build's dtype: input x
// (N, C, H, W), output y (N, K, P, Q), G groups. A pass's result goes to its output rounded once
// (float16: the FP32 sum, bias and ReLU included, to FP16 on the store); every pass may split its
// reduction (split-K: fprop and dgrad over grid.z, wgrad into runs of its grid.x blocks, wgrad_mma):
// split z then writes an FP32 partial output at `partials` + z times the output's size, summed in a
// fixed order (and rounded once) by the launcher's next launch, or for wgrad by the kernel itself.
//
// fprop, per group g:  y_g[M x Ngemm] = w_g[M x Kgemm] * im2col(x_g)[Kgemm x Ngemm]
//   M = K/G (output channels), Ngemm = N*P*Q (output pixels), Kgemm = R*S*(C/G) ordered (r, s, c):
//   one step covers TC_DEPTH channels of a single filter tap. A, the filter, never enters shared
//   memory: a launch before makes its operand words (TF32-rounded, or FP16 pairs), zero-padded to
//   whole block rows and TC_DEPTH-channel steps and laid out in mma fragment order
//   (conv2d_tc_filter_tiles), so each warp loads its 4 KiB of A fragments per step with eight
//   16-byte loads, one step ahead. The B loader gives each thread one output pixel (decoded once)
//   and all channels of the step: one tap offset and bounds test per step, channels at +H*W, four
//   16-byte shared stores; the warps read B with ldmatrix. A tap outside the image adds zeros: the
//   TF32 build predicates its loads; the FP16 build reads a whole step's tap there at pixel (0, 0)
//   of its channels, unpredicated, and zeroes each word with the PRMT that packs it (a register
//   selector), so no per-value zeroing. A partial channel step (and the FLAT loader) predicates its
//   loads into values widened to words (load_widened: zeroed in pairs, packed with one PRMT).
// fprop over the flattened reduction (_flat kernels: few channels per group, e.g. ResNet's stem,
//   C = 3, 7x7): Kgemm = R*S*(C/G) padded once at its end, a step TC_DEPTH consecutive indices of
//   the flattened (r, s, c) (147 -> 160 for the stem instead of 49 taps of 16). The filter tiles are
//   those of a 1x1 filter of R*S*(C/G) channels; the B loader reads each index's x offset and tap
//   bits from a per-block shared table and tests them against its pixel's mask of inside taps.
//
// dgrad: dx splits into stride phases (pixels (ph + i*stride_h, pw + j*stride_w)); each is the
//   stride-1 convolution of dy with the taps of the flipped filter that reach it (the launcher's
//   table), run by the fprop code above, its output scattered into dx (plus conv_transpose2d's bias,
//   as fprop's epilogue adds fprop's). All phases in one launch.
//
// wgrad, per group g:  dw_g^T[M x Ngemm] = im2col(x_g)[M x Kgemm] * dy_g^T[Kgemm x Ngemm]
//   M = (C/G)*R*S (the filter's (c, r, s), as dw is laid out), Ngemm = K/G, Kgemm = N*P*Q in
//   splits of `chunk` pixels. Each step's TC_DEPTH pixels are described by the launcher's pixel
//   table (made once per geometry), copied into shared memory with cp.async two steps at a time: x
//   offset of the window origin, tap mask (which filter rows and columns land inside the image),
//   dy offset. dy, the B operand, never enters shared memory: each lane loads
//   its fragments from its 8 (BN = 64: 4) channel rows, one step ahead. A step's pixels are summed
//   in a permuted order (any order serves when both operands agree) that makes them 16 contiguous
//   bytes: lane t = lane % 4 takes the step's 4 words [4t, 4t + 4) of a row as b0, b1 of the first
//   half step and b0, b1 of the second, so shared column 8 * k8 + j holds step word
//   4 * (j % 4) + 2 * k8 + j / 4. One 16-byte load per row where every lane's pixels lie in one image
//   and dy's rows are 16-byte aligned (P*Q a multiple of 4 words); otherwise the launcher either
//   passes a channel-major copy of dy, whose pixels run on across images, so the loads stay 16
//   bytes, or runs the _gather kernels, which load dy one element at a time (as the others do in a
//   chunk's last, partial step, or from a misaligned dy). The
//   x loader gives each thread 4 filter columns (decoded once, one mask bit test per element) and 4
//   words of the step, stored as [filter column][word] rows (the A tile; the table already holds x's
//   pixels in the permuted order). The _rows kernel's loader (3-tap filter rows at column stride and
//   dilation 1) gives each lane a filter row (c, r) over 4 words of consecutive pixels of one output
//   row instead: a pixel's tap s + 1 is the next pixel's tap s, so 6 (TF32) or 10 (FP16) loads make
//   its 12 words (WgradTapRowLoader).
//
// GEMM rows or columns past the output (a partial block tile) are computed from clamped or
// zeroed operands and never stored; reduction entries past the end are zero in both operands.
// Index range: 32-bit offsets; the launcher refuses tensors of 2^31 or more elements.

#include "mma_tile.cuh"

#define TC_FLAT_MAX 512   // indices of a flattened fprop reduction (conv_tc.FLAT_MAX): a 4 KiB table
// Resident blocks per SM of the 64-row dgrad kernel (conv_tc.DGRAD_BLOCKS_PER_SM): 3 caps it at 168
// registers, which float32 fits without spilling on sm_80..sm_90 (float16 spills on sm_86/sm_89,
// as does the 64-row fprop: they keep 2), with its B loader's base held as an offset (X_OFFSET:
// NVRTC 13.5 spilled six words into the main loop for sm_90 otherwise).
#define TC_DGRAD_M64_BLOCKS (REAL_IS_HALF ? 2 : 3)

// Filter tiles, the A operand of fprop and dgrad (mma_conv), made from the filter w (K, C/G, R, S) in
// one launch: one thread per operand word, words in the order the warps load them. The tiles come in
// parts (fprop one; dgrad one per stride phase), each the tiles of a filter view (G, rows, R', S',
// channels): part p is row p of `table` (conv_tc.tables._filter_tile_table: TC_TILE_TABLE ints: its
// first word, rows, 64-row blocks, R', S', channels, words of a tap's channels (padded to whole steps),
// and the filter row and column of tap (r', s') as first + r' * step), laid out as (G, 64-row block,
// step, m tile, k8, g, t, +4, +8) of the m16n8k8 A fragment (lane 4g + t holds rows g, g + 8 and words
// t, t + 4 of its 16 x 8 tile). Its rows are fprop's output channels and its channels the input's
// (flat: the R*S*C/G flattened (r, s, c), one 1 x 1 tap), or dgrad's dx channels and dy channels
// (`dgrad`). Padding rows and channels hold zero; a word holds one value rounded to TF32 (to nearest,
// ties away from zero, the low 13 bits cleared: round_to_tf32) or two FP16 values, the lower channel in
// the low half.
#define TC_TILE_TABLE 11
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS) conv2d_tc_filter_tiles(
    const REAL* __restrict__ w, unsigned int* __restrict__ tiles, const int* __restrict__ table, int parts,
    int words, int Kg, int Cg, int R, int S, int dgrad, int flat)
{
    const int RS = R * S;
    GRID_STRIDE_LOOP(i, words) {
        int part = 0;   // the last part starting at or before word i (a part without taps has no words)
        while (part + 1 < parts && table[TC_TILE_TABLE * (part + 1)] <= i) ++part;
        const int* row = table + TC_TILE_TABLE * part;
        const int rows = row[1], row_blocks = row[2], taps_w = row[4], channels = row[5], channel_words = row[6];
        const int steps = row[3] * taps_w * channel_words / TC_BK;
        int at = (int)i - row[0];
        const int plus8 = at & 1, plus4 = at >> 1 & 1, t = at >> 2 & 3, g = at >> 4 & 7, k8 = at >> 7 & 1;
        const int mt = at >> 8 & 3;
        at >>= 10;
        const int step = at % steps, block = at / steps % row_blocks, group = at / steps / row_blocks;
        const int m = block * 64 + mt * 16 + plus8 * 8 + g, word = step * TC_BK + k8 * 8 + plus4 * 4 + t;
        const int tap = word / channel_words, tap_r = tap / taps_w, tap_s = tap - tap_r * taps_w;
        const int r = row[7] + tap_r * row[8], s = row[9] + tap_s * row[10];
        unsigned int v[TC_PER_WORD];
#pragma unroll
        for (int e = 0; e < TC_PER_WORD; ++e) {
            const int c = (word - tap * channel_words) * TC_PER_WORD + e;
            int offset;   // of (row m, channel c) in the group's filter
            if (dgrad)
                offset = (c * Cg + m) * RS + r * S + s;
            else if (flat)
                offset = (m * Cg + c % Cg) * RS + c / Cg;   // c = (r * S + s) * C/G + channel
            else
                offset = (m * Cg + c) * RS + r * S + s;
            v[e] = m < rows && c < channels ? load_widened(w + (group * Kg * Cg * RS + offset)) : 0u;
        }
#if REAL_IS_HALF
        tiles[i] = operand_word_of_widened(v);
#else
        const float value = __uint_as_float(v[0]);   // stored as round_to_tf32 leaves it
        tiles[i] = fabsf(value) < __int_as_float(0x7f800000) ? tf32_operand(value) & 0xffffe000u : v[0];
#endif
    }
}

// The implicit-GEMM convolution of fprop (and of each dgrad stride phase) for block tile
// (blockIdx.x, blockIdx.y) of group g, reduction steps [split * chunk, split * chunk + chunk);
// output(m, pixel, value) then takes each FP32 result of output channel m (within the group) and
// output pixel n*P*Q + p*Q + q, both inside the output. Returns at once for a tile past the pixels.
// `smem`: the kernel's two stages (a kernel's own __shared__ array: the emulator checks those).
// Block tiles of 64 * WARPS_M output channels by BN output pixels (MmaTile: 128, or 96 for grids
// that fill whole waves where 128 would leave a last one partly idle; then the B loader's last warp
// idles); filter tiles in 64-row blocks.
// FLAT (fprop with few channels per group): the reduction is the flattened (r, s, c) of R*S*C/G
// indices (at most TC_FLAT_MAX, R + S < 32), padded once at its end, each step TC_DEPTH consecutive
// indices; `flat_table`, the kernel's shared table of them, is filled here (see the B loader).
// X_OFFSET: keep the B loader's pixel base as an offset from x instead of a pointer (one register
// fewer through the main loop, two instructions more a step), for the kernel capped at 168 registers.
template <int WARPS_M, bool FLAT = false, int BN = TC_BN, bool X_OFFSET = false, class Output>
__device__ __forceinline__ void mma_conv(
    unsigned int* smem, const REAL* __restrict__ x, const unsigned int* __restrict__ w_tiles, int N, int C, int H,
    int W, int K, int R, int S, int P, int Q, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w,
    int groups, int g, int split, int chunk, Output output, int (*flat_table)[TC_FLAT_MAX] = nullptr)
{
    const int tid = threadIdx.x, lane = tid & 31;
    const int Cg = C / groups, Kg = K / groups;
    constexpr int BM = 64 * WARPS_M;
    const int Cpad = (Cg + TC_DEPTH - 1) / TC_DEPTH * TC_DEPTH, Mpad = (Kg + BM - 1) / BM * BM;
    const int HW = H * W, PQ = P * Q, NPQ = N * PQ;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    if (n0 >= NPQ) return;   // a dgrad phase smaller than the grid: the whole block leaves
    const int channel_steps = Cpad / TC_DEPTH, first_step = split * chunk;
    const int flat_length = R * S * Cg;   // FLAT: the reduction's indices, before padding
    const int total_steps = FLAT ? (flat_length + TC_DEPTH - 1) / TC_DEPTH : R * S * channel_steps;
    const int steps = min(chunk, total_steps - first_step);

    MmaTile<WARPS_M, BN> tile;
    tile.init();
    // A: the warp's fragments of each step, 4 KiB in fragment order (m tile, k8, lane, register)
    const unsigned int* a_next = w_tiles + (unsigned)(((g * (Mpad / 64) + (m0 + tile.warp_row) / 64) * total_steps
                                                       + first_step) * 1024) + lane * 4;
    auto load_a = [&](int, unsigned int (&a)[2][4][4]) {
#pragma unroll
        for (int k8 = 0; k8 < 2; ++k8)
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                const uint4 v = __ldg((const uint4*)(a_next + mt * 256 + k8 * 128));
                a[k8][mt][0] = v.x;
                a[k8][mt][1] = v.y;
                a[k8][mt][2] = v.z;
                a[k8][mt][3] = v.w;
            }
        a_next += 1024;
    };

    // B loader: output pixel n0 + tid (the last one for columns past the end), decoded once; the
    // threads past BN (whole warps) load nothing
    const bool loads = BN == TC_THREADS || tid < BN;
    const int pixel = min(n0 + tid, NPQ - 1);
    const int n = pixel / PQ, pq = pixel - n * PQ;
    const int p = pq / Q, q = pq - p * Q;
    const int h_origin = p * stride_h - pad_h, w_origin = q * stride_w - pad_w;
    const unsigned int x_offset = (unsigned)((n * C + g * Cg) * HW);
    const REAL* x_pixel = register_pointer(x + x_offset);   // not held where X_OFFSET
    const unsigned int plane = HW;                               // one channel further

    // FLAT: per index k of the flattened reduction (r, s, c), the table's x offset c*H*W + r*dil_h*W
    // + s*dil_w from the window origin and its tap bits (1 << r) | (1 << (R + s)); an index past
    // the end has bit 31, which no thread's inside_taps has (R + S < 32). A thread's inside_taps:
    // bit r when filter row r of its pixel lands inside the image, bit R + s for column s; so an
    // index is read where (tap bits & ~inside_taps) == 0.
    unsigned int inside_taps = 0;
    const REAL* x_window = x_pixel;   // FLAT: the window origin (h_origin, w_origin) of channel 0
    if (FLAT) {
        for (int k = tid; k < total_steps * TC_DEPTH; k += TC_THREADS) {
            const int tap = k / Cg, c = k - tap * Cg, r = tap / S, s = tap - r * S;
            const bool real = k < flat_length;
            flat_table[0][k] = real ? c * HW + r * dil_h * W + s * dil_w : 0;
            flat_table[1][k] = real ? (int)(1u << r | 1u << (R + s)) : (int)(1u << 31);
        }
        for (int r = 0; r < R; ++r)
            if ((unsigned)(h_origin + r * dil_h) < (unsigned)H) inside_taps |= 1u << r;
        for (int s = 0; s < S; ++s)
            if ((unsigned)(w_origin + s * dil_w) < (unsigned)W) inside_taps |= 1u << (R + s);
        x_window = register_pointer(x_pixel + (h_origin * W + w_origin));   // read only inside the image
        __syncthreads();
    }

    // the step's tap and channels, advanced with carries: no div/mod per step
    const int first_tap = first_step / channel_steps, taps_per_row = max(S, 1);   // S = 0: a dgrad phase without taps
    int c0 = (first_step - first_tap * channel_steps) * TC_DEPTH, s = first_tap % taps_per_row;
    int h_tap = first_tap / taps_per_row * dil_h, w_tap = s * dil_w;
    unsigned int b_next[TC_BK];   // operand words: channel pairs (c0 + 2j, c0 + 2j + 1) in FP16
    auto fetch = [&](int step) {
        if (!loads) return;
        if (FLAT) {   // indices k0 .. k0 + TC_DEPTH - 1 (FP16: word j holds k0 + 2j, k0 + 2j + 1)
            const int k0 = (first_step + step) * TC_DEPTH;
            unsigned int v[TC_DEPTH];   // values widened to words (load_widened)
#pragma unroll
            for (int u = 0; u < TC_DEPTH; u += 4) {
                const int4 offset = *(const int4*)&flat_table[0][k0 + u];
                const int4 taps = *(const int4*)&flat_table[1][k0 + u];
                const int offsets[4] = {offset.x, offset.y, offset.z, offset.w};
                const unsigned int bits[4] = {(unsigned)taps.x, (unsigned)taps.y, (unsigned)taps.z, (unsigned)taps.w};
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    v[u + e] = (bits[e] & ~inside_taps) == 0 ? load_widened(x_window + offsets[e]) : 0u;
            }
#pragma unroll
            for (int j = 0; j < TC_BK; ++j) {
                unsigned int word[TC_PER_WORD];
#pragma unroll
                for (int e = 0; e < TC_PER_WORD; ++e) word[e] = v[j * TC_PER_WORD + e];
                b_next[j] = operand_word_of_widened(word);
            }
            return;
        }
        const int h = h_origin + h_tap, w = w_origin + w_tap;
        const bool inside = (unsigned)h < (unsigned)H && (unsigned)w < (unsigned)W;
        // where operand_word_or_zero reads a tap outside the image too, the tap's channels at (0, 0)
        const int spatial = inside || !TC_READS_ZEROED ? h * W + w : 0;
        const REAL* x_step = register_pointer(X_OFFSET ? x + (x_offset + (unsigned)(c0 * HW + spatial))
                                                       : x_pixel + (unsigned)(c0 * HW + spatial));
        const int channels = Cg - c0;
        if (channels < TC_DEPTH) {   // the last channel step of a tap when C/G is no multiple of TC_DEPTH
#pragma unroll
            for (int j = 0; j < TC_BK; ++j) {
                unsigned int v[TC_PER_WORD];
#pragma unroll
                for (int e = 0; e < TC_PER_WORD; ++e) {
                    const int channel = j * TC_PER_WORD + e;
                    v[e] = inside && channel < channels ? load_widened(x_step + (size_t)plane * channel) : 0u;
                }
                b_next[j] = operand_word_of_widened(v);
            }
        } else {
#pragma unroll
            for (int j = 0; j < TC_BK; ++j) b_next[j] = operand_word_or_zero(x_step, plane, j, inside);
        }
        c0 += TC_DEPTH;
        if (c0 >= Cg) {
            c0 = 0;
            w_tap += dil_w;
            if (++s == S) {
                s = 0;
                w_tap = 0;
                h_tap += dil_h;
            }
        }
    };
    auto store = [&](int step) {
        if (!loads) return;
        unsigned int* column = smem + (step & 1) * TC_STAGE_WORDS + tid * TC_PITCH;
#pragma unroll
        for (int v = 0; v < TC_BK; v += 4)
            *(uint4*)(column + v) = make_uint4(b_next[v], b_next[v + 1], b_next[v + 2], b_next[v + 3]);
    };

    mma_main_loop_registers<typename MmaTile<WARPS_M, BN>::AFragments>(tile, smem, steps, load_a, fetch, store);

    tile.for_each([&](int col) { return n0 + col < NPQ ? n0 + col : -1; },
                  [&](int row, int pixel_out, float v) {
                      if (pixel_out >= 0 && m0 + row < Kg) output(m0 + row, pixel_out, v);
                  });
}

// fprop: y = conv2d(x, w) + bias (ReLU when relu), or with split-K (grid.z = splits * G) the
// FP32 partial output of split z at partials + z * N*K*P*Q (no bias or ReLU: the summing launch
// adds them). FLAT: over the flattened reduction (mma_conv), `flat_table` its shared table; BN
// output pixels per block tile.
template <int WARPS_M, bool FLAT = false, int BN = TC_BN>
__device__ __forceinline__ void fprop_mma(
    unsigned int* smem, const REAL* __restrict__ x, const unsigned int* __restrict__ w_tiles,
    const REAL* __restrict__ bias, REAL* __restrict__ y, acc_t* __restrict__ partials, int N, int C, int H, int W,
    int K, int R, int S, int P, int Q, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w,
    int groups, int has_bias, int relu, int chunk, int (*flat_table)[TC_FLAT_MAX] = nullptr)
{
    const int split = blockIdx.z / groups, g = blockIdx.z - split * groups, Kg = K / groups, PQ = P * Q;
    const bool split_k = gridDim.z > (unsigned)groups;
    mma_conv<WARPS_M, FLAT, BN>(smem, x, w_tiles, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w,
                                dil_h, dil_w, groups, g, split, chunk, [&](int m, int pixel, float v) {
                          const int k = g * Kg + m, image = pixel / PQ;
                          const int at = (image * K + k) * PQ + pixel - image * PQ;
                          if (split_k) {
                              partials[(long long)split * N * K * PQ + at] = v;
                              return;
                          }
                          if (has_bias) v += to_acc(bias[k]);
                          if (relu && v < 0.0f) v = 0.0f;   // written so that NaN passes through
                          y[at] = to_real(v);
                      }, flat_table);
}

// dgrad: dx = the convolution of dy with the flipped filter, one stride phase (ph, pw) of dx
// (its pixels (ph + i*stride_h, pw + j*stride_w)) per grid.z slice: phase z of `phases` (rows of
// 9 ints: ph, pw, R', S', pad_h', pad_w', H', W', offset in words) is the stride-1 convolution of
// dy (N, K, P, Q) with dilation (dil_h, dil_w) and padding (pad_h', pad_w') by the R' x S' filter
// tiles at w_tiles + offset (from the launcher), into an H' x W' output scattered over dx
// (N, C, H, W). grid.z = phases * splits * G; dx = that FP32 sum plus bias[c] when has_bias
// (conv_transpose2d's), rounded once, or with split-K (splits > 1) split z writes its FP32 partial
// dx at partials + z * N*C*H*W (no bias: the summing launch adds it). BN dx pixels per block tile.
template <int WARPS_M, int BN = TC_BN>
__device__ __forceinline__ void dgrad_mma(
    unsigned int* smem, const REAL* __restrict__ dy, const unsigned int* __restrict__ w_tiles,
    const int* __restrict__ phases, const REAL* __restrict__ bias, REAL* __restrict__ dx,
    acc_t* __restrict__ partials, int N, int C, int H, int W, int K, int P, int Q, int stride_h, int stride_w,
    int dil_h, int dil_w, int groups, int splits, int chunk, int has_bias)
{
    const int phase = blockIdx.z / (splits * groups), rest = blockIdx.z - phase * splits * groups;
    const int split = rest / groups, g = rest - split * groups, Cg = C / groups;
    const int* row = phases + 9 * phase;
    const int ph = row[0], pw = row[1], out_h = row[6], out_w = row[7], out_hw = out_h * out_w;
    constexpr bool capped = WARPS_M == 1 && TC_DGRAD_M64_BLOCKS > 2;   // the 168-register kernel
    mma_conv<WARPS_M, false, BN, capped>(smem, dy, w_tiles + row[8], N, K, P, Q, C, row[2], row[3], out_h, out_w, 1,
                                         1, row[4], row[5], dil_h, dil_w, groups, g, split, chunk,
                                         [&](int m, int pixel, float v) {
                          const int image = pixel / out_hw, i = (pixel - image * out_hw) / out_w;
                          const int j = pixel - image * out_hw - i * out_w, c = g * Cg + m;
                          const int at = ((image * C + c) * H + ph + i * stride_h) * W + pw + j * stride_w;
                          if (splits > 1) {
                              partials[(long long)split * N * C * H * W + at] = v;
                              return;
                          }
                          if (has_bias) v += to_acc(bias[c]);
                          dx[at] = to_real(v);
                      });
}

// The kernels: block tiles of 128 output channels by 128 pixels (2 x 2 warps of 64 x 64, two blocks
// per SM), of 64 channels (_m64: 1 x 4 warps of 64 x 32; two blocks per SM, three for the float32
// dgrad) for layers of 64 or fewer channels, and of 128 channels by 96 pixels (_n96: 2 x 2 warps of
// 64 x 48) where their grid fills whole waves better. `partials` is written only with split-K (any
// one-element array otherwise); `bias` is read only with has_bias.
#define TC_FPROP_ARGS                                                                                          \
    const REAL* __restrict__ x, const unsigned int* __restrict__ w_tiles, const REAL* __restrict__ bias,        \
        REAL* __restrict__ y, acc_t* __restrict__ partials, int N, int C, int H, int W, int K, int R, int S,      \
        int P, int Q, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups,          \
        int has_bias, int relu, int chunk
#define TC_DGRAD_ARGS                                                                                          \
    const REAL* __restrict__ dy, const unsigned int* __restrict__ w_tiles, const int* __restrict__ phases,      \
        const REAL* __restrict__ bias, REAL* __restrict__ dx, acc_t* __restrict__ partials, int N, int C, int H,  \
        int W, int K, int P, int Q, int stride_h, int stride_w, int dil_h, int dil_w, int groups, int splits,     \
        int chunk, int has_bias

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_fprop_tc(TC_FPROP_ARGS) {
    __shared__ __align__(16) unsigned int smem[2 * TC_STAGE_WORDS];
    fprop_mma<2>(smem, x, w_tiles, bias, y, partials, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w,
                 dil_h, dil_w, groups, has_bias, relu, chunk);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_fprop_tc_m64(TC_FPROP_ARGS) {
    __shared__ __align__(16) unsigned int smem[2 * TC_STAGE_WORDS];
    fprop_mma<1>(smem, x, w_tiles, bias, y, partials, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h, pad_w,
                 dil_h, dil_w, groups, has_bias, relu, chunk);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_fprop_tc_n96(TC_FPROP_ARGS) {
    __shared__ __align__(16) unsigned int smem[2 * TC_STAGE_WORDS];
    fprop_mma<2, false, 96>(smem, x, w_tiles, bias, y, partials, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h,
                            pad_w, dil_h, dil_w, groups, has_bias, relu, chunk);
}

// The same over the flattened reduction (fprop with few channels per group: conv_tc.plan_fprop)
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_fprop_tc_flat(TC_FPROP_ARGS) {
    __shared__ __align__(16) unsigned int smem[2 * TC_STAGE_WORDS];
    __shared__ __align__(16) int flat_table[2][TC_FLAT_MAX];
    fprop_mma<2, true>(smem, x, w_tiles, bias, y, partials, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h,
                       pad_w, dil_h, dil_w, groups, has_bias, relu, chunk, flat_table);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_fprop_tc_flat_m64(TC_FPROP_ARGS) {
    __shared__ __align__(16) unsigned int smem[2 * TC_STAGE_WORDS];
    __shared__ __align__(16) int flat_table[2][TC_FLAT_MAX];
    fprop_mma<1, true>(smem, x, w_tiles, bias, y, partials, N, C, H, W, K, R, S, P, Q, stride_h, stride_w, pad_h,
                       pad_w, dil_h, dil_w, groups, has_bias, relu, chunk, flat_table);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_dgrad_tc(TC_DGRAD_ARGS) {
    __shared__ __align__(16) unsigned int smem[2 * TC_STAGE_WORDS];
    dgrad_mma<2>(smem, dy, w_tiles, phases, bias, dx, partials, N, C, H, W, K, P, Q, stride_h, stride_w, dil_h,
                 dil_w, groups, splits, chunk, has_bias);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, TC_DGRAD_M64_BLOCKS) conv2d_dgrad_tc_m64(TC_DGRAD_ARGS) {
    __shared__ __align__(16) unsigned int smem[2 * TC_STAGE_WORDS];
    dgrad_mma<1>(smem, dy, w_tiles, phases, bias, dx, partials, N, C, H, W, K, P, Q, stride_h, stride_w, dil_h,
                 dil_w, groups, splits, chunk, has_bias);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_dgrad_tc_n96(TC_DGRAD_ARGS) {
    __shared__ __align__(16) unsigned int smem[2 * TC_STAGE_WORDS];
    dgrad_mma<2, 96>(smem, dy, w_tiles, phases, bias, dx, partials, N, C, H, W, K, P, Q, stride_h, stride_w, dil_h,
                     dil_w, groups, splits, chunk, has_bias);
}

// How wgrad's steady loop loads a lane's 4 words of dy a step (conv_tc.wgrad_dy_path): in one 16-byte
// vector, in two 8-byte ones (the _pairs kernel: P*Q a multiple of 2 words but not 4), or element by
// element (the _gather kernels). The 64-channel tile's warps take 2 of the words (half steps): one
// 8-byte vector, so its DY_VECTORS kernel serves both vector paths. Steps with pixels past the
// segment load element by element always (but DY_RESIDUES', whose table is whole steps).
// DY_RESIDUES (the _residues kernel, K a multiple of TC_DY_RESIDUES, one group): NCHW rows of
// dy start at k*P*Q elements, so a row's misalignment (k*P*Q mod TC_DY_RESIDUES elements) depends
// on its channel's residue mod TC_DY_RESIDUES alone. The output channels split into that many bands
// (band b: channels b, b + TC_DY_RESIDUES, ...), each a tile band of its own with its own pixel
// table, whose steps run over each image's row in aligned 16-byte chunks from the row's first
// element rounded down: every load a vector. A chunk's elements outside the row (the neighbouring
// rows') are zeroed by the table's word masks (its fourth row; never multiplied, so a non-finite
// neighbour changes nothing), and their x values are zero (tap mask 0).
enum WgradDy { DY_VECTORS, DY_PAIRS, DY_ELEMENTS, DY_RESIDUES };
#define TC_DY_RESIDUES (4 * TC_PER_WORD)   // a lane's 16 bytes of a dy row, in elements

// Rows of wgrad's pixel table a step: x origins, tap masks, dy offsets (and DY_RESIDUES' word masks)
__host__ __device__ constexpr int wgrad_table_rows(WgradDy dy) { return dy == DY_RESIDUES ? 4 : 3; }
// steps of wgrad's pixel table in shared memory: a pair of steps in flight (copied two steps ahead)
// beside the pair being read, so at least 4, and even, so that a pair's two slots are contiguous
#define TC_TABLE_SLOTS 4

// Output channel m of band (group) `band`'s Kb channels: a group's are contiguous, a residue band's
// TC_DY_RESIDUES apart
template <WgradDy DY>
__device__ __forceinline__ int wgrad_channel(int band, int m, int Kb) {
    return DY == DY_RESIDUES ? band + TC_DY_RESIDUES * m : band * Kb + m;
}

// The segment of a block's run of (tile, step) pairs that wgrad_segment computes, in shared memory
// (wgrad_mma): each thread reads a field where it uses it, so that none stays in a register through
// the main loop
struct WgradRun {
    int block_tile, first_step, end_step, rank, segments;   // segments: the tile's, over all blocks
    int segment;   // the next segment's index (wgrad_mma)
    int last;      // whether this block's segment of the tile arrived last (wgrad_arrive)
    int g, m0, n0;   // the tile's origin (wgrad_origin), for wgrad_store_round
};

// A wgrad block tile's group (DY_RESIDUES: band), first output channel and first filter column
// (within it): tiles_x x tiles_y tiles per group, filter columns fastest, then output channels, then
// groups
struct WgradOrigin { int g, m0, n0; };
template <int BN>
__device__ __forceinline__ WgradOrigin wgrad_origin(int block_tile, int tiles_x, int tiles_y) {
    const int g = block_tile / (tiles_x * tiles_y);
    return WgradOrigin{g, (block_tile / tiles_x - g * tiles_y) * BN, (block_tile - block_tile / tiles_x * tiles_x) * TC_BN};
}

// Split-K over a tile's segments: arrivals[tile] counts in its low 16 bits the segments that have
// finished their loop and in its high 16 bits those whose partial output is written. The last to
// arrive writes none: it waits for the others' partials and sums them in rank order with its own
// accumulators (wgrad_segment), then resets the count (the launcher reuses the counts, zero between
// launches). The others arrive before they write, so the last one waits only on blocks that are
// running their epilogue. Whether this block arrived last (every thread calls it):
__device__ __forceinline__ bool wgrad_arrive(WgradRun& run, unsigned int* __restrict__ arrivals) {
    __syncthreads();   // run is read below and was read by the loop
    if (threadIdx.x == 0)
        run.last = (atomicAdd(&arrivals[run.block_tile], 1u) & 0xffffu) == (unsigned int)(run.segments - 1);
    __syncthreads();
    return run.last;
}

// After a block that did not arrive last has written its partial output: counts it
__device__ __noinline__ void wgrad_written(const WgradRun& run, unsigned int* __restrict__ arrivals) {
    __threadfence();   // the block's partials are visible before the count that says so
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(&arrivals[run.block_tile], 1u << 16);
}

// The last to arrive: once every other segment's partial is written, resets the count
__device__ __forceinline__ void wgrad_await_partials(const WgradRun& run, unsigned int* __restrict__ arrivals) {
    if (threadIdx.x == 0) {
        const unsigned int written = (unsigned int)(run.segments - 1) << 16;
        while ((atomicAdd(&arrivals[run.block_tile], 0u) & 0xffff0000u) != written) {
        }
        arrivals[run.block_tile] = 0;
    }
    __syncthreads();
    __threadfence();
}

// wgrad's output rounds (wgrad_segment): each warp tile's accumulators go through shared memory
// TC_WGRAD_ROUND_MTS m tiles (16 filter columns each) a round, as [warp tile][channel][filter column
// of the round] at pitch TC_WGRAD_ROUND_COLUMNS + 1 (2-way bank conflicts at most), in the kernel's
// smem (TC_WGRAD_SMEM_WORDS: the x stages, or this where larger). 128-channel tiles (4 warp tiles):
// 2 m tiles a round, 2 rounds; 64-channel ones (2): all 4 in one.
#define TC_WGRAD_ROUND_MTS(BN) ((BN) == 64 ? 4 : 2)
#define TC_WGRAD_ROUND_COLUMNS(BN) (16 * TC_WGRAD_ROUND_MTS(BN))
#define TC_WGRAD_SMEM_WORDS (4 * 64 * (TC_WGRAD_ROUND_COLUMNS(128) + 1))
static_assert(TC_WGRAD_SMEM_WORDS >= 2 * TC_STAGE_WORDS, "the x stages in smem");

// Round `round` of a segment's output (above), a run of the round's filter columns at a time
// (coalesced), into partial output run.rank, or where ranks == 1 or run.last (the tile's last
// segment to arrive, or its only one) summed with the tile's other partials in rank order into dw
// (the same sum whichever block arrives last). Other blocks' partials through L2 (__ldcg): this SM's
// L1 may hold a stale line of them, from a neighbouring tile one of its blocks summed before. Not
// inlined: its registers are not held beside the accumulators still waiting for their round.
template <int BN, WgradDy DY>
__device__ __noinline__ void wgrad_store_round(const float* __restrict__ staged, const WgradRun& run, int round,
                                               int ranks, REAL* __restrict__ dw, acc_t* __restrict__ partials,
                                               int C, int K, int R, int S, int groups)
{
    const bool summing = ranks == 1 || run.last;
    // (the tile's shape from the kernel's arguments: values derived before the loop would be held through it)
    constexpr int WARP_TILE = 64, WARPS_N = BN / WARP_TILE, COLUMNS = TC_WGRAD_ROUND_COLUMNS(BN), PITCH = COLUMNS + 1;
    const int Kg = DY == DY_RESIDUES ? K / TC_DY_RESIDUES : K / groups, CRS = C / groups * R * S;
    const WgradOrigin tile = {run.g, run.m0, run.n0};
    const int rank = run.rank, segments = run.segments;
    for (int i = threadIdx.x; i < 2 * WARPS_N * WARP_TILE * COLUMNS; i += TC_THREADS) {
        const int warp_tile = i / (WARP_TILE * COLUMNS), c = i / COLUMNS % WARP_TILE, r = i % COLUMNS;
        const int m = tile.m0 + warp_tile % WARPS_N * WARP_TILE + c;
        const int filter_column = tile.n0 + warp_tile / WARPS_N * WARP_TILE + COLUMNS * round + r;
        if (m >= Kg || filter_column >= CRS) continue;
        const int at = wgrad_channel<DY>(tile.g, m, Kg) * CRS + filter_column;
        const float own = staged[(warp_tile * WARP_TILE + c) * PITCH + r];
        if (!summing) {
            partials[(long long)rank * K * CRS + at] = own;
            continue;
        }
        acc_t sum = rank == 0 ? own : __ldcg(&partials[at]);
        for (int k = 1; k < segments; ++k) sum += k == rank ? own : __ldcg(&partials[(long long)k * K * CRS + at]);
        dw[at] = to_real(sum);
    }
}

// wgrad's x loaders fill the A tile's stage for a step: init(tile, state) once per segment, then
// fetch(table, state, R) a step's values of x into registers (table: the step's slot of the pixel
// table) and store(stage) them, one step ahead (mma_main_loop_registers). `state`: the thread's
// 16 bytes of shared memory for what a loader keeps out of registers; R: the filter's rows.
// What they know of a block tile: x at its group's first channel, the tile's first filter column
// n0, and the filter's shape (a column is (c, r, s), RS = R * S of them a channel).
struct WgradXTile {
    const REAL* x;
    int n0, CRS, RS, R, S, HW, W, dil_h, dil_w;
};

// wgrad's x loader, a filter column at a time: each thread takes filter columns n0 + lane + 32 i
// (i < 4; the last column for those past the end), decoded once, and shared columns x_k .. x_k + 3
// of the step (x_k = 4 warp: a quarter of the step per warp), one value per element and one mask
// bit test, the table's pixels already in the step's permuted order. Four 16-byte stores a step.
struct WgradColumnLoader {
    const REAL* x_column[4];
    unsigned int words[4][4];   // [filter column i][shared column x_k + j]
    int x_col, x_k;             // the lane, and the warp's first shared column

    // `state`: the columns' filter row and column bits (in shared memory: registers are scarce)
    __device__ __forceinline__ void init(const WgradXTile& t, uint4& state) {
        x_col = keep_in_register(threadIdx.x & 31);
        x_k = keep_in_register((threadIdx.x >> 5) * 4);
        unsigned int taps[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int column = min(t.n0 + x_col + 32 * i, t.CRS - 1);
            const int c = column / t.RS, r = (column - c * t.RS) / t.S, s = column - c * t.RS - r * t.S;
            x_column[i] = register_pointer(t.x + (c * t.HW + r * t.dil_h * t.W + s * t.dil_w));
            taps[i] = (1u << r) | (1u << (t.R + s));
        }
        state = make_uint4(taps[0], taps[1], taps[2], taps[3]);
    }

    __device__ __forceinline__ void fetch(const int (*table)[TC_DEPTH], uint4 state, int) {
        const unsigned int tap_bits[4] = {state.x, state.y, state.z, state.w};
        int origins[4 * TC_PER_WORD];
        unsigned int inside[4 * TC_PER_WORD];
#pragma unroll
        for (int u = 0; u < TC_PER_WORD; ++u) {
            const int4 origin = *(const int4*)&table[0][x_k * TC_PER_WORD + 4 * u];
            const int4 taps = *(const int4*)&table[1][x_k * TC_PER_WORD + 4 * u];
            origins[4 * u] = origin.x, origins[4 * u + 1] = origin.y, origins[4 * u + 2] = origin.z;
            origins[4 * u + 3] = origin.w;
            inside[4 * u] = taps.x, inside[4 * u + 1] = taps.y, inside[4 * u + 2] = taps.z, inside[4 * u + 3] = taps.w;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                unsigned int v[TC_PER_WORD];
#pragma unroll
                for (int e = 0; e < TC_PER_WORD; ++e) {
                    const int at = j * TC_PER_WORD + e;
                    v[e] = (~inside[at] & tap_bits[i]) == 0 ? load_widened(x_column[i] + origins[at]) : 0u;
                }
                words[i][j] = operand_word_of_widened(v);
            }
    }

    __device__ __forceinline__ void store(unsigned int* stage) const {
#pragma unroll
        for (int i = 0; i < 4; ++i)
            *(uint4*)(stage + (x_col + 32 * i) * TC_PITCH + x_k) =
                make_uint4(words[i][0], words[i][1], words[i][2], words[i][3]);
    }
};

// wgrad's x loader for filters of S = 3 at column stride and dilation 1 where each run of GROUP =
// 4 words of a step's pixels lies in one output row (Q a multiple of GROUP: the launcher's
// conv_tc.tap_rows_supported): there one pixel's tap s + 1 is the next pixel's tap s, so a filter
// row (c, r) over a group reads SPAN = GROUP + 2 values of x for its 3 x GROUP elements. Lane l of
// warp w takes group a = l % 4 (step words 4a .. 4a + 3) of
//   - the filter row of tile rows first + 3 (8 w + l / 4) + (0, 1, 2): the tile's 96 filter
//     columns from its first at s = 0 (first < 3) are 32 whole rows;
//   - and the one of the other 32 columns at tile row (first + 96 + 8 w + l / 4) % 128,
// (past the end: the last row, the last column), 16 words a step as the column loader. A group's
// words lie in shared columns a, a + 4, a + 8, a + 12 (the step's permutation): a 4-byte store
// each, and a warp's stores, lanes 4 j + a at rows 3 j apart (or 1: the other columns) and pitch 20
// words, meet 32 different banks. The group's tap mask (table[1] of its first pixel) holds, past
// the filter rows' R bits, one bit per x column of its SPAN values (conv_tc.tables._tap_masks).
struct WgradTapRowLoader {
    static constexpr int GROUP = 4 * TC_PER_WORD;   // pixels of a lane's group
    static constexpr int SPAN = GROUP + 2;          // x values of a filter row over them
    const REAL* x_row;      // x of the filter row's (c, r) at tap 0
    int column_delta;       // and of the other column at its tap, from x_row (one 64-bit pointer)
    int row_at, column_at;  // their first words in a stage (tile row x TC_PITCH + a)
    int first_pixel;        // of group a in a step's table: step word 4a, in shared column a (in a
                            // register: NVRTC would rebuild it from threadIdx every step)
    // the bits 1 << r of the two's filter rows r in a tap mask, and the place of the other column's
    // tap bit R + s, less 1 (registers: in shared memory they would cost a tenth of the loop's
    // shared wavefronts)
    unsigned int row_bit, column_row_bit, column_shift;
    unsigned int row_words[3][4], column_words[4];   // [tap][word of the group], [word of the group]

    __device__ __forceinline__ void init(const WgradXTile& t, uint4&) {
        const int lane = threadIdx.x & 31, a = lane & 3, j = 8 * (threadIdx.x >> 5) + (lane >> 2);
        const int first = (3 - t.n0 % 3) % 3, row = first + 3 * j, column = (first + 96 + j) % TC_BN;
        const int row_column = min(t.n0 + row, t.CRS - 3), other = min(t.n0 + column, t.CRS - 1);
        const int c = row_column / t.RS, r = (row_column - c * t.RS) / 3;
        const int c1 = other / t.RS, r1 = (other - c1 * t.RS) / 3, s1 = other - c1 * t.RS - r1 * 3;
        x_row = register_pointer(t.x + (c * t.HW + r * t.dil_h * t.W));
        column_delta = (c1 - c) * t.HW + (r1 - r) * t.dil_h * t.W + s1;
        row_at = row * TC_PITCH + a;
        column_at = column * TC_PITCH + a;
        first_pixel = keep_in_register(a * TC_PER_WORD);
        row_bit = 1u << r;
        column_row_bit = 1u << r1;
        column_shift = t.R + s1 - 1;
    }

    __device__ __forceinline__ void fetch(const int (*table)[TC_DEPTH], uint4, int R) {
        const int origin = table[0][first_pixel];
        const unsigned int mask = table[1][first_pixel];
        // bit o + 1: the group's value o (x column o past its window origin) inside, in the row's
        // row (from bit 1: R2P then turns bits into predicates without P0, which the loop holds)
        unsigned int inside = mask & row_bit ? mask >> (R - 1) : 0u;
        // the group's addresses from one (a pointer per load otherwise, made under each load's predicate)
        const REAL* row = register_pointer(x_row + origin);
        unsigned int v[SPAN];
#pragma unroll
        for (int o = 0; o < SPAN; ++o) v[o] = inside >> (o + 1) & 1 ? load_widened(row + o) : 0u;
        // tap s of word w: values s + TC_PER_WORD w .. (tap s + 1 of w is tap s of w + 1: one word)
#pragma unroll
        for (int s = 0; s < 3; ++s)
#pragma unroll
            for (int w = 0; w < 4; ++w) row_words[s][w] = operand_word_at(v, s + TC_PER_WORD * w);
        inside = mask & column_row_bit ? mask >> column_shift : 0u;
        const REAL* column = register_pointer(row + column_delta);
        unsigned int u[GROUP];
#pragma unroll
        for (int o = 0; o < GROUP; ++o) u[o] = inside >> (o + 1) & 1 ? load_widened(column + o) : 0u;
#pragma unroll
        for (int w = 0; w < 4; ++w) column_words[w] = operand_word_at(u, TC_PER_WORD * w);
    }

    __device__ __forceinline__ void store(unsigned int* stage) const {
        // word w of the group in shared column a + 4 (w % 2) + 8 (w / 2)
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const int at = 4 * (w % 2) + 8 * (w / 2);
#pragma unroll
            for (int s = 0; s < 3; ++s) stage[row_at + s * TC_PITCH + at] = row_words[s][w];
            stage[column_at + at] = column_words[w];
        }
    }
};

// wgrad of the segment of `run`: block tile run.block_tile (filter columns fastest, then output
// channels, then groups: dw^T of TC_BN filter columns, the tile's rows, by BN output channels, its
// columns: 128, or 64 in 2 warp tiles of 64 x 64, each step's halves on two warps: MmaTile's
// K_WARPS = 2), reduction steps [first_step, end_step) of its
// pixels. With ranks > 1 its FP32 result is partial output `rank`, but for the block whose segment
// of the tile arrives last (arrivals[tile] counts them), which sums the others' and its own in rank
// order into dw: the same sum whichever block it is (wgrad_arrive). `smem`: the kernel's two
// stages of x, then its output's rounds (TC_WGRAD_SMEM_WORDS), `pixels` the slots of the pixel
// table's steps, `loader_state` the x loader's per-thread state kept in shared memory
// (TC_WGRAD_BODY). DY: how dy loads (WgradDy); XLoader: how x does (WgradColumnLoader,
// WgradTapRowLoader). `reduction`: the pixel table's entries a tile reduces
// over (N*P*Q; DY_RESIDUES: a band's table, whole steps of whole chunks).
template <int BN, WgradDy DY, class XLoader>
__device__ __forceinline__ void wgrad_segment(
    unsigned int* smem, int (&pixels)[TC_TABLE_SLOTS][wgrad_table_rows(DY)][TC_DEPTH],
    uint4 (&loader_state)[TC_THREADS],
    WgradRun& run, const REAL* __restrict__ dy, const REAL* __restrict__ x,
    const int* __restrict__ pixel_table, REAL* __restrict__ dw, acc_t* __restrict__ partials,
    unsigned int* __restrict__ arrivals, int N, int C, int H, int W, int K, int R, int S, int P, int Q, int dil_h,
    int dil_w, int groups, int ranks, int dy_image, int dy_channel, int reduction)
{
    using Tile = MmaTile<2, BN, BN == 64 ? 2 : 1>;
    constexpr int LANE_PIXELS = 4 * TC_PER_WORD;   // a lane's pixels of a step: 4 words, 16 bytes of a dy row
    constexpr int WARP_WORDS = 2 * Tile::K8S;       // of which the warp's half steps take 4, or 2 (K_WARPS = 2)

    constexpr int ROWS = wgrad_table_rows(DY), SLOTS = TC_TABLE_SLOTS;
    constexpr bool RESIDUES = DY == DY_RESIDUES;   // (the launcher's groups are then 1)

    const int tid = threadIdx.x;
    const int Cg = C / groups, Kg = RESIDUES ? K / TC_DY_RESIDUES : K / groups, RS = R * S, CRS = Cg * RS;
    const int HW = H * W, PQ = P * Q;
    const int tiles_x = (CRS + TC_BN - 1) / TC_BN, tiles_y = (Kg + BN - 1) / BN;
    auto origin = [&] { return wgrad_origin<BN>(run.block_tile, tiles_x, tiles_y); };
    const WgradOrigin at = origin();
    const int g = at.g, n0 = at.n0;
    const int first = run.first_step * TC_DEPTH;
    // (the other kernels' N*P*Q from its factors: the balanced kernel, at its 255-register cap,
    // spilled 4 bytes where it read `reduction`)
    const int last = min(run.end_step * TC_DEPTH, RESIDUES ? reduction : N * PQ);
    const int steps = run.end_step - run.first_step;
    if (RESIDUES)   // the band's table
        pixel_table += (size_t)g * ROWS * ((reduction + TC_DEPTH - 1) / TC_DEPTH) * TC_DEPTH;

    // the pixel table (conv_tc.tables._pixel_table: ROWS x TC_DEPTH ints per step of the pixels, so
    // pixel i's step at ROWS * i when a split starts on a step), each step copied into slot step %
    // SLOTS (cp.async: no registers, no work per pixel), two steps in one copy at every other step (an
    // even one: its pair of slots is contiguous): its loop then runs the copy's instructions half as
    // often. A pair's slots are rewritten a barrier after the last read of the steps before them.
    static_assert(SLOTS >= 4 && SLOTS % 2 == 0, "a pair in flight, a pair read");
    auto copy_table_pair = [&](int step) {
        constexpr int PIECES = ROWS * TC_DEPTH / 4;   // 16-byte copies a step
        static_assert(2 * PIECES <= TC_THREADS, "a thread a copy");
        if (tid < 2 * PIECES && step + (tid >= PIECES) < steps)
            cp_async<16>(&pixels[step % SLOTS][0][0] + 4 * tid,
                         pixel_table + (ROWS * (first + step * TC_DEPTH) + 4 * tid), true);
        cp_async_commit();
    };

    Tile tile;
    tile.init();

    // dy loader, straight into the warp's B fragments: lane group `group` takes `span` consecutive
    // channels from m0 + warp_col + span * group (its natural ones), rows at one stride (no clamp in
    // the loop), pixels [LANE_PIXELS * t, LANE_PIXELS * (t + 1)) of the step for lane t = in_group,
    // its chunk word w as b(w % 2) of half step w / 2 (K_WARPS = 2: the warp's half step k_half, words
    // 2 k_half and 2 k_half + 1, 8 bytes). A group whose natural channels run past the
    // output starts at Kg - span instead (repeating channels of other lanes, or tiles: only its
    // natural ones are stored). span = NT, or 1 where Kg < NT: each group then reads its natural
    // channel (clamped) into all NT columns and column 0 is stored.
    const int span = Kg < Tile::NT ? 1 : Tile::NT;
    auto natural_channel = [&](int m0, int group) { return m0 + tile.warp_col + span * group; };
    auto lane_channel = [&](int m0, int group, int nt) {   // the channel of column nt of the group's lanes
        return min(natural_channel(m0, group), Kg - span) + (span > 1 ? nt : 0);
    };
    // a residue band's rows from the band's first (its channel's row start rounded down to a chunk),
    // TC_DY_RESIDUES channels apart
    const unsigned int channel_stride = RESIDUES ? TC_DY_RESIDUES * dy_channel : dy_channel;
    const unsigned int band_start = RESIDUES ? g * dy_channel & ~(TC_DY_RESIDUES - 1) : g * Kg * dy_channel;
    const REAL* dy_lane =
        register_pointer(dy + (band_start + (unsigned)lane_channel(at.m0, tile.group, 0) * channel_stride));
    const unsigned int lane_stride = span > 1 ? channel_stride : 0;   // from one row of the lane to the next
    // vector loads (16 or 8 bytes: RUN pixels) where each is contiguous (inside one image, or dy
    // channel-major, or a residue band's chunk) and aligned (the _residues launcher's dy is)
    constexpr int RUN = DY == DY_PAIRS || WARP_WORDS == 2 ? LANE_PIXELS / 2 : LANE_PIXELS;
    const bool vector_dy = RESIDUES || (DY != DY_ELEMENTS && (PQ % RUN == 0 || dy_image == PQ) &&
                                        dy_channel % RUN == 0 &&
                                        ((unsigned long long)dy & (RUN * sizeof(REAL) - 1)) == 0);
    // of lane t = in_group, from the warp's first word; kept in a register by the 64-channel tile's
    // vector kernels (NVRTC would rebuild it every step: 6 instructions a loop; in the others it
    // makes the loop longer)
    const int lane_first = LANE_PIXELS * (tid & 3) + (WARP_WORDS == 2 ? 2 * TC_PER_WORD * tile.k_half : 0);
    const int lane_pixel = WARP_WORDS == 2 && DY != DY_ELEMENTS ? keep_in_register(lane_first) : lane_first;
    // A step loads dy in vectors where every pixel of it lies inside the segment: steps
    // [0, vector_end / TC_DEPTH), vector_end -1 for none. The 64-channel tile's loop tests that bound,
    // the 128-channel one's vector_dy and `last`: the forms that give each the shorter sm_90 loop
    // (NVRTC rebuilds vector_dy from its terms every step, 5 ISETPs, where the 64-channel loop tests it).
    const int vector_end = vector_dy ? last - first : -1;
    auto load_dy = [&](int step, typename Tile::BFragments& b) {
        const int(*table)[TC_DEPTH] = pixels[step % SLOTS];
        if (RESIDUES || (WARP_WORDS == 2 ? DY != DY_ELEMENTS && (step + 1) * TC_DEPTH <= vector_end
                                         : vector_dy && first + (step + 1) * TC_DEPTH <= last)) {
            // the offset kept apart from the element path's (NVRTC would load both with one LDS.64 and
            // widen the offset by shifts and carries: 4 more instructions a step)
            const REAL* first_row = dy_lane + (unsigned)keep_in_register(table[2][lane_pixel]);
            // DY_PAIRS of 4 words: words 2, 3 from 0, 1
            const int gap = DY == DY_PAIRS && WARP_WORDS == 4 ? table[2][lane_pixel + RUN] - table[2][lane_pixel] : 0;
#pragma unroll
            for (int nt = 0; nt < Tile::NT; ++nt) {
                const REAL* row = first_row + (size_t)lane_stride * nt;
                if (WARP_WORDS == 2) {   // the warp's half step: 8 bytes
                    const uint2 v = load_operand_pair(row);
                    b[0][nt][0] = v.x;
                    b[0][nt][1] = v.y;
                    continue;
                }
                uint4 v;
                if (DY == DY_VECTORS || RESIDUES) {
                    v = load_operand_words(row);
                } else {
                    const uint2 low = load_operand_pair(row), high = load_operand_pair(row + gap);
                    v = make_uint4(low.x, low.y, high.x, high.y);
                }
                b[0][nt][0] = v.x;
                b[0][nt][1] = v.y;
                // K8S is 2 on this path; K8S - 1 keeps the K8S = 1 build's dead copy in bounds (C++14: no if constexpr)
                b[Tile::K8S - 1][nt][0] = v.z;
                b[Tile::K8S - 1][nt][1] = v.w;
            }
            return;
        }
        int offsets[WARP_WORDS * TC_PER_WORD];   // -1: past the chunk
#pragma unroll
        for (int i = 0; i < WARP_WORDS * TC_PER_WORD; ++i) offsets[i] = table[2][lane_pixel + i];
        const REAL* base = dy_lane;   // the second half of the rows loads after the first (registers)
#pragma unroll
        for (int nt = 0; nt < Tile::NT; ++nt) {
            if (nt == Tile::NT / 2)
#pragma unroll
                for (int done = 0; done < nt; ++done)
#pragma unroll
                    for (int w = 0; w < WARP_WORDS; ++w) base = pointer_after(base, b[w / 2][done][w % 2]);
            const REAL* row = register_pointer(base + (size_t)lane_stride * nt);   // read only at offsets >= 0
#pragma unroll
            for (int w = 0; w < WARP_WORDS; ++w) {
                unsigned int v[TC_PER_WORD];
#pragma unroll
                for (int e = 0; e < TC_PER_WORD; ++e) {
                    const int offset = offsets[w * TC_PER_WORD + e];
                    v[e] = offset >= 0 ? load_widened(row + offset) : 0u;
                }
                b[w / 2][nt][w % 2] = operand_word_of_widened(v);
            }
        }
    };

    // x loader: the A tile, [filter column][word] rows (XLoader)
    XLoader x_loader;
    x_loader.init(WgradXTile{x + (RESIDUES ? 0 : g * Cg * HW), n0, CRS, RS, R, S, HW, W, dil_h, dil_w},
                  loader_state[tid]);
    auto fetch = [&](int step) { x_loader.fetch(pixels[step % SLOTS], loader_state[tid], R); };
    auto store = [&](int step) {
        x_loader.store(smem + (step & 1) * TC_STAGE_WORDS);
        if (step & 1)
            cp_async_commit();   // an empty group: the wait below then covers the pair an even step copied
        else
            copy_table_pair(step + 2);
        cp_async_wait<1>();   // step + 1's table, read after the step's barrier
    };

    // DY_RESIDUES: a step's dy zeroed outside its rows by the step's word masks once the step before
    // has been multiplied (mma_main_loop_registers), from the slot its loads read, before the barrier
    // after which that slot may be copied over (ROWS - 1: the fourth row where it exists). As the
    // loads were issued the masks would hold 4 registers through the loop (it spilled); just before
    // the step's own multiply the sm_90 loop was 67 instructions longer (another slot's addresses)
    // and needed 8 table slots.
    auto ready = [&](int step, typename Tile::BFragments& b) {
        if (!RESIDUES) return;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const unsigned int keep = pixels[step % SLOTS][ROWS - 1][lane_pixel + w];
#pragma unroll
            for (int nt = 0; nt < Tile::NT; ++nt) b[(w / 2) % Tile::K8S][nt][w % 2] &= keep;
        }
    };

    copy_table_pair(0);
    cp_async_wait<0>();
    __syncthreads();
    mma_main_loop_registers<typename Tile::BFragments>(tile, smem, steps, load_dy, fetch, store, ready);
    cp_async_wait_all();
    tile.reduce_k_halves(reinterpret_cast<float*>(smem));

    // the segment's output, through shared memory in rounds (wgrad_store_round), into dw or a
    // partial output; a round's accumulators are no longer held once staged
    if (ranks > 1 && wgrad_arrive(run, arrivals)) wgrad_await_partials(run, arrivals);
    constexpr int WARP_TILE = Tile::NT * 8, ROUND_MTS = TC_WGRAD_ROUND_MTS(BN), PITCH = TC_WGRAD_ROUND_COLUMNS(BN) + 1;
    static_assert(WARP_TILE == 64 && Tile::WARPS_N == BN / WARP_TILE &&
                      4 / (BN == 64 ? 2 : 1) * WARP_TILE * PITCH <= TC_WGRAD_SMEM_WORDS,
                  "a round in smem, as wgrad_store_round reads it");
    float* const staged = reinterpret_cast<float*>(smem);
    float* const warp_staged =
        staged + (tile.warp_row / 64 * Tile::WARPS_N + tile.warp_col / WARP_TILE) * WARP_TILE * PITCH;
#pragma unroll
    for (int round = 0; round < 4 / ROUND_MTS; ++round) {
        __syncthreads();   // smem: every warp past the loop, the round before stored
        // the tile's first channel read again each round (so are the columns' channels: not held through
        // the calls); the _residues kernel's from run.block_tile, the others' from run: the forms whose
        // register allocations need no local memory on sm_80 to sm_90
        const WgradOrigin end_at = RESIDUES ? origin() : WgradOrigin{run.g, run.m0, run.n0};
        tile.for_each(
            [&](int col) {   // col = warp_col + 8 * nt + the group that loaded it: its channel, or -1
                const int group = col & 7, nt = (col - tile.warp_col) >> 3;
                const int m = lane_channel(end_at.m0, group, nt);
                return nt < span && m >= natural_channel(end_at.m0, group) && m < Kg ? m : -1;
            },
            [&](int row, int m, float v) {
                if (m >= 0)
                    warp_staged[(m - end_at.m0 - tile.warp_col) * PITCH + row - tile.warp_row - 16 * ROUND_MTS * round] = v;
            },
            ROUND_MTS * round, ROUND_MTS * (round + 1));
        __syncthreads();
        wgrad_store_round<BN, DY>(staged, run, round, ranks, dw, partials, C, K, R, S, groups);
    }
    if (ranks > 1 && !run.last) wgrad_written(run, arrivals);
}

// wgrad: block b of the grid's B takes the (tile, step) pairs [b * work / B, (b + 1) * work / B) of
// the work = tiles x steps of a tile's pixels, tile-major (wgrad_segment's tile order), a segment per
// tile it reaches. B = tiles x splits gives each tile `splits` segments (split-K); a B of whole waves
// of resident blocks balances the SMs where the tiles alone would leave a last wave partly idle
// (stream-K). A tile's segments are partial outputs 0, 1, ... in step order, summed in that order by
// the block that finishes the last of them (wgrad_segment); `ranks`, their most over the tiles (1: no
// partials). The launcher keeps B >= tiles (a run meets two tiles at most) and work x B below 2^63.
template <int BN, WgradDy DY, bool BALANCED, class XLoader>
__device__ __forceinline__ void wgrad_mma(
    unsigned int* smem, int (&pixels)[TC_TABLE_SLOTS][wgrad_table_rows(DY)][TC_DEPTH],
    uint4 (&loader_state)[TC_THREADS], WgradRun& run, const REAL* __restrict__ dy, const REAL* __restrict__ x,
    const int* __restrict__ pixel_table, REAL* __restrict__ dw, acc_t* __restrict__ partials,
    unsigned int* __restrict__ arrivals, int N, int C, int H, int W, int K, int R, int S, int P, int Q, int dil_h,
    int dil_w, int groups, int ranks, int dy_image, int dy_channel, int reduction)
{
    // segment k of the run: B >= tiles, so two at most. The next k comes back from shared memory
    // (thread 0 keeps it there) so that no register holds it through the segment
    for (int k = 0; k < (BALANCED ? 2 : 1);) {
        if (threadIdx.x == 0) {   // describes it, or block_tile -1 for none
            run.segment = k + 1;
            const int bands = DY == DY_RESIDUES ? TC_DY_RESIDUES : groups, CRS = C / groups * R * S, Kb = K / bands;
            const int entries = DY == DY_RESIDUES ? reduction : N * P * Q;
            const long long tile_steps = (entries + TC_DEPTH - 1) / TC_DEPTH, blocks = gridDim.x;
            const long long work = (long long)((CRS + TC_BN - 1) / TC_BN) * ((Kb + BN - 1) / BN) * bands * tile_steps;
            const long long start = blockIdx.x * work / blocks, end = (blockIdx.x + 1) * work / blocks;
            const long long tile_start = (start / tile_steps + k) * tile_steps, tile_end = tile_start + tile_steps;
            run.block_tile = tile_start < end ? (int)(tile_start / tile_steps) : -1;
            const WgradOrigin origin =
                wgrad_origin<BN>(max(run.block_tile, 0), (CRS + TC_BN - 1) / TC_BN, (Kb + BN - 1) / BN);
            run.g = origin.g;
            run.m0 = origin.m0;
            run.n0 = origin.n0;
            run.first_step = (int)(max(start, tile_start) - tile_start);
            run.end_step = (int)(min(end, tile_end) - tile_start);
            // the blocks of the tile's first and last steps
            const int first_block = (int)(((tile_start + 1) * blocks - 1) / work);
            run.rank = (int)blockIdx.x - first_block;
            run.segments = (int)((tile_end * blocks - 1) / work) - first_block + 1;
        }
        __syncthreads();
        if (run.block_tile < 0) return;
        wgrad_segment<BN, DY, XLoader>(smem, pixels, loader_state, run, dy, x, pixel_table, dw, partials, arrivals, N,
                                       C, H, W, K, R, S, P, Q, dil_h, dil_w, groups, ranks, dy_image, dy_channel,
                                       reduction);
        if (!BALANCED) return;
        k = run.segment;   // before the barrier: thread 0 rewrites it after
        __syncthreads();   // every thread has read the segment
    }
}

// The wgrad kernels: block tiles of 128 output channels, and of 64 (_m64) for layers of 64 or fewer;
// the _pairs one reads dy in 8-byte vectors, the _gather ones one element at a time (WgradDy); the
// _rows one x by filter rows (WgradTapRowLoader), the others by filter columns.
#define TC_WGRAD_ARGS                                                                                           \
    const REAL* __restrict__ dy, const REAL* __restrict__ x, const int* __restrict__ pixel_table,               \
        REAL* __restrict__ dw, acc_t* __restrict__ partials, unsigned int* __restrict__ arrivals, int N, int C, \
        int H, int W, int K, int R, int S, int P, int Q, int dil_h, int dil_w, int groups, int ranks,           \
        int dy_image, int dy_channel, int reduction
// dy (pixel, channel k of image n) sits at n * dy_image + k * dy_channel + pixel: NCHW (K*P*Q, P*Q),
// or the launcher's channel-major copy (P*Q, a multiple of 4 words >= N*P*Q) where a lane's pixels
// would straddle images in NCHW. `reduction`: the entries of a tile's pixel table, read by the
// _residues kernel (wgrad_segment; N*P*Q for the others).
// A wgrad kernel's body: its shared memory, then wgrad_mma on its tile width, dy path and x loader.
// pixels: TC_TABLE_SLOTS steps of the pixel table; loader_state: the x loader's per-thread state
#define TC_WGRAD_BODY(BN, DY, BALANCED, XLOADER)                                                              \
    __shared__ __align__(16) unsigned int smem[TC_WGRAD_SMEM_WORDS];                                          \
    __shared__ __align__(16) int pixels[TC_TABLE_SLOTS][wgrad_table_rows(DY)][TC_DEPTH];               \
    __shared__ uint4 loader_state[TC_THREADS];                                                                \
    __shared__ WgradRun run;                                                                                  \
    wgrad_mma<BN, DY, BALANCED, XLOADER>(smem, pixels, loader_state, run, dy, x, pixel_table, dw, partials,    \
                                         arrivals, N, C, H, W, K, R, S, P, Q, dil_h, dil_w, groups, ranks,    \
                                         dy_image, dy_channel, reduction)

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_wgrad_tc(TC_WGRAD_ARGS) {
    TC_WGRAD_BODY(128, DY_VECTORS, false, WgradColumnLoader);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_wgrad_tc_m64(TC_WGRAD_ARGS) {
    TC_WGRAD_BODY(64, DY_VECTORS, false, WgradColumnLoader);
}

// The 64-channel tile with x by filter rows: 3-tap filters at column stride and dilation 1, Q a
// multiple of 4 words (conv_tc.tap_rows_supported). ResNet's 64-channel 3x3 layers, whose 64-column
// tiles make the x loader the loop's bottleneck (about half the SASS loop by filter columns).
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_wgrad_tc_rows_m64(TC_WGRAD_ARGS) {
    TC_WGRAD_BODY(64, DY_VECTORS, false, WgradTapRowLoader);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_wgrad_tc_pairs(TC_WGRAD_ARGS) {
    TC_WGRAD_BODY(128, DY_PAIRS, false, WgradColumnLoader);
}

// dy's rows in residue bands (DY_RESIDUES: P*Q no multiple of 4 words, K a multiple of 8; one
// group): every load a 16-byte vector from NCHW, no copy, at the price of each image's row padded
// to whole chunks (49 pixels: 56) and the word masks (an mma every 4.7 instructions on sm_90, against
// the vector kernel's 4.3 and the _gather_m64 kernel's 9.7). In float16 only: float32's _gather
// kernel on the 128-channel tile issues at 0.70 of the MMA rate, this loop's float32 build at
// 0.81 x 49/52 = 0.76, and its 7x7 layers meet their target already.
#if REAL_IS_HALF
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_wgrad_tc_residues(TC_WGRAD_ARGS) {
    TC_WGRAD_BODY(128, DY_RESIDUES, false, WgradColumnLoader);
}
#endif

// Blocks that may meet two tiles (B no multiple of the tiles: stream-K), on the 128-channel tile with
// dy in vectors
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_wgrad_tc_balanced(TC_WGRAD_ARGS) {
    TC_WGRAD_BODY(128, DY_VECTORS, true, WgradColumnLoader);
}

// dy one element at a time: where a channel-major copy of dy would cost more than it saves
// (conv_tc.wgrad_dy_path). The 128-channel tile in float32 only: its float16 build spills (and
// would issue an mma every 9 instructions); float16 reads dy this way on the 64-channel tile, an
// mma every 10 instructions, where the copy costs more: passes bound by DRAM or by their split-K
// partials anyway, or too small to pay for the copy's launch.
#if !REAL_IS_HALF
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_wgrad_tc_gather(TC_WGRAD_ARGS) {
    TC_WGRAD_BODY(128, DY_ELEMENTS, false, WgradColumnLoader);
}
#endif

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) conv2d_wgrad_tc_gather_m64(TC_WGRAD_ARGS) {
    TC_WGRAD_BODY(64, DY_ELEMENTS, false, WgradColumnLoader);
}
