// Optimizer updates, each one fused kernel, in place (PyTorch's rules).
//
// Not a GEMM: 256-thread blocks walking the 64-bit flat index by for_each_element's rounds
// (common.cuh: ELEMENTS_PER_THREAD elements a thread, every load of a round before any update, so
// a thread keeps that many elements of each array in flight); every element reads its parameter,
// gradient and state once and writes them once, with no host synchronisation. Each kernel updates
// up to 8 parameters in one launch (UPDATE_SLOTS; ResNet-18's 62 parameter arrays: 8 launches, not
// 62, where one launch per parameter would cost more than the update of most of them): slot k
// holds one parameter's arrays, its size n_k and its per-parameter scalars, and every thread walks
// the used slots in order, its rounds over each (the grid is the largest slot's); an unused slot
// is n = 0.
// Each rule starts from g = grad + weight_decay*param (-grad with PyTorch's maximize; decayed_gradient).
//  * sgd_step: param -= lr*g (no momentum state).
//  * sgd_momentum_step: buf = g on the parameter's first step, else momentum*buf +
//    one_minus_dampening*g (1 - dampening, computed on the host: 1 exactly without dampening);
//    param -= lr*(nesterov ? g + momentum*buf : buf).
//  * adam_step (weight_decay: torch.optim.Adam's L2 decay):
//    m += w(g - m) with w = 1-beta1, or m = g - (g - m)(1 - w) for w >= 0.5 (torch's lerp_: beta1 = 0
//    gives g exactly); v = beta2*v + (1-beta2)*g*g;
//    param = param*decay - step_size * m / (sqrt(v)/bias2_sqrt + eps), with decay = 1 - lr*weight_decay
//    for AdamW's decoupled decay (torch.optim.AdamW; its weight_decay argument here 0) and 1 for
//    Adam (an exact product, so Adam's steps are unchanged), where the host computes each slot's
//    step_size = lr/(1 - beta1^t) and bias2_sqrt = sqrt(1 - beta2^t) from its step count t, and
//    1-beta1, 1-beta2 in double (as PyTorch: in FP32, 1 - 0.999 would be off by 1e-5 relative).
//  * adam_amsgrad_step: the same with AMSGrad's v_max = max(v_max, v) in the denominator's place
//    of v (a slot's fifth array; NaN kept, as torch.maximum keeps it).
//  * rmsprop_step (torch.optim.RMSprop): sq = alpha*sq + (1-alpha)*g*g; centered: ga += w(g - ga)
//    (torch's lerp_, w = 1-alpha) and avg = sqrt(sq - ga*ga) + eps, else avg = sqrt(sq) + eps;
//    with momentum buf = momentum*buf + g/avg and param -= lr*buf, else param -= lr*g/avg. Whether
//    it is centered and has momentum is the same for every slot of a launch (one parameter group):
//    a uniform branch, and the arrays it leaves out (grad_avg, the buffer) are neither read nor
//    written.
//  * adagrad_step, adamax_step, nadam_step, radam_step, adadelta_step (torch.optim's Adagrad,
//    Adamax, NAdam, RAdam, Adadelta): one walk, rule_walk, of a slot's parameter, gradient and one or
//    two state arrays, each rule a struct (AdagradRule...) whose update takes an element's g and
//    state and gives its new state and parameter. A slot carries up to 3 scalars the host derives
//    from the parameter's own step count (Adagrad's and Adamax's clr; NAdam's bias correction and
//    its two step sizes from mu and the mu product; RAdam's step size and whether it is rectified):
//    written out at each rule.
//  * unscale_grads (cnn_gpu.amp.GradScaler.unscale_): grad *= inverse in acc_t, rounded once, in
//    place (as PyTorch's); *found = 1 where a gradient holds inf/NaN before the multiplication or,
//    with check_after (a scale below 1), after it. The host reads `found` once a step, where a
//    check per parameter read back (and waited for the GPU) once per parameter.
// The math is in acc_t and the state (momentum buffer, moments) is acc_t: FP32 for float16. The
// float16 build adds *_master kernels (mixed precision, cnn_gpu.optim): they update the
// parameter's FP32 master copy from the float16 gradient and store the parameter rounded once.

#include "common.cuh"

// One element of a slot as a round loads it, raw (a conversion is a use, which would hold the
// round's next load back): the parameter as the update reads it, the gradient, and the rule's
// state (momentum buffer; Adam's m and v, and AMSGrad's maximum of v).
template <class Param, int STATES = 2>
struct SlotElement {
    Param param;
    REAL grad;
    acc_t state[STATES];
};

