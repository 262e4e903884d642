// Losses: softmax cross entropy, negative log likelihood, and the element-wise losses (squared
// error, L1, smooth L1, Huber, KL divergence, soft margin, hinge embedding, margin ranking, Poisson and
// Gaussian NLL, binary cross entropy on probabilities and on logits), value and gradient in one pass.
//
// Not a GEMM.
//  * Cross entropy, PyTorch's F.cross_entropy with every option. Logits (N, C, d1..dk) hold one
//    row of C classes per position (n, d1..dk), the classes `inner` = d1*...*dk elements apart.
//    Each row has a target mass per class,
//        m_c = w_c * (keep * t_c + spread),   keep = 1 - label_smoothing, spread = label_smoothing / C,
//    with w the class weights (1 without), t the class probabilities (a one-hot row for a class
//    index), and m = 0 for a row whose index equals ignore_index. With z = x - max(x),
//    lse = log(sum exp z), A = sum_c m_c and B = sum_c m_c z_c (a zero mass adds 0, even where
//    z = -inf) the row's loss is A*lse - B = sum_c m_c * (-log_softmax_c) (an ignored row's: 0)
//    and its gradient softmax_c * A - m_c. The gradient of a counted row is divided by
//    `grad_divisor` (the summed target weights for the mean over class indices, rows for the mean
//    over probabilities, 1 for "sum"/"none"; read from the device, so the mean's divisor needs no host round trip); an
//    ignored row's is not (it is 0, or NaN for non-finite logits, as PyTorch
//    gives), so a mean over no counted targets has a NaN loss and a zero gradient, as PyTorch's.
//    A class index outside [0, classes) that is not ignored gives a NaN loss and no one-hot
//    (never an out-of-bounds read; the host refuses such indices).
//    - cross_entropy_rows (inner == 1): one block per row (grid-stride over rows), blockDim a
//      power of two from 32 to 256 picked by the host to fit `classes`. The block finds the row
//      maximum, then the sums of exp(z), m and m*z by shared-memory halving trees (rows.cuh; fixed order:
//      no atomics), and writes the loss and gradient.
//    - cross_entropy_positions (inner > 1, K-dimensional inputs such as segmentation maps): one
//      thread per position (grid-stride); consecutive threads own consecutive positions, so each
//      read of a class plane is coalesced, and each thread walks its C classes in order (fixed
//      order again).
//    - cross_entropy_split (inner > 1, positions too few to fill the GPU a thread each:
//      gpu._grid.split_row_lanes, e.g. (2, 1000, 3, 3) logits): `lanes` positions a block, each
//      position's classes over BLOCK_THREADS / lanes segments, segment s walking classes s,
//      s + segments, ... in order (rows.cuh for_each_split_row), the row maximum and the three sums
//      combined by segment_reduce's fixed tree; the loss written by segment 0.
//    - cross_entropy_target_weights: the weight w[label] of every counted row (1 without class
//      weights, 0 when ignored): the host sums them in fixed order (reduce.cu) into the mean's
//      divisor, which stays on the device for grad_divisor.
//    The per-row losses are summed in fixed order by reduce.cu, so the loss is bit-identical run
//    to run.
//  * nll_rows: negative log likelihood of log-probabilities laid out as the logits above, one
//    thread a row (position): the row's loss -w[label] * x[label] (0 when ignored, NaN for an index
//    out of range) and its one gradient element -w[label] / grad_divisor (PyTorch's w * (-1 /
//    divisor)) written into a zeroed dinput; the mean's divisor comes from
//    cross_entropy_target_weights as the cross entropy's.
//  * multi_margin_rows: the multi-class hinge loss, a group of lanes a row (see there).
//  * cosine_embedding_rows: the cosine embedding loss, a group of lanes a row pair (see there).
//  * triplet_margin_rows: the triplet margin loss, a group of lanes a row triplet (see there).
//    These three walk their rows as rows.cuh's for_each_row with inner 1: row_lanes(D) lanes a row
//    (a power of two from 1 to 256), lane l taking elements l, l + lanes, ... (a warp reads 32
//    neighbouring elements: coalesced) and group_reduce adds the lanes' partial sums in a fixed tree.
//  * regression_loss_rows: 4 elements a thread (for_each_element): each element's loss into a
//    workspace that reduce.cu sums in fixed order (or that is the loss itself for reduction="none")
//    and its gradient slope * weight * grad_scale / grad_divisor[0] (the divisor on the device: the
//    summed weights of a weighted mean need no host round trip). `kind`: L1 (0), smooth L1 (1,
//    `beta` > 0), Huber (2, `beta` is delta), squared error (3), KL divergence t log t - t x (4,
//    xlogy's 0 where t = 0) or exp(t) (t - x) of a log target (5), soft margin log1p(exp(-t x)) (6),
//    hinge embedding (7, `beta` the margin), margin ranking max(0, -t (x - other) + beta) (8), Poisson
//    NLL exp(x) - t x of a log rate (9) or x - t log(x + beta) (10; `full`: plus Stirling's term
//    where t > 1), Gaussian NLL 0.5 (log v + (x - t)^2 / v), v = max(other, beta) (11; `full`: plus
//    0.5 log(2 pi)), PyTorch's CPU formulas; the gradient at a kink is PyTorch's (sign(0) = 0,
//    clamp_min's passes at its bound). The third operand `other` is the optional weight
//    (has_weight), margin ranking's input2 or the Gaussian NLL's var, whose gradients (-slope, and
//    0.5 (1 - (x - t)^2 / v) / v) go to `dother`, written only for those two kinds. pred, target
//    and other are broadcast to the elements by the host.
//  * binary_cross_entropy_rows: the same walk for BCE on probabilities (torch's logs clamped at
//    -100, gradient w (x - t) / max(x (1 - x), 1e-12)) or on logits (from_logits: torch's
//    (1 - t) x - l log_sigmoid(x) with l = 1 + (pos_weight - 1) t); weight and pos_weight are
//    broadcast to the input's shape by the host; log_sigmoid and sigmoid from one exp(-|x|), and in the
//    float16 builds that exponential and the gradients' divisions in their fast forms (common.cuh:
//    map_exp, map_divide), the loss's log and log1p accurate (it stays acc_t). On probabilities, an
//    input or target outside [0, 1] makes that element's loss NaN (the host then names it: torch
//    checks before it computes).
// Sizes: rows, inner and every element offset are 64-bit; `classes` is an int (the host refuses
// 2^31 classes or more), and class offsets c * inner are taken in 64 bits.
// Math, sums and the per-row workspaces (row_loss, target_weight, loss, grad_divisor) are acc_t
// (common.cuh): a float16 build reads FP16 inputs, computes in FP32, rounds each gradient element
// once, and hands reduce.cu FP32 rows to sum.

