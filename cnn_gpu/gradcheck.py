"""Finite-difference gradient checks for any op, any scalar function and whole models.

Central differences in float64, (f(p + eps*v) - f(p - eps*v)) / (2 eps), compared with the analytic
directional derivative <grad, v>: along random unit directions for every array (and one joint
direction over all of them), and element by element for arrays of at most `elementwise_limit`
elements. Arrays are perturbed in place and restored exactly, so the same code checks NumPy and
CuPy arrays on any backend.

    report = check_op(lambda x, w: F.conv2d(x, w, padding=1),
                      lambda dy, x, w: F.conv2d_backward(dy, x, w, padding=1)[:2], [x, w])
    assert report.max_rel_error < 1e-6, report
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .backend import module_of


@dataclass
class GradcheckReport:
    max_rel_error: float    # worst |analytic - numeric| / max(|analytic|, |numeric|, floor)
    worst: str              # which check it was
    checks: int             # how many directional derivatives were compared
    per_array: dict = field(default_factory=dict)   # array name (or "joint") -> its worst error

    def __str__(self):
        return f"worst relative error {self.max_rel_error:.3e} at {self.worst} ({self.checks} checks)"


def _require_float64(arrays, names):
    for a, name in zip(arrays, names):
        if a.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 arrays (float32 differences are noise); "
                            f"{name} is {a.dtype}")


def gradcheck(loss, arrays, grads, *, names=None, eps=1e-5, directions=3, elementwise_limit=64,
              seed=0) -> GradcheckReport:
    """Compare the analytic gradients `grads` of the scalar `loss()` with central differences.

    loss: callable with no arguments reading `arrays` (it is called with them perturbed in place);
    grads: one gradient per array, same shape (None: that array is not checked).

    The relative error of a check is |analytic - numeric| / max(|analytic|, |numeric|, floor), with
    floor = 1e-3 * |grad| of the arrays involved: a tiny element of a large gradient is judged
    against the gradient's scale, not against its own size (where rounding noise dominates)."""
    names = list(names) if names is not None else [f"arrays[{i}]" for i in range(len(arrays))]
    if not len(arrays) == len(grads) == len(names):
        raise ValueError(f"got {len(arrays)} arrays, {len(grads)} grads and {len(names)} names")
    checked = [(a, g, n) for a, g, n in zip(arrays, grads, names) if g is not None]
    if not any(a.size for a, _, _ in checked):   # a report of 0 checks would pass any threshold
        raise ValueError("gradcheck: no gradient to check (every one is None or empty)")
    _require_float64([a for a, _, _ in checked], [n for _, _, n in checked])
    for a, g, n in checked:
        if tuple(g.shape) != tuple(a.shape):
            raise ValueError(f"gradient of {n} has shape {tuple(g.shape)}, expected {tuple(a.shape)}")
    rng = np.random.default_rng(seed)
    worst = (0.0, "nothing")
    per_array = {}
    count = 0

    def compare(key, label, steps):
        """steps: [(array, grad, direction)]: one directional derivative over those arrays."""
        nonlocal worst, count
        saved = [a.copy() for a, _, _ in steps]
        values = []
        for sign in (1.0, -1.0):
            for (a, _, v), original in zip(steps, saved):
                a[...] = original + (sign * eps) * v
            values.append(float(loss()))
        for (a, _, _), original in zip(steps, saved):
            a[...] = original
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum(float(module_of(g).vdot(g, v)) for _, g, v in steps)
        floor = 1e-3 * sum(float(module_of(g).linalg.norm(g)) for _, g, _ in steps) + 1e-300
        error = abs(analytic - numeric) / max(abs(analytic), abs(numeric), floor)
        if math.isnan(error):   # a NaN must fail the check, not lose every comparison with the worst
            error = math.inf
        count += 1
        per_array[key] = max(per_array.get(key, 0.0), error)
        if error >= worst[0]:
            worst = (error, f"{label}: analytic {analytic:.10g}, numeric {numeric:.10g}")

    def random_direction(a):
        v = rng.standard_normal(a.shape)
        return module_of(a).asarray(v / max(np.linalg.norm(v), 1e-300))

    for a, g, name in checked:
        for i in range(directions):
            compare(name, f"{name} direction {i}", [(a, g, random_direction(a))])
        if a.size <= elementwise_limit:
            for flat in range(a.size):
                unit = np.zeros(a.size)
                unit[flat] = 1.0
                element = np.unravel_index(flat, a.shape)
                compare(name, f"{name}[{', '.join(map(str, element))}]",
                        [(a, g, module_of(a).asarray(unit.reshape(a.shape)))])
    if len(checked) > 1:
        compare("joint", "all arrays jointly", [(a, g, random_direction(a)) for a, g, _ in checked])
    if not count:   # directions=0 on arrays beyond elementwise_limit
        raise ValueError("gradcheck: nothing was checked (directions=0 and every array has more than "
                         f"elementwise_limit={elementwise_limit} elements)")
    return GradcheckReport(worst[0], worst[1], count, per_array)


def check_op(forward, backward, inputs, *, names=None, seed=0, **options) -> GradcheckReport:
    """Check an op's backward against its forward.

    forward(*inputs) -> output (or a tuple whose first element is the output);
    backward(dy, *inputs) -> one gradient per input (None to skip one). The scalar checked is
    <dy, forward(*inputs)> for a fixed random dy. Inputs are copied; the caller's arrays are untouched."""
    inputs = [a.copy() for a in inputs]
    _require_float64(inputs, names or [f"inputs[{i}]" for i in range(len(inputs))])

    def output():
        out = forward(*inputs)
        return out[0] if isinstance(out, tuple) else out

    y = output()
    xp = module_of(y)
    dy = xp.asarray(np.random.default_rng(seed + 1).standard_normal(y.shape))
    grads = backward(dy, *inputs)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if len(grads) != len(inputs):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(inputs)} inputs")
    return gradcheck(lambda: float(xp.vdot(dy, output())), inputs, list(grads), names=names, seed=seed, **options)


def check_model(model, loss_fn, x, target, *, check_input=True, seed=0, **options) -> GradcheckReport:
    """Check a whole model: the gradients its backward pass leaves in each parameter's .grad (and
    the input gradient it returns) against differences of loss_fn.forward(model(x), target).

    model: a cnn_gpu.nn.Module in float64; loss_fn: a loss module (forward(pred, target) -> float,
    backward() -> dpred). The model's parameters and buffers (batch norm's running statistics,
    which every training-mode forward pass updates) are restored after the check."""
    # a duck-typed model without state_dict has no buffers to restore
    state = model.state_dict() if hasattr(model, "state_dict") else None
    try:
        return _check_model(model, loss_fn, x, target, check_input, seed, options)
    finally:
        if state is not None:
            model.load_state_dict(state)


def _check_model(model, loss_fn, x, target, check_input, seed, options):
    params = [p for p in model.parameters() if getattr(p, "requires_grad", True)]   # a frozen one gets none
    model.zero_grad()
    loss_fn.forward(model(x), target)
    dx = model.backward(loss_fn.backward())
    arrays = [p.data for p in params]
    # a parameter the backward pass never reached has a zero gradient, which the differences then check
    grads = [module_of(p.data).zeros_like(p.data) if p.grad is None else p.grad.copy() for p in params]
    names = [f"parameter {i}" for i in range(len(params))]
    x = x.copy()
    if check_input:
        arrays.append(x)
        grads.append(dx)
        names.append("input")
    return gradcheck(lambda: loss_fn.forward(model(x), target), arrays, grads, names=names, seed=seed, **options)
