"""Transformer encoder (sequence classification) and encoder-decoder (seq2seq), on asg-nn's layers.

Both use learned position embeddings and ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
(PyTorch's names: ``layers.0.self_attn.in_proj_weight``, ``linear1``, ``norm1`` ...), batch first.

>>> import asg.core as ag
>>> from asg.zoo import Seq2SeqTransformer, TransformerConfig
>>> model = Seq2SeqTransformer(TransformerConfig(vocab_size=20, d_model=16, nhead=2, dim_feedforward=32))
>>> src = ag.input("src", ("B", "S"), "int64")
>>> tgt = ag.input("tgt", ("B", "T"), "int64")
>>> model(src, tgt).shape
('B', 'T', 20)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asg.core as ag
from asg import nn

__all__ = ["Seq2SeqTransformer", "TransformerConfig", "TransformerEncoderModel"]


@dataclass
class TransformerConfig:
    """Sizes of both models; ``tgt_vocab_size`` defaults to ``vocab_size``; ``num_classes`` is the encoder's head."""

    vocab_size: int = 1000
    tgt_vocab_size: int | None = None
    d_model: int = 128
    nhead: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dim_feedforward: int = 512
    dropout: float = 0.1
    activation: str = "gelu"
    max_len: int = 512
    norm_first: bool = True
    num_classes: int = 2
    pad_token_id: int | None = None


def _embed(tokens: nn.Module, positions: nn.Module, ids: ag.Tensor) -> ag.Tensor:
    ids = ag.as_tensor(ids)
    return tokens(ids) + positions(ag.arange(ids.shape[1]))  # (B, T, d)


class TransformerEncoderModel(nn.Module):
    """Token + position embeddings, encoder layers, a final norm, masked mean pooling and a classifier.

    ``forward(src, src_key_padding_mask=None)``: src ``(B, T)`` int; the mask ``(B, T)`` bool, True for
    padding -> logits ``(B, num_classes)``. ``encode`` returns the token states ``(B, T, d_model)``.
    """

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or TransformerConfig()
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.pos = nn.Embedding(c.max_len, c.d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                c.d_model,
                c.nhead,
                c.dim_feedforward,
                c.dropout,
                c.activation,
                batch_first=True,
                norm_first=c.norm_first,
            )
            for _ in range(c.num_encoder_layers)
        )
        self.norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.head = nn.Linear(c.d_model, c.num_classes)

    def encode(self, src: ag.Tensor, src_key_padding_mask: Any = None) -> ag.Tensor:
        """The final-normed token states: src ``(B, T)`` int, padding mask ``(B, T)`` bool
        (True for padding) -> ``(B, T, d_model)``.
        """
        x = _embed(self.embed, self.pos, src)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=src_key_padding_mask)
        return self.norm(x)  # (B, T, d)

    def forward(self, src: ag.Tensor, src_key_padding_mask: Any = None) -> ag.Tensor:
        """Classifies sequences: the token states mean-pooled over non-padding tokens,
        then the head -> logits ``(B, num_classes)``.
        """
        h = self.encode(src, src_key_padding_mask)
        if src_key_padding_mask is None:
            pooled = h.mean(1)  # (B, d)
        else:
            keep = ag.unsqueeze(1.0 - ag.cast(ag.as_tensor(src_key_padding_mask), "float32"), -1)  # (B, T, 1)
            pooled = (h * keep).sum(1) / ag.maximum(keep.sum(1), 1.0)
        return self.head(pooled)


class Seq2SeqTransformer(nn.Module):
    """An encoder-decoder transformer (Vaswani et al. 2017) for sequence-to-sequence tasks.

    ``forward(src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None)``: src ``(B, S)``, tgt
    ``(B, T)`` int (the decoder input, shifted right) -> logits ``(B, T, tgt_vocab_size)``; the decoder is
    causal. :meth:`greedy_decode` translates with the numpy backend.
    """

    def __init__(self, config: TransformerConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or TransformerConfig()
        tgt_vocab = c.tgt_vocab_size or c.vocab_size
        self.src_embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.tgt_embed = nn.Embedding(tgt_vocab, c.d_model, padding_idx=c.pad_token_id)
        self.pos = nn.Embedding(c.max_len, c.d_model)
        kw = {"batch_first": True, "norm_first": c.norm_first}
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(c.d_model, c.nhead, c.dim_feedforward, c.dropout, c.activation, **kw)
            for _ in range(c.num_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            nn.TransformerDecoderLayer(c.d_model, c.nhead, c.dim_feedforward, c.dropout, c.activation, **kw)
            for _ in range(c.num_decoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.generator = nn.Linear(c.d_model, tgt_vocab)

    def encode(self, src: ag.Tensor, src_key_padding_mask: Any = None) -> ag.Tensor:
        """The encoder's memory: src ``(B, S)`` int, padding mask ``(B, S)`` bool (True for
        padding) -> ``(B, S, d_model)``.
        """
        x = _embed(self.src_embed, self.pos, src)
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=src_key_padding_mask)
        return self.encoder_norm(x)  # memory (B, S, d)

    def decode(
        self,
        tgt: ag.Tensor,
        memory: ag.Tensor,
        tgt_key_padding_mask: Any = None,
        memory_key_padding_mask: Any = None,
    ) -> ag.Tensor:
        """The causal decoder over ``memory``: tgt ``(B, T)`` int, memory ``(B, S, d_model)``
        -> logits ``(B, T, tgt_vocab_size)``.
        """
        y = _embed(self.tgt_embed, self.pos, tgt)
        for layer in self.decoder:
            y = layer(
                y,
                memory,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=True,
            )
        return self.generator(self.decoder_norm(y))  # (B, T, V)

    def forward(
        self,
        src: ag.Tensor,
        tgt: ag.Tensor,
        src_key_padding_mask: Any = None,
        tgt_key_padding_mask: Any = None,
    ) -> ag.Tensor:
        """``decode(tgt, encode(src))``: logits ``(B, T, tgt_vocab_size)``."""
        memory = self.encode(src, src_key_padding_mask)
        return self.decode(tgt, memory, tgt_key_padding_mask, src_key_padding_mask)

    def greedy_decode(self, src: Any, bos: int, max_len: int, eos: int | None = None) -> Any:
        """Greedy decoding of ``src`` ``(B, S)``: returns ``(B, <= max_len + 1)`` ids starting with ``bos``."""
        import numpy as np

        if not hasattr(self, "_greedy"):
            s = ag.input("src", ("B", "S"), "int64")
            t = ag.input("tgt", ("B", "T"), "int64")
            saved = [(m, m.training) for m in self.modules()]
            self.eval()
            try:
                logits = self(s, t)
            finally:
                for m, mode in saved:
                    object.__setattr__(m, "training", mode)
            object.__setattr__(self, "_greedy", ag.compile(logits, inputs=[s, t]))
        src = np.asarray(src, np.int64)
        out = np.full((len(src), 1), bos, np.int64)
        for _ in range(max_len):
            nxt = self._greedy(src, out)[:, -1].argmax(-1)
            out = np.concatenate([out, nxt[:, None]], axis=1)
            if eos is not None and (out == eos).any(axis=1).all():
                break
        return out