#include "norms.cuh"
#include "rows.cuh"

// Kernel parameters of the cross entropy: logits and either class indices (`labels`, int64) or
// class probabilities (`probabilities`, the logits' shape; target_is_probability), the optional
// class weights (has_weight), the gradient divisor of counted rows (one element, on the device), the
// outputs, and the sizes and options described above.
// Three resident blocks (up to 80 registers) rather than MIN_BLOCKS' four: at 64 registers the fp64
// build for sm_90 spills around the slow-path calls of its two double divisions per row (measured
// with cnn-gpu kernels); the other builds use no more registers than before.
#define CROSS_ENTROPY_MIN_BLOCKS 3
#define CROSS_ENTROPY_PARAMS                                                                        \
    const REAL* __restrict__ logits, const long long* __restrict__ labels,                         \
    const REAL* __restrict__ probabilities, const REAL* __restrict__ class_weight,                 \
    const acc_t* __restrict__ grad_divisor, REAL* __restrict__ dlogits, acc_t* __restrict__ row_loss, \
    long long rows, int classes, long long inner, long long ignore_index, int target_is_probability, \
    int has_weight, acc_t keep, acc_t spread

// What one row's target contributes: its class index (or -1 for probabilities), whether it counts
// (not ignored), whether its index is valid, and its gradient scale.
struct RowTarget {
    long long label;
    bool counted;
    bool valid;
    acc_t scale;
};

__device__ __forceinline__ RowTarget row_target(long long row, const long long* labels, const acc_t* grad_divisor,
                                                int classes, long long ignore_index, int target_is_probability)
{
    RowTarget t;
    t.label = target_is_probability ? -1 : labels[row];
    t.counted = target_is_probability || t.label != ignore_index;
    t.valid = target_is_probability || !t.counted || (t.label >= 0 && t.label < classes);
    t.scale = t.counted ? (acc_t)1 / grad_divisor[0] : (acc_t)1;
    return t;
}