// The parameter as an update reads (load, then widen to acc_t) and writes it: the array itself
// (plain kernels), or its FP32 master copy, the parameter then stored rounded from it (the float16
// *_master kernels).
struct ParamArray {
    typedef REAL Value;
    REAL* param;
    __device__ REAL load(long long i) const { return param[i]; }
    static __device__ acc_t widen(REAL p) { return to_acc(p); }
    __device__ void store(long long i, acc_t p) const { param[i] = to_real(p); }
};
struct MasterCopy {
    typedef acc_t Value;
    REAL* param;
    acc_t* master;
    __device__ acc_t load(long long i) const { return master[i]; }
    static __device__ acc_t widen(acc_t p) { return p; }
    __device__ void store(long long i, acc_t p) const
    {
        master[i] = p;
        param[i] = to_real(p);
    }
};

// g = (maximize ? -grad : grad) + weight_decay*p as one fused multiply-add: PyTorch's CUDA kernels
// compute grad.add(p, alpha=weight_decay) so, and the compiler contracted it so before maximize
// existed; the sign is a negation (exact), as a product by -1/+1 it let the compiler round
// weight_decay*p on its own and moved the results of every step with weight decay.
__device__ __forceinline__ acc_t decayed_gradient(REAL grad, acc_t p, acc_t weight_decay, int maximize)
{
    const acc_t g = to_acc(grad);
    return fma(weight_decay, p, maximize ? -g : g);
}

// start.lerp_(end, weight) as PyTorch computes it: its second form from a weight of 0.5 on, so that a
// weight of 1 gives end exactly
__device__ __forceinline__ acc_t torch_lerp(acc_t start, acc_t end, acc_t weight)
{
    return weight < acc_t(0.5) ? start + weight * (end - start) : end - (end - start) * (acc_t(1) - weight);
}

// Each rule's walk over one slot's n elements (for_each_element: a round's loads, then its updates),
// shared by the plain and the master kernels.
template <class Param>
__device__ __forceinline__ void sgd_walk(Param param, const REAL* grad, long long n, acc_t lr, acc_t weight_decay,
                                         int maximize)
{
    typedef SlotElement<typename Param::Value> Element;
    for_each_element(
        n, [&](long long i) { return Element{param.load(i), grad[i]}; },
        [&](long long i, const Element& e) {
            const acc_t p = Param::widen(e.param);
            param.store(i, p - lr * decayed_gradient(e.grad, p, weight_decay, maximize));
        });
}

template <class Param>
__device__ __forceinline__ void sgd_momentum_walk(Param param, const REAL* grad, acc_t* momentum_buf, long long n,
                                                  int first_step, acc_t lr, acc_t momentum, acc_t weight_decay,
                                                  int nesterov, acc_t one_minus_dampening, int maximize)
{
    typedef SlotElement<typename Param::Value> Element;
    for_each_element(
        n,
        // the buffer is read on the parameter's first step too, its value unused: one path through the round
        [&](long long i) { return Element{param.load(i), grad[i], {momentum_buf[i]}}; },
        [&](long long i, const Element& e) {
            const acc_t p = Param::widen(e.param), g = decayed_gradient(e.grad, p, weight_decay, maximize);
            // (one rounding, as momentum*buf + g was contracted before dampening existed)
            const acc_t buf = first_step ? g : fma(momentum, e.state[0], one_minus_dampening * g);
            momentum_buf[i] = buf;
            param.store(i, p - lr * (nesterov ? g + momentum * buf : buf));
        });
}

// The second moment Adam's denominator takes: v itself, or (AMSGrad) the running maximum of v, kept
// in v_max (loaded with the round's other state, into state[2]).
struct LatestMoment {
    enum { STATES = 2 };
    __device__ void load(long long, acc_t*) const {}
    __device__ acc_t update(long long, const acc_t*, acc_t v_new) const { return v_new; }
};
// torch.maximum(a, b): NaN where either is NaN (fmax would drop it)
__device__ __forceinline__ acc_t nan_max(acc_t a, acc_t b) { return (a > b || a != a) ? a : b; }

struct MaximumMoment {
    enum { STATES = 3 };
    acc_t* v_max;
    __device__ void load(long long i, acc_t* state) const { state[2] = v_max[i]; }
    __device__ acc_t update(long long i, const acc_t* state, acc_t v_new) const
    {
        const acc_t kept = nan_max(v_new, state[2]);
        v_max[i] = kept;
        return kept;
    }
};

