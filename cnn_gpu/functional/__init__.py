"""Functional ops (PyTorch names and semantics), each with an explicit backward pass.

    from cnn_gpu import functional as F
    y = F.conv2d(x, w, b, stride=1, padding=1)
    dx, dw, db = F.conv2d_backward(dy, x, w, stride=1, padding=1)

Every op takes `backend=None` ("numpy", "emu" or "cuda"; None: "cuda" for CuPy arrays, the current
default for NumPy arrays), checks its arguments first (ValueError/TypeError naming the argument),
returns arrays of the input's kind and dtype, and runs either the NumPy implementation here or the
CUDA kernels of cnn_gpu.gpu. float16 arrays are stored in FP16 and computed in FP32, each output
rounded once (cnn_gpu.functional._float16 states the rule and which ops have float16 kernels).

The 1-D ops (conv1d, conv_transpose1d, max_pool1d, avg_pool1d, adaptive_avg_pool1d and their backward
functions) take (N, C, L) or unbatched (C, L) signals and run the 2-D ops on the (N, C, 1, L) view.
max_unpool1d/2d (the max pools' partial inverses, one kernel file of their own) and lp_pool1d/2d (built
from avg and max pooling as PyTorch defines them) have backward functions too; the *_with_indices
functions are PyTorch's names of the max pools, which return (y, indices) anyway. conv3d and
conv3d_backward take volumes (N, C, D, H, W) or unbatched (C, D, H, W) and run kernels/conv3d_fprop.cu,
the implicit GEMM of conv2d with a depth coordinate, for all three passes. fractional_max_pool2d/3d take
PyTorch's _random_samples (or draw them from nn.init's generator) and return y, or (y, indices) with
return_indices; their backward functions need only the indices and the kernel size.

PyTorch's fuller signatures are taken too: conv and pool ops (and their backward functions) accept
one unbatched image (C, H, W) and return the same rank; conv2d(padding="same" | "valid"); linear on
(..., in_features); cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing)
with class-index or class-probability targets and (N, C, d1, ..., dk) logits; nll_loss(input,
target, weight, ignore_index, reduction); mse_loss(weight), l1_loss(weight), smooth_l1_loss(beta),
huber_loss(delta, weight) (input and target broadcast), kl_div(log_target, "batchmean"),
binary_cross_entropy(weight) and binary_cross_entropy_with_logits(weight, pos_weight) (reduction);
soft_margin_loss, hinge_embedding_loss(margin), margin_ranking_loss(margin) (two gradients),
poisson_nll_loss(log_input, full, eps), gaussian_nll_loss(full, eps) (the gradients of input and var)
and multilabel_soft_margin_loss(weight);
avg_pool2d(divisor_override); interpolate (modes "nearest", "nearest-exact", "bilinear",
"bicubic" and "area" on 4-D inputs; "nearest", "nearest-exact", "linear" and "area" on 3-D
(N, C, L) ones); softmax and log_softmax over any dim, whose backward
functions take the forward output y rather than x; pad of any trailing dims in constant mode and
of a 1-D signal, 2-D image or 3-D volume (batched or not) in the others. A loss is a Python float
for reduction "mean"/"sum" and an array for "none", and its gradient is that of the returned loss
(of its sum for "none").

Extensions beyond PyTorch's signatures: F.conv2d(..., activation="relu") applies ReLU to the output,
F.batch_norm(..., activation="relu" | "relu6" | "hardswish" | "silu") that activation, F.add_relu(a, b) is relu(a + b)
(nn.Residual with the ReLU after it), and F.relu_backward_of_sum(dy_a, dy_b, x) is
relu_backward(dy_a + dy_b, x) (that ReLU's gradient where it arrives as two summands), each one
fused kernel on the GPU backends.
"""
from .activation import (add_relu, elu, elu_backward, gelu, gelu_backward, hardsigmoid, hardsigmoid_backward, hardswish,
                         hardswish_backward, hardtanh, hardtanh_backward, leaky_relu, leaky_relu_backward, mish,
                         mish_backward, relu, relu6, relu6_backward, relu_backward, relu_backward_of_sum, sigmoid,
                         sigmoid_backward, silu, silu_backward, tanh, tanh_backward, celu, celu_, celu_backward, elu_,
                         glu, glu_backward, hardshrink, hardshrink_backward, hardtanh_, leaky_relu_, logsigmoid,
                         logsigmoid_backward, relu_, selu, selu_, selu_backward, softplus, softplus_backward,
                         softshrink, softshrink_backward, softsign, softsign_backward, tanhshrink, tanhshrink_backward,
                         threshold, threshold_, threshold_backward)
from .adaptive_pool import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, adaptive_max_pool2d,
                            adaptive_max_pool2d_backward, adaptive_avg_pool3d, adaptive_avg_pool3d_backward,
                            adaptive_max_pool3d, adaptive_max_pool3d_backward)
from .batch_norm import batch_norm, batch_norm_backward
from .dropout import (dropout, dropout1d, dropout1d_backward, dropout2d, dropout2d_backward, dropout_backward,
                      dropout3d, dropout3d_backward)
from .group_norm import group_norm, group_norm_backward
from .instance_norm import instance_norm, instance_norm_backward
from .layer_norm import layer_norm, layer_norm_backward
from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .conv3d import conv3d, conv3d_backward
from .conv_transpose3d import conv_transpose3d, conv_transpose3d_backward
from .linear import linear, linear_backward
from .loss import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, huber_loss, kl_div, l1_loss,
                   mse_loss, nll_loss, smooth_l1_loss, gaussian_nll_loss, hinge_embedding_loss, margin_ranking_loss,
                   multi_margin_loss, multilabel_soft_margin_loss, poisson_nll_loss, soft_margin_loss,
                   triplet_margin_loss, cosine_embedding_loss)
