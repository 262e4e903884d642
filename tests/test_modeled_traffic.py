"""The roofline model's DRAM traffic of every bench case but the convolution passes (held to their plans
in test_roofline.py) and the training step (its launch list held there), launch by launch against the
emulator's count: each launch's distinct bytes read plus written (cnn_gpu.emu.profiling), which is the
compulsory traffic the model claims, byte for byte (but conv3d_dgrad's filter tail, see
_filter_tail_taken). The tiny shape set's cases in every dtype, and shapes whose reductions split over
blocks (their partials and arrival counts) in float32; and a training step's launches but its
convolutions', as a multiset (the model lists them layer by layer)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import cnn_gpu
from cnn_gpu import backend, bench, roofline
from cnn_gpu.bench.devices import make_devices
from cnn_gpu.bench.families import family_case
from cnn_gpu.bench.modeled import CONV_PASSES, CUBLAS_GEMM, CUPY_ELEMENTWISE, case_estimates
from cnn_gpu.bench.shapes import ConvShape, FractionalShape, LossShape, ModelShape
from cnn_gpu.bench.training import train_step_case
from cnn_gpu.gpu.conv import FILTER_TAIL, device_sms

EMU_REASON = backend.why_unavailable("emu")
pytestmark = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")

# the bench ops whose traffic other tests hold: the convolution passes to their plans, the training
# step's launches to an emulated step's
NOT_HERE = {*CONV_PASSES, "train_step", "train_step_replayed"}
# work the emulator does not launch (cuBLAS's GEMMs, CuPy's element-wise steps: NumPy on the emulator)
OUTSIDE = {CUBLAS_GEMM, CUPY_ELEMENTWISE}
H100 = roofline.spec("h100")


def modeled_and_counted(case, dtype):
    """[(kernel, DRAM bytes)] of the model's launches of `case` and of those an emulated run counts."""
    fn, sets = case.setup(make_devices(["emu"])[0], dtype, np.random.default_rng(7))
    with cnn_gpu.emu.profiling() as profile:
        fn(*sets[0])
    counted = [(launch["kernel"], launch["dram_read_bytes"] + launch["dram_write_bytes"])
               for launch in profile.launches]
    modeled = [(e.kernel, e.dram_bytes) for e in case_estimates(case, H100, dtype) if e.kernel not in OUTSIDE]
    if case.op == "max_unpool2d":
        modeled = _repeated_maxima_subtracted(modeled, sets[0][2], np.dtype(dtype).itemsize)
    return _filter_tail_taken(modeled, counted, dtype), counted


def _filter_tail_taken(modeled, counted, dtype):
    """conv3d_dgrad's model charges the transposed filter's whole zeroed tail (FILTER_TAIL), of which the
    tiles' last loads read some or all, depending on the geometry: such a launch counted no more than that
    tail below the model is taken as modeled (the one slack in this file)."""
    kernel_dtype = np.dtype(backend.compute_dtype(np.dtype(dtype)))
    tail = FILTER_TAIL[kernel_dtype] * kernel_dtype.itemsize
    taken = []
    for index, (kernel, traffic) in enumerate(modeled):
        count = counted[index][1] if index < len(counted) and counted[index][0] == kernel else None
        within_tail = kernel.startswith("conv3d_dgrad_") and count is not None and count <= traffic <= count + tail
        taken.append((kernel, count if within_tail else traffic))
    return taken


def _repeated_maxima_subtracted(modeled, indices, item):
    """max_unpool2d's model takes every pooled index as distinct; where overlapping windows share a
    maximum, the claim reads and writes its owner entry, and each gather reads its value, once."""
    repeats = sum(plane.size - np.unique(plane).size for plane in indices.reshape(-1, indices[0, 0].size))
    saved = {"max_unpool_clear": 0, "max_unpool_claim": 2 * 4 * repeats, "max_unpool_gather": item * repeats}
    return [(kernel, traffic - saved[kernel]) for kernel, traffic in modeled]


def test_the_checked_ops_are_all_but_the_convolutions_and_the_step():
    """A new bench op is checked here unless it is added to NOT_HERE (whose other checks are named)."""
    assert NOT_HERE == {"conv2d", "conv2d_dgrad", "conv2d_wgrad", "conv2d_fwd_bwd", "conv_transpose2d", "train_step",
                        "train_step_replayed"}
    assert len(set(bench.OPS) - NOT_HERE) >= 60


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_each_modeled_launch_moves_the_bytes_the_emulator_counts(dtype):
    cases = bench.make_cases("tiny", [op for op in bench.OPS if op not in NOT_HERE])
    assert {case.op for case in cases} == set(bench.OPS) - NOT_HERE   # every op has a tiny case
    for case in cases:
        modeled, counted = modeled_and_counted(case, dtype)
        assert modeled == counted, (case.op, case.label)


# shapes whose reductions take more than one block: batch norm's channels and the conv's bias gradient
# (4608 elements each), the rows of layer norm (8192 elements: 2 slices), the sum of 8000 loss terms
SPLIT_CASES = [("batch_norm", ConvShape(2, 2, 48, 48, 2, 1)), ("layer_norm", ConvShape(2, 2, 64, 64, 2, 1)),
               ("soft_margin_loss", LossShape(8, 1000)), ("prelu", ConvShape(2, 2, 48, 48, 2, 1))]


