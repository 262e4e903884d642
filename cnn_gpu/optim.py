"""Optimizers with PyTorch's update rules: `SGD` (momentum with dampening, Nesterov, weight
decay), `Adam` (bias-corrected, L2 weight decay added to the gradient), `AdamW` (decoupled
decay), `RMSprop` (centered, momentum), `Adagrad` (lr_decay, initial_accumulator_value),
`Adamax`, `NAdam` (momentum_decay, decoupled_weight_decay), `RAdam` (decoupled_weight_decay) and
`Adadelta`, each with PyTorch's `maximize`.

Parameters on the NumPy backend are updated by the NumPy functions below; on "emu" and "cuda" by
the fused kernels of `cnn_gpu.gpu.optim`, 8 parameters a launch (its *_steps functions). The
backend of a parameter is the one `Module.to` gave it, or the optimizer's `backend` argument.

Mixed precision (PyTorch's master weights): a float16 parameter keeps an FP32 copy in its state
(`state[i]["master"]`, saved by state_dict) and FP32 momentum / moment buffers. A step updates the
master in FP32 from the (widened) float16 gradient and writes the parameter back rounded to
float16 once, so updates smaller than half a float16 ulp accumulate instead of being lost. A
parameter array replaced since the last step (Module.to, Module.load_state_dict) whose values no
longer are its master's rounding gets a fresh master from its values; one changed in place behind
the optimizer's back is not noticed.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import math
import operator
import weakref

import numpy as np

from . import backend as _backend
from . import replay
from .functional._checks import FLOAT_DTYPES, flag, real_number, updatable, whole_number, writeable
from .launch_checks import check_disjoint
from .nn.module import Parameter, UninitializedParameter, array_like, to_host

FLOAT16 = np.dtype(np.float16)
SCHEDULER_KEY = "initial_lr"   # the key every learning-rate scheduler adds to a parameter group
# ...and all that schedulers add (cnn_gpu.lr_scheduler, PyTorch's names): OneCycleLR's bounds too
SCHEDULER_KEYS = (SCHEDULER_KEY, "max_lr", "min_lr", "max_momentum", "base_momentum")
# torch.optim's group keys that choose its implementation (multi-tensor, fused, differentiable, CUDA
# graph capturable), not the update: a torch.optim state loads without them
TORCH_IMPLEMENTATION_KEYS = frozenset({"foreach", "fused", "differentiable", "capturable"})
# the names of a group's parameters that torch.optim built from named_parameters() saves (PyTorch
# 2.6 on): which parameters its indices stand for; a load drops them (these optimizers name none)
TORCH_NAMES_KEY = "param_names"


# --- the NumPy updates (the signatures of cnn_gpu.gpu.optim.sgd_step / adam_step) ---------------

def _on_master(update):
    """`update` with a keyword-only `master`: given one (a float16 parameter's FP32 copy), the
    update runs on it with the gradient widened to FP32, and the parameter gets it rounded."""
    @functools.wraps(update)
    def run(be, param, grad, *args, master=None, **options):
        if master is None:
            return update(be, param, grad, *args, **options)
        update(be, master, grad.astype(master.dtype), *args, **options)
        param[...] = master
    return run


@_on_master
def numpy_sgd_step(be, param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, first_step, dampening=0.0,
                   maximize=False):
    """In place. PyTorch's SGD: g = grad (-grad to maximize) + wd*p; buf = g on the first step, else
    momentum*buf + (1-dampening)*g; the step is g + momentum*buf (Nesterov) or buf."""
    if maximize:
        grad = -grad
    if weight_decay:
        grad = grad + weight_decay * param
    if momentum:
        if first_step:
            momentum_buf[...] = grad
        else:
            momentum_buf *= momentum
            momentum_buf += grad if not dampening else (1 - dampening) * grad
        grad = grad + momentum * momentum_buf if nesterov else momentum_buf
    param -= lr * grad


def _lerp(start, end, weight) -> None:
    """start.lerp_(end, weight) in place, as PyTorch computes it: start + weight*(end - start) for a
    weight below 0.5, else end - (end - start)*(1 - weight) (so that a weight of 1 gives end exactly,
    where the first form cancels), the weight rounded to the arrays' dtype first."""
    weight = start.dtype.type(weight)
    if abs(weight) < 0.5:
        start += weight * (end - start)
    else:
        np.subtract(end, (end - start) * (start.dtype.type(1) - weight), out=start)


@_on_master
def numpy_adam_step(be, param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled_decay=0.0,
                    maximize=False, *, v_max=None):
    """In place. PyTorch's Adam (step counts from 1): g = grad (-grad to maximize) + wd*p;
    m = lerp(m, g, 1-beta1) (PyTorch's two forms, _lerp); v = beta2 v + (1-beta2) g^2;
    p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps);
    with `decoupled_decay` its AdamW, p *= 1 - lr*decoupled_decay first; with `v_max` AMSGrad,
    v_max = max(v_max, v) in v's place in the denominator (NaN kept, as torch.maximum)."""
    if maximize:
        grad = -grad
    if weight_decay:
        grad = grad + weight_decay * param
    if decoupled_decay:
        param *= 1 - lr * decoupled_decay
    _lerp(m, grad, 1 - beta1)
    v *= beta2
    v += (1 - beta2) * grad * grad
    if v_max is not None:
        np.maximum(v_max, v, out=v_max)
    step_size = lr / (1 - beta1 ** step)
    denom = np.sqrt(v if v_max is None else v_max) / math.sqrt(1 - beta2 ** step)
    denom += eps
    param -= step_size * (m / denom)


@_on_master
def numpy_rmsprop_step(be, param, grad, square_avg, grad_avg, momentum_buf, lr, alpha, eps, weight_decay, momentum,
                       maximize=False):
    """In place. PyTorch's RMSprop: g = grad (-grad to maximize) + wd*p; sq = alpha*sq + (1-alpha)*g*g;
    centered (grad_avg given): grad_avg = lerp(grad_avg, g, 1-alpha), avg = sqrt(sq - grad_avg^2) + eps,
    else avg = sqrt(sq) + eps; with momentum (momentum_buf given) buf = momentum*buf + g/avg and
    p -= lr*buf, else p -= lr*g/avg."""
    if maximize:
        grad = -grad
    if weight_decay:
        grad = grad + weight_decay * param
    square_avg *= alpha
    square_avg += (1 - alpha) * grad * grad
    if grad_avg is not None:
        _lerp(grad_avg, grad, 1 - alpha)
        avg = np.sqrt(square_avg - grad_avg * grad_avg)
    else:
        avg = np.sqrt(square_avg)
    avg += eps
    if momentum_buf is None:
        param -= lr * (grad / avg)
        return
    momentum_buf *= momentum
    momentum_buf += grad / avg
    param -= lr * momentum_buf


def _decayed_gradient(param, grad, weight_decay, maximize):
    """g = grad (-grad to maximize) + weight_decay*param, a new array (the kernels' decayed_gradient)."""
    if maximize:
        grad = -grad
    return grad + weight_decay * param if weight_decay else grad


def _square_average(average, values, decay) -> None:
    """average = decay*average + (1-decay)*values*values in place, as PyTorch's mul_(decay).addcmul_."""
    average *= decay
    average += (1 - decay) * values * values


@_on_master
def numpy_adagrad_step(be, param, grad, state_sum, step, lr, lr_decay, weight_decay, eps, maximize=False):
    """In place. PyTorch's Adagrad: g = grad (-grad to maximize) + wd*p; clr = lr/(1 + (t-1)*lr_decay);
    sum += g*g; p -= clr * g/(sqrt(sum) + eps)."""
    grad = _decayed_gradient(param, grad, weight_decay, maximize)
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum += grad * grad
    std = np.sqrt(state_sum)
    std += eps
    param -= clr * (grad / std)


@_on_master
def numpy_adamax_step(be, param, grad, exp_avg, exp_inf, step, lr, beta1, beta2, eps, weight_decay, maximize=False):
    """In place. PyTorch's Adamax: g = grad (-grad to maximize) + wd*p; exp_avg = lerp(exp_avg, g,
    1-beta1); exp_inf = maximum(beta2*exp_inf, |g| + eps) (NaN kept); p -= lr/(1-beta1^t) * exp_avg/exp_inf."""
    grad = _decayed_gradient(param, grad, weight_decay, maximize)
    _lerp(exp_avg, grad, 1 - beta1)
    exp_inf *= beta2
    np.maximum(exp_inf, np.abs(grad) + eps, out=exp_inf)
    param -= lr / (1 - beta1 ** step) * (exp_avg / exp_inf)


def nadam_step_sizes(lr, beta1, momentum_decay, step, mu_product) -> tuple:
    """NAdam's momentum cache at `step` (from 1): (this step's mu_product, grad_step, avg_step), with
    mu_t = beta1 (1 - 0.5*0.96^(t*momentum_decay)), mu_product times mu_t in FP32 (PyTorch keeps it in
    a float32 tensor: its default dtype's), grad_step = lr (1 - mu_t)/(1 - mu_product) and avg_step =
    lr mu_{t+1}/(1 - mu_product*mu_{t+1}), PyTorch's step sizes of the gradient and of exp_avg."""
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product = float(np.float32(mu_product) * np.float32(mu))
    return mu_product, lr * (1.0 - mu) / (1.0 - mu_product), lr * mu_next / (1.0 - mu_product * mu_next)


def _decayed_moments(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, weight_decay, decoupled_decay, maximize):
    """NAdam's and RAdam's first part, in place: g = grad (-grad to maximize) + wd*p, or with
    `decoupled_decay` p *= 1 - lr*decoupled_decay; exp_avg = lerp(exp_avg, g, 1-beta1), exp_avg_sq =
    beta2*exp_avg_sq + (1-beta2)*g*g. Returns g."""
    if decoupled_decay:
        param *= 1 - lr * decoupled_decay
    grad = _decayed_gradient(param, grad, weight_decay, maximize)
    _lerp(exp_avg, grad, 1 - beta1)
    _square_average(exp_avg_sq, grad, beta2)
    return grad


@_on_master
def numpy_nadam_step(be, param, grad, exp_avg, exp_avg_sq, step, grad_step, avg_step, lr, beta1, beta2, eps,
                     weight_decay, decoupled_decay=0.0, maximize=False):
    """In place. PyTorch's NAdam: g = grad (-grad to maximize) + wd*p, or with `decoupled_decay`
    p *= 1 - lr*decoupled_decay; exp_avg and exp_avg_sq as Adam's; denom = sqrt(exp_avg_sq/(1 -
    beta2^t)) + eps; p -= grad_step * g/denom; p -= avg_step * exp_avg/denom (nadam_step_sizes')."""
    grad = _decayed_moments(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, weight_decay, decoupled_decay,
                            maximize)
    denom = np.sqrt(exp_avg_sq / (1 - beta2 ** step))
    denom += eps
    param -= grad_step * (grad / denom)
    param -= avg_step * (exp_avg / denom)


@_on_master
def numpy_radam_step(be, param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                     decoupled_decay=0.0, maximize=False):
    """In place. PyTorch's RAdam: decays as NAdam's; exp_avg and exp_avg_sq as Adam's; with the
    rectification r_t (rho_t > 5) p -= exp_avg/(1-beta1^t) * lr * (sqrt(1-beta2^t) * 1/(sqrt(exp_avg_sq)
    + eps)) * r_t, else p -= exp_avg/(1-beta1^t) * lr, in PyTorch's order of operations."""
    grad = _decayed_moments(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, weight_decay, decoupled_decay,
                            maximize)
    corrected = exp_avg / (1 - beta1 ** step)
    rectification = _kernel_steps().radam_rectification(beta2, step)
    if rectification is None:
        param -= corrected * lr
        return
    adaptive = np.sqrt(exp_avg_sq)
    adaptive += eps
    # PyTorch's scalar / tensor: the tensor's reciprocal times the scalar
    adaptive = np.reciprocal(adaptive) * (1 - beta2 ** step) ** 0.5
    param -= corrected * lr * adaptive * rectification


@_on_master
def numpy_adadelta_step(be, param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay, maximize=False):
    """In place. PyTorch's Adadelta: g = grad (-grad to maximize) + wd*p; square_avg = rho*square_avg +
    (1-rho)*g*g; delta = sqrt(acc_delta + eps)/sqrt(square_avg + eps)*g; acc_delta = rho*acc_delta +
    (1-rho)*delta*delta; p -= lr*delta."""
    grad = _decayed_gradient(param, grad, weight_decay, maximize)
    _square_average(square_avg, grad, rho)
    std = np.sqrt(square_avg + eps)
    delta = np.sqrt(acc_delta + eps)
    delta /= std
    delta *= grad
    _square_average(acc_delta, delta, rho)
    param -= lr * delta


def _kernel_steps():
    return importlib.import_module("cnn_gpu.gpu.optim")


def state_dtype(dtype) -> np.dtype:
    """The dtype of a parameter's optimizer state: FP32 for float16 parameters (master weights),
    the parameter's own otherwise."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


_LAYOUT = operator.attrgetter("shape", "dtype", "strides")


def _layouts(*arrays) -> tuple:
    """What a step's checks (and its launches', launch_checks) read of each array besides its
    identity and writeable flag: a step whose arrays match these skips both (backend.LaunchMemo)."""
    return tuple(map(_LAYOUT, arrays))


_GRADIENT = object()   # a step's array name (_step_array_name) of a parameter's gradient


def _step_array_name(name: tuple) -> str:
    """The name in messages of a step's array named (parameter index, state key) in _step."""
    index, key = name
    if key is None:
        return f"parameter {index}"
    return f"the gradient of parameter {index}" if key is _GRADIENT else f"state {key!r} of parameter {index}"


