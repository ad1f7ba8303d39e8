"""Mixed precision: the float16 graph rewrite, float32 master weights and dynamic loss scaling."""

from __future__ import annotations

import numpy as np
import pytest
from nn_parity import load_from_torch, torch_or_skip

import asg.core as ag
from asg import nn


def _data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, 0] * x[:, 1] > 0).astype(np.int64)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 2))


def test_half_precision_graph_is_float16_and_close_to_float32() -> None:
    model = _model()
    x, y = ag.input("x", ("B", 8)), ag.input("y", ("B",), "int64")
    loss = nn.CrossEntropyLoss()(model(x), y)
    (loss16,) = nn.amp.half_precision([loss])
    graph = ag.Graph([loss16.node])
    assert {n.dtype for n in graph.nodes if n.op in ("matmul", "layer_norm", "gelu", "log_softmax")} == {
        "float16"
    }
    params = list(model.parameters())
    g32 = ag.grad(loss, params)
    g16 = ag.grad(ag.cast(loss16, "float32"), params)
    assert all(g.dtype == "float32" for g in g16)  # gradients reach the float32 master weights
    f = ag.compile([loss, ag.cast(loss16, "float32"), *g32, *g16])
    out = f(*_data())
    assert float(out[1]) == pytest.approx(float(out[0]), rel=2e-3)
    for a, b in zip(out[2 : 2 + len(params)], out[2 + len(params) :], strict=True):
        np.testing.assert_allclose(b, a, rtol=0.05, atol=2e-3)


def test_mixed_precision_training_follows_float32_training() -> None:
    x, y = _data(128)
    nn.init.manual_seed(1)
    m32 = _model()
    nn.init.manual_seed(1)
    m16 = _model()
    s32 = nn.compile_train_step(m32, nn.CrossEntropyLoss(), nn.optim.Adam(m32.parameters(), lr=0.01))
    scaler = nn.amp.LossScaler(init_scale=2.0**10)  # no overflow here: no skipped step, the runs stay in step
    s16 = nn.compile_train_step(m16, nn.CrossEntropyLoss(), nn.optim.Adam(m16.parameters(), lr=0.01),
                                mixed_precision=True, loss_scaler=scaler)  # fmt: skip
    l32 = [s32(x, y) for _ in range(40)]
    l16 = [s16(x, y) for _ in range(40)]
    assert l16[-1] < 0.5 * l16[0]
    np.testing.assert_allclose(l16, l32, rtol=0.05, atol=0.01)
    assert m16[0].weight.dtype == "float32"
    assert float(scaler.scale.numpy()) == 2.0**10  # no overflow, no growth yet


def test_overflow_skips_the_step_and_backs_off_then_the_scale_grows() -> None:
    x, y = _data()
    model = _model()
    before = model.state_dict()
    scaler = nn.amp.LossScaler(init_scale=2.0**40, growth_interval=3)
    step = nn.compile_train_step(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1),
                                 mixed_precision=True, loss_scaler=scaler)  # fmt: skip
    step(x, y)  # 2^40 overflows float16: nothing changes, the scale halves
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert float(scaler.scale.numpy()) == 2.0**39
    for _ in range(40):  # back off until the float16 gradients are finite: then the step updates again
        scale = float(scaler.scale.numpy())
        step(x, y)
        if any((model.state_dict()[k] != before[k]).any() for k in before):
            break
    assert float(scaler.scale.numpy()) == scale < 2.0**39 and int(scaler.good_steps.numpy()) == 1
    step(x, y)
    step(x, y)  # the third finite step in a row doubles the scale
    assert float(scaler.scale.numpy()) == 2 * scale and int(scaler.good_steps.numpy()) == 0


def test_batchnorm_statistics_stay_float32_and_update_even_on_a_skipped_step() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    scaler = nn.amp.LossScaler(init_scale=2.0**40)  # the step itself overflows and is skipped
    step = nn.compile_train_step(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1),
                                 mixed_precision=True, loss_scaler=scaler)  # fmt: skip
    x, y = _data()
    w, b = model[0].weight.numpy().copy(), model[0].bias.numpy().copy()
    step(x, y)
    np.testing.assert_array_equal(model[0].weight.numpy(), w)
    assert model[1].running_mean.numpy().dtype == np.float32
    assert int(model[1].num_batches_tracked.numpy()) == 1
    h = x @ w.T + b  # the batch statistics, computed in float16
    np.testing.assert_allclose(model[1].running_mean.numpy(), 0.1 * h.mean(0), rtol=1e-2, atol=1e-3)


