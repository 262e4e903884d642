"""The ops `cnn-gpu bench` times, and the cases of a shape set."""
from __future__ import annotations

from .cases import (Case, batch_norm_case, bce_with_logits_case, conv_case, cross_entropy_case, nll_loss_case,
                    pool_case, softmax_case)
from .families import FAMILY_OPS, OPTIMIZERS, family_case
from .shapes import SHAPE_SETS
from .training import train_step_case

DTYPES = ("float16", "float32", "float64")


# op name -> (kind of shape it takes, case builder, one-line description)
OPS = {
    "conv2d": ("conv", lambda s: conv_case("conv2d", s), "convolution forward (fprop), with bias"),
    "conv2d_dgrad": ("conv", lambda s: conv_case("conv2d_dgrad", s), "input gradient (dgrad)"),
    "conv2d_wgrad": ("conv", lambda s: conv_case("conv2d_wgrad", s), "weight gradient (wgrad)"),
    "conv2d_fwd_bwd": ("conv", lambda s: conv_case("conv2d_fwd_bwd", s),
                       "forward + full backward (dx, dw, db); counted as 3 passes"),
    "conv_transpose2d": ("conv", lambda s: conv_case("conv_transpose2d", s),
                         "transposed convolution from the conv's output shape back to its input shape, with bias"),
    "max_pool2d": ("pool", lambda s: pool_case("max_pool2d", s), "max pooling forward (values and indices)"),
    "max_pool2d_backward": ("pool", lambda s: pool_case("max_pool2d_backward", s), "max pooling backward"),
    "avg_pool2d": ("pool", lambda s: pool_case("avg_pool2d", s), "average pooling forward"),
    "avg_pool2d_backward": ("pool", lambda s: pool_case("avg_pool2d_backward", s), "average pooling backward"),
    "cross_entropy": ("loss", cross_entropy_case, "softmax cross entropy, loss and gradient"),
    "softmax": ("loss", softmax_case, "softmax over the classes, forward and backward (from the output)"),
    "nll_loss": ("loss", nll_loss_case, "negative log likelihood of log-probabilities, loss and gradient"),
    "binary_cross_entropy_with_logits": ("loss", bce_with_logits_case,
                                         "multi-label binary cross entropy on logits, loss and gradient"),
    "train_step": ("model", train_step_case, "forward, loss, backward and SGD step of a model"),
    "train_step_replayed": ("model", lambda s: train_step_case(s, replayed=True),
                            "train_step recorded once and replayed (cnn_gpu.replay); emu and cuda only"),
    # last: a run cut short (gpu-check's budget) has the rows of the ops above first
    "batch_norm": ("conv", batch_norm_case,
                   "batch norm in training on a conv's input: statistics, normalisation, dx/dweight/dbias"),
}
# the other op families (bench.families), after them: a run cut short has the rows above first
OPS.update({op: (family.kind, lambda s, op=op: family_case(op, s), family.description)
            for op, family in FAMILY_OPS.items()})
OPS.update({op: ("conv", lambda s, op=op: family_case(op, s),
                  f"one {kind} step (lr 1e-3{', momentum 0.9' if options else ''}) of the conv's weight and bias")
            for op, (kind, options, _) in OPTIMIZERS.items()})
# conv2d_fwd_bwd repeats fprop + dgrad + wgrad, so it runs only when asked for (numpy_vs_torch.py);
# train_step_replayed has rows on emu and cuda only, so likewise (gpu-check asks for it).
# The families' ops likewise (`--ops glu,rms_norm`, ...): the default run, and gpu-check's budget, keep to the
# ops above.
ON_REQUEST = ("conv2d_fwd_bwd", "train_step_replayed", *FAMILY_OPS, *OPTIMIZERS)
DEFAULT_OPS = tuple(op for op in OPS if op not in ON_REQUEST)


def make_cases(shape_set: str, ops=DEFAULT_OPS, batch: int | None = None) -> list[Case]:
    """Every (op, shape) of the shape set (at batch size `batch` if given), op by op in the order
    of `ops`."""
    if shape_set not in SHAPE_SETS:
        raise ValueError(f"unknown shape set {shape_set!r}; expected one of {', '.join(SHAPE_SETS)}")
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; expected some of {', '.join(OPS)}")
    shapes = SHAPE_SETS[shape_set] if batch is None else SHAPE_SETS[shape_set].with_batch(batch)
    cases = []
    for op in ops:
        kind, build, _ = OPS[op]
        cases += [build(shape) for shape in getattr(shapes, kind)]
    if not cases:   # rather than a run whose empty table blames the devices
        held = [op for op, (kind, _, _) in OPS.items() if getattr(shapes, kind)]
        raise ValueError(f"shape set {shape_set!r} has no case of {', '.join(ops)}; its ops: {', '.join(held)}")
    return cases
