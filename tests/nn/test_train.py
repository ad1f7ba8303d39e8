"""compile_train_step, compile_inference and fit: against PyTorch training, callbacks and the history."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from nn_parity import load_from_torch, torch_or_skip

from asg import nn


def _data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 0.5)
    return x, y


def _batches(x: np.ndarray, y: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _models(torch):
    # BatchNorm after the activation: a bias right before a BatchNorm has a zero gradient, and Adam turns
    # the rounding noise of a zero gradient into full-size steps of random sign in either framework
    ours = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.BatchNorm1d(16), nn.Linear(16, 3))
    theirs = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3)
    )
    load_from_torch(ours, theirs)
    return ours, theirs


@pytest.mark.torch
def test_train_step_matches_torch_for_20_steps_with_batchnorm_clipping_and_schedule() -> None:
    torch = torch_or_skip()
    torch.manual_seed(0)
    ours, theirs = _models(torch)
    x, y = _data()
    opt = nn.optim.AdamW(ours.parameters(), lr=0.02, weight_decay=0.05)
    sched = nn.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    step = nn.compile_train_step(ours, nn.CrossEntropyLoss(label_smoothing=0.1), opt, clip_grad_norm=0.5)
    topt = torch.optim.AdamW(theirs.parameters(), lr=0.02, weight_decay=0.05)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=20)
    tloss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    batches = _batches(x, y, 32) * 7  # 21 batches; the last smaller batch shape also reuses the graph
    losses, tlosses, norms, tnorms = [], [], [], []
    for bx, by in batches[:20]:
        losses.append(step(bx, by))
        norms.append(step.grad_norm)
        sched.step()
        topt.zero_grad()
        loss = tloss_fn(theirs(torch.tensor(bx)), torch.tensor(by))
        loss.backward()
        tnorms.append(float(torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)))
        topt.step()
        tsched.step()
        tlosses.append(loss.item())
    np.testing.assert_allclose(losses, tlosses, rtol=1e-5)
    np.testing.assert_allclose(norms, tnorms, rtol=1e-4)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
    assert step.function.num_plans == 1


def test_train_step_with_explicit_inputs_and_dropout_stream() -> None:
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    opt = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = nn.compile_train_step(
        model, nn.CrossEntropyLoss(), opt, inputs=[(("B", 6), "float32"), (("B",), "int64")]
    )
    x, y = _data()
    losses = [step(x, y) for _ in range(60)]
    assert losses[-1] < 0.6 * losses[0]
    graph = step.function.graph
    assert "bernoulli" in graph.op_counts() and "sgd_update" in graph.op_counts()
    assert model.training  # the mode is restored after building


def test_compile_inference_has_no_gradient_or_update_nodes_and_uses_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 3))
    model.load_state_dict({**model.state_dict(), "1.running_mean": np.full(8, 0.5, np.float32)})
    infer = nn.compile_inference(model)
    x, _ = _data(10)
    out = infer(x)
    w0, b0 = model[0].weight.numpy(), model[0].bias.numpy()
    h = (x @ w0.T + b0 - 0.5) / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(
        out, h @ model[3].weight.numpy().T + model[3].bias.numpy(), rtol=1e-5, atol=1e-5
    )
    ops = set(infer.function.graph.op_counts())
    assert not ops & {"bernoulli", "sgd_update", "adam_update"} and not any("backward" in o for o in ops)
    assert infer.function.num_outputs == 1 and model.training


def test_fit_trains_logs_metrics_and_runs_callbacks(tmp_path) -> None:
    nn.init.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = nn.optim.Adam(model.parameters(), lr=0.01)
    sched = nn.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    x, y = _data(160)
    train, val = _batches(x[:128], y[:128], 32), _batches(x[128:], y[128:], 16)
    events = []

    class Recorder(nn.Callback):
        def on_train_begin(self, logs):
            events.append("train_begin")

        def on_epoch_begin(self, epoch, logs):
            events.append(f"epoch_begin {epoch}")

        def on_batch_end(self, batch, logs):
            events.append(f"batch {batch} {logs['size']}")

        def on_train_end(self, logs):
            events.append("train_end")

    def accuracy(y_true, y_pred):
        return float((np.argmax(y_pred, -1) == y_true).mean())

    history = nn.fit(
        model,
        nn.CrossEntropyLoss(),
        opt,
        train,
        epochs=4,
        val_batches=val,
        metrics={"acc": accuracy},
        callbacks=[Recorder(), nn.LRSchedulerCallback(sched), nn.CSVLogger(tmp_path / "log.csv")],
        progress=False,
    )
    assert list(history.history) == ["loss", "acc", "val_loss", "val_acc", "lr"]
    assert history["lr"] == [0.01, 0.01, 0.005, 0.005]
    assert history["loss"][-1] < history["loss"][0]
    assert events[:2] == ["train_begin", "epoch_begin 0"] and events[2:6] == [
        f"batch {i} 32" for i in range(4)
    ]
    assert events[-1] == "train_end" and len(events) == 2 + 4 * 5
    # val_loss is the eval-mode loss over the validation batches, sample-weighted
    infer = nn.compile_eval_step(model, nn.CrossEntropyLoss())
    val_loss = np.mean([float(infer(bx, by)[0]) for bx, by in val])
    assert history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-5)
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "acc", "val_loss", "val_acc", "lr"] and len(rows) == 5


def test_fit_accepts_metric_objects_and_early_stopping_restores_best(tmp_path) -> None:
    class MeanAbsError:  # the update/compute protocol asg-data's metrics follow
        def reset(self):
            self.total, self.n = 0.0, 0

        def update(self, y_true, y_pred):
            self.total += float(np.abs(y_true - y_pred[:, 0]).sum())
            self.n += len(y_true)

        def compute(self):
            return self.total / self.n

    model = nn.Sequential(nn.Linear(6, 1))
    opt = nn.optim.SGD(model.parameters(), lr=5.0)  # diverges: validation gets worse
    x, _ = _data(64)
    y = x[:, 0].astype(np.float32)
    batches = _batches(x, y, 16)
    stop = nn.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    ckpt = nn.ModelCheckpoint(tmp_path / "best.safetensors", save_best_only=True)

    def loss(out, target):
        return nn.functional.mse_loss(out[:, 0], target)

    history = nn.fit(model, loss, opt, batches, epochs=20, val_batches=batches, metrics={"mae": MeanAbsError()},
                     callbacks=[stop, ckpt], progress=False)  # fmt: skip
    epochs = len(history["loss"])
    assert epochs == stop.stopped_epoch + 1 < 20
    best = int(np.argmin(history["val_loss"]))
    assert stop.best_epoch == best and stop.best == min(history["val_loss"])
    assert "mae" in history.history and "val_mae" in history.history
    # the model holds the best epoch's weights again: its validation loss is the best one
    evaluate = nn.compile_eval_step(model, loss)
    assert np.mean([float(evaluate(bx, by)[0]) for bx, by in batches]) == pytest.approx(stop.best, rel=1e-5)
    restored = nn.Sequential(nn.Linear(6, 1))
    meta = nn.load_checkpoint(tmp_path / "best.safetensors", restored)
    assert meta["epoch"] == best and meta["metrics"]["val_loss"] == pytest.approx(stop.best)
    np.testing.assert_array_equal(restored[0].weight.numpy(), model[0].weight.numpy())


def test_early_stopping_delegates_to_a_stopper_object() -> None:
    class Stopper:  # asg-data's EarlyStopping has this shape
        def __init__(self):
            self.values = []

        def step(self, value, state=None):
            self.values.append(value)
            return len(self.values) == 2

        def restore(self):
            return None

    stopper = Stopper()
    model = nn.Sequential(nn.Linear(6, 3))
    x, y = _data(32)
    history = nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), _batches(x, y, 16),
                     epochs=5, val_batches=_batches(x, y, 16),
                     callbacks=[nn.EarlyStopping(stopper=stopper)], progress=False)  # fmt: skip
    assert len(history["loss"]) == 2 and stopper.values == history["val_loss"]


def test_fit_shows_a_progress_bar_when_asked(capsys) -> None:
    model = nn.Sequential(nn.Linear(6, 3))
    x, y = _data(32)
    nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), _batches(x, y, 8), epochs=1,
           progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "samples_per_s=" in err and "4/4" in err
    nn.fit(
        model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), _batches(x, y, 8), epochs=1
    )
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest: no bar


def test_train_step_errors() -> None:
    model = nn.Sequential(nn.Linear(6, 3))
    step = nn.compile_train_step(model, lambda out, y: out, nn.optim.SGD(model.parameters()))
    x, y = _data(4)
    with pytest.raises(ValueError, match="the loss function must return a scalar Tensor"):
        step(x, y)
    with pytest.raises(TypeError, match="takes the model inputs and the target"):
        step(x)
    with pytest.raises(ValueError, match="train_batches yielded no batches"):
        nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters()), [], progress=False)


def test_readme_examples_run(tmp_path, monkeypatch) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "packages" / "asg-nn" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "the README has no python example"
    first = blocks[0]
    assert len([l for l in first.splitlines() if l.strip()]) < 20
    scope: dict = {}
    exec(compile(first, "README.md", "exec"), scope)
    history = scope["history"]
    assert history["val_acc"][-1] > 0.9, history.history
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[1], "README.md", "exec"), scope)  # PyTorch loads the saved file by name
    assert (tmp_path / "model.safetensors").is_file()


def test_gradient_accumulation_equals_one_step_on_the_whole_batch() -> None:
    x, y = _data(64)
    make = lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))  # noqa: E731
    nn.init.manual_seed(3)
    big = make()
    nn.init.manual_seed(3)
    small = make()
    big_step = nn.compile_train_step(big, nn.CrossEntropyLoss(), nn.optim.SGD(big.parameters(), lr=0.5, momentum=0.9),
                                     clip_grad_norm=0.3)  # fmt: skip
    acc_step = nn.compile_train_step(small, nn.CrossEntropyLoss(), nn.optim.SGD(small.parameters(), lr=0.5, momentum=0.9),
                                     clip_grad_norm=0.3, accumulate=4)  # fmt: skip
    for _ in range(3):
        big_step(x, y)
        for i in range(4):
            acc_step(x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16])
        assert acc_step.grad_norm == pytest.approx(big_step.grad_norm, rel=1e-5)
    for (k, a), (_, b) in zip(big.state_dict().items(), small.state_dict().items(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=k)
    assert "sgd_update" not in acc_step.accumulate_function.graph.op_counts()


class _CountingBatches:
    """A re-iterable of batches that, like a shuffling DataLoader, starts an epoch at each ``iter()``."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.batches, self.starts = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.starts += 1
        return iter(self.batches)