// m_c of the row (see the top); `probability` points at class c's probability, read only for
// probability targets.
__device__ __forceinline__ acc_t target_mass(const RowTarget& t, int c, const REAL* probability,
                                             const REAL* class_weight, int has_weight, acc_t keep, acc_t spread)
{
    if (!t.counted || !t.valid)
        return (acc_t)0;
    const acc_t target = t.label < 0 ? to_acc(*probability) : (c == t.label ? (acc_t)1 : (acc_t)0);
    const acc_t weight = has_weight ? to_acc(class_weight[c]) : (acc_t)1;
    return weight * (keep * target + spread);
}

// The sums over a row's classes: of exp(z), of m (A) and of m*z (B).
struct RowSums {
    acc_t exp, mass, weighted;
};

__device__ __forceinline__ void add_class(RowSums& sums, acc_t z, acc_t m)
{
    sums.exp += REAL_EXP(z);
    sums.mass += m;
    sums.weighted += m != (acc_t)0 ? m * z : (acc_t)0;   // a zero mass adds nothing, even where z = -inf
}

// The row's loss A*lse - B (NaN for an invalid class index); 0 for an ignored row, even one of
// -inf logits (whose lse is NaN), as PyTorch gives
__device__ __forceinline__ acc_t row_loss_value(const RowTarget& t, acc_t sum_exp, acc_t mass, acc_t weighted)
{
    if (!t.counted) return (acc_t)0;
    return t.valid ? mass * REAL_LOG(sum_exp) - weighted : REAL_NAN;
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, CROSS_ENTROPY_MIN_BLOCKS)
cross_entropy_rows(CROSS_ENTROPY_PARAMS)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    const int t = threadIdx.x;
    const int threads = blockDim.x;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const REAL* x = logits + row * classes;
        const REAL* probability = probabilities + row * classes;
        REAL* dx = dlogits + row * classes;
        const RowTarget target = row_target(row, labels, grad_divisor, classes, ignore_index, target_is_probability);

        const acc_t row_max = block_row_max(x, classes, t, threads, scratch);

        RowSums partial = {(acc_t)0, (acc_t)0, (acc_t)0};
        for (int j = t; j < classes; j += threads)
            add_class(partial, to_acc(x[j]) - row_max,
                      target_mass(target, j, probability + j, class_weight, has_weight, keep, spread));
        const acc_t sum_exp = block_reduce(partial.exp, scratch, false);
        const acc_t mass = block_reduce(partial.mass, scratch, false);
        const acc_t weighted = block_reduce(partial.weighted, scratch, false);

        const acc_t inv_sum = (acc_t)1 / sum_exp;
        for (int j = t; j < classes; j += threads) {
            const acc_t softmax = REAL_EXP(to_acc(x[j]) - row_max) * inv_sum;
            const acc_t m = target_mass(target, j, probability + j, class_weight, has_weight, keep, spread);
            dx[j] = to_real((softmax * mass - m) * target.scale);
        }
        if (t == 0)
            row_loss[row] = row_loss_value(target, sum_exp, mass, weighted);
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, CROSS_ENTROPY_MIN_BLOCKS)
cross_entropy_positions(CROSS_ENTROPY_PARAMS)
{
    GRID_STRIDE_LOOP(row, rows) {
        const long long n = row / inner;
        const long long first = n * classes * inner + (row - n * inner);   // class 0 of the row
        const RowTarget target = row_target(row, labels, grad_divisor, classes, ignore_index, target_is_probability);
        const acc_t row_max = strided_row_max(logits, first, classes, inner);

        // e walks the row's classes, `inner` elements apart (stepped, not multiplied: fewer registers)
        RowSums sums = {(acc_t)0, (acc_t)0, (acc_t)0};
        long long e = first;
        for (int c = 0; c < classes; ++c, e += inner)
            add_class(sums, to_acc(logits[e]) - row_max,
                      target_mass(target, c, probabilities + e, class_weight, has_weight, keep, spread));

        const acc_t inv_sum = (acc_t)1 / sums.exp;
        e = first;
        for (int c = 0; c < classes; ++c, e += inner) {
            const acc_t softmax = REAL_EXP(to_acc(logits[e]) - row_max) * inv_sum;
            const acc_t m = target_mass(target, c, probabilities + e, class_weight, has_weight, keep, spread);
            dlogits[e] = to_real((softmax * sums.mass - m) * target.scale);
        }
        row_loss[row] = row_loss_value(target, sums.exp, sums.mass, sums.weighted);
    }
}