def _accumulating_pair(
    scaler: nn.amp.LossScaler, k: int, seed: int = 1
) -> tuple[nn.Module, nn.TrainStep, nn.Module, nn.TrainStep]:
    """The same model twice: float16 with loss scaling and ``accumulate=k``, and float32 on whole batches."""
    nn.init.manual_seed(seed)
    m16 = _model()
    nn.init.manual_seed(seed)
    m32 = _model()
    s16 = nn.compile_train_step(m16, nn.CrossEntropyLoss(), nn.optim.Adam(m16.parameters(), lr=0.01),
                                accumulate=k, mixed_precision=True, loss_scaler=scaler)  # fmt: skip
    s32 = nn.compile_train_step(m32, nn.CrossEntropyLoss(), nn.optim.Adam(m32.parameters(), lr=0.01))
    return m16, s16, m32, s32


def test_mixed_precision_accumulation_follows_float32_on_the_whole_batch() -> None:
    x, y = _data(128)
    k = 4
    scaler = nn.amp.LossScaler(init_scale=2.0**12, growth_interval=3)
    m16, s16, m32, s32 = _accumulating_pair(scaler, k)
    scales = []
    for _ in range(10):
        s32(x, y)
        for i in range(k):  # equal micro-batches: the mean of their mean losses is the whole batch's
            s16(x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32])
        scales.append(float(scaler.scale.numpy()))
    # finite throughout: the scale grows once per 3 optimizer steps, not per micro-batch
    assert scales == [2.0**12] * 2 + [2.0**13] * 3 + [2.0**14] * 3 + [2.0**15] * 2
    assert m16[0].weight.dtype == "float32"
    for (name, a), (_, b) in zip(m32.state_dict().items(), m16.state_dict().items(), strict=True):
        np.testing.assert_allclose(b, a, rtol=0.02, atol=2e-3, err_msg=name)
    assert "adam_update" not in s16.accumulate_function.graph.op_counts()


@pytest.mark.torch
def test_mixed_precision_accumulation_matches_torch_grad_scaler() -> None:
    torch = torch_or_skip()
    x, y = _data(96)
    k, scaler = 3, nn.amp.LossScaler(init_scale=2.0**10, growth_interval=2)
    nn.init.manual_seed(2)
    ours = _model()
    theirs = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.GELU(), torch.nn.Linear(32, 2)
    )
    load_from_torch(ours, theirs)
    step = nn.compile_train_step(ours, nn.CrossEntropyLoss(), nn.optim.SGD(ours.parameters(), lr=0.2, momentum=0.9),
                                 accumulate=k, mixed_precision=True, loss_scaler=scaler)  # fmt: skip
    opt = torch.optim.SGD(theirs.parameters(), lr=0.2, momentum=0.9)
    t_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    for _ in range(5):
        opt.zero_grad()
        for i in range(k):  # PyTorch's recipe: scale(loss / k).backward() per micro-batch, one step
            xb, yb = x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32]
            ours_loss = step(xb, yb)
            t_loss = torch.nn.functional.cross_entropy(theirs(torch.tensor(xb)), torch.tensor(yb))
            t_scaler.scale(t_loss / k).backward()
            assert ours_loss == pytest.approx(float(t_loss.detach()), rel=5e-3, abs=2e-3)
        t_scaler.step(opt)
        t_scaler.update()
        assert float(scaler.scale.numpy()) == t_scaler.get_scale()
    for name, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[name], v.numpy(), rtol=0.02, atol=2e-3, err_msg=name)


def test_an_overflow_in_one_micro_batch_skips_the_accumulated_step_and_halves_the_scale_once() -> None:
    x, y = _data(128)
    k = 4
    scaler = nn.amp.LossScaler(init_scale=2.0**12)
    m16, s16, m32, s32 = _accumulating_pair(scaler, k)
    before = m16.state_dict()
    bad = x.copy()
    bad[40, 3] = 1e5  # beyond float16's range (65504): inf in micro-batch 1, non-finite gradients
    for i in range(k):
        s16(bad[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32])
        if i < k - 1:  # accumulating only: nothing moves before the k-th call
            assert float(scaler.scale.numpy()) == 2.0**12
    for name, v in m16.state_dict().items():  # the whole step skipped: weights, Adam state untouched
        np.testing.assert_array_equal(v, before[name], err_msg=name)
    assert all(float(s["step"].numpy()) == 0 for s in s16.optimizer.state.values())
    assert float(scaler.scale.numpy()) == 2.0**11 and int(scaler.good_steps.numpy()) == 0
    # the sums were reset: the next accumulated step is float32's first step on the whole batch
    s32(x, y)
    for i in range(k):
        s16(x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32])
    assert float(scaler.scale.numpy()) == 2.0**11 and int(scaler.good_steps.numpy()) == 1
    for (name, a), (_, b) in zip(m32.state_dict().items(), m16.state_dict().items(), strict=True):
        assert (b != before[name]).any(), name
        np.testing.assert_allclose(b, a, rtol=0.02, atol=2e-3, err_msg=name)
