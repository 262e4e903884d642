"""Tensor-core built-ins of the emulator (mma.sync m16n8k8 TF32, m16n8k16 FP16, cvt.rna.tf32,
ldmatrix.x4) through the helpers of kernels/common.cuh, against NumPy; planted fragment bugs must
fail."""
from __future__ import annotations

import numpy as np
import pytest

from cnn_gpu import backend, nvrtc
from cnn_gpu.precision import round_to_tf32

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")

# One warp computes D (16x8) = A (16xK) B (Kx8) + C from row-major global arrays, loading its
# fragments by the PTX ISA's tables; PLANT_* macros insert the bugs the tests must catch.
KERNELS = r"""
#ifndef PLANT_LANE
#define GROUP(lane) ((lane) >> 2)
#define IN_GROUP(lane) ((lane) & 3)
#else
#define GROUP(lane) ((lane) & 7)
#define IN_GROUP(lane) ((lane) >> 3)
#endif

__device__ float tf32_rounded_value(float v) { return __uint_as_float(tf32_from_float(v)); }
__device__ void store_acc(const float (&acc)[4], float* d, int lane) {
    for (int i = 0; i < 4; ++i) d[(GROUP(lane) + (i >> 1) * 8) * 8 + IN_GROUP(lane) * 2 + (i & 1)] = acc[i];
}
__device__ void load_acc(float (&acc)[4], const float* c, int lane) {
    for (int i = 0; i < 4; ++i) acc[i] = c[(GROUP(lane) + (i >> 1) * 8) * 8 + IN_GROUP(lane) * 2 + (i & 1)];
}

extern "C" __global__ void mma_tf32(const float* a, const float* b, const float* c, float* d) {
    int lane = threadIdx.x, g = GROUP(lane), t = IN_GROUP(lane);
    unsigned int fa[4], fb[2];
    for (int i = 0; i < 4; ++i) fa[i] = tf32_from_float(a[(g + (i & 1) * 8) * 8 + t + (i >> 1) * 4]);
    for (int i = 0; i < 2; ++i) fb[i] = tf32_from_float(b[(t + i * 4) * 8 + g]);
#ifdef PLANT_SWAP
    unsigned int swap = fa[1]; fa[1] = fa[2]; fa[2] = swap;
#endif
#ifdef PLANT_NO_CVT
    for (int i = 0; i < 4; ++i) fa[i] = __float_as_uint(a[(g + (i & 1) * 8) * 8 + t + (i >> 1) * 4]);
#endif
    float acc[4];
    load_acc(acc, c, lane);
    mma_tf32_m16n8k8(acc, fa, fb);
    store_acc(acc, d, lane);
}

// ldmatrix: 4 matrices of 8 rows x 4 words in shared memory (row pitch 6 words, 8-byte aligned
// rows: PLANT_MISALIGNED) or 8 (16-byte aligned); lane 8i + j names row j of matrix i.
#ifdef PLANT_MISALIGNED
#define PITCH 6
#else
#define PITCH 8
#endif
extern "C" __global__ void ldmatrix_words(const float* words, unsigned int* out) {
    __shared__ __align__(16) float rows[32 * PITCH];
    int lane = threadIdx.x;
    for (int w = 0; w < 4; ++w) rows[lane * PITCH + w] = words[lane * 4 + w];
    __syncthreads();
#ifdef PLANT_ROW_LANE
    int matrix = lane & 3, row = lane >> 2;
#else
    int matrix = lane >> 3, row = lane & 7;
#endif
    unsigned int r[4];
#ifdef PLANT_GLOBAL
    ldmatrix_x4(r, (const unsigned int*)words + (matrix * 8 + row) * 4);   // a global address
#else
    ldmatrix_x4(r, (const unsigned int*)rows + (matrix * 8 + row) * PITCH);
#endif
    for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

// D = A B + C with the fragments loaded by ldmatrix from A as [m][k] and B as [n][k] (row pitch
// 12 words): A's matrices are (rows 0-7, k 0-3), (rows 8-15, k 0-3), (rows 0-7, k 4-7),
// (rows 8-15, k 4-7); B's (n 0-7, k 0-3), (n 0-7, k 4-7), named again by lanes 16-31.
extern "C" __global__ void mma_tf32_ldmatrix(const float* a, const float* b, const float* c, float* d) {
    __shared__ __align__(16) float a_rows[16 * 12], b_rows[8 * 12];
    int lane = threadIdx.x;
    for (int i = lane; i < 16 * 8; i += 32) a_rows[(i / 8) * 12 + i % 8] = tf32_rounded_value(a[i]);
    for (int i = lane; i < 8 * 8; i += 32) b_rows[(i % 8) * 12 + i / 8] = tf32_rounded_value(b[i]);
    __syncthreads();
    int matrix = lane >> 3, row = lane & 7;
#ifdef PLANT_SWAP_MATRICES
    matrix = matrix == 1 ? 2 : matrix == 2 ? 1 : matrix;
#endif
    unsigned int fa[4], fb[4];
    ldmatrix_x4(fa, (const unsigned int*)a_rows + (row + (matrix & 1) * 8) * 12 + (matrix >> 1) * 4);
    ldmatrix_x4(fb, (const unsigned int*)b_rows + row * 12 + (matrix & 1) * 4);
    float acc[4];
    load_acc(acc, c, lane);
    mma_tf32_m16n8k8(acc, fa, (const unsigned int(&)[2])fb);
    store_acc(acc, d, lane);
}

extern "C" __global__ void mma_f16(const unsigned short* a, const unsigned short* b, const float* c, float* d) {
    int lane = threadIdx.x, g = GROUP(lane), t = IN_GROUP(lane);
    unsigned int fa[4], fb[2];
    for (int r = 0; r < 4; ++r) {      // register r holds a_{2r} (low) and a_{2r+1}
        int row = g + (r & 1) * 8, col = t * 2 + (r >> 1) * 8;
        fa[r] = a[row * 16 + col] | ((unsigned int)a[row * 16 + col + 1] << 16);
    }
    for (int r = 0; r < 2; ++r) {      // register r holds b_{2r} (low) and b_{2r+1}
        int row = t * 2 + r * 8;
        fb[r] = b[row * 8 + g] | ((unsigned int)b[(row + 1) * 8 + g] << 16);
    }
#ifdef PLANT_SWAP
    unsigned int swap = fa[1]; fa[1] = fa[2]; fa[2] = swap;
#endif
    float acc[4];
    load_acc(acc, c, lane);
    mma_f16_m16n8k16(acc, fa, fb);
    store_acc(acc, d, lane);
}

// Each lane reads the shared word its neighbour wrote before an mma.sync, which orders no memory
// access (BUG), unless a __syncwarp() follows it (PLANT_SYNCWARP: correct).
extern "C" __global__ void mma_between_shared_accesses(const float* x, float* y) {
    __shared__ float words[32];
    int lane = threadIdx.x;
    words[lane] = x[lane];
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const unsigned int fa[4] = {0u, 0u, 0u, 0u}, fb[2] = {0u, 0u};
    mma_tf32_m16n8k8(acc, fa, fb);
#ifdef PLANT_SYNCWARP
    __syncwarp();
#endif
    y[lane] = words[(lane + 1) % 32] + acc[0];
}
"""


