"""The NVRTC compile gate: every kernels/*.cu, its kernels/*.cuh headers inlined by
backend.kernel_source, compiles for sm_70..sm_90 in float32 and float64 exactly as the cuda backend
compiles it (the builds its launchers make, backend.has_build: the tensor-core files have no
float64 build and none below sm_80; float16 where a family has its build), with no spilled byte
and no stack frame (no local memory at all: the tensor-core kernels run at the 255-register cap,
where a small edit can leave a spill on one arch only), a declared __launch_bounds__ on every
kernel, and each implicit-GEMM convolution tile launched with the threads and within the
registers the launcher plans it for (cnn_gpu.gpu.conv.TILES: they set its resident blocks per SM). Each
(file, dtype, arch) is one test and one compile (nvrtc.file_report caches it), so pytest-xdist
spreads the compiles over the workers.

Skipped only when libnvrtc cannot be found (pip install nvidia-cuda-nvrtc-cu12)."""
from __future__ import annotations

import json
import re
import struct
import sys

import numpy as np
import pytest

from cnn_gpu import backend, nvrtc
from cnn_gpu.gpu import conv, conv3d
from cnn_gpu.cli import main as cli_main

NVRTC_MISSING = nvrtc.why_unavailable()
needs_nvrtc = pytest.mark.skipif(bool(NVRTC_MISSING), reason=f"NVRTC unavailable: {NVRTC_MISSING}")

DTYPES = ("float32", "float64", "float16")
# The tiles each GEMM family's launcher plans with (register caps: resident blocks per SM), conv2d's unless named
FAMILY_TILES = {"conv3d_fprop": conv3d.TILES, "conv3d_dgrad": conv3d.TILES, "conv3d_wgrad": conv3d.WGRAD_TILES}
FILES = backend.kernel_files()
# Implicit-GEMM tile kernels, conv2d_<pass>_<tile> and conv3d_<fprop|wgrad>_<tile>; the depthwise direct
# kernels are not GEMMs.
GEMM_FILE = re.compile(r"conv[23]d_(fprop|dgrad|wgrad)\.cu$")
GEMM_TILE_KERNEL = re.compile(r"conv[23]d_(?:fprop|dgrad|wgrad)_(\w+)$")
KERNEL_DECLARATION = re.compile(r'extern\s+"C"\s+__global__')
# kernels only the float16 build has (kernels/optim.cu's *_master), or all but it has
# (conv2d_tc.cu's gather wgrad): a block with no nested #if
FLOAT16_ONLY = re.compile(r"^#if REAL_IS_HALF\n.*?^#endif", re.S | re.M)
NOT_FLOAT16 = re.compile(r"^#if !REAL_IS_HALF\n.*?^#endif", re.S | re.M)


def declared_kernels(source: str, dtype: str) -> int:
    """How many kernels the source declares for a build of `dtype`."""
    source = (NOT_FLOAT16 if dtype == "float16" else FLOAT16_ONLY).sub("", source)
    return len(KERNEL_DECLARATION.findall(source))


def builds(dtypes, archs) -> list:
    """pytest params (file, dtype, arch) of the builds the launchers make (backend.has_build)."""
    return [pytest.param(path, dtype, arch, id=f"{path.name}-{dtype}-{arch}")
            for path in FILES for dtype in dtypes for arch in archs if backend.has_build(path.stem, dtype, arch)]


@needs_nvrtc
@pytest.mark.parametrize("path, dtype, arch", builds(DTYPES, nvrtc.ARCHS))
def test_kernel_file_compiles_without_spills(path, dtype, arch):
    if reason := nvrtc.why_arch_unsupported(arch):   # CUDA 13's NVRTC has no sm_70
        pytest.skip(reason)
    reports = nvrtc.file_report(path, dtype, arch)
    declared = declared_kernels(backend.kernel_source(path.stem), dtype)
    assert len(reports) == declared, f"ptxas reported {[r.name for r in reports]}, the source declares {declared}"
    tiles_seen = 0
    for r in reports:
        where = f"{path.name}:{r.name} {dtype} {arch}"
        assert r.spill_bytes == 0, f"{where} spills {r.spill_store_bytes} B stored / {r.spill_load_bytes} B loaded"
        assert r.stack_bytes == 0, f"{where} has a {r.stack_bytes} B stack frame (local memory)"
        assert r.max_threads is not None, f"{where} declares no __launch_bounds__"
        assert r.occupancy is not None and r.occupancy > 0, f"{where} cannot be resident: {r}"
        tile = GEMM_TILE_KERNEL.match(r.name) if GEMM_FILE.search(path.name) else None
        tiles = FAMILY_TILES.get(path.stem, conv.TILES).get(np.dtype(dtype), {})
        if tile and tile.group(1) in tiles:
            spec = tiles[tile.group(1)]
            assert r.max_threads == spec.threads, f"{where} is launched with {r.max_threads} threads, not {spec.threads}"
            assert r.registers <= spec.registers, f"{where} uses {r.registers} registers (> {spec.registers})"
            tiles_seen += 1
    if GEMM_FILE.search(path.name):
        assert tiles_seen == len(conv.TILES[np.dtype(dtype)]), f"{path.name}: {tiles_seen} tile kernels found"


