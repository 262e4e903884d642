"""Launch code of kernels/optim.cu: fused in-place SGD, Adam (AMSGrad), RMSprop, Adagrad, Adamax,
NAdam, RAdam and Adadelta updates of one parameter array (sgd_step, adam_step, rmsprop_step,
adagrad_step...: the signatures of cnn_gpu.optim's NumPy updates) or of several, UPDATE_SLOTS
parameters a launch (sgd_steps, sgd_momentum_steps, adam_steps, rmsprop_steps, adagrad_steps...:
what cnn_gpu.optim's optimizers use), and GradScaler.unscale_'s unscale_grads,
UPDATE_SLOTS gradients a launch. Scalars derived from the step count are computed here on the host,
so a step needs no device-to-host transfer.

State arrays (momentum buffer, moments) are in the kernels' compute type: FP32 for a float16
parameter, which passes its FP32 master copy as `master` (cnn_gpu.optim always does): the
*_master kernels update the master and store the parameter rounded to float16. Without one a
float16 parameter is updated in FP32 and rounded each step."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..launch_checks import current_device
from ._grid import THREADS, acc, elementwise_blocks, i32, i64


def _check_state(param, grad, master, **state):
    """grad of the parameter's shape and dtype; the master and state arrays of its shape in the
    kernels' compute type."""
    if grad.shape != param.shape or grad.dtype != param.dtype:
        raise ValueError(f"grad of shape {tuple(grad.shape)} ({grad.dtype}) does not match the parameter "
                         f"{tuple(param.shape)} ({param.dtype})")
    compute = backend.compute_dtype(param.dtype)
    if master is not None:
        state["master"] = master
    for name, a in state.items():
        if a.shape != param.shape or a.dtype != compute:
            raise ValueError(f"{name} of shape {tuple(a.shape)} ({a.dtype}) does not match the parameter "
                             f"{tuple(param.shape)} (state in {compute})")


UPDATE_SLOTS = 8   # parameters a launch of a kernels/optim.cu update takes


_NO_ELEMENT = {}


def _no_element(be, gpu, dtype):
    """The array of no element of `dtype` (on GPU `gpu` for cuda) that an unused slot passes for
    each of its pointers: the checks take arrays, one of no byte overlaps nothing, and one object
    for every launch lets a LaunchMemo see the same arguments."""
    key = (be, gpu, np.dtype(dtype))
    if key not in _NO_ELEMENT:
        _NO_ELEMENT[key] = backend.array_module(be).empty(0, dtype)
    return _NO_ELEMENT[key]


def _launch_slots(be, kernel, updates, scalars, memo=None):
    """`kernel` (or its *_master variant) over `updates`, UPDATE_SLOTS a launch: per parameter
    (its slot's arguments, the parameter first; its master copy or None), all of
    one dtype and with master copies for all or none; `scalars` follow the used slots' count.
    `memo` (a backend.LaunchMemo, for at most UPDATE_SLOTS updates: one launch) launches it."""
    dtypes = {slot[0].dtype for slot, _ in updates}
    if len(dtypes) > 1 or len({master is None for _, master in updates}) > 1:
        raise ValueError("one launch updates parameters of one dtype, with master copies for all or none")
    launch = backend.launch if memo is None else memo.launch
    with_master = updates[0][1] is not None
    gpu = current_device() if be == "cuda" else None
    for first in range(0, len(updates), UPDATE_SLOTS):
        chunk = updates[first:first + UPDATE_SLOTS]
        unused = [[type(a)(0) if isinstance(a, np.generic) else _no_element(be, gpu, a.dtype) for a in chunk[0][0]]
                  for _ in range(UPDATE_SLOTS - len(chunk))]
        slots = [a for slot, _ in chunk for a in slot] + [a for slot in unused for a in slot]
        masters = ([master for _, master in chunk] + [_no_element(be, gpu, chunk[0][1].dtype)] * len(unused)
                   if with_master else [])
        largest = max(slot[0].size for slot, _ in chunk)
        launch(be, "optim", chunk[0][0][0].dtype, f"{kernel}_master" if with_master else kernel,
               (elementwise_blocks(largest),), (THREADS,), (*slots, *masters, *i32(len(chunk)), *scalars))


def sgd_step(be, param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, first_step, dampening=0.0,
             maximize=False, *, master=None):
    """In place; PyTorch's SGD. momentum_buf is None when momentum == 0."""
    if momentum:
        sgd_momentum_steps(be, [(param, grad, momentum_buf, first_step, master)], lr, momentum, weight_decay, nesterov,
                           dampening, maximize)
    else:
        sgd_steps(be, [(param, grad, master)], lr, weight_decay, maximize)