def _source() -> str:
    return (backend.kernel_dir() / "common.cuh").read_text() + KERNELS


def _operands(rng, depth):
    a = rng.standard_normal((16, depth)).astype(np.float32)
    b = rng.standard_normal((depth, 8)).astype(np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    return a, b, c


def _run(kind, a, b, c, plant=None):
    from cnn_gpu import emu
    options = (f"-D{plant}",) if plant else ()
    kernel = emu.RawModule(code=_source(), options=options).get_function(f"mma_{kind}")
    d = np.empty((16, 8), dtype=np.float32)
    if kind == "f16":
        a, b = a.astype(np.float16).view(np.uint16), b.astype(np.float16).view(np.uint16)
    kernel((1,), (32,), (a, b, c, d), schedule="random", seed=3)
    return d


def _tf32_oracle(a, b, c):
    return round_to_tf32(a).astype(np.float64) @ round_to_tf32(b).astype(np.float64) + c


def _f16_oracle(a, b, c):
    return a.astype(np.float16).astype(np.float64) @ b.astype(np.float16).astype(np.float64) + c


@needs_emu
@pytest.mark.parametrize("seed", range(3))
def test_tf32_mma_matches_numpy_on_tf32_rounded_operands(seed):
    a, b, c = _operands(np.random.default_rng(seed), 8)
    want = _tf32_oracle(a, b, c)
    got = _run("tf32", a, b, c)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    exact = a.astype(np.float64) @ b + c
    assert np.abs(got - exact).max() > 1e-5      # the operands really were rounded to TF32


@needs_emu
@pytest.mark.parametrize("seed", range(3))
def test_f16_mma_matches_numpy_on_half_operands(seed):
    a, b, c = _operands(np.random.default_rng(10 + seed), 16)
    want = _f16_oracle(a, b, c)
    np.testing.assert_allclose(_run("f16", a, b, c), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_emu
@pytest.mark.parametrize("kind, plant", [("tf32", "PLANT_SWAP"), ("tf32", "PLANT_LANE"), ("tf32", "PLANT_NO_CVT"),
                                         ("f16", "PLANT_SWAP"), ("f16", "PLANT_LANE")])
def test_planted_fragment_bugs_are_caught(kind, plant):
    a, b, c = _operands(np.random.default_rng(21), 8 if kind == "tf32" else 16)
    want = (_tf32_oracle if kind == "tf32" else _f16_oracle)(a, b, c)
    got = _run(kind, a, b, c, plant)
    assert np.abs(got - want).max() > 1e-5 * np.abs(want).max()


def _ldmatrix_words(plant=None):
    """(what each lane received, what the PTX ISA says it receives) for 4 random 8 x 4-word matrices."""
    from cnn_gpu import emu
    options = (f"-D{plant}",) if plant else ()
    words = np.random.default_rng(5).standard_normal((4, 8, 4)).astype(np.float32)
    out = np.empty((32, 4), dtype=np.uint32)
    emu.RawModule(code=_source(), options=options).get_function("ldmatrix_words")(
        (1,), (32,), (words, out), schedule="random", seed=4)
    lanes = np.arange(32)
    want = np.stack([words[i, lanes // 4, lanes % 4] for i in range(4)], axis=1)   # r[i] of lane l
    return out, want.view(np.uint32)


@needs_emu
def test_ldmatrix_gives_lane_l_word_l_mod_4_of_row_l_div_4_of_each_matrix():
    got, want = _ldmatrix_words()
    np.testing.assert_array_equal(got, want)


@needs_emu
def test_ldmatrix_with_row_addresses_from_the_wrong_lanes_is_caught():
    got, want = _ldmatrix_words("PLANT_ROW_LANE")
    assert (got != want).any()


@needs_emu
@pytest.mark.parametrize("plant", ["PLANT_MISALIGNED", "PLANT_GLOBAL"])
def test_ldmatrix_refuses_rows_misaligned_or_outside_shared_memory(plant):
    from cnn_gpu import emu
    with pytest.raises(emu.KernelFault, match="ldmatrix row"):
        _ldmatrix_words(plant)


@needs_emu
@pytest.mark.parametrize("plant", [None, "PLANT_SWAP_MATRICES"])
def test_tf32_mma_fed_by_ldmatrix(plant):
    a, b, c = _operands(np.random.default_rng(31), 8)
    want = _tf32_oracle(a, b, c)
    got = _run("tf32_ldmatrix", a, b, c, plant)
    error = np.abs(got - want).max()
    if plant is None:
        assert error <= 1e-5 * np.abs(want).max()
    else:
        assert error > 1e-5 * np.abs(want).max()


@pytest.mark.skipif(bool(nvrtc.why_unavailable()), reason=f"NVRTC unavailable: {nvrtc.why_unavailable()}")
@pytest.mark.parametrize("arch", ["sm_70", "sm_80", "sm_90"])
def test_the_helpers_compile_with_nvrtc_for_every_arch(arch):
    if reason := nvrtc.why_arch_unsupported(arch):   # CUDA 13's NVRTC has no sm_70
        pytest.skip(reason)
    reports = nvrtc.kernel_report(_source(), "mma_test.cu", arch)
    assert {r.name for r in reports} >= {"mma_tf32", "mma_f16", "ldmatrix_words", "mma_tf32_ldmatrix"}
    assert all(r.spill_bytes == 0 for r in reports)


@needs_emu
def test_an_mma_orders_no_memory_access_for_the_race_check():
    """mma.sync exchanges the warp's operands but orders none of its lanes' memory accesses: a lane
    reading its neighbour's shared word after an mma races, and after a __syncwarp() does not."""
    from cnn_gpu import emu
    x = np.random.default_rng(7).standard_normal(32).astype(np.float32)
    y = np.zeros(32, np.float32)
    emu.RawModule(code=_source(), options=("-DPLANT_SYNCWARP",)).get_function("mma_between_shared_accesses")(
        (1,), (32,), (x, y), schedule="random", seed=2, race=True)
    np.testing.assert_array_equal(y, np.roll(x, -1))
    with pytest.raises(emu.KernelFault, match="shared memory race on words"):
        emu.RawModule(code=_source()).get_function("mma_between_shared_accesses")(
            (1,), (32,), (x, y), schedule="random", seed=2, race=True)
