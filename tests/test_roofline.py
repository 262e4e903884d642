"""The roofline model (cnn_gpu.roofline) and `cnn-gpu bench --device model:SPEC`.

Spec table: the derived SIMT peaks match the datasheets, the per-SM limits match the occupancy
rules. The model on hand-made launches: a pure DRAM copy takes its bytes over the bandwidth, a
compute-bound GEMM at issue ceiling 1 takes its FLOPs over the peak, 133 blocks on 132 SMs at one
block per SM are 2 waves, shared wavefronts cost one clock each per SM. The conv passes' traffic
comes from their plans. The bench CLI labels every modeled row (table section, JSON, CSV), and puts
measured cuda rows beside the model when both are present (as gpu-check does on a GPU).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math

import numpy as np
import pytest

from cnn_gpu import bench, nvrtc, roofline
from cnn_gpu.cli import main
from cnn_gpu.functional.geometry import conv_geometry
from cnn_gpu.gpu._grid import Launch
from cnn_gpu.roofline import KernelTraits, LaunchWork, estimate, specs

H100 = roofline.spec("h100")


def _traits(registers=128, shared=0, ceiling=1.0, per_flop=None):
    return KernelTraits(registers, shared, ceiling, per_flop)


# --- specs ------------------------------------------------------------------------------------------

def test_spec_table_matches_datasheets_and_occupancy_rules():
    assert {"v100", "a100", "h100", "h200", "l4", "rtx4090"} <= set(roofline.SPECS)
    for spec in roofline.SPECS.values():
        assert spec.peak_flops("float32") / 1e12 == pytest.approx(spec.datasheet_fp32_tflops, rel=0.01), spec.key
        assert spec.peak_flops("float64") < spec.peak_flops("float32")
        limits = nvrtc.ARCH_LIMITS[spec.arch]
        assert (spec.regs_per_sm, spec.smem_per_sm, spec.max_threads_per_sm, spec.max_blocks_per_sm) == \
            (limits.regs_per_sm, limits.smem_per_sm, limits.max_threads_per_sm, limits.max_blocks_per_sm), spec.key
        assert spec.fp16_tflops > (spec.tf32_tflops or 0) > 0 or spec.tf32_tflops is None
        assert spec.dram_gbs > 100 and spec.l2_bytes >= 6 * 2**20 and spec.smem_bytes_per_clk == 128
    assert roofline.spec("H100") is H100 and H100.peak_flops("float64") == pytest.approx(33.45e12, rel=0.01)
    with pytest.raises(ValueError, match="h100"):
        roofline.spec("tpu")


def test_model_gpu_spec_from_device_properties(monkeypatch):
    """model:gpu: a spec made from the properties of the GPU CuPy sees (here faked: an H100 SXM5,
    whose figures must come out as the datasheet's, then a PCIe board and a newer arch)."""
    props = {"name": "NVIDIA H100 80GB HBM3", "major": 9, "minor": 0, "sms": 132, "clock_khz": 1980000,
             "memory_clock_khz": 2619000, "bus_width_bits": 5120, "l2_bytes": 50 * 2**20, "regs_per_sm": 65536,
             "smem_per_sm": 233472, "max_threads_per_sm": 2048, "max_blocks_per_sm": 32, "memory_bytes": 80 << 30}
    monkeypatch.setattr(specs, "gpu_properties", lambda: props)
    sxm = roofline.spec("gpu")
    assert sxm.key == "gpu" and sxm.arch == "sm_90" and sxm.dram_gbs == pytest.approx(H100.dram_gbs, rel=0.01)
    assert sxm.peak_flops("float32") == H100.peak_flops("float32") and "H100 80GB" in sxm.source
    props.update(name="NVIDIA H100 PCIe", sms=114, clock_khz=1755000, memory_clock_khz=1593000)
    made = roofline.spec("gpu")
    assert made.sms == 114 and made.fp32_lanes == 128 and made.fp64_lanes == 64
    assert made.dram_gbs == pytest.approx(2 * 1593e6 * 5120 / 8 / 1e9)
    assert made.peak_flops("float32") == pytest.approx(2 * 128 * 114 * 1755e6)
    props.update(name="NVIDIA B200", major=10, minor=0)
    assert roofline.spec("gpu").arch == "sm_90" and "modeled as sm_90" in roofline.spec("gpu").source
    monkeypatch.setattr(specs, "gpu_properties", lambda: {})
    with pytest.raises(ValueError, match="needs a GPU"):
        roofline.spec("gpu")


# --- the model on hand-made launches ------------------------------------------------------------------

def test_pure_dram_copy_runs_at_bandwidth():
    nbytes = 3 * 2**30
    est = estimate(Launch("copy", "copy", (4096, 1, 1)), LaunchWork(0, nbytes), _traits(32), H100, "float32")
    assert est.dram_s == pytest.approx(nbytes / 3350e9) and est.compute_s == 0 and est.shared_s == 0
    assert est.seconds == pytest.approx(nbytes / 3350e9 + roofline.LAUNCH_OVERHEAD_S)
    assert est.bound == "dram"


def test_compute_bound_gemm_at_ceiling_one_runs_at_peak():
    # 128 registers x 256 threads: 2 blocks per SM on sm_90; 4 full waves of 264 blocks
    flops = 2 * 4096**3
    est = estimate(Launch("gemm", "gemm", (132 * 2 * 4, 1, 1)), LaunchWork(flops, 3 * 4096**2 * 4), _traits(128),
                   H100, "float32")
    assert est.blocks_per_sm == 2 and est.waves == 4 and est.wave_efficiency == 1
    assert est.compute_s == pytest.approx(flops / H100.peak_flops("float32"))
    assert est.seconds == pytest.approx(flops / 66.9e12 + roofline.LAUNCH_OVERHEAD_S, rel=0.01)
    assert est.bound == "compute"
    half = estimate(Launch("gemm", "gemm", (132 * 8, 1, 1)), LaunchWork(flops, 0), _traits(128, ceiling=0.5),
                    H100, "float32")
    assert half.compute_s == pytest.approx(2 * est.compute_s)
    fp64 = estimate(Launch("gemm", "gemm", (132 * 8, 1, 1)), LaunchWork(flops, 0), _traits(128), H100, "float64")
    assert fp64.compute_s == pytest.approx(2 * est.compute_s)   # 64 FP64 lanes against 128 FP32


def test_wave_quantization_133_blocks_on_132_sms():
    flops = 1e12
    one = estimate(Launch("k", "k", (132, 1, 1)), LaunchWork(flops, 0), _traits(255), H100, "float32")
    more = estimate(Launch("k", "k", (133, 1, 1)), LaunchWork(flops, 0), _traits(255), H100, "float32")
    assert more.blocks_per_sm == 1 and more.occupancy_limiter == "registers"
    assert math.ceil(more.waves) == 2 and more.wave_efficiency == pytest.approx(133 / 264)
    # the same work over 2 waves of which the second has 1 block: almost twice the time
    assert more.compute_s == pytest.approx(one.compute_s * 264 / 133)


def test_shared_wavefronts_cost_a_clock_each_per_sm():
    flops = 1e10
    est = estimate(Launch("k", "k", (264, 1, 1)), LaunchWork(flops, 0), _traits(128, shared=16384, per_flop=0.25),
                   H100, "float32")
    assert est.shared_s == pytest.approx(0.25 * flops / (132 * 1.98e9))
    assert est.bound == "shared" and est.seconds == pytest.approx(est.shared_s + roofline.LAUNCH_OVERHEAD_S)
    with pytest.raises(ValueError, match="does not fit"):
        estimate(Launch("k", "k", (1, 1, 1), shared_mem=300 * 1024), LaunchWork(1, 0), _traits(), H100, "float32")


# --- conv passes ---------------------------------------------------------------------------------------

def test_conv_pass_traffic_follows_the_plan():
    g = conv_geometry((4, 32, 14, 14), (64, 32, 3, 3), 1, 1)
    x, w, y = (math.prod(s) for s in (g.x_shape, g.w_shape, g.y_shape))
    plan, launches = roofline.conv.pass_launches("fprop", g, np.float32, 132, bias=True, splits=1)
    (launch, work), = launches
    assert launch == plan.main and work.flops == g.flops and work.dram_bytes == (x + w + y + 64) * 4
    plan, launches = roofline.conv.pass_launches("wgrad", g, np.float64, 132, splits=4)
    assert plan.splits > 1 and [l.kernel for l, _ in launches] == [l.kernel for l in plan.launches]
    (_, main_work), (_, fold) = launches
    assert main_work.dram_bytes == (y + x + plan.splits * w) * 8 and fold.dram_bytes == (plan.splits + 1) * w * 8
    plan, launches = roofline.conv.pass_launches("dgrad", g, np.float32, 132)
    assert sum(work.flops for _, work in launches) == g.flops
    assert launches[plan.main_index][1].flops == g.flops
    with pytest.raises(ValueError, match="depthwise"):
        roofline.conv.pass_launches("fprop", conv_geometry((1, 8, 8, 8), (8, 1, 3, 3), 1, 1, 1, 8), np.float32, 132)


# --- bench --device model:SPEC -----------------------------------------------------------------------------

def test_bench_model_device_rows_are_labelled(tmp_path, capsys):
    json_path, csv_path = tmp_path / "m.json", tmp_path / "m.csv"
    code = main(["bench", "--device", "model:h100", "--shapes", "tiny", "--ops", "conv2d,avg_pool2d,train_step",
                 "--no-progress", "--json", str(json_path), "--csv", str(csv_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "MODELED: roofline estimates" in out and "not a measurement" in out
    assert "median ms" not in out and "train_step not modeled" in out
    data = json.loads(json_path.read_text())
    cases = bench.make_cases("tiny", ["conv2d", "avg_pool2d"])
    assert [(r["op"], r["shape"], r["device"]) for r in data["rows"]] == [(c.op, c.label, "model:h100") for c in cases]
    for record, case in zip(data["rows"], cases):
        assert record["modeled"] is True and record["median_ms"] is None and record["gflops"] is None
        assert record["model_ms"] * 1e-3 >= roofline.LAUNCH_OVERHEAD_S
        assert record["model_gflops"] == pytest.approx(case.flops / record["model_ms"] / 1e6)
        assert record["model_launches"] and record["model_bound"] in ("compute", "shared", "dram", "launch")
    assert data["meta"]["models"]["model:h100"]["sms"] == 132
    with open(csv_path, newline="") as f:
        assert {r["modeled"] for r in csv.DictReader(f)} == {"True"}


def test_bench_model_list_and_unknown_spec(capsys):
    assert main(["bench", "--device", "model:list"]) == 0
    out = capsys.readouterr().out
    assert all(key in out for key in roofline.SPECS) and "H100-SXM5" in out
    assert main(["bench", "--device", "model:tpu", "--shapes", "tiny"]) == 2
    assert "h100" in capsys.readouterr().err


def test_measured_cuda_rows_print_beside_the_model():
    """What gpu-check prints on a GPU, with the cuda rows faked: the model's rows in their own section
    and a measured-vs-modeled table (measured / model) for the cases both have."""
    cases = bench.make_cases("tiny", ["conv2d"])
    model = bench.make_devices(["model:a100"], "float32")
    rows = list(bench.run_cases(cases, model, "float32", progress=False))
    fake = [bench.Row(c.op, c.label, "cuda", "float32", 0.05 * (i + 1), 10, c.flops / 5e4) for i, c in enumerate(cases)]
    rows = bench.finish_rows(fake + rows, {"float32": 19.5e3, "float64": 9.7e3})
    measured, rest = bench.format_table(rows).split("MODELED: roofline estimates", 1)
    modeled, comparison = rest.split("MEASURED vs MODELED", 1)
    assert "median ms" in measured and "model:a100" not in measured
    assert "model ms" in modeled and " cuda " not in modeled
    for i, row in enumerate(r for r in rows if r.modeled):
        assert f"{0.05 * (i + 1) / row.model_ms:.2f}x" in comparison


def test_plot_marks_modeled_bars(tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), close(fig)))
    cases = bench.make_cases("tiny", ["conv2d"])
    rows = [bench.Row(c.op, c.label, "numpy", "float32", 1.0, 3) for c in cases]
    rows += list(bench.run_cases(cases, bench.make_devices(["model:l4"], "float32"), progress=False))
    bench.write_plot(rows, tmp_path / "p.png")
    (fig,) = figures
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["numpy", "model:l4 (MODELED)"] and "model estimates" in fig.axes[0].get_xlabel()


def test_profile_scaling_and_cached_traits(tmp_path, monkeypatch):
    """Shared wavefronts per FLOP from a (faked) profile of some of a launch's blocks, and traits
    cached on disk: a second process-level lookup neither compiles nor profiles again."""
    from cnn_gpu import backend, emu
    from cnn_gpu.roofline import traits

    class FakeProfile:
        sites = [{"kernel": "k", "space": "shared", "wavefronts": 3000},
                 {"kernel": "k", "space": "global", "wavefronts": 0},
                 {"kernel": "other", "space": "shared", "wavefronts": 10**6}]
        kernels = {"k": {"blocks": 16, "blocks_profiled": 4}}

    monkeypatch.setattr(emu, "profiling", lambda: contextlib.nullcontext(FakeProfile()))
    monkeypatch.setattr(backend, "why_unavailable", lambda name: "")
    launch = Launch("conv2d_fprop", "k", (16, 1, 1))
    assert traits._profiled(lambda: (launch, 8000)) == (3000 / (8000 * 4 / 16), "")

    calls = []
    monkeypatch.setenv("CNN_GPU_CACHE", str(tmp_path))
    monkeypatch.setattr(traits, "_compiled", lambda *a: calls.append("compile") or {
        "registers": 96, "shared_bytes": 4096, "issue_ceiling": 0.75, "assumed": []})
    monkeypatch.setattr(traits, "_profiled", lambda run: calls.append("profile") or (0.125, ""))
    traits.kernel_traits.cache_clear()
    try:
        first = traits.kernel_traits("conv2d_fprop", "conv2d_fprop_small", "float32", "sm_90", ("fprop", "small"))
        traits.kernel_traits.cache_clear()
        again = traits.kernel_traits("conv2d_fprop", "conv2d_fprop_small", "float32", "sm_90", ("fprop", "small"))
        assert first == again == KernelTraits(96, 4096, 0.75, 0.125) and calls == ["compile", "profile"]
        # a profile that saw no shared access of a kernel with shared memory is not believed
        monkeypatch.setattr(traits, "_profiled", lambda run: (0.0, ""))
        traits.kernel_traits.cache_clear()
        blind = traits.kernel_traits("conv2d_fprop", "conv2d_fprop_large", "float32", "sm_90", ("fprop", "large"))
        assert blind.wavefronts_per_flop is None and "recorded no shared access" in blind.assumed[0]
    finally:
        traits.kernel_traits.cache_clear()


def test_every_resnet_layer_and_pass_is_modeled(monkeypatch):
    """The 11 ResNet/DeepBench layers x fprop, dgrad, wgrad, planned for each spec's SM count (kernel
    traits fixed here, so no compile or profile runs)."""
    monkeypatch.setattr(roofline, "kernel_traits", lambda *args: _traits(128, 16384, 0.75, 0.005))
    cases = bench.make_cases("resnet", ["conv2d", "conv2d_dgrad", "conv2d_wgrad"])
    assert len(cases) == 33
    for key in ("h100", "l4"):
        rows = list(bench.run_cases(cases, bench.make_devices([f"model:{key}"], "float32"), progress=False))
        assert [(r.op, r.shape) for r in rows] == [(c.op, c.label) for c in cases]
        peak = roofline.SPECS[key].peak_flops("float32")
        for row, case in zip(rows, cases):
            launches = row.model_launches
            assert sum(launch["flops"] for launch in launches) == case.flops
            assert row.model_ms * 1e-3 >= case.flops / peak + len(launches) * roofline.LAUNCH_OVERHEAD_S
            assert 0 < row.model_pct_peak < 75
