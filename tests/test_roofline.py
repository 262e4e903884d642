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
from collections import Counter

import numpy as np
import pytest

from cnn_gpu import backend, bench, nvrtc, roofline
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
    # a board newer than its model arch keeps its own occupancy limits (they were sm_90's)
    props.update(name="NVIDIA GeForce RTX 5090", major=12, minor=0, max_threads_per_sm=1536, smem_per_sm=102400,
                 max_blocks_per_sm=24)
    consumer = roofline.spec("gpu")
    assert consumer.arch == "sm_90"
    est = estimate(Launch("k", "k", (1000, 1, 1)), LaunchWork(1e9, 0), _traits(32, shared=40 * 1024), consumer,
                   "float32")
    assert est.blocks_per_sm == 2 and est.occupancy_limiter == "shared memory"   # sm_90's 228 KiB gave 5
    assert nvrtc.occupancy("sm_90", 32, 40 * 1024, 256)[1] == 5
    # a limit the driver does not report (0) stays the arch's (a stand-in of 32 raised L4's 24)
    props.update(name="NVIDIA L4", major=8, minor=9, max_threads_per_sm=1536, smem_per_sm=102400, max_blocks_per_sm=0)
    assert roofline.spec("gpu").occupancy_limits().max_blocks_per_sm == nvrtc.ARCH_LIMITS["sm_89"].max_blocks_per_sm
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


def test_fp_lanes_per_sm_follow_the_programming_guide():
    """FP64 FMA lanes: Turing 2 (fp32 / 64 gave 1), GP102/GP104 4, GP100 32 beside 64 FP32 lanes."""
    assert [specs.lanes_per_sm(*cc) for cc in ((7, 5), (6, 1), (6, 0), (8, 6), (8, 9), (9, 0), (7, 0))] == \
        [(64, 2), (128, 4), (64, 32), (128, 2), (128, 2), (128, 64), (64, 32)]


def test_tensor_rows_take_the_clock_of_their_peak():
    """H100's tensor peaks hold at 1830 MHz, below the 1980 MHz of its FP32 peak: a tensor-core
    launch's shared-memory term runs at that clock (it ran at 1980, 8% optimistic)."""
    assert [round(roofline.model.tensor_clock_hz(roofline.spec(k)) / 1e6) for k in ("h100", "a100", "rtx4090")] == \
        [1830, 1411, 2521]
    flops = 1e10
    est = estimate(Launch("k", "k", (264, 1, 1)), LaunchWork(flops, 0, pipe="tf32"),
                   _traits(128, shared=16384, per_flop=0.25), H100, "float32")
    assert est.shared_s == pytest.approx(0.25 * flops / (132 * 1.83e9), rel=1e-3)


def test_v100_takes_turings_hot_loop_at_its_own_fma_rate():
    """nvdisasm 13 reads no sm_70, which fell back to a stand-in ceiling of 0.5 on every V100 SIMT row."""
    from cnn_gpu import sass
    from cnn_gpu.roofline import traits
    if sass.why_unavailable("sm_75") or not sass.why_unavailable("sm_70"):
        pytest.skip("needs an nvdisasm that reads sm_75 but not sm_70")
    volta = traits.kernel_traits("conv2d_fprop", "conv2d_fprop_large", "float32", "sm_70")
    turing = next(r for r in sass.kernel_rows("conv2d_fprop", "float32", "sm_75")
                  if r["kernel"] == "conv2d_fprop_large")
    assert volta.instructions == turing["instructions"] and volta.issue_ceiling == turing["issue_ceiling"] > 0.5
    assert any("sm_75's SASS" in note for note in volta.assumed)


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
    assert "median ms" not in out
    data = json.loads(json_path.read_text())
    cases = bench.make_cases("tiny", ["conv2d", "avg_pool2d", "train_step"])
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
    # model:list runs nothing: another device or an output file beside it was dropped without a word
    assert main(["bench", "--device", "model:list,numpy"]) == 2
    assert "it takes no other devices" in capsys.readouterr().err
    assert main(["bench", "--device", "model:list", "--json", "specs.json", "--shapes", "tiny",
                 "--dtype", "float16"]) == 2
    assert "it takes no --shapes, --dtype, --json" in capsys.readouterr().err


def test_measured_cuda_rows_print_beside_the_model():
    """What gpu-check prints on a GPU, with the cuda rows faked: the model's rows in their own section
    and a measured-vs-modeled table (measured / model) for the cases both have."""
    cases = bench.make_cases("tiny", ["conv2d"])
    model = bench.make_devices(["model:a100"])
    rows = list(bench.run_cases(cases, model, "float32", progress=False))
    fake = [bench.Row(c.op, c.label, "cuda", "float32", 0.05 * (i + 1), 10, c.flops / 5e4, math="fp32")
            for i, c in enumerate(cases)]
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
    rows += list(bench.run_cases(cases, bench.make_devices(["model:l4"]), progress=False))
    bench.write_plot(rows, tmp_path / "p.png")
    (fig,) = figures
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["numpy", "model:l4 (MODELED)"] and "model estimates" in fig.axes[0].get_xlabel()