def _written_name(state_key) -> str:
    """How a step's refusals name an array it writes: the parameter (None) or its state `state_key`."""
    return "the parameter" if state_key is None else f"its state {state_key!r}"


def _state_arrays(state: dict) -> list:
    """(key, array) of the per-element state (momentum buffers, moments); not step counts (ints:
    told apart first, as getattr's default costs them an AttributeError raised and caught)."""
    return [(key, value) for key, value in state.items() if not isinstance(value, int) and getattr(value, "ndim", 0)]


# --- optimizers ---------------------------------------------------------------------------------

class Optimizer:
    """PyTorch's parameter groups: `params` an iterable of Parameters (one group) or of dicts
    {"params": [...], and hyper-parameters that override the defaults for that group} (the groups
    in `param_groups`, whose values may be changed between steps; `add_param_group` adds one); the
    per-parameter state in `state[i]`, i counting the parameters over the groups in order.

    A step is all or nothing on every backend: the hyper-parameters (finite, in range), every
    gradient (shape, dtype, device) and every array the step writes (float, C-contiguous,
    writeable, sharing memory with nothing else in the step) are checked before any parameter
    changes. State made before `Module.to` moved a parameter moves with it at the next step."""

    def __init__(self, params, defaults: dict, backend=None):
        if backend is not None and backend not in _backend.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(_backend.BACKENDS)}")
        self.backend = backend
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        listed = [self._checked_group(group, index) for index, group in enumerate(groups)]
        self.param_groups, self.state, self._master_of, self._state_params = [], [], [], []
        for group, members in zip(groups, listed):
            self._add_group(group, members)
        self._checked = None   # (the arrays the last step checked, its updates, its launches' memos): see _step

    def _normalized_saved_group(self, saved: dict) -> dict:
        """A saved group's hyper-parameters without torch.optim's keys for its implementation, its
        parameters' names and settings of the rule this one implements at one value only (refused at
        another), older states' missing keys filled in."""
        for key, value in self.torch_settings.items():
            if key in saved and not (isinstance(saved[key], (bool, np.bool_)) and bool(saved[key]) == value):
                raise ValueError(f"optimizer state has {key}={saved[key]!r}; {type(self).__name__} implements "
                                 f"{key}={value!r} only")
        names = saved.get(TORCH_NAMES_KEY)
        if names is not None and (not isinstance(names, (list, tuple))
                                  or len(names) != len(saved.get("params", names))):
            raise ValueError(f"optimizer state: a group's {TORCH_NAMES_KEY!r} must list a name per parameter of its "
                             f"'params', got {names!r}")
        skipped = TORCH_IMPLEMENTATION_KEYS | {TORCH_NAMES_KEY} | set(self.torch_settings)
        return {**self.added_hyper_defaults, **{k: v for k, v in saved.items() if k not in skipped}}

    def _checked_group(self, group, index: int) -> list:
        """The parameters of group `index` as a list (a generator read once), after the checks
        add_param_group makes: TypeError/ValueError before any group is added."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a parameter group must be a dict with 'params' (and hyper-parameters), got "
                            f"{type(group).__name__}")
        listed = [group["params"]] if isinstance(group["params"], Parameter) else list(group["params"])
        if not listed:
            raise ValueError(f"parameter group {index} has no parameters")
        for i, p in enumerate(listed):
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer params must be cnn_gpu.nn.Parameter objects (e.g. model.parameters()); "
                                f"item {i} is {type(p).__name__}")
        given = self._validated({**self.defaults, **group})
        real_number(given["lr"], "learning rate lr", minimum=0.0)   # as PyTorch's constructor (not its step)
        return listed

    def add_param_group(self, group: dict) -> None:
        """Adds `group` itself, as PyTorch does: its missing hyper-parameters set to the defaults, the
        given ones checked and normalised, "params" made a list; a parameter already in a group is
        refused (its update would run twice)."""
        self._add_group(group, self._checked_group(group, len(self.param_groups)))

    def _add_group(self, group: dict, listed: list) -> None:
        seen = {id(p): i for i, p in enumerate(self.params)}
        for i, p in enumerate(listed, start=len(seen)):
            if id(p) in seen:   # PyTorch warns that this will become an error
                raise ValueError(f"optimizer params: item {i} is item {seen[id(p)]} again; list each parameter once")
            seen[id(p)] = i
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group.update(self._validated(group), params=listed)
        self.param_groups.append(group)
        self.state += [dict() for _ in listed]
        self._master_of += [None] * len(listed)   # the float16 array each master was last written to
        self._state_params += listed              # the parameter each entry of `state` belongs to
        self._checked = None

    # the per-parameter state a subclass keeps after a step ("master" aside), and what it may keep too
    state_keys: frozenset = frozenset()
    optional_state_keys: frozenset = frozenset()
    # the numbers among them besides "step" (NAdam's mu_product; PyTorch saves 0-d tensors)
    scalar_state_keys: frozenset = frozenset()
    # hyper-parameters added after states were first saved: an older state loads with these values
    added_hyper_defaults: dict = {}
    # torch.optim's settings of the rule that this optimizer implements at these values only
    torch_settings: dict = {}

    @staticmethod
    def _validated(hyper: dict) -> dict:
        """The hyper-parameters checked and normalised (subclasses)."""
        raise NotImplementedError

    def _validated_saved(self, hyper: dict) -> dict:
        """A loaded group's hyper-parameters checked and normalised: as _validated, but for values a
        schedule sets past its end, which PyTorch's load takes (Adam's beta1; the step refuses it)."""
        return self._validated(hyper)

    @property
    def params(self) -> list:
        """Every group's parameters, in order (the indices of `state`)."""
        return [p for group in self.param_groups for p in group["params"]]

    def _group_of(self) -> tuple:
        """The group index of each parameter of `params`. Where a group's list was changed in place
        (reordered, a parameter moved to another group, added or removed), `state` follows its
        parameters, as PyTorch keys state by parameter: a parameter new to the optimizer starts
        with none. ValueError where one is listed twice."""
        params = self.params
        if len(params) != len(self._state_params) or any(map(operator.is_not, params, self._state_params)):
            held = {id(p): (state, master) for p, state, master in zip(self._state_params, self.state, self._master_of)}
            if len({id(p) for p in params}) != len(params):
                raise ValueError("optimizer params: a parameter is listed twice in param_groups; list each once")
            kept = [held.get(id(p), ({}, None)) for p in params]
            self.state, self._master_of = [s for s, _ in kept], [m for _, m in kept]
            self._state_params = params
            self._checked = None
        return tuple(g for g, group in enumerate(self.param_groups) for _ in group["params"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Every parameter's .grad None (or zeroed in place: set_to_none=False), as PyTorch."""
        for p in self.params:
            p.clear_grad(set_to_none)

    def backend_of(self, p) -> str:
        """The backend a parameter's update runs on: the optimizer's, else the one Module.to gave it,
        else its arrays' (GradScaler.unscale_ unscales its gradient there too)."""
        return _backend.resolve(self.backend or p.backend, p.data, p.grad)

    def _prepare(self, index: int, p, state: dict):
        """(backend, C-contiguous gradient, the state's arrays as _state_arrays lists them) of one
        parameter's update, after checking everything the update touches; moves state left behind
        by Module.to. (Messages are made where they are raised: a step prepares every parameter.)"""
        data, grad = p.data, p.grad
        dtype = data.dtype
        if grad.shape != data.shape:
            raise ValueError(f"parameter {index}: gradient shape {tuple(grad.shape)} does not match parameter shape "
                             f"{tuple(data.shape)}")
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"parameter {index} has dtype {dtype}; optimizers update float16, float32 or "
                            f"float64 parameters")
        if grad.dtype != dtype:
            raise TypeError(f"parameter {index}: gradient dtype {grad.dtype} does not match parameter dtype {dtype}")
        be = self.backend_of(p)
        on_gpu = _backend.is_cupy_array(data)
        if on_gpu and grad.device.id != data.device.id:   # (a host gradient: refused by backend_of)
            raise ValueError(f"parameter {index}: its gradient is on GPU {grad.device.id} but the parameter on GPU "
                             f"{data.device.id}; a gradient is never copied between GPUs for you")
        wanted = state_dtype(dtype)
        for key, value in _state_arrays(state):
            # Module.to(dtype) since (double(), float()): the state in the parameter's state dtype;
            # master weights of a parameter no longer float16 go (it holds their values, rounded)
            if key == "master" and dtype != FLOAT16:
                del state[key]
                continue
            if key != "master" and value.dtype != wanted:
                value = state[key] = value.astype(wanted)
            if _backend.is_cupy_array(value) != on_gpu:
                state[key] = array_like(value, data)   # same values, the parameter's device
        self._sync_master(index, p, state)
        state_arrays = _state_arrays(state)
        for key, a in [(None, data)] + state_arrays:   # every one now on the parameter's device
            flags = a.flags
            if not flags.c_contiguous:
                raise ValueError(f"parameter {index}: {_written_name(key)} must be C-contiguous to be updated in "
                                 f"place (shape {tuple(a.shape)}, strides {a.strides}); Module.to and "
                                 f"load_state_dict make C-contiguous copies")
            if not (on_gpu or flags.writeable):   # (its name made only for the refusal)
                updatable(a, f"parameter {index}: {_written_name(key)}")
        return be, _backend.array_module("cuda" if on_gpu else "numpy").asarray(grad, order="C"), state_arrays

    def _sync_master(self, index: int, p, state: dict) -> None:
        """A float16 parameter's FP32 master copy in state["master"]: made from the parameter at its
        first step, and anew when the parameter array was replaced by one that is not the master
        rounded (a loaded checkpoint); a move by Module.to keeps it."""
        if p.data.dtype != np.float16:
            if "master" in state:
                raise ValueError(f"parameter {index} is {p.data.dtype}; master weights belong to float16 "
                                 f"parameters only")
            return
        master = state.get("master")
        if master is not None and self._master_of[index] is not p.data:
            matches = master.astype(np.float16).view(np.uint16) == p.data.view(np.uint16)
            if not bool(matches.all()):
                master = None
        if master is None:
            state["master"] = p.data.astype(np.float32)
        self._master_of[index] = p.data

    def step(self, closure=None):
        """The update; `closure` (PyTorch's: a function that zeroes the gradients, runs forward and
        backward and returns the loss) is called first and its loss returned, else None. Inside a
        recording (cnn_gpu.replay) the update is live: it runs again as Python at every replay, on
        the gradients then bound (a recorded backward binds its own again), reading param_groups
        anew (schedules, step counts)."""
        if closure is not None and not callable(closure):
            raise TypeError(f"closure must be callable (it returns the loss), got {type(closure).__name__}")
        loss = None if closure is None else closure()
        replay.live(self._step)
        return loss

    def _step(self) -> None:
        group_of = self._group_of()   # the state in step with the groups' parameters (_state_params)
        hypers = [self._validated(group) for group in self.param_groups]   # changed since the last step, maybe
        # no gradient reached a parameter without .grad: PyTorch leaves it alone too
        pending = [(i, p, state) for i, (p, state) in enumerate(zip(self._state_params, self.state))
                   if p.grad is not None]
        if self._checked is not None and self._same_arrays(pending, group_of, self._checked[0]):
            # the arrays the last step checked, bound as they were: so are its launches' arrays
            self._update_all([(be, p, p.grad, state, g) for be, p, state, g in self._checked[1]], hypers,
                             self._checked[2])
            return
        plans = [self._prepare(i, p, state) for i, p, state in pending]
        arrays = []   # named by (parameter index, state key; None: the parameter, _GRADIENT: its gradient)
        for (i, p, state), (_, grad, state_arrays) in zip(pending, plans):
            arrays += [((i, None), p.data, True), ((i, _GRADIENT), grad, False)]
            arrays += [((i, key), v, True) for key, v in state_arrays]
        check_disjoint(arrays, "optimizer step: ", _step_array_name)
        updates = [(be, p, grad, state, group_of[i]) for (i, p, state), (be, grad, _) in zip(pending, plans)]
        # Each step binds the same arrays (a replayed one, a loop that keeps its gradients): the next
        # step skips these checks while every one is still bound; not where a gradient was copied
        # to C order (the copy holds this step's values).
        reusable = all(grad is p.grad for _, p, grad, _, _ in updates)
        self._checked = (self._bound_arrays(pending, group_of, plans),
                         [(be, p, state, g) for be, p, _, state, g in updates], {}) if reusable else None
        # its launches' memos are made at the first step that finds these arrays again (checked
        # there, unchecked from the next): a loop that unbinds its gradients makes none
        self._update_all(updates, hypers)

    def _bound_arrays(self, pending, group_of, plans) -> list:
        """What a step's checks depend on: the backends a parameter's may come from (the
        optimizer's, the default) and the parameters' groups, and per parameter updated its backend,
        arrays, gradient and state
        arrays under their keys, with each array's shape and dtype. The gradient is held weakly: a
        loop that unbinds it (zero_grad of the model or the optimizer) frees it before the next
        backward, and a freed one matches no array. `plans`: _prepare's per parameter."""
        per_parameter = []
        for (_, p, state), (_, _, state_arrays) in zip(pending, plans):
            arrays = [v for _, v in state_arrays]
            per_parameter.append((p, p.backend, p.data, weakref.ref(p.grad), state, sorted(state), arrays,
                                  _layouts(p.data, p.grad, *arrays)))
        return [(self.backend, _backend.get_backend(), group_of), per_parameter]

    def _same_arrays(self, pending, group_of, bound) -> bool:
        backends, per_parameter = bound
        if (self.backend, _backend.get_backend(), group_of) != backends or len(pending) != len(per_parameter):
            return False
        for (_, p, state), (q, p_backend, data, grad, kept, keys, arrays, layouts) in zip(pending, per_parameter):
            if (p is not q or p.backend != p_backend or p.data is not data or p.grad is not grad() or state is not kept
                    or sorted(state) != keys or any(a is not b for (_, a), b in zip(_state_arrays(state), arrays))):
                return False
            # read-only, or reshaped or retyped in place, since: the full checks refuse or redo it
            if not all(map(writeable, (data, *arrays))) or _layouts(data, p.grad, *arrays) != layouts:
                return False
        return True

    def _update_all(self, updates, hypers, memos=None) -> None:
        """The update of every (backend, parameter, gradient, state, group index) checked above,
        with its group's `hypers`: on NumPy one by one, on a kernel backend 8 parameters a launch
        (cnn_gpu.gpu.optim's *_steps: one launch per parameter would cost more than the update of
        most of them), grouped by backend, dtype, whether they keep an FP32 master copy and
        parameter group. `memos`: a backend.LaunchMemo per launch, kept with the checked arrays, so
        that a step on the same arrays skips its launches' checks too."""
        launches = {}
        for be, p, grad, state, g in updates:
            if be == "numpy":
                self._numpy_update(p, grad, state, hypers[g])
            else:
                launches.setdefault((be, p.data.dtype, "master" in state, g), []).append((p, grad, state))
        slots = _kernel_steps().UPDATE_SLOTS if launches else 0
        for key, group in launches.items():
            for first in range(0, len(group), slots):   # a launch each, its state stored after it ran
                memo = None if memos is None else (memos.get((key, first)) or
                                                   memos.setdefault((key, first), _backend.LaunchMemo()))
                self._kernel_updates(key[0], group[first:first + slots], hypers[key[3]], memo)

    def _numpy_update(self, p, grad, state, hyper) -> None:
        """One parameter's update on NumPy (subclasses)."""
        raise NotImplementedError

    def _kernel_updates(self, be, group, hyper, memo) -> None:
        """The updates of up to UPDATE_SLOTS (parameter, gradient, state) triples of one dtype on
        kernel backend `be`, in one launch (subclasses), through `memo` where not None."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """PyTorch's layout: "state" maps a parameter's index (counting over the groups in order) to
        its state (NumPy arrays; a parameter without state is left out), "param_groups" holds each
        group's hyper-parameters with its parameters as their indices."""
        self._group_of()   # the state in the groups' order, where a group's list was changed in place
        groups, first = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            hyper = {k: v for k, v in group.items() if k != "params"}
            groups.append({**hyper, "params": list(range(first, first + count))})
            first += count
        state = {i: {k: to_host(v) if hasattr(v, "shape") else v for k, v in s.items()}
                 for i, s in enumerate(self.state) if s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """A state_dict() of this optimizer, or of torch.optim's optimizer of the same rule (its
        tensors on the CPU; its implementation's settings, foreach, fused, differentiable and
        capturable, ignored), checked whole before any change: the same groups of the same sizes.
        Also the layout older versions saved: "state" a list with an entry per parameter (one group
        of all where the groups have no "params")."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError("optimizer state must be a dict with 'state' and 'param_groups' (a state_dict())")
        groups, states = state_dict["param_groups"], state_dict["state"]
        if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
            raise ValueError("optimizer state: 'param_groups' must be a list of dicts")
        if not all(isinstance(group.get("params", []), list) for group in groups):
            raise ValueError("optimizer state: a group's 'params' must be a list of parameter indices")
        if all("params" in group for group in groups):
            saved_ids = [i for group in groups for i in group["params"]]
            saved_sizes = [len(group["params"]) for group in groups]
        elif len(groups) == 1 and isinstance(states, list):   # saved before the groups recorded "params"
            saved_ids, saved_sizes = list(range(len(states))), [len(states)]
        else:
            raise ValueError("optimizer state: a group without 'params' (the indices of its parameters)")
        sizes = [len(group["params"]) for group in self.param_groups]
        if saved_sizes != sizes:
            raise ValueError(f"optimizer state has {len(saved_ids)} parameter states in groups of {saved_sizes}; "
                             f"this optimizer has {len(self.params)} parameters in groups of {sizes}")
        states = _states_by_position(states, saved_ids)
        hypers = []
        for saved, own in zip(groups, self.param_groups):
            saved = self._normalized_saved_group(saved)
            # a learning-rate scheduler's keys may be in either (cnn_gpu.lr_scheduler; PyTorch's too)
            own_keys = {k for k in own if k not in ("params", *SCHEDULER_KEYS)}
            if set(saved) - {"params", *SCHEDULER_KEYS} != own_keys:
                raise ValueError(f"optimizer state has hyper-parameters {sorted(set(saved) - {'params'})}; "
                                 f"{type(self).__name__} has {sorted(own_keys)} (a state dict of another optimizer?)")
            hyper = {**{k: v for k, v in saved.items() if k != "params"}, **self._validated_saved(saved)}
            for key in set(SCHEDULER_KEYS) & set(saved):
                hyper[key] = real_number(saved[key], key, minimum=0)
            hypers.append(hyper)
        restored = []
        for i, (p, saved) in enumerate(zip(self.params, states)):
            if not isinstance(saved, dict):
                raise ValueError(f"optimizer state {i} must be a dict, got {type(saved).__name__}")
            saved = {key: value for key, value in saved.items() if value is not None}   # torch.optim's "none yet"
            kept = set(saved) - {"master"}
            if kept and not self.state_keys <= kept <= self.state_keys | self.optional_state_keys:
                also = "".join(f", {key!r}" for key in sorted(self.optional_state_keys))
                raise ValueError(f"optimizer state {i} holds {sorted(saved)}; {type(self).__name__} keeps "
                                 f"{sorted(self.state_keys)} (and 'master' for float16{also}), or nothing before "
                                 f"its first step")
            if "master" in saved and p.data.dtype != np.float16:
                raise ValueError(f"optimizer state {i} holds master weights, which belong to float16 parameters "
                                 f"only; parameter {i} is {p.data.dtype}")
            entry = {}
            for key, value in saved.items():
                if key == "step":
                    value = _whole_step(value)
                    try:
                        # 0: moments made by a first step whose launch failed (Adam._next_step)
                        entry[key] = whole_number(value, f"optimizer state {i}.step", minimum=0)
                    except TypeError as err:   # a malformed state: one kind of error for all of them
                        raise ValueError(str(err)) from None
                    continue
                if key in self.scalar_state_keys:
                    try:
                        entry[key] = real_number(value.item() if getattr(value, "shape", None) == () else value,
                                                 f"optimizer state {i}.{key}")
                    except TypeError as err:
                        raise ValueError(str(err)) from None
                    continue
                if not hasattr(value, "shape") or tuple(value.shape) != tuple(p.data.shape):
                    raise ValueError(f"optimizer state {i}.{key} has shape {tuple(getattr(value, 'shape', ()))}, "
                                     f"the parameter {tuple(p.data.shape)}")
                # (asarray first: a torch tensor's __array__ takes no copy argument, which np.array passes)
                value = np.asarray(value)
                if value.dtype.kind not in "fiu":   # (a complex one would lose its imaginary part)
                    raise ValueError(f"optimizer state {i}.{key} has dtype {value.dtype}, not real numbers")
                entry[key] = array_like(np.array(value, dtype=state_dtype(p.data.dtype), order="C"), p.data)
            restored.append(entry)
        for group, hyper in zip(self.param_groups, hypers):
            group.update(hyper)
        self.state = restored
        self._master_of = [None] * len(self.params)
        self._state_params = self.params
        self._checked = None


def is_index(value) -> bool:
    """A parameter's index in a state dict: an int (a NumPy one too, not a bool) >= 0."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 0


def _states_by_position(states, saved_ids: list) -> list:
    """The saved per-parameter states in the order of the optimizer's parameters, the k-th being
    the state of the k-th index in the saved groups' "params" (PyTorch's mapping): `states` a dict
    of those indices (PyTorch's layout, parameters without state left out) or a list indexed by
    them (the layout older versions saved)."""
    if not all(map(is_index, saved_ids)) or len(set(saved_ids)) != len(saved_ids):
        raise ValueError("optimizer state: the groups' 'params' must be distinct parameter indices")
    if isinstance(states, dict):
        listed = set(saved_ids)
        stray = [i for i in states if not is_index(i) or i not in listed]
        if stray:
            raise ValueError(f"optimizer state: state {stray[0]!r} belongs to no parameter of the groups' 'params'")
        return [states.get(i, {}) for i in saved_ids]
    if isinstance(states, list):
        if sorted(saved_ids) != list(range(len(states))):
            raise ValueError(f"optimizer state has {len(states)} parameter states in a list; the groups' 'params' "
                             f"must number them from 0")
        return [states[i] for i in saved_ids]
    raise ValueError(f"optimizer state: 'state' must be a dict of parameter indices, got {type(states).__name__}")


def _whole_step(value):
    """A step count as saved: PyTorch keeps it as a 0-d tensor of a float dtype (a whole number)."""
    if getattr(value, "shape", None) == ():
        value = value.item()
        if isinstance(value, float) and value.is_integer():
            return int(value)
    return value


def _master_argument(state: dict) -> dict:
    """The `master` keyword of an update: a float16 parameter's FP32 copy, none otherwise."""
    return {"master": state["master"]} if "master" in state else {}


def _nonnegative(hyper: dict, *names) -> dict:
    """The hyper-parameters `names`, finite and >= 0; "lr" only finite: a schedule may take it a
    rounding below 0 (LinearLR's end_factor 0, OneCycleLR's linear end), and PyTorch's step and
    load take that; the optimizer's own and add_param_group's groups are held to lr >= 0."""
    return {name: real_number(hyper[name], "learning rate lr") if name == "lr" else
            real_number(hyper[name], name, minimum=0.0) for name in names}


def _checked_betas(betas, beta1_below: float = 1.0) -> tuple:
    """(beta1, beta2): finite, >= 0, beta2 < 1 and beta1 < beta1_below (1 but for a loaded state: a
    schedule may take it past, see Adam._validated_saved)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    return tuple(real_number(b, f"betas[{i}]", minimum=0.0, below=below)
                 for i, (b, below) in enumerate(zip(betas, (beta1_below, 1.0))))


class SGD(Optimizer):
    """PyTorch's SGD. Its fourth positional parameter is `weight_decay` (PyTorch's is `dampening`):
    `dampening` and `maximize` are keyword-only."""
    state_keys = frozenset({"momentum_buffer"})
    added_hyper_defaults = {"dampening": 0.0, "maximize": False}

    def __init__(self, params, lr=1e-3, momentum=0, weight_decay=0, nesterov=False, backend=None, *, dampening=0,
                 maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize), backend)

    @staticmethod
    def _validated(hyper: dict) -> dict:
        checked = _nonnegative(hyper, "lr", "momentum", "dampening", "weight_decay")
        checked["nesterov"] = flag(hyper["nesterov"], "nesterov")
        checked["maximize"] = flag(hyper["maximize"], "maximize")
        if checked["nesterov"] and (checked["momentum"] <= 0 or checked["dampening"]):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening 0")
        return checked

    def _kernel_updates(self, be, group, hyper, memo) -> None:
        if not hyper["momentum"]:
            _kernel_steps().sgd_steps(be, [(p.data, grad, state.get("master")) for p, grad, state in group],
                                      hyper["lr"], hyper["weight_decay"], hyper["maximize"], memo=memo)
            return
        updates = [(p.data, grad, *self._momentum_buffer(be, p, state), state.get("master"))
                   for p, grad, state in group]
        _kernel_steps().sgd_momentum_steps(be, updates, hyper["lr"], hyper["momentum"], hyper["weight_decay"],
                                           hyper["nesterov"], hyper["dampening"], hyper["maximize"], memo=memo)

    @staticmethod
    def _momentum_buffer(be, p, state) -> tuple:
        """(the parameter's momentum buffer, whether this is its first step with momentum: the
        buffer made now, zero, so that a step retried after a failed launch finds no garbage)."""
        first_step = "momentum_buffer" not in state
        if first_step:
            state["momentum_buffer"] = _backend.array_module(be).zeros_like(p.data, dtype=state_dtype(p.data.dtype))
        return state["momentum_buffer"], first_step

    def _numpy_update(self, p, grad, state, hyper) -> None:
        buffer, first_step = (self._momentum_buffer("numpy", p, state) if hyper["momentum"]
                              else (None, "momentum_buffer" not in state))
        numpy_sgd_step("numpy", p.data, grad, buffer, hyper["lr"], hyper["momentum"], hyper["weight_decay"],
                       hyper["nesterov"], first_step, hyper["dampening"], hyper["maximize"], **_master_argument(state))


class Adam(Optimizer):
    """PyTorch's Adam; `amsgrad` (its sixth positional parameter, here the backend's place) and
    `maximize` keyword-only. AMSGrad keeps the running maximum of exp_avg_sq in the state's
    "max_exp_avg_sq" (PyTorch's key), made at the parameter's first step with amsgrad on."""
    state_keys = frozenset({"step", "exp_avg", "exp_avg_sq"})
    optional_state_keys = frozenset({"max_exp_avg_sq"})
    added_hyper_defaults = {"amsgrad": False, "maximize": False}
    torch_settings = {"decoupled_weight_decay": False}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, backend=None, *,
                 amsgrad=False, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize), backend)

    @staticmethod
    def _validated(hyper: dict, beta1_below: float = 1.0) -> dict:
        checked = _nonnegative(hyper, "lr", "eps", "weight_decay")
        checked["amsgrad"] = flag(hyper["amsgrad"], "amsgrad")
        checked["maximize"] = flag(hyper["maximize"], "maximize")
        checked["betas"] = _checked_betas(hyper["betas"], beta1_below)
        return checked

    def _validated_saved(self, hyper: dict) -> dict:
        # OneCycleLR's last step extrapolates its linear phase: beta1 may end at 1 or above (in
        # PyTorch too), and the optimizer's state saved then must load; a step with it is refused
        return self._validated(hyper, beta1_below=math.inf)

    @staticmethod
    def _next_step(be, p, state, amsgrad: bool) -> int:
        """The parameter's step count with this step (its moments made, zero, at its first, and
        AMSGrad's maximum at its first with amsgrad); the caller stores it once the update's launch
        has run, so one that fails leaves it as it was."""
        xp, dtype = _backend.array_module(be), state_dtype(p.data.dtype)
        if "step" not in state:
            state.update(step=0, exp_avg=xp.zeros_like(p.data, dtype=dtype),
                         exp_avg_sq=xp.zeros_like(p.data, dtype=dtype))
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = xp.zeros_like(p.data, dtype=dtype)
        return state["step"] + 1

    @staticmethod
    def _v_max(state, hyper):
        """AMSGrad's running maximum of v where the group has amsgrad on, else None."""
        return state["max_exp_avg_sq"] if hyper["amsgrad"] else None

    def _decays(self, hyper) -> tuple:
        """(L2 weight decay added to the gradient, decoupled decay of the parameter): Adam's."""
        return hyper["weight_decay"], 0.0

    def _numpy_update(self, p, grad, state, hyper) -> None:
        beta1, beta2 = hyper["betas"]
        step = self._next_step("numpy", p, state, hyper["amsgrad"])
        numpy_adam_step("numpy", p.data, grad, state["exp_avg"], state["exp_avg_sq"], step, hyper["lr"], beta1, beta2,
                        hyper["eps"], *self._decays(hyper), hyper["maximize"], v_max=self._v_max(state, hyper),
                        **_master_argument(state))
        state["step"] = step

    def _kernel_updates(self, be, group, hyper, memo) -> None:
        beta1, beta2 = hyper["betas"]
        # the moments made at a first step
        steps = [self._next_step(be, p, state, hyper["amsgrad"]) for p, _, state in group]
        updates = [(p.data, grad, state["exp_avg"], state["exp_avg_sq"], self._v_max(state, hyper), step,
                    state.get("master")) for (p, grad, state), step in zip(group, steps)]
        _kernel_steps().adam_steps(be, updates, hyper["lr"], beta1, beta2, hyper["eps"], *self._decays(hyper),
                                   hyper["maximize"], memo=memo)
        for (_, _, state), step in zip(group, steps):
            state["step"] = step


class AdamW(Adam):
    """PyTorch's AdamW: Adam whose weight decay is decoupled from the gradient, the parameter
    multiplied by 1 - lr*weight_decay before each update (default weight_decay 0.01, as PyTorch's)."""
    torch_settings = {"decoupled_weight_decay": True}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, backend=None, *,
                 amsgrad=False, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, backend=backend,
                         amsgrad=amsgrad, maximize=maximize)

    def _decays(self, hyper) -> tuple:
        return 0.0, hyper["weight_decay"]


