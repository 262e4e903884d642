"""`cnn-gpu bench`, `cnn-gpu check` and the GPU acceptance command, run on numpy/emu with tiny shapes.

bench: every (op, shape) row present with finite positive times, JSON/CSV valid and equal to the
table, GFLOP/s from the shape formula, emu refused on large shapes, Ctrl-C prints the finished rows.
check: all ops pass on numpy/emu, a planted wrong op fails with a non-zero exit naming the op, and
a backward that is wrong but self-consistent is caught by finite differences.
gpu-check: without a GPU it stops with a clear message and exit status 2.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend, bench, check
from cnn_gpu.cli import main
from helpers import fake_cupy

ROOT = Path(__file__).resolve().parent.parent
EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")


def _table_rows(text: str, first_column: str) -> list[list[str]]:
    """The data rows of a text table printed by bench/check (split on runs of 2+ spaces)."""
    import re
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_column))
    width = len(re.split(r"\s{2,}", lines[start].strip()))
    rows = []
    for line in lines[start + 2:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != width:
            break
        rows.append(cells)
    return rows


def _bench(capsys, *args):
    code = main(["bench", "--shapes", "tiny", "--repeat", "2", "--no-progress", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- bench ------------------------------------------------------------------------------------------

def test_bench_numpy_table_json_csv(tmp_path, capsys):
    json_path, csv_path = tmp_path / "b.json", tmp_path / "b.csv"
    code, out, err = _bench(capsys, "--device", "numpy", "--json", str(json_path), "--csv", str(csv_path))
    assert code == 0, err
    cases = bench.make_cases("tiny")
    rows = _table_rows(out, "op ")
    assert [(r[0], r[1], r[2]) for r in rows] == [(c.op, c.label, "numpy") for c in cases]
    for row in rows:
        assert math.isfinite(float(row[3])) and float(row[3]) > 0, row
    data = json.loads(json_path.read_text())
    assert data["meta"]["shapes"] == "tiny" and data["meta"]["numpy"] == np.__version__
    assert [(r["op"], r["shape"]) for r in data["rows"]] == [(c.op, c.label) for c in cases]
    for record, case in zip(data["rows"], cases):
        assert math.isfinite(record["median_ms"]) and record["median_ms"] > 0
        assert record["repeats"] == 2
        assert record["flops"] == case.flops
        if case.flops:
            assert record["gflops"] == pytest.approx(case.flops / record["median_ms"] / 1e6)
    with open(csv_path, newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["op"], r["shape"], float(r["median_ms"])) for r in csv_rows] == \
        [(r["op"], r["shape"], r["median_ms"]) for r in data["rows"]]


@needs_emu
def test_bench_emu_tiny(capsys):
    code, out, err = _bench(capsys, "--device", "numpy,emu", "--repeat", "1")
    assert code == 0, err
    rows = _table_rows(out, "op ")
    cases = bench.make_cases("tiny")
    assert [(r[0], r[1], r[2]) for r in rows] == [(c.op, c.label, d) for c in cases for d in ("numpy", "emu")]
    for row in rows:
        assert math.isfinite(float(row[3])) and float(row[3]) > 0, row
    speedups = [r[-1] for r in rows if r[2] == "emu"]
    assert all(s.endswith("x") and math.isfinite(float(s[:-1])) for s in speedups)
    assert "emu: emulator on the CPU" in out


@needs_emu
def test_bench_replayed_train_step_runs_on_the_kernel_backends_only(capsys):
    code, out, err = _bench(capsys, "--device", "numpy,emu,model:h100", "--ops", "train_step_replayed",
                            "--repeat", "1")
    assert code == 0, err
    measured = [tuple(r[:3]) for r in _table_rows(out, "op ") if not r[2].startswith("model:")]
    assert measured == [("train_step_replayed", c.label, "emu") for c in bench.make_cases("tiny", ["train_step"])]
    assert "train_step_replayed" not in bench.DEFAULT_OPS


def test_bench_refuses_emu_on_large_shapes_and_bad_arguments(capsys):
    assert main(["bench", "--device", "emu", "--shapes", "default"]) == 2
    assert "--shapes tiny" in capsys.readouterr().err
    assert main(["bench", "--device", "emu", "--shapes", "tiny", "--batch", "5"]) == 2
    assert "far too slow for --shapes tiny --batch 5" in capsys.readouterr().err   # not the shape set's fault
    assert main(["bench", "--ops", "conv2d,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["bench", "--device", "numpy,tpu"]) == 2
    assert "tpu" in capsys.readouterr().err
    assert main(["bench", "--repeat", "0"]) == 2
    assert "--repeat" in capsys.readouterr().err


def test_bench_records_which_blas_kernels_ran(monkeypatch):
    """threadpoolctl's library version and CPU kernels (OpenBLAS: "architecture") are recorded and
    shown, and only BLAS pools count as NumPy's (torch's OpenMP pool is no BLAS)."""
    pytest.importorskip("threadpoolctl")
    from cnn_gpu.bench.rows import environment
    from cnn_gpu.cli.bench import _machine_line
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    meta = environment()
    blas = [p for p in meta["blas"] if p["user_api"] == "blas"]
    assert blas and all("version" in p and "filepath" in p for p in blas)
    assert meta["openblas_env"]["OPENBLAS_CORETYPE"] == "Haswell"
    meta["blas"] = [{"api": "openblas", "user_api": "blas", "threads": 2, "version": "0.3.31", "architecture": "Zen"},
                    {"api": "openmp", "user_api": "openmp", "threads": 4}]
    line = _machine_line(meta)
    assert "NumPy" in line and "(openblas 0.3.31, Zen kernels, 2 threads)" in line and "openmp" not in line
    assert "OPENBLAS_CORETYPE=Haswell" in line


def test_bench_plot(tmp_path, capsys):
    png = tmp_path / "b.png"
    code, out, err = _bench(capsys, "--device", "numpy", "--ops", "conv2d,avg_pool2d", "--plot", str(png))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 2 and "matplotlib" in err and not png.exists()
        return
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_ctrl_c_prints_finished_rows(capsys, monkeypatch):
    real_measure = bench.measure
    calls = []

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(bench.timing, "measure", interrupt_third)
    code, out, err = _bench(capsys, "--device", "numpy", "--ops", "conv2d,conv2d_dgrad")
    assert code == 130
    assert len(_table_rows(out, "op ")) == 2
    assert "interrupted: 2 of 4 rows done" in err


def test_flop_counts():
    stem = bench.RESNET_LAYERS[0]            # 16,3,224,224,64,7,2,3 -> 112x112 outputs
    assert stem.geometry().flops == 2 * 16 * 64 * 112 * 112 * 3 * 7 * 7
    model = bench.build_model(bench.ModelShape("cnn", 5), np.float32)
    per_image = 2 * (32 * 8 * 8 * 1 * 9 + 64 * 4 * 4 * 32 * 9 + 10 * 64 * 2 * 2)   # 32 and 64 filters
    assert bench.model_flops(model, (5, 1, 8, 8)) == 5 * per_image
    (case,) = bench.make_cases("tiny", ["train_step"])
    assert case.flops == 3 * 4 * per_image


def test_derived_columns():
    def row(device, ms, gflops=None):
        return bench.Row("conv2d", "s", device, "float32", ms, 3, gflops)
    rows = bench.finish_rows([row("numpy", 10.0), row("cuda", 0.5, 2000.0), row("torch-cuda", 0.25, 4000.0)],
                             {"float32": 40000.0, "float64": 20000.0})
    assert rows[0].speedup_vs_numpy is None
    assert rows[1].speedup_vs_numpy == pytest.approx(20.0) and rows[1].pct_peak == pytest.approx(5.0)
    assert rows[1].pct_cudnn == pytest.approx(50.0) and rows[2].pct_cudnn is None
    table = bench.format_table(rows)
    assert "% peak" in table and "% cuDNN" in table and "50.0%" in table


def test_bench_math_modes_side_by_side(tmp_path, capsys):
    """--math fp32,tf32: each conv case once per mode, its modes side by side; a pooling case once
    (no mode); PyTorch on the CPU has fp32 rows only, and the output says why."""
    path = tmp_path / "m.json"
    devices = ["numpy"] + (["torch"] if bench.torch_or_none() else [])
    ops = ["conv2d", "conv2d_wgrad", "avg_pool2d"]
    code, out, err = _bench(capsys, "--device", ",".join(devices), "--ops", ",".join(ops), "--math", "fp32,tf32",
                            "--json", str(path))
    assert code == 0, err
    expected = [(c.op, c.label, device, mode) for c in bench.make_cases("tiny", ops)
                for mode in (("fp32", "tf32") if c.op != "avg_pool2d" else ("",))
                for device in devices if not (device == "torch" and mode == "tf32")]
    data = json.loads(path.read_text())
    assert [(r["op"], r["shape"], r["device"], r["math"]) for r in data["rows"]] == expected
    assert data["meta"]["math"] == ["fp32", "tf32"]
    table = _table_rows(out, "op ")
    assert [(r[0], r[1], r[2], r[3]) for r in table] == [(op, shape, device, mode or "-")
                                                         for op, shape, device, mode in expected]
    if "torch" in devices:
        assert "torch: no tf32 rows: PyTorch has no TF32 mode on the CPU" in out
    assert main(["bench", "--math", "tf32", "--dtype", "float64"]) == 2
    assert "float32" in capsys.readouterr().err
    assert main(["bench", "--math", "fp16"]) == 2
    assert "unknown math mode" in capsys.readouterr().err


def test_bench_conv_passes_follow_the_math_mode():
    """The dgrad and wgrad cases go through the op's routing, so the mode rounds their operands."""
    from cnn_gpu import functional as F, precision
    for op, output in (("conv2d_dgrad", 0), ("conv2d_wgrad", 1)):
        case = bench.make_cases("tiny", [op])[0]
        fn, sets = case.setup(bench.NumpyDevice(), np.dtype(np.float32), np.random.default_rng(0))
        x, w, _, _, dy = sets[0]
        g = case.shape.geometry()
        args = dict(stride=g.stride, padding=g.padding, backend="numpy")
        with precision.math_mode("tf32"):
            got, want = fn(*sets[0]), F.conv2d_backward(dy, x, w, **args)[output]
        exact = F.conv2d_backward(dy, x, w, **args)[output]
        assert np.array_equal(got, want) and not np.allclose(got, exact, rtol=1e-6, atol=0), op