NEWEST = nvrtc.newest()
# The GPUs people train on; CUDA 13's NVRTC (CuPy for CUDA 13) allocates registers differently
NEWEST_ARCHS = ("sm_80", "sm_90")


@pytest.mark.skipif(NEWEST is None or bool(NVRTC_MISSING) or NEWEST.version == nvrtc.load().version,
                    reason="a second, newer NVRTC is not installed (the test extra's nvidia-cuda-nvrtc)")
@pytest.mark.parametrize("path, dtype, arch", builds(DTYPES, NEWEST_ARCHS))
def test_kernel_file_compiles_without_spills_on_the_newest_nvrtc(path, dtype, arch):
    """No spill either with the compiler CuPy for CUDA 13 uses: NVRTC 13.5 spilled six words into the
    main loop of a kernel NVRTC 12.9 compiled without (conv2d_dgrad_tc_m64 for sm_90)."""
    options = (*backend.NVRTC_OPTIONS, *backend.dtype_options(dtype))
    source = backend.kernel_source(path.stem)
    reports = nvrtc.reports_of(*nvrtc.compile_cubin(source, path.name, arch, options, compiler=NEWEST), arch)
    spilled = [(r.name, r.spill_bytes, r.stack_bytes) for r in reports if r.spill_bytes or r.stack_bytes]
    version = ".".join(map(str, NEWEST.version))
    assert reports and not spilled, f"{path.name} {dtype} {arch} with NVRTC {version}: {spilled}"


def test_the_gate_leaves_out_only_the_builds_no_launcher_makes():
    """The tensor-core files' float64 builds and their builds below sm_80, which no launcher makes
    (a float64 convolution runs the SIMT kernels; below sm_80 the mma helpers trap), and nothing else."""
    every = {(path.stem, dtype, arch) for path in FILES for dtype in ("float32", "float64", "float16")
             for arch in nvrtc.ARCHS if dtype != "float16" or path.stem in backend.FLOAT16_FAMILIES}
    gated = {(path.stem, dtype, arch) for path, dtype, arch in
             (param.values for param in builds(("float32", "float64", "float16"), nvrtc.ARCHS))}
    left_out = {(family, dtype, arch) for family in ("conv2d_tc", "mma_rate")
                for dtype in ("float32", "float64", "float16")
                for arch in nvrtc.ARCHS if dtype == "float64" or arch in ("sm_70", "sm_75")}
    assert every - gated == left_out and gated < every
    with pytest.raises(NotImplementedError, match="conv2d_tc.cu has no float64 build"):
        backend.kernel_module("emu", "conv2d_tc", np.float64)
    with pytest.raises(NotImplementedError, match="conv2d_fprop.cu has no float16 build"):
        backend.kernel_module("emu", "conv2d_fprop", np.float16)


def test_every_family_is_gated():
    names = {path.name for path in FILES}
    for family in ("pool", "elementwise", "reduce", "loss", "softmax", "optim", "conv2d_fprop", "conv2d_dgrad",
                   "conv2d_wgrad", "upsample", "row_norm", "pad"):
        assert f"{family}.cu" in names