class RMSprop(Optimizer):
    """PyTorch's RMSprop; `maximize` keyword-only (PyTorch's `capturable`, `foreach` and
    `differentiable` choose its implementation: their place holds the backend). The centered form
    keeps the running mean of the gradient in the state's "grad_avg" and momentum its buffer in
    "momentum_buffer" (PyTorch's keys), each made, zero, at the parameter's first step with the
    option on."""
    state_keys = frozenset({"step", "square_avg"})
    optional_state_keys = frozenset({"grad_avg", "momentum_buffer"})

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 backend=None, *, maximize=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize), backend)

    @staticmethod
    def _validated(hyper: dict) -> dict:
        checked = _nonnegative(hyper, "lr", "alpha", "eps", "weight_decay", "momentum")
        checked["centered"] = flag(hyper["centered"], "centered")
        checked["maximize"] = flag(hyper["maximize"], "maximize")
        return checked

    @staticmethod
    def _next_step(be, p, state, hyper) -> tuple:
        """(the parameter's step count with this step, square_avg, grad_avg where centered else None,
        the momentum buffer where momentum > 0 else None), the arrays made, zero, at their first use;
        the caller stores the count once the update's launch has run."""
        xp, dtype = _backend.array_module(be), state_dtype(p.data.dtype)
        for key, wanted in (("square_avg", True), ("grad_avg", hyper["centered"]),
                            ("momentum_buffer", hyper["momentum"] > 0)):
            if wanted and key not in state:
                state[key] = xp.zeros_like(p.data, dtype=dtype)
        state.setdefault("step", 0)
        return (state["step"] + 1, state["square_avg"], state["grad_avg"] if hyper["centered"] else None,
                state["momentum_buffer"] if hyper["momentum"] > 0 else None)

    def _numpy_update(self, p, grad, state, hyper) -> None:
        step, *arrays = self._next_step("numpy", p, state, hyper)
        numpy_rmsprop_step("numpy", p.data, grad, *arrays, hyper["lr"], hyper["alpha"], hyper["eps"],
                           hyper["weight_decay"], hyper["momentum"], hyper["maximize"], **_master_argument(state))
        state["step"] = step

    def _kernel_updates(self, be, group, hyper, memo) -> None:
        steps = [self._next_step(be, p, state, hyper) for p, _, state in group]
        updates = [(p.data, grad, *arrays, state.get("master")) for (p, grad, state), (_, *arrays) in zip(group, steps)]
        _kernel_steps().rmsprop_steps(be, updates, hyper["lr"], hyper["alpha"], hyper["eps"], hyper["weight_decay"],
                                      hyper["momentum"], hyper["maximize"], memo=memo)
        for (_, _, state), (step, *_) in zip(group, steps):
            state["step"] = step


