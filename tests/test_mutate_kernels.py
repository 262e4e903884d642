"""scripts/mutate_kernels.py's mutants of a small CUDA source: each kind where it belongs, none in
comments, strings, preprocessor lines, template brackets or shifts, and a sample fixed by its seed."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mutate_kernels.py"
spec = importlib.util.spec_from_file_location("mutate_kernels", SCRIPT)
mutate_kernels = sys.modules["mutate_kernels"] = importlib.util.module_from_spec(spec)   # dataclasses look it up
spec.loader.exec_module(mutate_kernels)

SOURCE = '''// a < b in a comment, min(a, b), __syncthreads();
#define LIMIT (4 < 5)
extern "C" __global__ void k(const REAL* x, REAL* y, int n, int shift)
{
    __shared__ acc_t tree[256];
    const char* text = "i < n";
    acc_t sum = (acc_t)0;
    if (threadIdx.x >= n)
        return;
    for (int i = threadIdx.x; i < n; i += 256)
        sum += to_acc(x[i * 2 + 1]) * Loaded<1>{}.v[0] << shift;
    tree[threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        y[0] = to_real(min(tree[0], tree[1]) * 3);
    }
}
'''


def mutated_lines(kind):
    return [(m.line, m.after) for m in mutate_kernels.enumerate_mutants(SOURCE) if m.kind == kind]


def test_each_kind_mutates_the_code_it_names():
    assert mutated_lines("relational") == [(8, "if (threadIdx.x > n)"),
                                           (10, "for (int i = threadIdx.x; i <= n; i += 256)"),
                                           (14, "if (threadIdx.x != 0) {")]
    # in brackets only: `sum += ... * Loaded<1>...` outside them is no index
    assert mutated_lines("arithmetic") == [(11, "sum += to_acc(x[i / 2 + 1]) * Loaded<1>{}.v[0] << shift;"),
                                           (11, "sum += to_acc(x[i * 2 - 1]) * Loaded<1>{}.v[0] << shift;")]
    assert mutated_lines("sync") == [(13, "")]
    assert mutated_lines("minmax") == [(15, "y[0] = to_real(max(tree[0], tree[1]) * 3);")]
    # an early exit never taken; a guarded body always run
    assert mutated_lines("guard") == [(8, "if (false)"), (14, "if (true) {")]
    assert mutated_lines("accumulator") == [(5, "__shared__ REAL tree[256];"), (7, "REAL sum = (acc_t)0;")]
    constants = mutated_lines("constant")
    assert (7, "acc_t sum = (acc_t)1;") in constants and (15, "y[0] = to_real(min(tree[0], tree[1]) * 2);") in constants
    assert not any(line in (1, 2, 6) for line, _ in constants)   # comment, directive, string
    assert not any("[257]" in after or "Loaded<2>" in after for _, after in constants)   # extents, templates


def test_the_sample_is_fixed_by_its_seed_and_takes_every_kind():
    mutants = mutate_kernels.enumerate_mutants(SOURCE)
    first = [m.index for m in mutate_kernels.sample(mutants, 7, seed=3)]
    assert first == [m.index for m in mutate_kernels.sample(mutants, 7, seed=3)]
    assert first != [m.index for m in mutate_kernels.sample(mutants, 7, seed=4)]
    assert {m.kind for m in mutate_kernels.sample(mutants, 7, seed=3)} == {m.kind for m in mutants}
    assert len(mutate_kernels.sample(mutants, 0, seed=3)) == len(mutants)