def test_bench_batch_norm_runs_a_training_step_of_the_layer():
    """The batch_norm op: statistics, normalisation and backward of a conv's input, the same on
    numpy and emu (and PyTorch where installed); its model: the four launches at 8 passes over x and
    24 values a channel (statistics, running ones, weight, bias, their gradients and the sums)."""
    from cnn_gpu import roofline
    from cnn_gpu.bench import modeled
    case = bench.make_cases("tiny", ["batch_norm"])[0]
    results = {}
    for device in [bench.NumpyDevice(), bench.EmuDevice()]:
        fn, sets = case.setup(device, np.dtype(np.float64), np.random.default_rng(0))
        results[device.backend] = [np.asarray(a) for a in fn(*sets[0])]
    for got, want in zip(results["emu"], results["numpy"]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    torch = bench.torch_or_none()
    if torch is not None:
        fn, sets = case.setup(bench.TorchDevice(), np.dtype(np.float64), np.random.default_rng(0))
        for got, want in zip(fn(*sets[0]), results["numpy"]):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-8, atol=1e-10)
    estimates = modeled.case_estimates(case, roofline.spec("h100"), "float64")
    x = np.prod(case.shape.geometry().x_shape) * 8
    assert [e.kernel for e in estimates] == ["batch_norm_stats", "batch_norm_forward", "batch_norm_backward_sums",
                                             "batch_norm_backward_dx"]
    assert sum(e.dram_bytes for e in estimates) == 8 * x + 24 * case.shape.C * 8