class _StepRule(Optimizer):
    """The rules whose state is a step count and the arrays `state_arrays` (made at a parameter's
    first step, filled with _initial_value(): zero), and any `initial_scalars`: each a NumPy update
    (`numpy_step`) and one of cnn_gpu.gpu.optim's *_steps (`kernel_steps`), taking a parameter's
    state arrays in `state_arrays`' order, then what _per_parameter gives, then _hyper_arguments'."""
    state_arrays: tuple = ()
    initial_scalars: dict = {}
    numpy_step = None
    kernel_steps = ""

    def _initial_value(self) -> float:
        return 0.0

    def _next_step(self, be, p, state) -> int:
        """The parameter's step count with this step, its state made where missing; the caller stores
        the count once the update's launch has run, so one that fails leaves it as it was."""
        xp, dtype = _backend.array_module(be), state_dtype(p.data.dtype)
        for key in self.state_arrays:
            if key not in state:
                state[key] = xp.full_like(p.data, self._initial_value(), dtype=dtype)
        for key, value in {"step": 0, **self.initial_scalars}.items():
            state.setdefault(key, value)
        return state["step"] + 1

    def _per_parameter(self, state, step, hyper) -> tuple:
        """(what a parameter's update takes after its state arrays, the state's numbers once it ran
        besides the step count): its step count, nothing more (subclasses)."""
        return (step,), {}

    def _hyper_arguments(self, hyper) -> tuple:
        """The update's arguments after a parameter's (subclasses)."""
        raise NotImplementedError

    def _numpy_update(self, p, grad, state, hyper) -> None:
        step = self._next_step("numpy", p, state)
        own, after = self._per_parameter(state, step, hyper)
        self.numpy_step("numpy", p.data, grad, *(state[key] for key in self.state_arrays), *own,
                        *self._hyper_arguments(hyper), **_master_argument(state))
        state.update(step=step, **after)

    def _kernel_updates(self, be, group, hyper, memo) -> None:
        steps = [self._next_step(be, p, state) for p, _, state in group]
        own = [self._per_parameter(state, step, hyper) for (_, _, state), step in zip(group, steps)]
        updates = [(p.data, grad, *(state[key] for key in self.state_arrays), *arguments, state.get("master"))
                   for (p, grad, state), (arguments, _) in zip(group, own)]
        getattr(_kernel_steps(), self.kernel_steps)(be, updates, *self._hyper_arguments(hyper), memo=memo)
        for (_, _, state), step, (_, after) in zip(group, steps, own):
            state.update(step=step, **after)