def sgd_steps(be, updates, lr, weight_decay, maximize=False, memo=None):
    """In place: SGD without momentum of several parameters, UPDATE_SLOTS a launch. `updates`
    holds (param, grad, master) per parameter; `memo` as _launch_slots'."""
    if not updates:
        return
    for param, grad, master in updates:
        _check_state(param, grad, master)
    dtype = updates[0][0].dtype
    _launch_slots(be, "sgd_step", [((param, grad, *i64(param.size)), master) for param, grad, master in updates],
                  (*acc(dtype, lr, weight_decay), *i32(bool(maximize))), memo)


def sgd_momentum_steps(be, updates, lr, momentum, weight_decay, nesterov, dampening=0.0, maximize=False, memo=None):
    """In place: SGD with momentum of several parameters, UPDATE_SLOTS a launch.
    `updates` holds (param, grad, momentum_buf, first_step, master) per parameter; `memo` as
    _launch_slots'."""
    if not updates:
        return
    for param, grad, buf, _, master in updates:
        _check_state(param, grad, master, momentum_buf=buf)
    dtype = updates[0][0].dtype
    _launch_slots(be, "sgd_momentum_step",
                  [((param, grad, buf, *i64(param.size), *i32(bool(first_step))), master)
                   for param, grad, buf, first_step, master in updates],
                  (*acc(dtype, lr, momentum, weight_decay), *i32(bool(nesterov)),
                   *acc(dtype, 1 - dampening), *i32(bool(maximize))), memo)


def adam_step(be, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled_decay=0.0, maximize=False,
              *, v_max=None, master=None):
    """In place; PyTorch's Adam (L2 weight decay, bias correction), `step` counting from 1, or with
    `decoupled_decay` its AdamW (the parameter times 1 - lr*decoupled_decay first); with `v_max`
    (the running maximum of v) AMSGrad."""
    adam_steps(be, [(param, grad, m, v, v_max, step, master)], lr, beta1, beta2, eps, weight_decay, decoupled_decay,
               maximize)


def adam_steps(be, updates, lr, beta1, beta2, eps, weight_decay, decoupled_decay=0.0, maximize=False, memo=None):
    """In place: Adam (AdamW) of several parameters, UPDATE_SLOTS a launch. `updates` holds (param,
    grad, m, v, v_max, step, master) per parameter, `step` its own count from 1, v_max AMSGrad's
    running maximum of v (for all parameters or none: adam_amsgrad_step) or None; `memo` as
    _launch_slots'."""
    if not updates:
        return
    if len({v_max is None for _, _, _, _, v_max, _, _ in updates}) > 1:
        raise ValueError("one launch updates parameters with AMSGrad's v_max for all or none")
    for param, grad, m, v, v_max, _, master in updates:
        _check_state(param, grad, master, m=m, v=v, **({} if v_max is None else {"v_max": v_max}))
    dtype = updates[0][0].dtype
    corrections = {}   # per step count (the parameters of a model mostly share one): the bias corrections' scalars
    for step in {update[5] for update in updates}:
        corrections[step] = acc(dtype, lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step))
    slots = [((param, grad, m, v, *i64(param.size), *corrections[step], *(() if v_max is None else (v_max,))),
              master) for param, grad, m, v, v_max, step, master in updates]
    _launch_slots(be, "adam_step" if updates[0][4] is None else "adam_amsgrad_step", slots,
                  (*acc(dtype, 1 - beta1, beta2, 1 - beta2, eps, weight_decay, 1 - lr * decoupled_decay),
                   *i32(bool(maximize))), memo)


def rmsprop_step(be, param, grad, square_avg, grad_avg, momentum_buf, lr, alpha, eps, weight_decay, momentum,
                 maximize=False, *, master=None):
    """In place; PyTorch's RMSprop, centered where `grad_avg` (the running mean of the gradient) is
    given, with momentum where `momentum_buf` is (momentum > 0)."""
    rmsprop_steps(be, [(param, grad, square_avg, grad_avg, momentum_buf, master)], lr, alpha, eps, weight_decay,
                  momentum, maximize)


