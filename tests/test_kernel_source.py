"""backend.kernel_source: the include inliner that turns kernels/<family>.cu and its quoted
kernels/*.cuh headers into the one include-free string NVRTC and the emulator compile. Each header
is inlined once, a missing header is a clear error, and `#line` directives map every line back to
its file, so emulator faults and compiler errors name the right file:line."""
from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

from cnn_gpu import backend, nvrtc

LINE_DIRECTIVE = re.compile(r'^#line (\d+) "(.*)"$')
INCLUDE = re.compile(r"^\s*#\s*include")


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def origins(source: str) -> list[tuple[str, int, str]]:
    """(file, line, text) of every non-directive line of an inlined source, as a compiler sees it."""
    where, number, found = None, 0, []
    for line in source.splitlines():
        match = LINE_DIRECTIVE.match(line)
        if match:
            number, where = int(match.group(1)), match.group(2)
            continue
        found.append((where, number, line))
        number += 1
    return found


@pytest.fixture
def family(tmp_path):
    write(tmp_path, "leaf.cuh", """
        // leaf header
        #define LEAF 1
        """)
    write(tmp_path, "middle.cuh", """
        #include "leaf.cuh"
        #define MIDDLE 2
        """)
    write(tmp_path, "k.cu", """
        // kernel file
        #include "middle.cuh"
        #include "leaf.cuh"
        int after_includes = LEAF + MIDDLE;
          #  include "middle.cuh"
        int last = 0;
        """)
    return tmp_path


def test_every_line_maps_back_to_its_file_and_line(family):
    source = backend.kernel_source("k", family)
    assert "#include" not in source
    expected = {}
    for name in ("k.cu", "middle.cuh", "leaf.cuh"):
        for number, line in enumerate((family / name).read_text().splitlines(), start=1):
            if not INCLUDE.match(line):
                expected[(str((family / name).resolve()), number)] = line
    seen = {(where, number): line for where, number, line in origins(source)}
    assert seen == expected


def test_each_header_is_inlined_once(family):
    source = backend.kernel_source("k", family)
    assert source.count("#define LEAF 1") == 1 and source.count("#define MIDDLE 2") == 1
    # leaf.cuh comes first (pulled in by middle.cuh), before the code after the includes
    assert source.index("#define LEAF") < source.index("#define MIDDLE") < source.index("after_includes")


def test_missing_header_is_a_clear_error(tmp_path):
    write(tmp_path, "k.cu", """
        int a;
        #include "absent.cuh"
        """)
    with pytest.raises(FileNotFoundError, match=r'k\.cu:2: #include "absent\.cuh": no such header'):
        backend.kernel_source("k", tmp_path)


def test_project_kernels_reach_nvrtc_without_includes():
    for path in backend.kernel_files():
        source = backend.kernel_source(path.stem)
        assert not any(INCLUDE.match(line) for line in source.splitlines()), path.name
    assert all(path.suffix == ".cu" for path in backend.kernel_files())
    assert (backend.kernel_dir() / "common.cuh").is_file()


PLANTED_HEADER = """
    // writes one element past the end when asked to
    __device__ __forceinline__ void store_at(float* y, int i, float v)
    {
        y[i] = v;
    }
    """

PLANTED_KERNEL = """
    // a test kernel: its header's store and its own store can each be pushed out of bounds
    #include "planted.cuh"

    extern "C" __global__ void __launch_bounds__(64) planted(float* y, int n, int header_offset, int own_offset)
    {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) store_at(y, i + header_offset, 1.0f);
        if (i < n) y[i + own_offset] = 2.0f;
    }
    """


def line_of(path, snippet: str) -> str:
    (number,) = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if snippet in line]
    return f"{path.resolve()}:{number} "


@pytest.mark.skipif(bool(backend.why_unavailable("emu")), reason=backend.why_unavailable("emu") or "")
def test_emulator_faults_name_the_header_and_kernel_lines(tmp_path):
    from cnn_gpu import emu
    header = write(tmp_path, "planted.cuh", PLANTED_HEADER)
    kernel = write(tmp_path, "planted.cu", PLANTED_KERNEL)
    module = emu.RawModule(code=backend.kernel_source("planted", tmp_path), options=("-DREAL=float",))
    planted = module.get_function("planted")
    y = np.zeros(64, np.float32)
    planted((1,), (64,), (y, np.int32(64), np.int32(0), np.int32(0)), guard=True)
    assert (y == 2.0).all()
    for offsets, site in (((1, 0), line_of(header, "y[i] = v;")),
                          ((0, 1), line_of(kernel, "y[i + own_offset] = 2.0f;"))):
        with pytest.raises(emu.KernelFault) as info:
            planted((1,), (64,), (y, np.int32(64), *map(np.int32, offsets)), guard=True)
        assert info.value.source.startswith(site), (info.value.source, site)


@pytest.mark.skipif(bool(nvrtc.why_unavailable()), reason=f"NVRTC unavailable: {nvrtc.why_unavailable()}")
def test_nvrtc_errors_name_the_header_line(tmp_path):
    header = write(tmp_path, "broken.cuh", """
        // fine
        __device__ float broken() { return undefined_in_header; }
        """)
    write(tmp_path, "k.cu", """
        #include "broken.cuh"
        extern "C" __global__ void __launch_bounds__(32) k(float* a) { a[0] = broken(); }
        """)
    with pytest.raises(nvrtc.CompileError) as info:
        nvrtc.file_report(tmp_path / "k.cu", "float32", "sm_80")
    assert f"{header.resolve()}(2)" in str(info.value) and "undefined_in_header" in str(info.value)
