"""Optimizers (20 steps against torch.optim), parameter groups, state dicts, schedulers, clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nn_parity import torch_or_skip

import asg.core as ag
from asg import nn
from asg.core.ops import optim as fused


def _problem(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(4, 3)).astype(np.float32),
        "b": rng.normal(size=(3,)).astype(np.float32),
        "target_w": rng.normal(size=(4, 3)).astype(np.float32),
        "target_b": rng.normal(size=(3,)).astype(np.float32),
        "x": rng.normal(size=(20, 4)).astype(np.float32),  # per-step scale of the loss
    }


def _ours(make_opt, steps: int = 20, sched=None):
    data = _problem()
    w, b = nn.Parameter(data["w"], name="w"), nn.Parameter(data["b"], name="b")
    s = ag.input("s", (4,))
    loss = (((w - data["target_w"]) ** 2) * ag.unsqueeze(s, 1)).sum() + ((b - data["target_b"]) ** 3).sum()
    opt = make_opt([w, b])
    scheduler = sched(opt) if sched else None  # before compiling, as OneCycleLR's momentum cycling needs
    step = ag.compile(loss, inputs=[s], updates=opt.updates(ag.grad(loss, [w, b])))
    lrs = []
    for i in range(steps):
        step(np.abs(data["x"][i]) + 0.1)
        lrs.append(opt.param_groups[0]["lr"])
        if scheduler:
            scheduler.step()
    return w.numpy(), b.numpy(), opt, lrs


def _theirs(make_opt, steps: int = 20, sched=None):
    torch = torch_or_skip()
    data = _problem()
    w = torch.tensor(data["w"], requires_grad=True)
    b = torch.tensor(data["b"], requires_grad=True)
    opt = make_opt([w, b])
    scheduler = sched(opt) if sched else None
    lrs = []
    for i in range(steps):
        opt.zero_grad()
        s = torch.tensor(np.abs(data["x"][i]) + 0.1)
        loss = (((w - torch.tensor(data["target_w"])) ** 2) * s[:, None]).sum() + (
            (b - torch.tensor(data["target_b"])) ** 3
        ).sum()
        loss.backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        if scheduler:
            scheduler.step()
    return w.detach().numpy(), b.detach().numpy(), opt, lrs


CONFIGS = [
    ("SGD", dict(lr=0.01)),
    ("SGD", dict(lr=0.01, momentum=0.9)),
    ("SGD", dict(lr=0.01, momentum=0.9, dampening=0.3, weight_decay=0.1)),
    ("SGD", dict(lr=0.01, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("SGD", dict(lr=0.01, maximize=True)),
    ("Adam", dict(lr=0.05)),
    ("Adam", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.05, amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(lr=0.05)),
    ("AdamW", dict(lr=0.05, amsgrad=True)),
    ("AdamW", dict(lr=0.05, weight_decay=0.3, betas=(0.85, 0.95))),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, centered=True, alpha=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, eps=1e-4)),
]


@pytest.mark.torch
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_twenty_steps_match_torch_optim(name: str, kwargs: dict) -> None:
    torch = torch_or_skip()
    w, b, opt, _ = _ours(lambda ps: getattr(nn.optim, name)(ps, **kwargs))
    tw, tb, topt, _ = _theirs(lambda ps: getattr(torch.optim, name)(ps, **kwargs))
    np.testing.assert_allclose(w, tw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, tb, rtol=1e-5, atol=1e-6)
    # the state under PyTorch's names, with PyTorch's values
    ours_sd, theirs_sd = opt.state_dict(), topt.state_dict()
    assert ours_sd["param_groups"][0]["params"] == theirs_sd["param_groups"][0]["params"] == [0, 1]
    for i in (0, 1):
        want = {k: v for k, v in theirs_sd["state"].get(i, {}).items() if v is not None}
        assert sorted(ours_sd["state"].get(i, {})) == sorted(want)
        for k, v in want.items():
            np.testing.assert_allclose(ours_sd["state"][i][k], v.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.torch
def test_parameter_groups_with_their_own_hyperparameters() -> None:
    torch = torch_or_skip()

    def groups(ps):
        return [{"params": [ps[0]], "lr": 0.02, "weight_decay": 0.1}, {"params": [ps[1]]}]

    w, b, opt, _ = _ours(lambda ps: nn.optim.AdamW(groups(ps), lr=0.005))
    tw, tb, _, _ = _theirs(lambda ps: torch.optim.AdamW(groups(ps), lr=0.005))
    np.testing.assert_allclose(w, tw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, tb, rtol=1e-5, atol=1e-6)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.005]


SCHEDULERS = [
    ("StepLR", lambda m, o: m.StepLR(o, step_size=3, gamma=0.5), lambda m, o: m.StepLR(o, 3, 0.5)),
    ("ExponentialLR", lambda m, o: m.ExponentialLR(o, 0.9), lambda m, o: m.ExponentialLR(o, 0.9)),
    ("CosineAnnealingLR", lambda m, o: m.CosineAnnealingLR(o, 8, 0.001), lambda m, o: m.CosineAnnealingLR(o, 8, 0.001)),
    ("LinearWarmupLR", lambda m, o: m.LinearWarmupLR(o, 5, start_factor=0.1),
     lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=5)),
    ("WarmupCosineAnnealingLR", lambda m, o: m.WarmupCosineAnnealingLR(o, 4, 15, eta_min=0.002, start_factor=0.25),
     lambda m, o: m.SequentialLR(o, [m.LinearLR(o, 0.25, 1.0, 4), m.CosineAnnealingLR(o, 11, 0.002)], [4])),
    ("OneCycleLR", lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=20),
     lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=20)),
    ("OneCycleLR-fixed-momentum", lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=20, cycle_momentum=False),
     lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=20, cycle_momentum=False)),
    ("OneCycleLR-3", lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=20, three_phase=True, anneal_strategy="linear",
                                               base_momentum=0.7, max_momentum=0.9),
     lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=20, three_phase=True, anneal_strategy="linear",
                               base_momentum=0.7, max_momentum=0.9)),
]  # fmt: skip


@pytest.mark.torch
@pytest.mark.parametrize(("name", "ours_fn", "theirs_fn"), SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_scheduler_lr_sequence_and_parameters_match_torch(name, ours_fn, theirs_fn) -> None:
    torch = torch_or_skip()
    import warnings

    steps = 20 if "OneCycle" in name else 19
    w, b, _, lrs = _ours(
        lambda ps: nn.optim.SGD(ps, lr=0.05, momentum=0.9), steps, lambda o: ours_fn(nn.lr_scheduler, o)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tw, tb, _, tlrs = _theirs(
            lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
            steps,
            lambda o: theirs_fn(torch.optim.lr_scheduler, o),
        )
    np.testing.assert_allclose(lrs, tlrs, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(w, tw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, tb, rtol=1e-5, atol=1e-6)


class _MomentumLog:
    """Wraps a scheduler; records group 0's momentum (SGD) or beta1 (Adam) before each ``step()``."""

    def __init__(self, scheduler) -> None:  # type: ignore[no-untyped-def]
        self.scheduler, self.seen = scheduler, []

    def step(self) -> None:
        group = self.scheduler.optimizer.param_groups[0]
        self.seen.append(group["betas"][0] if "betas" in group else group["momentum"])
        self.scheduler.step()