class Adagrad(_StepRule):
    """PyTorch's Adagrad; `maximize` keyword-only (PyTorch's `foreach`, `differentiable` and `fused`
    choose its implementation: foreach's place holds the backend). As PyTorch's, the constructor
    makes each parameter's state, step 0 and "sum" filled with initial_accumulator_value; a
    parameter added with a group later gets it at its first step, filled with the constructor's
    initial_accumulator_value (PyTorch's reads no group's own)."""
    state_keys = frozenset({"step", "sum"})
    state_arrays = ("sum",)
    numpy_step = staticmethod(numpy_adagrad_step)
    kernel_steps = "adagrad_steps"

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 backend=None, *, maximize=False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, maximize=maximize), backend)
        for p, state in zip(self.params, self.state):
            if isinstance(p, UninitializedParameter):   # its empty array would be the state's shape
                raise ValueError("Adagrad makes its state when it is built: a lazy module's parameters have no shape "
                                 "before its first forward; call forward with a batch first, as PyTorch asks")
            on_gpu = _backend.is_cupy_array(p.data)
            with p.data.device if on_gpu else contextlib.nullcontext():   # the parameter's GPU, whichever is current
                self._next_step("cuda" if on_gpu else "numpy", p, state)

    def _initial_value(self) -> float:
        return self._validated(self.defaults)["initial_accumulator_value"]

    @staticmethod
    def _validated(hyper: dict) -> dict:
        checked = _nonnegative(hyper, "lr", "lr_decay", "eps", "weight_decay", "initial_accumulator_value")
        checked["maximize"] = flag(hyper["maximize"], "maximize")
        return checked

    def _hyper_arguments(self, hyper) -> tuple:
        return hyper["lr"], hyper["lr_decay"], hyper["weight_decay"], hyper["eps"], hyper["maximize"]


