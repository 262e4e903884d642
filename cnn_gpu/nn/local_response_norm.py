"""LocalResponseNorm (PyTorch's nn.LocalResponseNorm): each element divided by (k + alpha * S / size)^beta,
S the sum of squares over the `size` channels around it (cnn_gpu.functional.local_response_norm)."""
from __future__ import annotations

from .. import functional as F
from ..functional._checks import real_number, whole_number
from .module import Module


class LocalResponseNorm(Module):
    """Normalization across the channels (dimension 1) of (N, C, *) inputs of 3 or more dimensions."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size = whole_number(size, "size")
        self.alpha, self.beta, self.k = (real_number(value, name)
                                         for value, name in ((alpha, "alpha"), (beta, "beta"), (k, "k")))

    def _settings(self):
        return self.size, self.alpha, self.beta, self.k

    def forward(self, x):
        self._saved = x
        return F.local_response_norm(x, *self._settings(), backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        x = self._saved_for_backward()
        return F.local_response_norm_backward(dy, x, *self._settings(), backend=self.backend)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
