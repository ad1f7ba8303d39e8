"""A causal self-attention language model with a symbolic sequence length, end to end.

Built once with ("B", "T") inputs from the ops a causal transformer needs (arange, causal_mask,
masked_fill, split, transpose(1, 2)), compiled once, run at two sequence lengths, and compared with
the same model in PyTorch: the loss and every parameter gradient.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import asg.core as ag

torch = pytest.importorskip("torch")
F = torch.nn.functional

V, C, H, T_MAX = 11, 8, 2, 6


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {"wte": (V, C), "wpe": (T_MAX, C), "c_attn": (3 * C, C), "c_proj": (C, C), "head": (V, C)}
    return {k: (0.5 * rng.standard_normal(s)).astype(np.float64) for k, s in shapes.items()}


def _asg_model(w: dict[str, ag.Tensor], tokens: ag.Tensor, targets: ag.Tensor) -> ag.Tensor:
    b, t = tokens.shape
    x = ag.embedding(tokens, w["wte"]) + ag.embedding(ag.arange(t), w["wpe"])  # (B, T, C)
    q, k, v = ag.linear(x, w["c_attn"]).split(C, axis=-1)  # 3 x (B, T, C)
    q, k, v = (z.reshape(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))  # (B, H, T, T)
    att = att.masked_fill(~ag.causal_mask(t), float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(b, t, C)  # (B, T, C)
    logits = ag.linear(ag.linear(y, w["c_proj"]), w["head"])  # (B, T, V)
    return ag.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))


def _torch_model(w: dict[str, torch.Tensor], tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    b, t = tokens.shape
    x = F.embedding(tokens, w["wte"]) + F.embedding(torch.arange(t), w["wpe"])
    q, k, v = F.linear(x, w["c_attn"]).split(C, dim=-1)
    q, k, v = (z.reshape(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
    att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
    att = att.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool)), float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(b, t, C)
    logits = F.linear(F.linear(y, w["c_proj"]), w["head"])
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))


def test_causal_attention_model_with_symbolic_length_matches_torch_at_two_lengths():
    weights = _weights()
    params = {k: ag.parameter(a, name=k) for k, a in weights.items()}
    tokens, targets = ag.input("tokens", ("B", "T"), "int64"), ag.input("targets", ("B", "T"), "int64")
    loss = _asg_model(params, tokens, targets)
    assert loss.shape == ()
    grads = ag.grad(loss, list(params.values()))
    step = ag.compile([loss, *grads], inputs=[tokens, targets])
    rng = np.random.default_rng(1)
    for b, t in ((2, 3), (3, 6)):
        ids, nxt = rng.integers(0, V, (b, t)), rng.integers(0, V, (b, t))
        got_loss, *got_grads = step(ids, nxt)
        tw = {k: torch.tensor(a, requires_grad=True) for k, a in weights.items()}
        want = _torch_model(tw, torch.tensor(ids), torch.tensor(nxt))
        want.backward()
        np.testing.assert_allclose(got_loss, want.item(), rtol=1e-12)
        for name, g in zip(params, got_grads, strict=True):
            np.testing.assert_allclose(g, tw[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
        # Only the first t position embeddings are used at length t.
        assert np.all(got_grads[1][t:] == 0) and np.any(got_grads[1][:t] != 0)


def test_readme_causal_section_runs(capsys):
    from pathlib import Path

    readme = Path(__file__).parents[2] / "packages" / "asg-core" / "README.md"
    section = readme.read_text().split("## Ops for causal models", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    assert capsys.readouterr().out.splitlines() == expected == ["(2, 3, 4)", "(2, 7, 4)"]