// cross_entropy_positions' rows split over a block's segments (see the top)
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, CROSS_ENTROPY_MIN_BLOCKS)
cross_entropy_split(CROSS_ENTROPY_PARAMS, int lanes)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_split_row(rows, classes, inner, lanes, scratch, [&](long long row, const SplitWalk& walk) {
        const RowTarget target = row_target(row, labels, grad_divisor, classes, ignore_index, target_is_probability);
        acc_t partial_max = REAL_NEG_INF;
        for (long long e = walk.e; e < walk.end; e += walk.step)
            partial_max = larger(to_acc(logits[e]), partial_max);
        const acc_t row_max = walk.max(partial_max);

        RowSums partial = {(acc_t)0, (acc_t)0, (acc_t)0};
        int c = walk.k;
        for (long long e = walk.e; e < walk.end; e += walk.step, c += walk.segments)
            add_class(partial, to_acc(logits[e]) - row_max,
                      target_mass(target, c, probabilities + e, class_weight, has_weight, keep, spread));
        const acc_t sum_exp = walk.sum(partial.exp);
        const acc_t mass = walk.sum(partial.mass);
        const acc_t weighted = walk.sum(partial.weighted);

        const acc_t inv_sum = (acc_t)1 / sum_exp;
        c = walk.k;
        for (long long e = walk.e; e < walk.end; e += walk.step, c += walk.segments) {
            const acc_t softmax = REAL_EXP(to_acc(logits[e]) - row_max) * inv_sum;
            const acc_t m = target_mass(target, c, probabilities + e, class_weight, has_weight, keep, spread);
            dlogits[e] = to_real((softmax * mass - m) * target.scale);
        }
        if (walk.leader())
            row_loss[row] = row_loss_value(target, sum_exp, mass, weighted);
    });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
cross_entropy_target_weights(const long long* __restrict__ labels, const REAL* __restrict__ class_weight,
                             acc_t* __restrict__ target_weight, long long rows, int classes, long long ignore_index,
                             int has_weight)
{
    GRID_STRIDE_LOOP(row, rows) {
        const long long label = labels[row];
        acc_t weight = (acc_t)1;
        if (label == ignore_index)
            weight = (acc_t)0;
        else if (label < 0 || label >= classes)
            weight = REAL_NAN;
        else if (has_weight)
            weight = to_acc(class_weight[label]);
        target_weight[row] = weight;
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
nll_rows(const REAL* __restrict__ log_probs, const long long* __restrict__ labels,
         const REAL* __restrict__ class_weight, const acc_t* __restrict__ grad_divisor, REAL* __restrict__ dinput,
         acc_t* __restrict__ row_loss, long long rows, int classes, long long inner, long long ignore_index,
         int has_weight)
{
    GRID_STRIDE_LOOP(row, rows) {
        const RowTarget target = row_target(row, labels, grad_divisor, classes, ignore_index, 0);
        acc_t loss = target.counted ? REAL_NAN : (acc_t)0;
        if (target.counted && target.valid) {
            const long long n = row / inner;
            const long long e = (n * classes + target.label) * inner + (row - n * inner);
            const acc_t weight = has_weight ? to_acc(class_weight[target.label]) : (acc_t)1;
            loss = -to_acc(log_probs[e]) * weight;
            dinput[e] = to_real(weight * -target.scale);
        }
        row_loss[row] = loss;
    }
}

// Multi-class hinge loss (PyTorch's multi_margin_loss) of input rows of `classes` scores, a group of
// lanes a row (for_each_row: lane l takes classes l, l + lanes, ...; the rows are independent): with y
// the row's label and z_c = margin - x_y + x_c, the loss sum_{c != y} w_y max(0, z_c)^p / classes (p 1
// or 2) and the gradient w_y * grad_scale * (1 or 2 z_c) at each c != y with z_c > 0, minus their sum
// at y (torch's CPU kernel, whose strict z_c > 0 this keeps), both sums group_reduce's fixed tree.
// grad_scale is 1 / classes (and / rows for the mean). A label outside [0, classes) gives a NaN loss and
// a zero gradient row (the host names it).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
multi_margin_rows(const REAL* __restrict__ input, const long long* __restrict__ labels,
                  const REAL* __restrict__ class_weight, REAL* __restrict__ dinput, acc_t* __restrict__ row_loss,
                  long long rows, int classes, int squared, int has_weight, acc_t margin, acc_t grad_scale)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, classes, 1, scratch, [&](long long row, const RowWalk& walk) {
        // no early exit for a bad label: the row's group still takes its part in the block's reductions
        const long long label = labels[row];
        const bool valid = label >= 0 && label < classes;
        const REAL* x = input + row * classes;
        REAL* dx = dinput + row * classes;
        const acc_t weight = valid && has_weight ? to_acc(class_weight[label]) : (acc_t)1;
        const acc_t shifted_margin = valid ? margin - to_acc(x[label]) : (acc_t)0;
        acc_t sum = (acc_t)0, target_grad = (acc_t)0;
        for (int c = walk.first; c < classes; c += walk.step) {
            if (c == label)
                continue;
            const acc_t z = shifted_margin + to_acc(x[c]);
            acc_t grad = (acc_t)0;
            if (valid && z > (acc_t)0) {
                sum += (squared ? z * z : z) * weight;
                grad = (squared ? (acc_t)2 * grad_scale * z : grad_scale) * weight;
            }
            target_grad -= grad;
            dx[c] = to_real(grad);
        }
        sum = walk.sum(sum);
        target_grad = walk.sum(target_grad);
        if (walk.leader()) {
            if (valid)
                dx[label] = to_real(target_grad);
            row_loss[row] = valid ? sum / (acc_t)classes : REAL_NAN;
        }
    });
}

