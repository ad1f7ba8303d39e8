"""Inference-only functions and bundles: the forward graph alone, loadable with asg-core alone.

A model trained with dropout and batch_norm is saved twice: as the training step (graph with gradients,
optimizer state, RNG counters) and with :func:`asg.core.export.save_inference`. The inference bundle
is loaded in a fresh process that imports only asg-core and gives the very same outputs; its size,
node count and step time are printed against the training bundle's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import asg.core as ag
from asg.core.export import ExportError, inference_function, remove_dropout, save_inference

# Imported with the module: asg-nn registers ops of its own, which the registry fixture must find present.
try:
    from asg import nn
except ImportError:  # pragma: no cover - asg-core alone
    nn = None

needs_nn = pytest.mark.skipif(nn is None, reason="asg-nn is not installed")


def _param(rng: np.random.Generator, shape: tuple[int, ...], name: str) -> ag.Tensor:
    return ag.parameter((rng.normal(size=shape) * 0.3).astype(np.float32), name=name)


def _core_model(training: bool) -> ag.Tensor:
    """x -> linear -> dropout -> relu -> channel dropout (as dropout2d) -> mean: the same weights either way."""
    rng = np.random.default_rng(0)
    x = ag.input("x", ("B", 4, 6))
    w = _param(rng, (6, 6), "fc.weight")
    h = ag.dropout(ag.linear(x, w), 0.3, ag.RNG(1).next_key(), training=training).relu()  # (B, 4, 6)
    if training:  # dropout2d's form: one mask entry per (sample, channel)
        h = h * ag.bernoulli(ag.RNG(2).next_key(), 0.75, (x.shape[0], 4, 1), "float32") * (1.0 / 0.75)
    return h.mean(axis=2)


def test_remove_dropout_gives_the_eval_mode_graph():
    train_out = _core_model(training=True)
    eval_out = _core_model(training=False)
    train_graph = ag.passes.run_passes(ag.Graph([train_out.node]))
    assert train_graph.op_counts()["bernoulli"] == 2 and train_graph.op_counts()["fold_in"] == 4
    removed = remove_dropout(train_graph)
    assert removed.op_counts() == ag.passes.run_passes(ag.Graph([eval_out.node])).op_counts()
    assert [p.name for p in removed.parameters] == ["fc.weight"]  # the RNG counters went with the masks
    assert remove_dropout(removed) is removed  # nothing left to remove: the same graph


def test_inference_function_runs_like_the_eval_mode_function():
    train_out = _core_model(training=True)
    eval_out = _core_model(training=False)
    data = np.random.default_rng(1).normal(size=(3, 4, 6)).astype(np.float32)
    inference = inference_function(ag.compile(train_out))
    np.testing.assert_array_equal(inference(data), ag.compile(eval_out)(data))
    assert inference.updates == [] and inference.single


@needs_nn
def test_nn_model_built_in_training_mode_loses_its_dropout_and_attention_dropout():
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.GELU(), nn.Linear(16, 8))
    attention = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, batch_first=True)
    x = ag.input("x", ("B", "T", 8))
    model.train()
    attention.train()
    with nn.capture_updates():  # the dropout streams' counter updates are collected and dropped
        trained_mode = ag.compile(attention(model(x)))
    assert "bernoulli" in trained_mode.graph.op_counts()
    inference = inference_function(trained_mode)
    assert "bernoulli" not in inference.graph.op_counts()
    eval_mode = nn.compile_inference(nn.Sequential(model, attention), inputs=[x])
    data = np.random.default_rng(2).normal(size=(2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(inference(data), eval_mode(data), rtol=1e-6, atol=1e-6)


@needs_nn
def test_batch_norm_in_training_mode_and_training_steps_are_refused_with_what_to_do(tmp_path):
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    model.train()
    with nn.capture_updates():
        built_training = ag.compile(model(ag.input("x", ("B", 1, 6, 6))))
    with pytest.raises(ExportError) as err:
        inference_function(built_training)
    assert "this is batch_norm in training mode, which uses the batch's statistics. Build the function in eval " \
        "mode (asg.nn: model.eval() or nn.compile_inference(model)" in str(err.value)  # fmt: skip
    step = nn.compile_train_step(model, nn.MSELoss(), nn.optim.SGD(model.parameters(), lr=0.1))
    step(np.zeros((2, 1, 6, 6), np.float32), np.zeros((2, 2, 4, 4), np.float32))
    with pytest.raises(ExportError, match=r"^inference_function: the function updates \d+ parameter\(s\) or state\(s\) "
                       r"\(1\.running_mean, 1\.running_var, 1\.num_batches_tracked, .*\): it is a training step\. "
                       r"Export the inference function instead: with asg\.nn, nn\.compile_inference\(model\)"):  # fmt: skip
        save_inference(step, tmp_path / "never-written.asg")
    assert not list(tmp_path.iterdir())


LOAD_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import asg.core as ag

    f = ag.load(sys.argv[1])
    x = np.asarray(json.loads(sys.argv[2]), np.float32)
    out = f(x)
    assert not any(m.startswith(("asg.nn", "asg.zoo")) for m in sys.modules), "loading needed asg-nn"
    print(json.dumps(out.tolist()))
    """
)