template <class Param, class Moment>
__device__ __forceinline__ void adam_walk(Param param, const REAL* grad, acc_t* m, acc_t* v, Moment moment,
                                          long long n, acc_t step_size, acc_t bias2_sqrt, acc_t one_minus_beta1,
                                          acc_t beta2, acc_t one_minus_beta2, acc_t eps, acc_t weight_decay,
                                          acc_t decay, int maximize)
{
    typedef SlotElement<typename Param::Value, Moment::STATES> Element;
    for_each_element(
        n,
        [&](long long i) {
            Element e{param.load(i), grad[i], {m[i], v[i]}};
            moment.load(i, e.state);
            return e;
        },
        [&](long long i, const Element& e) {
            const acc_t p = Param::widen(e.param), g = decayed_gradient(e.grad, p, weight_decay, maximize);
            const acc_t m_new = torch_lerp(e.state[0], g, one_minus_beta1);   // (beta1 = 0: m_new = g exactly)
            const acc_t v_new = beta2 * e.state[1] + one_minus_beta2 * g * g;
            m[i] = m_new;
            v[i] = v_new;
            const acc_t v_denominator = moment.update(i, e.state, v_new);
            param.store(i, p * decay - step_size * m_new / (REAL_SQRT(v_denominator) / bias2_sqrt + eps));
        });
}

template <class Param>
__device__ __forceinline__ void rmsprop_walk(Param param, const REAL* grad, acc_t* square_avg, acc_t* grad_avg,
                                             acc_t* momentum_buf, long long n, acc_t lr, acc_t alpha,
                                             acc_t one_minus_alpha, acc_t eps, acc_t weight_decay, acc_t momentum,
                                             int centered, int has_momentum, int maximize)
{
    typedef SlotElement<typename Param::Value, 3> Element;
    for_each_element(
        n,
        [&](long long i) {
            const acc_t kept_avg = centered ? grad_avg[i] : acc_t(0);
            const acc_t buf = has_momentum ? momentum_buf[i] : acc_t(0);
            return Element{param.load(i), grad[i], {square_avg[i], kept_avg, buf}};
        },
        [&](long long i, const Element& e) {
            const acc_t p = Param::widen(e.param), g = decayed_gradient(e.grad, p, weight_decay, maximize);
            const acc_t sq = alpha * e.state[0] + one_minus_alpha * g * g;
            square_avg[i] = sq;
            acc_t avg;
            if (centered) {
                const acc_t ga = torch_lerp(e.state[1], g, one_minus_alpha);
                grad_avg[i] = ga;
                avg = REAL_SQRT(sq - ga * ga) + eps;
            } else {
                avg = REAL_SQRT(sq) + eps;
            }
            if (has_momentum) {
                const acc_t buf = momentum * e.state[2] + g / avg;
                momentum_buf[i] = buf;
                param.store(i, p - lr * buf);
            } else {
                param.store(i, p - lr * (g / avg));
            }
        });
}

// The rules rule_walk runs: STATES arrays of state per slot (1 or 2), and update(p, g, state) with
// g = grad + weight_decay*p (decayed_gradient), the element's state updated in place, returning the
// new parameter. Each holds its launch's scalars, then its slot's step scalars (the host's).
// Adagrad: sum += g*g; p -= clr * (g / (sqrt(sum) + eps)), clr = lr / (1 + (t-1)*lr_decay).
struct AdagradRule {
    enum { STATES = 1 };
    acc_t eps, clr;
    __device__ acc_t update(acc_t p, acc_t g, acc_t* state) const
    {
        state[0] += g * g;
        return p - clr * (g / (REAL_SQRT(state[0]) + eps));
    }
};

// Adamax: exp_avg = lerp(exp_avg, g, 1-beta1); exp_inf = max(beta2*exp_inf, |g| + eps) (NaN kept, as
// torch.maximum); p -= clr * (exp_avg / exp_inf), clr = lr / (1 - beta1^t).
struct AdamaxRule {
    enum { STATES = 2 };
    acc_t one_minus_beta1, beta2, eps, clr;
    __device__ acc_t update(acc_t p, acc_t g, acc_t* state) const
    {
        state[0] = torch_lerp(state[0], g, one_minus_beta1);
        state[1] = nan_max(beta2 * state[1], fabs(g) + eps);
        return p - clr * (state[0] / state[1]);
    }
};