def test_plot_series_keep_dtypes_apart():
    """With two dtypes, float16's time overwrote float32's under the device's bare name."""
    from cnn_gpu.bench.plot import series_namer
    rows = [bench.Row("conv2d", "s", "numpy", dtype, ms, 3) for dtype, ms in (("float32", 2.0), ("float16", 9.0))]
    rows.append(bench.Row("conv2d", "s", "emu", "float32", 5.0, 3, math="tf32"))
    assert [series_namer(rows)(r) for r in rows] == ["numpy float32", "numpy float16", "emu float32 tf32"]
    assert series_namer(rows[:1])(rows[0]) == "numpy"


def test_wgrad_profile_counts_the_steps_a_longer_run_adds(monkeypatch):
    """A tile's fixed prologue and epilogue traffic (here 1000 wavefronts) is not charged to every
    FLOP of a short run: the rate is that of the 8 steps (100 wavefronts, 50 FLOPs each) the longer
    run adds."""
    from cnn_gpu import backend, emu
    from cnn_gpu.roofline import traits

    class FakeProfile:
        def __init__(self, wavefronts):
            self.sites = [{"kernel": "k", "space": "shared", "wavefronts": wavefronts}]
            self.kernels = {"k": {"blocks": 1, "blocks_profiled": 1}}

    totals = iter([1000 + 8 * 100, 1000 + 16 * 100])
    monkeypatch.setattr(emu, "profiling", lambda: contextlib.nullcontext(FakeProfile(next(totals))))
    monkeypatch.setattr(backend, "why_unavailable", lambda name: "")
    launch = Launch("conv2d_tc", "k", (1, 1, 1))
    assert traits._profiled(lambda: (launch, 8 * 50), lambda: (launch, 16 * 50)) == (100 / 50, "")


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
    monkeypatch.setattr(traits, "_profiled", lambda run, longer=None: calls.append("profile") or (0.125, ""))
    traits.kernel_traits.cache_clear()
    try:
        first = traits.kernel_traits("conv2d_fprop", "conv2d_fprop_small", "float32", "sm_90", ("fprop", "small"))
        traits.kernel_traits.cache_clear()
        again = traits.kernel_traits("conv2d_fprop", "conv2d_fprop_small", "float32", "sm_90", ("fprop", "small"))
        assert first == again == KernelTraits(96, 4096, 0.75, 0.125) and calls == ["compile", "profile"]
        # a profile that saw no shared access of a kernel with shared memory is not believed
        monkeypatch.setattr(traits, "_profiled", lambda run, longer=None: (0.0, ""))
        traits.kernel_traits.cache_clear()
        blind = traits.kernel_traits("conv2d_fprop", "conv2d_fprop_large", "float32", "sm_90", ("fprop", "large"))
        assert blind.wavefronts_per_flop is None and "recorded no shared access" in blind.assumed[0]
        # ... nor kept on disk: a later profile that sees the accesses is used
        monkeypatch.setattr(traits, "_profiled", lambda run, longer=None: (0.25, ""))
        traits.kernel_traits.cache_clear()
        seen = traits.kernel_traits("conv2d_fprop", "conv2d_fprop_large", "float32", "sm_90", ("fprop", "large"))
        assert seen.wavefronts_per_flop == 0.25
    finally:
        traits.kernel_traits.cache_clear()


def test_every_resnet_layer_and_pass_is_modeled(monkeypatch):
    """The 11 ResNet/DeepBench layers x fprop, dgrad, wgrad, planned for each spec's SM count (kernel
    traits fixed here, so no compile or profile runs)."""
    monkeypatch.setattr(roofline, "kernel_traits", lambda *args: _traits(128, 16384, 0.75, 0.005))
    cases = bench.make_cases("resnet", ["conv2d", "conv2d_dgrad", "conv2d_wgrad"])
    assert len(cases) == 33
    for key in ("h100", "l4"):
        rows = list(bench.run_cases(cases, bench.make_devices([f"model:{key}"]), progress=False))
        assert [(r.op, r.shape) for r in rows] == [(c.op, c.label) for c in cases]
        peak = roofline.SPECS[key].peak_flops("float32")
        for row, case in zip(rows, cases):
            launches = row.model_launches
            assert sum(launch["flops"] for launch in launches) == case.flops
            assert row.model_ms * 1e-3 >= case.flops / peak + len(launches) * roofline.LAUNCH_OVERHEAD_S
            assert 0 < row.model_pct_peak < 75


# --- the "tf32" math mode: tensor-core plans ----------------------------------------------------------

