"""The optimizers' checks: a few steps of each torch.optim rule the kernels of kernels/optim.cu run
(SGD with and without momentum, Adam, AdamW, RMSprop, Adagrad, Adamax, NAdam, RAdam, Adadelta) on
parameters of mixed sizes, against the NumPy backend's steps. An update has no gradient of its own:
these entries have no finite-difference column (grads empty)."""
from __future__ import annotations

from .spec import OpCheck, _ints

STEPS = 3
# each optimizer with the options it is checked with, its less common ones included
OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.05, weight_decay=0.01)),
    "sgd_momentum": ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.01, nesterov=False)),
    "adam": ("Adam", dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.01, amsgrad=True)),
    "adamw": ("AdamW", dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.3)),
    "rmsprop": ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01)),
    "adagrad": ("Adagrad", dict(lr=0.05, lr_decay=0.1, weight_decay=0.01, initial_accumulator_value=0.1)),
    "adamax": ("Adamax", dict(lr=0.01, weight_decay=0.01, maximize=True)),
    "nadam": ("NAdam", dict(lr=0.01, weight_decay=0.05, momentum_decay=0.01)),
    "radam": ("RAdam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05, decoupled_weight_decay=True)),
    "adadelta": ("Adadelta", dict(weight_decay=0.01, maximize=True)),
}


def _optimizer_config(rng):
    """One to three parameters of 1 to 3 dims (a launch takes up to 8), STEPS gradients of each."""
    return dict(shapes=[_ints(rng, 1, 9, int(rng.integers(1, 4))) for _ in range(int(rng.integers(1, 4)))])


OPTIMIZER_EDGES = (dict(shapes=[(700,)] * 9 + [(3, 5)]),)   # two launches: 8 parameters and 2
OPTIMIZER_LARGE = (dict(shapes=[(256, 512), (256,), (1000, 256)]),)


def _optimizer_inputs(cfg, rng):
    arrays = {f"param{i}": rng.standard_normal(shape) for i, shape in enumerate(cfg["shapes"])}
    arrays.update({f"grad{step}_{i}": rng.standard_normal(shape) for step in range(STEPS)
                   for i, shape in enumerate(cfg["shapes"])})
    return arrays


def _optimizer_run(name):
    """STEPS steps of the optimizer on copies of the parameters (the inputs stay as they are)."""
    kind, options = OPTIMIZERS[name]

    def run(a, cfg, be):
        from .. import optim
        from ..nn import Parameter
        params = [Parameter(a[f"param{i}"].copy(), backend=be) for i in range(len(cfg["shapes"]))]
        optimizer = getattr(optim, kind)(params, **options)
        for step in range(STEPS):
            for i, p in enumerate(params):
                p.grad = a[f"grad{step}_{i}"]
            optimizer.step()
        return {f"param{i}": p.data for i, p in enumerate(params)}
    return run


CHECKS = tuple(OpCheck(name, _optimizer_config, OPTIMIZER_EDGES, _optimizer_inputs, _optimizer_run(name), "param0",
                       None, {}, large_configs=OPTIMIZER_LARGE) for name in OPTIMIZERS)
