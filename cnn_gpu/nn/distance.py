"""CosineSimilarity and PairwiseDistance (PyTorch's nn.CosineSimilarity / nn.PairwiseDistance): layers of
two inputs, forward(x1, x2) -> out and backward(dout) -> (dx1, dx2) (cnn_gpu.functional.distance)."""
from __future__ import annotations

import math

from .. import functional as F
from ..functional._checks import flag, real_number
from .module import Module


class _TwoInputs(Module):
    """A layer of x1 and x2 computing _op(x1, x2, *_settings()), its gradients by _op_backward."""

    def forward(self, x1, x2):
        out = self._op(x1, x2, *self._settings(), backend=self.backend)
        self._saved = (x1, x2)
        return out

    def backward(self, dout, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        x1, x2 = self._saved_for_backward()
        return self._op_backward(dout, x1, x2, *self._settings(), backend=self.backend)


class CosineSimilarity(_TwoInputs):
    """The cosine similarity of x1 and x2 (of one shape) along `dim`."""
    _op, _op_backward = staticmethod(F.cosine_similarity), staticmethod(F.cosine_similarity_backward)

    def __init__(self, dim: int = 1, eps: float = 1e-8):
        super().__init__()
        self.dim, self.eps = dim, real_number(eps, "eps")

    def _settings(self):
        return self.dim, self.eps


class PairwiseDistance(_TwoInputs):
    """||x1 - x2 + eps||_p along the last dimension of x1 and x2 (of one shape); p is kept as `norm`,
    PyTorch's attribute name."""
    _op, _op_backward = staticmethod(F.pairwise_distance), staticmethod(F.pairwise_distance_backward)

    def __init__(self, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False):
        super().__init__()
        self.norm = p if p == math.inf else real_number(p, "p")
        self.eps, self.keepdim = real_number(eps, "eps"), flag(keepdim, "keepdim")

    def _settings(self):
        return self.norm, self.eps, self.keepdim
