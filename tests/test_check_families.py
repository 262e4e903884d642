"""`cnn-gpu check` covers every functional op family README's op table names, each entry in its
family's module of cnn_gpu.check; a few of the families added last pass on the emulator; the checks
that predate the family modules keep their names and places. `cnn-gpu bench` has a case of each of
those families (bench.families), timed on NumPy and the emulator and modeled (labelled MODEL) launch
by launch as an emulated run makes the launches."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cnn_gpu import backend, bench, check, roofline
from cnn_gpu.bench.devices import make_devices
from cnn_gpu.bench.families import FAMILY_OPS, OPTIMIZERS
from cnn_gpu.bench.modeled import CUPY_ELEMENTWISE, case_estimates
from cnn_gpu.check import ops as check_ops
from cnn_gpu.cli import main

ROOT = Path(__file__).resolve().parent.parent
EMU_REASON = backend.why_unavailable("emu")

# the table of `cnn-gpu check` before the family modules, in its order
FIRST_ROWS = ("conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "relu", "leaky_relu", "sigmoid", "tanh",
              "silu", "gelu", "gelu_tanh", "mish", "softplus", "logsigmoid", "softsign", "tanhshrink", "hardtanh",
              "relu6", "hardsigmoid", "hardswish", "elu", "selu", "celu", "hardshrink", "softshrink", "threshold",
              "linear", "cross_entropy", "mse_loss", "conv2d_same", "avg_pool2d_options", "linear_nd",
              "cross_entropy_options", "nll_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
              "binary_cross_entropy_with_logits", "kl_div", "dropout", "dropout2d", "adaptive_avg_pool2d",
              "adaptive_max_pool2d", "pad", "interpolate", "softmax", "log_softmax", "conv1d", "conv_transpose1d",
              "max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "batch_norm", "lp_pool2d", "max_unpool2d")


def readme_functional_ops(text: str) -> set[str]:
    """The F.<name> calls in the first column of README's functional-op table, each as the op it is a
    part of: a backward function, an in-place spelling or a *_with_indices name as its forward op."""
    section = text[text.index("### Functional ops"):text.index("### Layers, losses")]
    calls = {name for line in section.splitlines() if line.startswith("| ")
             for name in re.findall(r"F\.(\w+)", line.split(" | ")[0])}
    return {re.sub(r"(_backward|_with_indices)$", "", name).rstrip("_") for name in calls}


def test_every_functional_op_of_readme_has_a_check():
    named = readme_functional_ops((ROOT / "README.md").read_text())
    assert {"conv2d", "glu", "rms_norm", "fold", "triplet_margin_loss", "max_pool3d", "one_hot"} <= named
    unchecked = named - set(check.OPS) - set(check_ops.COVERED_BY) - set(check_ops.NOT_CHECKED)
    assert not unchecked, f"functional ops without a `cnn-gpu check` entry: {sorted(unchecked)}"
    assert set(check_ops.COVERED_BY.values()) <= set(check.OPS)


def test_every_optimizer_has_a_check_and_a_bench_case():
    from cnn_gpu import optim
    from cnn_gpu.check.optimizers import OPTIMIZERS as CHECKED
    rules = {name for name, value in vars(optim).items() if isinstance(value, type)
             and issubclass(value, optim.Optimizer) and value is not optim.Optimizer and not name.startswith("_")}
    assert rules == {kind for kind, _ in CHECKED.values()}
    assert set(CHECKED) <= set(check.OPS) and not any(check.OPS[name].grads for name in CHECKED)
    assert set(OPTIMIZERS) == set(CHECKED) and set(OPTIMIZERS) <= set(bench.OPS)


def test_the_coverage_test_sees_a_missing_family(monkeypatch):
    monkeypatch.delitem(check.OPS, "glu")
    named = readme_functional_ops((ROOT / "README.md").read_text())
    assert named - set(check.OPS) - set(check_ops.COVERED_BY) - set(check_ops.NOT_CHECKED) == {"glu"}


def test_the_earlier_checks_keep_their_names_places_and_tolerances():
    assert tuple(check.OPS)[:len(FIRST_ROWS)] == FIRST_ROWS
    assert len(set(check.OPS)) == len(check.OPS)
    reducing = {"conv2d", "conv_transpose2d", "linear", "cross_entropy", "mse_loss", "conv2d_same", "linear_nd",
                "cross_entropy_options", "nll_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
                "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "softmax", "log_softmax",
                "conv1d", "conv_transpose1d", "batch_norm"}
    assert {name for name in FIRST_ROWS if check.OPS[name].reduces} == reducing


def test_every_entry_lives_in_one_family_module():
    families = {op.name: family.__name__ for family in check_ops.FAMILIES for op in family.CHECKS}
    assert set(families) == set(check.OPS)
    assert sum(len(family.CHECKS) for family in check_ops.FAMILIES) == len(check.OPS)


def test_new_configurations_are_fresh_and_never_zero():
    """Each random configuration of the families added last draws inputs that differ by seed and hold no zero."""
    for name in tuple(check.OPS)[len(FIRST_ROWS):]:
        spec = check.OPS[name]
        cfg = check.configs_for(spec, "quick", 0)[0]
        first, second = spec.inputs(cfg, np.random.default_rng(1)), spec.inputs(cfg, np.random.default_rng(2))
        floats = [k for k, v in first.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
        assert floats, name
        assert all(np.count_nonzero(first[k]) == first[k].size for k in floats if k != "target"), name
        assert any(not np.array_equal(first[k], second[k]) for k in floats), name


@pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")
def test_check_of_new_families_passes_on_the_emulator(capsys):
    ops = "glu,rms_norm,fold,max_pool3d,triplet_margin_loss,pairwise_distance"
    code = main(["check", "--device", "emu", "--quick", "--dtype", "float32", "--ops", ops])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in ops.split(",")]
    assert [row[0] for row in rows] == ops.split(",") and all(row[-1] == "PASS" for row in rows)


def test_check_of_a_new_family_fails_on_a_planted_wrong_gradient():
    def wrong(inputs, cfg, be):
        out = check.OPS["triplet_margin_loss"].run(inputs, cfg, be)
        out["dnegative"] = out["dnegative"] * (1 + 1e-3)
        return out

    check.register_override("triplet_margin_loss", wrong)
    try:
        result = next(check.check_ops("numpy", ["triplet_margin_loss"], mode="quick"))
    finally:
        check.clear_overrides()
    assert not result.passed and "dnegative" in result.worst


# --- bench ------------------------------------------------------------------------------------------

def _bench_rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in bench.OPS]


def test_bench_models_every_family_op_and_labels_it(capsys):
    ops = [*FAMILY_OPS, *OPTIMIZERS]
    code = main(["bench", "--shapes", "tiny", "--device", "model:h100", "--no-progress", "--ops", ",".join(ops)])
    out = capsys.readouterr().out
    assert code == 0, out
    cases = bench.make_cases("tiny", ops)
    rows = _bench_rows(out)
    assert [row[0] for row in rows] == [case.op for case in cases] and {row[0] for row in rows} == set(ops)
    assert all("model:h100" in row for row in rows)
    assert "roofline MODEL of H100" in out and "not a measurement" in out
    assert not set(ops) & set(bench.DEFAULT_OPS)   # run when named: the default run keeps its ops


def _first_case_of_each(ops):
    cases = {}
    for case in bench.make_cases("tiny", ops):
        cases.setdefault(case.op, case)
    return list(cases.values())


@pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")
def test_the_family_models_price_the_launches_the_ops_make(monkeypatch):
    """The model's launches of each family op (CuPy's element-wise work aside) are those an emulated
    run of its bench case makes, in order."""
    launched = []
    real = backend.launch

    def launch(be, family, dtype, kernel, *args, **kwargs):
        launched.append(kernel)
        return real(be, family, dtype, kernel, *args, **kwargs)
    monkeypatch.setattr(backend, "launch", launch)
    emu, spec = make_devices(["emu"])[0], roofline.spec("h100")
    runs = [(case, np.float32) for case in _first_case_of_each([*FAMILY_OPS, *OPTIMIZERS])]
    runs += [(case, np.float16) for case in _first_case_of_each(list(OPTIMIZERS))]   # the master-weight kernels
    for case, dtype in runs:
        fn, sets = case.setup(emu, dtype, np.random.default_rng(0))
        launched.clear()
        fn(*sets[0])
        modeled = [e.kernel for e in case_estimates(case, spec, dtype) if e.kernel != CUPY_ELEMENTWISE]
        assert modeled == launched, (case.op, dtype)


@pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")
def test_bench_times_family_ops_on_numpy_and_the_emulator(capsys):
    code = main(["bench", "--shapes", "tiny", "--device", "numpy,emu", "--repeat", "1", "--no-progress", "--ops",
                 "glu,rms_norm,triplet_margin_loss,max_pool3d"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = _bench_rows(out)
    cases = bench.make_cases("tiny", ["glu", "rms_norm", "triplet_margin_loss", "max_pool3d"])
    devices = [row[row.index("numpy") if "numpy" in row else row.index("emu"):] for row in rows]
    assert [(row[0], device[0]) for row, device in zip(rows, devices)] == [(c.op, d) for c in cases
                                                                          for d in ("numpy", "emu")]
    assert all(np.isfinite(float(device[1])) for device in devices)   # a median time printed (not its size)
