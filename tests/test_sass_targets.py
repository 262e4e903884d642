"""The SIMT convolution kernels' hot loops on sm_90, from their SASS (cnn_gpu.sass.kernel_rows):
issue 9's targets where the kernels meet them, and floors that catch a regression where a tile
cannot (the reasons below; benchmarks/conv_targets.py prints every figure). SASS counts are
deterministic for a given source and toolchain, so they are asserted as measured.

Targets: FFMA share >= 80% of the hot loop for every large fp32 tile, >= 75% for the tall ones;
no local memory in any kernel. Below target, by construction (see the README):
  wide fp32 (64 x 128): 4 gathered B values per 256 FFMAs of a step, twice the tall tile's;
  small fp32 (64 x 64): 4 x 4 outputs per thread, 128 FFMAs per step against a step's 16 LDS.128,
    4 LDG, 4 STS, barrier and loader arithmetic;
  fp64: 4 x 4 doubles per thread (what 128 registers allow) issue 16 DFMA per 4 LDS.128, so even
    an empty loader leaves at most 80%; sm_90 runs DFMA at half rate, so >= 50% already gives an
    issue ceiling of 100% (the DFMA pipe, not the issue slots, bounds these loops).
Skipped, with the reason, where NVRTC or nvdisasm is missing."""
from __future__ import annotations

import pytest

from cnn_gpu import nvrtc, sass

ARCH = "sm_90"
FAMILIES = ("conv2d_fprop", "conv2d_dgrad", "conv2d_wgrad")
TILES = ("large", "tall", "wide", "small")
# least hot-loop FMA share per (dtype, tile): the targets, else the floor measured here
LEAST_SHARE = {("float32", "large"): 0.80, ("float32", "tall"): 0.75, ("float32", "wide"): 0.72,
               ("float32", "small"): 0.64, ("float64", "large"): 0.59, ("float64", "tall"): 0.46,
               ("float64", "wide"): 0.46, ("float64", "small"): 0.34}

# LDS.128 per loop: 2 steps x 8 rows x (runs of A + runs of B) per thread
LDS_PER_LOOP = {"large": 64, "tall": 48, "wide": 48, "small": 32}

MISSING = nvrtc.why_unavailable() or sass.why_unavailable(ARCH)
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"SASS report unavailable for {ARCH}: {MISSING}")


def _tiles(family: str, dtype: str) -> dict:
    rows = {row["kernel"]: row for row in sass.kernel_rows(family, dtype, ARCH)}
    return {tile: rows[f"{family}_{tile}"] for tile in TILES}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gemm_hot_loops_meet_their_share(family, dtype):
    for tile, row in _tiles(family, dtype).items():
        where = f"{family}_{tile} {dtype} {ARCH}"
        assert row["fma_share"] >= LEAST_SHARE[dtype, tile], f"{where}: FMA share {row['fma_share']:.1%}"
        assert row["local_memory"] == 0, f"{where} uses local memory"
        # the loop holds two steps of 8 reduction rows, each row one LDS.128 per fragment run
        assert row["lds_bits"] == [128] * LDS_PER_LOOP[tile], f"{where}: {row['lds_bits']}"
        assert row["bar"] == 2, f"{where}: one barrier per step, two steps per loop"


def test_fp64_large_tiles_saturate_the_dfma_pipe():
    for family in FAMILIES:
        row = _tiles(family, "float64")["large"]
        assert row["dfma"] == row["fma"] and row["issue_ceiling"] == pytest.approx(1.0), family


def test_large_fp32_tiles_keep_within_two_blocks_per_sm():
    for family in FAMILIES:
        row = _tiles(family, "float32")["large"]
        assert row["registers"] <= 128 and row["stack_bytes"] == 0, row