// Cosine embedding loss (PyTorch's cosine_embedding_loss) of row pairs x1, x2 (rows, dim) and one
// target y a row, a group of lanes a row pair (for_each_row) walking it twice: the sums P = x1.x2,
// A = |x1|^2 + 1e-12, B = |x2|^2 + 1e-12 (torch's EPSILON), cos = P / sqrt(A B); the loss 1 - cos
// where y = 1, max(0, cos - margin) where y = -1, else 0; then the gradients s (x2 / sqrt(A B) -
// cos x1 / A) and s (x1 / sqrt(A B) - cos x2 / B), s the loss's slope in cos (-1; 1 where
// cos - margin >= 0, as torch's clamp_min passes it; 0) times grad_scale (1, or 1 / rows for the mean).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
cosine_embedding_rows(const REAL* __restrict__ input1, const REAL* __restrict__ input2,
                      const REAL* __restrict__ target, REAL* __restrict__ dinput1, REAL* __restrict__ dinput2,
                      acc_t* __restrict__ row_loss, long long rows, long long dim, acc_t margin, acc_t grad_scale)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    const acc_t epsilon = (acc_t)1e-12;
    for_each_row(rows, dim, 1, scratch, [&](long long row, const RowWalk& walk) {
        const long long first = row * dim;
        acc_t dot = (acc_t)0, square1 = (acc_t)0, square2 = (acc_t)0;
        for (long long i = walk.first; i < dim; i += walk.step) {
            const acc_t u = to_acc(input1[first + i]), v = to_acc(input2[first + i]);
            dot += u * v;
            square1 += u * u;
            square2 += v * v;
        }
        dot = walk.sum(dot);
        square1 = walk.sum(square1) + epsilon;   // after the sums, as torch's
        square2 = walk.sum(square2) + epsilon;
        const acc_t inv_denominator = (acc_t)1 / REAL_SQRT(square1 * square2);
        const acc_t cosine = dot * inv_denominator;
        const acc_t y = to_acc(target[row]);
        acc_t loss = (acc_t)0, slope = (acc_t)0;
        if (y == (acc_t)1) {
            loss = (acc_t)1 - cosine;
            slope = (acc_t)-1;
        } else if (y == (acc_t)-1) {
            const acc_t gap = cosine - margin;
            loss = gap < (acc_t)0 ? (acc_t)0 : gap;
            slope = gap >= (acc_t)0 ? (acc_t)1 : (acc_t)0;
        }
        slope *= grad_scale;
        const acc_t cosine_over1 = cosine / square1, cosine_over2 = cosine / square2;
        for (long long i = walk.first; i < dim; i += walk.step) {
            const acc_t u = to_acc(input1[first + i]), v = to_acc(input2[first + i]);
            dinput1[first + i] = to_real(slope * (v * inv_denominator - cosine_over1 * u));
            dinput2[first + i] = to_real(slope * (u * inv_denominator - cosine_over2 * v));
        }
        if (walk.leader())
            row_loss[row] = loss;
    });
}