def test_mma_issue_rule_from_each_spec():
    """Clocks per HMMA.1688.F32.TF32 from each spec's TF32 peak, SMs and clock, and the ceiling they set."""
    clocks = {key: roofline.mma_issue_clocks(s) for key, s in roofline.SPECS.items() if s.tf32_tflops}
    assert clocks == {"a100": 8, "h100": 4, "h200": 4, "l4": 16, "rtx4090": 32}
    with pytest.raises(ValueError, match="no TF32"):
        roofline.mma_issue_clocks(roofline.spec("v100"))
    fprop_like = KernelTraits(240, 40960, 0.0, None, mma=64, instructions=252)
    wgrad_like = KernelTraits(240, 40960, 0.0, None, mma=64, instructions=437)
    assert roofline.mma_issue_ceiling(fprop_like, H100) == 1.0
    assert roofline.mma_issue_ceiling(wgrad_like, H100) == pytest.approx(256 / 437)
    assert roofline.mma_issue_ceiling(wgrad_like, roofline.spec("a100")) == 1.0      # 8 clocks per MMA there
    assert roofline.mma_issue_ceiling(_traits(), H100) == 1.0                        # no SASS counts: assumed


@pytest.mark.parametrize("dtype, opcode", [("float32", "HMMA.1688.F32.TF32"), ("float16", "HMMA.16816.F32")])
def test_tensor_core_hot_loops_issue_the_rules_mma(dtype, opcode):
    """The rule's FMAs per MMA: every MMA the conv2d_tc kernels issue is HMMA.1688.F32.TF32 (1024)
    in the float32 build, HMMA.16816.F32 (2048, FP16 operands) in the float16 one."""
    from cnn_gpu import sass
    from cnn_gpu.backend import kernel_source
    arch = next((a for a in ("sm_90", "sm_80") if a in sass.supported_archs()), None)
    if arch is None:
        pytest.skip("no nvdisasm that reads sm_80 or sm_90")
    cubin, _ = nvrtc.compile_as_backend(kernel_source("conv2d_tc"), "conv2d_tc.cu", dtype, arch)
    opcodes = {ins.opcode for function in sass.disassemble(cubin, arch).values() for ins in function.instructions
               if ins.base == "HMMA"}
    assert opcodes == {opcode}


def _tc_traits(monkeypatch):
    traits = KernelTraits(240, 40960, 0.5, 0.0007, mma=64, instructions=300)
    monkeypatch.setattr(roofline, "kernel_traits", lambda *args: traits)
    return traits


def test_tf32_passes_model_the_tensor_core_plans(monkeypatch):
    from cnn_gpu.gpu import conv_tc
    traits = _tc_traits(monkeypatch)
    g = conv_geometry((6, 128, 16, 16), (256, 128, 1, 1), 1, 0)    # whole tiles in every pass (1536 pixels)
    peak = H100.tf32_peak_flops
    for pass_name, plan in (("fprop", conv_tc.plan_fprop(g, sms=132)), ("dgrad", conv_tc.plan_dgrad(g, sms=132)),
                            ("wgrad", conv_tc.plan_wgrad(g, sms=132))):
        estimates = roofline.model_conv(pass_name, g, "float32", H100, bias=pass_name == "fprop", math="tf32")
        # no glue: wgrad's pixel table is cached per geometry, fprop's and dgrad's first launch
        # makes their filter tiles (w read, 128 x 128 words of tiles written)
        launches = estimates
        assert [(e.kernel, e.grid) for e in launches] == [(l.kernel, tuple(l.grid)) for l in plan.launches]
        if pass_name != "wgrad":
            tiles = launches[0]
            assert plan.main_index == 1 and tiles.kernel == "conv2d_tc_filter_tiles" and tiles.bound == "launch"
            assert tiles.flops == 0 and tiles.dram_bytes == (math.prod(g.w_shape) + 128 * 256) * 4
        main = launches[plan.main_index]
        assert main.pipe == "tf32" and main.flops == g.flops
        assert main.issue_ceiling == pytest.approx(min(1.0, 64 * 4 / 300))
        # whole tiles: the tensor cores issue exactly the useful FLOPs
        assert main.compute_s == pytest.approx(g.flops / (peak * main.issue_ceiling) / main.wave_efficiency)
        tensor_clock = roofline.model.tensor_clock_hz(H100)   # 1830 MHz, the clock of the tensor peak
        assert main.shared_s == pytest.approx(traits.wavefronts_per_flop * g.flops / (132 * tensor_clock)
                                              / main.wave_efficiency)
    # wgrad's one launch reads dy and x, writes dw, reads its pixel table (3 ints per output pixel:
    # 2048, whole steps of 16) and with split-K writes each split's FP32 partials and reads them
    # back to sum them, but for the summing block's own
    plan, launches, _ = roofline.conv.tensor_core_launches("wgrad", g, "float32", 132)
    x, y, w = (math.prod(shape) for shape in (g.x_shape, g.y_shape, g.w_shape))
    assert plan.splits > 1 and len(launches) == 1
    assert launches[0][1].dram_bytes == (x + y + w) * 4 + 2 * (plan.splits - 1) * w * 4 + 3 * 4 * g.N * g.P * g.Q
    # three input channels of a 3x3 filter: the flattened reduction's 27 indices step through 32
    # (not 9 taps of 16: conv_tc.plan_fprop), the tensor cores issue 32/27 of the useful FLOPs
    thin = conv_geometry((8, 3, 16, 16), (256, 3, 3, 3), 1, 1)
    plan, launches, _ = roofline.conv.tensor_core_launches("fprop", thin, "float32", 132)
    assert launches[plan.main_index][1].issued_flops == pytest.approx(thin.flops * 32 / 27)
    # dgrad of a stride-2 convolution: each of the 4 stride phases steps through only the 1, 2, 2
    # and 4 taps that reach it, so with whole tiles nothing is wasted
    strided = conv_geometry((6, 128, 16, 16), (128, 128, 3, 3), 2, 1)
    plan, launches, _ = roofline.conv.tensor_core_launches("dgrad", strided, "float32", 132)
    assert launches[plan.main_index][1].issued_flops == strided.flops
    # fp32 keeps the SIMT plans, float64 ignores the mode
    assert all(e.pipe == "fma" for e in roofline.model_conv("fprop", g, "float32", H100))
    assert roofline.model_conv("fprop", g, "float64", H100, math="tf32") == \
        roofline.model_conv("fprop", g, "float64", H100)


