"""The docstring examples of every asg-zoo module run, and the README's GPT snippet works."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from asg import nn
from asg.zoo import GPT, GPTConfig

MODULES = ["asg.zoo", "asg.zoo.mlp", "asg.zoo.cnn", "asg.zoo.gpt", "asg.zoo.bert", "asg.zoo.vit",
           "asg.zoo.transformer", "asg.zoo.hf", "asg.zoo.sentence"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


def test_configure_optimizers_decays_only_matrices():
    nn.init.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=8))
    opt = model.configure_optimizers(weight_decay=0.1, lr=1e-3)
    decay, no_decay = (g["params"] for g in opt.param_groups)
    assert all(p.ndim == 2 for p in decay) and all(p.ndim == 1 for p in no_decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    ids = model.generate(
        np.array([[1, 2, 3]]), max_new_tokens=20, temperature=0.8, top_k=5, top_p=0.95, seed=0
    )
    assert ids.shape == (1, 23) and ids.max() < 10