class _BetasRule(_StepRule):
    """Adamax, NAdam, RAdam: Adam's betas (and its load of a schedule's beta1 past 1)."""
    _validated_saved = Adam._validated_saved

    @staticmethod
    def _checked(hyper: dict, beta1_below: float, *flags) -> dict:
        checked = _nonnegative(hyper, "lr", "eps", "weight_decay")
        checked["betas"] = _checked_betas(hyper["betas"], beta1_below)
        for name in ("maximize", *flags):
            checked[name] = flag(hyper[name], name)
        return checked

    @staticmethod
    def _decays(hyper) -> tuple:
        """(L2 weight decay added to the gradient, decoupled decay of the parameter)."""
        decoupled = hyper["decoupled_weight_decay"]
        return (0.0, hyper["weight_decay"]) if decoupled else (hyper["weight_decay"], 0.0)


class Adamax(_BetasRule):
    """PyTorch's Adamax (Adam with the infinity norm: the state's "exp_inf"); `maximize` keyword-only."""
    state_keys = frozenset({"step", "exp_avg", "exp_inf"})
    state_arrays = ("exp_avg", "exp_inf")
    numpy_step = staticmethod(numpy_adamax_step)
    kernel_steps = "adamax_steps"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, backend=None, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         backend)

    @staticmethod
    def _validated(hyper: dict, beta1_below: float = 1.0) -> dict:
        return _BetasRule._checked(hyper, beta1_below)

    def _hyper_arguments(self, hyper) -> tuple:
        return (hyper["lr"], *hyper["betas"], hyper["eps"], hyper["weight_decay"], hyper["maximize"])


