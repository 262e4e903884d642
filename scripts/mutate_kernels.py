#!/usr/bin/env python3
"""Mutation testing of a kernel file: which small changes of the CUDA source do the tests not see?

    .venv/bin/python scripts/mutate_kernels.py kernels/pad.cu -- tests/test_pad.py -k "guard or schedules"

makes one source mutant of the kernel file at a time and runs the pytest selection (the arguments
after `--`) against it. The selection should be one that runs the kernels on the emu backend, which
compiles the changed .cu with g++ (its cache keys on the source text), and checks their results. Each mutant is one of:

  relational   `<` <-> `<=`, `>` <-> `>=`, `==` <-> `!=` (operators written with spaces around them,
               so template brackets and shifts are left alone)
  arithmetic   `+` <-> `-`, `*` <-> `/` in index and bound expressions: inside `[...]`, in the
               parentheses of `if` / `for` / `while`, or in an integer declaration's initialiser
  constant     an integer literal +1 and -1
  sync         a `__syncthreads();` deleted
  minmax       `min` <-> `max` (also fmin/fmax, fminf/fmaxf)
  guard        an `if` condition made `true` (a guarded body runs always), or `false` where the body
               is a bare return / continue / break (the early exit never happens)
  accumulator  a declaration `acc_t name` made `REAL name` (float16: the sum kept in FP16)

Comments, string literals and preprocessor lines are never mutated. With more mutants than
--budget, a fixed --seed samples them, round robin over the kinds so each kind is represented.

All of it runs in a scratch copy of the working tree (its tracked and untracked-not-ignored files,
so uncommitted tests count) in a temporary folder, with $CNN_GPU_CACHE inside it: nothing in the
checkout or the shared kernel cache changes. The selection must pass on the unmodified copy first.
Each mutant runs with `pytest -x` under a timeout (default: twice the unmodified run plus 30 s)
and is reported as:

  killed            the selection failed
  survived          the selection passed: an equivalent mutant, or a gap in the tests
  timed-out         the run outlasted the timeout (a loop that no longer ends, say); counts as killed
  did-not-compile   g++ refused the mutant (the run failed with cnn_gpu.emu's CompileError)

with its line and the line before and after. --json writes the same as a list of records.
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RELATIONAL_SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "=="}
ARITHMETIC_SWAPS = {"+": "-", "-": "+", "*": "/", "/": "*"}
MINMAX_SWAPS = {"min": "max", "max": "min", "fmin": "fmax", "fmax": "fmin", "fminf": "fmaxf", "fmaxf": "fminf"}

# spaced binary operators: `a < b` but not `Loaded<1>` or `x << 1`
RELATIONAL = re.compile(r"(?<=\s)(<=|>=|==|!=|<|>)(?=\s)")
ARITHMETIC = re.compile(r"(?<=\s)([-+*/])(?=\s)")
INTEGER = re.compile(r"(?<![\w.])(\d+)(?![\w.])")
SYNC = re.compile(r"__syncthreads\(\);")
MINMAX = re.compile(r"(?<![\w.:])(fminf|fmaxf|fmin|fmax|min|max)(?=\()|(?<=std::)(min|max)(?=\()")
IF = re.compile(r"\bif\s*\(")
ACCUMULATOR = re.compile(r"\bacc_t(?=\s+[A-Za-z_]\w*)")
INTEGER_DECLARATION = re.compile(r"^\s*(const\s+)?(int|long long|long|unsigned|size_t|int64_t)\s+\w+\s*=")
ARRAY_EXTENT = re.compile(r"\b(?:int|long|float|double|REAL|acc_t|bool|unsigned|char)\b[^;=()]*\w\[$")
DIRECTIVE = re.compile(r"[ \t]*#")
EARLY_EXIT = re.compile(r"\s*(return\b[^;]*;|continue;|break;)")


@dataclass
class Mutant:
    index: int
    kind: str
    offset: int
    length: int
    replacement: str
    line: int = 0
    before: str = ""
    after: str = ""
    status: str = ""
    seconds: float = 0.0

    def apply(self, source: str) -> str:
        return source[:self.offset] + self.replacement + source[self.offset + self.length:]


def code_mask(source: str) -> list[bool]:
    """True at each character of code: not in a comment, a string or char literal, or a
    preprocessor line (with its backslash continuations)."""
    mask = [True] * len(source)
    i, n, line_start = 0, len(source), True
    while i < n:
        c = source[i]
        if line_start and DIRECTIVE.match(source, i):
            j = i
            while j < n and (source[j] != "\n" or source[j - 1] == "\\"):
                j += 1
            mask[i:j] = [False] * (j - i)
            i = j
            continue
        if source.startswith("//", i):
            j = source.find("\n", i)
            j = n if j < 0 else j
        elif source.startswith("/*", i):
            j = source.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif c in "\"'":
            j = i + 1
            while j < n and source[j] != c:
                j += 2 if source[j] == "\\" else 1
            j += 1
        else:
            line_start = c == "\n" or (line_start and c in " \t")
            i += 1
            continue
        mask[i:j] = [False] * (j - i)
        line_start = False
        i = j
    return mask


def index_contexts(source: str, mask: list[bool]) -> list[bool]:
    """True at each character inside `[...]` or inside the parentheses of if / for / while."""
    inside = [False] * len(source)
    stack: list[bool] = []          # for each open bracket: is its content an index or a bound?
    for i, c in enumerate(source):
        if not mask[i]:
            continue
        if c == "[":
            stack.append(True)
        elif c == "(":
            head = source[max(0, i - 8):i].rstrip()
            stack.append(bool(stack and stack[-1]) or re.search(r"\b(if|for|while)$", head) is not None)
        elif c in ")]" and stack:
            stack.pop()
        inside[i] = bool(stack and stack[-1])
    return inside


def matching_paren(source: str, mask: list[bool], open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(source)):
        if mask[i] and source[i] == "(":
            depth += 1
        elif mask[i] and source[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced parenthesis at offset {open_at}")


def enumerate_mutants(source: str) -> list[Mutant]:
    """Every mutant of the source, in the order of the text."""
    mask = code_mask(source)
    in_index = index_contexts(source, mask)
    line_starts = [0] + [m.end() for m in re.finditer(r"\n", source)]
    mutants: list[Mutant] = []

    def add(kind, offset, length, replacement):
        if all(mask[offset:offset + max(length, 1)]):
            mutants.append(Mutant(len(mutants), kind, offset, length, replacement))

    for m in RELATIONAL.finditer(source):
        add("relational", m.start(), len(m.group()), RELATIONAL_SWAPS[m.group()])
    for m in ARITHMETIC.finditer(source):
        line_start = source.rfind("\n", 0, m.start()) + 1
        if in_index[m.start()] or INTEGER_DECLARATION.match(source[line_start:m.start()]):
            add("arithmetic", m.start(), 1, ARITHMETIC_SWAPS[m.group()])
    for m in INTEGER.finditer(source):
        line_start = source.rfind("\n", 0, m.start()) + 1
        if source[m.start() - 1:m.start()] == "<" or source[m.end():m.end() + 1] == ">":
            continue                      # a template argument
        if ARRAY_EXTENT.search(source[line_start:m.start()]):
            continue                      # an array's size: a larger one changes nothing, a smaller one is UB
        value = int(m.group())
        for changed in (value + 1, value - 1):
            if changed >= 0:
                add("constant", m.start(), len(m.group()), str(changed))
    for m in SYNC.finditer(source):
        add("sync", m.start(), len(m.group()), "")
    for m in MINMAX.finditer(source):
        name = m.group(1) or m.group(2)
        add("minmax", m.start(), len(name), MINMAX_SWAPS[name])
    for m in IF.finditer(source):
        if not mask[m.start()]:
            continue
        close = matching_paren(source, mask, m.end() - 1)
        exits = EARLY_EXIT.match(source, close + 1) is not None
        add("guard", m.end(), close - m.end(), "false" if exits else "true")
    for m in ACCUMULATOR.finditer(source):
        add("accumulator", m.start(), len(m.group()), "REAL")

    mutants.sort(key=lambda mutant: (mutant.offset, mutant.kind))
    for index, mutant in enumerate(mutants):
        mutant.index = index
        mutant.line = next(number for number in range(len(line_starts), 0, -1)
                           if line_starts[number - 1] <= mutant.offset)
        mutant.before = source.splitlines()[mutant.line - 1].strip()
        mutant.after = mutant.apply(source).splitlines()[mutant.line - 1].strip()
    return mutants


def sample(mutants: list[Mutant], budget: int, seed: int) -> list[Mutant]:
    """At most `budget` mutants: each kind shuffled with the seed, then taken round robin."""
    if budget <= 0 or len(mutants) <= budget:
        return list(mutants)
    rng = random.Random(seed)
    by_kind: dict[str, list[Mutant]] = {}
    for mutant in mutants:
        by_kind.setdefault(mutant.kind, []).append(mutant)
    queues = [rng.sample(group, len(group)) for _, group in sorted(by_kind.items())]
    chosen: list[Mutant] = []
    while len(chosen) < budget:
        for queue in queues:
            if queue and len(chosen) < budget:
                chosen.append(queue.pop())
    return sorted(chosen, key=lambda mutant: mutant.index)


def scratch_copy(destination: Path) -> None:
    """The working tree's tracked and untracked-not-ignored files, copied under `destination`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_selection(tree: Path, pytest_args: list[str], timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timed-out' | 'did-not-compile', seconds, output) of pytest -x in `tree`."""
    # $CNN_GPU_BACKEND stays as it is: a test's default-backend call is its NumPy oracle
    env = dict(os.environ, CNN_GPU_CACHE=str(tree / ".mutant-cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *pytest_args]
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output = process.communicate(timeout=timeout)[0].decode(errors="replace")
    except BaseException as stop:   # a timeout, or this script interrupted: pytest's session goes too
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        if not isinstance(stop, subprocess.TimeoutExpired):
            raise
        return "timed-out", time.monotonic() - start, ""
    seconds = time.monotonic() - start
    if process.returncode == 0:
        return "passed", seconds, output
    if "CompileError" in output:
        return "did-not-compile", seconds, output
    return "failed", seconds, output


def remove_new_modules(cache: Path, kept: set[Path]) -> None:
    """Drop the mutants' compiled modules (each is used once) so the scratch cache stays small."""
    for path in (cache / "emu").glob("*"):
        if path not in kept and path.is_file():
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s KERNEL [options] -- PYTEST_ARGS...")
    parser.add_argument("kernel", help="the kernel file, e.g. kernels/pad.cu")
    parser.add_argument("--budget", type=int, default=12, help="most mutants to run (0: all); default 12")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample; default 0")
    parser.add_argument("--timeout", type=float, help="seconds a mutant's run may take (default: 2 x the "
                        "unmodified run + 30)")
    parser.add_argument("--only", help="comma-separated mutant indices to run (as --list numbers them)")
    parser.add_argument("--list", action="store_true", help="print the chosen mutants and run nothing")
    parser.add_argument("--json", type=Path, help="write the results here")
    options = parser.parse_args(argv[:split])
    pytest_args = argv[split + 1:]

    kernel = Path(options.kernel).resolve().relative_to(REPO)
    original = (REPO / kernel).read_text()
    mutants = enumerate_mutants(original)
    if options.only:
        wanted = {int(index) for index in options.only.split(",")}
        chosen = [mutant for mutant in mutants if mutant.index in wanted]
    else:
        chosen = sample(mutants, options.budget, options.seed)
    print(f"{kernel}: {len(mutants)} mutants, running {len(chosen)}", flush=True)
    if options.list:
        for mutant in chosen:
            print(f"#{mutant.index:<4} {mutant.kind:<11} line {mutant.line}: {mutant.before}  ->  {mutant.after}")
        return 0
    if not pytest_args:
        parser.error("give the pytest selection after --")

    # SIGTERM unwinds as an exception does: the running pytest is killed and the scratch copy removed
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    with tempfile.TemporaryDirectory(prefix="mutate_kernels-") as scratch:
        tree = Path(scratch)
        scratch_copy(tree)
        status, seconds, output = run_selection(tree, pytest_args, options.timeout or 3600)
        if status != "passed":
            print(output[-4000:])
            print(f"the selection does not pass on the unmodified source ({status}); nothing to compare with")
            return 2
        timeout = options.timeout or 2 * seconds + 30
        print(f"unmodified: passed in {seconds:.1f} s; timeout {timeout:.0f} s a mutant", flush=True)
        cache = tree / ".mutant-cache"
        kept = set((cache / "emu").glob("*"))
        for mutant in chosen:
            (tree / kernel).write_text(mutant.apply(original))
            status, mutant.seconds, _ = run_selection(tree, pytest_args, timeout)
            mutant.status = "killed" if status == "failed" else "survived" if status == "passed" else status
            print(f"#{mutant.index:<4} {mutant.status:<15} {mutant.kind:<11} line {mutant.line}: "
                  f"{mutant.before}  ->  {mutant.after}", flush=True)
            remove_new_modules(cache, kept)
        (tree / kernel).write_text(original)

    counts = {status: sum(mutant.status == status for mutant in chosen)
              for status in ("killed", "survived", "timed-out", "did-not-compile")}
    print(f"{kernel}: " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    if options.json:
        options.json.write_text(json.dumps([asdict(mutant) for mutant in chosen], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
