"""PReLU (PyTorch's nn.PReLU): LeakyReLU with learned slopes, one for all channels or one per channel."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..functional._checks import real_number, whole_number
from .layers import _float_dtype
from .module import Module, Parameter


class PReLU(Module):
    """x where x > 0, else weight * x; weight (num_parameters,) starts at `init` (PyTorch's 0.25).
    num_parameters is 1 or the input's channels (dimension 1)."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, dtype=np.float32):
        super().__init__()
        self.num_parameters = whole_number(num_parameters, "num_parameters")
        self.init = real_number(init, "init")
        self.weight = Parameter(np.full(self.num_parameters, self.init, _float_dtype(dtype)))

    def forward(self, x):
        self._saved = x
        return F.prelu(x, self.weight.data, backend=self.backend)

    def backward(self, dy, input_grad=True):
        if self._nothing_to_compute(input_grad):
            return None
        x = self._saved_for_backward()
        dx, dweight = F.prelu_backward(dy, x, self.weight.data, backend=self.backend)
        self.weight.accumulate_grad(dweight)
        return dx if input_grad else None

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"
