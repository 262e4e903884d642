"""Disassemble a CUBIN with nvdisasm and parse the SASS into one instruction list per function.

nvdisasm is looked for (1) in pip wheels on sys.path (nvidia-cuda-nvdisasm-cu12:
site-packages/nvidia/cuda_nvdisasm/bin; nvidia-cuda-nvdisasm, CUDA 13:
site-packages/nvidia/cu13/bin), (2) under $CUDA_PATH / $CUDA_HOME, (3) on $PATH. Where several
are found, the one that can read the most of cnn_gpu.nvrtc.ARCHS wins: CUDA 13's nvdisasm
refuses sm_70 ("deprecated"), CUDA 12's reads all of them.
"""
from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


class SassUnavailable(RuntimeError):
    """No nvdisasm on this machine, or none that reads the requested architecture."""


class DisassemblyError(RuntimeError):
    """nvdisasm rejected a CUBIN; the message carries its output."""


# CUDA 13 dropped the architectures below Turing.
_OLDEST_ARCH_BY_MAJOR = {13: 75}


@dataclass(frozen=True)
class Nvdisasm:
    path: str
    version: tuple[int, int]

    def reads(self, arch: str) -> bool:
        oldest = max((sm for major, sm in _OLDEST_ARCH_BY_MAJOR.items() if self.version[0] >= major), default=0)
        return int(arch.removeprefix("sm_")) >= oldest


def _candidate_paths() -> list[str]:
    found = []
    for entry in sys.path:
        found += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "bin", "nvdisasm")))
    for var in ("CUDA_PATH", "CUDA_HOME"):
        root = os.environ.get(var)
        if root:
            found.append(os.path.join(root, "bin", "nvdisasm"))
    on_path = shutil.which("nvdisasm")
    if on_path:
        found.append(on_path)
    return list(dict.fromkeys(path for path in found if os.access(path, os.X_OK)))


_VERSION = re.compile(r"release (\d+)\.(\d+)")


def _probe(path: str) -> Nvdisasm | None:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(done.stdout)
    return Nvdisasm(path, (int(match.group(1)), int(match.group(2)))) if done.returncode == 0 and match else None


@functools.lru_cache(maxsize=1)
def find() -> Nvdisasm:
    """The nvdisasm that reads the most architectures (the first found among equals)."""
    from .. import nvrtc
    tools = [tool for tool in map(_probe, _candidate_paths()) if tool is not None]
    if not tools:
        raise SassUnavailable("nvdisasm not found (looked in the nvidia-cuda-nvdisasm wheels, $CUDA_PATH/bin, "
                              "$CUDA_HOME/bin and $PATH); pip install nvidia-cuda-nvdisasm")
    return max(tools, key=lambda tool: sum(map(tool.reads, nvrtc.ARCHS)))


def why_unavailable(arch: str | None = None) -> str:
    """'' when nvdisasm is there (and reads `arch`, if given), else the reason."""
    try:
        tool = find()
    except SassUnavailable as err:
        return str(err)
    if arch is not None and not tool.reads(arch):
        return (f"nvdisasm {tool.version[0]}.{tool.version[1]} ({tool.path}) cannot read {arch} "
                "(CUDA 13 dropped it); CUDA 12's reads it: pip install nvidia-cuda-nvdisasm-cu12, or a CUDA 12 "
                "toolkit on $CUDA_PATH")
    return ""


# --- parsing --------------------------------------------------------------------------------------

JUMPS = frozenset({"BRA", "JMP", "BRX", "JMX"})


@dataclass(frozen=True)
class Instruction:
    address: int
    guard: str           # "" or the predicate it executes under: "@P0", "@!UP1", ...
    opcode: str          # the mnemonic with its modifiers: "FFMA.FTZ", "LDS.U.64"
    operands: str
    target: int | None   # where a BRA/JMP jumps (None for other instructions and indirect jumps)

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def modifiers(self) -> tuple[str, ...]:
        return tuple(self.opcode.split(".")[1:])

    @property
    def conditional(self) -> bool:
        """Whether this instruction can be skipped: a guard other than @PT, or (jumps) a condition
        operand such as `BRA.U !UP0, target` or `BRA.DIV UR4, target`."""
        guarded = self.guard not in ("", "@PT")
        return guarded or (self.base in JUMPS and "," in self.operands)


@dataclass(frozen=True)
class Function:
    name: str
    instructions: tuple[Instruction, ...]   # in address order, without the NOP padding at the end


_SECTION = re.compile(r"^//-+ \.text\.(\S+)\s+-+")
_LABEL = re.compile(r"^([.$\w]+):\s*$")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P(?:T|\d+)\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*([^;]*);")
_TARGET = re.compile(r"`\(([^)]+)\)")


def parse(text: str) -> dict[str, Function]:
    """Function name -> Function, from nvdisasm's output (one `.text.<name>` section each)."""
    sections: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        section = _SECTION.match(line.strip())
        if section:
            current = sections.setdefault(section.group(1), [])
            continue
        if current is None:
            continue
        label = _LABEL.match(line.strip())
        if label:
            current.append(label.group(1))
            continue
        match = _INSTRUCTION.match(line)
        if match:
            current.append(match.groups())
    return {name: _function(name, items) for name, items in sections.items()}


def _function(name: str, items: list) -> Function:
    labels, raw, pending = {}, [], []
    for item in items:
        if isinstance(item, str):
            pending.append(item)
            continue
        address = int(item[0], 16)
        labels.update((label, address) for label in pending)
        pending = []
        raw.append((address, (item[1] or "").strip(), item[2], item[3].strip()))
    while raw and raw[-1][2] == "NOP":
        raw.pop()
    instructions = []
    for address, guard, opcode, operands in raw:
        target = None
        if opcode.split(".", 1)[0] in ("BRA", "JMP"):
            named = _TARGET.findall(operands)
            target = labels.get(named[-1]) if named else None
        instructions.append(Instruction(address, guard, opcode, operands, target))
    return Function(name, tuple(instructions))


def disassemble(cubin: bytes, arch: str) -> dict[str, Function]:
    """The functions of a CUBIN compiled for `arch`, disassembled by nvdisasm."""
    reason = why_unavailable(arch)
    if reason:
        raise SassUnavailable(reason)
    tool = find()
    with tempfile.TemporaryDirectory(prefix="cnn_gpu_sass_") as folder:
        path = Path(folder) / "module.cubin"
        path.write_bytes(cubin)
        try:
            done = subprocess.run([tool.path, "-c", str(path)], capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DisassemblyError(f"nvdisasm {tool.path} did not run on a {arch} CUBIN: {err}") from None
    if done.returncode != 0:
        raise DisassemblyError(f"nvdisasm {tool.path} failed on a {arch} CUBIN ({len(cubin)} bytes): "
                               f"{done.stderr.strip() or done.stdout.strip()[:2000]}")
    functions = parse(done.stdout)
    if not functions:
        raise DisassemblyError(f"nvdisasm found no device code in a {arch} CUBIN of {len(cubin)} bytes")
    return functions