def rmsprop_steps(be, updates, lr, alpha, eps, weight_decay, momentum, maximize=False, memo=None):
    """In place: RMSprop of several parameters, UPDATE_SLOTS a launch. `updates` holds (param, grad,
    square_avg, grad_avg, momentum_buf, master) per parameter, grad_avg (centered) and momentum_buf
    (momentum > 0) given for all parameters or none; `memo` as _launch_slots'."""
    if not updates:
        return
    centered, with_momentum = updates[0][3] is not None, updates[0][4] is not None
    if any((grad_avg is not None) != centered or (buf is not None) != with_momentum
           for _, _, _, grad_avg, buf, _ in updates):
        raise ValueError("one launch updates parameters with grad_avg and momentum buffers for all or none")
    if with_momentum != (momentum > 0):
        raise ValueError(f"momentum buffers go with momentum > 0 (got momentum {momentum})")
    for param, grad, square_avg, grad_avg, buf, master in updates:
        _check_state(param, grad, master, square_avg=square_avg, **({"grad_avg": grad_avg} if centered else {}),
                     **({"momentum_buf": buf} if with_momentum else {}))
    dtype = updates[0][0].dtype
    absent = _no_element(be, current_device() if be == "cuda" else None, backend.compute_dtype(dtype))
    slots = [((param, grad, square_avg, absent if grad_avg is None else grad_avg, absent if buf is None else buf,
               *i64(param.size)), master) for param, grad, square_avg, grad_avg, buf, master in updates]
    _launch_slots(be, "rmsprop_step", slots,
                  (*acc(dtype, lr, alpha, 1 - alpha, eps, weight_decay, momentum),
                   *i32(centered, with_momentum, bool(maximize))), memo)


def _rule_steps(be, kernel, updates, state_names, weight_decay, maximize, rule_scalars, memo):
    """In place: the rule `kernel` of kernels/optim.cu (rule_walk's) over `updates`, UPDATE_SLOTS a
    launch. Per parameter (param, grad, its states: one or two arrays, named `state_names`, its
    step scalars: up to 3, the master or None); `rule_scalars` follow the launch's weight decay and
    maximize; `memo` as _launch_slots'."""
    if not updates:
        return
    for param, grad, states, _, master in updates:
        _check_state(param, grad, master, **dict(zip(state_names, states)))
    dtype = updates[0][0].dtype
    absent = _no_element(be, current_device() if be == "cuda" else None, backend.compute_dtype(dtype))
    slots = [((param, grad, *states, *(absent,) * (2 - len(states)), *i64(param.size),
               *acc(dtype, *scalars, *(0,) * (3 - len(scalars)))), master)
             for param, grad, states, scalars, master in updates]
    _launch_slots(be, kernel, slots, (*acc(dtype, weight_decay), *i32(bool(maximize)), *acc(dtype, *rule_scalars)),
                  memo)


def adagrad_step(be, param, grad, state_sum, step, lr, lr_decay, weight_decay, eps, maximize=False, *, master=None):
    """In place; PyTorch's Adagrad, `step` counting from 1."""
    adagrad_steps(be, [(param, grad, state_sum, step, master)], lr, lr_decay, weight_decay, eps, maximize)


def adagrad_steps(be, updates, lr, lr_decay, weight_decay, eps, maximize=False, memo=None):
    """In place: Adagrad of several parameters, UPDATE_SLOTS a launch. `updates` holds (param, grad,
    sum, step, master) per parameter, `step` its own count from 1 (its clr = lr / (1 + (step -
    1) lr_decay)); `memo` as _launch_slots'."""
    _rule_steps(be, "adagrad_step", [(param, grad, (state_sum,), (lr / (1 + (step - 1) * lr_decay),), master)
                                     for param, grad, state_sum, step, master in updates],
                ("sum",), weight_decay, maximize, (eps,), memo)


def adamax_step(be, param, grad, exp_avg, exp_inf, step, lr, beta1, beta2, eps, weight_decay, maximize=False, *,
                master=None):
    """In place; PyTorch's Adamax, `step` counting from 1."""
    adamax_steps(be, [(param, grad, exp_avg, exp_inf, step, master)], lr, beta1, beta2, eps, weight_decay, maximize)


def adamax_steps(be, updates, lr, beta1, beta2, eps, weight_decay, maximize=False, memo=None):
    """In place: Adamax of several parameters, UPDATE_SLOTS a launch. `updates` holds (param, grad,
    exp_avg, exp_inf, step, master) per parameter; `memo` as _launch_slots'."""
    _rule_steps(be, "adamax_step", [(param, grad, (exp_avg, exp_inf), (lr / (1 - beta1 ** step),), master)
                                    for param, grad, exp_avg, exp_inf, step, master in updates],
                ("exp_avg", "exp_inf"), weight_decay, maximize, (1 - beta1, beta2, eps), memo)