// NAdam: p *= decay (1 - lr*weight_decay with decoupled decay, else 1: exact); exp_avg and
// exp_avg_sq as Adam's; denom = sqrt(exp_avg_sq / bias_correction2) + eps; p -= grad_step * (g /
// denom), then p -= avg_step * (exp_avg / denom), torch's two addcdiv_, where grad_step =
// lr(1 - mu_t)/(1 - prod mu) and avg_step = lr mu_{t+1}/(1 - mu_{t+1} prod mu).
struct NAdamRule {
    enum { STATES = 2 };
    acc_t one_minus_beta1, beta2, one_minus_beta2, eps, decay, bias_correction2, grad_step, avg_step;
    __device__ acc_t update(acc_t p, acc_t g, acc_t* state) const
    {
        state[0] = torch_lerp(state[0], g, one_minus_beta1);
        state[1] = beta2 * state[1] + one_minus_beta2 * g * g;
        const acc_t denom = REAL_SQRT(state[1] / bias_correction2) + eps;
        const acc_t stepped = p * decay - grad_step * (g / denom);
        return stepped - avg_step * (state[0] / denom);
    }
};

// RAdam: p *= decay as NAdam's; exp_avg and exp_avg_sq as Adam's; rectified (rho_t > 5): p -=
// step_size * exp_avg / (sqrt(exp_avg_sq) + eps), step_size = lr sqrt(1 - beta2^t) r_t / (1 -
// beta1^t); else p -= step_size * exp_avg, step_size = lr / (1 - beta1^t). `rectified` is 1 or 0.
struct RAdamRule {
    enum { STATES = 2 };
    acc_t one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_size, rectified;
    __device__ acc_t update(acc_t p, acc_t g, acc_t* state) const
    {
        state[0] = torch_lerp(state[0], g, one_minus_beta1);
        state[1] = beta2 * state[1] + one_minus_beta2 * g * g;
        const acc_t direction = rectified != acc_t(0) ? state[0] / (REAL_SQRT(state[1]) + eps) : state[0];
        return p * decay - step_size * direction;
    }
};

// Adadelta: square_avg = rho*square_avg + (1-rho) g*g; delta = sqrt(acc_delta + eps) /
// sqrt(square_avg + eps) * g; acc_delta = rho*acc_delta + (1-rho) delta*delta; p -= lr*delta.
struct AdadeltaRule {
    enum { STATES = 2 };
    acc_t lr, rho, one_minus_rho, eps;
    __device__ acc_t update(acc_t p, acc_t g, acc_t* state) const
    {
        state[0] = rho * state[0] + one_minus_rho * g * g;
        const acc_t delta = REAL_SQRT(state[1] + eps) / REAL_SQRT(state[0] + eps) * g;
        state[1] = rho * state[1] + one_minus_rho * delta * delta;
        return p - lr * delta;
    }
};

// One slot of a rule: a round loads the parameter, gradient and the rule's states (`second`, an
// array of no element for a one-state rule, is never touched then), then updates and stores them.
template <class Param, class Rule>
__device__ __forceinline__ void rule_walk(Param param, const REAL* grad, acc_t* first, acc_t* second, long long n,
                                          acc_t weight_decay, int maximize, Rule rule)
{
    typedef SlotElement<typename Param::Value, Rule::STATES> Element;
    acc_t* const states[2] = {first, second};
    for_each_element(
        n,
        [&](long long i) {
            Element e{param.load(i), grad[i]};
#pragma unroll
            for (int s = 0; s < Rule::STATES; ++s)
                e.state[s] = states[s][i];
            return e;
        },
        [&](long long i, const Element& e) {
            const acc_t p = Param::widen(e.param), g = decayed_gradient(e.grad, p, weight_decay, maximize);
            acc_t state[Rule::STATES];
#pragma unroll
            for (int s = 0; s < Rule::STATES; ++s)
                state[s] = e.state[s];
            const acc_t p_new = rule.update(p, g, state);
#pragma unroll
            for (int s = 0; s < Rule::STATES; ++s)
                states[s][i] = state[s];
            param.store(i, p_new);
        });
}

// The parameter lists and switch cases of the UPDATE_SLOTS (8) slots: SLOT(k) declares slot k's
// parameters (names pasted with k), CASE(k) copies them into the loop's variables (a switch: an
// array of pointers indexed by the slot would live in local memory).
#define EACH_SLOT(SLOT) SLOT(0), SLOT(1), SLOT(2), SLOT(3), SLOT(4), SLOT(5), SLOT(6), SLOT(7)
#define EACH_CASE(CASE) CASE(0) CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7)