// Triplet margin loss (PyTorch's triplet_margin_loss) of rows (rows, dim) of anchors a, positives q
// and negatives n, a group of lanes a row triplet (for_each_row) walking it twice: the distances
// d(a, q) = ||a - q + eps||_p, d(a, n), and with swap d(q, n) (norms.cuh, as pairwise_distance's; the
// negative distance their minimum, torch's: a tie splits the gradient in halves); the loss
// max(0, margin + d(a, q) - d_neg) and, where its argument is >= 0 (torch's clamp_min), the gradients
// of the distances times grad_scale.
// Three resident blocks (up to 80 registers) rather than MIN_BLOCKS' four: at 64 registers the fp64
// builds of NVRTC 13 for sm_80 and sm_90 spill around pow's slow path (p other than 1 and 2)
#define TRIPLET_MIN_BLOCKS 3
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, TRIPLET_MIN_BLOCKS)
triplet_margin_rows(const REAL* __restrict__ anchor, const REAL* __restrict__ positive,
                    const REAL* __restrict__ negative, REAL* __restrict__ danchor, REAL* __restrict__ dpositive,
                    REAL* __restrict__ dnegative, acc_t* __restrict__ row_loss, long long rows, long long dim,
                    int swap, acc_t p, acc_t margin, acc_t eps, acc_t grad_scale)
{
    __shared__ acc_t scratch[BLOCK_THREADS];
    for_each_row(rows, dim, 1, scratch, [&](long long row, const RowWalk& walk) {
        const long long first = row * dim;
        acc_t sum_positive = (acc_t)0, sum_negative = (acc_t)0, sum_swap = (acc_t)0;
        for (long long j = walk.first; j < dim; j += walk.step) {
            const long long i = first + j;
            const acc_t a = to_acc(anchor[i]), q = to_acc(positive[i]), n = to_acc(negative[i]);
            sum_positive += lp_term(a - q + eps, p);
            sum_negative += lp_term(a - n + eps, p);
            if (swap)
                sum_swap += lp_term(q - n + eps, p);
        }
        const acc_t d_positive = lp_root(walk.sum(sum_positive), p), d_negative = lp_root(walk.sum(sum_negative), p);
        const acc_t d_swap = swap ? lp_root(walk.sum(sum_swap), p) : d_negative;
        // the shares of the negative distance's gradient: d(a, n)'s and d(q, n)'s
        acc_t negative_share = (acc_t)1, swap_share = (acc_t)0;
        if (swap) {
            negative_share = d_negative < d_swap ? (acc_t)1 : (d_negative == d_swap ? (acc_t)0.5 : (acc_t)0);
            swap_share = d_swap < d_negative ? (acc_t)1 : (d_negative == d_swap ? (acc_t)0.5 : (acc_t)0);
        }
        const acc_t d_closest = d_swap < d_negative ? d_swap : d_negative;
        const acc_t gap = margin + d_positive - d_closest;
        if (walk.leader())
            row_loss[row] = gap < (acc_t)0 ? (acc_t)0 : gap;
        const acc_t scale = gap >= (acc_t)0 ? grad_scale : (acc_t)0;
        const LpNormGradient to_positive(d_positive, p, (acc_t)1), to_negative(d_negative, p, (acc_t)1);
        const LpNormGradient to_swap(d_swap, p, (acc_t)1);
        for (long long j = walk.first; j < dim; j += walk.step) {
            const long long i = first + j;
            const acc_t a = to_acc(anchor[i]), q = to_acc(positive[i]), n = to_acc(negative[i]);
            const acc_t positive_slope = to_positive(a - q + eps);
            const acc_t negative_slope = negative_share * to_negative(a - n + eps);
            const acc_t swap_slope = swap ? swap_share * to_swap(q - n + eps) : (acc_t)0;
            danchor[i] = to_real(scale * (positive_slope - negative_slope));
            dpositive[i] = to_real(scale * (-positive_slope - swap_slope));
            dnegative[i] = to_real(scale * (negative_slope + swap_slope));
        }
    });
}

#define REGRESSION_L1 0
#define REGRESSION_SMOOTH_L1 1
#define REGRESSION_HUBER 2
#define REGRESSION_SQUARED 3
#define REGRESSION_KL_DIV 4
#define REGRESSION_KL_DIV_LOG_TARGET 5
#define REGRESSION_SOFT_MARGIN 6
#define REGRESSION_HINGE_EMBEDDING 7
#define REGRESSION_MARGIN_RANKING 8
#define REGRESSION_POISSON_NLL_LOG_INPUT 9
#define REGRESSION_POISSON_NLL 10
#define REGRESSION_GAUSSIAN_NLL 11

