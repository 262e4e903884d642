"""Running the checks: each op's configurations on the device against the NumPy oracle and
against finite differences of the device's own forward (OpResult per op), and the results table."""
from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from .. import backend as _backend, precision
from ..gradcheck import gradcheck
from .ops import OPS
from .spec import OpCheck
from .tolerances import (FD_OPTIONS, FD_TOLERANCE, FP32_UNIT_ROUNDOFF, MODES, RANDOM_CONFIGS, REDUCTION_SCALE,
                         TF32_SUM_K, TOLERANCE)

# --- the test hook -------------------------------------------------------------------------------

_overrides: dict = {}


def register_override(op: str, run) -> None:
    """Replace the device-side run of `op` (signature of OpCheck.run: (inputs, cfg, backend) ->
    outputs by name) for later checks, so a test can plant a wrong op and see it fail.
    `run=None` removes the override. For tests only."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    if run is None:
        _overrides.pop(op, None)
    else:
        _overrides[op] = run


def clear_overrides() -> None:
    _overrides.clear()


# --- checking ------------------------------------------------------------------------------------

@dataclass
class OpResult:
    op: str
    configs: int = 0
    error: float = 0.0           # worst relative error against NumPy float64
    tolerance: float = 0.0
    fd_error: float = 0.0        # worst relative error against central differences (float64)
    fd_tolerance: float = FD_TOLERANCE
    worst: str = ""              # output and configuration of the worst error against NumPy
    fd_worst: str = ""           # the same for finite differences
    failure: str = ""            # an exception raised by the device, if any
    seconds: float = 0.0
    details: list = field(default_factory=list)
    math: str = ""               # "tf32": checked in that math mode; "unaffected": an op the mode leaves alone

    @property
    def passed(self) -> bool:
        return not self.failure and self.error <= self.tolerance and self.fd_error <= self.fd_tolerance

    def as_dict(self) -> dict:
        return dict(op=self.op, configs=self.configs, error=self.error, tolerance=self.tolerance,
                    fd_error=self.fd_error, fd_tolerance=self.fd_tolerance, passed=self.passed, worst=self.worst,
                    fd_worst=self.fd_worst, failure=self.failure, seconds=self.seconds, math=self.math)

    def why_failed(self) -> str:
        if self.failure:
            return self.failure
        reasons = []
        if self.error > self.tolerance:
            reasons.append(f"error {self.error:.2e} > {self.tolerance:.2g} against NumPy in {self.worst}")
        if self.fd_error > self.fd_tolerance:
            reasons.append(f"error {self.fd_error:.2e} > {self.fd_tolerance:.0e} against finite differences in "
                           f"{self.fd_worst}")
        return "; ".join(reasons)


def default_device() -> str:
    """The best kernel backend here: cuda with a GPU, otherwise the emulator."""
    available = _backend.available_backends()
    for name in ("cuda", "emu"):
        if name in available:
            return name
    raise RuntimeError(f"no kernel backend is available: cuda: {_backend.why_unavailable('cuda')}; "
                       f"emu: {_backend.why_unavailable('emu')}")


def configs_for(spec: OpCheck, mode: str, seed: int) -> list:
    rng = np.random.default_rng([seed, sum(map(ord, spec.name))])
    fixed = list(spec.edge_configs) if mode != "quick" else []
    if mode == "thorough":
        fixed += list(spec.large_configs)
    return fixed + [spec.configs(rng) for _ in range(RANDOM_CONFIGS[mode])]


def _to_device(value, be, dtype=None):
    if not isinstance(value, np.ndarray):
        return value
    if dtype is not None and value.dtype.kind == "f":
        value = value.astype(dtype)
    return _backend.array_module("cuda").asarray(value) if be == "cuda" else value


def _to_host(value):
    if value is None or isinstance(value, (float, int)):
        return value
    return value.get() if _backend.is_cupy_array(value) else np.asarray(value)


def relative_error(got, want) -> float:
    """max|got - want| / max|want| (exact match for integer arrays: 0 or 1; equal infinities agree)."""
    if want is None or got is None:
        return 0.0 if got is None and want is None else float("inf")
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return float("inf")
    if want.dtype.kind in "iu":
        return 0.0 if np.array_equal(got, want) else 1.0
    got, want = got.astype(np.float64), want.astype(np.float64)   # float16 references too
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(got - want))
    diff[np.isnan(diff)] = np.inf   # a NaN where the reference has a number is the worst mismatch
    if diff.size == 0:
        return 0.0
    scale = np.max(np.abs(np.where(np.isfinite(want), want, 0.0)), initial=0.0)
    worst = float(np.max(diff))
    return worst / scale if scale > 0 else worst


def _finite_differences(spec: OpCheck, run, inputs: dict, cfg, be, options, seed):
    """float64 central differences of the device's forward against the device's backward."""
    xp = _backend.array_module(be)
    outputs = run(inputs, cfg, be)
    names = [name for name in spec.grads if inputs.get(name) is not None]

    def scalar():
        out = run(inputs, cfg, be)[spec.output]
        if spec.upstream is None:
            return float(out)
        # windows lying wholly in the padding give -inf (max pool); they carry no gradient
        return float(xp.vdot(inputs[spec.upstream], xp.where(xp.isfinite(out), out, 0)))

    return gradcheck(scalar, [inputs[n] for n in names], [outputs[spec.grads[n]] for n in names], names=names,
                     seed=seed, **options)


def _guard_zones(be: str):
    """On the emulator every launch of a check runs against guard zones, so an out-of-bounds access
    fails the op at once; the surrounding `emu.checking` block's other settings are kept."""
    if be != "emu":
        return contextlib.nullcontext()
    from ..emu import checking
    from ..emu._checking import effective
    current = effective()
    return checking(**{key: current[key] for key in ("schedule", "seed", "poison", "race", "timeout")}, guard=True)


