"""The ops `cnn-gpu check` covers (OPS), in the order it checks and lists them. Each family's
configurations, inputs and runs (OpCheck) live in a module of their own: conv (and linear), pool,
activations (with dropout and softmax), losses, norms, resample (padding, upsampling, folding,
shuffles), distances, optimizers (their steps: no finite differences)."""
from __future__ import annotations

from . import activations, conv, distances, losses, norms, optimizers, pool, resample

FAMILIES = (conv, pool, activations, losses, norms, resample, distances, optimizers)
_BY_NAME = {op.name: op for family in FAMILIES for op in family.CHECKS}

# The order the checks had when they were one list (their table rows keep their places); every op
# added since follows, family by family.
FIRST = ("conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", *activations.SMOOTH_BUT_AT_ZERO,
         *activations.PIECEWISE_KINKS, "linear", "cross_entropy", "mse_loss", "conv2d_same", "avg_pool2d_options",
         "linear_nd", "cross_entropy_options", "nll_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
         "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "dropout", "dropout2d",
         "adaptive_avg_pool2d", "adaptive_max_pool2d", "pad", "interpolate", "softmax", "log_softmax", "conv1d",
         "conv_transpose1d", "max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "batch_norm", "lp_pool2d",
         "max_unpool2d")
OPS = {name: _BY_NAME[name] for name in FIRST}
OPS.update(_BY_NAME)

# functional ops whose check is another op's entry (the one named), and those not checked, with why
COVERED_BY = {"relu_backward_of_sum": "add_relu"}
NOT_CHECKED = {"one_hot": "int64 labels in, int64 one-hot rows out: nothing to round or differentiate, and no "
                          "backend argument (it runs where its labels are)"}