def test_torch_cuda_tf32_flags_follow_the_math_mode():
    torch = pytest.importorskip("torch")
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    device = bench.TorchDevice("torch-cuda")
    try:
        device.prepare("tf32")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        device.prepare("fp32")
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    assert device.math_unsupported("tf32") == "" and "no TF32" in bench.TorchDevice("torch").math_unsupported("tf32")


def test_derived_columns_pair_rows_of_the_same_math_mode():
    def row(device, math, ms, gflops=None):
        return bench.Row("conv2d", "s", device, "float32", ms, 3, gflops, math=math)
    rows = [row("numpy", "fp32", 10.0), row("numpy", "tf32", 12.0), row("cuda", "fp32", 0.5, 2000.0),
            row("cuda", "tf32", 0.1, 10000.0), row("torch-cuda", "fp32", 0.25, 4000.0),
            row("torch-cuda", "tf32", 0.05, 20000.0)]
    bench.finish_rows(rows, {"float32": 40000.0, "float64": 20000.0, "tf32": 400000.0})
    cuda_fp32, cuda_tf32 = rows[2], rows[3]
    assert cuda_fp32.speedup_vs_numpy == pytest.approx(20.0) and cuda_tf32.speedup_vs_numpy == pytest.approx(120.0)
    assert cuda_fp32.pct_peak == pytest.approx(5.0) and cuda_tf32.pct_peak == pytest.approx(2.5)
    assert cuda_fp32.pct_cudnn == pytest.approx(50.0) and cuda_tf32.pct_cudnn == pytest.approx(50.0)
    fresh = [row("cuda", "tf32", 0.1, 10000.0)]
    assert bench.finish_rows(fresh, {"float32": 40000.0, "float64": 20000.0})[0].pct_peak is None   # no TF32 peak
    assert "  tf32  " in bench.format_table(rows)


def test_bench_dtypes_side_by_side(tmp_path, capsys):
    """--dtype float32,float16 with --math fp32,tf32: each case once per dtype (the float32
    convolutions once per mode too), side by side, with a dtype column; the model's float16 rows
    count 2-byte elements, their % of peak of the FP16 tensor-core peak where the FLOPs run on
    tensor cores (a convolution on sm_90), of the FP32 FMA peak elsewhere (pooling)."""
    path = tmp_path / "d.json"
    ops = ["conv2d", "avg_pool2d"]
    code, out, err = _bench(capsys, "--device", "numpy", "--ops", ",".join(ops), "--dtype", "float32,float16",
                            "--math", "fp32,tf32", "--json", str(path))
    assert code == 0, err
    expected = [(c.op, c.label, "numpy", dtype, mode) for c in bench.make_cases("tiny", ops)
                for dtype in ("float32", "float16")
                for mode in (("fp32", "tf32") if c.op == "conv2d" and dtype == "float32" else ("",))]
    data = json.loads(path.read_text())
    assert [(r["op"], r["shape"], r["device"], r["dtype"], r["math"]) for r in data["rows"]] == expected
    assert data["meta"]["dtype"] == ["float32", "float16"] and "dtype=float32,float16 math=fp32,tf32" in out
    assert [tuple(r[:5]) for r in _table_rows(out, "op ")] == [(op, shape, device, dtype, mode or "-")
                                                              for op, shape, device, dtype, mode in expected]
    pool = bench.make_cases("tiny", ["avg_pool2d"])[:1]
    rows = list(bench.run_cases(pool, bench.make_devices(["model:h100"]), ["float32", "float16"], progress=False))
    g = pool[0].shape.geometry()
    elements = math.prod(g.x_shape) + math.prod(g.y_shape)
    assert [r.model_launches[0]["dram_bytes"] for r in rows] == [4 * elements, 2 * elements]
    spec = bench.make_devices(["model:h100"])[0].spec
    assert rows[1].model_pct_peak == pytest.approx(100 * rows[1].model_gflops * 1e9 / spec.peak_flops("float32"))
    conv = bench.make_cases("tiny", ["conv2d"])[:1]
    tensor = next(bench.run_cases(conv, bench.make_devices(["model:h100"]), "float16", progress=False))
    assert tensor.model_pct_peak == pytest.approx(100 * tensor.model_gflops * 1e9 / spec.fp16_peak_flops)
    assert "float16: % peak of the dense FP16 tensor-core peak" in bench.format_table(rows)
    assert main(["bench", "--dtype", "float32,float8"]) == 2
    assert "float8" in capsys.readouterr().err