ONE_CYCLE_OPTIMIZERS = [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, dampening=0.0)),
    ("SGD", dict(lr=0.05)),  # momentum 0 at construction: the cycle turns momentum on, as in PyTorch
    ("Adam", dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.05, weight_decay=0.3, betas=(0.85, 0.99))),
]


@pytest.mark.torch
@pytest.mark.parametrize(
    ("name", "kwargs"),
    ONE_CYCLE_OPTIMIZERS,
    ids=[f"{n}-{i}" for i, (n, _) in enumerate(ONE_CYCLE_OPTIMIZERS)],
)
@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_one_cycle_momentum_sequence_and_twenty_steps_match_torch(
    name: str, kwargs: dict, strategy: str
) -> None:
    torch = torch_or_skip()
    cycle = dict(
        max_lr=0.2,
        total_steps=20,
        pct_start=0.25,
        anneal_strategy=strategy,
        base_momentum=0.8,
        max_momentum=0.95,
    )
    logs: list[_MomentumLog] = []

    def sched(module):  # type: ignore[no-untyped-def]
        return lambda o: logs.append(_MomentumLog(module.OneCycleLR(o, **cycle))) or logs[-1]

    w, b, opt, lrs = _ours(lambda ps: getattr(nn.optim, name)(ps, **kwargs), 20, sched(nn.lr_scheduler))
    tw, tb, topt, tlrs = _theirs(
        lambda ps: getattr(torch.optim, name)(ps, **kwargs), 20, sched(torch.optim.lr_scheduler)
    )
    ours, theirs = logs
    assert len(set(ours.seen)) > 10 and min(ours.seen) == pytest.approx(0.8) and ours.seen[0] == 0.95
    np.testing.assert_allclose(ours.seen, theirs.seen, rtol=1e-12)
    np.testing.assert_allclose(lrs, tlrs, rtol=1e-12)
    np.testing.assert_allclose(w, tw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, tb, rtol=1e-5, atol=1e-6)
    for key in ("momentum", "betas", "max_momentum", "base_momentum"):
        if key in topt.param_groups[0]:
            assert opt.param_groups[0][key] == pytest.approx(topt.param_groups[0][key], rel=1e-12), key
    group = opt.param_groups[0]  # the graph variable holds the group's last momentum or beta1
    want = group["betas"][0] if "betas" in group else group["momentum"]
    assert float(group.momentum_var.numpy()) == np.float32(want)