def check_op(spec: OpCheck, be: str, mode: str = "normal", dtype="float64", seed: int = 0,
             math: str = "fp32") -> OpResult:
    with _guard_zones(be), precision.math_mode(math):
        return _check_op(spec, be, mode, np.dtype(dtype), seed, math)


def _magnitudes(inputs: dict) -> dict:
    return {k: np.abs(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v for k, v in inputs.items()}


def _tf32_references(spec: OpCheck, inputs: dict, cfg) -> tuple[dict, dict]:
    """(reference, sum|products|) by output name in the "tf32" mode, from float32-valued `inputs`:
    the outputs the mode changes from TF32-rounded operands, the others (the bias gradient) from
    the inputs as they are, all summed exactly in float64; the op on the inputs' magnitudes gives
    each element's sum|products|."""
    as_tf32 = {k: precision.round_to_tf32(v.astype(np.float32)).astype(np.float64)
               if k in spec.math_operands and v is not None else v for k, v in inputs.items()}
    rounded, plain = spec.run(as_tf32, cfg, "numpy"), spec.run(inputs, cfg, "numpy")
    want = {name: rounded[name] if name in spec.math_outputs else value for name, value in plain.items()}
    return want, spec.run(_magnitudes(inputs), cfg, "numpy")


def summation_error(got, want, magnitude) -> float:
    """max over elements of |got - want| / sum|products| (the "tf32" rule; where the magnitude is 0
    the two must be equal). A missing output, a wrong shape or a NaN is the worst error, as in
    relative_error."""
    if want is None or got is None or np.shape(got) != np.shape(want):
        return relative_error(got, want)
    diff = np.abs(np.asarray(got, dtype=np.float64) - want)
    diff[np.isnan(diff)] = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / np.asarray(magnitude))
    return float(np.max(ratio, initial=0.0))


def _oracle_inputs(inputs: dict, dtype: np.dtype) -> dict:
    """The inputs as the reference gets them: the device's values (rounded to dtype) in float64,
    or for float16 the float16 arrays themselves (the oracle is the NumPy backend in float16)."""
    rounded = {k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
               for k, v in inputs.items()}
    if dtype == np.float16:
        return rounded
    return {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
            for k, v in rounded.items()}


def _run_leaving_inputs(run, inputs: dict, cfg, be):
    """run(inputs, cfg, be), failing (AssertionError) where it wrote into an input array: the
    comparisons and finite differences after it would read the damaged values and could agree."""
    before = {k: _to_host(v).copy() for k, v in inputs.items()
              if _backend.is_cupy_array(v) or isinstance(v, np.ndarray)}
    got = run(inputs, cfg, be)
    changed = [k for k, v in before.items() if not np.array_equal(_to_host(inputs[k]), v, equal_nan=True)]
    if changed:
        raise AssertionError(f"the op wrote into its input {', '.join(changed)}")
    return got


