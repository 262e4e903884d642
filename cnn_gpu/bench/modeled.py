"""`--device model:SPEC`: rows estimated by the roofline model (cnn_gpu.roofline) on a GPU spec instead
of measured. The convolution passes are modeled launch by launch from their plans, in each math
mode on what that mode runs (tf32: the tensor-core plans, their % of peak of the dense TF32
peak); pooling, cross entropy and bias additions by their compulsory traffic alone (memory-bound);
a training step as the sum of the launches it makes (_train_step states what it counts). Compulsory
traffic is each launch's distinct bytes read plus written, every array argument counted (indices,
targets, weights, statistics, a split reduction's partials and arrival counts), as the emulator's
profile counts them (tests/test_modeled_traffic.py holds every launch of every case but the
convolution passes and the training step to that count, byte for byte). float16
rows count 2 bytes per element; the % of peak of one whose FLOPs run on tensor cores is of the
dense FP16 tensor-core peak, of any other of the FP32 FMA peak."""
from __future__ import annotations

import math

import numpy as np

from .. import backend, roofline
from ..gpu._arrivals import scratch_bytes
from .devices import Device
from .rows import Row

PREFIX = "model:"
NOT_MODELED = {}


def is_model(name: str) -> bool:
    return name.startswith(PREFIX)


class ModelDevice(Device):
    """Estimates instead of timings; run_cases asks it for rows (model_row) and times nothing."""
    modeled = True

    def __init__(self, key: str):
        self.spec = roofline.spec(key)
        self.name = PREFIX + self.spec.key
        self.note = (f"roofline MODEL of {self.spec.name} ({self.spec.arch}, {self.spec.source}), not a measurement; "
                     "README, \"Performance model\"")

    def math_unsupported(self, math: str) -> str:
        try:
            roofline.has_tensor_cores(self.spec)
        except ValueError as err:
            return str(err) if math == "tf32" else ""
        return ""

    def peak_flops(self, dtype, math: str = "fp32", on_tensor_cores: bool = True) -> float:
        """The peak a row's % refers to: the dense TF32 peak for a float32 row in "tf32" on a GPU with
        TF32 tensor cores, the dense FP16 tensor-core peak for a float16 row whose FLOPs run on
        tensor cores, else the dtype's FMA peak (float16: the FP32 lanes its math runs on)."""
        if math == "tf32" and np.dtype(dtype) == np.float32 and roofline.has_tensor_cores(self.spec):
            return self.spec.tf32_peak_flops
        if np.dtype(dtype) == np.float16 and on_tensor_cores:
            return self.spec.fp16_peak_flops
        return self.spec.peak_flops(dtype)

    def model_row(self, case, dtype, math: str = "fp32") -> Row | None:
        if case.op in NOT_MODELED:
            self.skipped[case.op] = NOT_MODELED[case.op]
            return None
        try:
            estimates = case_estimates(case, self.spec, dtype, math)
        except ValueError as err:   # a spec without the peak its kernels run at (model:gpu)
            self.skipped[f"{case.op} {np.dtype(dtype).name}"] = f"has no rows: {err}"
            return None
        seconds = sum(e.seconds for e in estimates)
        longest = max(estimates, key=lambda e: e.seconds)
        gflops = case.flops / seconds / 1e9 if case.flops else None
        return Row(case.op, case.label, self.name, np.dtype(dtype).name, None, 0, note=self.note, flops=case.flops,
                   modeled=True, model_ms=seconds * 1e3, model_gflops=gflops,
                   model_pct_peak=None if gflops is None else 100 * gflops * 1e9 / self.peak_flops(
                       dtype, math, any(e.pipe != "fma" for e in estimates)),
                   model_bound=longest.bound, model_launches=[e.as_dict() for e in estimates])


# the passes each conv op runs: F.conv2d is fprop with bias; F.conv2d_backward is dgrad, wgrad and
# the bias gradient; F.conv_transpose2d is the conv's dgrad with a bias over its output
CONV_PASSES = {"conv2d": ("fprop",), "conv2d_dgrad": ("dgrad",), "conv2d_wgrad": ("wgrad",),
               "conv2d_fwd_bwd": ("fprop", "dgrad", "wgrad"), "conv_transpose2d": ("dgrad",)}


def _conv(case, spec, dtype, math) -> list:
    g = case.shape.geometry()
    estimates = [estimate for pass_name in CONV_PASSES[case.op]
                 for estimate in roofline.model_conv(pass_name, g, dtype, spec,
                                                     bias=pass_name == "fprop" or case.op == "conv_transpose2d",
                                                     math=math)]
    if case.op == "conv2d_fwd_bwd":
        estimates.append(roofline.model_bias_grad(g, dtype, spec))
    return estimates


def _pool(case, spec, dtype) -> list:
    g = case.shape.geometry()
    item = np.dtype(dtype).itemsize
    x, y = math.prod(g.x_shape), math.prod(g.y_shape)
    index = np.dtype(np.int32).itemsize
    traffic = {"max_pool2d": ("max_pool_forward", (x + y) * item + y * index),
               "max_pool2d_backward": ("max_pool_backward", (y + x) * item + y * index),
               "avg_pool2d": ("avg_pool_forward", (x + y) * item),
               "avg_pool2d_backward": ("avg_pool_backward", (y + x) * item)}
    return [roofline.memory_bound(*traffic[case.op], spec)]


