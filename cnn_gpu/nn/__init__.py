"""Layers, containers and losses with explicit forward/backward (see the API contract).

    from cnn_gpu import nn
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(model(x), labels)
    model.zero_grad()
    model.backward(loss_fn.backward())
"""
from . import hooks, init, utils
from .containers import ModuleDict, ModuleList, Residual, Sequential, ParameterDict, ParameterList
from .rms_norm import RMSNorm
from .lazy import (LazyBatchNorm1d, LazyBatchNorm2d, LazyConv1d, LazyConv2d, LazyConv3d, LazyConvTranspose1d,
                   LazyConvTranspose2d, LazyConvTranspose3d, LazyInstanceNorm1d, LazyInstanceNorm2d, LazyLinear)
from .layers import (GELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, CircularPad2d,
                     CircularPad3d, ConstantPad2d, ConstantPad3d, Conv2d, ConvTranspose2d, Dropout, Dropout2d, Flatten,
                     GroupNorm, Hardsigmoid, Hardswish, Hardtanh, Identity, LayerNorm, LeakyReLU, Linear, LogSoftmax,
                     MaxPool2d, Mish, ReflectionPad2d, ReflectionPad3d, ReLU, ReLU6, ReplicationPad2d, ReplicationPad3d,
                     SiLU, Sigmoid, Softmax, Tanh, Upsample, UpsamplingBilinear2d, UpsamplingNearest2d, ZeroPad2d,
                     ZeroPad3d, ELU, CELU, GLU, SELU, Hardshrink, LogSigmoid, Softmax2d, Softmin, Softplus, Softshrink,
                     Softsign, Tanhshrink, Threshold)
from .instance_norm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .layers_3d import (BatchNorm3d, Conv3d, ConvTranspose3d, Dropout3d, MaxPool3d, AdaptiveAvgPool3d,
                        AdaptiveMaxPool3d, AvgPool3d)
from .layers_1d import (AdaptiveAvgPool1d, AdaptiveMaxPool1d, Dropout1d, AvgPool1d, CircularPad1d, ConstantPad1d,
                        Conv1d, ConvTranspose1d, MaxPool1d, ReflectionPad1d, ReplicationPad1d, ZeroPad1d)
from .lp_pool import LPPool1d, LPPool2d
from .loss import (CrossEntropyLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss, NLLLoss, SmoothL1Loss, BCELoss,
                   BCEWithLogitsLoss, GaussianNLLLoss, HingeEmbeddingLoss, MarginRankingLoss, MultiLabelSoftMarginLoss,
                   MultiMarginLoss, PoissonNLLLoss, SoftMarginLoss, TripletMarginLoss, CosineEmbeddingLoss)
from .module import Module, Parameter, UninitializedParameter
from .prelu import PReLU
from .fold import Fold, Unfold
from .local_response_norm import LocalResponseNorm
from .distance import CosineSimilarity, PairwiseDistance
from .sync_batch_norm import SyncBatchNorm
from .rearrange import ChannelShuffle, PixelShuffle, PixelUnshuffle, Unflatten
from .unpool import MaxUnpool1d, MaxUnpool2d
from .fractional_pool import FractionalMaxPool2d, FractionalMaxPool3d

__all__ = ["hooks", "init", "utils", "Module", "Parameter", "Sequential", "Residual", "ModuleList", "ModuleDict",
           "ELU", "GELU", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d",
           "Conv2d", "ConvTranspose2d", "Dropout", "Dropout2d", "Flatten", "GroupNorm", "Hardsigmoid", "Hardswish",
           "Hardtanh", "Identity", "LayerNorm", "LeakyReLU", "Linear", "LogSoftmax", "MaxPool2d", "Mish", "ReLU",
           "ReLU6", "SiLU", "Sigmoid", "Softmax", "Tanh", "Upsample", "ZeroPad2d", "ConstantPad2d", "ReflectionPad2d",
           "ReplicationPad2d", "CircularPad2d", "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss",
           "HuberLoss", "KLDivLoss", "BCELoss", "BCEWithLogitsLoss", "Conv1d", "ConvTranspose1d", "MaxPool1d",
           "AvgPool1d", "AdaptiveAvgPool1d", "ZeroPad1d", "ConstantPad1d", "ReflectionPad1d", "ReplicationPad1d",
           "CircularPad1d", "ZeroPad3d", "ConstantPad3d", "ReflectionPad3d", "ReplicationPad3d", "CircularPad3d",
           "PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "Unflatten", "InstanceNorm1d", "InstanceNorm2d",
           "PReLU", "AdaptiveMaxPool1d", "Dropout1d", "UpsamplingNearest2d", "UpsamplingBilinear2d", "BatchNorm3d",
           "InstanceNorm3d", "Dropout3d", "MaxPool3d", "AvgPool3d", "AdaptiveAvgPool3d", "AdaptiveMaxPool3d", "Fold",
           "Unfold", "LocalResponseNorm", "CosineSimilarity", "PairwiseDistance", "MaxUnpool1d", "MaxUnpool2d",
           "LPPool1d", "LPPool2d", "ParameterDict", "ParameterList", "RMSNorm", "LazyBatchNorm1d", "LazyBatchNorm2d",
           "LazyConv1d", "LazyConv2d", "LazyConvTranspose2d", "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyLinear",
           "CELU", "GLU", "SELU", "Hardshrink", "LogSigmoid", "Softmax2d", "Softmin", "Softplus", "Softshrink",
           "Softsign", "Tanhshrink", "Threshold", "GaussianNLLLoss", "HingeEmbeddingLoss", "MarginRankingLoss",
           "MultiLabelSoftMarginLoss", "MultiMarginLoss", "PoissonNLLLoss", "SoftMarginLoss", "TripletMarginLoss",
           "CosineEmbeddingLoss", "UninitializedParameter", "Conv3d", "SyncBatchNorm", "ConvTranspose3d", "LazyConv3d",
           "LazyConvTranspose3d", "FractionalMaxPool2d", "FractionalMaxPool3d", "LazyConvTranspose1d"]
