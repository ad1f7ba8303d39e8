"""ONNX export: every forward op maps, and every exported model runs in onnxruntime with ASG's numbers.

Each model is exported with :func:`asg.core.export.to_onnx`, read back from disk, checked with
``onnx.checker.check_model(full_check=True)`` and run in onnxruntime on the CPU; its outputs are
compared with ASG's on the same inputs. Symbolic dimensions stay dynamic: models with a symbolic
batch (and sequence length) run at two sizes from one file.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import asg.core as ag
from asg.core.export import NOT_EXPORTED, ONNX_MAPPING, ONNX_OPS, ExportError, to_onnx
from asg.core.testing import OP_CASES, scratch_ops
from asg.core.testing.check import _inputs

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
# Imported with the module: asg-nn registers ops of its own, which the registry fixture must find present.
try:
    from asg import nn
except ImportError:  # pragma: no cover - asg-core alone
    nn = None
try:
    from asg import zoo
except ImportError:  # pragma: no cover
    zoo = None

TOL = 1e-5
MAX_ERRORS: dict[str, float] = {}  # model -> max abs error against ASG (printed by the last test)


# ----------------------------------------------------------------------------- helpers
def _session(path: Path | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _asg_outputs(fn: ag.Function, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    result = fn(**feeds)
    return [np.asarray(r) for r in (result if isinstance(result, list) else [result])]


def _compare(got: list[np.ndarray], want: list[np.ndarray], what: str) -> float:
    assert len(got) == len(want), what
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        if w.dtype.kind != "f":
            np.testing.assert_array_equal(g, w, err_msg=what)
            continue
        finite = np.isfinite(w)
        np.testing.assert_array_equal(g[~finite], w[~finite], err_msg=what)
        if finite.any():
            worst = max(worst, float(np.max(np.abs(g[finite] - w[finite]))))
            np.testing.assert_allclose(g[finite], w[finite], rtol=TOL, atol=TOL, err_msg=what)
    return worst


def _check_export(
    fn: ag.Function, runs: list[dict[str, np.ndarray]], tmp_path: Path, name: str, **export: object
) -> onnx.ModelProto:
    """Export ``fn`` to a file, check it, run it on every feed dict and compare with ASG."""
    path = tmp_path / f"{name}.onnx"
    model = to_onnx(fn, path, **export)
    onnx.checker.check_model(str(path), full_check=True)
    session = _session(path)
    worst = 0.0
    for feeds in runs:
        got = session.run(None, feeds)
        worst = max(
            worst, _compare(got, _asg_outputs(fn, feeds), f"{name} {[a.shape for a in feeds.values()]}")
        )
    MAX_ERRORS[name] = max(worst, MAX_ERRORS.get(name, 0.0))
    return model


def _param(
    rng: np.random.Generator, shape: tuple[int, ...], name: str, scale: float = 0.2, offset: float = 0.0
):
    return ag.parameter((rng.normal(size=shape) * scale + offset).astype(np.float32), name=name)


def _dims(model: onnx.ModelProto, value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


# ----------------------------------------------------------------------------- the mapping table
def test_every_forward_op_of_asg_core_maps_and_the_rest_is_listed_with_a_reason():
    core_ops = {name for name, op in ag.OPS.items() if op.family.startswith("asg.core.")}
    assert set(ONNX_OPS) | set(NOT_EXPORTED) == core_ops
    assert not set(ONNX_OPS) & set(NOT_EXPORTED)
    assert set(ONNX_MAPPING) == set(ONNX_OPS)
    assert (
        ONNX_MAPPING["layer_norm"] == "LayerNormalization" and ONNX_MAPPING["embedding"] == "Gather (axis 0)"
    )
    assert all(not op.endswith(("_backward", "_update")) for op in ONNX_OPS)


_REFUSED_CASES = {"batch_norm-training_2d", "batch_norm-training_4d"}  # tested below


def _forward_cases() -> list:
    params = []
    for op, cases in OP_CASES.items():
        if op in NOT_EXPORTED or op == "dropout":
            continue
        params += [pytest.param(c, id=c.id) for c in cases if c.id not in _REFUSED_CASES]
    return params


@pytest.mark.parametrize("case", _forward_cases())
def test_op_case_runs_in_onnxruntime_as_in_asg(case):
    """Every forward case of asg.core.testing.OP_CASES (each op, composites and their configurations)."""
    arrays = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in case.arrays()]
    xs = _inputs(arrays)
    fn = ag.compile(case.fn(*xs), inputs=xs)
    model = to_onnx(fn)
    got = _session(model.SerializeToString()).run(None, {x.name: a for x, a in zip(xs, arrays, strict=True)})
    err = _compare(got, _asg_outputs(fn, {x.name: a for x, a in zip(xs, arrays, strict=True)}), case.id)
    MAX_ERRORS["op cases"] = max(err, MAX_ERRORS.get("op cases", 0.0))


def test_batch_norm_in_training_mode_is_refused_unless_allowed(tmp_path):
    x = ag.input("x", ("N", 3, 4, 4))
    mean, var = (
        ag.state(np.zeros(3, "float32"), "bn.running_mean"),
        ag.state(np.ones(3, "float32"), "bn.running_var"),
    )
    y, _, _ = ag.batch_norm(x, mean, var, training=True)
    fn = ag.compile(y)
    with pytest.raises(ExportError, match=r"normalises by .* = mean x, a mean over the batch axis 0 per channel: "
                       r"this is batch_norm in training mode.*model\.eval\(\)"):  # fmt: skip
        to_onnx(fn)
    data = np.random.default_rng(0).normal(size=(5, 3, 4, 4)).astype(np.float32)
    _check_export(
        fn, [{"x": data}, {"x": data[:2]}], tmp_path, "batch_norm_train", allow_batch_statistics=True
    )


# ----------------------------------------------------------------------------- models built from core ops
def _mlp(rng: np.random.Generator) -> ag.Function:
    x = ag.input("x", ("B", 20))
    h = ag.gelu(ag.linear(x, _param(rng, (32, 20), "fc1.weight"), _param(rng, (32,), "fc1.bias")))
    return ag.compile(
        ag.softmax(ag.linear(h, _param(rng, (10, 32), "fc2.weight"), _param(rng, (10,), "fc2.bias")))
    )


def _lenet(rng: np.random.Generator) -> ag.Function:
    x = ag.input("image", ("B", 1, 28, 28))
    h = ag.max_pool2d(
        ag.relu(
            ag.conv2d(
                x, _param(rng, (6, 1, 5, 5), "conv1.weight"), _param(rng, (6,), "conv1.bias"), padding=2
            )
        ),
        2,
    )  # (B, 6, 14, 14)
    h = ag.max_pool2d(
        ag.relu(
            ag.conv2d(h, _param(rng, (16, 6, 5, 5), "conv2.weight", 0.1), _param(rng, (16,), "conv2.bias"))
        ),
        2,
    )  # (B, 16, 5, 5)
    h = ag.flatten(h, 1)  # (B, 400)
    for i, (n_out, n_in) in enumerate(((120, 400), (84, 120))):
        h = ag.relu(
            ag.linear(
                h,
                _param(rng, (n_out, n_in), f"fc{i + 1}.weight", 0.05),
                _param(rng, (n_out,), f"fc{i + 1}.bias"),
            )
        )
    return ag.compile(ag.log_softmax(ag.linear(h, _param(rng, (10, 84), "fc3.weight"), _param(rng, (10,), "fc3.bias"))).named("log_probs"))  # fmt: skip


def _bn_eval(rng: np.random.Generator, x: ag.Tensor, c: int, name: str) -> ag.Tensor:
    mean = ag.state((rng.normal(size=c) * 0.1).astype(np.float32), f"{name}.running_mean")
    var = ag.state(rng.uniform(0.5, 1.5, size=c).astype(np.float32), f"{name}.running_var")
    weight, bias = _param(rng, (c,), f"{name}.weight", 0.1, 1.0), _param(rng, (c,), f"{name}.bias", 0.1)
    return ag.batch_norm(x, mean, var, weight, bias, training=False).output


def _resnet_block(rng: np.random.Generator) -> ag.Function:
    x = ag.input("x", ("B", 8, 8, 8))
    with ag.scope("layer1.0"):
        h = ag.relu(
            _bn_eval(
                rng,
                ag.conv2d(x, _param(rng, (8, 8, 3, 3), "layer1.0.conv1.weight"), padding=1),
                8,
                "layer1.0.bn1",
            )
        )
        h = _bn_eval(
            rng,
            ag.conv2d(h, _param(rng, (8, 8, 3, 3), "layer1.0.conv2.weight"), padding=1),
            8,
            "layer1.0.bn2",
        )
        h = ag.relu(h + x)  # the residual
    with ag.scope("layer2.0"):  # a strided block with a 1x1 downsample
        d = _bn_eval(
            rng,
            ag.conv2d(h, _param(rng, (16, 8, 1, 1), "layer2.0.downsample.0.weight"), stride=2),
            16,
            "layer2.0.downsample.1",
        )
        h = ag.relu(
            _bn_eval(
                rng,
                ag.conv2d(h, _param(rng, (16, 8, 3, 3), "layer2.0.conv1.weight"), stride=2, padding=1),
                16,
                "layer2.0.bn1",
            )
        )
        h = ag.relu(h + d)  # (B, 16, 4, 4)
    pooled = ag.flatten(ag.adaptive_avg_pool2d(h, 1), 1)  # (B, 16)
    return ag.compile(ag.linear(pooled, _param(rng, (10, 16), "fc.weight"), _param(rng, (10,), "fc.bias")))  # fmt: skip


def _attention(rng, x, prefix, heads, bias=None, allowed=None):
    """Multi-head self-attention from matmuls: (B, T, C) -> (B, T, C)."""
    B, T, C = x.shape
    hs = C // heads
    qkv = ag.linear(
        x, _param(rng, (3 * C, C), f"{prefix}.qkv.weight"), _param(rng, (3 * C,), f"{prefix}.qkv.bias")
    )
    q, k, v = (
        ag.permute(ag.reshape(t, (B, T, heads, hs)), (0, 2, 1, 3)) for t in ag.split(qkv, C, axis=2)
    )  # (B, H, T, hs)
    scores = (q @ ag.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(hs))  # (B, H, T, T)
    if bias is not None:
        scores = scores + bias
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    y = ag.reshape(ag.permute(ag.softmax(scores, axis=-1) @ v, (0, 2, 1, 3)), (B, T, C))  # (B, T, C)
    return ag.linear(y, _param(rng, (C, C), f"{prefix}.out.weight"), _param(rng, (C,), f"{prefix}.out.bias"))


def _ln(rng, x, name):
    C = x.shape[-1]
    return ag.layer_norm(
        x, C, _param(rng, (C,), f"{name}.weight", 0.1, 1.0), _param(rng, (C,), f"{name}.bias", 0.1)
    )


def _bert_block(rng: np.random.Generator, C: int = 32, heads: int = 4, vocab: int = 50) -> ag.Function:
    ids = ag.input("input_ids", ("B", "T"), "int64")
    mask = ag.input("attention_mask", ("B", "T"), "int64")
    types = ag.input("token_type_ids", ("B", "T"), "int64")
    B, T = ids.shape
    x = ag.embedding(ids, _param(rng, (vocab, C), "embeddings.word_embeddings.weight"))
    x = x + ag.embedding(ag.arange(T), _param(rng, (64, C), "embeddings.position_embeddings.weight"))
    x = _ln(
        rng,
        x + ag.embedding(types, _param(rng, (2, C), "embeddings.token_type_embeddings.weight")),
        "embeddings.LayerNorm",
    )
    bias = ag.reshape(ag.where(mask == 0, -1e4, 0.0), (B, 1, 1, T))  # (B, 1, 1, T): padding keys masked
    with ag.scope("encoder.layer.0"):
        x = _ln(
            rng,
            x + _attention(rng, x, "encoder.layer.0.attention", heads, bias=bias),
            "encoder.layer.0.attention.LayerNorm",
        )
        h = ag.gelu(
            ag.linear(
                x,
                _param(rng, (4 * C, C), "encoder.layer.0.intermediate.dense.weight"),
                _param(rng, (4 * C,), "b1"),
            )
        )
        x = _ln(
            rng,
            x
            + ag.linear(
                h, _param(rng, (C, 4 * C), "encoder.layer.0.output.dense.weight"), _param(rng, (C,), "b2")
            ),
            "encoder.layer.0.output.LayerNorm",
        )
    pooled = ag.tanh(
        ag.linear(x[:, 0], _param(rng, (C, C), "pooler.dense.weight"), _param(rng, (C,), "pooler.dense.bias"))
    )
    return ag.compile([x.named("last_hidden_state"), pooled.named("pooler_output")])  # fmt: skip


def _gpt(
    rng: np.random.Generator, C: int = 32, heads: int = 4, vocab: int = 40, layers: int = 2
) -> ag.Function:
    idx = ag.input("idx", ("B", "T"), "int64")
    T = idx.shape[1]
    wte = _param(rng, (vocab, C), "transformer.wte.weight")
    x = ag.embedding(idx, wte) + ag.embedding(
        ag.arange(T), _param(rng, (16, C), "transformer.wpe.weight")
    )  # (B, T, C)
    allowed = ag.causal_mask(T)  # (T, T), symbolic T
    for i in range(layers):
        with ag.scope(f"transformer.h.{i}"):
            pre = f"transformer.h.{i}"
            x = x + _attention(rng, _ln(rng, x, f"{pre}.ln_1"), f"{pre}.attn", heads, allowed=allowed)
            h = ag.linear(
                _ln(rng, x, f"{pre}.ln_2"),
                _param(rng, (4 * C, C), f"{pre}.mlp.c_fc.weight"),
                _param(rng, (4 * C,), f"{pre}.mlp.c_fc.bias"),
            )
            x = x + ag.linear(
                ag.gelu(h, approximate="tanh"),
                _param(rng, (C, 4 * C), f"{pre}.mlp.c_proj.weight"),
                _param(rng, (C,), f"{pre}.mlp.c_proj.bias"),
            )
    return ag.compile(ag.linear(_ln(rng, x, "transformer.ln_f"), wte).named("logits"))  # tied lm_head  # fmt: skip


def test_mlp_with_a_symbolic_batch_runs_at_two_batch_sizes(tmp_path):
    rng = np.random.default_rng(0)
    fn = _mlp(rng)
    runs = [{"x": rng.normal(size=(b, 20)).astype(np.float32)} for b in (1, 7)]
    model = _check_export(fn, runs, tmp_path, "mlp")
    assert _dims(model, model.graph.input[0]) == ["B", 20]
    assert _dims(model, model.graph.output[0]) == ["B", 10]
    assert [i.name for i in model.graph.initializer[:4]] == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(weights["fc1.weight"], fn.state_dict()["fc1.weight"])


def test_lenet(tmp_path):
    rng = np.random.default_rng(1)
    fn = _lenet(rng)
    runs = [{"image": rng.normal(size=(b, 1, 28, 28)).astype(np.float32)} for b in (2, 3)]
    model = _check_export(fn, runs, tmp_path, "lenet")
    assert [o.name for o in model.graph.output] == ["log_probs"]
    assert {"Conv", "MaxPool", "LogSoftmax"} <= {n.op_type for n in model.graph.node}


def test_resnet_block_with_batch_norm_in_eval_mode_and_residuals(tmp_path):
    rng = np.random.default_rng(2)
    fn = _resnet_block(rng)
    runs = [{"x": rng.normal(size=(b, 8, 8, 8)).astype(np.float32)} for b in (1, 4)]
    model = _check_export(fn, runs, tmp_path, "resnet_block")
    assert {"Conv", "GlobalAveragePool", "Relu"} <= {n.op_type for n in model.graph.node}
    assert any(n.name.startswith("layer2.0/") for n in model.graph.node)  # node names carry the scope


def test_bert_encoder_block_with_a_padding_mask_runs_at_two_lengths(tmp_path):
    rng = np.random.default_rng(3)
    fn = _bert_block(rng)
    runs = []
    for b, t in ((2, 5), (3, 9)):
        mask = np.ones((b, t), np.int64)
        mask[0, t - 2 :] = 0
        runs.append(
            {
                "input_ids": rng.integers(0, 50, size=(b, t)),
                "attention_mask": mask,
                "token_type_ids": rng.integers(0, 2, size=(b, t)),
            }
        )
    model = _check_export(fn, runs, tmp_path, "bert_block")
    assert [(o.name, _dims(model, o)) for o in model.graph.output] == [
        ("last_hidden_state", ["B", "T", 32]),
        ("pooler_output", ["B", 32]),
    ]


def test_gpt_forward_with_symbolic_batch_and_length_runs_at_two_lengths(tmp_path):
    rng = np.random.default_rng(4)
    fn = _gpt(rng)
    runs = [{"idx": rng.integers(0, 40, size=(b, t))} for b, t in ((2, 3), (2, 11), (1, 16))]
    model = _check_export(fn, runs, tmp_path, "gpt")
    assert _dims(model, model.graph.input[0]) == ["B", "T"] and _dims(model, model.graph.output[0]) == [
        "B",
        "T",
        40,
    ]
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "Softmax", "Trilu", "Range", "Where", "Tanh"} <= ops
    names = [i.name for i in model.graph.initializer]
    assert names.count("transformer.wte.weight") == 1  # the tied embedding is stored once


def test_opset_17_and_opset_20_give_the_same_numbers(tmp_path):
    rng = np.random.default_rng(5)
    x = ag.input("x", ("B", 6))
    h = ag.gelu(x, approximate="tanh") + ag.gelu(x * 0.5)
    fn = ag.compile([h.mean(axis=1), h.max(axis=1, keepdims=True), h.sum(axis=0)])
    runs = [{"x": rng.normal(size=(b, 6)).astype(np.float32) * 3} for b in (2, 5)]
    for opset in (17, 20):
        model = _check_export(fn, runs, tmp_path, f"opset{opset}", opset=opset)
        assert model.opset_import[0].version == opset
        assert ("Gelu" in {n.op_type for n in model.graph.node}) == (opset >= 20)


def test_reshape_with_several_symbolic_dims_computes_the_target_at_run_time(tmp_path):
    x = ag.input("x", ("B", "T", 6))
    B, T, _ = x.shape
    merged = ag.reshape(x, (-1, 6))  # (B*T, 6)
    split = ag.reshape(merged, (T, B, 2, 3))  # neither B nor T where the input has it
    grid = ag.broadcast_to(ag.reshape(ag.arange(T).astype("float32"), (1, T, 1)), (B, T, 6))
    fn = ag.compile([merged * 2.0, split, grid + x])
    rng = np.random.default_rng(6)
    model = _check_export(fn, [{"x": rng.normal(size=(b, t, 6)).astype(np.float32)} for b, t in ((2, 3), (4, 1))], tmp_path, "reshape")  # fmt: skip
    assert _dims(model, model.graph.output[0]) == ["B*T", 6]
    assert "Shape" in {n.op_type for n in model.graph.node}


# ----------------------------------------------------------------------------- asg.nn and asg.zoo models
def test_asg_nn_models_export(tmp_path):
    if nn is None:
        pytest.skip("asg-nn is not installed")
    nn.init.manual_seed(0)
    rng = np.random.default_rng(7)
    lenet = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    )  # fmt: skip
    infer = nn.compile_inference(lenet, inputs=[ag.input("x", ("B", 1, 8, 8))])
    _check_export(infer.function, [{"x": rng.normal(size=(b, 1, 8, 8)).astype(np.float32)} for b in (1, 3)], tmp_path, "nn_lenet")  # fmt: skip
    model = to_onnx(infer)  # the InferenceFunction itself is accepted
    assert {i.name for i in model.graph.initializer} >= {"0.weight", "1.running_mean", "6.bias"}

    encoder = nn.TransformerEncoderLayer(
        16, 2, dim_feedforward=32, dropout=0.1, activation="gelu", batch_first=True
    )
    infer = nn.compile_inference(encoder, inputs=[ag.input("src", ("B", "T", 16))])
    runs = [{"src": rng.normal(size=(b, t, 16)).astype(np.float32)} for b, t in ((2, 4), (1, 7))]
    _check_export(infer.function, runs, tmp_path, "nn_transformer_encoder_layer")


@pytest.mark.parametrize("name", ["resnet18", "bert", "gpt", "vit"])
def test_asg_zoo_models_export(name, tmp_path):
    if zoo is None:
        pytest.skip("asg-zoo is not installed")
    nn.init.manual_seed(1)
    rng = np.random.default_rng(8)
    if name == "resnet18":
        model = zoo.resnet18(num_classes=10, stem="cifar", width=8)
        inputs = [ag.input("x", ("B", 3, 16, 16))]
        runs = [{"x": rng.normal(size=(b, 3, 16, 16)).astype(np.float32)} for b in (1, 2)]
    elif name == "bert":
        cfg = zoo.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=32)  # fmt: skip
        model = zoo.BertModel(cfg)
        inputs = [ag.input("input_ids", ("B", "T"), "int64"), ag.input("attention_mask", ("B", "T"), "int64")]
        runs = [
            {"input_ids": rng.integers(0, 50, size=(b, t)), "attention_mask": (rng.random((b, t)) > 0.3).astype(np.int64)}
            for b, t in ((2, 5), (1, 9))
        ]  # fmt: skip
    elif name == "gpt":
        model = zoo.GPT(zoo.GPTConfig(block_size=16, vocab_size=30, n_layer=2, n_head=2, n_embd=16))
        inputs = [ag.input("idx", ("B", "T"), "int64")]
        runs = [{"idx": rng.integers(0, 30, size=(b, t))} for b, t in ((2, 4), (1, 16))]
    else:
        cfg = zoo.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32)  # fmt: skip
        model = zoo.ViT(cfg)
        inputs = [ag.input("pixel_values", ("B", 3, 16, 16))]
        runs = [{"pixel_values": rng.normal(size=(b, 3, 16, 16)).astype(np.float32)} for b in (1, 3)]
    infer = nn.compile_inference(model, inputs=inputs)
    _check_export(infer.function, runs, tmp_path, f"zoo_{name}")


# ----------------------------------------------------------------------------- refusals and errors
def test_a_training_step_is_refused_naming_its_updates():
    x = ag.input("x", ("B", 3))
    w = ag.parameter(np.ones((2, 3), "float32"), name="fc.weight")
    loss = ag.linear(x, w).sum()
    (g,) = ag.grad(loss, [w])
    step = ag.compile(loss, updates={w: w - 0.1 * g})
    with pytest.raises(ExportError) as err:
        to_onnx(step)
    assert str(err.value) == (
        "to_onnx: the function updates 1 parameter(s) or state(s) (fc.weight): it is a training step. Export the "
        "inference function instead: with asg.nn, nn.compile_inference(model) (eval mode, no updates); with "
        "asg.core, ag.compile(outputs) without updates="
    )
    with pytest.raises(ExportError, match=r"is a gradient node: the function computes gradients"):
        to_onnx(ag.compile(g))


def test_dropout_in_training_mode_is_refused_with_how_to_build_it_in_eval_mode():
    x = ag.input("x", ("B", 4))
    fn = ag.compile(ag.dropout(x, 0.5, ag.RNG(0).next_key()))
    with pytest.raises(ExportError, match=r"= bernoulli .* draws random numbers: .* model\.eval\(\) or "
                       r"nn\.compile_inference\(model\); with asg\.core, ag\.dropout\(x, p, key, training=False\)"):  # fmt: skip
        to_onnx(fn)


def test_an_op_without_a_mapping_is_an_error_naming_it_its_line_and_the_ops_that_map():
    with scratch_ops():
        ag.define_op("doc_export_twice", infer=lambda t: t, kernel=lambda a: 2 * a)
        x = ag.input("x", ("B", 3))
        fn = ag.compile(ag.apply("doc_export_twice", x.relu()).named("twice"))
        with pytest.raises(ExportError) as err:
            to_onnx(fn)
    lines = str(err.value).splitlines()
    assert lines[:2] == [
        "to_onnx: 1 op(s) have no ONNX mapping:",
        "  doc_export_twice: twice:f32[B,3] = doc_export_twice a",
    ]
    assert lines[2].startswith("ops that map: abs, adaptive_avg_pool2d, ") and "layer_norm" in lines[2]


def test_bad_arguments_are_refused():
    fn = ag.compile(ag.input("x", (2,)) * 2.0)
    with pytest.raises(ValueError, match=r"opset must be an int from 17 \(LayerNormalization\) to \d+"):
        to_onnx(fn, opset=13)
    with pytest.raises(TypeError, match=r"expected a compiled asg\.core\.Function or a Graph, got str"):
        to_onnx("model.asg")
    model = to_onnx(ag.Graph([(ag.input("y", ("N",)) + 1.0).node]))  # a bare Graph exports too
    assert _dims(model, model.graph.input[0]) == ["N"]
    if nn is not None:  # compile_inference without inputs= compiles at its first call
        with pytest.raises(
            ExportError, match=r"InferenceFunction has not been compiled yet \(its \.function is None\)"
        ):
            to_onnx(nn.compile_inference(nn.Linear(2, 2)))


def test_asg_core_and_its_export_package_import_without_onnx():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["onnx"] = None  # as if it were not installed
        import asg.core as ag
        from asg.core.export import to_onnx, save_inference
        try:
            to_onnx(ag.compile(ag.input("x", (2,)) * 2.0))
        except ImportError as err:
            print(err)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert (
        result.stdout.strip()
        == "to_onnx needs the onnx package: pip install asg-core[onnx] (or pip install onnx)"
    )


# ----------------------------------------------------------------------------- documentation
def test_readme_export_section_runs(tmp_path, monkeypatch):
    readme = Path(__file__).parents[2] / "packages" / "asg-core" / "README.md"
    section = readme.read_text().split("## Export to ONNX", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "lenet.onnx").exists()
    np.testing.assert_allclose(namespace["probs"], namespace["expected"], rtol=1e-5, atol=1e-6)


def test_docstring_examples_run():
    import doctest

    from asg.core import export
    from asg.core.export import onnx_export

    for module in (export, onnx_export):
        result = doctest.testmod(module, extraglobs={"np": np})
        assert result.failed == 0 and result.attempted >= 3


def test_zz_report_max_errors():
    """Prints the max abs error of each exported model against ASG (run with -s to see it)."""
    print("\nmax abs error, onnxruntime vs ASG:")
    for name, err in sorted(MAX_ERRORS.items()):
        print(f"  {name:32s} {err:.2e}")
    assert all(err <= 1e-4 for err in MAX_ERRORS.values())
