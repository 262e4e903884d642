"""The instruction mix of a SASS path and the FMA issue ceiling it implies.

Every instruction falls in exactly one class (so the classes add up to `instructions`):
fma (FFMA, DFMA, HFMA2; an HFMA2 whose two multiplicands are RZ is the compiler's
move-immediate idiom and counts as integer), mma (HMMA, DMMA, IMMA, BMMA and the sm_90 *GMMA),
fp_other (other floating-point arithmetic, conversions, MUFU), lds, sts, ldg, stg, ldgsts,
local (LDL, STL), ldc (constant loads), atomic, other_memory (generic LD/ST, LDSM counts as lds),
bar (BAR), branches (control flow: BRA, EXIT, CALL, BSSY/BSYNC, ...), integer (integer,
address, move, predicate and uniform-datapath work) and other.

Issue ceiling: an SM sub-partition (SMSP) issues at most one warp-instruction per clock, and its
FMA pipe accepts `rate` FMA warp-instructions per clock (FP32 or FP64 lanes per SMSP / 32). A
loop of N instructions of which F are FMAs needs at least max(N, F / rate) clocks per warp
iteration, so the FMA pipe runs at most at
    issue_ceiling = min(1, (F / N) / rate)
of its peak. F counts the dtype's FMA (FFMA for float32 and float16, which computes in FP32; DFMA for float64).
FFMA rate: 1 on sm_86/sm_89/sm_90 (128 FP32 lanes per SM: every non-FFMA instruction costs
an FFMA slot, the ceiling is the FFMA share), 0.5 on sm_70/sm_75/sm_80 (64 lanes: an FFMA
occupies the pipe for two clocks and another instruction can issue in between).
DFMA rate (CUDA C Programming Guide, results per clock per SM / 128): 0.25 on sm_70/sm_80
(32 FP64 lanes per SM), 0.5 on sm_90 (64), 1/64 on sm_75/sm_86/sm_89 (2).
The ceiling covers the FMA pipe only: a tensor-core loop (MMA, no FMA) gets 0; tensor-core
issue limits are not modelled here.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .disasm import Instruction

FFMA_RATE = {"sm_70": 0.5, "sm_75": 0.5, "sm_80": 0.5, "sm_86": 1.0, "sm_89": 1.0, "sm_90": 1.0}
DFMA_RATE = {"sm_70": 0.25, "sm_75": 1 / 64, "sm_80": 0.25, "sm_86": 1 / 64, "sm_89": 1 / 64, "sm_90": 0.5}

_FMA = {"FFMA": "ffma", "FFMA32I": "ffma", "DFMA": "dfma", "HFMA2": "hfma2"}
_MMA = frozenset({"HMMA", "DMMA", "IMMA", "BMMA", "HGMMA", "IGMMA", "QGMMA", "BGMMA", "OMMA", "UTCHMMA"})
_MEMORY = {"LDS": "lds", "LDSM": "lds", "STS": "sts", "LDG": "ldg", "STG": "stg", "LDGSTS": "ldgsts",
           "LDL": "local", "STL": "local", "LDC": "ldc", "ULDC": "ldc", "ATOM": "atomic", "ATOMS": "atomic",
           "ATOMG": "atomic", "RED": "atomic", "REDG": "atomic", "LD": "other_memory", "ST": "other_memory"}
_CONTROL = frozenset({"BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BSSY", "BSYNC", "BREAK", "BMOV",
                      "WARPSYNC", "YIELD", "KILL", "NANOSLEEP", "BPT"})
_FP_OTHER = frozenset({"FADD", "FADD32I", "FMUL", "FMUL32I", "FMNMX", "FSETP", "FSET", "FSEL", "FCHK", "FRND",
                       "FSWZADD", "MUFU", "DADD", "DMUL", "DSETP", "DMNMX", "F2F", "F2I", "I2F", "I2FP", "F2FP",
                       "HADD2", "HMUL2", "HSETP2", "HMNMX2", "HSET2"})
# Integer, address, move and predicate instructions; the uniform datapath's U-prefixed forms too.
_INTEGER = frozenset({"IMAD", "IADD", "IADD3", "IADD32I", "LEA", "LOP", "LOP3", "LOP32I", "SHF", "SHL", "SHR",
                      "ISETP", "ISCADD", "SEL", "MOV", "MOV32I", "IMNMX", "IABS", "POPC", "FLO", "BREV", "PRMT",
                      "BFE", "BFI", "IMUL", "XMAD", "VIADD", "VIADDMNMX", "VIMNMX", "VIMNMX3", "IDP", "PLOP3",
                      "PSETP", "P2R", "R2P", "S2R", "S2UR", "CS2R", "R2UR", "SGXT", "I2I", "IMNMX3", "VOTE",
                      "VOTEU", "SHFL", "UP2UR"})
COUNTS = ("instructions", "fma", "ffma", "dfma", "hfma2", "mma", "fp_other", "lds", "sts", "ldg", "stg",
          "ldgsts", "local", "ldc", "atomic", "other_memory", "bar", "branches", "integer", "other")
WIDTHS = ("lds", "sts", "ldg", "stg", "ldgsts")
_WIDTH_MODIFIERS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


def _is_move_idiom(ins: Instruction) -> bool:
    multiplicands = [operand.strip().lstrip("-|") for operand in ins.operands.split(",")[1:3]]
    return multiplicands == ["RZ", "RZ"]


def classify(ins: Instruction) -> str:
    """The class of one instruction (see the module docstring)."""
    base = ins.base
    if base in _FMA:
        return "integer" if base == "HFMA2" and _is_move_idiom(ins) else _FMA[base]
    if base in _MMA:
        return "mma"
    if base in _MEMORY:
        return _MEMORY[base]
    if base == "BAR":
        return "bar"
    if base in _CONTROL:
        return "branches"
    if base in _FP_OTHER:
        return "fp_other"
    if base in _INTEGER or (base.startswith("U") and base[1:] in _INTEGER):
        return "integer"
    return "other"


def access_bits(ins: Instruction) -> int:
    """Bits one thread moves with a load or store: 32 unless a width modifier says otherwise
    (.U8/.S8, .U16/.S16, .64, .128); LDSM.<...>.<n> loads n 8x8 matrices, 32 bits each per thread."""
    if ins.base == "LDSM":
        count = ins.modifiers[-1] if ins.modifiers and ins.modifiers[-1] in ("2", "4") else "1"
        return 32 * int(count)
    widths = [_WIDTH_MODIFIERS[m] for m in ins.modifiers if m in _WIDTH_MODIFIERS]
    return widths[-1] if widths else 32


def count(path) -> dict:
    """Class counts of a path (every name in COUNTS), `fma` = ffma + dfma + hfma2, and per
    load/store class the access widths in path order (`lds_bits`, `sts_bits`, ...)."""
    classes = Counter()
    bits = {name: [] for name in WIDTHS}
    for ins in path:
        kind = classify(ins)
        classes[kind] += 1
        if kind in bits:
            bits[kind].append(access_bits(ins))
    counts = {name: classes[name] for name in COUNTS}
    counts["instructions"] = len(path)
    counts["fma"] = counts["ffma"] + counts["dfma"] + counts["hfma2"]
    counts.update({f"{name}_bits": widths for name, widths in bits.items()})
    return counts


# a float16 build computes in FP32 (its acc_t): its FMA is FFMA
_FMA_OF_DTYPE = {np.dtype(np.float32): ("ffma", FFMA_RATE), np.dtype(np.float64): ("dfma", DFMA_RATE),
                 np.dtype(np.float16): ("ffma", FFMA_RATE)}


def _fma_of(dtype, arch: str) -> tuple[str, float]:
    """(count name, FMA warp-instructions per clock per SM sub-partition) of the dtype's FMA on
    `arch`; the other dtypes have no rate here."""
    try:
        name, rates = _FMA_OF_DTYPE[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"the issue ceiling covers float16, float32 and float64, not {np.dtype(dtype)}") from None
    if arch not in rates:
        raise ValueError(f"no FMA rate for arch {arch!r}; known: {', '.join(rates)}")
    return name, rates[arch]


def issue_ceiling(counts: dict, dtype, arch: str) -> float:
    """min(1, share of the dtype's FMA among the path's instructions / its FFMA_RATE or
    DFMA_RATE): the largest fraction of the FMA pipe's peak the instruction issue rate allows.
    TypeError for dtypes other than float32/float64, ValueError for an arch without a rate."""
    name, rate = _fma_of(dtype, arch)
    if not counts["instructions"]:
        return 0.0
    return min(1.0, counts[name] / counts["instructions"] / rate)