def nadam_step(be, param, grad, exp_avg, exp_avg_sq, step, grad_step, avg_step, lr, beta1, beta2, eps, weight_decay,
               decoupled_decay=0.0, maximize=False, *, master=None):
    """In place; PyTorch's NAdam, `step` counting from 1, with its step sizes from the momentum
    cache (cnn_gpu.optim.nadam_step_sizes); with `decoupled_decay` the parameter times 1 -
    lr*decoupled_decay first (decoupled_weight_decay), else `weight_decay` added to the gradient."""
    nadam_steps(be, [(param, grad, exp_avg, exp_avg_sq, step, grad_step, avg_step, master)], lr, beta1, beta2, eps,
                weight_decay, decoupled_decay, maximize)


def nadam_steps(be, updates, lr, beta1, beta2, eps, weight_decay, decoupled_decay=0.0, maximize=False, memo=None):
    """In place: NAdam of several parameters, UPDATE_SLOTS a launch. `updates` holds (param, grad,
    exp_avg, exp_avg_sq, step, grad_step, avg_step, master) per parameter; `memo` as _launch_slots'."""
    _rule_steps(be, "nadam_step", [(param, grad, (m, v), (1 - beta2 ** step, grad_step, avg_step), master)
                                   for param, grad, m, v, step, grad_step, avg_step, master in updates],
                ("exp_avg", "exp_avg_sq"), weight_decay, maximize,
                (1 - beta1, beta2, 1 - beta2, eps, 1 - lr * decoupled_decay), memo)


def radam_step(be, param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled_decay=0.0,
               maximize=False, *, master=None):
    """In place; PyTorch's RAdam, `step` counting from 1; decays as nadam_step's."""
    radam_steps(be, [(param, grad, exp_avg, exp_avg_sq, step, master)], lr, beta1, beta2, eps, weight_decay,
                decoupled_decay, maximize)


def radam_rectification(beta2, step):
    """RAdam's variance rectification term r_t at `step`, None where rho_t <= 5 (PyTorch's switch:
    no adaptive step then), with rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / (1 - beta2 ** step)
    if rho_t <= 5.0:
        return None
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


def radam_steps(be, updates, lr, beta1, beta2, eps, weight_decay, decoupled_decay=0.0, maximize=False, memo=None):
    """In place: RAdam of several parameters, UPDATE_SLOTS a launch. `updates` holds (param, grad,
    exp_avg, exp_avg_sq, step, master) per parameter; each slot's step size (and whether it is
    rectified) from its own step count; `memo` as _launch_slots'."""
    slots = []
    for param, grad, m, v, step, master in updates:
        rectification = radam_rectification(beta2, step)
        step_size = lr / (1 - beta1 ** step)
        scalars = ((step_size, 0) if rectification is None
                   else (step_size * math.sqrt(1 - beta2 ** step) * rectification, 1))
        slots.append((param, grad, (m, v), scalars, master))
    _rule_steps(be, "radam_step", slots, ("exp_avg", "exp_avg_sq"), weight_decay, maximize,
                (1 - beta1, beta2, 1 - beta2, eps, 1 - lr * decoupled_decay), memo)


def adadelta_step(be, param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay, maximize=False, *, master=None):
    """In place; PyTorch's Adadelta."""
    adadelta_steps(be, [(param, grad, square_avg, acc_delta, master)], lr, rho, eps, weight_decay, maximize)


def adadelta_steps(be, updates, lr, rho, eps, weight_decay, maximize=False, memo=None):
    """In place: Adadelta of several parameters, UPDATE_SLOTS a launch. `updates` holds (param,
    grad, square_avg, acc_delta, master) per parameter; `memo` as _launch_slots'."""
    _rule_steps(be, "adadelta_step", [(param, grad, (square_avg, acc_delta), (), master)
                                      for param, grad, square_avg, acc_delta, master in updates],
                ("square_avg", "acc_delta"), weight_decay, maximize, (lr, rho, 1 - rho, eps), memo)


def unscale_grads(be, grads, inverse, found):
    """In place: each of `grads` (C-contiguous, writeable, one dtype) times `inverse` in the kernels'
    compute type, rounded once, UPDATE_SLOTS a launch; `found`, an int32 (1,) array, is set to 1
    where a gradient holds inf/NaN before the multiplication or, with inverse > 1, after it."""
    if grads:
        _launch_slots(be, "unscale_grads", [((g, *i64(g.size)), None) for g in grads],
                      (found, *acc(grads[0].dtype, inverse), *i32(inverse > 1)))