def test_float16_passes_model_the_fp16_tensor_pipe(monkeypatch):
    """float16 runs on tensor cores in any math mode, against the dense FP16 peak (twice TF32's,
    the same clocks per HMMA), 32-deep steps, FP32 split-K partials summed and rounded to FP16 in
    one launch; below sm_80 the float32 SIMT plan between a widening and a rounding."""
    _tc_traits(monkeypatch)
    assert roofline.mma_issue_clocks(H100, "fp16") == roofline.mma_issue_clocks(H100) == 4
    assert H100.peak_flops("float16") == H100.peak_flops("float32")        # SIMT float16 computes in FP32
    g = conv_geometry((6, 128, 16, 16), (256, 128, 1, 1), 1, 0)   # whole tiles of 128 and 96 pixels
    for pass_name in ("fprop", "dgrad", "wgrad"):
        plan = roofline.conv.TC_PLANS[pass_name](g, dtype=np.float16, sms=132)
        estimates = roofline.model_conv(pass_name, g, "float16", H100, bias=pass_name == "fprop")
        if pass_name != "wgrad":   # no glue: the filter tiles are the plan's first launch
            assert estimates[0].kernel == "conv2d_tc_filter_tiles" and len(estimates) == len(plan.launches)
        main = next(e for e in estimates if e.kernel == plan.main.kernel)
        assert main.pipe == "fp16" and main.flops == g.flops
        assert main.compute_s == pytest.approx(g.flops / (H100.fp16_peak_flops * main.issue_ceiling)
                                               / main.wave_efficiency)
    thin = conv_geometry((8, 3, 16, 16), (256, 3, 3, 3), 1, 1)     # 27 flattened indices in one 32-deep step
    plan, launches, _ = roofline.conv.tensor_core_launches("fprop", thin, "float16", 132)
    assert launches[plan.main_index][1].issued_flops == pytest.approx(thin.flops * 32 / 27)
    small = conv_geometry((8, 512, 7, 7), (512, 512, 3, 3), 1, 1)    # split-K
    plan, launches, glue = roofline.conv.tensor_core_launches("fprop", small, "float16", 132)
    y = math.prod(small.y_shape)
    assert plan.splits > 1 and glue == []    # no separate rounding
    assert launches[2][0].kernel == "split_sum_epilogue"
    assert launches[2][1].dram_bytes == plan.splits * y * 4 + y * 2   # FP32 partials in, FP16 y out
    v100 = roofline.spec("v100")
    widen, rounding, *simt = roofline.model_conv("dgrad", g, "float16", v100)
    assert (widen.kernel, rounding.kernel) == ("widen_float16", "round_to_float16")
    assert rounding.dram_bytes == math.prod(g.x_shape) * 6 and all(e.pipe == "fma" for e in simt)
    assert [e.kernel for e in simt] == [e.kernel for e in roofline.model_conv("dgrad", g, "float32", v100)]


def test_tf32_passes_on_the_simt_kernels_round_their_operands(monkeypatch):
    """Depthwise convolutions, wgrad of a filter the tensor-core kernel refuses, and every pass on
    a GPU without TF32 tensor cores (V100) run the SIMT plan after rounding both operands (read
    and written once)."""
    _tc_traits(monkeypatch)
    g = conv_geometry((8, 32, 16, 16), (64, 32, 3, 3), 2, 1)
    v100 = roofline.spec("v100")
    assert not roofline.has_tensor_cores(v100) and roofline.has_tensor_cores(H100)
    rounding, *simt = roofline.model_conv("dgrad", g, "float32", v100, math="tf32")
    plan, _ = roofline.conv.pass_launches("dgrad", g, np.float32, v100.sms)
    assert rounding.kernel == "round_to_tf32" and [e.kernel for e in simt] == [l.kernel for l in plan.launches]
    y, w = math.prod(g.y_shape), math.prod(g.w_shape)
    assert rounding.dram_bytes == 2 * (y + w) * 4 and all(e.pipe == "fma" for e in simt)
    wide = conv_geometry((2, 8, 40, 40), (8, 8, 1, 33), 1, 0)     # R + S = 34 taps: no tensor-core wgrad
    assert [e.kernel for e in roofline.model_conv("wgrad", wide, "float32", H100, math="tf32")][0] == "round_to_tf32"
    with pytest.raises(ValueError, match="depthwise"):
        roofline.model_conv("fprop", conv_geometry((1, 8, 8, 8), (8, 1, 3, 3), 1, 1, 1, 8), "float32", H100,
                            math="tf32")


