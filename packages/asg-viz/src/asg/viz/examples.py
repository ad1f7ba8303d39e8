"""A GPT-like training step built from asg.core ops alone, with name scopes: the viewer's demo and test graph.

It has nanoGPT's module names (``transformer.wte``, ``transformer.h.0.attn.c_attn`` ...), a causal
self-attention, an MLP with GELU, layer norms, a cross-entropy loss, the gradient of every parameter and
an SGD update of each, so it exercises every part of the viewer: scopes, forward and gradient nodes,
updates. ``n_layer=30`` gives a graph of more than 5,000 nodes.

Example:
    >>> step, feeds = gpt_training_step(n_layer=1)
    >>> loss = step(*feeds)[0]
    >>> bool(loss > 0)
    True
"""

from __future__ import annotations

import math

import numpy as np

import asg.core as ag


def gpt_training_step(
    n_layer: int = 2,
    n_embd: int = 16,
    n_head: int = 2,
    vocab: int = 29,
    block: int = 8,
    batch: int = 2,
    lr: float = 0.1,
    seed: int = 0,
) -> tuple[ag.Function, list[np.ndarray]]:
    """A compiled SGD training step of a small GPT, and feeds ``(tokens, targets)`` for one call.

    The step returns ``[loss]`` and updates every parameter. Compiled with ``passes=[]``, so its graph
    holds every node as built (the viewer shows what the user wrote).
    """
    rng = np.random.default_rng(seed)

    def param(shape: tuple[int, ...], name: str, scale: float = 0.02) -> ag.Tensor:
        if len(shape) == 1 and name.endswith(".weight"):
            return ag.parameter(np.ones(shape, "float32"), name=name)
        if len(shape) == 1:
            return ag.parameter(np.zeros(shape, "float32"), name=name)
        return ag.parameter((scale * rng.standard_normal(shape)).astype("float32"), name=name)

    def linear(x: ag.Tensor, n_in: int, n_out: int, path: str) -> ag.Tensor:
        with ag.scope(path.rsplit(".", 1)[-1]):
            w = param((n_out, n_in), f"{path}.weight")
            b = param((n_out,), f"{path}.bias")
            return ag.linear(x, w, b)

    def layer_norm(x: ag.Tensor, path: str) -> ag.Tensor:
        with ag.scope(path.rsplit(".", 1)[-1]):
            return ag.layer_norm(
                x, (n_embd,), param((n_embd,), f"{path}.weight"), param((n_embd,), f"{path}.bias")
            )

    tokens = ag.input("tokens", ("B", "T"), "int64")
    targets = ag.input("targets", ("B", "T"), "int64")
    b, t = tokens.shape
    hd = n_embd // n_head
    with ag.scope("transformer"):
        with ag.scope("wte"):
            wte = param((vocab, n_embd), "transformer.wte.weight")
            tok = ag.embedding(tokens, wte)
        with ag.scope("wpe"):
            pos = ag.embedding(ag.arange(t), param((block, n_embd), "transformer.wpe.weight"))
        x = (tok + pos).named("x")
        for i in range(n_layer):
            p = f"transformer.h.{i}"
            with ag.scope(f"h.{i}"):
                with ag.scope("attn"):
                    h = layer_norm(x, f"{p}.ln_1")
                    q, k, v = linear(h, n_embd, 3 * n_embd, f"{p}.attn.c_attn").split(n_embd, axis=-1)
                    q, k, v = (
                        z.reshape(b, t, n_head, hd).transpose(1, 2) for z in (q, k, v)
                    )  # (B, nh, T, hd)
                    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # (B, nh, T, T)
                    att = att.masked_fill(~ag.causal_mask(t), float("-inf")).softmax(-1)
                    y = (att @ v).transpose(1, 2).reshape(b, t, n_embd)  # (B, T, C)
                    y = linear(y, n_embd, n_embd, f"{p}.attn.c_proj")
                x = (x + y).named(f"{p}.resid_attn")
                with ag.scope("mlp"):
                    h = layer_norm(x, f"{p}.ln_2")
                    h = ag.gelu(linear(h, n_embd, 4 * n_embd, f"{p}.mlp.c_fc"))
                    h = linear(h, 4 * n_embd, n_embd, f"{p}.mlp.c_proj")
                x = (x + h).named(f"{p}.resid_mlp")
        x = layer_norm(x, "transformer.ln_f")
    with ag.scope("lm_head"):
        logits = (x @ wte.transpose(0, 1)).named("logits")  # tied weights, (B, T, V)
    loss = ag.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1)).named("loss")
    params = [ag.Tensor(n) for n in ag.Graph([loss.node]).parameters]
    grads = ag.grad(loss, params)
    updates = {w: w - lr * g for w, g in zip(params, grads, strict=True)}
    step = ag.compile([loss], inputs=[tokens, targets], updates=updates, passes=[])
    feeds = [
        rng.integers(0, vocab, size=(batch, block)).astype("int64"),
        rng.integers(0, vocab, size=(batch, block)).astype("int64"),
    ]
    return step, feeds