from .prelu import prelu, prelu_backward
from .folding import fold, fold_backward, unfold, unfold_backward
from .local_response_norm import local_response_norm, local_response_norm_backward
from .distance import (cosine_similarity, cosine_similarity_backward, normalize, normalize_backward, one_hot,
                       pairwise_distance, pairwise_distance_backward)
from .pool import (avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward, avg_pool3d, avg_pool3d_backward,
                   max_pool3d, max_pool3d_backward)
from .padding import pad, pad_backward
from .shuffle import (channel_shuffle, channel_shuffle_backward, pixel_shuffle, pixel_shuffle_backward, pixel_unshuffle,
                      pixel_unshuffle_backward)
from .softmax import log_softmax, log_softmax_backward, softmax, softmax_backward, softmin, softmin_backward
from .one_d import (adaptive_avg_pool1d, adaptive_avg_pool1d_backward, adaptive_max_pool1d,
                    adaptive_max_pool1d_backward, avg_pool1d, avg_pool1d_backward, conv1d, conv1d_backward,
                    conv_transpose1d, conv_transpose1d_backward, max_pool1d, max_pool1d_backward)
from .upsample import interpolate, interpolate_backward
from .unpool import max_unpool1d, max_unpool1d_backward, max_unpool2d, max_unpool2d_backward
from .lp_pool import lp_pool1d, lp_pool1d_backward, lp_pool2d, lp_pool2d_backward
from .with_indices import (adaptive_max_pool1d_with_indices, adaptive_max_pool2d_with_indices, max_pool1d_with_indices,
                           max_pool2d_with_indices)
from .rms_norm import rms_norm, rms_norm_backward
from .fractional_pool import (fractional_max_pool2d, fractional_max_pool2d_backward, fractional_max_pool2d_with_indices,
                              fractional_max_pool3d, fractional_max_pool3d_backward, fractional_max_pool3d_with_indices)

__all__ = ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward", "max_pool2d",
           "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "relu", "relu_backward", "leaky_relu",
           "leaky_relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "silu", "silu_backward",
           "gelu", "gelu_backward", "hardtanh", "hardtanh_backward", "relu6", "relu6_backward", "hardsigmoid",
           "hardsigmoid_backward", "hardswish", "hardswish_backward", "elu", "elu_backward", "mish", "mish_backward",
           "add_relu", "relu_backward_of_sum", "linear", "linear_backward", "cross_entropy", "nll_loss", "mse_loss",
           "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "batch_norm", "batch_norm_backward", "group_norm",
           "group_norm_backward", "layer_norm", "layer_norm_backward", "dropout", "dropout_backward", "dropout2d",
           "dropout2d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d",
           "adaptive_max_pool2d_backward", "interpolate", "interpolate_backward", "softmax", "softmax_backward",
           "log_softmax", "log_softmax_backward", "conv1d", "conv1d_backward", "conv_transpose1d",
           "conv_transpose1d_backward", "max_pool1d", "max_pool1d_backward", "avg_pool1d", "avg_pool1d_backward",
           "adaptive_avg_pool1d", "adaptive_avg_pool1d_backward", "pad", "pad_backward", "pixel_shuffle",
           "pixel_shuffle_backward", "pixel_unshuffle", "pixel_unshuffle_backward", "channel_shuffle",
           "channel_shuffle_backward", "instance_norm", "instance_norm_backward", "prelu", "prelu_backward",
           "dropout1d", "dropout1d_backward", "adaptive_max_pool1d", "adaptive_max_pool1d_backward", "dropout3d",
           "dropout3d_backward", "max_pool3d", "max_pool3d_backward", "avg_pool3d", "avg_pool3d_backward",
           "adaptive_avg_pool3d", "adaptive_avg_pool3d_backward", "adaptive_max_pool3d",
           "adaptive_max_pool3d_backward", "fold", "fold_backward", "unfold", "unfold_backward", "local_response_norm",
           "local_response_norm_backward", "normalize", "normalize_backward", "cosine_similarity",
           "cosine_similarity_backward", "pairwise_distance", "pairwise_distance_backward", "one_hot", "max_unpool1d",
           "max_unpool1d_backward", "max_unpool2d", "max_unpool2d_backward", "lp_pool1d", "lp_pool1d_backward",
           "lp_pool2d", "lp_pool2d_backward", "max_pool1d_with_indices", "max_pool2d_with_indices",
           "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "celu", "celu_", "celu_backward",
           "elu_", "glu", "glu_backward", "hardshrink", "hardshrink_backward", "hardtanh_", "leaky_relu_",
           "logsigmoid", "logsigmoid_backward", "relu_", "selu", "selu_", "selu_backward", "softplus",
           "softplus_backward", "softshrink", "softshrink_backward", "softsign", "softsign_backward", "tanhshrink",
           "tanhshrink_backward", "threshold", "threshold_", "threshold_backward", "gaussian_nll_loss",
           "hinge_embedding_loss", "margin_ranking_loss", "multi_margin_loss", "multilabel_soft_margin_loss",
           "poisson_nll_loss", "soft_margin_loss", "triplet_margin_loss", "cosine_embedding_loss", "softmin",
           "softmin_backward", "rms_norm", "rms_norm_backward", "conv3d", "conv3d_backward", "conv_transpose3d",
           "conv_transpose3d_backward", "fractional_max_pool2d", "fractional_max_pool2d_backward",
           "fractional_max_pool2d_with_indices", "fractional_max_pool3d", "fractional_max_pool3d_backward",
           "fractional_max_pool3d_with_indices"]