// Every thread walks the used slots in order: `variables` declares a slot's variables (their names
// as the CASE macro's), `walk` (a for_each_element over the slot's n elements) updates the slot.
#define FOR_EACH_SLOT(CASE, variables, walk)                                                                     \
    for (int slot = 0; slot < slots; ++slot) {                                                                   \
        variables;                                                                                               \
        switch (slot) {                                                                                          \
            EACH_CASE(CASE)                                                                                      \
            default: return;                                                                                     \
        }                                                                                                        \
        walk;                                                                                                    \
    }

// float64 Adam holds a round's 4 elements x 4 doubles (32 registers) and spills at MIN_BLOCKS'
// 64-register cap: 3 blocks an SM still keep 96 KB in flight an SM, Little's law asks ~13 KB.
#define ADAM_MIN_BLOCKS (REAL_IS_DOUBLE ? 3 : MIN_BLOCKS)
// AMSGrad's fifth double a round spilled at 3 blocks' cap on sm_70: 2 blocks keep 80 KB in flight an SM
#define AMSGRAD_MIN_BLOCKS (REAL_IS_DOUBLE ? 2 : MIN_BLOCKS)
// RMSprop's round holds five doubles too (parameter, gradient, square_avg, grad_avg, buffer)
#define RMSPROP_MIN_BLOCKS AMSGRAD_MIN_BLOCKS

#define SGD_SLOT(k) REAL* __restrict__ param##k, const REAL* __restrict__ grad##k, long long n##k
#define SGD_CASE(k)                                                                                              \
    case k:                                                                                                      \
        param = param##k, grad = grad##k, n = n##k;                                                              \
        break;
#define SGD_VARIABLES                                                                                            \
    REAL* param;                                                                                                 \
    const REAL* grad;                                                                                            \
    long long n

#define MOMENTUM_SLOT(k)                                                                                         \
    REAL* __restrict__ param##k, const REAL* __restrict__ grad##k, acc_t* __restrict__ momentum_buf##k,          \
        long long n##k, int first_step##k
#define MOMENTUM_CASE(k)                                                                                         \
    case k:                                                                                                      \
        param = param##k, grad = grad##k, momentum_buf = momentum_buf##k, n = n##k, first_step = first_step##k;  \
        break;
#define MOMENTUM_VARIABLES                                                                                       \
    SGD_VARIABLES;                                                                                               \
    acc_t* momentum_buf;                                                                                         \
    int first_step

// Adam's step-dependent scalars are per slot: each parameter counts its own steps (PyTorch's state).
#define ADAM_SLOT(k)                                                                                             \
    REAL* __restrict__ param##k, const REAL* __restrict__ grad##k, acc_t* __restrict__ m##k,                     \
        acc_t* __restrict__ v##k, long long n##k, acc_t step_size##k, acc_t bias2_sqrt##k
#define ADAM_ASSIGN(k)                                                                                           \
    param = param##k, grad = grad##k, m = m##k, v = v##k, n = n##k, step_size = step_size##k,                    \
    bias2_sqrt = bias2_sqrt##k
#define ADAM_CASE(k)                                                                                             \
    case k:                                                                                                      \
        ADAM_ASSIGN(k);                                                                                          \
        break;
#define ADAM_VARIABLES                                                                                           \
    SGD_VARIABLES;                                                                                               \
    acc_t *m, *v, step_size, bias2_sqrt
// AMSGrad's slots add the running maximum of v
#define AMSGRAD_SLOT(k) ADAM_SLOT(k), acc_t* __restrict__ v_max##k
#define AMSGRAD_CASE(k)                                                                                          \
    case k:                                                                                                      \
        ADAM_ASSIGN(k), v_max = v_max##k;                                                                        \
        break;
