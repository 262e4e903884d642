"""Launch code of kernels/loss.cu: softmax cross entropy and negative log likelihood (PyTorch's
options), and the element-wise losses (squared error, L1, smooth L1, Huber, KL divergence, binary cross
entropy on probabilities or logits), each returning (loss, gradient). Reductions over rows are fixed-order
(reduce.channel_sum), so results are bit-identical run to run. For reduction "mean" or "sum" the loss is a Python float
(reading it back is the one host synchronisation, which the API's float loss requires) or, with
as_array, that value as a 0-d float64 array left on the device; for "none" it is the per-row
(per-element) array, with no synchronisation.

The kernels compute in backend.compute_dtype (FP32 for float16) and keep the per-row values they
hand to reduce.channel_sum in it; a float16 gradient (and "none" loss array) is rounded once."""
from __future__ import annotations

import numpy as np

from .. import backend
from . import reduce
from ._grid import (THREADS, acc, blocks_for, check_int_walk, elementwise_blocks, i32, i64, row_threads,
                    row_walk_blocks, split_row_lanes)
from .conv import device_sms
from .reduce import MAX_GRID_X

CLASS_LIMIT = 2**31   # classes are an int in the kernels


def mean_of(total, divisor) -> float:
    """total / divisor as a float with IEEE rules: a mean over nothing counted (divisor 0) is NaN, as
    PyTorch's is. (Shared with the NumPy path of cnn_gpu.functional.loss.)"""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(float(total)) / float(divisor))   # float(): CuPy scalars too


def device_mean(xp, total, divisor):
    """mean_of's value without reading back: total / divisor (a (1,) array, and a (1,) array or a
    number) as a 0-d float64 array where they are."""
    with np.errstate(divide="ignore", invalid="ignore"):   # the emulator's NumPy: IEEE results, as mean_of's
        return backend.device_call(xp.true_divide, total, divisor, dtype=np.float64, takes_out=True).reshape(())


def index_mean_divisor(xp, divisor, label_smoothing: float):
    """The divisor of the mean over class indices (the counted targets' summed weights, a NumPy
    scalar or a device array), NaN where it is 0 with label smoothing: PyTorch divides its NLL and
    smoothing terms apart, and the NLL term is then 0/0, where one division of their sum gives inf.
    (Shared with the NumPy path of cnn_gpu.functional.loss.)"""
    if label_smoothing > 0:
        return backend.device_call(lambda: xp.where(divisor == 0, divisor.dtype.type(np.nan), divisor))
    return divisor


def _total(be, values):
    """The fixed-order sum of a 1-D array on the device, as a (1,) array."""
    return reduce.channel_sum(be, values, 1, 1, values.size)


