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
//    step_size = lr/(1 - beta1^t) and bias2_sqrt = sqrt(1 - beta2^t) from the step count t.

#include "common.cuh"

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_step(REAL* __restrict__ param, const REAL* __restrict__ grad, long long n, REAL lr, REAL weight_decay)
{
    GRID_STRIDE_LOOP(i, n) {
        const REAL p = param[i];
        param[i] = p - lr * (grad[i] + weight_decay * p);
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
sgd_momentum_step(REAL* __restrict__ param, const REAL* __restrict__ grad, REAL* __restrict__ momentum_buf,
                  long long n, REAL lr, REAL momentum, REAL weight_decay, int nesterov, int first_step)
{
    GRID_STRIDE_LOOP(i, n) {
        const REAL p = param[i];
        const REAL g = grad[i] + weight_decay * p;
        const REAL buf = first_step ? g : momentum * momentum_buf[i] + g;
        momentum_buf[i] = buf;
        param[i] = p - lr * (nesterov ? g + momentum * buf : buf);
    }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS, MIN_BLOCKS)
adam_step(REAL* __restrict__ param, const REAL* __restrict__ grad, REAL* __restrict__ m, REAL* __restrict__ v,
          long long n, REAL step_size, REAL bias2_sqrt, REAL beta1, REAL beta2, REAL eps, REAL weight_decay)
{
    GRID_STRIDE_LOOP(i, n) {
        const REAL p = param[i];
        const REAL g = grad[i] + weight_decay * p;
        const REAL m_new = m[i] + ((REAL)1 - beta1) * (g - m[i]);
        const REAL v_new = beta2 * v[i] + ((REAL)1 - beta2) * g * g;
        m[i] = m_new;
        v[i] = v_new;
        param[i] = p - step_size * m_new / (REAL_SQRT(v_new) / bias2_sqrt + eps);
    }
}