#define AMSGRAD_VARIABLES                                                                                        \
    ADAM_VARIABLES;                                                                                              \
    acc_t* v_max

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_step(EACH_SLOT(SGD_SLOT), int slots, acc_t lr, acc_t weight_decay, int maximize)
{
    FOR_EACH_SLOT(SGD_CASE, SGD_VARIABLES, sgd_walk(ParamArray{param}, grad, n, lr, weight_decay, maximize))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_momentum_step(EACH_SLOT(MOMENTUM_SLOT), int slots, acc_t lr, acc_t momentum, acc_t weight_decay, int nesterov,
                  acc_t one_minus_dampening, int maximize)
{
    FOR_EACH_SLOT(MOMENTUM_CASE, MOMENTUM_VARIABLES,
                  sgd_momentum_walk(ParamArray{param}, grad, momentum_buf, n, first_step, lr, momentum, weight_decay,
                                    nesterov, one_minus_dampening, maximize))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, ADAM_MIN_BLOCKS)
adam_step(EACH_SLOT(ADAM_SLOT), int slots, acc_t one_minus_beta1, acc_t beta2, acc_t one_minus_beta2, acc_t eps,
          acc_t weight_decay, acc_t decay, int maximize)
{
    FOR_EACH_SLOT(ADAM_CASE, ADAM_VARIABLES,
                  adam_walk(ParamArray{param}, grad, m, v, LatestMoment{}, n, step_size, bias2_sqrt, one_minus_beta1,
                            beta2, one_minus_beta2, eps, weight_decay, decay, maximize))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, AMSGRAD_MIN_BLOCKS)
adam_amsgrad_step(EACH_SLOT(AMSGRAD_SLOT), int slots, acc_t one_minus_beta1, acc_t beta2, acc_t one_minus_beta2,
                  acc_t eps, acc_t weight_decay, acc_t decay, int maximize)
{
    FOR_EACH_SLOT(AMSGRAD_CASE, AMSGRAD_VARIABLES,
                  adam_walk(ParamArray{param}, grad, m, v, MaximumMoment{v_max}, n, step_size, bias2_sqrt,
                            one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay, maximize))
}

// RMSprop's slots pass grad_avg and the momentum buffer always (arrays of no element where the
// group is not centered or has no momentum: never touched then)
#define RMSPROP_SLOT(k)                                                                                          \
    REAL* __restrict__ param##k, const REAL* __restrict__ grad##k, acc_t* __restrict__ square_avg##k,           \
        acc_t* __restrict__ grad_avg##k, acc_t* __restrict__ momentum_buf##k, long long n##k
#define RMSPROP_ASSIGN(k)                                                                                        \
    param = param##k, grad = grad##k, square_avg = square_avg##k, grad_avg = grad_avg##k,                        \
    momentum_buf = momentum_buf##k, n = n##k
#define RMSPROP_CASE(k)                                                                                          \
    case k:                                                                                                      \
        RMSPROP_ASSIGN(k);                                                                                       \
        break;
#define RMSPROP_VARIABLES                                                                                        \
    SGD_VARIABLES;                                                                                               \
    acc_t *square_avg, *grad_avg, *momentum_buf

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, RMSPROP_MIN_BLOCKS)
rmsprop_step(EACH_SLOT(RMSPROP_SLOT), int slots, acc_t lr, acc_t alpha, acc_t one_minus_alpha, acc_t eps,
             acc_t weight_decay, acc_t momentum, int centered, int has_momentum, int maximize)
{
    FOR_EACH_SLOT(RMSPROP_CASE, RMSPROP_VARIABLES,
                  rmsprop_walk(ParamArray{param}, grad, square_avg, grad_avg, momentum_buf, n, lr, alpha,
                               one_minus_alpha, eps, weight_decay, momentum, centered, has_momentum, maximize))
}

#define UNSCALE_SLOT(k) REAL* __restrict__ grad##k, long long n##k
#define UNSCALE_CASE(k)                                                                                          \
    case k:                                                                                                      \
        grad = grad##k, n = n##k;                                                                                \
        break;
#define UNSCALE_VARIABLES                                                                                        \
    REAL* grad;                                                                                                  \
    long long n

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
unscale_grads(EACH_SLOT(UNSCALE_SLOT), int slots, int* __restrict__ found, acc_t inverse, int check_after)
{
    bool finite = true;
    FOR_EACH_SLOT(UNSCALE_CASE, UNSCALE_VARIABLES,
                  for_each_element(n, [&](long long i) { return grad[i]; },
                                   [&](long long i, REAL loaded) {
                                       const acc_t g = to_acc(loaded);
                                       const REAL out = to_real(g * inverse);
                                       grad[i] = out;
                                       finite &= isfinite(g) && (!check_after || isfinite(to_acc(out)));
                                   }))
    if (!finite)
        atomicMax(found, 1);   // any thread's finding: every writer writes 1
}

#if REAL_IS_HALF
// The master variants: each rule's slots and then each parameter's FP32 master copy in master_k;
// the update reads and writes the master and stores the parameter rounded once.
#define MASTER_SLOT(k) acc_t* __restrict__ master##k
#define SGD_MASTER_CASE(k)                                                                                       \
    case k:                                                                                                      \
        param = param##k, grad = grad##k, n = n##k, master = master##k;                                          \
        break;