// 0.5 log(2 pi): the constant of the Gaussian NLL's and the Stirling term's `full` forms
#define HALF_LOG_TWO_PI ((acc_t)0.91893853320467274178)

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
regression_loss_rows(const REAL* __restrict__ pred, const REAL* __restrict__ target, const REAL* __restrict__ other,
                     REAL* __restrict__ dpred, REAL* __restrict__ dother, acc_t* __restrict__ loss, long long n,
                     int kind, int has_weight, int full, acc_t beta, acc_t grad_scale,
                     const acc_t* __restrict__ grad_divisor)
{
    const acc_t scale = grad_scale / grad_divisor[0];
    // other (the weight, margin ranking's input2 or the Gaussian NLL's var) is loaded with the rest of a
    // round even when absent (the host passes pred in its place, a cache hit): every load of a round before
    // its first store
    for_each_element(n, [&](long long i) { return Loaded<3>{{pred[i], target[i], other[i]}}; },
                     [&](long long i, const Loaded<3>& in) {
                         const acc_t x = to_acc(in.v[0]), t = to_acc(in.v[1]);
                         const acc_t d = x - t;
                         const acc_t z = fabs(d);
                         // sign(d), 0 at 0 and at NaN as torch's sign
                         const acc_t sign = d > (acc_t)0 ? (acc_t)1 : (d < (acc_t)0 ? (acc_t)-1 : (acc_t)0);
                         acc_t value = z, slope = sign, other_slope = (acc_t)0;
                         if (kind == REGRESSION_SMOOTH_L1) {
                             value = z < beta ? (acc_t)0.5 * z * z / beta : z - (acc_t)0.5 * beta;
                             slope = z > beta ? sign : d / beta;
                         } else if (kind == REGRESSION_HUBER) {
                             value = z < beta ? (acc_t)0.5 * z * z : beta * (z - (acc_t)0.5 * beta);
                             slope = z > beta ? sign * beta : d;
                         } else if (kind == REGRESSION_SQUARED) {
                             value = d * d;
                             slope = (acc_t)2 * d;
                         } else if (kind == REGRESSION_KL_DIV) {
                             // torch's xlogy(t, t) - t x: a zero target adds 0 (its log is not taken)
                             value = (t == (acc_t)0 ? (acc_t)0 : t * REAL_LOG(t)) - t * x;
                             slope = -t;
                         } else if (kind == REGRESSION_KL_DIV_LOG_TARGET) {
                             const acc_t p = REAL_EXP(t);
                             value = p * (t - x);
                             slope = -p;
                         } else if (kind == REGRESSION_SOFT_MARGIN) {
                             // torch's log1p(exp(-t x)) and -t e / (1 + e), overflow (inf, NaN) included
                             const acc_t e = REAL_EXP(-t * x);
                             value = log1p(e);
                             slope = -t * e / ((acc_t)1 + e);
                         } else if (kind == REGRESSION_HINGE_EMBEDDING) {
                             // torch's where(t != 1, clamp_min(margin - x, 0), 0) + where(t != -1, x, 0);
                             // clamp_min passes the gradient where margin - x >= 0 (NaN stays NaN)
                             const acc_t gap = beta - x;
                             value = (t != (acc_t)1 ? (gap < (acc_t)0 ? (acc_t)0 : gap) : (acc_t)0)
                                     + (t != (acc_t)-1 ? x : (acc_t)0);
                             slope = (t != (acc_t)1 && gap >= (acc_t)0 ? (acc_t)-1 : (acc_t)0)
                                     + (t != (acc_t)-1 ? (acc_t)1 : (acc_t)0);
                         } else if (kind == REGRESSION_MARGIN_RANKING) {
                             // x is input1, other input2, t the +-1 target: clamp_min(-t (x1 - x2) + margin, 0)
                             const acc_t gap = -t * (x - to_acc(in.v[2])) + beta;
                             value = gap < (acc_t)0 ? (acc_t)0 : gap;
                             slope = gap >= (acc_t)0 ? -t : (acc_t)0;
                             other_slope = -slope;
                         } else if (kind == REGRESSION_POISSON_NLL_LOG_INPUT || kind == REGRESSION_POISSON_NLL) {
                             if (kind == REGRESSION_POISSON_NLL_LOG_INPUT) {
                                 const acc_t rate = REAL_EXP(x);
                                 value = rate - t * x;
                                 slope = rate - t;
                             } else {   // beta is eps
                                 value = x - t * REAL_LOG(x + beta);
                                 slope = (acc_t)1 - t / (x + beta);
                             }
                             // Stirling's approximation of log(t!), where t > 1 (torch's masked_fill)
                             if (full && t > (acc_t)1)
                                 value += t * REAL_LOG(t) - t + (acc_t)0.5 * REAL_LOG(t) + HALF_LOG_TWO_PI;
                         } else if (kind == REGRESSION_GAUSSIAN_NLL) {
                             // other is var, clamped at eps (beta) without changing its gradient's path, as
                             // torch's clamp_ under no_grad; a negative var gives NaN (the host names it)
                             const acc_t var = to_acc(in.v[2]);
                             const acc_t v = var < beta ? beta : var;
                             const acc_t ratio = d * d / v;
                             value = (acc_t)0.5 * (REAL_LOG(v) + ratio) + (full ? HALF_LOG_TWO_PI : (acc_t)0);
                             slope = d / v;
                             other_slope = (acc_t)0.5 * ((acc_t)1 - ratio) / v;
                             if (var < (acc_t)0)
                                 value = REAL_NAN;
                         }
                         const acc_t w = has_weight ? to_acc(in.v[2]) : (acc_t)1;
                         loss[i] = value * w;
                         dpred[i] = to_real(slope * w * scale);
                         if (kind == REGRESSION_MARGIN_RANKING || kind == REGRESSION_GAUSSIAN_NLL)
                             dother[i] = to_real(other_slope * scale);
                     });
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
binary_cross_entropy_rows(const REAL* __restrict__ input, const REAL* __restrict__ target,
                          const REAL* __restrict__ weight, const REAL* __restrict__ pos_weight,
                          REAL* __restrict__ dinput, acc_t* __restrict__ loss, long long n, int from_logits,
                          int has_weight, int has_pos_weight, acc_t grad_scale)
{
    // weight and pos_weight are loaded with the rest of a round even when absent (the host passes
    // input in their place, a cache hit): every load of a round before its first store
    for_each_element(n, [&](long long i) { return Loaded<4>{{input[i], target[i], weight[i], pos_weight[i]}}; },
                     [&](long long i, const Loaded<4>& in) {
                         const acc_t x = to_acc(in.v[0]), t = to_acc(in.v[1]);
                         const acc_t w = has_weight ? to_acc(in.v[2]) : (acc_t)1;
                         acc_t value, slope;
                         if (from_logits) {
                             // log_sigmoid(x) = min(x, 0) - log1p(e) and sigmoid(x) = (x < 0 ? e : 1) / (1 + e)
                             // from one e = exp(-|x|): no overflow at any |x|. The loss's log1p stays accurate
                             // (the loss is acc_t); e is map_exp's (float16: fast) for both, within 2^-19 of it
                             const acc_t e = map_exp(-fabs(x));
                             const acc_t log_sigmoid = (x < (acc_t)0 ? x : (acc_t)0) - log1p(e);
                             const acc_t sigmoid = map_divide(x < (acc_t)0 ? e : (acc_t)1, (acc_t)1 + e);
                             if (has_pos_weight) {
                                 const acc_t p = to_acc(in.v[3]);
                                 value = ((acc_t)1 - t) * x - ((p - (acc_t)1) * t + (acc_t)1) * log_sigmoid;
                                 slope = (p * t + (acc_t)1 - t) * sigmoid - p * t;
                             } else {
                                 value = ((acc_t)1 - t) * x - log_sigmoid;
                                 slope = sigmoid - t;
                             }
                         } else {
                             const acc_t log_x = REAL_LOG(x), log_rest = log1p(-x);
                             value = (t - (acc_t)1) * (log_rest > (acc_t)-100 ? log_rest : (acc_t)-100)
                                     - t * (log_x > (acc_t)-100 ? log_x : (acc_t)-100);
                             const acc_t spread = ((acc_t)1 - x) * x;
                             // torch's epsilon is the float 1e-12 in every dtype
                             const acc_t epsilon = (acc_t)1e-12f;
                             slope = map_divide(x - t, spread > epsilon ? spread : epsilon);
                             if (!(x >= (acc_t)0 && x <= (acc_t)1 && t >= (acc_t)0 && t <= (acc_t)1))
                                 value = REAL_NAN;
                         }
                         loss[i] = value * w;
                         dinput[i] = to_real(slope * w * grad_scale);
                     });
}
