"""Every op recorded (cnn_gpu.replay), its inputs then overwritten in place with new values and the
recording replayed, gives bit for bit what the op computes eagerly on those new inputs: outputs
and the inputs it updates in place. An op whose device work goes around backend.launch and
backend.device_call (an array copied, converted or computed by CuPy/NumPy calls) keeps the values
of the recorded call and fails here. The ops and their configurations are `cnn-gpu check`'s
(cnn_gpu.check.OPS), in float32 (fp32 and tf32) and float16; the tensor-core wgrad's dy layouts,
which the planner picks by shape, are forced one by one."""
from __future__ import annotations

import numpy as np
import pytest

import cnn_gpu
from cnn_gpu import backend, check, replay
from cnn_gpu import functional as F
from cnn_gpu.check import losses as check_losses, norms as check_norms, optimizers as check_optimizers
from cnn_gpu.functional.geometry import conv_geometry
from cnn_gpu.gpu import conv_tc
from helpers import rng_for

EMU_REASON = backend.why_unavailable("emu")
pytestmark = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")

CONFIGS = 4   # random configurations per op and setting, beside the op's edge cases (at most 3)
SETTINGS = (("float32", "fp32"), ("float32", "tf32"), ("float16", "fp32"))


def _as_array_loss_run(name):
    """check's loss runs with the loss left on the device (a float read back is refused in a
    recording)."""
    def run(a, cfg, be):
        if name == "mse_loss":
            loss, grad = F.mse_loss(a["pred"], a["target"], backend=be, as_array=True)
            return dict(loss=loss, dpred=grad)
        if name == "cross_entropy":
            loss, grad = F.cross_entropy(a["logits"], a["labels"], backend=be, as_array=True)
        else:
            loss, grad = F.cross_entropy(a["logits"], a["target"], a["weight"], cfg["ignore_index"], cfg["reduction"],
                                         cfg["label_smoothing"], backend=be, as_array=True)
        return dict(loss=loss, dlogits=grad)
    return run


def _batch_norm_run(a, cfg, be):
    """check's batch-norm run, updating the running statistics given (it updates copies)."""
    y = F.batch_norm(a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"], cfg["training"],
                     activation=cfg["activation"], backend=be)
    dx, dw, db = F.batch_norm_backward(a["dy"], a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                                       cfg["training"], activation=cfg["activation"], backend=be)
    return dict(y=y, dx=dx, dweight=dw, dbias=db)


RUNS = {"cross_entropy": _as_array_loss_run("cross_entropy"),
        "cross_entropy_options": _as_array_loss_run("cross_entropy_options"),
        "mse_loss": _as_array_loss_run("mse_loss"), "batch_norm": _batch_norm_run, "batch_norm3d": _batch_norm_run,
        **{name: check_norms.instance_norm_run(updates_copies=False) for name in ("instance_norm", "instance_norm3d")},
        "nll_loss": check_losses.nll_run(as_array=True),
        **{name: check_losses.elementwise_loss_run(name, as_array=True)
           for name in ("l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
                        "binary_cross_entropy_with_logits", "kl_div")},
        **{name: check_losses.margin_loss_run(name, as_array=True) for name in check_losses.MARGIN_LOSSES}}


def _in_dtype(inputs: dict, dtype) -> dict:
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
            for k, v in inputs.items()}


def assert_replay_is_eager(run, inputs: dict, new_inputs: dict, what: str) -> None:
    """run(arrays) recorded on `inputs`, replayed after they are overwritten with `new_inputs`,
    against run on copies of `new_inputs`: every output and every input, bit for bit."""
    with replay.record() as recorded:
        outputs = run(inputs)
    for name, a in inputs.items():
        if isinstance(a, np.ndarray):
            a[...] = new_inputs[name]
    eager_inputs = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in new_inputs.items()}
    recorded.replay()
    eager = run(eager_inputs)
    for name, value in [*outputs.items(), *inputs.items()]:
        expected = eager.get(name) if name in outputs else eager_inputs[name]
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, expected, err_msg=f"{what}: {name}", strict=True)