def test_derived_columns_pair_rows_of_the_same_dtype():
    def row(device, dtype, ms, gflops=None):
        return bench.Row("conv2d", "s", device, dtype, ms, 3, gflops)
    rows = [row("numpy", "float32", 10.0), row("numpy", "float16", 20.0), row("cuda", "float32", 0.5, 2000.0),
            row("cuda", "float16", 0.1, 10000.0), row("torch-cuda", "float16", 0.05, 20000.0)]
    bench.finish_rows(rows, {"float32": 40000.0, "float64": 20000.0, "tf32": 400000.0, "float16": 800000.0})
    cuda32, cuda16 = rows[2], rows[3]
    assert cuda32.speedup_vs_numpy == pytest.approx(20.0) and cuda16.speedup_vs_numpy == pytest.approx(200.0)
    assert cuda32.pct_peak == pytest.approx(5.0) and cuda16.pct_peak == pytest.approx(1.25)
    assert cuda32.pct_cudnn is None and cuda16.pct_cudnn == pytest.approx(50.0)
    assert "  float16  " in bench.format_table(rows)
    assert "float16" not in bench.format_table(rows[:1] + rows[2:3])   # one dtype: no dtype column


def test_model_prices_a_float16_optimizer_step_with_fp32_master_weights(monkeypatch):
    """float16 parameters write themselves and read their gradient in 2 bytes, and read and write
    an FP32 master weight and momentum: 20 bytes per parameter, as a float32 step, 8 parameters
    an update launch. The convolutions' kernels take stated traits: gathering the real ones
    (compiles and emulator profiles of every tile, about 2 minutes) is
    test_bench_dtypes_side_by_side's and tests/test_roofline.py's part."""
    from cnn_gpu import roofline
    from cnn_gpu.bench import modeled
    monkeypatch.setattr(roofline, "kernel_traits", lambda *args: roofline.KernelTraits(128, 32768, 0.8, 0.001))
    case = bench.make_cases("tiny", ["train_step"])[0]
    spec = roofline.spec("h100")
    sizes = [p.data.size for p in bench.build_model(case.shape, np.float32).parameters()]
    for dtype, kernel in (("float32", "sgd_momentum_step"), ("float16", "sgd_momentum_step_master")):
        updates = [e.dram_bytes for e in modeled.case_estimates(case, spec, dtype) if e.kernel == kernel]
        assert updates == [20 * sum(sizes[first:first + 8]) for first in range(0, len(sizes), 8)], dtype


def test_batch_option_rescales_a_shape_set(capsys):
    layers = bench.make_cases("resnet", ["conv2d"])
    at_128 = bench.make_cases("resnet", ["conv2d"], batch=128)
    assert len(at_128) == len(layers) == 11
    for small, large in zip(layers, at_128):
        assert large.label == "128" + small.label[small.label.index(","):]
        assert large.flops == 8 * small.flops
    pools = bench.make_cases("resnet", ["fractional_max_pool2d", "fractional_max_pool3d"], batch=128)
    assert [c.shape.N for c in pools] == [128, 128] and [c.shape.y_shape[0] for c in pools] == [128, 128]
    assert main(["bench", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err


@pytest.mark.torch
def test_torch_mirror_is_the_same_network():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for name in ("cnn", "resnet"):
        model = bench.build_model(bench.ModelShape(name, 3), np.float64)
        x = rng.standard_normal((3, 1, 8, 8))
        mirror = bench.torch_mirror(model, torch)
        with torch.no_grad():
            expected = mirror(torch.from_numpy(x)).numpy()
        got = model(x)
        assert np.max(np.abs(got - expected)) <= 1e-10 * np.max(np.abs(expected)), name



def test_torch_mirror_and_leaf_layers_take_a_batch_norm1d_head():
    """An MLP head (Linear, BatchNorm1d, ReLU): mirrored as torch's layers, its ReLU listed as run
    inside the batch norm (nn.Sequential fuses it), modeled as the batch norm kernels' passes."""
    torch = pytest.importorskip("torch")
    from cnn_gpu import nn
    from cnn_gpu.bench.modeled import _layer_passes
    from cnn_gpu.bench.training import WithActivation, leaf_layers
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8, dtype=np.float64, rng=1), nn.BatchNorm1d(8, dtype=np.float64),
                          nn.ReLU(), nn.Linear(8, 3, dtype=np.float64, rng=2))
    x = np.random.default_rng(4).standard_normal((4, 1, 8, 8))
    mirror = bench.torch_mirror(model, torch)
    with torch.no_grad():
        expected = mirror(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(model(x) - expected)) <= 1e-10 * np.max(np.abs(expected))
    assert [type(leaf).__name__ for leaf, *_ in leaf_layers(model, x.shape)] == ["Flatten", "Linear", "WithActivation",
                                                                                 "Linear"]
    assert leaf_layers(model, x.shape)[2][0] == WithActivation(model[2], "relu")
    assert [name for name, _ in _layer_passes(WithActivation(model[2], "relu"), 32, 32, 8)] == [
        "batch_norm_stats", "batch_norm_forward", "batch_norm_backward_sums", "batch_norm_backward_dx"]

# --- check ------------------------------------------------------------------------------------------

