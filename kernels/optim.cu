// Optimizer updates, each one fused kernel over a parameter tensor, in place (PyTorch's rules).
//
// Not a GEMM: one thread per element, 256-thread blocks, grid-stride loop over the 64-bit flat
// index; every element reads its parameter, gradient and state once and writes them once, so an
// optimizer step costs one launch per parameter and no host synchronisation.
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

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_momentum_step(REAL* __restrict__ param, const REAL* __restrict__ grad, acc_t* __restrict__ momentum_buf,
                  long long n, acc_t lr, acc_t momentum, acc_t weight_decay, int nesterov, int first_step)
{
    GRID_STRIDE_LOOP(i, n) {
        param[i] = to_real(sgd_momentum_update(to_acc(param[i]), to_acc(grad[i]), momentum_buf, i, lr, momentum,
                                               weight_decay, nesterov, first_step));
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

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_momentum_step_master(REAL* __restrict__ param, acc_t* __restrict__ master, const REAL* __restrict__ grad,
                         acc_t* __restrict__ momentum_buf, long long n, acc_t lr, acc_t momentum, acc_t weight_decay,
                         int nesterov, int first_step)
{
    GRID_STRIDE_LOOP(i, n) {
        const acc_t p = sgd_momentum_update(master[i], to_acc(grad[i]), momentum_buf, i, lr, momentum, weight_decay,
                                            nesterov, first_step);
        master[i] = p;
        param[i] = to_real(p);
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
