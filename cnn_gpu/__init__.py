"""cnn_gpu: hand-written CUDA kernels for training convolutional networks, with a NumPy backend
for the CPU and an emulator that runs the same CUDA source on the CPU.

    import cnn_gpu
    from cnn_gpu import functional as F, nn, optim
"""
from .backend import available_backends, get_backend, set_backend, use_backend
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .precision import get_math_mode, math_mode, set_math_mode

__version__ = "0.1.0"
__all__ = ["available_backends", "get_backend", "set_backend", "use_backend", "get_math_mode", "set_math_mode",
           "math_mode", "no_grad", "enable_grad", "set_grad_enabled", "inference_mode", "is_grad_enabled",
           "functional", "nn", "optim", "emu", "distributed", "replay", "__version__"]


def __getattr__(name):
    # Submodules load on first use so `import cnn_gpu` stays cheap (no g++ or CuPy probing).
    if name in ("functional", "nn", "optim", "lr_scheduler", "amp", "emu", "gradcheck", "data", "cifar", "models",
                "checkpoint", "distributed", "replay"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cnn_gpu' has no attribute {name!r}")