SAMPLE_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'small' for 'sm_80'
ptxas info    : Function properties for small
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 24 registers, used 0 barriers, 384 bytes cmem[0]
ptxas info    : Compiling entry function 'big' for 'sm_80'
ptxas info    : Function properties for big
ptxas         .     40 bytes stack frame, 36 bytes spill stores, 52 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16384 bytes smem, 392 bytes cmem[0]
"""


def test_nvrtc_wheels_of_cuda_12_and_13_are_both_found(tmp_path, monkeypatch):
    """CUDA 12's nvidia-cuda-nvrtc-cu12 and CUDA 13's nvidia-cuda-nvrtc lay the library out differently."""
    paths = [tmp_path / "nvidia" / "cuda_nvrtc" / "lib" / "libnvrtc.so.12", tmp_path / "nvidia" / "cu13" / "lib" /
             "libnvrtc.so.13", tmp_path / "nvidia" / "cu13" / "lib" / "libnvrtc-builtins.so.13.5"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert nvrtc._candidates_from_wheel() == [str(paths[0]), str(paths[1])]


def test_parse_ptxas_log():
    parsed = nvrtc.parse_ptxas_log(SAMPLE_LOG)
    assert parsed["small"] == dict(registers=24, spill_store_bytes=0, spill_load_bytes=0, shared_bytes=0,
                                   stack_bytes=0)
    assert parsed["big"] == dict(registers=255, spill_store_bytes=36, spill_load_bytes=52, shared_bytes=16384,
                                 stack_bytes=40)


@pytest.mark.parametrize("arch, registers, smem, threads, expected", [
    ("sm_80", 128, 0, 256, (0.25, 2, "registers")),        # 4096 regs/warp: 4 warps per partition
    ("sm_80", 32, 0, 256, (1.0, 8, "warps")),
    ("sm_80", 32, 48 * 1024, 256, (0.375, 3, "shared memory")),  # 164 KiB / (48 KiB + 1 KiB reserved)
    ("sm_75", 32, 0, 256, (1.0, 4, "warps")),              # 1024 threads per SM
    ("sm_86", 64, 0, 256, (2 / 3, 4, "registers")),        # 1536 threads per SM, 16 blocks
    ("sm_80", 16, 0, 32, (0.5, 32, "blocks")),             # 32 blocks of one warp
    ("sm_70", 40, 0, 256, (0.75, 6, "registers")),         # 40 regs round up to 1280 per warp
])
def test_occupancy(arch, registers, smem, threads, expected):
    fraction, blocks, limiter = nvrtc.occupancy(arch, registers, smem, threads)
    assert (blocks, limiter) == expected[1:]
    assert fraction == pytest.approx(expected[0])


PROBE = """
extern "C" __global__ void __launch_bounds__(128) bounded(float* a) { a[threadIdx.x] = 1.0f; }
extern "C" __global__ void unbounded(float* a) { a[threadIdx.x] = 2.0f; }
extern "C" __global__ void __launch_bounds__(1024, 2) spills(float* a, const float* b, int n)
{
    float acc[48];
#pragma unroll
    for (int i = 0; i < 48; ++i) acc[i] = b[i * n + threadIdx.x];
    for (int k = 0; k < n; ++k) {
#pragma unroll
        for (int i = 0; i < 48; ++i) acc[i] = acc[i] * acc[(i + 7) % 48] + b[k];
    }
#pragma unroll
    for (int i = 0; i < 48; ++i) a[i * n + threadIdx.x] = acc[i];
}
"""


@needs_nvrtc
def test_report_reads_launch_bounds_and_spills():
    reports = {r.name: r for r in nvrtc.kernel_report(PROBE, "probe.cu", "sm_80")}
    assert reports["bounded"].max_threads == 128
    assert reports["unbounded"].max_threads is None and reports["unbounded"].occupancy is None
    assert reports["spills"].max_threads == 1024
    assert reports["spills"].registers <= 32 and reports["spills"].spill_bytes > 0


@needs_nvrtc
def test_compile_cubin_returns_the_whole_elf():
    cubin, log = nvrtc.compile_cubin(PROBE, "probe.cu", "sm_90")
    assert cubin[:4] == b"\x7fELF" and "Compiling entry function 'bounded'" in log
    # The image ends exactly where the last of its parts the ELF header locates ends (CuPy's
    # getCUBIN is one byte short of this).
    program_headers_at, section_headers_at = struct.unpack_from("<QQ", cubin, 0x20)
    program_entry, program_count, section_entry, section_count = struct.unpack_from("<HHHH", cubin, 0x36)
    sections = [struct.unpack_from("<IIQQQQ", cubin, section_headers_at + i * section_entry)
                for i in range(section_count)]
    no_bits = 8
    ends = [offset + size for _, kind, _, _, offset, size in sections if kind != no_bits]
    ends += [program_headers_at + program_entry * program_count, section_headers_at + section_entry * section_count]
    assert len(cubin) == max(ends)


@needs_nvrtc
def test_compile_error_names_the_problem():
    with pytest.raises(nvrtc.CompileError, match="undefined_name"):
        nvrtc.kernel_report('extern "C" __global__ void k(float* a) { a[0] = undefined_name; }', "bad.cu", "sm_80")


def _cli(capsys, *argv):
    status = cli_main(["kernels", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@needs_nvrtc
def test_cli_json_and_table(capsys):
    status, out, _ = _cli(capsys, "--arch", "sm_80", "--file", "reduce.cu", "--json")
    assert status == 0
    report = json.loads(out)
    combos = {(r["dtype"], r["arch"]) for r in report["results"]}
    assert combos == {("float32", "sm_80"), ("float64", "sm_80"), ("float16", "sm_80")}   # reduce.cu has all three
    names = {k["name"] for r in report["results"] for k in r["kernels"]}
    declared = set(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)',
                              backend.kernel_source("reduce")))
    assert names == declared and {"channel_sum_block", "channel_sum_column"} <= names
    status, out, _ = _cli(capsys, "--arch", "sm_80", "--file", "reduce.cu", "--dtype", "float32")
    assert status == 0
    assert "channel_sum_block" in out and "occupancy" in out


@needs_nvrtc
def test_cli_json_to_a_file_and_family_names(capsys, tmp_path):
    target = tmp_path / "kernels.json"
    status, out, _ = _cli(capsys, "--arch", "sm_80", "--family", "reduce,pool", "--dtype", "float64",
                          "--json", str(target))
    assert status == 0 and "channel_sum_block" in out and "max_pool_forward" in out
    report = json.loads(target.read_text())
    assert {r["file"] for r in report["results"]} == {"reduce.cu", "pool.cu"}
    status, _, err = _cli(capsys, "--family", "nope")
    assert status == 2 and "no kernel file nope" in err


@needs_nvrtc
def test_cli_fails_on_spills_and_compile_errors(capsys, tmp_path, monkeypatch):
    (tmp_path / "spilly.cu").write_text(PROBE)
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k(float* a) { a[0] = nope; }')
    monkeypatch.setattr(backend, "kernel_files", lambda: sorted(tmp_path.glob("*.cu")))
    status, _, err = _cli(capsys, "--arch", "sm_80", "--dtype", "float32")
    assert status == 1
    assert "compile error: broken.cu" in err and "spill: spilly.cu spills" in err


def test_cli_without_nvrtc_exits_2(capsys, monkeypatch):
    monkeypatch.setattr(nvrtc, "why_unavailable", lambda: "libnvrtc not found (test)")
    status, _, err = _cli(capsys)
    assert status == 2 and "libnvrtc not found" in err


def test_cli_rejects_unknown_arch(capsys):
    if NVRTC_MISSING:
        pytest.skip(f"NVRTC unavailable: {NVRTC_MISSING}")
    status, _, err = _cli(capsys, "--arch", "sm_61")
    assert status == 2 and "sm_61" in err


def test_the_nvrtc_that_targets_every_arch_is_preferred(monkeypatch):
    """CuPy's NVRTC comes first, but CUDA 13's cannot target sm_70: one that targets every arch
    wins (the test extra's CUDA 12 wheel), the first found among equals; an arch the chosen one
    cannot target is named by why_arch_unsupported and compile_cubin, and left out of `cnn-gpu
    kernels`' default list."""
    import types
    made = {"cupy13": frozenset(nvrtc.ARCHS) - {"sm_70"}, "wheel12": frozenset(nvrtc.ARCHS),
            "other12": frozenset(nvrtc.ARCHS)}

    def fake(path):
        return types.SimpleNamespace(path=path, version=(13 if "13" in path else 12, 0), supported_archs=made[path])
    monkeypatch.setattr(nvrtc, "Nvrtc", fake)
    monkeypatch.setattr(nvrtc, "library_candidates", lambda: ["cupy13", "wheel12", "other12"])
    nvrtc.load.cache_clear()
    try:
        assert nvrtc.load().path == "wheel12"
        made["wheel12"] = made["cupy13"]
        nvrtc.load.cache_clear()
        assert nvrtc.load().path == "other12"
        made["other12"] = made["cupy13"]
        nvrtc.load.cache_clear()
        assert nvrtc.load().path == "cupy13"
        assert "NVRTC 13.0 (cupy13) cannot target sm_70" in nvrtc.why_arch_unsupported("sm_70")
        assert nvrtc.why_arch_unsupported("sm_90") == ""
        with pytest.raises(nvrtc.CompileError, match="cannot target sm_70"):
            nvrtc.compile_cubin("", "x.cu", "sm_70")
        from cnn_gpu.cli import kernels
        assert kernels._default_archs() == [arch for arch in nvrtc.ARCHS if arch != "sm_70"]
    finally:
        nvrtc.load.cache_clear()