@pytest.mark.parametrize("progress", [False, True])
def test_fit_iterates_the_batches_once_per_epoch(progress: bool) -> None:
    # tqdm.auto's asyncio bar calls iter() on its iterable when built: fit must hand it one iterator, or
    # a DataLoader would start two epochs (two shuffle orders) per training epoch and resumes would drift
    rng = np.random.default_rng(0)
    batches = _CountingBatches(
        [(rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(3)]
    )
    model = nn.Linear(4, 3)
    history = nn.fit(
        model,
        nn.CrossEntropyLoss(),
        nn.optim.SGD(model.parameters(), lr=0.1),
        batches,
        epochs=3,
        progress=progress,
    )
    assert batches.starts == 3
    assert len(history.history["loss"]) == 3


def test_fit_with_mixed_precision_and_accumulation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(np.int64)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = nn.optim.Adam(model.parameters(), lr=0.02)
    scaler = nn.amp.LossScaler(init_scale=2.0**8, growth_interval=5)
    history = nn.fit(model, nn.CrossEntropyLoss(), opt, batches, epochs=8, val_batches=batches,
                     accumulate=2, mixed_precision=True, loss_scaler=scaler, progress=False)  # fmt: skip
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert history["val_loss"][-1] == pytest.approx(history["loss"][-1], rel=0.3)
    # 8 epochs x 4 batches accumulated by 2: 16 optimizer steps, all finite, so the scale grew 3 times
    assert {float(s["step"].numpy()) for s in opt.state.values()} == {16.0}
    assert float(scaler.scale.numpy()) == 2.0**11 and int(scaler.good_steps.numpy()) == 1
