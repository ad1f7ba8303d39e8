"""The module system: registration, PyTorch's dotted names, state dicts and their errors, modes, scopes."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg import nn


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(4, 12)
        self.ln = nn.LayerNorm(4)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        return self.attn.c_attn(self.ln(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.h = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(12, 3, bias=False)
        self.register_buffer("scale", np.float32(2.0))
        self.register_buffer("cache", np.zeros(3, np.float32), persistent=False)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        return self.head(self.h[1](x)) * self.scale


def test_named_parameters_use_pytorch_dotted_names() -> None:
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == [
        "h.0.attn.c_attn.weight",
        "h.0.attn.c_attn.bias",
        "h.0.ln.weight",
        "h.0.ln.bias",
        "h.1.attn.c_attn.weight",
        "h.1.attn.c_attn.bias",
        "h.1.ln.weight",
        "h.1.ln.bias",
        "head.weight",
    ]
    assert len(list(net.parameters())) == 9
    assert [n for n, _ in net.named_buffers()] == ["scale", "cache"]
    # state_dict: own parameters and persistent buffers first, then the children (PyTorch's order)
    assert list(net.state_dict()) == ["scale", *names]


def test_calling_builds_nodes_in_the_module_scope_and_names_parameters() -> None:
    net = Net()
    y = net(ag.input("x", ("B", 4)))
    graph = ag.Graph([y.node])
    by_op = {}
    for node in graph.nodes:
        by_op.setdefault(node.op, []).append(node)
    assert net.h[1].attn.c_attn.weight.name == "h.1.attn.c_attn.weight"
    assert net.h[1].attn.c_attn.weight.node.data.name == "h.1.attn.c_attn.weight"
    assert [n.meta["scope"] for n in by_op["matmul"]] == ["h.1.attn.c_attn", "head"]
    scopes = {n.meta.get("scope") for n in graph.nodes if n.op not in ("input", "parameter", "constant")}
    assert {"h.1.attn.c_attn", "h.1.ln", "head"} <= scopes
    ln = next(n for n in graph.nodes if n.op == "layer_norm")
    assert ln.meta["scope"] == "h.1.ln"


def test_attribute_assignment_registers_and_replaces() -> None:
    m = nn.Module()
    m.w = nn.Parameter(np.ones(3))
    m.s = ag.state(np.zeros(2, np.float32))
    m.child = nn.Linear(2, 2)
    assert [n for n, _ in m.named_parameters()] == ["w", "child.weight", "child.bias"]
    assert [n for n, _ in m.named_buffers()] == ["s"]
    m.w = 5  # a plain value replaces the parameter
    assert [n for n, _ in m.named_parameters()] == ["child.weight", "child.bias"] and m.w == 5
    del m.child
    assert list(m.named_parameters()) == []
    with pytest.raises(AttributeError, match="call super"):

        class Broken(nn.Module):
            def __init__(self) -> None:
                self.w = nn.Parameter(np.ones(1))

        Broken()


def test_tied_parameter_is_listed_once_but_saved_under_both_names() -> None:
    m = nn.Module()
    m.a = nn.Linear(3, 3, bias=False)
    m.b = nn.Linear(3, 3, bias=False)
    m.b.weight = m.a.weight
    assert [n for n, _ in m.named_parameters()] == ["a.weight"]
    assert list(m.state_dict()) == ["a.weight", "b.weight"]


def test_state_dict_round_trip_and_copies() -> None:
    a, b = Net(), Net()
    sd = a.state_dict()
    sd["head.weight"][:] = 7.0  # a copy: the model is untouched
    assert not (a.head.weight.numpy() == 7.0).all()
    result = b.load_state_dict(a.state_dict())
    assert result == nn.IncompatibleKeys([], [])
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_load_state_dict_errors_list_missing_unexpected_and_mismatched() -> None:
    net = Net()
    sd = net.state_dict()
    del sd["head.weight"]
    sd["extra.bias"] = np.zeros(2, np.float32)
    with pytest.raises(nn.StateDictError) as err:
        net.load_state_dict(sd)
    assert str(err.value) == (
        "load_state_dict into Net: missing keys: head.weight. unexpected keys: extra.bias. "
        "Pass strict=False to load the matching keys only"
    )
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["head.weight"] and unexpected == ["extra.bias"]

    sd = net.state_dict()
    sd["h.0.ln.weight"] = np.zeros(5, np.float32)
    with pytest.raises(nn.StateDictError) as err:
        net.load_state_dict(sd, strict=False)
    assert str(err.value) == (
        "load_state_dict into Net: shape mismatches: h.0.ln.weight: the file has (5,), the model (4,)"
    )


def test_non_strict_load_changes_only_matching_keys() -> None:
    net = Net()
    before = net.head.weight.numpy().copy()
    net.load_state_dict({"h.0.ln.bias": np.full(4, 3.0, np.float32)}, strict=False)
    np.testing.assert_array_equal(net.h[0].ln.bias.numpy(), np.full(4, 3.0))
    np.testing.assert_array_equal(net.head.weight.numpy(), before)


def test_train_eval_propagate_and_change_the_graph_built() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    assert model.training and model[1].training
    model.eval()
    assert not model.training and not model[1].training
    y = model(ag.input("x", ("B", 4)))
    assert "bernoulli" not in ag.Graph([y.node]).op_counts()
    model.train()
    y = model(ag.input("x", ("B", 4)))
    assert "bernoulli" in ag.Graph([y.node]).op_counts()


def test_containers() -> None:
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and len(seq[1:]) == 2
    f = ag.compile(seq(ag.input("x", ("B", 2))))
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    w1, b1, w2, b2 = (p.numpy() for p in seq.parameters())
    np.testing.assert_allclose(f(x), np.maximum(x @ w1.T + b1, 0) @ w2.T + b2, rtol=1e-5, atol=1e-6)

    ml = nn.ModuleList([nn.Linear(2, 2)]).append(nn.Linear(2, 2))
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    md = nn.ModuleDict({"a": nn.Linear(2, 2)})
    md["b"] = nn.Identity()
    assert (
        list(md) == ["a", "b"]
        and "a" in md
        and [n for n, _ in md.named_parameters()] == ["a.weight", "a.bias"]
    )
    assert "(0): Linear(in_features=2, out_features=3, bias=True)" in repr(seq)


def test_register_parameter_rejects_non_variables() -> None:
    m = nn.Module()
    with pytest.raises(TypeError, match="expected a trainable variable"):
        m.register_parameter("w", ag.input("x", (2,)))
    m.register_parameter("bias", None)
    assert list(m.named_parameters()) == [] and m.bias is None


def test_torch_state_dict_loads_by_name_into_the_same_structure() -> None:
    torch = pytest.importorskip("torch")

    class TorchNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()
            )
            self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    class OurNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            self.fc = nn.Linear(4 * 6 * 6, 3)

    theirs, ours = TorchNet(), OurNet()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    ours.load_state_dict(theirs.state_dict())  # torch tensors are accepted too
    for k, v in theirs.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[k], v.numpy(), err_msg=k)
        assert ours.state_dict()[k].dtype == v.numpy().dtype, k


def test_nodes_built_by_a_module_point_at_the_users_line():
    import asg.core as ag
    from asg import nn

    layer = nn.Linear(3, 2)
    out = layer(ag.input("x", ("B", 3)))  # the line every node of the layer points at
    line = f"{__file__}:{out_line()}"
    graph = ag.Graph([out.node])
    sources = {n.meta["source"] for n in graph.nodes if n.op not in ("input", "parameter", "constant")}
    assert sources == {line}, sources


def out_line() -> int:
    import inspect

    source, start = inspect.getsourcelines(test_nodes_built_by_a_module_point_at_the_users_line)
    return start + next(i for i, text in enumerate(source) if "the line every node" in text)
