"""GPT: the GPT-2 architecture in one file, read top to bottom like nanoGPT's ``model.py``.

Module names are nanoGPT's and Hugging Face's (``transformer.wte``, ``transformer.h.0.attn.c_attn``,
``lm_head``), so importing GPT-2 weights is a checked rename table (:meth:`GPT.from_pretrained`):
the only change is transposing HF's ``Conv1D`` weights, stored ``(in, out)``, into ``Linear``'s
``(out, in)``. Pre-norm blocks, learned positions, GELU-tanh and tied input/output embeddings as in
GPT-2; options for rotary (RoPE) or ALiBi positions and RMSNorm.

Generation uses a key/value cache with a static shape: each layer's keys and values for all
``block_size`` positions are inputs and outputs of one compiled step, written at the current positions
through a one-hot matrix, so the prompt (one call) and every new token (one call each) reuse two plans.

>>> import numpy as np
>>> import asg.core as ag
>>> from asg.zoo import GPT, GPTConfig
>>> model = GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=8))
>>> model(ag.input("idx", ("B", "T"), "int64")).shape
('B', 'T', 11)
>>> out = model.generate(np.array([[1, 2, 3]]), max_new_tokens=5, temperature=0.0)
>>> out.shape
(1, 8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import asg.core as ag
from asg import nn
from asg.nn import functional as F

__all__ = ["GPT", "GPTConfig", "KVCache", "lm_loss", "sample_next"]


@dataclass
class GPTConfig:
    """GPT-2 small by default. ``position``: ``"learned"`` (GPT-2), ``"rope"`` or ``"alibi"``; ``norm``:
    ``"layernorm"`` or ``"rmsnorm"``."""

    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2
    layer_norm_epsilon: float = 1e-5
    position: str = "learned"
    norm: str = "layernorm"
    tie_weights: bool = True


@dataclass
class KVCache:
    """Graph tensors of one cached decoding step (built by :meth:`GPT.generate`; all shapes static but B, T).

    ``pos`` ``(T,)`` positions of the new tokens; ``write`` ``(T, S)`` one-hot rows selecting the slots
    they go to; ``allowed`` ``(T, S)`` bool, True where a new token may attend a slot; ``keys`` and
    ``values`` one ``(B, nh, S, hs)`` tensor per layer, ``S = block_size``.
    """

    pos: ag.Tensor
    write: ag.Tensor
    allowed: ag.Tensor
    keys: list[ag.Tensor]
    values: list[ag.Tensor]


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
    raise ValueError(f"GPTConfig.norm must be 'layernorm' or 'rmsnorm', got {config.norm!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused ``c_attn`` projection for q, k and v."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"GPTConfig: n_embd={config.n_embd} must be divisible by n_head={config.n_head}")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.position, self.block_size = config.position, config.block_size
        if config.position == "rope":
            self.rope = nn.RotaryEmbedding(config.n_embd // config.n_head, config.block_size)

    def forward(
        self, x: ag.Tensor, pos: ag.Tensor, cache: tuple[ag.Tensor, ...] | None = None
    ) -> tuple[ag.Tensor, ag.Tensor, ag.Tensor]:
        """Attends causally: ``x`` ``(B, T, C)`` at positions ``pos`` ``(T,)`` -> ``(y (B, T, C), k, v)``.

        Without ``cache``, ``k`` and ``v`` are this call's keys and values ``(B, nh, T, hs)``. With
        ``cache = (write (T, S), allowed (T, S), past_k, past_v)``, the new keys and values are written into
        the ``(B, nh, S, hs)`` cache at the slots ``write`` selects, the queries attend where ``allowed`` is
        True, and ``k``, ``v`` are the updated caches.
        """
        B, T, C = x.shape  # batch, sequence length, n_embd
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, axis=2)  # 3 x (B, T, C)
        q = ag.permute(ag.reshape(q, (B, T, nh, hs)), (0, 2, 1, 3))  # (B, nh, T, hs)
        k = ag.permute(ag.reshape(k, (B, T, nh, hs)), (0, 2, 1, 3))  # (B, nh, T, hs)
        v = ag.permute(ag.reshape(v, (B, T, nh, hs)), (0, 2, 1, 3))  # (B, nh, T, hs)
        if self.position == "rope":
            q, k = self.rope.rotate(q, pos), self.rope.rotate(k, pos)
        if cache is None:
            allowed = None  # causal
            key_pos = pos
        else:  # write the new keys/values into their slots of the (B, nh, S, hs) cache
            write, allowed, past_k, past_v = cache
            keep = ag.unsqueeze(1.0 - write.sum(0), 1)  # (S, 1): 0 at the slots being written
            scatter = ag.swapaxes(write, 0, 1)  # (S, T)
            k = past_k * keep + ag.matmul(scatter, k)  # (B, nh, S, hs)
            v = past_v * keep + ag.matmul(scatter, v)  # (B, nh, S, hs)
            key_pos = ag.arange(self.block_size)
        scale = 1.0 / math.sqrt(hs)
        dropout = self.training and self.attn_dropout.p > 0
        if self.position != "alibi" and not dropout:  # fused: no (B, nh, T, S) scores kept for backward
            y = ag.attention(q, k, v, allowed, causal=cache is None, scale=scale)  # (B, nh, T, hs)
        else:
            if allowed is None:
                allowed = F.causal_mask(T, T)  # (T, T)
            att = ag.matmul(q, ag.swapaxes(k, -1, -2)) * scale  # (B, nh, T, S)
            if self.position == "alibi":
                att = att + nn.alibi_bias_at(nh, pos, key_pos)
            att = ag.softmax(ag.where(allowed, att, -math.inf), -1)
            att = self.attn_dropout(att)
            y = ag.matmul(att, v)  # (B, nh, T, hs)
        y = ag.reshape(ag.permute(y, (0, 2, 1, 3)), (B, T, C))  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y)), k, v


class MLP(nn.Module):
    """``c_proj(gelu_tanh(c_fc(x)))`` with a 4x wider hidden layer."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Applies ``dropout(c_proj(gelu_tanh(c_fc(x))))``: ``(B, T, C) -> (B, T, C)``."""
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x: ag.Tensor, pos: ag.Tensor, cache: tuple[ag.Tensor, ...] | None = None
    ) -> tuple[ag.Tensor, ag.Tensor, ag.Tensor]:
        """Runs the block: ``x`` ``(B, T, C)`` -> ``(x (B, T, C), k, v)``, ``k`` and ``v`` from
        :meth:`CausalSelfAttention.forward` (this call's keys and values, or the updated ``cache``).
        """
        a, k, v = self.attn(self.ln_1(x), pos, cache)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, k, v


