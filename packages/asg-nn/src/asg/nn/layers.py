"""Layers with PyTorch's names, parameter layouts and default initialisation.

Weights are laid out as in PyTorch (``Linear.weight`` is ``(out_features, in_features)``, ``Conv2d.weight``
is ``(out, in / groups, kH, kW)``), so a PyTorch ``state_dict`` loads by name with no renaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

import asg.core as ag
from asg.core.shapes import format_shape

from . import functional as F
from . import init
from .module import Module, Parameter

__all__ = [
    "ELU",
    "GELU",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "ConvTranspose2d",
    "Dropout",
    "Dropout2d",
    "Embedding",
    "EmbeddingBag",
    "Flatten",
    "GroupNorm",
    "Identity",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MaxPool2d",
    "RMSNorm",
    "ReLU",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "SpatialDropout",
    "Swish",
    "Tanh",
]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _empty(*shape: int) -> ag.Tensor:
    return Parameter(np.zeros(shape, np.float32))


def _positive(what: str, **values: Any) -> None:
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{what}: {k} must be a positive integer, got {v!r}")


# --------------------------------------------------------------------------- linear and conv
class Linear(Module):
    """``y = x W^T + b`` (``torch.nn.Linear``).

    Attributes:
        weight: ``(out_features, in_features)``, ``U(-1/sqrt(in), 1/sqrt(in))`` (PyTorch's kaiming_uniform(a=sqrt 5)).
        bias: ``(out_features,)``, same bound; absent with ``bias=False``.

    Shape: ``(*, in_features)`` -> ``(*, out_features)``.

    >>> import asg.core as ag
    >>> from asg import nn
    >>> nn.Linear(784, 10)(ag.input("x", ("B", 784))).shape
    ('B', 10)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        _positive("Linear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty(out_features, in_features)
        self.bias = _empty(out_features) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw ``weight`` and ``bias`` with PyTorch's defaults (see the class attributes)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies the linear map: ``(*, in_features) -> (*, out_features)``."""
        return ag.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        """``in_features=…, out_features=…, bias=…`` for ``repr``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Conv2d(Module):
    """2-d convolution (``torch.nn.Conv2d``): stride, padding (int, pair or ``"same"``/``"valid"``), dilation, groups.

    Attributes:
        weight: ``(out_channels, in_channels / groups, kH, kW)``; bias ``(out_channels,)``;
            both ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in / groups * kH * kW``.

    Shape: ``(N, C_in, H, W)`` -> ``(N, C_out, H_out, W_out)``.

    >>> import asg.core as ag
    >>> from asg import nn
    >>> nn.Conv2d(3, 8, 3, padding="same")(ag.input("x", ("N", 3, 32, 32))).shape
    ('N', 8, 32, 32)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        _positive("Conv2d", in_channels=in_channels, out_channels=out_channels, groups=groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels={in_channels} and out_channels={out_channels} must be divisible by groups={groups}"
            )
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: only padding_mode='zeros' is supported, got {padding_mode!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.groups = groups
        self.weight = _empty(out_channels, in_channels // groups, *self.kernel_size)
        self.bias = _empty(out_channels) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw ``weight`` and ``bias`` with PyTorch's defaults (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(tuple(self.weight.shape))
            bound = 1.0 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Convolves ``x``: ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``."""
        return ag.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        """The channels, kernel size, stride, padding, dilation and groups, for ``repr``."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}"
        )


class ConvTranspose2d(Module):
    """Transposed 2-d convolution (``torch.nn.ConvTranspose2d``).

    Attributes:
        weight: ``(in_channels, out_channels / groups, kH, kW)`` as in PyTorch; PyTorch's init
            (its fan_in is computed from dimension 1: ``out / groups * kH * kW``).

    Shape: ``(N, C_in, H, W)`` -> ``(N, C_out, (H - 1) s - 2 p + d (k - 1) + output_padding + 1, ...)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        output_padding: int | Sequence[int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | Sequence[int] = 1,
    ) -> None:
        super().__init__()
        _positive("ConvTranspose2d", in_channels=in_channels, out_channels=out_channels, groups=groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"ConvTranspose2d: in_channels={in_channels} and out_channels={out_channels} must be "
                f"divisible by groups={groups}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding = _pair(stride), _pair(padding)
        self.output_padding, self.dilation = _pair(output_padding), _pair(dilation)
        self.groups = groups
        self.weight = _empty(in_channels, out_channels // groups, *self.kernel_size)
        self.bias = _empty(out_channels) if bias else None
        self.reset_parameters()

    reset_parameters = Conv2d.reset_parameters

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies the transposed convolution: ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``."""
        return ag.conv_transpose2d(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            dilation=self.dilation,
            groups=self.groups,
        )


# --------------------------------------------------------------------------- pooling
class MaxPool2d(Module):
    """Max pooling (``torch.nn.MaxPool2d``); the gradient goes to each window's first maximum."""

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Takes the maximum of each window: ``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        return ag.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class AvgPool2d(Module):
    """Average pooling (``torch.nn.AvgPool2d``)."""

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Averages each window: ``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        return ag.avg_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )


class AdaptiveAvgPool2d(Module):
    """Average over PyTorch's adaptive bins to a fixed ``output_size``."""

    def __init__(self, output_size: int | Sequence[int | None]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Averages each adaptive bin: ``(N, C, H, W) -> (N, C, *output_size)``."""
        return ag.adaptive_avg_pool2d(x, self.output_size)


class AdaptiveMaxPool2d(Module):
    """Maximum over PyTorch's adaptive bins to a fixed ``output_size``."""

    def __init__(self, output_size: int | Sequence[int | None]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Takes the maximum of each adaptive bin: ``(N, C, H, W) -> (N, C, *output_size)``."""
        return ag.adaptive_max_pool2d(x, self.output_size)


# --------------------------------------------------------------------------- normalisation
class _BatchNorm(Module):
    _dims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        _positive(type(self).__name__, num_features=num_features)
        if momentum is None or not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"{type(self).__name__}: momentum must be a number in [0, 1] (the cumulative average "
                f"momentum=None is not supported), got {momentum!r}"
            )
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, np.float32))
            self.register_buffer("running_var", np.ones(num_features, np.float32))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Normalises ``x`` ``(N, C, *)`` per channel: with the batch's statistics while training
        (recording the running-statistics updates), with the running statistics in eval mode.
        """
        x = ag.as_tensor(x)
        if x.ndim not in self._dims:
            raise ag.ShapeError(
                f"{type(self).__name__}({self.num_features}) at {self.path or 'the root'}: expected a "
                f"{' or '.join(f'{d}-d' for d in self._dims)} input, got {x.node.label} {format_shape(x.shape)}"
            )
        use_batch = self.training or not self.track_running_stats
        y, new_mean, new_var = ag.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=use_batch,
            momentum=self.momentum,
            eps=self.eps,
        )
        if self.training and self.track_running_stats:
            self.add_update(self.running_mean, new_mean)
            self.add_update(self.running_var, new_var)
            self.add_update(self.num_batches_tracked, self.num_batches_tracked + 1)
        return y

    def extra_repr(self) -> str:
        """``num_features, eps=…, momentum=…, affine=…`` for ``repr``."""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` or ``(N, C, L)`` (``torch.nn.BatchNorm1d``).

    Training mode normalises with batch statistics and, through :func:`asg.nn.capture_updates`, updates
    ``running_mean``/``running_var`` (unbiased variance) with ``momentum`` and counts
    ``num_batches_tracked``; eval mode uses the running statistics.
    """

    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of ``(N, C, H, W)`` (``torch.nn.BatchNorm2d``); see :class:`BatchNorm1d`."""

    _dims = (4,)


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` (``torch.nn.LayerNorm``); weight 1, bias 0."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = Parameter(np.ones(shape, np.float32)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape, np.float32)) if elementwise_affine and bias else None

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Normalises over the trailing ``normalized_shape`` axes, then scales and shifts; shape kept."""
        return ag.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        """``normalized_shape, eps=…`` for ``repr``."""
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNorm(Module):
    """Root-mean-square normalisation (``torch.nn.RMSNorm``); ``eps=None`` is the dtype's machine epsilon."""

    def __init__(
        self, normalized_shape: int | Sequence[int], eps: float | None = None, elementwise_affine: bool = True
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = Parameter(np.ones(shape, np.float32)) if elementwise_affine else None

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Divides by the root mean square over the trailing ``normalized_shape`` axes, then scales; shape
        kept.
        """
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class GroupNorm(Module):
    """Group normalisation (``torch.nn.GroupNorm``): weight 1 and bias 0, per channel."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        _positive("GroupNorm", num_groups=num_groups, num_channels=num_channels)
        if num_channels % num_groups:
            raise ValueError(
                f"GroupNorm: num_channels={num_channels} must be divisible by num_groups={num_groups}"
            )
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = Parameter(np.ones(num_channels, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_channels, np.float32)) if affine else None

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Normalises each group of channels of ``(N, C, *)`` per sample, then scales and shifts per channel."""
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


# --------------------------------------------------------------------------- dropout
class _RandomLayer(Module):
    """A layer that draws random numbers: its own RNG stream, advanced once per training step."""

    def __init__(self) -> None:
        super().__init__()
        self._rng: ag.RNG | None = None

    def _key(self) -> ag.Tensor:
        if self._rng is None:
            self._make_rng(int(init.default_generator().integers(2**62)))
        assert self._rng is not None
        self.add_update(self._rng.counter, self._rng.counter + 1)
        return self._rng.next_key()

    def _make_rng(self, seed: int) -> None:
        self._rng = ag.RNG(seed, name=f"{self.path or type(self).__name__}.rng")

    def rng_state(self) -> dict[str, int] | None:
        """``{"seed", "counter"}`` of the layer's random stream (None before it first drew numbers)."""
        if self._rng is None:
            return None
        return {"seed": self._rng.seed, "counter": int(self._rng.counter.numpy())}

    def load_rng_state(self, state: dict[str, int]) -> None:
        """Continue the stream saved by :meth:`rng_state` (before a graph using this layer is built)."""
        if self._rng is None:
            self._make_rng(int(state["seed"]))
        elif self._rng.seed != int(state["seed"]):
            raise ValueError(
                f"{type(self).__name__} at {self.path or 'the root'}: its random stream (seed {self._rng.seed}) "
                f"is already compiled into a graph; load the checkpoint (seed {state['seed']}) before building the step"
            )
        assert self._rng is not None
        self._rng.counter.assign(np.int64(state["counter"]))


class Dropout(_RandomLayer):
    """Zero elements with probability ``p`` while training and scale the rest by ``1 / (1 - p)``.

    Each Dropout layer has its own random stream (seeded from :func:`asg.nn.init.manual_seed`), advanced
    by one every training step through the updates collected by :func:`asg.nn.capture_updates`.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"{type(self).__name__}: p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Drops and rescales elements while training (drawing a fresh mask each step); the identity in eval
        mode.
        """
        if not self.training or self.p == 0:
            return ag.as_tensor(x)
        return ag.dropout(x, self.p, self._key())

    def extra_repr(self) -> str:
        """``p=…`` for ``repr``."""
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Zero whole channels of ``(N, C, H, W)`` with probability ``p`` (spatial dropout)."""

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Drops whole channels of ``(N, C, H, W)`` while training; the identity in eval mode."""
        if not self.training or self.p == 0:
            return ag.as_tensor(x)
        return F.dropout2d(x, self.p, self._key())


SpatialDropout = Dropout2d


# --------------------------------------------------------------------------- embedding and shape
class Embedding(Module):
    """A lookup table (``torch.nn.Embedding``): weight ``(num_embeddings, embedding_dim)`` ~ N(0, 1).

    ``padding_idx``: that row is initialised to zeros and receives no gradient.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        _positive("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"Embedding: padding_idx={padding_idx} is out of range for {num_embeddings} embeddings"
                )
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = _empty(num_embeddings, embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw ``weight`` from N(0, 1), zeroing the ``padding_idx`` row."""
        init.normal_(self.weight)
        if self.padding_idx is not None:
            w = self.weight.numpy()
            w[self.padding_idx] = 0.0

    def forward(self, idx: ag.Tensor) -> ag.Tensor:
        """Looks up rows of ``weight``: int indices ``(*)`` -> ``(*, embedding_dim)``."""
        return ag.embedding(idx, self.weight, self.padding_idx)


class EmbeddingBag(Module):
    """Sums, means or maxima of bags of embeddings (``torch.nn.EmbeddingBag``), weight ~ N(0, 1).

    ``forward(input, offsets=None, per_sample_weights=None)``: a 2-d ``input`` ``(B, L)`` holds one bag
    per row; a 1-d ``input`` ``(N,)`` is cut into bags starting at ``offsets`` ``(B,)`` (``(B + 1,)`` with
    ``include_last_offset``). ``per_sample_weights`` (same shape as input) scale entries in ``"sum"`` mode.
    Entries equal to ``padding_idx`` are left out of their bag; an empty bag gives zeros. Offsets are a
    graph value, so one compiled function takes any bag layout.

    Shape: -> ``(B, embedding_dim)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: str = "mean",
        include_last_offset: bool = False,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        _positive("EmbeddingBag", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"EmbeddingBag: mode must be 'sum', 'mean' or 'max', got {mode!r}")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"EmbeddingBag: padding_idx={padding_idx} is out of range for {num_embeddings}"
                )
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim, self.mode = num_embeddings, embedding_dim, mode
        self.include_last_offset, self.padding_idx = include_last_offset, padding_idx
        self.weight = _empty(num_embeddings, embedding_dim)
        init.normal_(self.weight)
        if padding_idx is not None:
            self.weight.numpy()[padding_idx] = 0.0

    def forward(self, input: ag.Tensor, offsets: Any = None, per_sample_weights: Any = None) -> ag.Tensor:
        """Reduces each bag of embeddings (see the class docstring for the input layouts):
        -> ``(B, embedding_dim)``.
        """
        idx = ag.as_tensor(input, "int64")
        where = f"EmbeddingBag at {self.path or 'the root'}: input {idx.node.label} {format_shape(idx.shape)}"
        if per_sample_weights is not None and self.mode != "sum":
            raise ValueError(f"{where}: per_sample_weights needs mode='sum', the mode is {self.mode!r}")
        rows = ag.embedding(idx, self.weight)  # (*input, D)
        if idx.ndim == 2:
            if offsets is not None:
                raise ValueError(f"{where}: a 2-d input holds one bag per row; offsets must be None")
            member = (
                ag.ones(idx.shape, "bool") if self.padding_idx is None else idx != self.padding_idx
            )  # (B, L)
            bag_axis, values = 1, rows  # (B, L, D)
        elif idx.ndim == 1:
            if offsets is None:
                raise ValueError(f"{where}: a 1-d input needs offsets (the start of each bag)")
            offsets = ag.as_tensor(offsets, "int64")
            if self.include_last_offset:
                offsets = offsets[:-1]
            position = ag.arange(idx.shape[0])  # (N,)
            bag_of = (ag.unsqueeze(offsets, 0) <= ag.unsqueeze(position, 1)).astype("int64").sum(
                1
            ) - 1  # (N,)
            member = ag.unsqueeze(bag_of, 0) == ag.unsqueeze(ag.arange(offsets.shape[0]), 1)  # (B, N)
            if self.padding_idx is not None:
                member = member & ag.unsqueeze(idx != self.padding_idx, 0)
            bag_axis, values = 1, ag.unsqueeze(rows, 0)  # (1, N, D)
        else:
            raise ag.ShapeError(f"{where}: expected (B, L) bags or a flat (N,) input with offsets")
        weights = ag.cast(member, rows.dtype)
        if per_sample_weights is not None:
            psw = ag.as_tensor(per_sample_weights, rows.dtype)
            weights = weights * (psw if idx.ndim == 2 else ag.unsqueeze(psw, 0))
        count = ag.cast(member, rows.dtype).sum(bag_axis, keepdims=True)  # (B, 1)
        if self.mode == "max":
            picked = ag.where(ag.unsqueeze(member, -1), values, -math.inf).max(bag_axis)
            return ag.where(count > 0, picked, 0.0)
        if idx.ndim == 2:
            total = (values * ag.unsqueeze(weights, -1)).sum(bag_axis)
        else:
            total = ag.matmul(weights, rows)  # (B, N) @ (N, D)
        if self.mode == "sum":
            return total
        return total / ag.maximum(count, 1.0)


class Flatten(Module):
    """Flatten axes ``start_dim..end_dim`` into one (``torch.nn.Flatten``; default keeps the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Flattens axes ``start_dim..end_dim`` into one."""
        return ag.flatten(x, self.start_dim, self.end_dim)


class Identity(Module):
    """Returns its input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Any) -> Any:
        """Returns ``x`` unchanged."""
        return x


# --------------------------------------------------------------------------- activations
class ReLU(Module):
    """``max(x, 0)``."""

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies ``max(x, 0)`` elementwise."""
        return F.relu(x)


class LeakyReLU(Module):
    """``x`` if positive else ``negative_slope * x``."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies the leaky ReLU elementwise."""
        return F.leaky_relu(x, self.negative_slope)


class GELU(Module):
    """GELU, ``approximate="none"`` (erf) or ``"tanh"``."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies GELU elementwise (erf, or the tanh approximation)."""
        return F.gelu(x, self.approximate)


class SiLU(Module):
    """``x * sigmoid(x)``."""

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies ``x * sigmoid(x)`` elementwise."""
        return F.silu(x)


Swish = SiLU


class Tanh(Module):
    """Hyperbolic tangent."""

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies ``tanh`` elementwise."""
        return F.tanh(x)


class Sigmoid(Module):
    """Logistic sigmoid."""

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies the logistic sigmoid elementwise."""
        return F.sigmoid(x)


class ELU(Module):
    """``x`` if positive else ``alpha * (exp(x) - 1)``."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies ELU elementwise."""
        return F.elu(x, self.alpha)


class Softplus(Module):
    """``log(1 + exp(beta x)) / beta``, linear above ``threshold``."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies softplus elementwise."""
        return F.softplus(x, self.beta, self.threshold)


class Softmax(Module):
    """Softmax along ``dim`` (default the last axis)."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies softmax along ``dim``; shape kept."""
        return F.softmax(x, self.dim)


class LogSoftmax(Module):
    """Log-softmax along ``dim`` (default the last axis)."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies log-softmax along ``dim``; shape kept."""
        return F.log_softmax(x, self.dim)