def _step_time(fn, *arrays: np.ndarray, repeats: int = 15) -> float:
    fn(*arrays)  # the plan is built on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*arrays)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@needs_nn
def test_inference_bundle_of_a_trained_model_loads_with_asg_core_alone_and_is_smaller(tmp_path):
    nn.init.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10),
    )  # fmt: skip
    rng = np.random.default_rng(3)
    images = rng.normal(size=(16, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, size=16)
    step = nn.compile_train_step(model, nn.CrossEntropyLoss(), nn.optim.Adam(model.parameters(), lr=1e-2))
    losses = [step(images, labels) for _ in range(5)]
    assert losses[-1] < losses[0]
    training_path, inference_path = tmp_path / "train_step.asg", tmp_path / "model.asg"
    step.function.save(training_path)

    infer = nn.compile_inference(model, inputs=[ag.input("x", ("B", 1, 8, 8))])
    saved = save_inference(infer, inference_path)
    expected = infer(images[:4])
    np.testing.assert_array_equal(saved(images[:4]), expected)

    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(inference_path), json.dumps(images[:4].tolist())],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.asarray(json.loads(result.stdout), np.float32), expected)

    loaded_train, loaded_infer = ag.load(training_path), ag.load(inference_path)
    graph = loaded_infer.graph
    assert loaded_infer.updates == [] and not any("grad_of" in n.meta for n in graph.nodes)
    assert not {"bernoulli", "fold_in", "adam_update"} & set(graph.op_counts())
    assert sorted(p.name for p in graph.parameters) == sorted(
        k for k in model.state_dict() if not k.endswith("num_batches_tracked")
    )  # the model's weights and BatchNorm statistics, nothing else: no Adam moments, no RNG counters

    sizes = {"training": training_path.stat().st_size, "inference": inference_path.stat().st_size}
    nodes = {"training": len(loaded_train.graph.nodes), "inference": len(graph.nodes)}
    seconds = {
        "training": _step_time(loaded_train, images, labels),
        "inference": _step_time(loaded_infer, images),
    }
    print("\nbundle        bytes   nodes   step (batch 16)")
    for kind in ("training", "inference"):
        print(f"{kind:10s} {sizes[kind]:8d} {nodes[kind]:7d} {seconds[kind] * 1e3:9.2f} ms")
    assert sizes["inference"] * 2.5 < sizes["training"]  # Adam keeps two moments per weight
    assert nodes["inference"] * 3 < nodes["training"]
    assert seconds["inference"] < seconds["training"]


def test_docstring_examples_run():
    import doctest

    from asg.core.export import inference

    result = doctest.testmod(inference, extraglobs={"np": np})
    assert result.failed == 0 and result.attempted >= 10