def test_cycled_momentum_changes_without_recompiling_and_is_checked() -> None:
    p = nn.Parameter(np.ones(3), name="p")
    x = ag.input("x", ("B", 3))
    loss = (x * p).sum()
    opt = nn.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = nn.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=6)
    step = ag.compile(loss, inputs=[x], updates=opt.updates(ag.grad(loss, [p])))
    assert "sgd_update" not in step.graph.op_counts()  # momentum is a variable: the step is unfused
    momenta = []
    for i in range(6):
        momenta.append(float(opt.param_groups[0].momentum_var.numpy()))
        step(np.ones((1, 3), np.float32))
        if i < 5:
            sched.step()
    assert step.num_plans == 1 and len(set(momenta)) >= 4
    # a step compiled before the scheduler holds a constant momentum: refused, naming the fix
    opt2 = nn.optim.Adam([nn.Parameter(np.ones(2), name="q")])
    opt2.updates([ag.constant(np.ones(2, "float32"))])
    with pytest.raises(RuntimeError, match="before compiling"):
        nn.lr_scheduler.OneCycleLR(opt2, max_lr=0.1, total_steps=5)
    with pytest.raises(ValueError, match="cycle_momentum=False"):
        nn.lr_scheduler.OneCycleLR(nn.optim.RMSprop([nn.Parameter(np.ones(2))]), max_lr=0.1, total_steps=5)
    nn.lr_scheduler.OneCycleLR(nn.optim.RMSprop([nn.Parameter(np.ones(2))]), max_lr=0.1, total_steps=5,
                               cycle_momentum=False)  # fmt: skip
    with pytest.raises(ValueError, match="max_momentum has 2 values for 1"):
        nn.lr_scheduler.OneCycleLR(nn.optim.SGD([nn.Parameter(np.ones(2))]), 0.1, 5, max_momentum=[0.9, 0.8])


def test_changing_the_lr_does_not_recompile() -> None:
    p = nn.Parameter(np.ones(3), name="p")
    x = ag.input("x", ("B", 3))
    loss = (x * p).sum()
    opt = nn.optim.SGD([p], lr=0.5)
    sched = nn.lr_scheduler.ExponentialLR(opt, 0.5)
    step = ag.compile(loss, inputs=[x], updates=opt.updates(ag.grad(loss, [p])))
    for _ in range(3):
        step(np.ones((1, 3), np.float32))
        sched.step()
    # p = 1 - (0.5 + 0.25 + 0.125)
    np.testing.assert_allclose(p.numpy(), np.full(3, 0.125), rtol=1e-6)
    assert step.num_plans == 1


