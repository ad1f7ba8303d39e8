"""BERT: a bidirectional transformer encoder with token-type and position embeddings and a pooler.

Module names are Hugging Face's ``BertModel`` names (``embeddings.word_embeddings``,
``encoder.layer.0.attention.self.query``, ``encoder.layer.0.output.LayerNorm``, ``pooler.dense``), so a
``BertModel`` checkpoint loads with no renaming (:func:`asg.zoo.hf.load_bert`). Post-norm layers, exact
(erf) GELU, additive attention masks as HF's.

>>> import asg.core as ag
>>> from asg.zoo import BertConfig, BertModel
>>> config = BertConfig(
...     vocab_size=50,
...     hidden_size=16,
...     num_hidden_layers=2,
...     num_attention_heads=2,
...     intermediate_size=32,
...     max_position_embeddings=32,
... )
>>> hidden, pooled = BertModel(config)(ag.input("input_ids", ("B", "T"), "int64"))
>>> hidden.shape, pooled.shape
(('B', 'T', 16), ('B', 16))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import asg.core as ag
from asg import nn
from asg.nn import functional as F

__all__ = ["BertConfig", "BertModel", "BertSelfAttention", "hidden_activation", "mean_pool"]


def hidden_activation(name: str) -> Any:
    """HF's ``hidden_act`` names: ``gelu`` (erf), ``gelu_new``/``gelu_pytorch_tanh`` (tanh), ``relu``, ``silu``."""
    table = {
        "gelu": F.gelu,
        "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
        "tanh": F.tanh,
    }
    if name not in table:
        raise ValueError(f"hidden_act must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """A config dataclass from an HF ``config.json`` dict: known fields are taken, the rest ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class BertConfig:
    """BERT-base by default; field names are those of HF's ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    add_pooling_layer: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BertConfig:
        """A config from an HF ``config.json`` dict; unknown keys are ignored.

        >>> BertConfig.from_dict({"hidden_size": 128, "model_type": "bert"}).hidden_size
        128
        """
        return config_from_dict(cls, values)


class BertSelfAttention(nn.Module):
    """Multi-head attention with separate ``query``, ``key``, ``value`` projections (HF's names).

    ``forward(x, bias)``: x ``(B, T, H)``, bias ``(B, 1, 1, T)`` added to the scores (or None) -> ``(B, T, H)``.
    """

    def __init__(self, hidden: int, heads: int, dropout: float, bias: bool = True) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(
                f"attention: hidden_size={hidden} must be divisible by num_attention_heads={heads}"
            )
        self.num_heads, self.head_size = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden, bias=bias)
        self.key = nn.Linear(hidden, hidden, bias=bias)
        self.value = nn.Linear(hidden, hidden, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: ag.Tensor, bias: ag.Tensor | None = None) -> ag.Tensor:
        """Attends over the sequence: ``(B, T, H)``, ``bias`` ``(B, 1, 1, T)`` or None -> ``(B, T, H)``."""
        B, T, H = x.shape
        nh, hs = self.num_heads, self.head_size

        def heads(t: ag.Tensor) -> ag.Tensor:
            return ag.permute(ag.reshape(t, (B, T, nh, hs)), (0, 2, 1, 3))  # (B, nh, T, hs)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = ag.matmul(q, ag.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
        if bias is not None:
            scores = scores + bias
        probs = self.dropout(ag.softmax(scores, -1))
        out = ag.matmul(probs, v)  # (B, nh, T, hs)
        return ag.reshape(ag.permute(out, (0, 2, 1, 3)), (B, T, H))  # (B, T, H)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout (HF's ``embeddings``)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: ag.Tensor, token_type_ids: ag.Tensor | None) -> ag.Tensor:
        """``input_ids`` ``(B, T)`` int (and ``token_type_ids`` ``(B, T)``, type 0 when None)
        -> ``(B, T, hidden_size)``.
        """
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings(ag.arange(T))  # (B, T, H)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfOutput(nn.Module):
    """``LayerNorm(dropout(dense(h)) + residual)``: HF's ``attention.output`` and ``output`` blocks."""

    def __init__(self, cin: int, cout: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        self.LayerNorm = nn.LayerNorm(cout, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: ag.Tensor, residual: ag.Tensor) -> ag.Tensor:
        """``LayerNorm(dropout(dense(h)) + residual)``: ``(B, T, cin)``, ``(B, T, cout)`` -> ``(B, T, cout)``."""
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    """Self-attention then its output block with the residual (HF's ``attention``)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(c.hidden_size, c.num_attention_heads, c.attention_probs_dropout_prob)
        self.output = BertSelfOutput(c.hidden_size, c.hidden_size, c.layer_norm_eps, c.hidden_dropout_prob)

    def forward(self, x: ag.Tensor, bias: ag.Tensor | None) -> ag.Tensor:
        """``(B, T, H)`` with the additive mask ``bias`` -> ``(B, T, H)``."""
        return self.output(self.self(x, bias), x)


class BertIntermediate(nn.Module):
    """``act(dense(x))``, ``hidden -> intermediate``: HF's ``intermediate`` block (BERT's and ViT's)."""

    def __init__(self, hidden: int, intermediate: int, act: str) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)
        self.act = hidden_activation(act)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """``act(dense(x))``: ``(*, hidden) -> (*, intermediate)``."""
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """One post-norm encoder layer: attention, then the feed-forward ``intermediate`` and ``output``."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c.hidden_size, c.intermediate_size, c.hidden_act)
        self.output = BertSelfOutput(
            c.intermediate_size, c.hidden_size, c.layer_norm_eps, c.hidden_dropout_prob
        )

    def forward(self, x: ag.Tensor, bias: ag.Tensor | None) -> ag.Tensor:
        """``(B, T, H)`` with the additive mask ``bias`` -> ``(B, T, H)``."""
        a = self.attention(x, bias)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    """The stack of ``num_hidden_layers`` :class:`BertLayer` (HF's ``encoder.layer.<i>``)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c.num_hidden_layers))

    def forward(self, x: ag.Tensor, bias: ag.Tensor | None) -> ag.Tensor:
        """Runs every layer in turn: ``(B, T, H)`` -> ``(B, T, H)``."""
        for layer in self.layer:
            x = layer(x, bias)
        return x


class BertPooler(nn.Module):
    """``tanh(dense(h[:, 0]))``: the first ([CLS]) token's hidden state through a dense layer (BERT's and ViT's)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, h: ag.Tensor) -> ag.Tensor:
        """``tanh(dense(h[:, 0]))``: ``(B, T, H)`` -> ``(B, H)``."""
        return ag.tanh(self.dense(h[:, 0]))


class BertModel(nn.Module):
    """BERT encoder: ``forward(input_ids, attention_mask=None, token_type_ids=None)``.

    Shapes: ``input_ids`` ``(B, T)`` int; ``attention_mask`` ``(B, T)`` 1 for tokens, 0 for padding;
    returns ``(last_hidden_state (B, T, H), pooled (B, H))`` (``pooled`` is None without a pooler).
    """

    def __init__(self, config: BertConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BertConfig()
        self.embeddings = BertEmbeddings(c)
        self.encoder = BertEncoder(c)
        self.pooler = BertPooler(c.hidden_size) if c.add_pooling_layer else None
        for p in self.parameters():  # HF's init: N(0, 0.02) weights, zero biases
            if p.ndim == 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(
        self, input_ids: ag.Tensor, attention_mask: Any = None, token_type_ids: Any = None
    ) -> tuple[ag.Tensor, ag.Tensor | None]:
        """Encodes ``input_ids`` ``(B, T)``; returns ``(last_hidden_state (B, T, H), pooled (B, H) or None)``.

        ``attention_mask`` (1 for tokens, 0 for padding) becomes HF's additive score bias.
        """
        input_ids = ag.as_tensor(input_ids)
        tt = None if token_type_ids is None else ag.as_tensor(token_type_ids)
        bias = None
        if attention_mask is not None:
            mask = ag.cast(ag.as_tensor(attention_mask), "float32")  # (B, T)
            B, T = mask.shape
            bias = ag.reshape(
                (1.0 - mask) * float(np.finfo(np.float32).min), (B, 1, 1, T)
            )  # HF's additive mask
        h = self.encoder(self.embeddings(input_ids, tt), bias)
        return h, (self.pooler(h) if self.pooler is not None else None)


def mean_pool(hidden: ag.Tensor, attention_mask: Any, normalize: bool = True) -> ag.Tensor:
    """Sentence embeddings as sentence-transformers computes them: the mean of the token states weighted by
    ``attention_mask``, then (``normalize``) divided by its L2 norm.

    Shape: hidden ``(B, T, H)``, attention_mask ``(B, T)`` -> ``(B, H)``.
    """
    m = ag.unsqueeze(ag.cast(ag.as_tensor(attention_mask), "float32"), -1)  # (B, T, 1)
    summed = (hidden * m).sum(1)  # (B, H)
    counts = ag.maximum(m.sum(1), 1e-9)  # (B, 1), sentence-transformers' clamp
    pooled = summed / counts
    if not normalize:
        return pooled
    norm = ag.maximum(ag.sqrt((pooled * pooled).sum(-1, keepdims=True)), 1e-12)  # F.normalize's eps
    return pooled / norm