def _check_op(spec: OpCheck, be: str, mode: str, dtype: np.dtype, seed: int, math: str) -> OpResult:
    scale = REDUCTION_SCALE if spec.reduces and dtype == np.float32 else 1
    result = OpResult(spec.name, tolerance=TOLERANCE[dtype.name] * scale)
    tf32 = math == "tf32" and bool(spec.math_outputs)
    if math == "tf32":
        result.math = "tf32" if tf32 else "unaffected"
    if tf32:
        result.tolerance = TF32_SUM_K * FP32_UNIT_ROUNDOFF
    run = _overrides.get(spec.name, spec.run)
    start = time.perf_counter()
    for index, cfg in enumerate(configs_for(spec, mode, seed)):
        rng = np.random.default_rng([seed, index])
        inputs = spec.inputs(cfg, rng)
        # the reference sees exactly the values the device sees (rounded to dtype first)
        rounded = _oracle_inputs(inputs, dtype)
        try:
            want, magnitude = _tf32_references(spec, rounded, cfg) if tf32 else (spec.run(rounded, cfg, "numpy"), None)
            device_inputs = {k: _to_device(v, be, dtype) for k, v in inputs.items()}
            got = _run_leaving_inputs(run, device_inputs, cfg, be)
            for name, reference in want.items():
                value = _to_host(got.get(name))
                if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.dtype != dtype:
                    raise TypeError(f"{name} came back as {value.dtype} from {dtype} inputs")
                error = (summation_error(value, reference, magnitude[name]) if tf32
                         else relative_error(value, reference))
                if error > result.error or not result.worst:
                    result.error, result.worst = error, f"{name}, config {cfg}"
            if spec.grads:   # an optimizer's step has no gradient to check
                report = _finite_differences(spec, run, {k: _to_device(v, be) for k, v in inputs.items()}, cfg, be,
                                             FD_OPTIONS[mode], seed + index)
                if report.max_rel_error > result.fd_error or not result.fd_worst:
                    result.fd_error, result.fd_worst = report.max_rel_error, f"{report.worst}, config {cfg}"
        except Exception as err:  # a kernel fault or a crash fails the op; the other ops still run
            result.failure = f"{type(err).__name__}: {err} (config {cfg})"
            result.details.append(traceback.format_exc())
        result.configs += 1
        if result.failure:
            break
    result.seconds = time.perf_counter() - start
    return result


def check_ops(be: str, ops=None, mode: str = "normal", dtype="float64", seed: int = 0, math: str = "fp32"):
    """An iterator of OpResults, one per op (all ops by default), each computed when it is reached,
    the device running in math mode `math` ("tf32": float32 only); ValueError at once for an
    unknown op, mode, dtype or math mode."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if np.dtype(dtype).name not in TOLERANCE:
        raise ValueError(f"dtype must be float16, float32 or float64, got {dtype!r}")
    if math not in precision.MATH_MODES:
        raise ValueError(f"unknown math mode {math!r}; expected one of {', '.join(precision.MATH_MODES)}")
    if math == "tf32" and np.dtype(dtype) != np.float32:
        raise ValueError(f"math mode 'tf32' changes float32 convolutions only; it needs dtype float32, "
                         f"not {np.dtype(dtype).name}")
    ops = list(OPS) if ops is None else list(ops)
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(unknown)}; expected some of {', '.join(OPS)}")
    return (check_op(OPS[op], be, mode, dtype, seed, math) for op in ops)


def format_results(results, markdown=False) -> str:
    """The results as a text (or markdown) table, then a line per failure. Results of a math-mode
    check get a last column "math" (tf32 / unaffected) and a note on what their error measures."""
    header = ["op", "configs", "max rel err vs numpy", "tol", "max rel err vs finite diff", "tol", "result"]
    table = [header] + [[r.op, str(r.configs), f"{r.error:.2e}", f"{r.tolerance:.2g}", f"{r.fd_error:.2e}",
                         f"{r.fd_tolerance:.0e}", "PASS" if r.passed else "FAIL"] for r in results]
    notes = []
    if any(r.math for r in results):
        header.append("math")
        for row, r in zip(table[1:], results):
            row.append(r.math)
        notes = ["", f"math tf32: max over elements of |device - oracle| / sum|products|, both from the same TF32 "
                     f"operands (tolerance {TF32_SUM_K} x 2^-24); unaffected: the math mode does not change the op "
                     f"(float32 rule)"]
    left = (0, 6, 7)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i in left else "---:"
                                                                 for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    else:
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 .rstrip() for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
    failures = [f"FAIL {r.op}: {r.why_failed()}" for r in results if not r.passed]
    # a blank line ends a markdown table
    return "\n".join(lines + notes + ([""] + failures if failures else []))
