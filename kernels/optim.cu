// Optimizer updates, each one fused kernel, in place (PyTorch's rules).
//
// Not a GEMM: one thread per element, 256-thread blocks, grid-stride loop over the 64-bit flat
// index; every element reads its parameter, gradient and state once and writes them once, with no
// host synchronisation. SGD with momentum (the training loop's optimizer) updates up to 8
// parameters in one launch (MOMENTUM_SLOTS; ResNet-18's 62 parameter arrays: 8 launches, not 62):
// slot k holds one parameter's arrays, its size n_k and whether it takes its first step, and
// every thread walks the used slots in order, grid-striding over each (the grid is the largest
// slot's); an unused slot is n = 0. The other updates take one launch per parameter.
//  * sgd_step: g = grad + weight_decay*param; param -= lr*g (no momentum state).
//  * sgd_momentum_step (no dampening): g = grad + weight_decay*param; buf = g on the first step,
//    else momentum*buf + g; param -= lr*(nesterov ? g + momentum*buf : buf).
//  * adam_step (L2 weight decay as torch.optim.Adam, not AdamW): g = grad + weight_decay*param;
//    m += (1-beta1)(g - m); v = beta2*v + (1-beta2)*g*g;
//    param -= step_size * m / (sqrt(v)/bias2_sqrt + eps), where the host computes
//    step_size = lr/(1 - beta1^t) and bias2_sqrt = sqrt(1 - beta2^t) from the step count t, and
//    1-beta1, 1-beta2 in double (as PyTorch: in FP32, 1 - 0.999 would be off by 1e-5 relative).
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

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_step(REAL* __restrict__ param, const REAL* __restrict__ grad, long long n, acc_t lr, acc_t weight_decay)
{
    GRID_STRIDE_LOOP(i, n) {
        param[i] = to_real(sgd_update(to_acc(param[i]), to_acc(grad[i]), lr, weight_decay));
    }
}

#define MOMENTUM_SLOT(k)                                                                                         \
    REAL* __restrict__ param##k, const REAL* __restrict__ grad##k, acc_t* __restrict__ momentum_buf##k,          \
        long long n##k, int first_step##k
#define MOMENTUM_SLOTS                                                                                           \
    MOMENTUM_SLOT(0), MOMENTUM_SLOT(1), MOMENTUM_SLOT(2), MOMENTUM_SLOT(3), MOMENTUM_SLOT(4), MOMENTUM_SLOT(5),  \
        MOMENTUM_SLOT(6), MOMENTUM_SLOT(7)
// slot k's pointers and size into the loop's variables (a switch: an array of pointers indexed by
// the slot would live in local memory)
#define MOMENTUM_SLOT_CASE(k)                                                                                    \
    case k:                                                                                                      \
        param = param##k, grad = grad##k, momentum_buf = momentum_buf##k, n = n##k, first_step = first_step##k;  \
        break;
