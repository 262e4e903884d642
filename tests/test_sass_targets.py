"""The SIMT convolution kernels' hot loops on sm_90, from their SASS (cnn_gpu.sass.kernel_rows):
issue 9's targets, and floors that catch a regression where a tile cannot meet one (the reasons
below; benchmarks/conv_targets.py prints every figure). SASS counts are deterministic for a given
source and toolchain, so they are asserted as measured.

Targets: FFMA share >= 80% of the hot loop for every large fp32 tile, >= 75% for every fp32 tile;
DFMA share >= 80% for the large fp64 tiles; no local memory in any kernel. The other fp64 tiles
have floors, by construction (see the README):
  fp64 tall, wide, small: 8 x 4 and 4 x 4 doubles per thread (256 threads keep the fp32 tile
    edges), at most 84% and 80% before the loaders. sm_90 runs DFMA at half rate, so >= 50% already
    gives an issue ceiling of 100% (the DFMA pipe, not the issue slots, bounds these loops).
Skipped, with the reason, where NVRTC or nvdisasm is missing."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import nvrtc, sass
from cnn_gpu.gpu import conv

ARCH = "sm_90"
FAMILIES = ("conv2d_fprop", "conv2d_dgrad", "conv2d_wgrad")
TILES = ("large", "tall", "wide", "small")
# least hot-loop FMA share per (dtype, tile): the targets, else the floor measured here
LEAST_SHARE = {("float32", "large"): 0.80, ("float32", "tall"): 0.75, ("float32", "wide"): 0.75,
               ("float32", "small"): 0.75, ("float64", "large"): 0.80, ("float64", "tall"): 0.72,
               ("float64", "wide"): 0.70, ("float64", "small"): 0.59}

# sm_90 runs the cp.async ring (kernels/igemm.cuh), its loop unrolled by the ring's stages (fp32 3,
# fp64 2): one barrier per step, per step 8 reduction rows of one LDS.128 per fragment run (fp32
# threads own 8 x 8 outputs, 2 + 2 runs of 4; fp64 threads 8 x 8 to 4 x 4 outputs in runs of 2)
STEPS_PER_LOOP = {"float32": 3, "float64": 2}
RUNS_PER_ROW = {"float32": {"large": 4, "tall": 4, "wide": 4, "small": 4},
                "float64": {"large": 8, "tall": 6, "wide": 6, "small": 4}}
# narrow LDS per step: NVCC's 3 never-executed `@!PT LDS` beside the step's LDGSTS, and at most one
# fragment value reloaded (wgrad's large tile, at its 128-register cap)
NARROW_LDS_PER_STEP = 4

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
        steps = STEPS_PER_LOOP[dtype]
        wide = [bits for bits in row["lds_bits"] if bits == 128]
        assert len(wide) == steps * 8 * RUNS_PER_ROW[dtype][tile], f"{where}: {row['lds_bits']}"
        assert len(row["lds_bits"]) - len(wide) <= steps * NARROW_LDS_PER_STEP, f"{where}: {row['lds_bits']}"
        assert row["bar"] == steps, f"{where}: one barrier per step, {steps} steps per loop"
        assert row["sts"] == 0 and row["ldgsts"] > 0, f"{where}: cp.async copies, no register staging"


def test_fp64_large_tiles_saturate_the_dfma_pipe():
    for family in FAMILIES:
        row = _tiles(family, "float64")["large"]
        assert row["dfma"] == row["fma"] and row["issue_ceiling"] == pytest.approx(1.0), family


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiles_keep_within_the_register_cap_the_picker_counts(dtype):
    """Every tile fits the resident blocks cnn_gpu.gpu.conv.TILES plans with, without a stack."""
    for family in FAMILIES:
        for tile, row in _tiles(family, dtype).items():
            spec = conv.TILES[np.dtype(dtype)][tile]
            assert row["registers"] <= spec.registers and row["stack_bytes"] == 0, (family, tile, row)
