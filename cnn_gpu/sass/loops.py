"""Loop regions of a SASS function and the steady-state path through its hot loop.

The rules, on the static code (deterministic, no profile):
- Loop region: every jump (BRA/JMP) at address b to an address t <= b is a back edge, and
  [t, b] a loop region; back edges to the same t make one region that ends at the last of
  them. The `BRA` to itself after a function's last EXIT (a trap, never reached) is no loop.
- Steady-state path of a region [t, b]: walk the code from t towards b, where
  * every instruction met is counted once, predicated ones included (an instruction whose
    predicate is false still takes its issue slot);
  * a conditional jump forward is not taken: the compiler jumps over a block when the guard
    that protects it fails, so falling through is the path where every guard passes (the loop
    continues, the next tile is loaded, the bounds check holds);
  * an unconditional jump forward inside the region is taken (it jumps over an `else` arm,
    which the path therefore leaves out);
  * a jump backward inside the region (an inner loop's back edge) falls through: the path
    passes an inner loop's body once;
  * the path ends at b (included), at an unconditional EXIT/RET, or at an unconditional jump
    out of the region.
- Hot loop: the region whose path has the most FMA + MMA instructions. Among equals, a region
  that contains another of them is left out (the innermost wins: an outer loop's path passes
  the inner body once, so it weighs at least as much), then the longest path wins (in
  FMA-free kernels: the loop doing the most work), then the first. A function without loops
  is measured along its path from the entry (same rules) to its first unconditional EXIT.
  A region whose global loads are all GPU-coherent (LDG ... .STRONG.GPU, `__ldcg`: other blocks'
  partial results, which the block that arrives last combines, once per output) is a
  reduction's epilogue: it is the hot loop only where every region is one (batch_norm_stats'
  merge of chunk moments has more FMAs than its loop over the elements).
"""
from __future__ import annotations

from dataclasses import dataclass

from .disasm import JUMPS, Function, Instruction

_ENDS = frozenset({"EXIT", "RET"})


@dataclass(frozen=True)
class Region:
    start: int   # address of the loop head (the back edges' target)
    end: int     # address of the last back edge

    def contains(self, address: int) -> bool:
        return self.start <= address <= self.end


def loop_regions(function: Function) -> list[Region]:
    """The function's loop regions, ordered by start address."""
    ends: dict[int, int] = {}
    for ins in function.instructions:
        if ins.base not in JUMPS or ins.target is None or ins.target > ins.address:
            continue
        if ins.target == ins.address and not ins.conditional:
            continue  # the trap after the last EXIT
        ends[ins.target] = max(ends.get(ins.target, ins.address), ins.address)
    return [Region(start, end) for start, end in sorted(ends.items())]


def steady_path(function: Function, region: Region | None) -> list[Instruction]:
    """The instructions of one steady-state iteration of `region` (None: the path from the
    function's entry to its first unconditional EXIT), in the order they run."""
    code = function.instructions
    if not code:
        return []
    if region is None:
        region = Region(code[0].address, code[-1].address)
    at = {ins.address: i for i, ins in enumerate(code)}
    i, path = at[region.start], []
    while i < len(code):
        ins = code[i]
        path.append(ins)
        if ins.address >= region.end:
            break
        if not ins.conditional:
            if ins.base in _ENDS:
                break
            if ins.base in JUMPS and (ins.target is None or ins.target > ins.address):
                if ins.target is None or not region.contains(ins.target):
                    break
                i = at[ins.target]
                continue
        i += 1
    return path


def _combines_other_blocks(path: list[Instruction]) -> bool:
    """Whether every global load of the path is GPU-coherent (and there is one): a reduction's
    epilogue reading other blocks' partials (see the module docstring)."""
    loads = [ins for ins in path if ins.base == "LDG"]
    return bool(loads) and all(".STRONG.GPU" in ins.opcode for ins in loads)


def hot_loop(function: Function, weight) -> tuple[Region | None, list[Instruction]]:
    """(region, steady-state path) of the hot loop, where weight(path) counts its FMA + MMA;
    (None, entry path) for a function without loops."""
    paths = {region: steady_path(function, region) for region in loop_regions(function)}
    if not paths:
        return None, steady_path(function, None)
    main = {region: path for region, path in paths.items() if not _combines_other_blocks(path)}
    paths = main or paths
    weights = {region: weight(path) for region, path in paths.items()}
    heaviest = [region for region in paths if weights[region] == max(weights.values())]
    innermost = [region for region in heaviest
                 if not any(other != region and region.contains(other.start) and region.contains(other.end)
                            for other in heaviest)]
    chosen = max(innermost, key=lambda region: (len(paths[region]), -region.start))
    return chosen, paths[chosen]