def test_conv_transpose2d_bias_is_read_by_the_tensor_core_dgrad_and_added_after_the_simt_one(monkeypatch):
    """conv_transpose2d's bias (per channel of dx): the tensor-core dgrad kernel, or its split-K
    sum, reads it (no launch of its own); after a SIMT dgrad (V100) a bias_add reads and writes dx.
    The bench's conv_transpose2d case models it so."""
    from cnn_gpu.bench.modeled import case_estimates
    from cnn_gpu.gpu import conv_tc
    _tc_traits(monkeypatch)
    v100 = roofline.spec("v100")
    small = conv_geometry((8, 512, 7, 7), (512, 512, 3, 3), 1, 1)    # split-K
    for g in (conv_geometry((8, 32, 16, 16), (64, 32, 3, 3), 2, 1), small):
        for dtype in ("float32", "float16"):
            plain = roofline.model_conv("dgrad", g, dtype, H100, math="tf32")
            with_bias = roofline.model_conv("dgrad", g, dtype, H100, bias=True, math="tf32")
            assert [e.kernel for e in with_bias] == [e.kernel for e in plain]
            splits = conv_tc.plan_dgrad(g, dtype=dtype, sms=H100.sms).splits
            extra = sum(e.dram_bytes for e in with_bias) - sum(e.dram_bytes for e in plain)
            assert extra == g.C * np.dtype(dtype).itemsize      # in the dtype, by the kernel or the split-K sum
            *simt, bias_add = roofline.model_conv("dgrad", g, dtype, v100, bias=True)
            assert simt == roofline.model_conv("dgrad", g, dtype, v100)
            assert bias_add.kernel == "bias_add" and bias_add.dram_bytes == (2 * math.prod(g.x_shape) + g.C) * 4
    assert splits > 1
    case = bench.make_cases("tiny", ["conv_transpose2d"])[0]
    assert "bias_add" not in [e.kernel for e in case_estimates(case, H100, "float32", "tf32")]
    assert "bias_add" in [e.kernel for e in case_estimates(case, H100, "float32", "fp32")]


def test_model_gpu_tf32_peak_and_unknown_tensor_peaks(monkeypatch):
    props = {"name": "NVIDIA H200", "major": 9, "minor": 0, "sms": 132, "clock_khz": 1980000,
             "memory_clock_khz": 2619000, "bus_width_bits": 6144, "l2_bytes": 50 * 2**20, "regs_per_sm": 65536,
             "smem_per_sm": 233472, "max_threads_per_sm": 2048, "max_blocks_per_sm": 32, "memory_bytes": 141 << 30}
    monkeypatch.setattr(specs, "gpu_properties", lambda: props)
    h200 = roofline.spec("gpu")
    assert h200.tf32_peak_flops == pytest.approx(2 * 1024 * 132 * 1.98e9) and roofline.mma_issue_clocks(h200) == 4
    assert h200.fp16_peak_flops == 2 * h200.tf32_peak_flops and roofline.mma_issue_clocks(h200, "fp16") == 4
    # gpu-check's bench models float16 convolutions on model:gpu beside the measured rows
    cases = bench.make_cases("tiny", ["conv2d"])
    (row,) = bench.run_cases(cases[:1], bench.make_devices(["model:gpu"]), "float16", progress=False)
    assert 0 < row.model_pct_peak <= 100 and {e["pipe"] for e in row.model_launches if e["flops"]} == {"fp16"}
    props.update(name="NVIDIA L40S", major=8, minor=9, sms=142)
    device = bench.make_devices(["model:gpu"])[0]
    assert "no TF32" in device.math_unsupported("tf32") and device.math_unsupported("fp32") == ""
    with pytest.raises(ValueError, match="no FP16 tensor-core peak"):
        roofline.spec("gpu").fp16_peak_flops
    # no FP16 rate known for the board: its float16 rows are left out, saying why, not a crash
    assert list(bench.run_cases(cases[:1], [device], "float16", progress=False)) == []
    assert "no FP16 peak to model them against" in device.skipped["conv2d float16"]


def test_resnet_layers_at_batch_128_in_tf32(monkeypatch, capsys):
    """`bench --device model:h100 --shapes resnet --batch 128 --math tf32`: the 11 layers x fprop,
    dgrad, wgrad, all on tensor cores, % of peak of the dense TF32 peak."""
    _tc_traits(monkeypatch)
    ops = ["conv2d", "conv2d_dgrad", "conv2d_wgrad"]
    cases = bench.make_cases("resnet", ops, batch=128)
    rows = list(bench.run_cases(cases, bench.make_devices(["model:h100"]), "float32", progress=False,
                                math=("tf32",)))
    assert [(r.op, r.shape, r.math) for r in rows] == [(c.op, c.label, "tf32") for c in cases]
    for row, case in zip(rows, cases):
        assert row.model_pct_peak == pytest.approx(100 * case.flops / (row.model_ms * 1e-3) / H100.tf32_peak_flops)
        assert 0 < row.model_pct_peak <= 100
        assert {launch["pipe"] for launch in row.model_launches if launch["flops"]} == {"tf32"}
    table = bench.format_table(rows)
    pipes = [line.split()[4] for line in table.splitlines() if line.startswith("conv2d")]
    assert pipes == ["tensor"] * 33 and "dense TF32" in table


