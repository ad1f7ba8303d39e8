"""Every zoo model builds, runs forward, differentiates into every parameter and learns in a few steps."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg import nn
from asg.zoo import (
    GPT,
    MLP,
    BertConfig,
    BertModel,
    GPTConfig,
    LeNet5,
    LeNetConfig,
    MLPConfig,
    ResNet,
    ResNetConfig,
    Seq2SeqTransformer,
    TransformerConfig,
    TransformerEncoderModel,
    ViT,
    ViTConfig,
    lm_loss,
    mean_pool,
    resnet18,
    resnet34,
    resnet50,
    sample_next,
)

RNG = np.random.default_rng(0)


def grads_and_step(
    model: nn.Module, loss_fn, inputs: list[ag.Tensor], arrays: list[np.ndarray], steps: int = 8
):
    """Gradients of every parameter are finite and some non-zero; Adam steps lower the loss."""
    out = model(*inputs[:-1])
    loss = loss_fn(out, inputs[-1])
    names, params = zip(*model.named_parameters(), strict=True)
    grads = ag.compile(ag.grad(loss, list(params)), inputs=inputs)(*arrays)
    for name, g in zip(names, grads, strict=True):
        assert np.all(np.isfinite(g)), name
    dead = [n for n, g in zip(names, grads, strict=True) if not np.any(g)]
    assert not dead, f"parameters with an all-zero gradient: {dead}"
    opt = nn.optim.Adam(model.parameters(), lr=3e-3)
    step = nn.compile_train_step(model, loss_fn, opt, inputs=inputs)
    losses = [step(*arrays) for _ in range(steps)]
    assert losses[-1] < losses[0], losses


def xent(out, y):
    return ag.cross_entropy(out, y)


def test_mlp_forward_backward_and_dropout():
    nn.init.manual_seed(0)
    model = MLP(MLPConfig(in_features=12, hidden=(16, 8), num_classes=3, activation="gelu", dropout=0.1))
    assert [k for k in model.state_dict()] == [
        f"layers.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")
    ]
    x, y = RNG.normal(size=(10, 3, 4)).astype("float32"), RNG.integers(0, 3, 10)
    grads_and_step(model, xent, [ag.input("x", ("B", 3, 4)), ag.input("y", ("B",), "int64")], [x, y])
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP(MLPConfig(activation="swishy"))


@pytest.mark.parametrize(("size", "kw"), [(28, {}), (8, {"kernel_size": 3, "conv2_padding": 1})])
def test_lenet_forward_backward(size, kw):
    nn.init.manual_seed(0)
    model = LeNet5(LeNetConfig(image_size=size, **kw))
    x, y = RNG.normal(size=(6, 1, size, size)).astype("float32"), RNG.integers(0, 10, 6)
    assert nn.compile_inference(model)(x).shape == (6, 10)
    grads_and_step(model, xent, [ag.input("x", ("B", 1, size, size)), ag.input("y", ("B",), "int64")], [x, y])


def test_lenet_too_small_image_is_refused():
    with pytest.raises(ValueError, match="image_size=8 is too small for kernel_size=5"):
        LeNet5(LeNetConfig(image_size=8))


def test_resnet_names_and_shapes():
    r18, r34, r50 = resnet18(), resnet34(), resnet50()
    counts = [sum(int(np.prod(p.shape)) for p in m.parameters()) for m in (r18, r34, r50)]
    assert counts == [11_689_512, 21_797_672, 25_557_032]  # torchvision's parameter counts
    keys = list(r50.state_dict())
    assert (
        "layer1.0.downsample.0.weight" in keys
        and "layer4.2.bn3.running_var" in keys
        and keys[-1] == "fc.bias"
    )
    x = ag.input("x", ("N", 3, 64, 64))
    assert r18(x).shape == ("N", 1000)
    assert resnet18(10, stem="cifar")(ag.input("x", ("N", 3, 32, 32))).shape == ("N", 10)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_resnet_forward_backward(block):
    nn.init.manual_seed(0)
    model = ResNet(ResNetConfig(block, (1, 1, 1, 1), num_classes=4, width=4, stem="cifar"))
    x, y = RNG.normal(size=(4, 3, 8, 8)).astype("float32"), np.array([0, 1, 2, 3])
    grads_and_step(model, xent, [ag.input("x", ("B", 3, 8, 8)), ag.input("y", ("B",), "int64")], [x, y])


@pytest.mark.torch
def test_resnet_matches_torch_basic_and_bottleneck():
    torch = pytest.importorskip("torch")

    class TorchBlock(torch.nn.Module):  # torchvision's BasicBlock/Bottleneck, spelt out
        def __init__(self, ours):
            super().__init__()
            self.convs = [n for n in ("conv1", "conv2", "conv3") if hasattr(ours, n)]
            for n in self.convs:
                c = getattr(ours, n)
                w = c.weight.numpy()
                setattr(
                    self,
                    n,
                    torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], c.stride, c.padding, bias=False),
                )
                setattr(self, "bn" + n[-1], torch.nn.BatchNorm2d(w.shape[0]))
            if ours.downsample is not None:
                w = ours.downsample[0].weight.numpy()
                self.downsample = torch.nn.Sequential(
                    torch.nn.Conv2d(w.shape[1], w.shape[0], 1, ours.downsample[0].stride, bias=False),
                    torch.nn.BatchNorm2d(w.shape[0]),
                )
            else:
                self.downsample = None

        def forward(self, x):
            out = x
            for i, n in enumerate(self.convs):
                out = getattr(self, "bn" + n[-1])(getattr(self, n)(out))
                if i < len(self.convs) - 1:
                    out = torch.relu(out)
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    nn.init.manual_seed(1)
    for block in ("basic", "bottleneck"):
        model = ResNet(ResNetConfig(block, (1, 1, 1, 1), num_classes=5, width=4, stem="imagenet"))
        ref = torch.nn.Module()
        ref.conv1 = torch.nn.Conv2d(3, 4, 7, 2, 3, bias=False)
        ref.bn1 = torch.nn.BatchNorm2d(4)
        for i in range(1, 5):
            layer = getattr(model, f"layer{i}")
            setattr(ref, f"layer{i}", torch.nn.Sequential(*[TorchBlock(b) for b in layer]))
        ref.fc = torch.nn.Linear(model.fc.in_features, 5)
        sd = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
        ref.load_state_dict(sd)
        ref.eval()
        x = RNG.normal(size=(2, 3, 32, 32)).astype("float32")
        with torch.no_grad():
            h = torch.nn.functional.max_pool2d(torch.relu(ref.bn1(ref.conv1(torch.from_numpy(x)))), 3, 2, 1)
            for i in range(1, 5):
                h = getattr(ref, f"layer{i}")(h)
            want = ref.fc(h.mean((2, 3))).numpy()
        got = nn.compile_inference(model)(x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("position", "norm"), [("learned", "layernorm"), ("rope", "rmsnorm"), ("alibi", "layernorm")]
)
def test_gpt_forward_backward(position, norm):
    nn.init.manual_seed(0)
    config = GPTConfig(
        block_size=8, vocab_size=13, n_layer=2, n_head=2, n_embd=8, position=position, norm=norm
    )
    model = GPT(config)
    keys = list(model.state_dict())
    assert keys[0] == "transformer.wte.weight" and "transformer.h.1.attn.c_attn.weight" in keys
    assert keys[-1] == "lm_head.weight" and model.lm_head.weight is model.transformer["wte"].weight
    x = RNG.integers(0, 13, (3, 8))
    y = np.roll(x, -1, 1)
    idx, tgt = ag.input("idx", ("B", "T"), "int64"), ag.input("targets", ("B", "T"), "int64")
    grads_and_step(model, lm_loss, [idx, tgt], [x, y])


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
def test_gpt_kv_cached_generation_equals_full_recompute(position):
    nn.init.manual_seed(3)
    config = GPTConfig(block_size=10, vocab_size=17, n_layer=2, n_head=2, n_embd=16, position=position)
    model = GPT(config)
    full = nn.compile_inference(model, inputs=[ag.input("idx", ("B", "T"), "int64")])
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    got = model.generate(
        prompt, max_new_tokens=15, temperature=0.0
    )  # runs past block_size: the cache restarts
    seq = prompt
    for _ in range(15):
        last = full(seq[:, -(config.block_size - 1) :])[:, -1]
        seq = np.concatenate([seq, last.argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(got, seq)
    # the cached step's logits equal the full forward's
    step = model._decoder("numpy")
    S, hs = config.block_size, config.n_embd // config.n_head
    t = prompt.shape[1]
    write = np.eye(S, dtype=np.float32)[:t]
    allowed = np.tril(np.ones((t, S), bool))
    empty = [np.zeros((2, 2, S, hs), np.float32)] * 4
    logits = step(prompt, np.arange(t), write, allowed, *empty)[0]
    np.testing.assert_allclose(logits, full(prompt), rtol=1e-5, atol=1e-6)


def test_gpt_sampling_is_seeded_and_respects_top_k_top_p():
    nn.init.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=1, n_head=2, n_embd=8))
    a = model.generate(np.array([[1]]), 10, temperature=1.0, top_k=5, seed=7)
    b = model.generate(np.array([[1]]), 10, temperature=1.0, top_k=5, seed=7)
    np.testing.assert_array_equal(a, b)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    draws = {int(sample_next(logits, 1.0, top_p=0.7, rng=rng)[0]) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: the nucleus is {0, 1}
    draws = {int(sample_next(logits, 1.0, top_k=3, rng=rng)[0]) for _ in range(300)}
    assert draws == {0, 1, 2}
    counts = np.bincount([int(sample_next(logits, 1.0, rng=rng)[0]) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    with pytest.raises(ValueError, match="top_p must be in"):
        sample_next(logits, 1.0, top_p=1.5)


def test_bert_forward_backward_with_padding_mask():
    nn.init.manual_seed(0)
    config = BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = BertModel(config)
    ids, mask = RNG.integers(1, 30, (3, 6)), np.ones((3, 6), np.int64)
    mask[0, 4:] = 0
    i, m = ag.input("input_ids", ("B", "T"), "int64"), ag.input("attention_mask", ("B", "T"), "int64")
    h, pooled = model(i, m)
    f = ag.compile([h, pooled, mean_pool(h, m)], inputs=[i, m])
    hidden, _, emb = f(ids, mask)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # padding does not change the states of the real tokens
    hidden_short, _, _ = f(ids[:1, :4], mask[:1, :4])
    np.testing.assert_allclose(hidden[0, :4], hidden_short[0], rtol=1e-4, atol=1e-5)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = model
            self.head = nn.Linear(16, 2)

        def forward(self, ids, mask):
            return self.head(self.bert(ids, mask)[1])

    grads_and_step(
        Classifier(), xent, [i, m, ag.input("y", ("B",), "int64")], [ids, mask, np.array([0, 1, 1])]
    )


def test_vit_forward_backward():
    nn.init.manual_seed(0)
    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    model = ViT(config)
    assert "embeddings.patch_embeddings.projection.weight" in model.state_dict()
    x, y = RNG.normal(size=(4, 1, 8, 8)).astype("float32"), np.array([0, 1, 2, 0])
    grads_and_step(model, xent, [ag.input("x", ("B", 1, 8, 8)), ag.input("y", ("B",), "int64")], [x, y])


def test_transformer_encoder_and_seq2seq_forward_backward():
    nn.init.manual_seed(0)
    config = TransformerConfig(
        vocab_size=12, d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, num_classes=3
    )
    enc = TransformerEncoderModel(config)
    src, y = RNG.integers(0, 12, (4, 5)), np.array([0, 1, 2, 0])
    grads_and_step(
        enc, xent, [ag.input("src", ("B", "S"), "int64"), ag.input("y", ("B",), "int64")], [src, y]
    )

    model = Seq2SeqTransformer(config)
    tgt = np.concatenate([np.zeros((4, 1), np.int64), src[:, :-1]], axis=1)  # learn to copy, shifted right
    inputs = [
        ag.input("src", ("B", "S"), "int64"),
        ag.input("tgt", ("B", "T"), "int64"),
        ag.input("y", ("B", "T"), "int64"),
    ]
    grads_and_step(model, lm_loss, inputs, [src, tgt, src], steps=30)
    assert model.greedy_decode(src, bos=0, max_len=5).shape == (4, 6)
