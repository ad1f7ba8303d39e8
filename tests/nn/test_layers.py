"""Layers against PyTorch (weights loaded by name, outputs and gradients) and numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import compare_module, torch_or_skip

import asg.core as ag
import asg.core.testing as agt
from asg import nn
from asg.nn import functional as F


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _cases(tn):
    return [
        ("linear", nn.Linear(6, 5), tn.Linear(6, 5), [_x(4, 3, 6)]),
        ("linear-nobias", nn.Linear(6, 5, bias=False), tn.Linear(6, 5, bias=False), [_x(4, 6)]),
        (
            "conv",
            nn.Conv2d(3, 4, 3, stride=2, padding=1),
            tn.Conv2d(3, 4, 3, stride=2, padding=1),
            [_x(2, 3, 9, 8)],
        ),
        (
            "conv-same-dilated",
            nn.Conv2d(2, 4, (3, 5), padding="same", dilation=2),
            tn.Conv2d(2, 4, (3, 5), padding="same", dilation=2),
            [_x(2, 2, 10, 11)],
        ),
        (
            "conv-depthwise",
            nn.Conv2d(4, 8, 3, groups=4, bias=False),
            tn.Conv2d(4, 8, 3, groups=4, bias=False),
            [_x(2, 4, 7, 7)],
        ),
        (
            "conv-transpose",
            nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
            tn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
            [_x(2, 4, 5, 6)],
        ),
        ("maxpool", nn.MaxPool2d(3, 2, padding=1), tn.MaxPool2d(3, 2, padding=1), [_x(2, 3, 9, 9)]),
        (
            "avgpool",
            nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
            tn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
            [_x(2, 3, 7, 7)],
        ),
        ("adaptive-avg", nn.AdaptiveAvgPool2d((3, 2)), tn.AdaptiveAvgPool2d((3, 2)), [_x(2, 3, 7, 5)]),
        ("adaptive-max", nn.AdaptiveMaxPool2d(3), tn.AdaptiveMaxPool2d(3), [_x(2, 3, 7, 8)]),
        ("batchnorm1d", nn.BatchNorm1d(5), tn.BatchNorm1d(5), [_x(8, 5)]),
        ("batchnorm1d-3d", nn.BatchNorm1d(5), tn.BatchNorm1d(5), [_x(4, 5, 6)]),
        ("batchnorm2d", nn.BatchNorm2d(3, momentum=0.3), tn.BatchNorm2d(3, momentum=0.3), [_x(4, 3, 5, 5)]),
        ("layernorm", nn.LayerNorm((4, 5)), tn.LayerNorm((4, 5)), [_x(3, 4, 5)]),
        ("rmsnorm", nn.RMSNorm(6), tn.RMSNorm(6), [_x(3, 2, 6)]),
        ("rmsnorm-eps", nn.RMSNorm(6, eps=1e-3), tn.RMSNorm(6, eps=1e-3), [_x(3, 6)]),
        ("groupnorm", nn.GroupNorm(2, 6), tn.GroupNorm(2, 6), [_x(3, 6, 4, 4)]),
        ("flatten", nn.Flatten(), tn.Flatten(), [_x(2, 3, 4, 5)]),
        ("identity", nn.Identity(), tn.Identity(), [_x(2, 3)]),
        ("relu", nn.ReLU(), tn.ReLU(), [_x(4, 7)]),
        ("leaky", nn.LeakyReLU(0.2), tn.LeakyReLU(0.2), [_x(4, 7)]),
        ("gelu", nn.GELU(), tn.GELU(), [_x(4, 7)]),
        ("gelu-tanh", nn.GELU("tanh"), tn.GELU("tanh"), [_x(4, 7)]),
        ("silu", nn.SiLU(), tn.SiLU(), [_x(4, 7)]),
        ("tanh", nn.Tanh(), tn.Tanh(), [_x(4, 7)]),
        ("sigmoid", nn.Sigmoid(), tn.Sigmoid(), [_x(4, 7)]),
        ("elu", nn.ELU(0.5), tn.ELU(0.5), [_x(4, 7)]),
        ("softplus", nn.Softplus(2.0, 3.0), tn.Softplus(2.0, 3.0), [_x(4, 7)]),
        ("softmax", nn.Softmax(1), tn.Softmax(1), [_x(4, 7, 2)]),
        ("logsoftmax", nn.LogSoftmax(-1), tn.LogSoftmax(-1), [_x(4, 7)]),
    ]


@pytest.mark.torch
@pytest.mark.parametrize("index", range(30))
def test_layer_matches_pytorch(index: int) -> None:
    torch = torch_or_skip()
    torch.manual_seed(index)
    name, ours, theirs, arrays = _cases(torch.nn)[index]
    # random affine parameters, so the comparison sees them
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.ndim == 1 and "norm" in name else 0.0))
    compare_module(ours, theirs, *arrays, rtol=1e-5, atol=1e-5, grad_atol=2e-5)


@pytest.mark.torch
@pytest.mark.parametrize("cls", ["BatchNorm1d", "BatchNorm2d"])
def test_batchnorm_running_statistics_and_eval_match_pytorch(cls: str) -> None:
    torch = torch_or_skip()
    theirs = getattr(torch.nn, cls)(3, momentum=0.2)
    ours = getattr(nn, cls)(3, momentum=0.2)
    shape = (6, 3) if cls == "BatchNorm1d" else (4, 3, 5, 5)
    x = ag.input("x", ("B", *shape[1:]))
    with nn.capture_updates() as updates:
        y = ours(x)
    step = ag.compile(y, updates=updates)
    for i in range(3):
        a = _x(*shape, seed=i) * 2 + 1
        np.testing.assert_allclose(step(a), theirs(torch.tensor(a)).detach().numpy(), rtol=1e-5, atol=1e-5)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    assert int(ours.num_batches_tracked.numpy()) == 3
    ours.eval()
    theirs.eval()
    infer = ag.compile(ours(ag.input("x", ("B", *shape[1:]))))
    a = _x(*shape, seed=9)
    np.testing.assert_allclose(infer(a), theirs(torch.tensor(a)).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.torch
def test_embedding_with_padding_idx_matches_pytorch() -> None:
    torch = torch_or_skip()
    theirs, ours = torch.nn.Embedding(7, 4, padding_idx=2), nn.Embedding(7, 4, padding_idx=2)
    idx = np.array([[0, 2, 5], [2, 2, 6]])
    compare_module(ours, theirs, idx)
    # the padding row gets no gradient
    ours.load_state_dict({"weight": np.ones((7, 4), np.float32)})
    (g,) = ag.grad(ours(ag.input("i", (2, 3), "int64")).sum(), [ours.weight])
    grad = ag.compile(g)(idx)
    assert (grad[2] == 0).all() and grad[0].tolist() == [1.0] * 4


def test_dropout_statistics_stream_and_eval() -> None:
    drop = nn.Dropout(0.25)
    x = ag.input("x", ("B", 1000))
    with nn.capture_updates() as updates:
        y = drop(x)
    step = ag.compile(y, updates=updates)
    ones = np.ones((4, 1000), np.float32)
    a, b = step(ones), step(ones)
    assert set(np.unique(a).tolist()) == {0.0, float(np.float32(1.0 / 0.75))}
    assert abs((a == 0).mean() - 0.25) < 0.02
    assert (a != b).any()  # the stream advances every step
    drop.eval()
    assert drop(x) is x


def test_dropout2d_zeroes_whole_channels() -> None:
    drop = nn.Dropout2d(0.5)
    with nn.capture_updates() as updates:
        y = drop(ag.input("x", ("B", 64, 3, 3)))
    out = ag.compile(y, updates=updates)(np.ones((8, 64, 3, 3), np.float32))
    per_channel = out.reshape(8, 64, 9)
    assert ((per_channel == 0).all(-1) | (per_channel == 2.0).all(-1)).all()
    assert 0.35 < (per_channel[..., 0] == 0).mean() < 0.65


def test_functional_norms_gradcheck_against_numpy() -> None:
    x = agt.rand(3, 6, 2, 2, seed=1)
    w, b = agt.rand(6, seed=2), agt.rand(6, seed=3)

    def group_ref(x, w, b):
        g = x.reshape(3, 2, -1)
        y = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
        return y * w.reshape(1, 6, 1, 1) + b.reshape(1, 6, 1, 1)

    agt.check_op(lambda x, w, b: F.group_norm(x, 2, w, b), x, w, b, ref=group_ref, order=1)
    agt.check_op(
        lambda x, w: F.rms_norm(x, (2, 2), w, eps=1e-6),
        x,
        agt.rand(2, 2, seed=4),
        ref=lambda x, w: x / np.sqrt((x * x).mean((2, 3), keepdims=True) + 1e-6) * w,
        order=2,
    )


def test_layer_errors_name_the_layer_and_shapes() -> None:
    with pytest.raises(
        ValueError, match=r"Conv2d: in_channels=3 and out_channels=4 must be divisible by groups=2"
    ):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(
        ag.ShapeError, match=r"BatchNorm2d\(3\) at the root: expected a 4-d input, got x \(B, 3\)"
    ):
        nn.BatchNorm2d(3)(ag.input("x", ("B", 3)))
    # asg-core words the message; what asg-nn adds is the dotted parameter name
    with pytest.raises(ag.ShapeError, match=r"linear: .*x \(B, 5\).* weight 0\.weight \(2, 4\)"):
        nn.Sequential(nn.Linear(4, 2))(ag.input("x", ("B", 5)))
    with pytest.raises(ValueError, match="Dropout: p must be a probability in"):
        nn.Dropout(1.5)


BAG_CASES = [
    ("mean-offsets", dict(mode="mean"), "flat"),
    ("sum-offsets-weights", dict(mode="sum"), "flat-weights"),
    ("max-offsets", dict(mode="max"), "flat"),
    ("mean-2d", dict(mode="mean"), "2d"),
    ("max-2d-padding", dict(mode="max", padding_idx=1), "2d"),
    ("sum-padding-last-offset", dict(mode="sum", padding_idx=0, include_last_offset=True), "flat-last"),
    ("mean-padding-empty-bag", dict(mode="mean", padding_idx=2), "flat-empty"),
]


@pytest.mark.torch
@pytest.mark.parametrize(("name", "kw", "layout"), BAG_CASES, ids=[c[0] for c in BAG_CASES])
def test_embedding_bag_matches_pytorch(name: str, kw: dict, layout: str) -> None:
    torch = torch_or_skip()
    torch.manual_seed(0)
    ours, theirs = nn.EmbeddingBag(6, 3, **kw), torch.nn.EmbeddingBag(6, 3, **kw)
    flat = np.array([1, 2, 4, 5, 4, 3, 2, 0, 1])
    if layout.startswith("flat"):
        offsets = {
            "flat": [0, 2, 5],
            "flat-weights": [0, 4, 4],
            "flat-last": [0, 3, 3, 9],
            "flat-empty": [0, 1, 6],
        }
        off = np.array(offsets[layout])
        arrays = [flat, off]
        if layout == "flat-empty":
            arrays[0] = np.array([2, 2, 4, 5, 4, 3, 2, 0, 1])  # the first bag holds only padding
        if layout == "flat-weights":
            arrays.append(np.linspace(0.5, 2.0, 9).astype(np.float32))
    else:
        arrays = [np.array([[1, 2, 1], [4, 5, 0], [1, 1, 1]])]
    compare_module(ours, theirs, *arrays)


def test_embedding_bag_takes_any_bag_layout_with_one_graph() -> None:
    bag = nn.EmbeddingBag(10, 4, mode="sum")
    f = ag.compile(bag(ag.input("i", ("N",), "int64"), ag.input("o", ("B",), "int64")))
    w = bag.weight.numpy()
    np.testing.assert_allclose(
        f(np.array([1, 2, 3]), np.array([0, 1])), np.stack([w[1], w[2] + w[3]]), rtol=1e-6
    )
    np.testing.assert_allclose(
        f(np.array([4, 5]), np.array([0, 0, 1])), np.stack([0 * w[0], w[4], w[5]]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="per_sample_weights needs mode='sum'"):
        nn.EmbeddingBag(3, 2)(ag.input("i", (2, 2), "int64"), per_sample_weights=ag.input("w", (2, 2)))