def _check(capsys, *args):
    code = main(["check", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_check_numpy_passes(tmp_path, capsys, dtype):
    path = tmp_path / "c.json"
    code, out, err = _check(capsys, "--device", "numpy", "--dtype", dtype, "--json", str(path))
    assert code == 0, out + err
    rows = _table_rows(out, "op ")
    assert [r[0] for r in rows] == list(check.OPS)
    for op, configs, error, tol, fd_error, fd_tol, verdict in rows:
        assert int(configs) >= 6 and verdict == "PASS"
        assert 0 <= float(error) <= float(tol) and float(fd_error) <= float(fd_tol)
        assert 0 < float(fd_error) or not check.OPS[op].grads   # an optimizer's step has no finite differences
    assert float(rows[0][3]) == check.TOLERANCE[dtype] * (check.REDUCTION_SCALE if dtype == "float32" else 1)
    results = json.loads(path.read_text())["results"]
    assert all(r["passed"] for r in results) and len(results) == len(check.OPS)


@needs_emu
def test_check_emu_quick(capsys):
    code, out, err = _check(capsys, "--device", "emu", "--quick")
    assert code == 0, out + err
    rows = _table_rows(out, "op ")
    assert [r[0] for r in rows] == list(check.OPS) and all(r[-1] == "PASS" for r in rows)


def test_check_of_numpy_runs_float32_against_float64_by_default(capsys):
    """Its default dtype used to be float64: the oracle compared with itself (errors all 0)."""
    code, out, err = _check(capsys, "--device", "numpy", "--quick", "--ops", "sigmoid")
    assert code == 0 and "dtype=float32" in out
    assert 0 < float(_table_rows(out, "op ")[0][2]) < 1e-5


@contextlib.contextmanager
def _overridden(name, run):
    """check runs `run` in place of op `name` inside the block."""
    check.register_override(name, run)
    try:
        yield
    finally:
        check.clear_overrides()


def test_check_fails_on_a_planted_wrong_op(capsys):
    def wrong_conv(inputs, cfg, be):
        out = check.OPS["conv2d"].run(inputs, cfg, be)
        out["dweight"] = out["dweight"] * (1 + 1e-3)
        return out

    with _overridden("conv2d", wrong_conv):
        code, out, err = _check(capsys, "--device", "numpy", "--quick", "--ops", "conv2d,relu")
    assert code == 1
    rows = {r[0]: r for r in _table_rows(out, "op ")}
    assert rows["conv2d"][-1] == "FAIL" and rows["relu"][-1] == "PASS"
    assert float(rows["conv2d"][2]) == pytest.approx(1e-3, rel=0.01)
    assert "FAIL conv2d: error" in out and "dweight" in out and "FAILED: conv2d" in out


def test_check_fails_on_a_planted_nan():
    """A NaN in an output after the first (here relu's dx) fails: NaN must not lose every comparison."""
    def nan_relu(inputs, cfg, be):
        out = check.OPS["relu"].run(inputs, cfg, be)
        out["dx"].reshape(-1)[-1] = np.nan
        return out

    with _overridden("relu", nan_relu):
        result = next(check.check_ops("numpy", ["relu"], mode="quick"))
    assert not result.passed
    assert result.error == np.inf and "dx" in result.worst
    assert check.relative_error(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == np.inf
    assert check.relative_error(np.array([1.0, np.nan]), np.array([1.0, np.nan])) == 0.0


def test_check_fails_an_op_that_writes_into_its_input():
    """relu's backward writing dx into dy: numpy float64 hands the op the very input arrays, and the
    finite differences after it read the damaged dy, so forward and backward still agreed."""
    def clobbering_relu(inputs, cfg, be):
        out = check.OPS["relu"].run(inputs, cfg, be)
        inputs["dy"][...] = out["dx"]
        return out

    with _overridden("relu", clobbering_relu):
        result = next(check.check_ops("numpy", ["relu"], mode="quick"))
    assert not result.passed and "the op wrote into its input dy" in result.failure


def test_finite_differences_catch_a_consistent_wrong_backward():
    """A backward that NumPy and the device would share (so no cross-check sees it) still fails."""
    spec = check.OPS["avg_pool2d"]
    cfg = check.pool.POOL_EDGES[1]
    inputs = spec.inputs(cfg, np.random.default_rng(0))

    def wrong(a, cfg, be):
        out = spec.run(a, cfg, be)
        out["dx"] = out["dx"] * 0.5
        return out

    assert check.compare._finite_differences(spec, spec.run, dict(inputs), cfg, "numpy", {}, 0).max_rel_error < 1e-6
    assert check.compare._finite_differences(spec, wrong, dict(inputs), cfg, "numpy", {}, 0).max_rel_error > 0.3


def test_check_bad_arguments(capsys):
    assert _check(capsys, "--device", "numpy", "--ops", "conv4d")[0] == 2
    with pytest.raises(ValueError, match="unknown op"):
        check.register_override("conv4d", lambda *a: None)


# --- help and the GPU acceptance command -------------------------------------------------------------

@pytest.mark.parametrize("command, words", [("bench", ["--shapes", "resnet", "GFLOP/s", "torch-cuda"]),
                                            ("check", ["--thorough", "--quick", "finite differences"])])
def test_help(capsys, command, words):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out


@pytest.mark.skipif(backend.cupy_or_none() is not None, reason="a GPU is present: gpu-check would run for real")
def test_gpu_check_without_gpu_stops_with_a_message(tmp_path):
    result = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no usable NVIDIA GPU" in result.stderr and "cnn-gpu check --device emu" in result.stderr
    assert not (tmp_path / "out").exists()


def test_acceptance_report(tmp_path):
    from cnn_gpu import acceptance
    good = acceptance.run_step(acceptance.Step("table", [sys.executable, "-c", "print('| a | b |')", "--markdown"],
                                               60))
    bad = acceptance.run_step(acceptance.Step("crash", [sys.executable, "-c",
                                                        "import sys; print('x\\ry', file=sys.stderr); sys.exit(3)"],
                                              60))
    skipped = acceptance.Step("tests", ["pytest"], 60, skipped="no tests/ folder")
    report = tmp_path / "r.md"
    acceptance.write_report(report, [("GPU", "test GPU")], [good, bad, skipped], "2026-01-01 00:00")
    text = report.read_text()
    assert "Overall: **FAIL**" in text
    assert "| table | PASS | 0 |" in text and "| crash | FAIL | 3 |" in text and "| tests | SKIPPED |" in text
    assert "\n| a | b |\n" in text and "| GPU | test GPU |" in text
    assert "\ny\n" in text and "x\ry" not in text   # progress redraws collapsed


def test_acceptance_runs_every_required_command(tmp_path):
    from cnn_gpu import acceptance
    commands = [" ".join(step.command[1:]) for step in acceptance.steps("python", tmp_path, quick=False)]
    required = ["-m pytest -m gpu", "-m cnn_gpu check --device cuda --thorough", "-m cnn_gpu kernels",
                "-m cnn_gpu bench --shapes resnet", "-m cnn_gpu train --device cuda"]
    for start in required:
        assert any(c.startswith(start) for c in commands), (start, commands)
    bench_devices = next(c for c in commands if " bench " in f" {c} ").split("--device ")[1].split()[0]
    assert bench_devices.split(",")[-1] == "model:gpu"   # the model beside the measured rows
    assert any("--dtype float32" in c for c in commands if " check " in c)
    assert any("--math tf32" in c for c in commands if " check " in c)          # the tensor-core kernels
    assert any("--math fp32,tf32" in c for c in commands if " bench " in f" {c} ")
    assert any(c.startswith("benchmarks/tc_plans.py") for c in commands)   # the planner's choices, measured
    assert any(c.startswith("benchmarks/mma_rate.py") for c in commands)   # the rate the model assumes, measured
    assert any("train_step_replayed" in c for c in commands if " bench " in f" {c} ")   # cnn_gpu.replay, measured
    assert any(c.endswith("--replay") for c in commands if " train " in f" {c} ")


def test_gpu_timing_uses_one_event_pair_per_call():
    """The CUDA-event path of the timer, with events that read a fake clock the calls advance."""
    clock = [0.0]
    log = []

    class Event:
        def record(self):
            self.t = clock[0]

    def call(x):
        log.append(x)
        clock[0] += x

    times = bench.devices._event_times(call, [(1.0,), (2.0,), (3.0,)], 5, Event, lambda: None,
                               lambda start, stop: (stop.t - start.t) / 1e3)
    assert log == [1.0, 2.0, 3.0, 1.0, 2.0]          # input sets cycled
    assert times == [1e-3, 2e-3, 3e-3, 1e-3, 2e-3]


def test_acceptance_main_writes_the_report_and_fails_on_a_failed_step(tmp_path, monkeypatch, capsys):
    """The orchestration of gpu-check with the GPU facts faked and two quick stand-in steps."""
    from cnn_gpu import acceptance
    monkeypatch.setattr(acceptance, "gpu_problem", lambda: "")
    monkeypatch.setattr(acceptance, "environment", lambda: [("GPU", "pretend")])
    monkeypatch.setattr(acceptance, "steps", lambda python, out, quick: [
        acceptance.Step("check", [python, "-m", "cnn_gpu", "check", "--device", "numpy", "--quick", "--ops",
                                  "relu", "--markdown"], 120),
        acceptance.Step("broken", [python, "-c", "raise SystemExit(4)"], 120)])
    assert acceptance.main(["--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    report = tmp_path / "gpu-check-report.md"
    assert f"report written to {report.resolve()}" in out and "FAILED: broken" in out
    text = report.read_text()
    assert "| check | PASS | 0 |" in text and "| broken | FAIL | 4 |" in text
    assert "| relu | 2 |" in text   # the check's markdown table, pasted as a table


def test_a_budget_runs_the_lease_steps_and_cuts_the_step_it_ends_in(tmp_path, monkeypatch, capsys):
    """--budget (a GPU lent for minutes): steps run in order while the budget lasts; the one it ends
    in is stopped with its child processes (CUT, not a failure), the rest are not started, and the
    report says so."""
    from cnn_gpu import acceptance
    monkeypatch.setattr(acceptance, "gpu_problem", lambda: "")
    monkeypatch.setattr(acceptance, "environment", lambda: [("GPU", "pretend")])
    monkeypatch.setattr(acceptance, "MIN_STEP_S", 1)
    sleeper = "import subprocess; print('started', flush=True); subprocess.run(['sleep', '60'])"
    monkeypatch.setattr(acceptance, "lease_steps", lambda python, out: [
        acceptance.Step("first", [python, "-c", "print('done')"], 60),
        acceptance.Step("long", [python, "-c", sleeper], 600),
        acceptance.Step("never", [python, "-c", "print('ran')"], 60)])
    assert acceptance.main(["--out", str(tmp_path), "--budget", "4"]) == 0
    out = capsys.readouterr().out
    assert "1 of 3 steps passed; CUT: long; SKIPPED: never" in out and "=== never" not in out
    text = (tmp_path / "gpu-check-report.md").read_text()
    assert "Overall: **PASS**" in text and "| first | PASS | 0 |" in text and "| long | CUT |" in text
    assert "cut at the end of the --budget after" in text and "| never | SKIPPED |" in text
    assert "not started:" in text and "of the --budget of 4 s were left" in text


def test_only_runs_the_named_steps_and_refuses_an_unknown_one(tmp_path, monkeypatch, capsys):
    """--only (rerun what failed or what a lease cut): the named steps alone, in their order; an
    unknown title lists the steps before anything runs."""
    from cnn_gpu import acceptance
    monkeypatch.setattr(acceptance, "gpu_problem", lambda: "")
    monkeypatch.setattr(acceptance, "environment", lambda: [("GPU", "pretend")])
    monkeypatch.setattr(acceptance, "steps", lambda python, out, quick: [
        acceptance.Step(title, [python, "-c", f"print('ran {title}')"], 60) for title in ("a", "b c", "d --e")])
    assert acceptance.main(["--out", str(tmp_path), "--only", "d --e, a"]) == 0
    out = capsys.readouterr().out
    assert "ran a" in out and "ran d --e" in out and "ran b c" not in out and out.index("ran a") < out.index("ran d")
    assert "2 of 2 steps passed" in out
    with pytest.raises(SystemExit):
        acceptance.main(["--out", str(tmp_path / "x"), "--only", "a,nope"])
    err = capsys.readouterr().err
    assert "no step 'nope'; the steps are: a, b c, d --e" in err and not (tmp_path / "x").exists()


def test_only_with_a_budget_reruns_a_step_as_the_lease_ran_it(tmp_path, monkeypatch):
    """--budget --only "check tf32" reruns the lease's quick check (what a cut lease left undone),
    not the full run's thorough one; a step the lease does not run comes as the full run has it."""
    from cnn_gpu import acceptance
    monkeypatch.setattr(acceptance, "gpu_problem", lambda: "")
    monkeypatch.setattr(acceptance, "environment", lambda: [("GPU", "pretend")])
    ran = []

    def run_step(step, left):   # recorded, not run: the commands need a GPU
        ran.append(step)
        step.returncode = 0
        return step
    monkeypatch.setattr(acceptance, "run_step", run_step)
    assert acceptance.main(["--out", str(tmp_path), "--budget", "600", "--only", "check tf32,train fp16"]) == 0
    assert [step.title for step in ran] == ["check tf32", "train fp16"]
    leased = {step.title: step for step in acceptance.lease_steps(sys.executable, tmp_path)}
    full = {step.title: step for step in acceptance.steps(sys.executable, tmp_path, quick=False)}
    assert "--quick" in ran[0].command and ran[0].command == leased["check tf32"].command
    assert "train fp16" not in leased and ran[1].command == full["train fp16"].command


def test_the_lease_steps_calibrate_the_model_and_check_the_tensor_cores_first(tmp_path):
    from cnn_gpu import acceptance
    lease = acceptance.lease_steps("python", tmp_path)
    assert [step.title for step in lease] == [title for title, _ in acceptance.LEASE_STEPS]
    commands = [" ".join(step.command[1:]) for step in lease]
    assert commands[0].startswith("benchmarks/mma_rate.py")
    assert "--quick --math tf32" in commands[1] and "--quick --dtype float16" in commands[2]
    assert commands[3] == "benchmarks/tc_plans.py --markdown"   # batch 128, as in full
    assert "--shapes resnet" in commands[4] and commands[5].startswith("-m pytest -m gpu")
    for bad in (["--budget", "0"], ["--budget", "60", "--quick"]):
        with pytest.raises(SystemExit):
            acceptance.main(bad)


def test_gpu_check_names_a_missing_nvrtc_instead_of_a_traceback(monkeypatch):
    """CuPy imports and sees a GPU, but the cuda backend cannot run (here: no NVRTC): gpu-check
    stops with the backend's reason (exit 2), and the report's facts do not crash on the missing
    properties."""
    from cnn_gpu import acceptance, backend as backend_module
    from cnn_gpu.bench import devices
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(nvrtc_error="libnvrtc.so not found"))
    monkeypatch.setattr(backend_module, "why_unavailable", lambda be: "NVRTC, which compiles the kernels, does not load")
    assert acceptance.gpu_problem() == "NVRTC, which compiles the kernels, does not load"
    monkeypatch.setattr(devices, "gpu_properties", lambda: {})
    facts = dict(acceptance.environment())
    assert facts["GPU"] == "properties unreadable: NVRTC, which compiles the kernels, does not load"
    assert facts["NVRTC"].startswith("unavailable")


@pytest.mark.parametrize("capability, arch", [("80", 80), ("90", 90), ("100", 100), ("120", 120)])
def test_compute_capabilities_of_three_digits_are_read_whole(monkeypatch, capability, arch):
    from cnn_gpu.gpu import conv_tc
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(archs=(capability,)))
    conv_tc._device_arch.cache_clear()   # cached per device id
    try:
        assert conv_tc._device_arch(0) == arch
    finally:
        conv_tc._device_arch.cache_clear()


@pytest.mark.parametrize("argv, error", [
    (["check", "--device", "numpy", "--quick", "--ops", "relu", "--seed", "-1"], "must be an integer in [0, 2^64)"),
    (["bench", "--device", "numpy", "--shapes", "tiny", "--seed", "-1"], "must be an integer in [0, 2^64)"),
    (["train", "--seed", str(2**64)], "must be an integer in [0, 2^64)"),   # the Philox streams' 64 bits
    (["check", "--device", "numpy", "--quick", "--ops", "relu", "--json", "{dir}"], "is a folder, not a file"),
    (["check", "--device", "numpy", "--quick", "--ops", "relu", "--json", "{dir}/no/x.json"], "folder does not exist"),
    (["bench", "--device", "numpy", "--shapes", "tiny", "--ops", "relu", "--csv", "{dir}"], "is a folder"),
    (["bench", "--device", "numpy", "--shapes", "tiny", "--ops", "relu", "--json", "{dir}/no/x.json"],
     "folder does not exist"),
    (["bench", "--nproc", "2", "--repeat", "-1"], "--repeat must be >= 1"),
    (["bench", "--nproc", "2", "--batch", "0"], "--batch must be >= 1"),
    (["bench", "--nproc", "2", "--device", "numpy"], "it takes no --device"),
    (["bench", "--nproc", "2", "--dtype", "float16", "--math", "tf32"], "it takes no --dtype, --math"),
    (["bench", "--nproc", "2", "--json", "{dir}"], "is a folder"),
    # "-" is standard output for `kernels --json` alone: these wrote a file named "-" after the work
    (["check", "--device", "numpy", "--quick", "--ops", "relu", "--json", "-"], "--json output to a file only"),
    (["bench", "--device", "numpy", "--shapes", "tiny", "--ops", "relu", "--csv", "-"], "--csv output to a file only"),
    (["bench", "--nproc", "2", "--json", "-"], "--json output to a file only")])
def test_bad_seeds_and_output_paths_are_refused_before_any_work(tmp_path, capsys, argv, error):
    """Found by running option combinations no test ran: these ended in a traceback (a negative
    seed, a seed past Philox's 64 bits, an output path written only after the work), or ran with
    absurd values (bench --nproc took --repeat -1 and dropped --device silently)."""
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) if "--seed" in argv else contextlib.nullcontext():
        assert main(argv) == 2
    assert error in capsys.readouterr().err


def test_name_lists_are_deduplicated_and_never_empty(capsys):
    from cnn_gpu.cli import comma_list
    assert comma_list("relu, relu,conv2d,") == ["relu", "conv2d"]
    for argv in (["check", "--ops", ","], ["bench", "--dtype", ","], ["kernels", "--arch", ","]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "expected one name or more" in capsys.readouterr().err


@pytest.mark.parametrize("argv, error", [
    (["--file", ""], "expected one name or more"),   # exited with status 2 and no word
    (["--family", " , "], "expected one name or more"),
    (["--jobs", "-5"], "must be an integer >= 1"),   # ran with one job
    (["--arch", ""], "expected one name or more")])   # compiled every default arch
def test_kernels_refuses_empty_selections_and_job_counts(capsys, argv, error):
    """An unset shell variable in `--file "$F"` or `--arch "$A"` must not mean "everything"."""
    with pytest.raises(SystemExit):
        main(["kernels", *argv])
    assert error in capsys.readouterr().err


@pytest.mark.skipif(bool(__import__("cnn_gpu.nvrtc").nvrtc.why_unavailable()), reason="NVRTC unavailable")
def test_kernels_names_the_builds_no_launcher_makes(capsys):
    """`kernels --dtype float16` on files that have no float16 build, float64 or an arch below
    sm_80 on the tensor-core files: said, and nothing to do is a usage error (it printed an empty
    table with exit status 0)."""
    assert main(["kernels", "--family", "conv2d_fprop", "--dtype", "float16"]) == 2
    assert "no float16 build of conv2d_fprop.cu" in capsys.readouterr().err
    assert main(["kernels", "--family", "conv2d_tc,mma_rate", "--dtype", "float64"]) == 2
    assert "no float64 build of conv2d_tc.cu, mma_rate.cu" in capsys.readouterr().err
    assert main(["kernels", "--family", "conv2d_tc", "--arch", "sm_75"]) == 2
    assert "no sm_75 build of conv2d_tc.cu (tensor-core files: sm_80 and newer)" in capsys.readouterr().err
    # what is left is compiled; only what was asked for is named
    assert main(["kernels", "--family", "mma_rate,reduce", "--arch", "sm_75,sm_80", "--dtype", "float32"]) == 0
    out, err = capsys.readouterr()
    assert err == "cnn-gpu kernels: no sm_75 build of mma_rate.cu (tensor-core files: sm_80 and newer)\n"
    assert "mma_rate.cu" in out and "sm_75" in out
    assert [line.split()[:4] for line in out.splitlines() if line.startswith("mma_rate.cu")] == \
        [["mma_rate.cu", "mma_rate", "float32", "sm_80"]]


@pytest.mark.skipif(bool(__import__("cnn_gpu.nvrtc").nvrtc.why_unavailable()), reason="NVRTC unavailable")
def test_kernels_says_when_the_cuda_backend_builds_with_another_nvrtc(monkeypatch, capsys):
    """The cuda backend builds with CuPy's libnvrtc; where the report's NVRTC is another, it says so
    (a GPU machine with CuPy for CUDA 13 and the CUDA 12 wheel that also targets sm_70)."""
    import types
    from cnn_gpu import nvrtc
    argv = ["kernels", "--family", "reduce", "--arch", "sm_90", "--dtype", "float32"]
    monkeypatch.setattr(nvrtc, "cupy_compiler", lambda: None)   # no CuPy
    assert main(argv) == 0 and "CuPy's NVRTC" not in capsys.readouterr().err
    monkeypatch.setattr(nvrtc, "cupy_compiler", lambda: nvrtc.load())
    assert main(argv) == 0 and "CuPy's NVRTC" not in capsys.readouterr().err
    other = types.SimpleNamespace(path="/elsewhere/libnvrtc.so.13", version=(13, 0))
    monkeypatch.setattr(nvrtc, "cupy_compiler", lambda: other)
    assert main(argv) == 0
    assert ("cnn-gpu kernels: the cuda backend builds with CuPy's NVRTC 13.0 (/elsewhere/libnvrtc.so.13), not "
            "with the one this report uses") in capsys.readouterr().err