@pytest.mark.torch
def test_load_torch_optimizer_state_and_continue() -> None:
    torch = torch_or_skip()
    _, _, _, _ = _theirs(lambda ps: torch.optim.Adam(ps, lr=0.05), steps=5)
    data = _problem()
    tw = torch.tensor(data["w"], requires_grad=True)
    topt = torch.optim.Adam([tw], lr=0.05)
    for _ in range(5):
        topt.zero_grad()
        (tw**2).sum().backward()
        topt.step()
    w = nn.Parameter(tw.detach().numpy(), name="w")
    opt = nn.optim.Adam([w], lr=0.05)
    opt.load_state_dict(topt.state_dict())
    loss = (w**2).sum()
    step = ag.compile(loss, updates=opt.updates(ag.grad(loss, [w])))
    for _ in range(5):
        step()
        topt.zero_grad()
        (tw**2).sum().backward()
        topt.step()
    np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert float(opt.state_dict()["state"][0]["step"]) == 10.0


def test_clip_grad_norm_and_value_inside_the_step() -> None:
    g1, g2 = ag.input("g1", (2,)), ag.input("g2", (2, 2))
    (c1, c2), norm = nn.clip_grad_norm([g1, g2], max_norm=1.0)
    a, b = np.array([3.0, 0.0], np.float32), np.array([[0.0, 4.0], [0.0, 0.0]], np.float32)
    got1, got2, n = ag.compile([c1, c2, norm])(a, b)
    assert float(n) == pytest.approx(5.0)
    np.testing.assert_allclose(got1, a / (5.0 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(got2, b / (5.0 + 1e-6), rtol=1e-6)
    # below the threshold nothing changes; inf norm is the max
    (c1,), norm = nn.clip_grad_norm([g1], max_norm=10.0, norm_type=math.inf)
    got, n = ag.compile([c1, norm])(np.array([-3.0, 2.0], np.float32))
    assert float(n) == 3.0 and got.tolist() == [-3.0, 2.0]
    (v,) = nn.clip_grad_value([g1], 0.5)
    assert ag.compile(v)(np.array([-3.0, 0.25], np.float32)).tolist() == [-0.5, 0.25]


@pytest.mark.torch
def test_clip_grad_norm_matches_torch() -> None:
    torch = torch_or_skip()
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s).astype(np.float32) for s in [(3, 4), (5,), (2, 2, 2)]]
    for norm_type in (2.0, 1.0, 3.0, math.inf):
        ins = [ag.input(f"g{i}", a.shape) for i, a in enumerate(arrays)]
        clipped, norm = nn.clip_grad_norm(ins, 0.7, norm_type)
        got = ag.compile([*clipped, norm])(*arrays)
        ts = [torch.zeros(a.shape, requires_grad=True) for a in arrays]
        for t, a in zip(ts, arrays, strict=True):
            t.grad = torch.tensor(a)
        want_norm = torch.nn.utils.clip_grad_norm_(ts, 0.7, norm_type)
        assert float(got[-1]) == pytest.approx(float(want_norm), rel=1e-5)
        for g, t in zip(got[:-1], ts, strict=True):
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_fused_ops_are_registered_in_the_optim_family_with_clear_errors() -> None:
    for name in ("sgd_update", "adam_update", "rmsprop_update"):
        op = ag.get_op(name)
        assert op.family == "asg.core.ops.optim" and not op.differentiable
    p = ag.parameter(np.zeros(3, np.float32), name="p")
    lr = ag.state(np.float32(0.1), name="lr")
    with pytest.raises(
        ag.ShapeError, match=r"adam_update: .*exp_avg is \(4,\) float32, but the parameter is \(3,\)"
    ):
        fused.adam_update(p, p, ag.state(np.zeros(4, np.float32)), p, ag.state(np.float32(1)), lr=lr)
    with pytest.raises(ag.ShapeError, match=r"lr must be a float scalar, got \(3,\) float32"):
        fused.sgd_update(p, p, lr=p)


def test_optimizer_argument_errors() -> None:
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match=r"Adam: invalid lr: -1"):
        nn.optim.Adam([p], lr=-1)
    with pytest.raises(ValueError, match=r"SGD: Nesterov momentum requires a momentum and zero dampening"):
        nn.optim.SGD([p], nesterov=True)
    with pytest.raises(TypeError, match="wrap it in a list"):
        nn.optim.SGD(p)
    with pytest.raises(ValueError, match="appears in more than one parameter group"):
        nn.optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