def _cross_entropy(case, spec, dtype) -> list:
    """As a training step's loss (_cross_entropy_step)."""
    return [roofline.memory_bound(name, traffic, spec)
            for name, traffic in _cross_entropy_step(case.shape.N, case.shape.classes, np.dtype(dtype).itemsize)]


def _nll_loss(case, spec, dtype) -> list:
    """The mean's divisor (the targets' weights, summed), the zeroed gradient, the per-row kernel
    (one log-probability read and one gradient element written a row, the divisor read), then the
    loss's sum."""
    n, classes = case.shape.N, case.shape.classes
    item, compute = np.dtype(dtype).itemsize, backend.compute_dtype(np.dtype(dtype)).itemsize
    return [roofline.memory_bound("cross_entropy_target_weights", n * (8 + compute), spec),
            roofline.memory_bound(*_channel_sum(1, 1, n, compute), spec),
            roofline.memory_bound(CUPY_ELEMENTWISE, n * classes * item, spec),
            roofline.memory_bound("nll_rows", n * (8 + 2 * item + compute) + compute, spec),
            roofline.memory_bound(*_channel_sum(1, 1, n, compute), spec)]


def _binary_cross_entropy_with_logits(case, spec, dtype) -> list:
    """The element-wise kernel (logits and targets in, gradient and per-element losses out), then the sum."""
    elements = case.shape.N * case.shape.classes
    item, compute = np.dtype(dtype).itemsize, backend.compute_dtype(np.dtype(dtype)).itemsize
    return [roofline.memory_bound("binary_cross_entropy_rows", elements * (3 * item + compute), spec),
            roofline.memory_bound(*_channel_sum(1, 1, elements, compute), spec)]


def _softmax(case, spec, dtype) -> list:
    """The row kernels: x in and y out, then dy and y in and dx out."""
    elements = case.shape.N * case.shape.classes * np.dtype(dtype).itemsize
    return [roofline.memory_bound("softmax_forward_rows", 2 * elements, spec),
            roofline.memory_bound("softmax_backward_rows", 3 * elements, spec)]


def _batch_norm(case, spec, dtype) -> list:
    """As nn.BatchNorm2d's step: its running statistics updated."""
    x_shape = case.shape.geometry().x_shape
    return [roofline.memory_bound(name, traffic, spec) for name, traffic in _batch_norm_passes(
        math.prod(x_shape), x_shape[1], np.dtype(dtype).itemsize, running=True)]


def _compute_bytes(item: int) -> int:
    """The bytes of an element of the compute type of a float dtype of `item` bytes (FP32 for float16)."""
    return backend.compute_dtype(np.dtype(f"float{8 * item}")).itemsize


def _channel_sum(outer: int, channels: int, inner: int, item: int) -> tuple[str, int]:
    """(launch, DRAM bytes) of reduce.channel_sum of (outer, channels, inner) elements of `item` bytes."""
    from ..gpu.reduce import channel_sum_bytes, plan_channel_sum
    return (plan_channel_sum(outer, channels, inner).kernel,
            channel_sum_bytes(outer, channels, inner, np.dtype(f"float{8 * item}")))


# the launch names of work that runs outside backend.launch on a GPU: linear layers' GEMMs and the
# residual additions and loss bookkeeping CuPy does; the step model prices them by their traffic too
CUBLAS_GEMM = "cuBLAS GEMM"
CUPY_ELEMENTWISE = "CuPy elementwise"


