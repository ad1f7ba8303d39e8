"""ViT: a Vision Transformer with a convolutional patch embedding, a class token, learned positions,
pre-norm encoder layers and an optional classification head.

Module names are Hugging Face's ``ViTModel`` names (``embeddings.patch_embeddings.projection``,
``encoder.layer.0.attention.attention.query``, ``encoder.layer.0.layernorm_before``, ``layernorm``), and the
head is ``classifier`` as in ``ViTForImageClassification`` (whose ``vit.`` prefix the importer strips).

>>> import asg.core as ag
>>> from asg.zoo import ViT, ViTConfig
>>> config = ViTConfig(
...     image_size=8,
...     patch_size=4,
...     num_channels=1,
...     hidden_size=16,
...     num_hidden_layers=1,
...     num_attention_heads=2,
...     intermediate_size=32,
...     num_labels=10,
... )
>>> ViT(config)(ag.input("pixel_values", ("B", 1, 8, 8))).shape
('B', 10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import asg.core as ag
from asg import nn

from .bert import BertIntermediate, BertPooler, BertSelfAttention, config_from_dict

__all__ = ["ViT", "ViTConfig"]


@dataclass
class ViTConfig:
    """ViT-Base/16 by default; field names are those of HF's ``config.json``.

    ``num_labels > 0`` adds the ``classifier`` head on the class token (then ``forward`` returns logits);
    ``add_pooling_layer`` adds HF ``ViTModel``'s ``pooler``.
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    num_labels: int = 0
    add_pooling_layer: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ViTConfig:
        """A config from an HF ``config.json`` dict; unknown keys are ignored.

        >>> ViTConfig.from_dict({"image_size": 32, "patch_size": 8, "model_type": "vit"}).patch_size
        8
        """
        return config_from_dict(cls, values)


class PatchEmbeddings(nn.Module):
    """Cuts the image into ``patch_size`` squares and projects each with a strided convolution
    (HF's ``patch_embeddings.projection``).
    """

    def __init__(self, c: ViTConfig) -> None:
        super().__init__()
        if c.image_size % c.patch_size:
            raise ValueError(
                f"ViTConfig: image_size={c.image_size} must be a multiple of patch_size={c.patch_size}"
            )
        self.num_patches = (c.image_size // c.patch_size) ** 2
        self.projection = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """``(B, num_channels, image_size, image_size)`` -> ``(B, num_patches, hidden_size)``."""
        x = self.projection(x)  # (B, H, h, w)
        return ag.swapaxes(ag.flatten(x, 2, -1), 1, 2)  # (B, N, H)


class ViTEmbeddings(nn.Module):
    """Patch embeddings with the class token prepended, plus learned position embeddings, then dropout."""

    def __init__(self, c: ViTConfig) -> None:
        super().__init__()
        self.patch_embeddings = PatchEmbeddings(c)
        self.cls_token = nn.Parameter(np.zeros((1, 1, c.hidden_size), np.float32))
        self.position_embeddings = nn.Parameter(
            np.zeros((1, self.patch_embeddings.num_patches + 1, c.hidden_size), np.float32)
        )
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, pixel_values: ag.Tensor) -> ag.Tensor:
        """``(B, num_channels, image_size, image_size)`` -> ``(B, num_patches + 1, hidden_size)``."""
        x = self.patch_embeddings(pixel_values)  # (B, N, H)
        B, _, H = x.shape
        cls = ag.broadcast_to(self.cls_token, (B, 1, H))  # (B, 1, H)
        x = ag.concat([cls, x], axis=1) + self.position_embeddings  # (B, N + 1, H)
        return self.dropout(x)


class ViTSelfOutput(nn.Module):
    """``dropout(dense(x))`` after attention (HF's ``attention.output``; the residual is added in
    :class:`ViTLayer`).
    """

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """``dropout(dense(x))``: ``(*, cin) -> (*, cout)``."""
        return self.dropout(self.dense(x))


class ViTAttention(nn.Module):
    """Self-attention (no mask) and its output projection (HF's ``attention``)."""

    def __init__(self, c: ViTConfig) -> None:
        super().__init__()
        self.attention = BertSelfAttention(
            c.hidden_size, c.num_attention_heads, c.attention_probs_dropout_prob, bias=c.qkv_bias
        )
        self.output = ViTSelfOutput(c.hidden_size, c.hidden_size, c.hidden_dropout_prob)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """``(B, N, H)`` -> ``(B, N, H)``."""
        return self.output(self.attention(x))


class ViTLayer(nn.Module):
    """Pre-norm: ``x + attention(layernorm_before(x))``, then ``x + output(intermediate(layernorm_after(x)))``."""

    def __init__(self, c: ViTConfig) -> None:
        super().__init__()
        self.attention = ViTAttention(c)
        self.intermediate = BertIntermediate(c.hidden_size, c.intermediate_size, c.hidden_act)
        self.output = ViTSelfOutput(c.intermediate_size, c.hidden_size, c.hidden_dropout_prob)
        self.layernorm_before = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """One pre-norm layer with both residuals: ``(B, N, H)`` -> ``(B, N, H)``."""
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(self.intermediate(self.layernorm_after(x)))


class ViTEncoder(nn.Module):
    """The stack of ``num_hidden_layers`` :class:`ViTLayer` (HF's ``encoder.layer.<i>``)."""

    def __init__(self, c: ViTConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(c) for _ in range(c.num_hidden_layers))

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Runs every layer in turn: ``(B, N, H)`` -> ``(B, N, H)``."""
        for layer in self.layer:
            x = layer(x)
        return x


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021).

    Shape: ``(B, num_channels, image_size, image_size)`` -> logits ``(B, num_labels)`` with a head,
    otherwise the final hidden states ``(B, N + 1, hidden_size)`` (see :meth:`hidden_states`).
    """

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ViTConfig()
        self.embeddings = ViTEmbeddings(c)
        self.encoder = ViTEncoder(c)
        self.layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.pooler = BertPooler(c.hidden_size) if c.add_pooling_layer else None
        self.classifier = nn.Linear(c.hidden_size, c.num_labels) if c.num_labels > 0 else None

    def hidden_states(self, pixel_values: ag.Tensor) -> ag.Tensor:
        """The final layer-normed hidden states ``(B, N + 1, hidden_size)`` (HF's ``last_hidden_state``)."""
        return self.layernorm(self.encoder(self.embeddings(pixel_values)))

    def forward(self, pixel_values: ag.Tensor) -> ag.Tensor:
        """Logits ``(B, num_labels)`` from the class token with a classifier head; without one, the
        final hidden states ``(B, N + 1, hidden_size)``.
        """
        h = self.hidden_states(pixel_values)
        return h if self.classifier is None else self.classifier(h[:, 0])
