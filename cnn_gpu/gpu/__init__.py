"""Launch code of the CUDA kernels, one module per kernel family, shared by the "cuda" backend
(CuPy arrays, cupy.RawModule) and the "emu" backend (NumPy arrays, cnn_gpu.emu.RawModule).

Each function takes the backend name first and arrays already validated by cnn_gpu.functional
(C-contiguous, one dtype, shapes checked against the geometry); it allocates its outputs with
backend.array_module(be) and launches through backend.launch. No host synchronisation.

Contract with cnn_gpu.functional (g is a geometry object from cnn_gpu.functional.geometry):
  conv.fprop(be, x, w, bias, g, activation=None) -> y            (activation None or "relu")
  conv.dgrad(be, dy, w, g) -> dx
  conv.wgrad(be, dy, x, g) -> dw
  conv.bgrad(be, dy) -> db                                        (sum over N, P, Q)
  pool.max_forward(be, x, g) -> (y, indices int32)
  pool.max_backward(be, dy, indices, g) -> dx
  pool.avg_forward(be, x, g) -> y
  pool.avg_backward(be, dy, g) -> dx
  elementwise.forward(be, name, x, param) -> y                    (name: relu, leaky_relu, sigmoid, tanh)
  elementwise.backward(be, name, dy, x, param) -> dx
  elementwise.bias_add(be, y, bias) -> y                          (in place: y[:, c, ...] += bias[c], NCHW or (rows, F))
  linear.forward(be, x, w, bias) -> y
  linear.backward(be, dy, x, w, bias: bool) -> (dx, dw, db or None)
  loss.cross_entropy(be, logits, labels int64) -> (loss float, dlogits)
  loss.mse(be, pred, target) -> (loss float, dpred)
  reduce.channel_sum(be, a, outer, channels, inner) -> (channels,)   a viewed as (outer, channels, inner);
                                                   deterministic fixed-order tree sum (bias grads, split-K)
  optim.sgd_step(be, param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, first_step)
        (in place; momentum_buf None when momentum == 0; PyTorch's SGD without dampening)
  optim.adam_step(be, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)   (in place, PyTorch's Adam)
"""
