"""NVRTC compiles in a child process set up the same way every time (cnn_gpu._nvrtc_lib says why:
its register allocation follows the address layout and heap of the process it runs in), so that
the registers, spills and SASS counts the other tests assert are the same at every run."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import types

import pytest

from cnn_gpu import _cache, _nvrtc_lib, nvrtc

NVRTC_MISSING = nvrtc.why_unavailable()
needs_nvrtc = pytest.mark.skipif(bool(NVRTC_MISSING), reason=f"NVRTC unavailable: {NVRTC_MISSING}")

SCALE = 'extern "C" __global__ void __launch_bounds__(64) scale(float* x, float a) { x[threadIdx.x] *= a; }\n'


@pytest.fixture(autouse=True)
def empty_compile_cache(tmp_path, monkeypatch):
    """Each test starts from an empty disk cache, so that its compiles run a child."""
    monkeypatch.setenv("CNN_GPU_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "nvrtc"


@needs_nvrtc
def test_a_compile_runs_in_a_child_process(monkeypatch):
    def in_this_process(*args):
        raise AssertionError("NVRTC compiled in the test's own process")
    monkeypatch.setattr(_nvrtc_lib.Library, "compile", in_this_process)
    cubin, log = nvrtc.compile_cubin(SCALE, "scale.cu", "sm_80")
    assert cubin[:4] == b"\x7fELF"
    [report] = nvrtc.reports_of(cubin, log, "sm_80")
    assert report.name == "scale" and report.max_threads == 64 and report.spill_bytes == 0


def _can_turn_off_address_randomization() -> bool:
    probe = ("import ctypes; libc = ctypes.CDLL(None); p = libc.personality(0xFFFFFFFF); "
             f"print(p != -1 and libc.personality(p | {_nvrtc_lib.FIXED_LAYOUT}) != -1)")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"


@needs_nvrtc
def test_the_child_runs_without_address_randomization_in_an_empty_environment(monkeypatch):
    if not _can_turn_off_address_randomization():
        pytest.skip("this system refuses personality(ADDR_NO_RANDOMIZE)")
    runs = []
    real_run = subprocess.run

    def recording_run(command, **kwargs):
        runs.append((command, kwargs, real_run(command, **kwargs)))
        return runs[-1][2]
    monkeypatch.setattr(nvrtc.subprocess, "run", recording_run)
    nvrtc.compile_cubin(SCALE, "scale.cu", "sm_80")
    [(command, kwargs, child)] = runs
    assert kwargs["env"] == {} and kwargs["cwd"] == "/"
    # no path of this tree or its virtual environment on the command line
    assert command[0] == os.path.realpath(sys.executable) and command[1:4] == ("-I", "-S", "-c")
    assert not any(os.path.dirname(nvrtc.__file__) in part for part in command)
    assert json.loads(child.stdout)["fixed_layout"] is True


@needs_nvrtc
def test_the_childs_output_does_not_follow_the_stack_size_limit(monkeypatch):
    """The kernel lays mappings out below the stack by its rlimit, bottom-up where it is unlimited;
    conv2d_wgrad's float32 tall tile took 167 or 166 registers on sm_90 by `ulimit -s` before the
    child fixed its layout."""
    if not _can_turn_off_address_randomization():
        pytest.skip("this system refuses personality(ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT)")
    if resource.getrlimit(resource.RLIMIT_STACK)[1] != resource.RLIM_INFINITY:
        pytest.skip("the hard stack limit is finite: the unlimited layout cannot be tried")
    from cnn_gpu import backend
    if nvrtc.why_arch_unsupported("sm_90"):
        pytest.skip(nvrtc.why_arch_unsupported("sm_90"))
    source = backend.kernel_source("conv2d_wgrad")
    options = (*backend.NVRTC_OPTIONS, *backend.dtype_options("float32"), "-arch=sm_90", "--ptxas-options=-v")
    real_run, compiler, cubins = subprocess.run, nvrtc.load(), []
    for limit in (8 << 20, resource.RLIM_INFINITY):
        def run_with_limit(command, limit=limit, **kwargs):
            return real_run(command, **kwargs, preexec_fn=lambda: resource.setrlimit(
                resource.RLIMIT_STACK, (limit, resource.RLIM_INFINITY)))
        monkeypatch.setattr(nvrtc.subprocess, "run", run_with_limit)
        cubin, log, fixed_layout = compiler._compile(nvrtc._line_directives_by_name(source)[0], "conv2d_wgrad.cu",
                                                     options)
        assert fixed_layout
        cubins.append(cubin)
    assert cubins[0] == cubins[1]


def test_line_directives_reach_nvrtc_without_their_folders_and_errors_name_the_paths():
    seen = []

    def compile(source, name, options):
        seen.append(source)
        if "broken" in source:
            raise nvrtc.CompileError("b.cuh(8): error: identifier \"broken\" is undefined\n"
                                     "a.cu(2): here\nd.cuh(1): two paths, one name\n")
        return b"", ""
    compiler = types.SimpleNamespace(supported_archs=frozenset(nvrtc.ARCHS), version=(12, 9), compile=compile)
    source = ('#line 1 "/some/where/kernels/a.cu"\nint x;\n#line 7 "/else/where/b.cuh"\n#line 9 "c.cuh"\n'
              '#line 1 "/one/d.cuh"\n#line 1 "/two/d.cuh"\n')
    nvrtc.compile_cubin(source, "a.cu", "sm_80", compiler=compiler)
    assert seen == ['#line 1 "a.cu"\nint x;\n#line 7 "b.cuh"\n#line 9 "c.cuh"\n#line 1 "d.cuh"\n#line 1 "d.cuh"\n']
    with pytest.raises(nvrtc.CompileError) as info:
        nvrtc.compile_cubin(source + "broken", "a.cu", "sm_80", compiler=compiler)
    assert str(info.value) == ('/else/where/b.cuh(8): error: identifier "broken" is undefined\n'
                               '/some/where/kernels/a.cu(2): here\nd.cuh(1): two paths, one name\n')


def test_a_library_is_reached_by_a_path_of_the_same_length_wherever_it_lies(tmp_path, monkeypatch):
    monkeypatch.setattr(nvrtc, "LINK_FOLDER", str(tmp_path / "links-{uid}"))
    short, deep = tmp_path / "a", tmp_path / "a much longer folder" / "lib"
    for folder in (short, deep):
        folder.mkdir(parents=True)
        (folder / "libnvrtc.so.12").write_bytes(b"the same library")
        (folder / "libnvrtc-builtins.so.12.9").write_bytes(b"its builtins")
    stable = nvrtc._stable_library_path.__wrapped__
    first, second = stable(str(short / "libnvrtc.so.12")), stable(str(deep / "libnvrtc.so.12"))
    assert first == second and first.startswith(str(tmp_path / f"links-{os.getuid()}"))
    # the link follows the folder last asked for, where the builtins lie beside the library
    assert os.path.realpath(second) == str(deep / "libnvrtc.so.12")
    assert (tmp_path / f"links-{os.getuid()}" / os.path.basename(os.path.dirname(second))
            / "libnvrtc-builtins.so.12.9").read_bytes() == b"its builtins"
    (deep / "libnvrtc.so.12").write_bytes(b"another library")
    assert len(stable(str(deep / "libnvrtc.so.12"))) == len(first) and stable(str(deep / "libnvrtc.so.12")) != first


def test_no_link_in_a_folder_others_may_write(tmp_path, monkeypatch):
    shared = tmp_path / "shared-{uid}"
    monkeypatch.setattr(nvrtc, "LINK_FOLDER", str(shared))
    library = tmp_path / "libnvrtc.so.12"
    library.write_bytes(b"a library")
    os.makedirs(str(shared).format(uid=os.getuid()), mode=0o777)
    os.chmod(str(shared).format(uid=os.getuid()), 0o777)
    assert nvrtc._stable_library_path.__wrapped__(str(library)) == str(library)


def test_a_child_that_cannot_load_the_library_raises_compile_error(tmp_path):
    broken = tmp_path / "libnvrtc.so.12"
    broken.write_bytes(b"not a shared library")
    compiler = object.__new__(nvrtc.Nvrtc)
    compiler.path = str(broken)
    with pytest.raises(nvrtc.CompileError, match="scale.cu .*OSError"):
        compiler.compile(SCALE, "scale.cu", ["-arch=sm_80"])


def test_a_child_with_address_randomization_warns(monkeypatch):
    reply = {"status": 0, "reason": "", "log": "", "cubin": "", "fixed_layout": False}
    monkeypatch.setattr(nvrtc.subprocess, "run", lambda command, **kwargs: types.SimpleNamespace(
        stdout=json.dumps(reply), returncode=0, stderr=""))
    monkeypatch.setattr(nvrtc, "_stable_library_path", lambda path: path)
    nvrtc._warn_randomized_layout.cache_clear()
    compiler = object.__new__(nvrtc.Nvrtc)
    compiler.path = "libnvrtc.so.12"
    with pytest.warns(RuntimeWarning, match="address randomization"):
        assert compiler.compile(SCALE, "scale.cu", ["-arch=sm_80"]) == (b"", "")
    nvrtc._warn_randomized_layout.cache_clear()


def _recording_runs(monkeypatch) -> list:
    runs, real_run = [], subprocess.run
    monkeypatch.setattr(nvrtc.subprocess, "run", lambda command, **kwargs: runs.append(command) or real_run(
        command, **kwargs))
    return runs


@needs_nvrtc
def test_a_compile_comes_back_from_the_disk_cache_until_its_source_or_options_change(monkeypatch, empty_compile_cache):
    if not _can_turn_off_address_randomization():
        pytest.skip("this system refuses personality(ADDR_NO_RANDOMIZE): its compiles are not cached")
    runs = _recording_runs(monkeypatch)
    first = nvrtc.compile_cubin(SCALE, "scale.cu", "sm_80")
    assert len(runs) == 1 and nvrtc.compile_cubin(SCALE, "scale.cu", "sm_80") == first and len(runs) == 1
    [entry] = empty_compile_cache.glob("scale.cu-*.json")
    other = nvrtc.compile_cubin(SCALE, "scale.cu", "sm_90")
    assert len(runs) == 2 and other != first
    edited = SCALE.replace("*= a", "+= a")
    assert nvrtc.compile_cubin(edited, "scale.cu", "sm_80") != first and len(runs) == 3
    assert not entry.exists(), "the entry of the older source stays beside the newer"
    assert len(list(empty_compile_cache.glob("scale.cu-*.json"))) == 2   # one per arch
    # a damaged entry is compiled again
    for damaged in empty_compile_cache.glob("scale.cu-*.json"):
        damaged.write_text("{")
    assert nvrtc.compile_cubin(edited, "scale.cu", "sm_80") != first and len(runs) == 4


@needs_nvrtc
def test_a_process_waits_for_the_compile_another_has_under_way(monkeypatch, empty_compile_cache):
    """Two pytest-xdist workers asking for one compile: the second waits for the first's entry."""
    if not _can_turn_off_address_randomization():
        pytest.skip("this system refuses personality(ADDR_NO_RANDOMIZE): its compiles are not cached")
    compiled = nvrtc.compile_cubin(SCALE, "scale.cu", "sm_80")
    [entry] = empty_compile_cache.glob("scale.cu-*.json")
    group = entry.name.rsplit("-", 1)[0]   # <file>-<settings>-<source digest>.json
    stored = entry.read_bytes()
    entry.unlink()
    runs = _recording_runs(monkeypatch)
    missed, real_read = threading.Event(), _cache.read
    monkeypatch.setattr(_cache, "read", lambda *args: missed.set() or real_read(*args))
    results = []
    with _cache.group_lock("nvrtc", group):   # "another process" is compiling it
        waiting = threading.Thread(target=lambda: results.append(nvrtc.compile_cubin(SCALE, "scale.cu", "sm_80")))
        waiting.start()
        assert missed.wait(60)
        waiting.join(0.5)
        assert waiting.is_alive(), "did not wait for the compile under way"
        entry.write_bytes(stored)   # ...and has stored it
    waiting.join(60)
    assert results == [compiled] and runs == []