def test_a_training_step_is_the_sum_of_its_layers_passes():
    """resnet18 at batch 128: every conv contributes fprop, dgrad (not the stem's) and wgrad; the
    step costs more than its convolutions' fprop alone and less than 4x their fp32 sum."""
    from cnn_gpu.bench import modeled
    from cnn_gpu.bench.training import build_model, leaf_layers
    (case,) = bench.make_cases("resnet18", ["train_step"])
    spec = roofline.spec("h100")
    step = modeled.case_estimates(case, spec, "float32")
    convs = [g for layer, _, _, g in leaf_layers(build_model(case.shape, "float32"), (128, 3, 32, 32))
             if g is not None]
    assert len(convs) == 20
    launches = {e.kernel for e in step}
    assert any("dgrad" in name for name in launches) and "sgd_momentum_step" in launches
    fprop = sum(e.seconds for g in convs for e in roofline.model_conv("fprop", g, "float32", spec))
    total = sum(e.seconds for e in step)
    assert fprop < total < 4 * fprop
    assert sum(e.seconds for e in modeled.case_estimates(case, spec, "float32", "tf32")) < total


@pytest.mark.skipif(bool(backend.why_unavailable("emu")), reason=f"no emu backend: {backend.why_unavailable('emu')}")
@pytest.mark.parametrize("shape_set, index", [("default", 0), ("default", 1), ("resnet18", 0)],
                         ids=["cnn", "resnet", "resnet18"])
@pytest.mark.parametrize("dtype, math_mode", [("float32", "fp32"), ("float32", "tf32"), ("float16", "fp32")])
def test_the_step_model_prices_the_launches_a_training_step_makes(shape_set, index, dtype, math_mode):
    """The model's launches of a training step (the default digits CNN and small ResNet at batch
    32, ResNet-18 at batch 128) are, kernel by kernel and count by count, those an emulated step
    makes with its launches checked and counted but not run; the work cuBLAS and CuPy do besides
    is priced too, a CuPy addition for each residual addition the step makes (nn.containers._sum)."""
    import cnn_gpu
    from cnn_gpu.bench import dry_run, modeled
    from cnn_gpu.bench.training import build_model
    from cnn_gpu.nn import containers
    case = bench.make_cases(shape_set, ["train_step"])[index]
    estimates = modeled.case_estimates(case, roofline.spec("h100"), dtype, math_mode)
    outside = (modeled.CUBLAS_GEMM, modeled.CUPY_ELEMENTWISE)
    model = build_model(case.shape, dtype)
    model.to("emu")
    step = dry_run.training_step(model, (case.shape.batch, *case.shape.image_shape), case.shape.classes,
                                 np.random.default_rng(1))
    sums = []
    real_sum = containers._sum
    with cnn_gpu.math_mode(math_mode), dry_run.launches_counted_not_run() as launched, \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(containers, "_sum", lambda a, b: sums.append(1) or real_sum(a, b))
        step()
    modeled_launches = Counter(e.kernel for e in estimates if e.kernel not in outside)
    assert modeled_launches == Counter(launched) and len(launched) >= 20
    loss_sums = [name for name, _ in modeled._cross_entropy_step(case.shape.batch, case.shape.classes, 4)
                 if name == modeled.CUPY_ELEMENTWISE]
    assert sum(e.kernel == modeled.CUPY_ELEMENTWISE for e in estimates) == len(sums) + len(loss_sums)
    assert set(outside) <= {e.kernel for e in estimates}   # the linear layer's GEMMs, the loss's mean


def test_leaf_layers_say_which_residuals_hand_their_gradient_on():
    """The step model's ResidualLeaf flags are those nn.Sequential's backward acts on: in ResNet-18
    every Residual runs its ReLU, the second to eighth hand their input gradient on unsummed and
    the first to seventh add it in their ReLU's backward; in nested Sequentials a hand-on stays
    within one Sequential, and a ReLU after a Sequential runs apart."""
    from cnn_gpu import models, nn
    from cnn_gpu.bench.training import ResidualLeaf, leaf_layers

    def flags(model, shape):
        return [(leaf.relu, leaf.adds_handed_on, leaf.hands_on) for leaf, *_ in leaf_layers(model, shape)
                if isinstance(leaf, ResidualLeaf)]
    assert flags(models.resnet18(width=8), (2, 3, 32, 32)) == ([(True, True, False)] + [(True, True, True)] * 6
                                                               + [(True, False, True)])
    conv = lambda: nn.Conv2d(4, 4, 3, padding=1)   # noqa: E731
    nested = nn.Sequential(conv(), nn.Sequential(nn.Residual(conv()), nn.ReLU(), nn.Residual(conv())), nn.ReLU(),
                           nn.Residual(conv()), nn.ReLU())
    assert flags(nested, (2, 4, 6, 6)) == [(True, True, False), (False, False, True), (True, False, False)]


