// Optimizer updates, each one fused kernel, in place (PyTorch's rules).
//
// Not a GEMM: one thread per element, 256-thread blocks, grid-stride loop over the 64-bit flat
// index; every element reads its parameter, gradient and state once and writes them once, with no
// host synchronisation. Each kernel updates up to 8 parameters in one launch (UPDATE_SLOTS;
// ResNet-18's 62 parameter arrays: 8 launches, not 62, where one launch per parameter would cost
// more than the update of most of them): slot k holds one parameter's arrays, its size n_k and
// its per-parameter scalars, and every thread walks the used slots in order, grid-striding over
// each (the grid is the largest slot's); an unused slot is n = 0.
//  * sgd_step: g = grad + weight_decay*param; param -= lr*g (no momentum state).
//  * sgd_momentum_step (no dampening): g = grad + weight_decay*param; buf = g on the parameter's
//    first step, else momentum*buf + g; param -= lr*(nesterov ? g + momentum*buf : buf).
//  * adam_step (L2 weight decay as torch.optim.Adam, not AdamW): g = grad + weight_decay*param;
//    m += (1-beta1)(g - m); v = beta2*v + (1-beta2)*g*g;
//    param -= step_size * m / (sqrt(v)/bias2_sqrt + eps), where the host computes each slot's
//    step_size = lr/(1 - beta1^t) and bias2_sqrt = sqrt(1 - beta2^t) from its step count t, and
//    1-beta1, 1-beta2 in double (as PyTorch: in FP32, 1 - 0.999 would be off by 1e-5 relative).
//  * unscale_grads (cnn_gpu.amp.GradScaler.unscale_): grad *= inverse in acc_t, rounded once, in
//    place (as PyTorch's); *found = 1 where a gradient holds inf/NaN before the multiplication or,
//    with check_after (a scale below 1), after it. The host reads `found` once a step, where a
//    check per parameter read back (and waited for the GPU) once per parameter.
// The math is in acc_t and the state (momentum buffer, moments) is acc_t: FP32 for float16. The
// float16 build adds *_master kernels (mixed precision, cnn_gpu.optim): they update the
// parameter's FP32 master copy from the float16 gradient and store the parameter rounded once.

#include "common.cuh"

// One element's update of each rule (its new value): shared by the plain and the master kernels.
__device__ __forceinline__ acc_t sgd_update(acc_t p, acc_t grad, acc_t lr, acc_t weight_decay)
{
    return p - lr * (grad + weight_decay * p);
}

__device__ __forceinline__ acc_t sgd_momentum_update(acc_t p, acc_t grad, acc_t* __restrict__ momentum_buf,
                                                     long long i, acc_t lr, acc_t momentum, acc_t weight_decay,
                                                     int nesterov, int first_step)
{
    const acc_t g = grad + weight_decay * p;
    const acc_t buf = first_step ? g : momentum * momentum_buf[i] + g;
    momentum_buf[i] = buf;
    return p - lr * (nesterov ? g + momentum * buf : buf);
}

__device__ __forceinline__ acc_t adam_update(acc_t p, acc_t grad, acc_t* __restrict__ m, acc_t* __restrict__ v,
                                             long long i, acc_t step_size, acc_t bias2_sqrt, acc_t one_minus_beta1,
                                             acc_t beta2, acc_t one_minus_beta2, acc_t eps, acc_t weight_decay)
{
    const acc_t g = grad + weight_decay * p;
    const acc_t m_new = m[i] + one_minus_beta1 * (g - m[i]);
    const acc_t v_new = beta2 * v[i] + one_minus_beta2 * g * g;
    m[i] = m_new;
    v[i] = v_new;
    return p - step_size * m_new / (REAL_SQRT(v_new) / bias2_sqrt + eps);
}

// The parameter lists and switch cases of the UPDATE_SLOTS (8) slots: SLOT(k) declares slot k's
// parameters (names pasted with k), CASE(k) copies them into the loop's variables (a switch: an
// array of pointers indexed by the slot would live in local memory).
#define EACH_SLOT(SLOT) SLOT(0), SLOT(1), SLOT(2), SLOT(3), SLOT(4), SLOT(5), SLOT(6), SLOT(7)
#define EACH_CASE(CASE) CASE(0) CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7)

// Every thread walks the used slots in order, grid-striding over each: `variables` declares a
// slot's loop variables (their names as the CASE macro's), `body` updates element i of it.
#define FOR_EACH_SLOT_ELEMENT(CASE, i, variables, body)                                                          \
    for (int slot = 0; slot < slots; ++slot) {                                                                   \
        variables;                                                                                               \
        switch (slot) {                                                                                          \
            EACH_CASE(CASE)                                                                                      \
            default: return;                                                                                     \
        }                                                                                                        \
        GRID_STRIDE_LOOP(i, n) { body; }                                                                         \
    }

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
#define ADAM_CASE(k)                                                                                             \
    case k:                                                                                                      \
        param = param##k, grad = grad##k, m = m##k, v = v##k, n = n##k, step_size = step_size##k,                \
        bias2_sqrt = bias2_sqrt##k;                                                                              \
        break;