def _batch_norm_passes(x: int, channels: int, item: int, running: bool) -> list[tuple[str, float]]:
    """Batch norm in training over x elements of `channels` channels (`item` bytes each): the
    statistics read x once and write a mean and invstd a channel (compute type; with `running`,
    the running mean and variance read and written too); the normalisation reads x again, the
    statistics, weight and bias and writes y; the backward's channel sums read dy, x, the statistics,
    weight and bias and write dweight, dbias and two sums a channel (compute type); then dx reads dy,
    x, the statistics, weight, bias and sums. A channel of more than reduce.CHUNK elements splits
    both reductions over blocks (two partials a block, an arrival count a channel)."""
    from ..gpu.reduce import chunked_blocks
    compute = _compute_bytes(item)
    stats, parameters = 2 * channels * compute, 2 * channels * item   # (mean, invstd) or sums; (weight, bias)
    blocks = chunked_blocks("batch_norm", 1, channels, x // channels)
    scratch = scratch_bytes(2 * blocks, channels, compute) if blocks > channels else 0
    return [("batch_norm_stats", x * item + stats + 2 * parameters * running + scratch),
            ("batch_norm_forward", 2 * x * item + stats + parameters),
            ("batch_norm_backward_sums", 2 * x * item + 2 * stats + 2 * parameters + scratch),
            ("batch_norm_backward_dx", 3 * x * item + 2 * stats + parameters)]


def _row_norm_launches(layer, x_shape, dtype, sms: int) -> list[tuple]:
    """(launch, DRAM bytes, blocks, threads, bytes a block's round keeps in flight) of a GroupNorm or
    LayerNorm layer in training on x of `x_shape`, as row_norm.plan launches it on `sms` SMs (rows of
    whole packs taken as aligned; the backward takes the forward's statistics). The forward reads x,
    the weight and bias and writes y and a mean and invstd a row (compute type; a row's second and
    third reads of x counted as cache hits; a split row's statistics read x once more, in their own
    launch, with its partials and arrival counts (_arrivals.scratch_bytes), the forward then reading
    them); dx reads dy, x, the statistics and the weight and writes dx (a split row's sums read all
    but dx once more and write two sums a row, which dx reads); with affine parameters their
    gradients read dy, x and the statistics again and write dweight and dbias (both, a layer without
    a bias too; blocks None: modeled by traffic alone): a block a channel for GroupNorm (planes, as
    in a CNN: one value a channel would run the column kernel, of the same traffic), 8 lanes an
    element of normalized_shape for LayerNorm."""
    from .. import nn
    from ..functional.group_norm import _row_layout as group_rows
    from ..functional.layer_norm import _row_layout as layer_rows
    from ..gpu import row_norm
    group = isinstance(layer, nn.GroupNorm)
    view = np.broadcast_to(np.zeros((), dtype), x_shape)   # the layouts read only its shape
    layout = group_rows(view, layer.num_groups) if group else layer_rows(view, math.prod(layer.normalized_shape))
    item = np.dtype(dtype).itemsize
    pack = row_norm.WIDE_BYTES // item
    how = row_norm.plan(layout, dtype, sms, wide=layout.length % pack == 0)
    (blocks,), (threads,) = how.grid(layout.rows)
    x = layout.rows * layout.length * item
    compute = backend.compute_dtype(np.dtype(dtype)).itemsize
    stats = 2 * layout.rows * compute   # (mean, invstd) or the sums
    weight, bias = ((layout.parameters * item if p is not None else 0) for p in (layer.weight, layer.bias))
    walk = min(threads * row_norm.WALK_UNROLL * (pack if how.wide else 1), how.span) * item

    def launch(kernel, traffic, arrays):
        return how.kernel(kernel), traffic, blocks, threads, walk * arrays
    split = how.slices > 1
    launches = [launch("row_norm_forward", 2 * x + stats + weight + bias, 1),
                launch("row_norm_backward_dx", 3 * x + stats * (1 + split) + weight, 2)]
    if split:
        scratch = scratch_bytes(2 * layout.rows * how.slices, layout.rows, compute)
        launches[1:1] = [launch("row_norm_slice_sums", 2 * x + 2 * stats + weight + scratch, 2)]
        launches[:0] = [launch("row_norm_slice_stats", x + stats + scratch, 1)]
    if layer.weight is not None or layer.bias is not None:
        launches.append((f"row_norm_param_grads_{'planes' if group else 'columns'}",
                         2 * x + stats + 2 * layout.parameters * item, None, None, None))
    return launches


def _row_norm_estimates(layer, x_shape, dtype, spec) -> list:
    """_row_norm_launches' on `spec`, their DRAM time at the bandwidth their loads in flight sustain
    (roofline.streaming, the kernels' registers from their SASS)."""
    estimates = []
    for kernel, traffic, blocks, threads, in_flight in _row_norm_launches(layer, x_shape, dtype, spec.sms):
        if blocks is None:
            estimates.append(roofline.memory_bound(kernel, traffic, spec))
            continue
        traits = roofline.kernel_traits("row_norm", kernel, np.dtype(dtype).name, spec.arch)
        estimates.append(roofline.streaming(kernel, traffic, spec, traits, blocks, threads, in_flight))
    return estimates


def _layer_passes(layer, x: int, y: int, item: int) -> list[tuple[str, float]]:
    """(launch, DRAM bytes) of a non-convolution layer's forward and backward in training, as its
    launchers run them (x, y: its input and output elements; item: bytes an element): activations
    and pools read their input and write their output, their backward reads dy and x and writes
    dx; batch norm as _batch_norm_passes (GroupNorm and LayerNorm: _row_norm_launches, from x's shape)."""
    from .. import nn
    from ..functional.activation import KERNELS_OF, gelu_form
    from ..gpu.elementwise import kernel_name as activation_kernel
    from ..gpu.upsample import kernel_name as upsample_kernel
    from .training import ResidualLeaf, WithActivation, activation_layers
    if isinstance(layer, ResidualLeaf):   # y = block(x) + shortcut(x) (relu of it in one pass)
        passes = [("add_relu_forward", 3 * y * item) if layer.relu else (CUPY_ELEMENTWISE, 3 * y * item)]
        if layer.adds_handed_on:   # the ReLU's gradient from the output, of the two summands handed on
            passes.append(("relu_backward_of_sum", 4 * y * item))
        elif layer.relu:
            passes.append(("relu_backward", 3 * y * item))
        if not layer.hands_on:   # the branches' dx added
            passes.append((CUPY_ELEMENTWISE, 3 * x * item))
        return passes
    if isinstance(layer, WithActivation):
        return _layer_passes(layer.layer, x, y, item)   # the batch norm's kernels apply the activation
    if isinstance(layer, activation_layers()):
        # the kernels of the layer's op (F.relu: relu_forward...; ReLU6 runs hardtanh's, SELU and CELU elu's), a
        # GELU's by its form
        op = layer._forward.__name__
        name = gelu_form(layer.approximate) if isinstance(layer, nn.GELU) else KERNELS_OF.get(op, op)
        return [(activation_kernel(name, "forward"), (x + y) * item),
                (activation_kernel(name, "backward"), (2 * x + y) * item)]
    if isinstance(layer, nn.layers._BatchNorm):
        return _batch_norm_passes(x, layer.num_features, item, layer.running_mean is not None)
    pools = {nn.MaxPool2d: "max_pool", nn.AvgPool2d: "avg_pool", nn.AdaptiveAvgPool2d: "adaptive_avg_pool",
             nn.AdaptiveMaxPool2d: "adaptive_max_pool", nn.MaxPool1d: "max_pool", nn.AvgPool1d: "avg_pool",
             nn.AdaptiveAvgPool1d: "adaptive_avg_pool"}
    if type(layer) in pools:   # a 1-D pool runs the 2-D kernels on its (N, C, 1, L) view
        kind = pools[type(layer)]
        indices = y * np.dtype(np.int32).itemsize if kind in ("max_pool", "adaptive_max_pool") else 0
        return [(f"{kind}_forward", (x + y) * item + indices), (f"{kind}_backward", (y + x) * item + indices)]
    if isinstance(layer, nn.Upsample):   # mode "area" is adaptive average pooling to the output size
        kernels = (("adaptive_avg_pool_forward", "adaptive_avg_pool_backward") if layer.mode == "area" else
                   (upsample_kernel(layer.mode, "forward"), upsample_kernel(layer.mode, "backward")))
        return [(kernels[0], (x + y) * item), (kernels[1], (y + x) * item)]
    if isinstance(layer, nn.Dropout):   # one map forward and backward; p = 0 launches nothing
        kernel = "dropout2d_apply" if isinstance(layer, nn.Dropout2d) else "dropout_apply"
        return [(kernel, (x + y) * item)] * 2 if layer.p else []
    if isinstance(layer, nn.layers._Pad):   # any padding layer: one launch each way (at most three padded dims)
        return [("pad_forward", (x + y) * item), ("pad_backward", (y + x) * item)]
    if isinstance(layer, nn.Linear):   # float16: all of it on the float32 copies its conversions make
        weights = layer.in_features * layer.out_features
        rows = y // layer.out_features
        wide = _compute_bytes(item)
        passes = [(CUBLAS_GEMM, (x + weights + y) * wide),           # y = x w^T
                  (CUBLAS_GEMM, (y + weights + x) * wide),           # dx = dy w
                  (CUBLAS_GEMM, (y + x + weights) * wide)]           # dw = dy^T x
        if layer.bias is not None:
            passes += [("bias_add_rows", (2 * y + layer.out_features) * wide),
                       _channel_sum(rows, layer.out_features, 1, wide)]
        return passes
    if isinstance(layer, nn.Flatten):
        return []   # a view
    raise ValueError(f"no step model for layer {type(layer).__name__}")


def _cross_entropy_step(rows: int, classes: int, item: int) -> list[tuple[str, float]]:
    """The mean cross entropy over class indices (nn.CrossEntropyLoss's default) as gpu.loss runs
    it: the targets' weights and their sum, the per-row kernel (logits and labels in, the weights'
    sum read as the gradient's divisor, gradient and row losses out), the sum of the row losses, and
    the mean of the two sums (left on the device: as_array=True, as the benchmarks and cnn-gpu train
    take it)."""
    compute, label = _compute_bytes(item), np.dtype(np.int64).itemsize
    total = _channel_sum(1, 1, rows, compute)
    return [("cross_entropy_target_weights", rows * (label + compute)), total,
            ("cross_entropy_rows", 2 * rows * classes * item + rows * (label + compute) + compute), total,
            (CUPY_ELEMENTWISE, 4 * compute)]


def _train_step(case, spec, dtype, mode) -> list:
    """One training step of a cnn_gpu.models network (forward, mean cross entropy, backward without
    the images' gradient, SGD with momentum), launch by launch as the library runs it (a test holds
    the list to the launches an emulated step makes): every convolution's fprop (with bias when it
    has one), dgrad (except the first layer's) and wgrad (and bias gradient) from the conv model;
    every other launch by its compulsory traffic (_layer_passes, _cross_entropy_step; linear GEMMs
    and residual additions, which cuBLAS and CuPy run, likewise); and the SGD update, 8 parameters
    a launch (read parameter, gradient and momentum, write two; a float16 parameter instead writes
    itself and reads its gradient in float16, and reads and writes its FP32 master weight and
    momentum)."""
    from ..gpu.optim import UPDATE_SLOTS
    from .. import nn
    from .training import build_model, leaf_layers
    model = build_model(case.shape, dtype)
    shape = (case.shape.batch, *case.shape.image_shape)
    item = np.dtype(dtype).itemsize
    estimates = []
    for index, (layer, x_shape, y_shape, g) in enumerate(leaf_layers(model, shape)):
        if isinstance(layer, (nn.Conv2d, nn.Conv1d)):   # a Conv1d's g: that of its (N, C, 1, L) view
            has_bias = layer.bias is not None
            padded = layer.padding_mode != "zeros"   # F.pad's launches around the convolution's
            traffic = (math.prod(x_shape) + math.prod(g.x_shape)) * item
            if padded:
                estimates.append(roofline.memory_bound("pad_forward", traffic, spec))
            estimates += roofline.model_conv("fprop", g, dtype, spec, bias=has_bias, math=mode)
            if index:
                estimates += roofline.model_conv("dgrad", g, dtype, spec, math=mode)
                if padded:
                    estimates.append(roofline.memory_bound("pad_backward", traffic, spec))
            estimates += roofline.model_conv("wgrad", g, dtype, spec, math=mode)
            if has_bias:
                estimates.append(roofline.model_bias_grad(g, dtype, spec))
            continue
        if isinstance(layer, (nn.GroupNorm, nn.LayerNorm)):
            estimates += _row_norm_estimates(layer, x_shape, dtype, spec)
            continue
        passes = _layer_passes(layer, math.prod(x_shape), math.prod(y_shape), item)
        estimates += [roofline.memory_bound(name, traffic, spec) for name, traffic in passes]
    estimates += [roofline.memory_bound(name, traffic, spec)
                  for name, traffic in _cross_entropy_step(case.shape.batch, case.shape.classes, item)]
    float16 = np.dtype(dtype) == np.float16
    update = "sgd_momentum_step_master" if float16 else "sgd_momentum_step"
    per_element = 2 * item + 4 * 4 if float16 else 5 * item
    sizes = [p.data.size for p in model.parameters()]
    estimates += [roofline.memory_bound(update, per_element * sum(sizes[first:first + UPDATE_SLOTS]), spec)
                  for first in range(0, len(sizes), UPDATE_SLOTS)]
    return estimates


def _family_launches(op: str, shape, dtype) -> list[tuple[str, float]]:
    """(launch, DRAM bytes) of a bench.families op but the row normalisations, forward and backward, as
    its launchers run it: each launch's compulsory traffic (inputs read once, outputs written once;
    int32 indices, int64 targets, loss terms and per-element partial sums in the compute type, the
    per-channel slopes, the losses' divisor; an atomic claim read and written; fold's columns that
    fall in the padding never read), the element-wise work CuPy does around the kernels (softmin's
    negations, lp_pool's powers and roots) as CUPY_ELEMENTWISE."""
    from ..functional.activation import KERNELS_OF
    from ..gpu.elementwise import kernel_name as activation_kernel
    from . import families
    item, compute = np.dtype(dtype).itemsize, backend.compute_dtype(np.dtype(dtype)).itemsize
    index, label = np.dtype(np.int32).itemsize, np.dtype(np.int64).itemsize
    if families.FAMILY_OPS[op].kind == "conv":
        n, c = families.image(shape)[:2]
        x = math.prod(families.image(shape))
        cols = math.prod(families.columns(shape))
        read_cols = _columns_in_image(shape.geometry())
        if op in families.ACTIVATIONS:
            name = KERNELS_OF.get(op, op)
            return [(activation_kernel(name, "forward"), 2 * x * item),
                    (activation_kernel(name, "backward"), 3 * x * item)]
        even = x + x // c * (c % 2)   # glu's input: an even channel count
        return {"glu": [("glu_forward", 1.5 * even * item), ("glu_backward", 2.5 * even * item)],
                "prelu": [("prelu_forward", 2 * x * item + c * item),
                          ("prelu_backward", 3 * x * item + c * item + x * compute),
                          _channel_sum(n, c, x // (n * c), compute)],   # the slopes' terms
                "local_response_norm": [("local_response_norm_forward", 2 * x * item),
                                        # dy and x in, each element's direct term and window sum out
                                        ("local_response_norm_terms", 2 * x * item + 2 * x * compute),
                                        ("local_response_norm_backward", 2 * x * item + 2 * x * compute)],
                "dropout1d": [("dropout2d_apply", 2 * x * item)] * 2,
                "unfold": [("unfold_forward", (x + cols) * item), ("fold_forward", (read_cols + x) * item)],
                "fold": [("fold_forward", (read_cols + x) * item), ("unfold_forward", (x + cols) * item)]}[op]
    if families.FAMILY_OPS[op].kind == "volume":
        n, c = families.volume(shape)[:2]
        x = math.prod(families.volume(shape))
        if op == "batch_norm3d":
            return _batch_norm_passes(x, c, item, running=False)
        if op == "dropout3d":
            return [("dropout2d_apply", 2 * x * item)] * 2
        y = math.prod(families.pooled_volume(shape)) if op in ("max_pool3d", "avg_pool3d") else n * c
        indices = y * index if "max" in op else 0
        return [(f"{op}_forward", (x + y) * item + indices), (f"{op}_backward", (y + x) * item + indices)]
    if families.FAMILY_OPS[op].kind == "pool":
        g = shape.geometry()
        x, pooled = math.prod(g.x_shape), math.prod(g.y_shape)
        if op == "lp_pool2d":
            # x^2 and the root by CuPy around the average pool, the backward's chain likewise; a float16
            # op runs all of it in float32 (x widened, dy and x in the backward, y and dx rounded by CuPy)
            y = math.prod(families.lp_pooled(shape))
            forward = [(CUPY_ELEMENTWISE, 2 * x * compute), ("avg_pool_forward", (x + y) * compute),
                       (CUPY_ELEMENTWISE, 2 * y * compute)]
            backward = [(CUPY_ELEMENTWISE, 2 * x * compute), ("avg_pool_forward", (x + y) * compute),
                        (CUPY_ELEMENTWISE, 3 * y * compute), ("avg_pool_backward", (y + x) * compute),
                        (CUPY_ELEMENTWISE, 3 * x * compute)]
            if item != compute:
                forward = [(CUPY_ELEMENTWISE, x * (item + compute)), *forward, (CUPY_ELEMENTWISE, y * (compute + item))]
                backward = [(CUPY_ELEMENTWISE, (y + x) * (item + compute)), *backward,
                            (CUPY_ELEMENTWISE, x * (compute + item))]
            return forward + backward
        # the owner table cleared and claimed (read and written), the gather of y, then dx's; every pooled
        # index taken as distinct (windows that overlap may share a maximum, claimed and gathered once)
        if op == "max_unpool2d":
            return [("max_unpool_clear", x * index), ("max_unpool_claim", 3 * pooled * index),
                    ("max_unpool_gather", x * index + (pooled + x) * item),
                    ("max_unpool_gather", pooled * index + 2 * pooled * item)]
        raise ValueError(f"no model for pool op {op!r}")
    if families.FAMILY_OPS[op].kind in ("fractional2d", "fractional3d"):
        return _fractional_max_pool_launches(shape, item)
    n, x = shape.N, shape.N * shape.classes

    def total(count):   # the sum of `count` loss terms (compute type)
        return _channel_sum(1, 1, count, compute)
    # the losses: one kernel reads the inputs and writes the gradients and the loss terms, then their sum
    read_written = {"soft_margin_loss": (2, 1), "hinge_embedding_loss": (2, 1), "margin_ranking_loss": (3, 2),
                    "poisson_nll_loss": (2, 1), "gaussian_nll_loss": (3, 2), "multilabel_soft_margin_loss": (2, 1)}
    if op in read_written:
        kernel = "binary_cross_entropy_rows" if op == "multilabel_soft_margin_loss" else "regression_loss_rows"
        divisor = compute if kernel == "regression_loss_rows" else 0   # the mean's, read by the kernel
        return [(kernel, sum(read_written[op]) * x * item + x * compute + divisor), total(x)]
    row_losses = {"multi_margin_loss": (2, label), "cosine_embedding_loss": (4, item), "triplet_margin_loss": (6, 0)}
    if op in row_losses:
        arrays, target = row_losses[op]
        return [(f"{op.removesuffix('_loss')}_rows", arrays * x * item + n * (target + compute)), total(n)]
    return {"softmin": [(CUPY_ELEMENTWISE, 2 * x * item), ("softmax_forward_rows", 2 * x * item),
                        (CUPY_ELEMENTWISE, 2 * x * item), ("softmax_backward_rows", 3 * x * item)],
            "normalize": [("normalize_forward", 2 * x * item), ("normalize_backward", 3 * x * item)],
            **{f"{name}": [(f"{name}_forward", (2 * x + n) * item), (f"{name}_backward", (4 * x + n) * item)]
               for name in ("cosine_similarity", "pairwise_distance")}}[op]


def _fractional_max_pool_launches(shape, item: int) -> list[tuple[str, float]]:
    """Fractional max pooling of a FractionalShape, forward and backward (launch, DRAM bytes): the forward
    reads x whole and the samples (one an axis a plane) and writes y and the int32 indices; the gather
    backward reads dy and the indices and writes dx (every output's dy and index is read by the input
    pixel its index names). x is read whole where a window's start lies at most k past the one before it
    (ATen's steps are floor(alpha) or ceil(alpha), one more where the rounding of its two products meets
    an integer), the first window at 0 and the last ending at the axis's end: shapes whose windows could
    skip a pixel, for some samples, are refused."""
    x, y = math.prod(shape.x_shape), math.prod(shape.y_shape)
    planes, rank = shape.N * shape.C, len(shape.size)
    for size, outputs in zip(shape.size, shape.y_shape[2:]):
        step = math.ceil((size - shape.kernel) / (outputs - 1)) + 1 if outputs > 1 else size
        if step > shape.kernel:
            raise ValueError(f"fractional max pooling of {shape.label} may leave input pixels unread (window steps "
                             f"of up to {step} for windows of {shape.kernel}): its traffic depends on the samples")
    kernel, index = f"fractional_max_pool{'3d' if rank == 3 else ''}", np.dtype(np.int32).itemsize
    return [(f"{kernel}_forward", (x + planes * rank + y) * item + y * index),
            (f"{kernel}_backward", (y + x) * item + y * index)]


def _columns_in_image(g) -> int:
    """The entries of the im2col columns of convolution geometry `g` whose tap falls inside the image
    (not in its padding): those fold reads."""
    taps_inside = [sum(0 <= out * stride - pad + tap * dilation < size for out in range(outputs) for tap in range(taps))
                   for size, outputs, taps, stride, pad, dilation in
                   zip((g.H, g.W), (g.P, g.Q), (g.R, g.S), g.stride, g.padding, g.dilation)]
    return g.N * g.C * math.prod(taps_inside)


def _row_norm_layer(op: str, x_shape):
    """The layer whose launches (_row_norm_launches) a row-normalisation bench op makes: instance norm is
    group norm with a group a channel; rms_norm runs layer norm's launches without a bias (its kernel
    still writes a bias gradient, which F.rms_norm_backward drops)."""
    from .. import nn
    from .families import num_groups
    channels = x_shape[1]
    return {"group_norm": lambda: nn.GroupNorm(num_groups(channels), channels),
            "instance_norm": lambda: nn.GroupNorm(channels, channels),
            "instance_norm3d": lambda: nn.GroupNorm(channels, channels),
            "layer_norm": lambda: nn.LayerNorm(list(x_shape[1:])),
            "rms_norm": lambda: nn.LayerNorm(list(x_shape[1:]), bias=False)}[op]()


ROW_NORM_OPS = ("group_norm", "instance_norm", "instance_norm3d", "layer_norm", "rms_norm")


def _optimizer_step(op: str, shape, dtype) -> list[tuple[str, float]]:
    """(launch, DRAM bytes) of one step of bench.families' optimizer `op`, UPDATE_SLOTS parameters a
    launch: each element's parameter read and written, its gradient read, and each state array (the
    compute type) read and written; a float16 parameter instead is written from its FP32 master copy,
    read and written (the *_master kernels), as _train_step prices SGD's."""
    from ..gpu.optim import UPDATE_SLOTS
    from . import families
    _, _, states = families.OPTIMIZERS[op]
    item, compute = np.dtype(dtype).itemsize, backend.compute_dtype(np.dtype(dtype)).itemsize
    sizes = [math.prod(s) for s in families.optimizer_parameters(shape)]
    kernel = "adam_step" if op == "adamw" else f"{op}_step"   # AdamW: Adam's kernel, its decay decoupled
    per_element = 3 * item + 2 * states * compute
    if np.dtype(dtype) == np.float16:
        kernel, per_element = f"{kernel}_master", 2 * item + 2 * (1 + states) * compute
    return [(kernel, per_element * sum(sizes[first:first + UPDATE_SLOTS]))
            for first in range(0, len(sizes), UPDATE_SLOTS)]


def _conv3d_fprop_estimates(h, bias: bool, dtype, spec) -> list:
    """One run of the conv3d_fprop kernel on geometry `h` as its plan launches it: the GEMM launch from its
    FLOPs and traffic (operands and output, or split-K partials; as roofline.conv prices conv2d's), then
    any split-K sum (which adds the bias then)."""
    from ..gpu import conv3d as gpu_conv3d
    plan = gpu_conv3d.plan_fprop(h, dtype, sms=spec.sms)
    item = np.dtype(dtype).itemsize
    read = gpu_conv3d._padded_input(h, plan.padded) if plan.padded else h   # a long filter's bordered copy
    x, w, y = (math.prod(s) for s in (read.x_shape, h.w_shape, h.y_shape))
    flops, bias_elements = 2 * y * w // h.K, h.K if bias else 0
    if plan.splits > 1:
        works = [roofline.LaunchWork(flops, (x + w + plan.splits * y) * item),
                 roofline.LaunchWork(0, (plan.splits * y + bias_elements + y) * item)]
    else:
        works = [roofline.LaunchWork(flops, (x + w + bias_elements + y) * item)]
    return [roofline.estimate_launch(launch, work, dtype, spec) for launch, work in zip(plan.launches, works)]


def _conv3d_dgrad_estimates(g, dtype, spec) -> list:
    """conv3d's input gradient as its plan launches it: the filter transpose (the filter read and written),
    every stride phase in one conv3d_dgrad launch (dy, or its zero-bordered copy, and the transposed filter
    with its FILTER_TAIL read, dx or split-K partials written; fprop's FLOPs), then any split-K fold."""
    from ..gpu import conv3d as gpu_conv3d
    plan = gpu_conv3d.plan_dgrad(g, dtype, sms=spec.sms)
    item = np.dtype(dtype).itemsize
    read = gpu_conv3d._padded_output(g, plan.padded) if plan.padded else g
    dy, w, dx = math.prod(read.y_shape), math.prod(g.w_shape), math.prod(g.x_shape)
    flops = 2 * math.prod(g.y_shape) * w // g.K
    wt = w + gpu_conv3d.FILTER_TAIL[np.dtype(dtype)]   # the tiles' last loads reach into its zeroed tail
    works = [roofline.LaunchWork(0, 2 * w * item)]
    if plan.splits > 1:
        works += [roofline.LaunchWork(flops, (dy + wt + plan.splits * dx) * item),
                  roofline.LaunchWork(0, (plan.splits * dx + dx) * item)]
    else:
        works += [roofline.LaunchWork(flops, (dy + wt + dx) * item)]
    return [roofline.estimate_launch(launch, work, dtype, spec) for launch, work in zip(plan.launches, works)]


def _conv3d_wgrad_estimates(g, dtype, spec) -> list:
    """conv3d's weight gradient as its plan launches it: one conv3d_wgrad launch reading x and dy in place
    and writing dw or split-K partials (fprop's FLOPs), then any split-K fold."""
    from ..gpu import conv3d as gpu_conv3d
    plan = gpu_conv3d.plan_wgrad(g, dtype, sms=spec.sms)
    item = np.dtype(dtype).itemsize
    x, dy, dw = (math.prod(s) for s in (g.x_shape, g.y_shape, g.w_shape))
    flops = 2 * dy * dw // g.K
    works = [roofline.LaunchWork(flops, (x + dy + plan.splits * dw) * item)]
    if plan.splits > 1:
        works += [roofline.LaunchWork(0, (plan.splits * dw + dw) * item)]
    return [roofline.estimate_launch(launch, work, dtype, spec) for launch, work in zip(plan.launches, works)]


def _conv3d_family(op: str, shape, dtype, spec) -> list:
    """The estimates of bench.families' conv3d / conv_transpose3d, forward and backward, launch by launch as
    their launchers run them on volume_conv's geometry: conv3d's fprop with its bias, dgrad (every stride
    phase in one launch) and wgrad; conv_transpose3d's dgrad and its bias_add_nchw, fprop (dx) and wgrad
    (x and dy swapped); then the bias gradient. The bias addition and gradient are memory-bound. float16 runs the
    float32 kernels; its widening and rounding, and the launchers' rearranging copies, are CuPy's
    element-wise work (not itemised)."""
    from ..gpu.reduce import channel_sum_bytes, plan_channel_sum
    from .families import volume_conv
    g = volume_conv(shape)
    kernel_dtype = backend.compute_dtype(np.dtype(dtype))
    item = kernel_dtype.itemsize

    def runs(*geometries, bias=False):
        return [e for h in geometries for e in _conv3d_fprop_estimates(h, bias, kernel_dtype, spec)]
    dgrad = _conv3d_dgrad_estimates(g, kernel_dtype, spec)
    wgrad = _conv3d_wgrad_estimates(g, kernel_dtype, spec)
    if op == "conv3d":
        estimates, out_shape = runs(g, bias=True) + dgrad + wgrad, g.y_shape
    else:
        bias_add = roofline.memory_bound("bias_add_nchw", (2 * math.prod(g.x_shape) + g.C) * item, spec)
        estimates, out_shape = dgrad + [bias_add] + runs(g) + wgrad, g.x_shape
    n, channels = out_shape[:2]   # the bias gradient sums dy (the op's dtype, not widened), of the op's output shape
    inner = math.prod(out_shape[2:])
    return estimates + [roofline.memory_bound(plan_channel_sum(n, channels, inner).kernel,
                                              channel_sum_bytes(n, channels, inner, dtype), spec)]


def _family(case, spec, dtype) -> list:
    from . import families
    if case.op in ("conv3d", "conv_transpose3d"):
        return _conv3d_family(case.op, case.shape, dtype, spec)
    if case.op in families.OPTIMIZERS:
        return [roofline.memory_bound(name, traffic, spec) for name, traffic in _optimizer_step(case.op, case.shape,
                                                                                                dtype)]
    if case.op in ROW_NORM_OPS:
        x_shape = (families.volume if case.op == "instance_norm3d" else families.image)(case.shape)
        return _row_norm_estimates(_row_norm_layer(case.op, x_shape), x_shape, dtype, spec)
    launches = _family_launches(case.op, case.shape, dtype)
    return [roofline.memory_bound(name, traffic, spec) for name, traffic in launches]


def case_estimates(case, spec, dtype, math: str = "fp32") -> list:
    """The LaunchEstimates of one bench case on `spec` in math mode `math`."""
    if case.op in ("train_step", "train_step_replayed"):   # the same kernels (the model prices no host time)
        return _train_step(case, spec, dtype, math)
    from .families import FAMILY_OPS, OPTIMIZERS
    if case.op in FAMILY_OPS or case.op in OPTIMIZERS:
        return _family(case, spec, dtype)
    if case.op in CONV_PASSES:
        return _conv(case, spec, dtype, math)
    if "pool" in case.op:
        return _pool(case, spec, dtype)
    if case.op == "cross_entropy":
        return _cross_entropy(case, spec, dtype)
    if case.op == "softmax":
        return _softmax(case, spec, dtype)
    if case.op == "nll_loss":
        return _nll_loss(case, spec, dtype)
    if case.op == "binary_cross_entropy_with_logits":
        return _binary_cross_entropy_with_logits(case, spec, dtype)
    if case.op == "batch_norm":
        return _batch_norm(case, spec, dtype)
    raise ValueError(f"no model for op {case.op!r}")
