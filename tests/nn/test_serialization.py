"""safetensors files with PyTorch names (both directions), tied weights, checkpoints, atomic writes under kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from nn_parity import torch_or_skip

import asg.core as ag
from asg import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(ag.flatten(nn.functional.relu(self.bn(self.conv(x))), 1))


def _torch_net(torch):
    class TorchNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.fc = torch.nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))

    return TorchNet()


X = np.random.default_rng(0).normal(size=(2, 1, 6, 6)).astype(np.float32)


@pytest.mark.torch
def test_pytorch_loads_our_file_and_we_load_pytorchs(tmp_path) -> None:
    torch = torch_or_skip()
    from safetensors.torch import load_file, save_file

    ours = Net()
    ours.bn.running_mean.assign(np.arange(4, dtype=np.float32))
    ours.eval()
    path = tmp_path / "ours.safetensors"
    nn.save_model(ours, path)
    theirs = _torch_net(torch).eval()
    theirs.load_state_dict(load_file(str(path)))  # strict, by name, no renaming
    want = theirs(torch.tensor(X)).detach().numpy()
    got = nn.compile_inference(ours)(X)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert theirs.bn.num_batches_tracked.dtype == torch.int64

    other = _torch_net(torch).eval()
    save_file(other.state_dict(), str(tmp_path / "theirs.safetensors"))
    mine = Net().eval()
    assert nn.load_model(mine, tmp_path / "theirs.safetensors") == nn.IncompatibleKeys([], [])
    np.testing.assert_allclose(
        nn.compile_inference(mine)(X), other(torch.tensor(X)).detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_tied_weights_are_stored_once_and_retied(tmp_path) -> None:
    from safetensors.numpy import load_file

    m = nn.Module()
    m.emb = nn.Embedding(5, 3)
    m.head = nn.Linear(3, 5, bias=False)
    m.head.weight = m.emb.weight
    path = tmp_path / "tied.safetensors"
    nn.save_model(m, path)
    assert sorted(load_file(str(path))) == ["emb.weight"]
    fresh = nn.Module()
    fresh.emb = nn.Embedding(5, 3)
    fresh.head = nn.Linear(3, 5, bias=False)
    fresh.head.weight = fresh.emb.weight
    nn.load_model(fresh, path)
    np.testing.assert_array_equal(fresh.head.weight.numpy(), m.emb.weight.numpy())
    untied = nn.Module()  # a model without the tie gets the stored copy under both names
    untied.emb = nn.Embedding(5, 3)
    untied.head = nn.Linear(3, 5, bias=False)
    nn.load_model(untied, path)
    np.testing.assert_array_equal(untied.head.weight.numpy(), m.emb.weight.numpy())


def _train(model, opt, sched, steps: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    step = nn.compile_train_step(model, nn.CrossEntropyLoss(), opt)
    losses = []
    for _ in range(steps):
        losses.append(step(rng.normal(size=(8, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, 8)))
        sched.step()
    return losses


def test_checkpoint_resumes_training_bit_identically(tmp_path) -> None:
    model = Net()
    opt = nn.optim.Adam(model.parameters(), lr=0.01)
    sched = nn.lr_scheduler.StepLR(opt, 2, 0.5)
    _train(model, opt, sched, 5, seed=0)
    path = tmp_path / "ckpt.safetensors"
    nn.save_checkpoint(path, model, opt, sched, epoch=3, step=5, metrics={"loss": 0.5})
    expected = _train(model, opt, sched, 5, seed=1)

    model2 = Net()
    opt2 = nn.optim.Adam(model2.parameters(), lr=0.5)
    sched2 = nn.lr_scheduler.StepLR(opt2, 2, 0.5)
    meta = nn.load_checkpoint(path, model2, opt2, sched2)
    assert meta["epoch"] == 3 and meta["step"] == 5 and meta["metrics"] == {"loss": 0.5}
    assert set(meta["versions"]) >= {"asg-core", "asg-nn", "numpy"}
    assert opt2.param_groups[0]["lr"] == 0.01 * 0.5**2  # StepLR(2, 0.5) after 5 steps
    assert _train(model2, opt2, sched2, 5, seed=1) == expected  # bit-identical losses
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_checkpoint_header_is_json_and_load_errors_name_the_file(tmp_path) -> None:
    from safetensors import safe_open

    model = Net()
    path = tmp_path / "c.safetensors"
    nn.save_checkpoint(path, model, nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), epoch=1)
    with safe_open(str(path), framework="numpy") as f:
        header = json.loads(f.metadata()["asg.checkpoint"])
    assert header["format"] == "asg-checkpoint" and header["optimizer"]["type"] == "SGD"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a readable safetensors file"):
        nn.load_model(model, bad)
    nn.save_model(model, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"w\.safetensors: not an asg checkpoint"):
        nn.load_checkpoint(tmp_path / "w.safetensors", model)
    with pytest.raises(ValueError, match="holds SGD state, not Adam"):
        nn.load_checkpoint(path, model, nn.optim.Adam(model.parameters()))
    other = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(
        KeyError, match=r"c\.safetensors: load_state_dict into Sequential: missing keys: 0\.weight"
    ):
        nn.load_checkpoint(path, other)


def test_atomic_write_keeps_mode_and_leaves_no_temp_file(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    nn.save_model(nn.Linear(2, 2), path)
    os.chmod(path, 0o640)
    nn.save_model(nn.Linear(2, 2), path)
    assert (os.stat(path).st_mode & 0o777) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_leaves_a_broken_file(tmp_path) -> None:
    path = tmp_path / "ckpt.safetensors"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from asg import nn
        model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 500))  # ~6 MB per file
        i = 0
        while True:
            i += 1
            model[0].bias.assign(np.full(1000, i, np.float32))
            model[1].bias.assign(np.full(500, i, np.float32))
            nn.save_checkpoint({str(path)!r}, model, epoch=i)
            print(i, flush=True)
        """
    )
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # at least one checkpoint exists
        assert first.strip(), "the writer did not start"
        time.sleep(float(rng.uniform(0.0, 0.3)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 500))
        meta = nn.load_checkpoint(path, model)  # always a complete file
        i = meta["epoch"]
        assert (model[0].bias.numpy() == i).all() and (model[1].bias.numpy() == i).all()
        epochs.append(i)
    assert all(e >= 1 for e in epochs)


