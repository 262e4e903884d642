"""Launch code of kernels/loss.cu: softmax cross entropy (PyTorch's options) and mean squared error,
each returning (loss, gradient). Reductions over rows are fixed-order (reduce.channel_sum), so
results are bit-identical run to run. For reduction "mean" or "sum" the loss is a Python float
(reading it back is the one host synchronisation, which the API's float loss requires) or, with
as_array, that value as a 0-d float64 array left on the device; for "none" it is the per-row
(per-element) array, with no synchronisation.

The kernels compute in backend.compute_dtype (FP32 for float16) and keep the per-row values they
hand to reduce.channel_sum in it; a float16 gradient (and "none" loss array) is rounded once."""
from __future__ import annotations

import numpy as np

from .. import backend
from . import reduce
from ._grid import THREADS, acc, blocks_for, elementwise_blocks, i32, row_threads
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
    xp = backend.array_module(be)
    dtype = logits.dtype
    compute = backend.compute_dtype(dtype)
    is_probability = probabilities is not None
    if labels is None:
        labels = xp.zeros(1, dtype=np.int64)   # never read
    elif labels.dtype != np.int64:
        raise TypeError(f"labels must be int64 for the kernels, got {labels.dtype}")
    if reduction == "mean" and not is_probability:
        # PyTorch's mean over class indices divides by the summed weights of the counted targets
        target_weight = xp.empty((rows,), dtype=compute)
        backend.launch(be, "loss", dtype, "cross_entropy_target_weights", (blocks_for(rows),), (THREADS,),
                       (labels, logits if weight is None else weight, target_weight, np.int64(rows),
                        *i32(classes), np.int64(ignore_index), *i32(weight is not None)))
        divisor = index_mean_divisor(xp, _total(be, target_weight), label_smoothing)
        host_divisor = None      # read back with the total, in one transfer
    else:
        host_divisor = rows if reduction == "mean" else 1
        divisor = xp.full((1,), host_divisor, dtype=compute)
    dlogits = xp.empty(logits.shape, dtype=logits.dtype)   # C order whatever the input's layout
    row_loss = xp.empty((rows,), dtype=compute)
    args = (logits, labels, probabilities if is_probability else logits, logits if weight is None else weight,
            divisor, dlogits, row_loss, np.int64(rows), *i32(classes), np.int64(inner), np.int64(ignore_index),
            *i32(is_probability, weight is not None),
            *acc(dtype, 1 - label_smoothing, label_smoothing / classes))
    if inner == 1:
        backend.launch(be, "loss", dtype, "cross_entropy_rows", (min(rows, MAX_GRID_X),), (row_threads(classes),),
                       args)
    else:
        backend.launch(be, "loss", dtype, "cross_entropy_positions", (blocks_for(rows),), (THREADS,), args)
    if reduction == "none":
        return backend.astype(row_loss, dtype), dlogits
    total = _total(be, row_loss)
    if as_array:
        return device_mean(xp, total, divisor if host_divisor is None else host_divisor), dlogits
    if host_divisor is not None:
        return mean_of(total[0], host_divisor), dlogits
    total, summed_weights = xp.concatenate((total, divisor)).tolist()
    return mean_of(total, summed_weights), dlogits


def mse(be, pred, target, reduction, as_array=False):
    """Squared error of pred and target (same shape, C-contiguous, at least one element) -> (loss,
    dpred): loss the mean or sum as a float (a 0-d float64 device array with as_array), or the
    per-element array (pred.size,) for "none"; dpred the gradient of the loss (of the sum of the
    elements for "none")."""
    n = pred.size
    xp = backend.array_module(be)
    dpred = xp.empty(pred.shape, dtype=pred.dtype)
    squared = xp.empty((n,), dtype=backend.compute_dtype(pred.dtype))
    backend.launch(be, "loss", pred.dtype, "mse_rows", (elementwise_blocks(n),), (THREADS,),
                   (pred, target, dpred, squared, np.int64(n), *acc(pred.dtype, 2 / n if reduction == "mean" else 2)))
    if reduction == "none":
        return backend.astype(squared, pred.dtype), dpred
    divisor = n if reduction == "mean" else 1
    if as_array:
        return device_mean(xp, _total(be, squared), divisor), dpred
    return mean_of(_total(be, squared)[0], divisor), dpred