@pytest.mark.parametrize("dtype, math_mode", [("float32", "tf32"), ("float16", "fp32")])
def test_roofline_bound_caps_every_modeled_pass(dtype, math_mode, monkeypatch):
    """roofline_bound: a pass's FLOPs over its compulsory bytes at full bandwidth, as a share of the
    peak (by hand for the 1x1 64 -> 256 layer at 56x56: 26 FLOPs per byte in float32, 17% of H100's
    TF32 peak), 1 for a compute-bound 3x3 layer; and no modeled pass beats its bound."""
    _tc_traits(monkeypatch)
    item = np.dtype(dtype).itemsize
    peak = H100.fp16_peak_flops if dtype == "float16" else H100.tf32_peak_flops
    wide = conv_geometry((128, 64, 56, 56), (256, 64, 1, 1), 1, 0)
    x, w, y = 128 * 64 * 56 * 56, 256 * 64, 128 * 256 * 56 * 56
    flops = 2 * 128 * 56 * 56 * 256 * 64
    for pass_name, moved in (("fprop", x + w + y), ("dgrad", y + w + x), ("wgrad", y + x + w)):
        want = flops / (moved * item / (H100.dram_gbs * 1e9)) / peak
        assert roofline.roofline_bound(pass_name, wide, dtype, H100, peak) == pytest.approx(want, rel=1e-12)
    if dtype == "float32":
        assert roofline.roofline_bound("fprop", wide, dtype, H100, peak) == pytest.approx(0.174, abs=0.001)
    square = conv_geometry((128, 128, 28, 28), (128, 128, 3, 3), 1, 1)
    assert roofline.roofline_bound("wgrad", square, dtype, H100, peak) == 1.0
    for g in (wide, square):
        for pass_name in ("fprop", "dgrad", "wgrad"):
            seconds = sum(e.seconds for e in roofline.model_conv(pass_name, g, dtype, H100, math=math_mode))
            assert g.flops / seconds / peak <= roofline.roofline_bound(pass_name, g, dtype, H100, peak)


@pytest.mark.skipif(bool(__import__("cnn_gpu").backend.why_unavailable("emu")), reason="no emulator")
def test_flat_fprop_plans_are_profiled_on_the_flat_kernels():
    """The stem's fprop runs a _flat kernel; the model profiles that kernel (its own table loads),
    on whole flattened steps, not the unflattened one."""
    from cnn_gpu.gpu import conv_tc
    from cnn_gpu.roofline import conv as roofline_conv
    stem = conv_geometry((128, 3, 224, 224), (64, 3, 7, 7), 2, 3)
    assert roofline_conv.profile_variant(conv_tc.plan_fprop(stem)) == "tc_m64_flat"
    square = conv_geometry((2, 16, 8, 8), (128, 16, 3, 3), 1, 1)
    assert roofline_conv.profile_variant(conv_tc.plan_fprop(square, tile="tc")) == "tc"
    for variant, kernel in (("tc_flat", "conv2d_fprop_tc_flat"), ("tc_m64_flat", "conv2d_fprop_tc_flat_m64")):
        launch, flops = roofline_conv.representative_run("fprop", variant, np.float32)()
        assert launch.kernel == kernel and flops == 2 * 128 * 128 * 8 * 16


@pytest.mark.skipif(bool(__import__("cnn_gpu").backend.why_unavailable("emu")), reason="no emulator")
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_wgrad_by_filter_rows_is_profiled_on_the_rows_kernel(dtype):
    """ResNet's 64-channel 3x3 wgrad runs the _rows kernel; the model profiles that kernel (its own
    shared stores and table reads) on whole tiles: a 1x3 filter's 384 filter columns, 8x8 pixels."""
    from cnn_gpu.gpu import conv_tc
    from cnn_gpu.roofline import conv as roofline_conv
    layer = conv_geometry((128, 64, 56, 56), (64, 64, 3, 3), 1, 1)
    assert roofline_conv.profile_variant(conv_tc.plan_wgrad(layer, dtype=dtype)) == "tc_m64_rows"
    launch, flops = roofline_conv.representative_run("wgrad", "tc_m64_rows", dtype)()
    assert launch.kernel == conv_tc.TAP_ROWS_KERNEL and flops == 2 * 128 * 384 * 2 * 8 * 8