#define MOMENTUM_SLOT_SWITCH(slot)                                                                               \
    switch (slot) {                                                                                              \
        MOMENTUM_SLOT_CASE(0) MOMENTUM_SLOT_CASE(1) MOMENTUM_SLOT_CASE(2) MOMENTUM_SLOT_CASE(3)                  \
        MOMENTUM_SLOT_CASE(4) MOMENTUM_SLOT_CASE(5) MOMENTUM_SLOT_CASE(6) MOMENTUM_SLOT_CASE(7)                  \
        default: return;                                                                                         \
    }

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_momentum_step(MOMENTUM_SLOTS, int slots, acc_t lr, acc_t momentum, acc_t weight_decay, int nesterov)
{
    for (int slot = 0; slot < slots; ++slot) {
        REAL* param;
        const REAL* grad;
        acc_t* momentum_buf;
        long long n;
        int first_step;
        MOMENTUM_SLOT_SWITCH(slot)
        GRID_STRIDE_LOOP(i, n) {
            param[i] = to_real(sgd_momentum_update(to_acc(param[i]), to_acc(grad[i]), momentum_buf, i, lr, momentum,
                                                   weight_decay, nesterov, first_step));
        }
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adam_step(REAL* __restrict__ param, const REAL* __restrict__ grad, acc_t* __restrict__ m, acc_t* __restrict__ v,
          long long n, acc_t step_size, acc_t bias2_sqrt, acc_t one_minus_beta1, acc_t beta2, acc_t one_minus_beta2,
          acc_t eps, acc_t weight_decay)
{
    GRID_STRIDE_LOOP(i, n) {
        param[i] = to_real(adam_update(to_acc(param[i]), to_acc(grad[i]), m, v, i, step_size, bias2_sqrt,
                                       one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay));
    }
}

#if REAL_IS_HALF
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_step_master(REAL* __restrict__ param, acc_t* __restrict__ master, const REAL* __restrict__ grad, long long n,
                acc_t lr, acc_t weight_decay)
{
    GRID_STRIDE_LOOP(i, n) {
        const acc_t p = sgd_update(master[i], to_acc(grad[i]), lr, weight_decay);
        master[i] = p;
        param[i] = to_real(p);
    }
}

#define MOMENTUM_MASTER_SLOT(k) acc_t* __restrict__ master##k
#define MOMENTUM_MASTER_SLOTS                                                                                    \
    MOMENTUM_MASTER_SLOT(0), MOMENTUM_MASTER_SLOT(1), MOMENTUM_MASTER_SLOT(2), MOMENTUM_MASTER_SLOT(3),          \
        MOMENTUM_MASTER_SLOT(4), MOMENTUM_MASTER_SLOT(5), MOMENTUM_MASTER_SLOT(6), MOMENTUM_MASTER_SLOT(7)
#define MASTER_SLOT_CASE(k)                                                                                      \
    case k:                                                                                                      \
        master = master##k;                                                                                      \
        break;

// the slots as sgd_momentum_step's, each parameter's FP32 master copy in master_k
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_momentum_step_master(MOMENTUM_SLOTS, MOMENTUM_MASTER_SLOTS, int slots, acc_t lr, acc_t momentum,
                         acc_t weight_decay, int nesterov)
{
    for (int slot = 0; slot < slots; ++slot) {
        REAL* param;
        const REAL* grad;
        acc_t* momentum_buf;
        acc_t* master;
        long long n;
        int first_step;
        MOMENTUM_SLOT_SWITCH(slot)
        switch (slot) {
            MASTER_SLOT_CASE(0) MASTER_SLOT_CASE(1) MASTER_SLOT_CASE(2) MASTER_SLOT_CASE(3)
            MASTER_SLOT_CASE(4) MASTER_SLOT_CASE(5) MASTER_SLOT_CASE(6) MASTER_SLOT_CASE(7)
            default: return;
        }
        GRID_STRIDE_LOOP(i, n) {
            const acc_t p = sgd_momentum_update(master[i], to_acc(grad[i]), momentum_buf, i, lr, momentum,
                                                weight_decay, nesterov, first_step);
            master[i] = p;
            param[i] = to_real(p);
        }
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adam_step_master(REAL* __restrict__ param, acc_t* __restrict__ master, const REAL* __restrict__ grad,
                 acc_t* __restrict__ m, acc_t* __restrict__ v, long long n, acc_t step_size, acc_t bias2_sqrt,
                 acc_t one_minus_beta1, acc_t beta2, acc_t one_minus_beta2, acc_t eps, acc_t weight_decay)
{
    GRID_STRIDE_LOOP(i, n) {
        const acc_t p = adam_update(master[i], to_acc(grad[i]), m, v, i, step_size, bias2_sqrt, one_minus_beta1,
                                    beta2, one_minus_beta2, eps, weight_decay);
        master[i] = p;
        param[i] = to_real(p);
    }
}
#endif