# The optimizers' checks (several steps of state a recording keeps: moments, step counts) are not ops
# here; test_replay replays their steps within a training step.
@pytest.mark.parametrize("dtype, math", SETTINGS)
@pytest.mark.parametrize("name", [name for name in sorted(check.OPS) if name not in check_optimizers.OPTIMIZERS])
def test_a_replayed_op_computes_its_new_inputs(name, dtype, math):
    op = check.OPS[name]
    run = RUNS.get(name, op.run)
    rng = rng_for(name, dtype, math)
    configs = list(op.edge_configs[:3]) + [op.configs(rng) for _ in range(CONFIGS)]
    with cnn_gpu.math_mode(math):
        for i, cfg in enumerate(configs):
            first = _in_dtype(op.inputs(cfg, rng), dtype)
            second = _in_dtype(op.inputs(cfg, rng), dtype)
            assert_replay_is_eager(lambda a: run(a, cfg, "emu"), first, second, f"{name} config {i} {cfg}")


def _wgrad_case(dtype, dy_offset=0):
    rng = np.random.default_rng(21)
    g = conv_geometry((2, 8, 9, 9), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    x = rng.standard_normal(g.x_shape).astype(dtype)
    # a dy that starts dy_offset elements into its buffer (a view off the 16-byte boundary)
    dy_buffer = rng.standard_normal(dy_offset + int(np.prod(g.y_shape))).astype(dtype)
    return g, x, dy_buffer, dy_offset


@pytest.mark.parametrize("dtype, dy_path, dy_offset", [
    ("float32", "channel_major", 0), ("float16", "channel_major", 0), ("float32", "vector", 0),
    ("float16", "vector", 0), ("float16", "residues", 1)])   # residues: float16 only
def test_a_replayed_tensor_core_wgrad_computes_its_new_inputs_on_every_dy_path(dtype, dy_path, dy_offset):
    """channel_major packs dy into a workspace, residues copies a dy that starts off a 16-byte
    boundary: copies a replay must make again."""
    g, x, dy_buffer, offset = _wgrad_case(dtype, dy_offset)

    def run(a):
        dy = a["dy_buffer"][offset:].reshape(g.y_shape)
        with cnn_gpu.math_mode("tf32"):
            return dict(dw=conv_tc.wgrad("emu", dy, a["x"], g, tile="tc", dy_path=dy_path))

    rng = np.random.default_rng(22)
    new = dict(x=rng.standard_normal(x.shape).astype(dtype), dy_buffer=rng.standard_normal(dy_buffer.shape).astype(dtype))
    assert_replay_is_eager(run, dict(x=x, dy_buffer=dy_buffer), new, f"wgrad {dy_path}")


def test_replayed_simt_paths_widen_and_round_their_new_inputs():
    """Depthwise convolutions keep their SIMT kernels: in tf32 their operands are rounded to TF32,
    in float16 widened to FP32 and the result rounded, by device calls a replay repeats."""
    rng = np.random.default_rng(23)
    for dtype, math in (("float32", "tf32"), ("float16", "fp32")):
        def run(a):
            with cnn_gpu.math_mode(math):
                y = F.conv2d(a["x"], a["w"], padding=1, groups=4, backend="emu")
                dx, dw, _ = F.conv2d_backward(a["dy"], a["x"], a["w"], padding=1, groups=4, backend="emu")
            return dict(y=y, dx=dx, dw=dw)

        def draw():
            return dict(x=rng.standard_normal((2, 4, 6, 6)).astype(dtype), w=rng.standard_normal((4, 1, 3, 3)).astype(dtype),
                        dy=rng.standard_normal((2, 4, 6, 6)).astype(dtype))
        assert_replay_is_eager(run, draw(), draw(), f"depthwise {dtype} {math}")


@pytest.mark.parametrize("label_dtype", ["int32", "uint8"])
def test_replayed_cross_entropy_widens_its_new_labels(label_dtype):
    """Class indices of another integer dtype are widened to int64 for the kernels: by a device
    call, so that a replay trains on its own batch's labels."""
    rng = np.random.default_rng(24)

    def run(a):
        loss, dlogits = F.cross_entropy(a["logits"], a["labels"], backend="emu", as_array=True)
        return dict(loss=loss, dlogits=dlogits)

    def draw():
        return dict(logits=rng.standard_normal((6, 5)).astype(np.float32), labels=rng.integers(0, 5, 6).astype(label_dtype))
    assert_replay_is_eager(run, draw(), draw(), f"cross_entropy with {label_dtype} labels")