def test_wgrad_of_images_straddling_a_lanes_pixels_models_its_dy_path(monkeypatch):
    """7x7 outputs (P*Q = 49, no multiple of 4 words): with a large filter (float32: C/G*R*S past
    conv_tc.CHANNEL_MAJOR_MIN_CRS; float16: where the copy costs less than the slower gather loop)
    the launcher copies dy channel-major first, one memory-bound step reading and writing dy; with
    a small one the _gather kernel runs (its own traits); 8x8 outputs need neither, nor do 14x14
    float16 outputs (P*Q = 196, a multiple of 2 words: the _pairs kernel, its own traits)."""
    from cnn_gpu.gpu import conv_tc
    _tc_traits(monkeypatch)
    # (channels, side, output channels, filter side): float16's 1x1 filter does 2*C/G FLOPs per dy
    # element, too few to pay for the copy; its 3x3 one nine times as many
    for (channels, side, outputs, taps), dtype, path in (((512, 7, 64, 3), "float32", "channel_major"),
                                                         ((64, 7, 64, 3), "float32", "gather"),
                                                         ((512, 7, 512, 3), "float16", "channel_major"),
                                                         ((512, 7, 512, 1), "float16", "gather"),
                                                         ((512, 8, 64, 3), "float32", "vector"),
                                                         ((256, 14, 64, 3), "float16", "pairs"),
                                                         # C/G*R*S past PAIRS_MAX_CRS: the 128-channel
                                                         # tile copies, the 64-channel one loads pairs
                                                         ((1024, 14, 128, 3), "float16", "channel_major"),
                                                         ((1024, 14, 64, 3), "float16", "pairs")):
        g = conv_geometry((32, channels, side, side), (outputs, channels, taps, taps), 1, taps // 2)
        assert conv_tc.wgrad_dy_path(g, dtype, H100.sms) == path, (channels, side, outputs, taps, dtype)
        estimates = roofline.model_conv("wgrad", g, dtype, H100, math="tf32")
        copies = [e for e in estimates if e.kernel.endswith("_dy_channel_major")]
        dy_bytes = math.prod(g.y_shape) * np.dtype(dtype).itemsize
        assert [e.dram_bytes for e in copies] == ([2 * dy_bytes] if path == "channel_major" else [])
        kernels = [e.kernel for e in estimates]
        assert sum(k.startswith(conv_tc.GATHER_KERNEL) for k in kernels) == (path == "gather")
        # the 64-channel tile's vector kernel takes pairs (its lanes load 8 bytes)
        assert sum(k.startswith(conv_tc.PAIRS_KERNEL) for k in kernels) == (path == "pairs" and outputs > 64)


def test_tc_plans_put_each_choice_beside_its_alternatives(monkeypatch):
    """benchmarks/tc_plans.py (a gpu-check step): per pass, the planner's choice marked once and
    each alternative forced, modeled (measured only with a GPU). On the 1x1 expansion at 7x7 in
    float16: dgrad picks the 96-pixel tile, which the model puts ahead of the 128-pixel one;
    wgrad picks dy in residue bands over the gather kernel and the channel-major copy of dy, each
    shown."""
    from pathlib import Path
    from cnn_gpu.bench import RESNET_LAYERS
    from cnn_gpu.gpu import conv_tc
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tc_plans
    rows = tc_plans.rows([RESNET_LAYERS[8]], "h100", 128, repeat=1, dtypes=("float16",))
    by_pass = {name: [row for row in rows if row[1] == name] for name in tc_plans.PASSES}
    for name, passes in by_pass.items():
        assert [row[6] for row in passes].count("*") == 1, name
        assert len({row[3] for row in passes}) == len(passes) and all(row[5] == "-" for row in passes)
    plans = {row[3].split()[0]: (float(row[4]), row[6]) for row in by_pass["dgrad"]}
    assert set(plans) == {"conv2d_dgrad_tc" + tile.suffix for tile in conv_tc.TILES.values()}
    assert plans["conv2d_dgrad_tc_n96"][1] == "*" and plans["conv2d_dgrad_tc_n96"][0] < plans["conv2d_dgrad_tc"][0]
    wgrad = {row[3]: row[6] for row in by_pass["wgrad"]}
    assert any(plan.endswith("+ dy copy") for plan in wgrad)
    assert [plan.split()[0] for plan, picked in wgrad.items() if picked] == [conv_tc.RESIDUES_KERNEL]
    assert any(plan.startswith(conv_tc.GATHER_KERNEL) for plan in wgrad)


@pytest.mark.skipif(bool(backend.why_unavailable("emu")), reason="emulator unavailable")
def test_tc_plans_run_every_forced_plan(monkeypatch):
    """The measured column's calls (conv_tc's launchers with each plan forced), on the emulator for
    a small 7x7 layer in both dtypes: every alternative runs and gets a time (a GPU run of
    benchmarks/tc_plans.py then finds no broken plan)."""
    from pathlib import Path
    from cnn_gpu.bench.shapes import ConvShape
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tc_plans
    rows = tc_plans.rows([ConvShape(2, 40, 7, 7, 72, 1, 1, 0)], "h100", 2, repeat=1, be="emu")
    assert {(row[1], row[2]) for row in rows} == {(p, d) for p in tc_plans.PASSES for d in tc_plans.DTYPES}
    assert all(float(row[5]) > 0 for row in rows)
    assert any(row[3].endswith("+ dy copy") for row in rows) and any("gather" in row[3] for row in rows)