class NAdam(_BetasRule):
    """PyTorch's NAdam (momentum_decay, decoupled_weight_decay: the parameter times 1 -
    lr*weight_decay before the update, else weight decay added to the gradient); `maximize`
    keyword-only. Its state keeps PyTorch's "mu_product", the product of the momentum cache, as a
    number rounded to FP32 (PyTorch's float32 tensor; a float64 one where torch's default dtype is)."""
    state_keys = frozenset({"step", "mu_product", "exp_avg", "exp_avg_sq"})
    scalar_state_keys = frozenset({"mu_product"})
    state_arrays = ("exp_avg", "exp_avg_sq")
    initial_scalars = {"mu_product": 1.0}
    numpy_step = staticmethod(numpy_nadam_step)
    kernel_steps = "nadam_steps"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, backend=None, *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), backend)

    @staticmethod
    def _validated(hyper: dict, beta1_below: float = 1.0) -> dict:
        checked = _BetasRule._checked(hyper, beta1_below, "decoupled_weight_decay")
        checked["momentum_decay"] = real_number(hyper["momentum_decay"], "momentum_decay", minimum=0.0)
        return checked

    def _per_parameter(self, state, step, hyper) -> tuple:
        mu_product, grad_step, avg_step = nadam_step_sizes(hyper["lr"], hyper["betas"][0], hyper["momentum_decay"],
                                                           step, state["mu_product"])
        return (step, grad_step, avg_step), {"mu_product": mu_product}

    def _hyper_arguments(self, hyper) -> tuple:
        return (hyper["lr"], *hyper["betas"], hyper["eps"], *self._decays(hyper), hyper["maximize"])


