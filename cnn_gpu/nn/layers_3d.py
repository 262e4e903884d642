"""The 3-D layers of volumes (video, medical images: (N, C, D, H, W) or unbatched (C, D, H, W)):
BatchNorm3d (batch norm's (N, C, *) kernels), Dropout3d (dropout2d's plane masks) and the 3-D pools,
with PyTorch's arguments, sizes kept as PyTorch keeps them (triples) and state dicts."""
from __future__ import annotations

from .. import functional as F
from ..functional.dropout import check_volumes_input
from .layers import Dropout, _BatchNorm


class BatchNorm3d(_BatchNorm):
    """Batch normalisation over (N, C, D, H, W): statistics per channel over N, D, H and W. See _BatchNorm."""

    _input_ranks = (5,)
    _expected_input = "a 5-D input (N, C, D, H, W)"


class Dropout3d(Dropout):
    """Channel dropout of volumes (F.dropout3d): each (n, c) volume of an (N, C, D, H, W) input (each
    channel of a (C, D, H, W) one) kept or zeroed whole, one mask a training call from (seed, step),
    with Dropout's step, state_dict and seed. PyTorch 2.13's rank rule in every mode: other ranks
    warn and are taken as unbatched."""

    _op, _op_backward = staticmethod(F.dropout3d), staticmethod(F.dropout3d_backward)

    def forward(self, x):
        # F.dropout3d warns itself where it runs (training with p > 0): once a call either way
        check_volumes_input(x, "x", warn=not (self.training and self.p))
        return super().forward(x)
