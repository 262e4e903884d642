"""The few libnvrtc entry points cnn_gpu.nvrtc needs, through ctypes, and the child process every
compile runs in.

Why a child: NVRTC's output is not a function of its input alone. The same source and options gave
different register counts (conv2d_fprop fp32 sm_90: 166 or 168 on two of its tiles) and now and
then an 8-byte spill (conv2d_wgrad_small fp32 sm_89, at its 168-register cap; a CI run failed on
it), following, as far as we could see: the addresses of its data (ten fresh processes gave three
results, ten with address-space layout randomization off gave one), and the heap left by whatever
ran before in the process: Python's start-up, whose allocations follow the environment, the
command line and the path of the library loaded. So cnn_gpu.nvrtc runs each compile as a fresh
interpreter (-I -S, this file's text as its -c program, nothing else imported) with an empty
environment, "/" as its folder and the library reached through a path of fixed length; the child
re-executes itself once with ADDR_NO_RANDOMIZE and ADDR_COMPAT_LAYOUT set. The second because the
kernel otherwise places shared libraries and large allocations below the stack by its size limit
(`ulimit -s`; unlimited gives the bottom-up layout): conv2d_wgrad fp32 sm_90 gave 167 registers on
its tall tile under 8 MiB and 166 unlimited. Registers, spills and SASS are then the same at every
run, in any clone of the tree and under any stack limit.

The child reads a JSON request {"library", "name", "options", "source"} on stdin and writes a JSON
reply {"status", "reason", "log", "cubin" (base64), "fixed_layout"} on stdout. Only the standard
library may be imported here.
"""
import base64
import ctypes
import json
import os
import sys

# personality(2) flags, kept by what this process executes: no ASLR, and the bottom-up address layout
# (mappings from a fixed base rather than below the stack by its rlimit)
ADDR_NO_RANDOMIZE = 0x0040000
ADDR_COMPAT_LAYOUT = 0x0200000
FIXED_LAYOUT = ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT


class Library:
    """libnvrtc loaded from a path: its version, the archs it targets and compile()."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        c_int_p = ctypes.POINTER(ctypes.c_int)
        c_size_p = ctypes.POINTER(ctypes.c_size_t)
        program_p = ctypes.POINTER(ctypes.c_void_p)
        signatures = {
            "nvrtcVersion": [c_int_p, c_int_p],
            "nvrtcGetErrorString": [ctypes.c_int],
            "nvrtcCreateProgram": [program_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                   ctypes.c_void_p, ctypes.c_void_p],
            "nvrtcCompileProgram": [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
            "nvrtcGetProgramLogSize": [ctypes.c_void_p, c_size_p],
            "nvrtcGetProgramLog": [ctypes.c_void_p, ctypes.c_char_p],
            "nvrtcGetCUBINSize": [ctypes.c_void_p, c_size_p],
            "nvrtcGetCUBIN": [ctypes.c_void_p, ctypes.c_char_p],
            "nvrtcDestroyProgram": [program_p],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        self._lib = lib
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def error_string(self, status: int) -> str:
        return self._lib.nvrtcGetErrorString(status).decode(errors="replace")

    def check(self, status: int, what: str):
        if status != 0:
            raise RuntimeError(f"{what} failed: {self.error_string(status)}")

    def supported_archs(self):
        """['sm_70', ...], or None where NVRTC (< 11.2) cannot say."""
        lib = self._lib
        try:
            count_fn, list_fn = lib.nvrtcGetNumSupportedArchs, lib.nvrtcGetSupportedArchs
        except AttributeError:
            return None
        count = ctypes.c_int()
        self.check(count_fn(ctypes.byref(count)), "nvrtcGetNumSupportedArchs")
        archs = (ctypes.c_int * count.value)()
        self.check(list_fn(archs), "nvrtcGetSupportedArchs")
        return [f"sm_{value}" for value in archs]

    def compile(self, source: str, name: str, options) -> dict:
        """{"status": NVRTC's result, "reason": its words, "log": the program log, "cubin": bytes
        (b"" when the compile failed)}. The CUBIN is nvrtcGetCUBINSize bytes, the whole ELF image."""
        lib = self._lib
        program = ctypes.c_void_p()
        self.check(lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None),
                   "nvrtcCreateProgram")
        try:
            encoded = [option.encode() for option in options]
            status = lib.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
            size = ctypes.c_size_t()
            self.check(lib.nvrtcGetProgramLogSize(program, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            log_buffer = ctypes.create_string_buffer(size.value)
            self.check(lib.nvrtcGetProgramLog(program, log_buffer), "nvrtcGetProgramLog")
            cubin = b""
            if status == 0:
                self.check(lib.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
                cubin_buffer = ctypes.create_string_buffer(size.value)
                self.check(lib.nvrtcGetCUBIN(program, cubin_buffer), "nvrtcGetCUBIN")
                cubin = cubin_buffer.raw
            return {"status": status, "reason": self.error_string(status),
                    "log": log_buffer.value.decode(errors="replace"), "cubin": cubin}
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(program))


def _serve() -> None:
    request = json.load(sys.stdin)
    try:
        reply = Library(request["library"]).compile(request["source"], request["name"], request["options"])
        reply["cubin"] = base64.b64encode(reply["cubin"]).decode()
    except (OSError, AttributeError, RuntimeError) as err:
        reply = {"status": -1, "reason": f"{type(err).__name__}: {err}", "log": "", "cubin": ""}
    reply["fixed_layout"] = _persona() & FIXED_LAYOUT == FIXED_LAYOUT
    json.dump(reply, sys.stdout)


def _persona() -> int:
    """This process's personality(2) flags (-1 where the call fails or the C library has none);
    reading them changes nothing."""
    personality = getattr(ctypes.CDLL(None), "personality", None)
    return -1 if personality is None else personality(0xFFFFFFFF)


def _with_fixed_layout() -> None:
    """Re-execute this script with FIXED_LAYOUT's flags set, unless they are set already or the kernel
    refuses them (then the compile runs as it is: correct, though not always the same)."""
    persona = _persona()
    if persona == -1 or persona & FIXED_LAYOUT == FIXED_LAYOUT:
        return
    if ctypes.CDLL(None).personality(persona | FIXED_LAYOUT) == -1:
        return
    os.execv(sys.executable, sys.orig_argv)


if __name__ == "__main__":
    _with_fixed_layout()
    _serve()