def cross_entropy(be, logits, labels, probabilities, weight, *, classes, inner, ignore_index, label_smoothing,
                  reduction, as_array=False):
    """Cross entropy of logits (N, C, d1..dk) (C-contiguous; classes = C, inner = d1*...*dk, at
    least one row) against class indices `labels` (int64, one per row, rows = N*inner) or class
    probabilities `probabilities` (the logits' shape), the other one None; `weight` (C,) or None.
    Returns (loss, dlogits): loss a float for "mean"/"sum" (a 0-d float64 device array with
    as_array), the (rows,) per-row losses for "none" (as_array or not); dlogits the gradient of the
    loss (of the sum of the per-row losses for "none")."""
    if classes >= CLASS_LIMIT:
        raise ValueError(f"cross_entropy kernels take fewer than 2^31 classes, got {classes}")
    rows = logits.size // classes
    lanes = 0 if inner == 1 else split_row_lanes(rows, classes, inner, logits.dtype.itemsize, device_sms(be))
    if inner == 1:   # cross_entropy_rows: a block walks a row's classes
        check_int_walk(classes, row_threads(classes))
    elif lanes:      # cross_entropy_split: a block's segments walk a position's classes with int indices
        check_int_walk(classes, THREADS // lanes)
    xp = backend.array_module(be)
    dtype = logits.dtype
    compute = backend.compute_dtype(dtype)
    is_probability = probabilities is not None
    if labels is None:
        labels = xp.zeros(1, dtype=np.int64)   # never read
    elif labels.dtype != np.int64:
        raise TypeError(f"labels must be int64 for the kernels, got {labels.dtype}")
    if reduction == "mean" and not is_probability:
        divisor = index_mean_divisor(xp, _summed_target_weights(be, labels, weight, logits, classes, ignore_index),
                                     label_smoothing)
        host_divisor = None      # read back with the total, in one transfer
    else:
        host_divisor = rows if reduction == "mean" else 1
        divisor = xp.full((1,), host_divisor, dtype=compute)
    dlogits = xp.empty(logits.shape, dtype=logits.dtype)   # C order whatever the input's layout
    row_loss = xp.empty((rows,), dtype=compute)
    args = (logits, labels, probabilities if is_probability else logits, logits if weight is None else weight,
            divisor, dlogits, row_loss, *i64(rows), *i32(classes), *i64(inner, ignore_index),
            *i32(is_probability, weight is not None),
            *acc(dtype, 1 - label_smoothing, label_smoothing / classes))
    if inner == 1:
        backend.launch(be, "loss", dtype, "cross_entropy_rows", (min(rows, MAX_GRID_X),), (row_threads(classes),),
                       args)
    elif lanes:
        backend.launch(be, "loss", dtype, "cross_entropy_split", (min(-(-rows // lanes), MAX_GRID_X),), (THREADS,),
                       (*args, *i32(lanes)))
    else:
        backend.launch(be, "loss", dtype, "cross_entropy_positions", (blocks_for(rows),), (THREADS,), args)
    return _reduced(be, row_loss, dtype, reduction, divisor, host_divisor, as_array), dlogits


def _summed_target_weights(be, labels, weight, like, classes: int, ignore_index: int):
    """PyTorch's divisor of the mean over class indices, the summed weights w[label] of the counted
    targets (1 without class weights), as a (1,) compute-dtype device array (fixed-order sum)."""
    rows = labels.size
    target_weight = backend.array_module(be).empty((rows,), dtype=backend.compute_dtype(like.dtype))
    backend.launch(be, "loss", like.dtype, "cross_entropy_target_weights", (blocks_for(rows),), (THREADS,),
                   (labels, like if weight is None else weight, target_weight, *i64(rows), *i32(classes),
                    *i64(ignore_index), *i32(weight is not None)))
    return _total(be, target_weight)


def _reduced(be, values, dtype, reduction, divisor, host_divisor, as_array):
    """The loss of per-row (per-element) compute-dtype `values`: the array in `dtype` for "none",
    else their fixed-order sum over the divisor, `host_divisor` where it is known on the host,
    else the (1,) device array `divisor`, read back with the total in one transfer."""
    if reduction == "none":
        return backend.astype(values, dtype)
    xp = backend.array_module(be)
    total = _total(be, values)
    if as_array:
        return device_mean(xp, total, divisor if host_divisor is None else host_divisor)
    if host_divisor is not None:
        return mean_of(total[0], host_divisor)
    total, summed_weights = xp.concatenate((total, divisor)).tolist()
    return mean_of(total, summed_weights)


def _check_class_indices_for_kernels(op: str, labels, classes: int) -> None:
    """The kernels' terms for class indices: int64 labels, fewer than 2^31 classes (an int there)."""
    if classes >= CLASS_LIMIT:
        raise ValueError(f"{op} kernels take fewer than 2^31 classes, got {classes}")
    if labels.dtype != np.int64:
        raise TypeError(f"labels must be int64 for the kernels, got {labels.dtype}")


def nll(be, log_probs, labels, weight, *, classes, inner, ignore_index, reduction, as_array=False):
    """Negative log likelihood of log-probabilities (N, C, d1..dk) (laid out as cross_entropy's
    logits) against class indices `labels` (int64, one per row); `weight` (C,) or None. Returns
    (loss, dinput) as cross_entropy does; dinput is zero but at each counted row's target."""
    _check_class_indices_for_kernels("nll_loss", labels, classes)
    rows = log_probs.size // classes
    xp = backend.array_module(be)
    dtype = log_probs.dtype
    if reduction == "mean":
        divisor = _summed_target_weights(be, labels, weight, log_probs, classes, ignore_index)
        host_divisor = None
    else:
        host_divisor = 1
        divisor = xp.ones((1,), dtype=backend.compute_dtype(dtype))
    dinput = backend.device_call(xp.zeros, log_probs.shape, dtype=dtype)
    row_loss = xp.empty((rows,), dtype=backend.compute_dtype(dtype))
    backend.launch(be, "loss", dtype, "nll_rows", (blocks_for(rows),), (THREADS,),
                   (log_probs, labels, log_probs if weight is None else weight, divisor, dinput, row_loss,
                    *i64(rows), *i32(classes), *i64(inner, ignore_index), *i32(weight is not None)))
    return _reduced(be, row_loss, dtype, reduction, divisor, host_divisor, as_array), dinput


REGRESSION_KINDS = {"l1": 0, "smooth_l1": 1, "huber": 2, "mse": 3, "kl_div": 4, "kl_div_log_target": 5,
                    "soft_margin": 6, "hinge_embedding": 7, "margin_ranking": 8, "poisson_nll_log_input": 9,
                    "poisson_nll": 10, "gaussian_nll": 11}   # kernels/loss.cu's REGRESSION_*


def regression(be, kind, pred, target, weight, reduction, *, beta=0.0, mean_divisor=None, mean_over_weight=False,
               as_array=False, other=None, full=False):
    """An element-wise loss of regression_loss_rows (`kind` of REGRESSION_KINDS; beta: smooth L1's
    beta, Huber's delta, the margin of the margin losses, the Poisson and Gaussian NLL's eps; full:
    their constant terms) of pred and target (C-contiguous, shapes that broadcast to at least one
    element) with an optional weight of pred's shape -> (loss, dpred): the mean (over
    `mean_divisor`, by default the broadcast shape's element count, or over the summed weight with
    mean_over_weight) or sum as a float (a 0-d float64 device array with as_array), or the
    per-element array of the broadcast size for "none"; dpred the gradient of the loss (of the sum
    of the elements for "none"), summed over the axes pred was broadcast along. The kinds
    margin_ranking (input2) and gaussian_nll (var) take a third operand `other` (broadcast with pred
    and target) in weight's place and return (loss, dpred, dother)."""
    xp = backend.array_module(be)
    dtype, pred_shape = pred.dtype, pred.shape
    other_shape = None if other is None else other.shape
    compute = backend.compute_dtype(dtype)
    shape = np.broadcast_shapes(pred.shape, target.shape, () if other is None else other.shape)
    n = int(np.prod(shape))
    summed = pred_shape != shape or (other is not None and other_shape != shape)
    if summed:
        # the gradients are sums over the broadcast elements: theirs in the compute dtype (a float16
        # input's by the float32 build: the same FP32 math), rounded once after the sum
        pred, target, weight, other = (None if a is None else backend.astype(a, compute)
                                       for a in (pred, target, weight, other))
    if reduction == "mean" and mean_over_weight:
        host_divisor, grad_scale = None, 1
        divisor = _total(be, backend.astype(weight, compute).reshape(-1))
    else:
        host_divisor = (n if mean_divisor is None else mean_divisor) if reduction == "mean" else 1
        divisor, grad_scale = xp.ones((1,), dtype=compute), 1 / host_divisor
    pred, target, weight, other = (a if a is None or a.shape == shape else backend.device_call(
        lambda a=a: xp.ascontiguousarray(xp.broadcast_to(a, shape))) for a in (pred, target, weight, other))
    dpred = xp.empty(shape, dtype=pred.dtype)
    dother = xp.empty((1,) if other is None else shape, dtype=pred.dtype)   # written only with `other`
    loss = xp.empty((n,), dtype=compute)
    third = other if other is not None else (pred if weight is None else weight)
    backend.launch(be, "loss", pred.dtype, "regression_loss_rows", (elementwise_blocks(n),), (THREADS,),
                   (pred, target, third, dpred, dother, loss, *i64(n),
                    *i32(REGRESSION_KINDS[kind], weight is not None, full), *acc(pred.dtype, beta, grad_scale),
                    divisor))
    if summed:
        dpred = backend.astype(_sum_to_shape(be, dpred, pred_shape), dtype)
        if other is not None:
            dother = backend.astype(_sum_to_shape(be, dother, other_shape), dtype)
    reduced = _reduced(be, loss, dtype, reduction, divisor, host_divisor, as_array)
    return (reduced, dpred) if other is None else (reduced, dpred, dother)


def broadcast_axes(full_shape, shape) -> tuple:
    """The axes of full_shape along which `shape` is broadcast to it (those a gradient is summed
    over). (Shared with the NumPy path of cnn_gpu.functional.loss.)"""
    padded = (1,) * (len(full_shape) - len(shape)) + tuple(shape)
    return tuple(a for a in range(len(full_shape)) if padded[a] == 1 and full_shape[a] != 1)


def _sum_to_shape(be, grad, shape):
    """grad (a broadcast shape's elements) summed over the axes along which `shape` was broadcast to
    it, in fixed order (reduce.channel_sum), as an array of `shape`."""
    summed_axes = broadcast_axes(grad.shape, shape)
    kept_axes = tuple(a for a in range(grad.ndim) if a not in summed_axes)
    xp = backend.array_module(be)
    by_column = backend.device_call(lambda: xp.ascontiguousarray(grad.transpose(summed_axes + kept_axes)))
    rows = int(np.prod([grad.shape[a] for a in summed_axes]))
    return reduce.channel_sum(be, by_column, rows, grad.size // rows, 1).reshape(shape)


def _binary_cross_entropy_rows(be, input, target, weight, pos_weight, from_logits, grad_scale):
    """binary_cross_entropy_rows -> (per-element losses in the compute dtype, dinput scaled by grad_scale)."""
    n = input.size
    xp = backend.array_module(be)
    dinput = xp.empty(input.shape, dtype=input.dtype)
    loss = xp.empty((n,), dtype=backend.compute_dtype(input.dtype))
    backend.launch(be, "loss", input.dtype, "binary_cross_entropy_rows", (elementwise_blocks(n),), (THREADS,),
                   (input, target, input if weight is None else weight, input if pos_weight is None else pos_weight,
                    dinput, loss, *i64(n), *i32(from_logits, weight is not None, pos_weight is not None),
                    *acc(input.dtype, grad_scale)))
    return loss, dinput


def binary_cross_entropy(be, input, target, weight, pos_weight, reduction, from_logits, as_array=False):
    """Binary cross entropy of probabilities (or of logits, from_logits) `input` against `target`
    (same shape, C-contiguous, at least one element); weight and pos_weight None or of the input's
    shape (broadcast by the caller). Returns (loss, dinput) as regression's. On probabilities an input or
    target outside [0, 1] makes the loss NaN."""
    n = input.size
    loss, dinput = _binary_cross_entropy_rows(be, input, target, weight, pos_weight, from_logits,
                                              1 / n if reduction == "mean" else 1)
    return _reduced(be, loss, input.dtype, reduction, None, n if reduction == "mean" else 1, as_array), dinput


def multilabel_soft_margin(be, input, target, weight, classes, divisor, reduction, as_array=False):
    """PyTorch's multilabel soft margin loss of logits (..., classes) (C-contiguous, at least one
    element) against targets of their shape, weight None or of their shape: the per-element terms
    of binary_cross_entropy_rows (on logits, the gradient scaled by 1 / divisor: classes, times the
    samples for the mean), each sample's summed over its classes in fixed order (reduce.channel_sum)
    and divided by `classes` for "none" (the (samples,) losses, rounded once to input's dtype), or
    all summed over `divisor` for "mean"/"sum". Returns (loss, dinput) as regression's."""
    terms, dinput = _binary_cross_entropy_rows(be, input, target, weight, None, True, 1 / divisor)
    if reduction != "none":
        return _reduced(be, terms, input.dtype, reduction, None, divisor, as_array), dinput
    xp = backend.array_module(be)
    sample_sums = reduce.channel_sum(be, terms, 1, input.size // classes, classes)
    per_sample = backend.device_call(xp.true_divide, sample_sums, classes, dtype=sample_sums.dtype, takes_out=True)
    return backend.astype(per_sample, input.dtype), dinput


def multi_margin(be, input, labels, weight, *, classes, squared, margin, reduction, as_array=False):
    """PyTorch's multi-class hinge loss of input rows (rows, classes) (C-contiguous, at least one
    element) against class indices `labels` (int64, one a row); `weight` (classes,) or None; squared
    for p = 2. Returns (loss, dinput) as nll's: the (rows,) per-row losses for "none"."""
    _check_class_indices_for_kernels("multi_margin_loss", labels, classes)
    rows = input.size // classes
    xp = backend.array_module(be)
    dinput = xp.empty(input.shape, dtype=input.dtype)
    row_loss = xp.empty((rows,), dtype=backend.compute_dtype(input.dtype))
    divisor = rows if reduction == "mean" else 1
    backend.launch(be, "loss", input.dtype, "multi_margin_rows", (row_walk_blocks(rows, classes),), (THREADS,),
                   (input, labels, input if weight is None else weight, dinput, row_loss, *i64(rows),
                    *i32(classes, squared, weight is not None), *acc(input.dtype, margin, 1 / (classes * divisor))))
    return _reduced(be, row_loss, input.dtype, reduction, None, divisor, as_array), dinput


def cosine_embedding(be, input1, input2, target, *, margin, reduction, as_array=False):
    """PyTorch's cosine embedding loss of row pairs input1, input2 (rows, dim) (C-contiguous, at
    least one element) and targets (rows,) -> (loss, dinput1, dinput2), the loss as nll's."""
    rows = target.size
    xp = backend.array_module(be)
    dinput1, dinput2 = (xp.empty(input1.shape, dtype=input1.dtype) for _ in range(2))
    row_loss = xp.empty((rows,), dtype=backend.compute_dtype(input1.dtype))
    divisor = rows if reduction == "mean" else 1
    dim = input1.size // rows
    backend.launch(be, "loss", input1.dtype, "cosine_embedding_rows", (row_walk_blocks(rows, dim, int_walk=False),),
                   (THREADS,),
                   (input1, input2, target, dinput1, dinput2, row_loss, *i64(rows, dim),
                    *acc(input1.dtype, margin, 1 / divisor)))
    return _reduced(be, row_loss, input1.dtype, reduction, None, divisor, as_array), dinput1, dinput2


def triplet_margin(be, anchor, positive, negative, *, rows, margin, p, eps, swap, reduction, as_array=False):
    """PyTorch's triplet margin loss of rows (rows, dim) of anchors, positives and negatives
    (C-contiguous, one shape, at least one element) -> (loss, danchor, dpositive, dnegative), the
    loss as nll's."""
    xp = backend.array_module(be)
    grads = tuple(xp.empty(anchor.shape, dtype=anchor.dtype) for _ in range(3))
    row_loss = xp.empty((rows,), dtype=backend.compute_dtype(anchor.dtype))
    divisor = rows if reduction == "mean" else 1
    dim = anchor.size // rows
    backend.launch(be, "loss", anchor.dtype, "triplet_margin_rows", (row_walk_blocks(rows, dim, int_walk=False),),
                   (THREADS,),
                   (anchor, positive, negative, *grads, row_loss, *i64(rows, dim),
                    *i32(swap), *acc(anchor.dtype, p, margin, eps, 1 / divisor)))
    return (_reduced(be, row_loss, anchor.dtype, reduction, None, divisor, as_array), *grads)