#define MOMENTUM_MASTER_CASE(k)                                                                                  \
    case k:                                                                                                      \
        param = param##k, grad = grad##k, momentum_buf = momentum_buf##k, n = n##k, first_step = first_step##k,  \
        master = master##k;                                                                                      \
        break;
#define ADAM_MASTER_CASE(k)                                                                                      \
    case k:                                                                                                      \
        ADAM_ASSIGN(k), master = master##k;                                                                      \
        break;
#define RMSPROP_MASTER_CASE(k)                                                                                   \
    case k:                                                                                                      \
        RMSPROP_ASSIGN(k), master = master##k;                                                                   \
        break;
#define AMSGRAD_MASTER_CASE(k)                                                                                   \
    case k:                                                                                                      \
        ADAM_ASSIGN(k), v_max = v_max##k, master = master##k;                                                    \
        break;

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_step_master(EACH_SLOT(SGD_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t lr, acc_t weight_decay,
                int maximize)
{
    FOR_EACH_SLOT(SGD_MASTER_CASE, SGD_VARIABLES; acc_t* master,
                  sgd_walk(MasterCopy{param, master}, grad, n, lr, weight_decay, maximize))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_momentum_step_master(EACH_SLOT(MOMENTUM_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t lr, acc_t momentum,
                         acc_t weight_decay, int nesterov, acc_t one_minus_dampening, int maximize)
{
    FOR_EACH_SLOT(MOMENTUM_MASTER_CASE, MOMENTUM_VARIABLES; acc_t* master,
                  sgd_momentum_walk(MasterCopy{param, master}, grad, momentum_buf, n, first_step, lr, momentum,
                                    weight_decay, nesterov, one_minus_dampening, maximize))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adam_step_master(EACH_SLOT(ADAM_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t one_minus_beta1, acc_t beta2,
                 acc_t one_minus_beta2, acc_t eps, acc_t weight_decay, acc_t decay, int maximize)
{
    FOR_EACH_SLOT(ADAM_MASTER_CASE, ADAM_VARIABLES; acc_t* master,
                  adam_walk(MasterCopy{param, master}, grad, m, v, LatestMoment{}, n, step_size, bias2_sqrt,
                            one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay, maximize))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adam_amsgrad_step_master(EACH_SLOT(AMSGRAD_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t one_minus_beta1,
                         acc_t beta2, acc_t one_minus_beta2, acc_t eps, acc_t weight_decay, acc_t decay,
                         int maximize)
{
    FOR_EACH_SLOT(AMSGRAD_MASTER_CASE, AMSGRAD_VARIABLES; acc_t* master,
                  adam_walk(MasterCopy{param, master}, grad, m, v, MaximumMoment{v_max}, n, step_size, bias2_sqrt,
                            one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay, maximize))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
rmsprop_step_master(EACH_SLOT(RMSPROP_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t lr, acc_t alpha,
                    acc_t one_minus_alpha, acc_t eps, acc_t weight_decay, acc_t momentum, int centered,
                    int has_momentum, int maximize)
{
    FOR_EACH_SLOT(RMSPROP_MASTER_CASE, RMSPROP_VARIABLES; acc_t* master,
                  rmsprop_walk(MasterCopy{param, master}, grad, square_avg, grad_avg, momentum_buf, n, lr, alpha,
                               one_minus_alpha, eps, weight_decay, momentum, centered, has_momentum, maximize))
}
#endif

// The rules' slots: the parameter, gradient, the rule's state arrays and each parameter's step
// scalars (those a rule leaves unused are 0)
#define RULE_SLOT(k)                                                                                             \
    REAL* __restrict__ param##k, const REAL* __restrict__ grad##k, acc_t* __restrict__ first_state##k,           \
        acc_t* __restrict__ second_state##k, long long n##k, acc_t step_scalar0##k, acc_t step_scalar1##k,       \
        acc_t step_scalar2##k
#define RULE_ASSIGN(k)                                                                                           \
    param = param##k, grad = grad##k, first_state = first_state##k, second_state = second_state##k, n = n##k,    \
    step_scalar0 = step_scalar0##k, step_scalar1 = step_scalar1##k, step_scalar2 = step_scalar2##k
#define RULE_CASE(k)                                                                                             \
    case k:                                                                                                      \
        RULE_ASSIGN(k);                                                                                          \
        break;
#define RULE_VARIABLES                                                                                           \
    SGD_VARIABLES;                                                                                               \
    acc_t *first_state, *second_state, step_scalar0, step_scalar1, step_scalar2

// A rule's kernel walks its slots with the rule `rule` builds from the kernel's scalars and the
// slot's step scalars; its parameters are its slots, the launch's weight decay and maximize, then the
// rule's own scalars, and its float16 _master variant's the slots, each slot's FP32 master copy
// (MASTER_SLOT), then the same.
#define RULE_WALK(rule)                                                                                          \
    FOR_EACH_SLOT(RULE_CASE, RULE_VARIABLES,                                                                     \
                  rule_walk(ParamArray{param}, grad, first_state, second_state, n, weight_decay, maximize, rule))

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adagrad_step(EACH_SLOT(RULE_SLOT), int slots, acc_t weight_decay, int maximize, acc_t eps)
{
    RULE_WALK((AdagradRule{eps, step_scalar0}))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, ADAM_MIN_BLOCKS)
adamax_step(EACH_SLOT(RULE_SLOT), int slots, acc_t weight_decay, int maximize, acc_t one_minus_beta1, acc_t beta2,
            acc_t eps)
{
    RULE_WALK((AdamaxRule{one_minus_beta1, beta2, eps, step_scalar0}))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, ADAM_MIN_BLOCKS)
nadam_step(EACH_SLOT(RULE_SLOT), int slots, acc_t weight_decay, int maximize, acc_t one_minus_beta1, acc_t beta2,
           acc_t one_minus_beta2, acc_t eps, acc_t decay)
{
    RULE_WALK((NAdamRule{one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_scalar0, step_scalar1,
                         step_scalar2}))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, ADAM_MIN_BLOCKS)
radam_step(EACH_SLOT(RULE_SLOT), int slots, acc_t weight_decay, int maximize, acc_t one_minus_beta1, acc_t beta2,
           acc_t one_minus_beta2, acc_t eps, acc_t decay)
{
    RULE_WALK((RAdamRule{one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_scalar0, step_scalar1}))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, ADAM_MIN_BLOCKS)
adadelta_step(EACH_SLOT(RULE_SLOT), int slots, acc_t weight_decay, int maximize, acc_t lr, acc_t rho,
              acc_t one_minus_rho, acc_t eps)
{
    RULE_WALK((AdadeltaRule{lr, rho, one_minus_rho, eps}))
}

#if REAL_IS_HALF
#define RULE_MASTER_CASE(k)                                                                                      \
    case k:                                                                                                      \
        RULE_ASSIGN(k), master = master##k;                                                                      \
        break;
#define RULE_MASTER_WALK(rule)                                                                                   \
    FOR_EACH_SLOT(RULE_MASTER_CASE, RULE_VARIABLES; acc_t* master,                                               \
                  rule_walk(MasterCopy{param, master}, grad, first_state, second_state, n, weight_decay,         \
                            maximize, rule))

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adagrad_step_master(EACH_SLOT(RULE_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t weight_decay, int maximize,
                    acc_t eps)
{
    RULE_MASTER_WALK((AdagradRule{eps, step_scalar0}))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adamax_step_master(EACH_SLOT(RULE_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t weight_decay, int maximize,
                   acc_t one_minus_beta1, acc_t beta2, acc_t eps)
{
    RULE_MASTER_WALK((AdamaxRule{one_minus_beta1, beta2, eps, step_scalar0}))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
nadam_step_master(EACH_SLOT(RULE_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t weight_decay, int maximize,
                  acc_t one_minus_beta1, acc_t beta2, acc_t one_minus_beta2, acc_t eps, acc_t decay)
{
    RULE_MASTER_WALK((NAdamRule{one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_scalar0, step_scalar1,
                                step_scalar2}))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
radam_step_master(EACH_SLOT(RULE_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t weight_decay, int maximize,
                  acc_t one_minus_beta1, acc_t beta2, acc_t one_minus_beta2, acc_t eps, acc_t decay)
{
    RULE_MASTER_WALK((RAdamRule{one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_scalar0, step_scalar1}))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adadelta_step_master(EACH_SLOT(RULE_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t weight_decay, int maximize,
                     acc_t lr, acc_t rho, acc_t one_minus_rho, acc_t eps)
{
    RULE_MASTER_WALK((AdadeltaRule{lr, rho, one_minus_rho, eps}))
}
#endif