class RAdam(_BetasRule):
    """PyTorch's RAdam (decoupled_weight_decay as NAdam's): the adaptive step, rectified, where the
    variance's approximated SMA length rho_t passes 5, else the bias-corrected momentum alone
    (PyTorch's switch, on each parameter's own step count); `maximize` keyword-only."""
    state_keys = frozenset({"step", "exp_avg", "exp_avg_sq"})
    state_arrays = ("exp_avg", "exp_avg_sq")
    numpy_step = staticmethod(numpy_radam_step)
    kernel_steps = "radam_steps"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False,
                 backend=None, *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize), backend)

    @staticmethod
    def _validated(hyper: dict, beta1_below: float = 1.0) -> dict:
        return _BetasRule._checked(hyper, beta1_below, "decoupled_weight_decay")

    def _hyper_arguments(self, hyper) -> tuple:
        return (hyper["lr"], *hyper["betas"], hyper["eps"], *self._decays(hyper), hyper["maximize"])


class Adadelta(_StepRule):
    """PyTorch's Adadelta (state "square_avg" and "acc_delta"; its step count kept, as PyTorch's,
    though the rule takes none); `maximize` keyword-only (PyTorch's `capturable` too: the backend
    takes foreach's place)."""
    state_keys = frozenset({"step", "square_avg", "acc_delta"})
    state_arrays = ("square_avg", "acc_delta")
    numpy_step = staticmethod(numpy_adadelta_step)
    kernel_steps = "adadelta_steps"

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, backend=None, *, maximize=False):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize), backend)

    @staticmethod
    def _validated(hyper: dict) -> dict:
        checked = _nonnegative(hyper, "lr", "rho", "eps", "weight_decay")
        if checked["rho"] > 1:
            raise ValueError(f"invalid rho={checked['rho']}: must be in [0, 1]")
        checked["maximize"] = flag(hyper["maximize"], "maximize")
        return checked

    def _per_parameter(self, state, step, hyper) -> tuple:
        return (), {}

    def _hyper_arguments(self, hyper) -> tuple:
        return hyper["lr"], hyper["rho"], hyper["eps"], hyper["weight_decay"], hyper["maximize"]