def test_checkpoint_manager_keeps_last_n_and_best_and_resumes(tmp_path) -> None:
    model = Net()
    opt = nn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = nn.lr_scheduler.ExponentialLR(opt, 0.9)
    manager = nn.CheckpointManager(tmp_path, max_to_keep=2, monitor="val_loss")
    val_losses = [0.9, 0.4, 0.6, 0.7, 0.8]
    for epoch, val in enumerate(val_losses):
        _train(model, opt, sched, 2, seed=epoch)
        manager.save(epoch, model, opt, sched, metrics={"val_loss": val})
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert files == ["ckpt-00000001.safetensors", "ckpt-00000003.safetensors", "ckpt-00000004.safetensors"]
    assert manager.best()["step"] == 1 and manager.latest()["step"] == 4
    expected = _train(model, opt, sched, 3, seed=99)

    # a new process: the index is read back; resuming from the latest continues bit-identically
    fresh = nn.CheckpointManager(tmp_path, max_to_keep=2, monitor="val_loss")
    assert [e["step"] for e in fresh.entries] == [1, 3, 4]
    model2 = Net()
    opt2 = nn.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    sched2 = nn.lr_scheduler.ExponentialLR(opt2, 0.9)
    meta = fresh.restore(model2, opt2, sched2)
    assert meta["step"] == 4 and meta["metrics"] == {"val_loss": 0.8}
    assert _train(model2, opt2, sched2, 3, seed=99) == expected
    best = Net()
    assert fresh.restore(best, best=True)["metrics"]["val_loss"] == 0.4
    assert nn.CheckpointManager(tmp_path / "empty").restore(Net()) is None


def test_checkpoint_restores_dropout_streams_so_resumed_training_is_bit_identical(tmp_path) -> None:
    def make():
        model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
        return model, nn.optim.Adam(model.parameters(), lr=0.01)

    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(16, 6)).astype(np.float32), rng.integers(0, 3, 16)) for _ in range(6)]
    model, opt = make()
    step = nn.compile_train_step(model, nn.CrossEntropyLoss(), opt)
    for bx, by in batches[:3]:
        step(bx, by)
    nn.save_checkpoint(tmp_path / "c.safetensors", model, opt, epoch=1)
    expected = [step(bx, by) for bx, by in batches[3:]]

    nn.init.manual_seed(123)  # another stream: the checkpoint must bring the saved one back
    model2, opt2 = make()
    nn.load_checkpoint(tmp_path / "c.safetensors", model2, opt2)
    step2 = nn.compile_train_step(model2, nn.CrossEntropyLoss(), opt2)
    assert [step2(bx, by) for bx, by in batches[3:]] == expected
    assert model2[2].rng_state() == model[2].rng_state()

    with pytest.raises(ValueError, match=r"load the checkpoint \(seed \d+\) before building the step"):
        nn.load_checkpoint(tmp_path / "c.safetensors", model2, opt2)  # model2's stream is compiled: fine
        model3, opt3 = make()
        nn.compile_train_step(model3, nn.CrossEntropyLoss(), opt3)(*batches[0])
        nn.load_checkpoint(tmp_path / "c.safetensors", model3, opt3)