#define ADAM_VARIABLES                                                                                           \
    SGD_VARIABLES;                                                                                               \
    acc_t *m, *v, step_size, bias2_sqrt

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_step(EACH_SLOT(SGD_SLOT), int slots, acc_t lr, acc_t weight_decay)
{
    FOR_EACH_SLOT_ELEMENT(SGD_CASE, i, SGD_VARIABLES,
                          param[i] = to_real(sgd_update(to_acc(param[i]), to_acc(grad[i]), lr, weight_decay)))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_momentum_step(EACH_SLOT(MOMENTUM_SLOT), int slots, acc_t lr, acc_t momentum, acc_t weight_decay, int nesterov)
{
    FOR_EACH_SLOT_ELEMENT(MOMENTUM_CASE, i, MOMENTUM_VARIABLES,
                          param[i] = to_real(sgd_momentum_update(to_acc(param[i]), to_acc(grad[i]), momentum_buf, i,
                                                                 lr, momentum, weight_decay, nesterov, first_step)))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adam_step(EACH_SLOT(ADAM_SLOT), int slots, acc_t one_minus_beta1, acc_t beta2, acc_t one_minus_beta2, acc_t eps,
          acc_t weight_decay)
{
    FOR_EACH_SLOT_ELEMENT(ADAM_CASE, i, ADAM_VARIABLES,
                          param[i] = to_real(adam_update(to_acc(param[i]), to_acc(grad[i]), m, v, i, step_size,
                                                         bias2_sqrt, one_minus_beta1, beta2, one_minus_beta2, eps,
                                                         weight_decay)))
}

#define UNSCALE_SLOT(k) REAL* __restrict__ grad##k, long long n##k
#define UNSCALE_CASE(k)                                                                                          \
    case k:                                                                                                      \
        grad = grad##k, n = n##k;                                                                                \
        break;
#define UNSCALE_VARIABLES                                                                                        \
    REAL* grad;                                                                                                  \
    long long n

__device__ __forceinline__ bool unscaled_is_finite(REAL* grad, long long i, acc_t inverse, int check_after)
{
    const acc_t g = to_acc(grad[i]);
    const REAL out = to_real(g * inverse);
    grad[i] = out;
    return isfinite(g) && (!check_after || isfinite(to_acc(out)));
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
unscale_grads(EACH_SLOT(UNSCALE_SLOT), int slots, int* __restrict__ found, acc_t inverse, int check_after)
{
    bool finite = true;
    FOR_EACH_SLOT_ELEMENT(UNSCALE_CASE, i, UNSCALE_VARIABLES,
                          finite &= unscaled_is_finite(grad, i, inverse, check_after))
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
        param = param##k, grad = grad##k, m = m##k, v = v##k, n = n##k, step_size = step_size##k,                \
        bias2_sqrt = bias2_sqrt##k, master = master##k;                                                          \
        break;

#define MASTER_UPDATE(new_value)                                                                                 \
    const acc_t p = new_value;                                                                                   \
    master[i] = p;                                                                                               \
    param[i] = to_real(p)

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_step_master(EACH_SLOT(SGD_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t lr, acc_t weight_decay)
{
    FOR_EACH_SLOT_ELEMENT(SGD_MASTER_CASE, i, SGD_VARIABLES; acc_t* master,
                          MASTER_UPDATE(sgd_update(master[i], to_acc(grad[i]), lr, weight_decay)))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_momentum_step_master(EACH_SLOT(MOMENTUM_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t lr, acc_t momentum,
                         acc_t weight_decay, int nesterov)
{
    FOR_EACH_SLOT_ELEMENT(MOMENTUM_MASTER_CASE, i, MOMENTUM_VARIABLES; acc_t* master,
                          MASTER_UPDATE(sgd_momentum_update(master[i], to_acc(grad[i]), momentum_buf, i, lr, momentum,
                                                            weight_decay, nesterov, first_step)))
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adam_step_master(EACH_SLOT(ADAM_SLOT), EACH_SLOT(MASTER_SLOT), int slots, acc_t one_minus_beta1, acc_t beta2,
                 acc_t one_minus_beta2, acc_t eps, acc_t weight_decay)
{
    FOR_EACH_SLOT_ELEMENT(ADAM_MASTER_CASE, i, ADAM_VARIABLES; acc_t* master,
                          MASTER_UPDATE(adam_update(master[i], to_acc(grad[i]), m, v, i, step_size, bias2_sqrt,
                                                    one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay)))
}
#endif