@pytest.mark.parametrize("op, shape", SPLIT_CASES, ids=[op for op, _ in SPLIT_CASES])
def test_split_reductions_count_their_partials_and_arrivals(op, shape):
    assert device_sms("emu") == H100.sms   # the row norms' plans: the same slices on both
    case = family_case(op, shape) if op in bench.families.FAMILY_OPS else bench.OPS[op][1](shape)
    modeled, counted = modeled_and_counted(case, np.float32)
    assert modeled == counted
    assert any("slice" in kernel for kernel, _ in counted) or op != "layer_norm"


def test_fractional_pooling_whose_windows_can_skip_pixels_is_not_modeled():
    """The model reads x whole, which holds where no window can skip a pixel: windows of 2 taps at steps of 5
    (3 outputs of 12) leave pixels unread, which ones by the samples, so that shape is refused (its row
    skipped); an emulated run of it reads less than x."""
    case = family_case("fractional_max_pool2d", FractionalShape(2, 3, (12, 12), kernel=2, ratio=0.25))
    with pytest.raises(ValueError, match="may leave input pixels unread"):
        case_estimates(case, H100, np.float32)
    fn, sets = case.setup(make_devices(["emu"])[0], np.float32, np.random.default_rng(7))
    with cnn_gpu.emu.profiling() as profile:
        fn(*sets[0])
    forward = profile.launches[0]
    assert forward["kernel"] == "fractional_max_pool_forward" and forward["dram_read_bytes"] < sets[0][0].nbytes


def counted_bytes(profile) -> int:
    (launch,) = profile.launches
    return launch["dram_read_bytes"] + launch["dram_write_bytes"]


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_the_bias_gradient_and_addition_move_the_bytes_the_emulator_counts(dtype):
    """dbias of a convolution's dy (roofline.model_bias_grad), one block a channel and split, and the
    bias a SIMT dgrad adds to conv_transpose2d's output (roofline.conv.bias_add_bytes)."""
    from cnn_gpu.gpu import conv as gpu_conv
    from cnn_gpu.gpu import elementwise
    rng = np.random.default_rng(3)
    for shape in (ConvShape(2, 3, 8, 8, 4, 3, 1, 1), ConvShape(2, 3, 48, 48, 2, 1)):
        g = shape.geometry()
        with cnn_gpu.emu.profiling() as profile:
            gpu_conv.bgrad("emu", rng.standard_normal(g.y_shape).astype(dtype))
        modeled = roofline.model_bias_grad(g, dtype, H100)
        assert (modeled.kernel, modeled.dram_bytes) == (profile.launches[0]["kernel"], counted_bytes(profile))
        with cnn_gpu.emu.profiling() as profile:
            elementwise.bias_add("emu", rng.standard_normal(g.x_shape).astype(dtype),
                                 rng.standard_normal(g.C).astype(dtype))
        assert roofline.conv.bias_add_bytes(g, dtype) == counted_bytes(profile)


def test_a_training_steps_other_launches_move_the_bytes_the_emulator_counts():
    """The small ResNet's step (batch norm with running statistics, residual additions, the linear
    layer, the loss, SGD): every launch but the convolution passes' (whose bias gradients are here),
    in float16, whose step converts the most (the linear layer runs on float32 copies, SGD on master
    weights)."""
    dtype = np.float16
    case = train_step_case(ModelShape("resnet", 2))
    fn, sets = case.setup(make_devices(["emu"])[0], dtype, np.random.default_rng(7))
    with cnn_gpu.emu.profiling() as profile:
        fn(*sets[0])
    counted = Counter((launch["kernel"], launch["dram_read_bytes"] + launch["dram_write_bytes"])
                      for launch in profile.launches if not launch["kernel"].startswith("conv2d"))
    modeled = Counter((e.kernel, e.dram_bytes) for e in case_estimates(case, H100, dtype)
                      if e.kernel not in OUTSIDE and not e.kernel.startswith("conv2d"))
    assert modeled == counted and sum(counted.values()) >= 20


@pytest.mark.parametrize("x_shape, w_shape, padding", [((1, 2, 14, 3, 4), (3, 2, 12, 2, 2), (2, 0, 1)),
                                                       ((1, 2, 4, 14, 3), (3, 2, 2, 13, 1), (0, 3, 0))])
def test_a_long_conv3d_filter_reads_its_bordered_copy_of_x(x_shape, w_shape, padding):
    """A filter past conv3d_fprop's tap-mask fields reads the zero-bordered copy of x its plan makes: the
    model prices that copy's voxels, as the emulator counts them (it priced x's own)."""
    from cnn_gpu.bench.modeled import _conv3d_fprop_estimates
    from cnn_gpu.functional.conv3d import conv3d_geometry
    from cnn_gpu.gpu import conv3d as gpu_conv3d
    g = conv3d_geometry(x_shape, w_shape, padding=padding)
    assert gpu_conv3d.plan_fprop(g, np.float64).padded is not None
    rng = np.random.default_rng(3)
    with cnn_gpu.emu.profiling() as profile:
        gpu_conv3d.fprop("emu", rng.standard_normal(x_shape), rng.standard_normal(w_shape), None, g)
    assert [(e.kernel, e.dram_bytes) for e in _conv3d_fprop_estimates(g, False, np.float64, H100)] == [
        (launch["kernel"], launch["dram_read_bytes"] + launch["dram_write_bytes"]) for launch in profile.launches]