class GPT(nn.Module):
    """A GPT-2 style decoder-only language model.

    ``forward(idx)`` maps token ids ``(B, T)`` to logits ``(B, T, vocab_size)``;
    ``forward(idx, cache=KVCache)`` returns ``(logits, new_keys, new_values)`` for cached decoding.
    """

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GPTConfig()
        if config.position not in ("learned", "rope", "alibi"):
            raise ValueError(
                f"GPTConfig.position must be 'learned', 'rope' or 'alibi', got {config.position!r}"
            )
        parts: dict[str, nn.Module] = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}
        if config.position == "learned":
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        parts["drop"] = nn.Dropout(config.dropout)
        parts["h"] = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        parts["ln_f"] = _norm(config)
        self.transformer = nn.ModuleDict(parts)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer["wte"].weight  # weight tying: one variable, two names
        # nanoGPT's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer), zero biases
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * config.n_layer))
            elif name.endswith(".weight") and p.ndim == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
        self._decoders: dict[Any, Any] = {}

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings are left out by default, as in nanoGPT."""
        n = sum(int(np.prod(p.shape)) for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= int(np.prod(self.transformer["wpe"].weight.shape))
        return n

    def configure_optimizers(
        self, weight_decay: float = 0.1, lr: float = 6e-4, betas: tuple[float, float] = (0.9, 0.95)
    ) -> nn.optim.AdamW:
        """AdamW that decays only the 2-d (and larger) parameters: matmul weights and embeddings, not biases
        and norms (nanoGPT's ``configure_optimizers``)."""
        decay = [p for p in self.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return nn.optim.AdamW(groups, lr=lr, betas=betas)

    def forward(self, idx: ag.Tensor, cache: KVCache | None = None) -> Any:
        """Maps token ids ``idx`` ``(B, T)`` (int64) to logits ``(B, T, vocab_size)``.

        With a :class:`KVCache`, the tokens sit at ``cache.pos`` and attend the cached keys and values;
        returns ``(logits, keys, values)``, the updated ``(B, nh, S, hs)`` caches, one per layer. Raises
        ``ShapeError`` when ``T`` is more than ``block_size``.
        """
        idx = ag.as_tensor(idx)
        T = idx.shape[1]
        if isinstance(T, int) and self.config.block_size < T:
            raise ag.ShapeError(
                f"GPT: idx {idx.node.label} has {T} tokens, more than block_size={self.config.block_size}"
            )
        pos = ag.arange(T) if cache is None else cache.pos  # (T,)
        x = self.transformer["wte"](idx)  # token embeddings (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer["wpe"](pos)  # position embeddings (T, C)
        x = self.transformer["drop"](x)
        keys, values = [], []
        for i, block in enumerate(self.transformer["h"]):
            layer_cache = (
                None if cache is None else (cache.write, cache.allowed, cache.keys[i], cache.values[i])
            )
            x, k, v = block(x, pos, layer_cache)
            keys.append(k)
            values.append(v)
        logits = self.lm_head(self.transformer["ln_f"](x))  # (B, T, vocab_size)
        return logits if cache is None else (logits, keys, values)

    # ------------------------------------------------------------------ generation
    def _decoder(self, backend: str) -> Any:
        """The compiled cached step ``(idx, pos, write, allowed, *keys, *values) -> (logits, *keys, *values)``."""
        if backend in self._decoders:
            return self._decoders[backend]
        c = self.config
        S, nh, hs = c.block_size, c.n_head, c.n_embd // c.n_head
        cache = KVCache(
            pos=ag.input("pos", ("T",), "int64"),
            write=ag.input("write", ("T", S), "float32"),
            allowed=ag.input("allowed", ("T", S), "bool"),
            keys=[ag.input(f"past_k{i}", ("B", nh, S, hs)) for i in range(c.n_layer)],
            values=[ag.input(f"past_v{i}", ("B", nh, S, hs)) for i in range(c.n_layer)],
        )
        idx = ag.input("idx", ("B", "T"), "int64")
        saved = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with nn.capture_updates():
                logits, keys, values = self(idx, cache)
        finally:
            for m, mode in saved:
                object.__setattr__(m, "training", mode)
        inputs = [idx, cache.pos, cache.write, cache.allowed, *cache.keys, *cache.values]
        fn = ag.compile([logits, *keys, *values], inputs=inputs, backend=backend)
        self._decoders[backend] = fn
        return fn

    def generate(
        self,
        idx: Any,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        backend: str = "numpy",
    ) -> np.ndarray:
        """Continue each sequence of ``idx`` ``(B, T)`` by ``max_new_tokens`` tokens, using the KV cache.

        ``temperature=0`` is greedy decoding; otherwise tokens are sampled from
        ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely and/or the smallest set
        whose probability reaches ``top_p``, with ``np.random.default_rng(seed)``. When the sequence
        outgrows ``block_size`` the cache is rebuilt from the last ``block_size - 1`` tokens.
        """
        idx = np.asarray(idx, dtype=np.int64)
        if idx.ndim != 2 or idx.shape[1] == 0:
            raise ValueError(f"GPT.generate: idx must be (B, T) token ids with T >= 1, got shape {idx.shape}")
        c = self.config
        S, nh, hs, L = c.block_size, c.n_head, c.n_embd // c.n_head, c.n_layer
        step = self._decoder(backend)
        rng = np.random.default_rng(seed)
        out = idx[:, -(S - 1) :] if idx.shape[1] >= S else idx
        history = [idx[:, : idx.shape[1] - out.shape[1]]]
        fresh = True
        empty = np.zeros((len(idx), nh, S, hs), np.float32)
        cache: list[np.ndarray] = []
        for _ in range(max_new_tokens):
            if fresh:  # fill the cache with the whole context in one call
                new, start, cache = out, 0, [empty] * (2 * L)
                fresh = False
            else:
                new, start = out[:, -1:], out.shape[1] - 1
            t = new.shape[1]
            positions = np.arange(start, start + t)
            write = np.zeros((t, S), np.float32)
            write[np.arange(t), positions] = 1.0
            allowed = np.arange(S)[None, :] <= positions[:, None]
            results = step(new, positions, write, allowed, *cache)
            logits, cache = results[0][:, -1, :], list(results[1:])
            token = sample_next(logits, temperature, top_k, top_p, rng)
            out = np.concatenate([out, token[:, None]], axis=1)
            if out.shape[1] >= S:  # the next token would need slot S: restart from the recent context
                history.append(out[:, : out.shape[1] - (S - 1)])
                out = out[:, -(S - 1) :]
                fresh = True
        return np.concatenate([*history, out], axis=1)

    @classmethod
    def from_pretrained(cls, path: str, **overrides: Any) -> GPT:
        """Load Hugging Face GPT-2 weights (``GPT2LMHeadModel`` names) from a local directory or hub cache.

        See :func:`asg.zoo.hf.load_gpt2`.
        """
        from .hf import load_gpt2

        return load_gpt2(path, **overrides)


def sample_next(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One token id per row of ``logits`` ``(B, V)``: greedy for ``temperature == 0``, else sampled.

    >>> import numpy as np
    >>> sample_next(np.array([[0.0, 3.0, 1.0]]), temperature=0.0).tolist()
    [1]
    >>> sample_next(np.array([[0.0, 3.0, 1.0]]), top_k=1, rng=np.random.default_rng(0)).tolist()
    [1]
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature < 0:
        raise ValueError(f"sample_next: temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1).astype(np.int64)
    rng = rng or np.random.default_rng()
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"sample_next: top_k must be >= 1, got {top_k}")
        kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"sample_next: top_p must be in (0, 1], got {top_p}")
        order = np.argsort(-probs, axis=-1)
        sorted_p = np.take_along_axis(probs, order, -1)
        drop_sorted = np.cumsum(sorted_p, -1) - sorted_p >= top_p  # mass before this token already reaches p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs], dtype=np.int64)


def lm_loss(logits: ag.Tensor, targets: ag.Tensor) -> ag.Tensor:
    """Mean next-token cross-entropy: logits ``(B, T, V)``, targets ``(B, T)`` int."""
    V = logits.shape[-1]
    return ag.cross_entropy(ag.reshape(logits, (-1, V)), ag.reshape(ag.as_tensor(targets), (-1,)))
