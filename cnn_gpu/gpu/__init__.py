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
  pool.check_geometry(g)                                          (ValueError where the kernels' ints would overflow)
  pool.max_forward(be, x, g) -> (y, indices int32)
  pool.max_backward(be, dy, indices, g) -> dx
  pool.avg_forward(be, x, g) -> y
  pool.avg_backward(be, dy, g) -> dx
  elementwise.forward(be, name, x, param) -> y                    (name: one of elementwise.ACTIVATIONS)
  elementwise.backward(be, name, dy, x, param) -> dx             (param: a number, hardtanh's a (min, max) pair)
  elementwise.bias_add(be, y, bias) -> y                          (in place: y[:, c, ...] += bias[c], NCHW or (rows, F))
  linear.forward(be, x, w, bias) -> y
  linear.backward(be, dy, x, w, bias: bool, input_grad=True) -> (dx or None, dw, db or None)
  loss.cross_entropy(be, logits, labels int64 | None, probabilities | None, weight | None, *, classes, inner,
                     ignore_index, label_smoothing, reduction) -> (loss float or per-row array, dlogits)
  loss.regression(be, kind, pred, target, weight, reduction) -> (loss float or per-element array, dpred)
  reduce.channel_sum(be, a, outer, channels, inner) -> (channels,)   a viewed as (outer, channels, inner);
                                                   deterministic fixed-order tree sum (bias grads, split-K)
  optim.sgd_step(be, param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, first_step, dampening=0,
                 maximize=False, *, master=None)
        (in place; momentum_buf None when momentum == 0; PyTorch's SGD)
  optim.adam_step(be, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled_decay=0,
                  maximize=False, *, v_max=None, master=None)
        (in place, PyTorch's Adam, or with decoupled_decay its AdamW, with v_max AMSGrad; master: a float16
        parameter's FP32 copy, state arrays in FP32 then)
  optim.sgd_steps(be, [(param, grad, master or None), ...], lr, weight_decay, maximize=False)
  optim.sgd_momentum_steps(be, [(param, grad, momentum_buf, first_step, master or None), ...], lr, momentum,
                           weight_decay, nesterov, dampening=0, maximize=False)
  optim.adam_steps(be, [(param, grad, m, v, v_max or None, step, master or None), ...], lr, beta1, beta2, eps,
                   weight_decay,
                   decoupled_decay=0, maximize=False)
  optim.rmsprop_step(be, param, grad, square_avg, grad_avg, momentum_buf, lr, alpha, eps, weight_decay, momentum,
                     maximize=False, *, master=None)
        (in place, PyTorch's RMSprop; grad_avg None unless centered, momentum_buf None unless momentum > 0)
  optim.rmsprop_steps(be, [(param, grad, square_avg, grad_avg or None, momentum_buf or None, master or None), ...],
                      lr, alpha, eps, weight_decay, momentum, maximize=False)
        (the same updates of several parameters of one dtype, 8 a launch)
  optim.adagrad_step(be, param, grad, sum, step, lr, lr_decay, weight_decay, eps, maximize=False, *, master=None)
  optim.adamax_step(be, param, grad, exp_avg, exp_inf, step, lr, beta1, beta2, eps, weight_decay, maximize=False,
                    *, master=None)
  optim.nadam_step(be, param, grad, exp_avg, exp_avg_sq, step, grad_step, avg_step, lr, beta1, beta2, eps,
                   weight_decay, decoupled_decay=0, maximize=False, *, master=None)
        (grad_step, avg_step: cnn_gpu.optim.nadam_step_sizes' for the step)
  optim.radam_step(be, param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                   decoupled_decay=0, maximize=False, *, master=None)
  optim.adadelta_step(be, param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay, maximize=False, *,
                      master=None)
        (in place, PyTorch's Adagrad, Adamax, NAdam, RAdam, Adadelta; step counting from 1)
  optim.adagrad_steps / adamax_steps / nadam_steps / radam_steps / adadelta_steps(be, [(param, grad, <the
        state arrays and per-parameter arguments above, in order>, master or None), ...], <the rest>)
        (the same updates of several parameters of one dtype, 8 a launch)
  batch_norm.stats(be, x, running_mean, running_var, factor, eps) -> (mean, invstd)   x viewed as (N, C, HW);
        one-pass (Welford/Chan) fixed-order per-channel statistics; blends running_mean/var in place unless None
  batch_norm.forward(be, x, mean, scale_source, weight, bias, eps, from_variance, activation) -> y
  batch_norm.backward(be, dy, x, mean, scale_source, weight, bias, eps, from_variance, training, activation)
        -> (dx, dweight, dbias)           (scale_source: invstd, or a variance when from_variance;
                                           activation: None, "relu", "relu6", "hardswish" or "silu")
  row_norm.forward(be, x, layout, weight, bias, eps, write_y=True, centered=True) -> (y or None, mean, invstd)
        GroupNorm / LayerNorm / RMSNorm (centered=False: mean 0): x as layout.rows rows (row_norm.RowLayout),
        a block a row or, few rows, a slice of one (row_norm.plan); statistics in acc_t
  row_norm.backward(be, dy, x, layout, mean, invstd, weight, need_parameter_grads, centered=True)
        -> (dx, dweight, dbias)           (dweight, dbias None without need_parameter_grads; fixed-order sums)
  dropout.apply(be, x, seed, step, threshold, scale) -> y         (Philox mask of (seed, step, element))
  dropout.apply_planes(be, x, seed, step, threshold, scale) -> y  (one Philox number per (n, c) plane)
  softmax.forward(be, x, (outer, size, inner), log) -> y         (softmax, or log_softmax where log, over `size`)
  softmax.backward(be, dy, y, (outer, size, inner), log) -> dx   (from the forward OUTPUT y)
  prelu.forward(be, x, weight, (outer, channels, inner)) -> y
  prelu.backward(be, dy, x, weight, (outer, channels, inner)) -> (dx, dweight)   (dweight by reduce's channel sums)
  fold.unfold(be, x, g) -> cols                                (g a functional.folding.FoldGeometry; im2col)
  fold.fold(be, cols, g) -> y                                  (col2im, a deterministic gather)
  local_response_norm.forward(be, x, (N, C, inner), size, alpha, beta, k) -> y
  local_response_norm.backward(be, dy, x, (N, C, inner), size, alpha, beta, k) -> dx
  distance.normalize(be, x, (outer, size, inner), p, eps) -> y, normalize_backward(be, dy, x, ...) -> dx
  distance.cosine_similarity(be, x1, x2, view, eps) -> (outer, inner); cosine_similarity_backward -> (dx1, dx2)
  distance.pairwise_distance(be, x1, x2, rows, size, p, eps) -> (rows,); pairwise_distance_backward -> (dx1, dx2)
  adaptive_pool.forward(be, x, out_size) -> y
  adaptive_pool.backward(be, dy, x_shape) -> dx                   (deterministic gather)
  adaptive_pool.max_forward(be, x, out_size) -> (y, indices)      (indices int32, h * W + w in the plane)
  adaptive_pool.max_backward(be, dy, indices, x_shape) -> dx      (deterministic gather)
  fractional_pool.forward(be, x, samples, kernel_size, out_size) -> (y, indices)   (windows from the (N, C, 2 | 3)
        samples in [0, 1); indices int32, flat in the plane)
  fractional_pool.backward(be, dy, indices, x_shape, kernel_size) -> dx   (deterministic gather over the outputs
        that can reach each pixel: no samples)
  upsample.forward(be, mode, x, out_size, axis_params, align_corners=False) -> y
        (mode "nearest", "nearest-exact", "bilinear" or "bicubic"; axis_params per axis: the nearest
         modes' FP32 scale or bilinear's and bicubic's ratio)
  upsample.backward(be, mode, dy, x_shape, axis_params, align_corners=False) -> dx   (deterministic gather)
  pad.forward(be, x, planes, axes, mode, value, out_shape) -> y  (planes x up to 3 axes a launch)
  pad.backward(be, dy, planes, axes, mode, x_shape) -> dx         (deterministic gather)
  augment.random_crop_flip(be, x, seed, step, pad, flip) -> y     (per-image Philox crop offsets and flip)
  unpool.forward(be, x, indices, out_shape) -> y                  (indices int32 in [-1, out plane), x's shape; the last
        input naming a position wins: an integer atomicMax claim, then a gather)
  unpool.backward(be, dy, indices) -> dx                          (deterministic gather of dy at the indices)
"""
