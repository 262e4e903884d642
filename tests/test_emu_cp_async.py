"""cp.async through the helpers of kernels/common.cuh (tests/emu_kernels/cp_async.cu): on the
emulator a destination is poisoned (NaN) until its copy is waited for, so waited copies are exact
under every schedule and reads before the wait fail under every schedule; the race check and the
memory profile see the copies; NVRTC turns the helpers into LDGSTS on sm_80 and newer. Also the
emulated __CUDA_ARCH__ ($CNN_GPU_EMU_ARCH, -arch=sm_XX)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend, nvrtc, sass

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")

KERNELS = Path(__file__).resolve().parent / "emu_kernels"
SOURCE = KERNELS / "cp_async.cu"
SCHEDULES = ("forward", "reverse", "random")
BLOCK, BLOCKS = 64, 3
# (element type, bytes per copy): every copy size each dtype can make
SIZES = [(np.float32, 4), (np.float32, 8), (np.float32, 16), (np.float64, 8), (np.float64, 16)]


def _options(dtype, copy_bytes, *plants):
    real = "double" if dtype == np.float64 else "float"
    return (f"-DREAL={real}", f"-DREAL_IS_DOUBLE={int(dtype == np.float64)}", f"-DCOPY_BYTES={copy_bytes}",
            *(f"-D{plant}" for plant in plants))


_modules: dict = {}


def _kernel(name, dtype, copy_bytes, *plants):
    from cnn_gpu import emu
    key = _options(dtype, copy_bytes, *plants)
    if key not in _modules:
        _modules[key] = emu.RawModule(path=str(SOURCE), options=key)
    return _modules[key].get_function(name)


def _run(name, dtype, copy_bytes, *plants, schedule="forward", **checks):
    """(x, y, tile elements): y as the kernel left it, y's untouched elements random; the last five
    chunks of x lie past n, so their copies are zero-fills (and read nothing: x is guarded)."""
    chunk = copy_bytes // np.dtype(dtype).itemsize
    tile = 2 * BLOCK * chunk
    n = BLOCKS * tile - 5 * chunk
    rng = np.random.default_rng(copy_bytes)
    x = rng.standard_normal(n).astype(dtype)
    y = rng.standard_normal(BLOCKS * tile).astype(dtype)
    _kernel(name, dtype, copy_bytes, *plants)((BLOCKS,), (BLOCK,), (x, y, np.int32(n)), schedule=schedule, seed=5,
                                               **checks)
    return x, y, tile


def _halves(y, tile):
    """y's older and newer group halves of each block's tile."""
    blocks = y.reshape(BLOCKS, 2, tile // 2)
    return blocks[:, 0], blocks[:, 1]


def _line_of(snippet: str) -> int:
    (number,) = [i + 1 for i, line in enumerate(SOURCE.read_text().splitlines()) if snippet in line]
    return number


@needs_emu
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype, copy_bytes", SIZES)
def test_waited_copies_are_exact_and_zero_fills_are_zeros(dtype, copy_bytes, schedule):
    x, y, _ = _run("copy_all", dtype, copy_bytes, schedule=schedule)
    np.testing.assert_array_equal(y[:x.size], x)
    assert (y[x.size:] == 0).all() and not np.signbit(y[x.size:]).any()


@needs_emu
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("plant", ["PLANT_LATE_WAIT", "PLANT_NO_BARRIER"])
@pytest.mark.parametrize("dtype, copy_bytes", [(np.float32, 16), (np.float64, 8)])
def test_reading_before_the_wait_and_barrier_sees_poison(dtype, copy_bytes, plant, schedule):
    """NaN where the copy was issued, else the block's shared poison (NaN under forward, another
    byte under the other schedules): never the copied values."""
    x, y, _ = _run("copy_all", dtype, copy_bytes, plant, schedule=schedule)
    assert not np.array_equal(y[:x.size], x)
    assert np.isnan(y).any() or schedule != "forward"


@needs_emu
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_wait_group_1_completes_the_older_group_only(schedule):
    x, y, tile = _run("copy_older_group", np.float32, 8, schedule=schedule)
    older, _ = _halves(y, tile)
    np.testing.assert_array_equal(older, _halves(np.pad(x, (0, y.size - x.size)), tile)[0])
    _, y, tile = _run("copy_older_group", np.float32, 8, "READ_NEWER", schedule=schedule)
    assert np.isnan(_halves(y, tile)[1]).any()


@needs_emu
def test_a_thread_that_exits_with_copies_pending_faults_at_the_first_copy():
    from cnn_gpu import emu
    with pytest.raises(emu.KernelFault, match="never waited for") as caught:
        _run("copy_all", np.float32, 16, "PLANT_NO_WAIT")
    assert caught.value.kind == "cp.async misuse"
    assert caught.value.source.startswith(f"{SOURCE}:{_line_of('cp_async<COPY_BYTES>(tile + older')} ")


@needs_emu
@pytest.mark.parametrize("kernel, message", [("copy_to_global", "not in shared memory"),
                                             ("copy_misaligned", "misaligned cp.async of 4 bytes")])
def test_a_copy_into_global_memory_or_to_a_misaligned_address_faults(kernel, message):
    from cnn_gpu import emu
    x = np.random.default_rng(1).standard_normal(BLOCK * 4).astype(np.float32)
    y = np.zeros_like(x)
    with pytest.raises(emu.KernelFault, match=message) as caught:
        _kernel(kernel, np.float32, 4)((1,), (BLOCK,), (x, y))
    assert caught.value.kind == "cp.async misuse"


@needs_emu
def test_race_check_sees_the_copy_land_at_the_wait():
    from cnn_gpu import emu
    x, y, _ = _run("copy_all", np.float32, 16, schedule="random", race=True)
    np.testing.assert_array_equal(y[:x.size], x)
    with pytest.raises(emu.KernelFault, match="race") as caught:
        _run("copy_all", np.float32, 16, "PLANT_LATE_WAIT", race=True)
    assert caught.value.kind == "shared memory race"


@needs_emu
@pytest.mark.parametrize("copy_bytes, sectors, wavefronts", [(4, 4, 1), (16, 16, 4)])
def test_profile_counts_a_copy_as_a_global_load_and_a_shared_store(copy_bytes, sectors, wavefronts):
    """A warp's copies of consecutive chunks: 32 x copy_bytes bytes in sectors of 32; the shared
    store runs in phases of 32, 16 or 8 lanes (4-, 8-, 16-byte accesses), one wavefront each."""
    from cnn_gpu import emu
    with emu.profiling() as prof:
        _run("copy_all", np.float32, copy_bytes)
    line = _line_of("cp_async<COPY_BYTES>(tile + older")
    rows = {(s["space"], s["op"]): s for s in prof.sites if s["line"] == line}
    requests = BLOCKS * BLOCK // 32
    assert rows["global", "load"]["requests"] == requests
    assert rows["global", "load"]["sectors"] == requests * sectors
    assert rows["shared", "store"]["requests"] == requests
    assert rows["shared", "store"]["wavefronts"] == requests * wavefronts


# --- the emulated architecture ---------------------------------------------------------------------

ARCH_PROBE = 'extern "C" __global__ void arch(int* out) { out[0] = __CUDA_ARCH__; }'


def _emulated_arch(options=()):
    from cnn_gpu import emu
    out = np.zeros(1, np.int32)
    emu.RawModule(code=ARCH_PROBE, options=options).get_function("arch")((1,), (1,), (out,))
    return int(out[0])


@needs_emu
def test_emulated_arch_is_800_unless_the_environment_or_arch_option_says_otherwise(monkeypatch):
    monkeypatch.delenv("CNN_GPU_EMU_ARCH", raising=False)
    assert _emulated_arch() == 800
    monkeypatch.setenv("CNN_GPU_EMU_ARCH", "750")
    assert _emulated_arch() == 750
    assert _emulated_arch(("-arch=sm_90",)) == 900
    monkeypatch.setenv("CNN_GPU_EMU_ARCH", "sm_75")
    with pytest.raises(ValueError, match="CNN_GPU_EMU_ARCH"):
        _emulated_arch()


@needs_emu
def test_below_sm_80_a_kernel_runs_its_other_code_path(monkeypatch):
    source = ('extern "C" __global__ void path(int* out) {\n#if __CUDA_ARCH__ >= 800\n out[0] = 1;\n'
              '#else\n out[0] = 2;\n#endif\n}')
    from cnn_gpu import emu
    taken = []
    for arch in ("700", "800"):
        monkeypatch.setenv("CNN_GPU_EMU_ARCH", arch)
        out = np.zeros(1, np.int32)
        emu.RawModule(code=source).get_function("path")((1,), (1,), (out,))
        taken.append(int(out[0]))
    assert taken == [2, 1]


# --- NVRTC: LDGSTS on sm_80 and newer, plain loads and stores before ---------------------------------

@pytest.mark.parametrize("arch", ["sm_70", "sm_75", "sm_80", "sm_90"])
def test_helpers_compile_to_ldgsts_from_sm_80(arch):
    reason = nvrtc.why_arch_unsupported(arch)
    if reason:
        pytest.skip(reason)
    source = backend.kernel_source("cp_async", KERNELS)
    for dtype, copy_bytes in SIZES:
        cubin, _ = nvrtc.compile_cubin(source, "cp_async.cu", arch, ("--std=c++14", *_options(dtype, copy_bytes)))
        if sass.why_unavailable(arch):
            continue  # compiled: that is all there is to check without a disassembler
        opcodes = [i.opcode for i in sass.disassemble(cubin, arch)["copy_all"].instructions]
        copies = [op for op in opcodes if op.startswith("LDGSTS")]
        if arch < "sm_80":
            assert not copies
            continue
        width = "" if copy_bytes == 4 else f".{copy_bytes * 8}"
        assert copies and all(op.endswith(width) if width else op == "LDGSTS.E" for op in copies), copies
        assert any(op.startswith("LDGDEPBAR") for op in opcodes)        # commit_group
        assert any(op.startswith("DEPBAR") for op in opcodes)           # wait_group
