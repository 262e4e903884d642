"""benchmarks/mma_rate.py and kernels/mma_rate.cu (a gpu-check step): the microbenchmark that measures
how fast a GPU issues mma.sync, the one tensor-core rate the model takes from a datasheet
(roofline.mma_issue_clocks). Without a GPU: its results on the emulator, checked exactly (and a wrong
expectation caught), the model's side of its table, and its hot loop on sm_80..sm_90, which must
issue nothing but the mma it times."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnn_gpu import backend, nvrtc, roofline, sass
from helpers import needs_emu

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")


@pytest.fixture
def mma_rate(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import mma_rate
    return mma_rate


def test_the_chains_match_the_kernel(mma_rate):
    source = (backend.kernel_dir() / "mma_rate.cu").read_text()
    assert int(re.search(r"#define MMA_RATE_CHAINS (\d+)", source).group(1)) == mma_rate.CHAINS
    assert int(re.search(r"#define MMA_RATE_THREADS (\d+)", source).group(1)) == 32 * mma_rate.WARPS_PER_BLOCK


@needs_emu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_accumulator_is_checked_on_the_emulator(mma_rate, monkeypatch, dtype):
    """Two blocks, 5 iterations: every accumulator holds 5 x 8 mma of A = 1 and B = 1/2 (20 per k8
    of TF32, 40 per k16 of FP16), and every warp counted its cycles; with B = 1 the check fails."""
    result = mma_rate.measure("emu", dtype, 5, 2)
    assert result["mmas"] == 2 * mma_rate.WARPS_PER_BLOCK * 5 * mma_rate.CHAINS
    assert result["cycles"] > 0 and result["seconds"] is None
    one = {"float32": 0x3F800000, "float16": 0x3C003C00}[dtype]
    monkeypatch.setitem(mma_rate.WORDS, dtype, (one, one))
    with pytest.raises(ValueError, match=f"mma_rate {dtype}: 8192 accumulators differ"):
        mma_rate.measure("emu", dtype, 5, 2)


@needs_emu
def test_the_table_shows_the_models_rate_beside_what_a_gpu_measures(mma_rate):
    rows = mma_rate.rows("h100", 3, 1, be="emu")
    assert [row[:2] for row in rows] == [("float32", "m16n8k8 TF32"), ("float16", "m16n8k16 FP16")]
    assert [row[3] for row in rows] == ["4", "4"] and [row[5] for row in rows] == ["495", "989"]
    assert all(row[i] == "-" for row in rows for i in (2, 4, 6))   # nothing measured without a GPU
    assert [row[3] for row in mma_rate.rows("a100", 3, 1, be="emu")] == ["8", "8"]


@pytest.mark.skipif(bool(nvrtc.why_unavailable() or sass.why_unavailable("sm_90")),
                    reason=f"SASS report unavailable: {nvrtc.why_unavailable() or sass.why_unavailable('sm_90')}")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_timed_loop_issues_its_mma_and_little_else(mma_rate, dtype):
    """CHAINS HMMAs per iteration and at most 4 other instructions (the counter, the compare, the
    branch), no local memory: on H100 the loop issues an HMMA every 1.5 clocks at most, well under
    the 4 of the tensor pipe, so the pipe and not the issue slots sets the rate it measures."""
    spec = roofline.spec("h100")
    for arch in ARCHS:
        (row,) = sass.kernel_rows("mma_rate", dtype, arch)
        assert row["mma"] == mma_rate.CHAINS and row["instructions"] <= mma_rate.CHAINS + 4, (arch, row)
        assert row["local_memory"] == 0
    traits = roofline.KernelTraits(row["registers"], 0, 1.0, None, mma=row["mma"], instructions=row["instructions"])
    assert roofline.mma_issue_ceiling(traits, spec, roofline.conv.tensor_pipe(dtype)) == 1.0


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in backend.available_backends(),
                    reason=f"no cuda backend: {backend.why_unavailable('cuda')}")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_gpu_adds_what_the_emulator_adds(mma_rate, dtype):
    """On the GPU the same exact sums (measure checks every accumulator), four blocks of 100
    iterations, and every warp's cycles and the launch's time measured."""
    result = mma_rate.measure("cuda", dtype, 100, 4)
    assert result["cycles"] > 0 and result["seconds"] > 0
