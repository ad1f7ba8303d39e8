"""Every op family; importing this package registers all ops.

Public functions are re-exported here and from :mod:`asg.core`.
"""

from .activation import cross_entropy, log_softmax, softmax
from .conv import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, conv2d, conv_transpose2d, max_pool2d
from .elementwise import (
    abs,
    add,
    cast,
    clamp,
    div,
    elu,
    equal,
    erf,
    exp,
    gelu,
    greater,
    leaky_relu,
    less,
    log,
    maximum,
    minimum,
    mul,
    neg,
    pow,
    relu,
    rsqrt,
    sigmoid,
    sign,
    silu,
    softplus,
    sqrt,
    sub,
    tanh,
    where,
)
from .layers import embedding, linear
from .linalg import matmul
from .normalization import BatchNormOutput, batch_norm, layer_norm
from .random import RNG, bernoulli, dropout, fold_in, random_normal, random_uniform, split_key
from .reduction import argmax, argmin, logsumexp, max, mean, min, sum, var
from .shape import (
    broadcast_to,
    concat,
    flatten,
    full,
    gather,
    getitem,
    index_select,
    one_hot,
    ones,
    ones_like,
    pad,
    permute,
    reshape,
    squeeze,
    stack,
    stop_gradient,
    sum_to,
    swapaxes,
    take_along_axis,
    transpose,
    unsqueeze,
    zeros,
    zeros_like,
)

__all__ = [
    "abs", "add", "argmax", "argmin", "broadcast_to", "cast", "clamp", "concat", "cross_entropy", "div", "elu",
    "equal", "erf", "exp", "flatten", "full", "gather", "gelu", "getitem", "greater", "index_select",
    "leaky_relu", "less", "log", "log_softmax", "logsumexp", "matmul", "max", "maximum", "mean", "min", "minimum",
    "mul", "neg", "one_hot", "ones", "ones_like", "pad", "permute", "pow", "relu", "reshape", "rsqrt", "sigmoid",
    "sign", "silu", "softmax", "softplus", "sqrt", "squeeze", "stack", "stop_gradient", "sub", "sum", "sum_to",
    "swapaxes", "take_along_axis", "tanh", "transpose", "unsqueeze", "var", "where", "zeros", "zeros_like",
    "linear", "embedding", "layer_norm", "batch_norm", "BatchNormOutput", "RNG", "bernoulli", "dropout",
    "fold_in", "random_normal", "random_uniform", "split_key",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "conv2d", "conv_transpose2d", "max_pool2d",
]
