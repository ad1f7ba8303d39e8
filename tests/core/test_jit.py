"""The numpy-jit backend: every fused kernel against the unfused numpy graph (asg.core.testing), the
schedule rewrite, the on-disk cache, and the thread settings.

The parity cases (``CASES``) pass with and without numba: ``test_jit_fallback.py`` runs them again
with ``ASG_JIT=0``. Tests of what numba does (groups fused, cache files, exp32) are skipped without it.
Kernels are kept few and small (compile time on CI's 2 cores); the parallel variant is compiled once.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import numpy as np
import pytest

import asg.core as ag
import asg.core.testing as agt
from asg.core.backends import jit
from asg.core.backends.jit import NumpyJitBackend, codegen
from asg.core.ops import optim

HAVE_NUMBA = jit.enabled()
# The backend gives every op defined so far its numpy lowering when first made: do it while the test
# modules are collected, so that no test module sees the registry change.
ag.get_backend("numpy-jit")
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (or ASG_JIT=0)")
# Small arrays fuse too, compiled single-threaded (fast to compile); one case forces the parallel loop.
SMALL = {"fuse": True, "min_elements": 0, "parallel_min_elements": 1 << 40}


@pytest.fixture(autouse=True)
def _jit_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NumpyJitBackend, "options", dict(SMALL))


def r(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    return agt.rand(*shape, seed=seed, low=low, high=high).astype(np.float32)


# Each case: a function of the inputs, the input arrays, and the fused units it must give under numba.
CASES: dict[str, tuple[Callable[..., ag.Tensor], list[np.ndarray], int]] = {
    # bias (3d layout) + exact GELU, its gradient (erf, exp)
    "bias_gelu": (lambda x, b: ag.gelu(x + b), [r(4, 8, 16), r(16, seed=1)], 1),
    "gelu_tanh": (lambda x: ag.gelu(x, approximate="tanh") * 2.0, [r(6, 10)], 1),
    "activations": (
        lambda x: (
            ag.silu(x)
            + ag.sigmoid(x * 3.0)
            + ag.softplus(x, beta=2.0)
            + ag.elu(x)
            + ag.leaky_relu(x)
            - ag.tanh(x)
        ),
        [r(5, 7, low=-6, high=6)],
        1,
    ),
    "arithmetic": (
        lambda x, y: (
            (ag.sqrt(ag.abs(x) + 1.0).log() * ag.sign(y) + ag.maximum(x, y) / (ag.minimum(x, y).exp() + 2.0))
            ** 2.0
            - ag.rsqrt(y * y + 1.0)
            + ag.clamp(x, -0.5, 0.7)
        ),
        [r(3, 9), r(3, 9, seed=2)],
        1,
    ),
    # a keepdims row statistic broadcast along the last axis, a comparison, where, bool ops, cast
    "select": (
        lambda x, y: (
            ag.where((x > x.mean(axis=1, keepdims=True)) & ~(y < 0.5), x, y * 2.0)
            + ag.cast(x >= 0.0, "float32")
            + (-y).relu()
        ),
        [r(6, 11), r(6, 11, seed=3)],
        2,
    ),
    "softmax": (lambda x: ag.softmax(x * 2.0, axis=-1), [r(3, 4, 10, low=-30, high=30)], 1),
    "softmax_axis0": (lambda x: ag.softmax(x, axis=0), [r(5, 6)], 0),
    "log_softmax": (lambda x: ag.log_softmax(x, axis=-1), [r(7, 12, low=-20, high=20)], 0),
    "cross_entropy": (
        lambda z: ag.cross_entropy(z, ag.constant(np.array([0, 3, 1, 2, 3], np.int64))),
        [r(5, 4)],
        0,
    ),
    "layer_norm": (
        lambda x, w, b: ag.layer_norm(x, 12, w, b) * 1.5,
        [r(2, 5, 12), r(12, seed=4), r(12, seed=5)],
        0,
    ),
    "layer_norm_no_affine": (lambda x: ag.layer_norm(x, (3, 4)), [r(6, 3, 4)], 0),
    "dropout": (lambda x: ag.dropout(x, 0.3, ag.constant(np.int64(7))).exp(), [r(8, 9)], 1),
    # the input gradient (conv_transpose2d) with stride, padding and dilation; bias + relu epilogue
    "conv": (
        lambda x, w, b: ag.conv2d(x, w, b, stride=2, padding=1, dilation=(1, 2)).relu(),
        [r(3, 2, 9, 11), r(4, 2, 3, 3, seed=6), r(4, seed=7)],
        1,
    ),
    "conv_groups": (
        lambda x, w: ag.conv2d(x, w, padding=2, groups=2),
        [r(2, 4, 7, 7), r(6, 2, 5, 5, seed=8)],
        0,
    ),
}


def _fused_units(fn: Callable[..., ag.Tensor], arrays: list[np.ndarray]) -> list[str]:
    xs = [ag.input(f"x{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]
    out = fn(*xs)
    floats = [x for x in xs if x.dtype.startswith("float")]
    grads = ag.grad((out * out).sum(), floats) if out.dtype.startswith("float") else []
    plan = ag.compile([out, *grads], inputs=xs, backend="numpy-jit").plan_for(*arrays)
    return [s.node.meta["jit"] for s in plan.schedule.steps if "jit" in s.node.meta]


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_kernel_matches_the_unfused_graph(name: str) -> None:
    """Forward and gradients on numpy-jit against the numpy backend (float32 tolerance)."""
    fn, arrays, _ = CASES[name]
    agt.check_op(fn, *arrays, order=0, backend="numpy-jit", backend_rtol=2e-5, backend_atol=2e-6)


@needs_numba
@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c[2]))
def test_case_is_fused(name: str) -> None:
    fn, arrays, at_least = CASES[name]
    units = _fused_units(fn, arrays)
    elementwise = [u for u in units if u.startswith("elementwise")]
    assert len(elementwise) >= at_least, units


@needs_numba
def test_gelu_forward_and_backward_become_one_kernel_each() -> None:
    x = ag.input("x", (4, 8, 16))
    b = ag.parameter(r(16), name="b")
    h = ag.gelu(x + b)
    (gx,) = ag.grad((h * 3.0).sum(), [x])
    f = ag.compile([h, gx], backend="numpy-jit")
    plan = f.plan_for(r(4, 8, 16))
    heads = [s for s in plan.schedule.steps if "jit" in s.node.meta]
    # the forward and the gradient read only x and b: one loop writes both outputs
    assert len(heads) == 2 and len(plan.schedule.steps) == 2, [s.node.meta.get("jit") for s in heads]
    assert heads[0].node.meta["jit"].startswith("elementwise kernel over")
    assert "gelu" in heads[0].node.meta["jit"] and "erf" in heads[0].node.meta["jit"]
    assert heads[1].node.inputs == (heads[0].node,)  # the second output is handed on by the first


def test_parallel_loop_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """One case compiled with prange over several threads (above parallel_min_elements)."""
    monkeypatch.setattr(NumpyJitBackend, "options", {**SMALL, "parallel_min_elements": 1})
    fn = lambda x, b: ag.gelu(x * 2.0 + b) - x  # noqa: E731
    agt.check_op(
        fn, r(64, 300), r(300, seed=1), order=0, backend="numpy-jit", backend_rtol=2e-5, backend_atol=2e-6
    )


def test_min_elements_leaves_small_groups_on_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NumpyJitBackend, "options", {**SMALL, "min_elements": 1000})
    x = ag.input("x", (4, 5))
    plan = ag.compile(ag.gelu(x * 2.0), backend="numpy-jit").plan_for(r(4, 5))
    assert [s.node.op for s in plan.schedule.steps] == ["mul", "gelu"]
    assert not any("jit" in s.node.meta for s in plan.schedule.steps)


def test_fuse_option_off_keeps_the_row_kernels_only() -> None:
    x = ag.input("x", (4, 6))
    f = ag.compile(ag.softmax(x * 2.0 + 1.0), backend="numpy-jit", options={"fuse": False})
    ops = [s.node.op for s in f.plan_for(r(4, 6)).schedule.steps]
    assert ops == ["mul", "add", "softmax"]
    np.testing.assert_allclose(f(r(4, 6)), ag.compile(ag.softmax(x * 2.0 + 1.0))(r(4, 6)), rtol=1e-6)


def test_special_values_propagate_as_in_numpy() -> None:
    """NaN and infinities through exp, relu, maximum, sigmoid, erf and where, fused."""
    values = np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 88.0, -88.0, 100.0, -104.0, 1e-30]], np.float32)
    x = ag.input("x", values.shape)
    y = ag.stack(
        [ag.exp(x), ag.relu(x), ag.maximum(x, 0.0), ag.sigmoid(x), ag.erf(x), ag.where(x > 0, x, -1.0)],
        axis=0,
    )
    got = ag.compile(y, backend="numpy-jit")(values)
    want = ag.compile(y)(values)
    np.testing.assert_allclose(got, want, rtol=5e-6, atol=1e-37, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_rows_with_special_values_match_numpy(dtype: str) -> None:
    # the float32 row max works on the bits (NaN of either sign, infinities, signed zeros)
    rows = np.tile(np.linspace(-3, 3, 9), (8, 1))
    rows[0, 2], rows[1, 5], rows[2, :] = np.nan, -np.nan, np.nan  # NaN (sign bit set in row 1)
    rows[3, 4], rows[4, :], rows[5, 1] = np.inf, -np.inf, -np.inf
    rows[6, :], rows[6, 3], rows[7, :] = 0.0, -0.0, -1e30
    values = rows.astype(dtype)
    x = ag.input("x", values.shape, dtype)
    for fn in (ag.softmax, ag.log_softmax):
        got = ag.compile(fn(x, axis=-1), backend="numpy-jit")(values)
        want = ag.compile(fn(x, axis=-1))(values)
        np.testing.assert_allclose(got, want, rtol=5e-6, atol=1e-7, equal_nan=True)


def _optimizer_step(backend: str, kind: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    p = ag.parameter(rng.standard_normal((30, 7)).astype(np.float32), name="p")
    buf = ag.state(np.zeros((30, 7), np.float32), name="buf")
    sq = ag.state(np.zeros((30, 7), np.float32), name="sq")
    step = ag.state(np.float32(0), name="step")
    lr = ag.state(np.float32(0.01), name="lr")
    g = ag.input("g", (30, 7))
    t = step + 1.0
    if kind == "adam":
        new = optim.adam_update(p, g, buf, sq, t, lr=lr, weight_decay=0.1)
        updates = {p: new["param"], buf: new["exp_avg"], sq: new["exp_avg_sq"], step: t}
    elif kind == "adamw":
        new = optim.adam_update(
            p, g, buf, sq, t, lr=lr, weight_decay=0.1, decoupled_weight_decay=True, maximize=True
        )
        updates = {p: new["param"], buf: new["exp_avg"], sq: new["exp_avg_sq"], step: t}
    elif kind == "sgd_nesterov":
        new = optim.sgd_update(p, g, buf, t, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.01)
        updates = {p: new["param"], buf: new["momentum_buffer"], step: t}
    elif kind == "sgd":
        new = optim.sgd_update(p, g, lr=lr, maximize=True)
        updates = {p: new["param"], step: t}
    elif kind == "adam_amsgrad":  # no numba kernel: the numpy kernel's set, in place
        mx = ag.state(np.zeros((30, 7), np.float32), name="max")
        new = optim.adam_update(p, g, buf, sq, t, lr=lr, max_exp_avg_sq=mx, weight_decay=0.1)
        updates = {
            p: new["param"],
            buf: new["exp_avg"],
            sq: new["exp_avg_sq"],
            mx: new["max_exp_avg_sq"],
            step: t,
        }
    else:  # rmsprop, centered with momentum or plain
        full = kind == "rmsprop_centered_momentum"
        ga = ag.state(np.zeros((30, 7), np.float32), name="grad_avg")
        extra = dict(grad_avg=ga, momentum_buffer=buf, momentum=0.5, centered=True) if full else {}
        new = optim.rmsprop_update(p, g, sq, lr=lr, weight_decay=0.05, maximize=full, **extra)
        updates = {p: new["param"], sq: new["square_avg"], step: t}
        if full:
            updates.update({ga: new["grad_avg"], buf: new["momentum_buffer"]})
    f = ag.compile([], inputs=[g], updates=updates, backend=backend)
    for i in range(3):
        f(rng.standard_normal((30, 7)).astype(np.float32) * (i + 1))
    return [v.numpy() for v in updates]


@pytest.mark.parametrize(
    "kind", ["adam", "adamw", "sgd_nesterov", "sgd", "adam_amsgrad", "rmsprop", "rmsprop_centered_momentum"]
)
def test_optimizer_kernel_matches_numpy_over_three_steps(kind: str) -> None:
    want = _optimizer_step("numpy", kind)
    got = _optimizer_step("numpy-jit", kind)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


@needs_numba
def test_one_optimizer_kernel_writes_every_state_tensor() -> None:
    p = ag.parameter(np.ones((64, 64), np.float32), name="p")
    m, v = (
        ag.state(np.zeros((64, 64), np.float32), name="m"),
        ag.state(np.zeros((64, 64), np.float32), name="v"),
    )
    lr, t = ag.state(np.float32(0.1), name="lr"), ag.state(np.float32(1), name="t")
    g = ag.input("g", (64, 64))
    new = optim.adam_update(p, g, m, v, t, lr=lr)
    f = ag.compile(
        [],
        inputs=[g],
        updates={p: new["param"], m: new["exp_avg"], v: new["exp_avg_sq"]},
        backend="numpy-jit",
    )
    steps = f.plan_for(np.ones((64, 64), np.float32)).schedule.steps
    assert [s.node.meta.get("jit", "").split(" kernel")[0] for s in steps] == ["adam_update"] * 3
    assert [s.node.inputs[0].op for s in steps[1:]] == ["adam_update", "adam_update"]  # tails read the head


def test_training_step_on_numpy_jit_matches_numpy() -> None:
    """An MLP step with Adam: losses and parameters after 3 steps on both backends."""

    def run(backend: str) -> tuple[list[float], list[np.ndarray]]:
        rng = np.random.default_rng(0)
        w1 = ag.parameter(rng.standard_normal((20, 32)).astype(np.float32) * 0.3, name="w1")
        b1 = ag.parameter(np.zeros(32, np.float32), name="b1")
        w2 = ag.parameter(rng.standard_normal((32, 5)).astype(np.float32) * 0.3, name="w2")
        x, y = ag.input("x", ("B", 20)), ag.input("y", ("B",), "int64")
        loss = ag.cross_entropy(ag.gelu(x @ w1 + b1) @ w2, y)
        params = [w1, b1, w2]
        lr, t = ag.state(np.float32(0.01), name="lr"), ag.state(np.float32(0), name="t")
        updates = {t: t + 1.0}
        for p, g in zip(params, ag.grad(loss, params), strict=True):
            m, v = (
                ag.state(np.zeros(p.shape, np.float32), name="m"),
                ag.state(np.zeros(p.shape, np.float32), name="v"),
            )
            new = optim.adam_update(p, g, m, v, t + 1.0, lr=lr)
            updates.update({p: new["param"], m: new["exp_avg"], v: new["exp_avg_sq"]})
        f = ag.compile(loss, inputs=[x, y], updates=updates, backend=backend)
        xs, ys = rng.standard_normal((16, 20)).astype(np.float32), rng.integers(0, 5, 16)
        return [float(f(xs, ys)) for _ in range(3)], [p.numpy() for p in params]

    (l_jit, p_jit), (l_np, p_np) = run("numpy-jit"), run("numpy")
    np.testing.assert_allclose(l_jit, l_np, rtol=1e-5)
    for a, b in zip(p_jit, p_np, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- codegen (pure)
def test_layout_collapses_axes_by_broadcast_pattern() -> None:
    lay = codegen.layout((2, 3, 4, 5), [(2, 3, 4, 5), (1, 3, 1, 1), ()])
    assert lay == codegen.Layout("3d", (2, 3, 20), ((2, 3, 20), (1, 3, 1), (1, 1, 1)))
    assert codegen.layout((6, 7), [(6, 7), (1,)]).kind == "flat"
    # four alternating patterns cannot be three loops: the group stays on numpy
    assert codegen.layout((2, 3, 4, 5), [(2, 1, 4, 1), (1, 3, 1, 5)]) is None


def test_kernel_source_computes_in_the_graph_dtype() -> None:
    x = ag.input("x", (8, 4))
    y = ag.gelu(x * 0.5)
    nodes = [n for n in ag.Graph([y.node]).nodes if n.op not in ("input", "constant")]
    const = nodes[0].inputs[1]
    src = codegen.kernel_source(
        "k", nodes, [x.node, const], [y.node], codegen.layout((8, 4), [(8, 4), ()]), False
    )
    assert "def k(a0, a1, o0):" in src and "@njit(parallel=False, cache=True, fastmath=False" in src
    assert "x1 = a1[0]" in src  # the scalar is read once, outside the loop
    assert "np.float32(0.7071067811865475)" in src and "_erf32(" in src  # typed literals, float32 erf
    assert "np.float64" not in src.split("def k(")[1]


def test_unsupported_nodes_are_left_to_numpy() -> None:
    i = ag.input("i", (3,), "int64")
    assert not codegen.supported((i + 1).node)  # integer arithmetic keeps numpy's semantics
    assert codegen.supported((ag.input("f", (3,)) > 0).node)


# ----------------------------------------------------------------------------- exp32, cache, threads
@needs_numba
def test_exp32_is_within_a_few_ulps_of_numpy() -> None:
    from numba import njit

    from asg.core.backends.jit.mathfn import exp32

    @njit
    def apply(a, out):
        for i in range(a.shape[0]):
            out[i] = exp32(a[i])

    x = np.linspace(-87.3, 88.3, 200_001, dtype=np.float32)
    got = np.empty_like(x)
    apply(x, got)
    want = np.exp(x)
    assert np.max(np.abs(got - want) / want) < 5 * np.finfo(np.float32).eps


@needs_numba
def test_kernels_are_cached_on_disk_and_reused_by_a_new_process(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import numpy as np, asg.core as ag
        from asg.core.backends import jit
        x = ag.input("x", (64, 64))
        f = ag.compile(ag.silu(x * 3.0 - 1.0), backend="numpy-jit", options={"min_elements": 0})
        f(np.ones((64, 64), "float32"))
        hits = sum(sum(m.kernel.stats.cache_hits.values()) for m in jit._modules.values())
        print(hits)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["ASG_JIT_CACHE_DIR"] = str(tmp_path)
    first = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    second = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert first.stdout.split() == ["0"] and second.stdout.split() == ["1"], (first.stderr, second.stderr)
    sources = list(tmp_path.glob("asg_kernel_*.py"))
    assert len(sources) == 1 and "def kernel(" in sources[0].read_text()
    assert list((tmp_path / "__pycache__").glob("asg_kernel_*.nbi"))


def test_unwritable_cache_dir_falls_back_to_a_temporary_one(tmp_path, monkeypatch, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ASG_JIT_CACHE_DIR", str(blocker / "jit"))
    monkeypatch.setattr(jit, "_cache_dir", None)
    with caplog.at_level(logging.WARNING, logger="asg.core.jit"):
        where = jit.cache_dir()
    assert os.path.isdir(where) and not where.startswith(str(blocker))
    assert f"JIT cache directory {blocker / 'jit'} is not usable" in caplog.text
    monkeypatch.setattr(jit, "_cache_dir", None)  # the next use finds the usual directory again


def test_cache_dir_others_can_write_is_refused(tmp_path, monkeypatch, caplog) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("ASG_JIT_CACHE_DIR", str(shared))
    monkeypatch.setattr(jit, "_cache_dir", None)
    with caplog.at_level(logging.WARNING, logger="asg.core.jit"):
        where = jit.cache_dir()
    assert where != str(shared) and (os.stat(where).st_mode & 0o777) == 0o700
    assert "it is not private to this user" in caplog.text
    monkeypatch.setattr(jit, "_cache_dir", None)


def test_set_num_threads_validates_and_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    from asg.core import threads

    with pytest.raises(ValueError, match=r"set_num_threads: n must be a positive int, got 0"):
        ag.set_num_threads(0)
    monkeypatch.setenv("ASG_NUM_THREADS", "two")
    with pytest.raises(ValueError, match=r"ASG_NUM_THREADS must be a positive integer, got 'two'"):
        threads.default_num_threads()
    monkeypatch.setenv("ASG_NUM_THREADS", "3")
    assert threads.default_num_threads() == 3
    monkeypatch.delenv("ASG_NUM_THREADS")
    assert threads.default_num_threads() == len(os.sched_getaffinity(0))
    before = ag.get_num_threads()
    try:
        ag.set_num_threads(1)
        assert ag.get_num_threads() == 1
        if HAVE_NUMBA:
            import numba

            assert numba.get_num_threads() == 1
        threadpoolctl = pytest.importorskip("threadpoolctl")
        blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
    finally:
        ag.set_num_threads(before)
    assert math.isfinite(ag.get_num_threads())


@pytest.mark.parametrize(
    "name", ["asg.core.backends.jit", "asg.core.backends.jit.codegen", "asg.core.threads"]
)
def test_docstring_examples_run(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@needs_numba
def test_fused_outputs_reuse_planned_buffers_and_stay_correct() -> None:
    """Fused kernels write into buffers planned among them (lifetimes of the whole schedule): values
    computed twice per step into one buffer, and a second call, still match numpy."""
    x = ag.input("x", (32, 48))
    h = x
    for k in range(4):  # four fused groups, separated by reductions
        h = ag.gelu(h * (1.0 + 0.1 * k) + 0.5)
        h = h - h.max(axis=1, keepdims=True)
    out = (h * h).sum()
    f = ag.compile(out, backend="numpy-jit")
    xs = [r(32, 48, seed=s) for s in (1, 2)]
    want = ag.compile(out)
    for a in xs:
        np.testing.assert_allclose(f(a), want(a), rtol=2e-5)
    heads = [s.node for s in f.plan_for(xs[0]).schedule.steps if "jit_buffer" in s.node.meta]
    used = [n.meta["jit_buffer"] for n in heads]
    assert len(used) >= 4 and len(set(used)) < len(used), used  # some buffer serves two kernels


@needs_numba
@pytest.mark.parametrize("kind", ["adam", "rmsprop_centered_momentum", "sgd"])
def test_optimizer_kernels_write_the_state_in_place(kind: str) -> None:
    p = ag.parameter(np.ones((30, 7), np.float32), name="p")
    held = p.numpy()
    rng = np.random.default_rng(0)
    buf, sq, ga = (ag.state(np.zeros((30, 7), np.float32), name=n) for n in ("buf", "sq", "ga"))
    lr, t = ag.state(np.float32(0.01), name="lr"), ag.state(np.float32(1), name="t")
    g = ag.input("g", (30, 7))
    if kind == "adam":
        new = optim.adam_update(p, g, buf, sq, t, lr=lr)
        state = {p: new["param"], buf: new["exp_avg"], sq: new["exp_avg_sq"]}
    elif kind == "sgd":
        new = optim.sgd_update(p, g, lr=lr)
        state = {p: new["param"]}
    else:
        new = optim.rmsprop_update(p, g, sq, ga, buf, lr=lr, momentum=0.5, centered=True)
        state = {p: new["param"], sq: new["square_avg"], ga: new["grad_avg"], buf: new["momentum_buffer"]}
    f = ag.compile([], inputs=[g], updates=state, backend="numpy-jit")
    grad = rng.standard_normal((30, 7)).astype(np.float32)
    plan = f.plan_for(grad)
    op = kind.split("_")[0] + "_update"
    assert [s.node.meta["jit"].split(" kernel")[0] for s in plan.schedule.steps] == [op] * len(state)
    assert "out=(p," in plan.source  # the state's arrays are the kernel's outputs (values: the test above)
    before = p.numpy().copy()
    f(grad)
    f(grad)  # the generated code: written into the arrays
    assert p.numpy() is held and not np.array_equal(held, before)


@needs_numba
@pytest.mark.parametrize("parts", [((0, 4), (4, 8), (8, 12)), ((0, 3), (5, 9)), ((2, 6), (0, 4))])
def test_a_sum_of_slice_gradients_is_one_kernel_matching_numpy(parts) -> None:
    # the gradient of a tensor split into parts (attention's q, k, v): disjoint parts are copied into one
    # array (zeros where none lands); overlapping ones stay adds. Without simplify, which turns such
    # step-1 sums into one concat before any backend sees them
    x = ag.input("x", (6, 5, 12))
    w = ag.input("w", (6, 5, 12))
    pieces = [x[:, :, a:b] * w[:, :, a:b] for a, b in parts]
    loss = sum((p * p).sum() * (k + 1.0) for k, p in enumerate(pieces))
    (gx,) = ag.grad(loss, [x])
    rng = np.random.default_rng(2)
    data = [rng.standard_normal((6, 5, 12)).astype(np.float32) for _ in range(2)]
    passes = ["constant_folding", "cse", "dce"]
    got_fn, want_fn = (
        ag.compile(gx * 1.0, inputs=[x, w], backend=b, passes=passes) for b in ("numpy-jit", "numpy")
    )
    np.testing.assert_array_equal(got_fn(*data), want_fn(*data))
    labels = [s.node.meta.get("jit", "") for s in got_fn.plan_for(*data).schedule.steps]
    disjoint = all(b1 <= a2 for (_, b1), (a2, _) in zip(sorted(parts), sorted(parts)[1:], strict=False))
    assert any(lab.startswith("slice_sum kernel") for lab in labels) == disjoint


@needs_numba
def test_layer_norm_gradients_and_bias_sums_run_numba_kernels_matching_float64(monkeypatch) -> None:
    # layer_norm's weight gradient and sum_to over leading axes (bias gradients, at least 256 rows and
    # 2**17 elements) are blocked parallel column sums: against a float64 reference, not only numpy's
    from asg.core.backends.jit import kernels

    called: list[str] = []
    for name in ("layer_norm_weight_grad_rows", "column_sums"):
        real = getattr(kernels, name)
        monkeypatch.setattr(
            kernels, name, lambda *a, _real=real, _name=name: called.append(_name) or _real(*a)
        )
    rng = np.random.default_rng(5)
    shape = (4, 80, 512)  # 320 rows of 512
    xs, gs = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    x, g = ag.input("x", shape), ag.input("g", shape)
    weight = ag.apply("layer_norm_weight_grad", g, x, normalized_shape=(512,), eps=1e-5)
    bias = ag.sum_to(g * 1.0, (512,))
    fn = ag.compile([weight, bias], inputs=[g, x], backend="numpy-jit")
    got_w, got_b = fn(gs, xs)
    x64, g64 = xs.astype(np.float64), gs.astype(np.float64)
    x_hat = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got_w, (g64 * x_hat).sum((0, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_b, g64.sum((0, 1)), rtol=1e-5, atol=1e-5)
    assert sorted(called) == ["column_sums", "layer_norm_weight_grad_rows"]


@needs_numba
@pytest.mark.parametrize(
    ("shape", "target", "kernel"),
    [
        ((64, 6, 28, 28), (1, 6, 1, 1), "channel_sums"),  # LeNet's first convolution's bias gradient
        ((64, 6, 28, 28), (6, 1, 1), "channel_sums"),  # the target's leading 1s left out
        ((8, 4, 16, 16, 16), (4, 16, 1, 1), "channel_sums"),  # two kept axes, between reduced ones
        ((4, 80, 512), (512,), "column_sums"),  # over leading axes (320 rows)
        ((4, 80, 512), (80, 512), None),  # 4 rows: numpy's sum
        ((2, 6, 8, 8), (1, 6, 1, 1), None),  # under 2**17 elements: numpy's sum
        ((64, 6, 28, 28), (64, 1, 28, 1), None),  # kept axes not consecutive: numpy's sum
    ],
)
def test_sum_to_keeping_consecutive_axes_runs_parallel_sums_matching_float64(
    shape, target, kernel, monkeypatch
) -> None:
    # sum_to over the axes either side of a kept block (a convolution's bias gradient) or over leading
    # axes: blocked parallel sums accumulated in float64, where big enough; numpy's sum elsewhere
    from asg.core.backends.jit import kernels

    called: list[str] = []
    for name in ("channel_sums", "column_sums"):
        real = getattr(kernels, name)
        monkeypatch.setattr(
            kernels, name, lambda *a, _real=real, _name=name: called.append(_name) or _real(*a)
        )
    xs = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    x = ag.input("x", shape)
    got = ag.compile(ag.sum_to(x * 1.0, target), inputs=[x], backend="numpy-jit")(xs)
    padded = (1,) * (len(shape) - len(target)) + target
    axes = tuple(a for a, t in enumerate(padded) if t == 1)
    want = xs.astype(np.float64).sum(axes, keepdims=True).reshape(target)
    assert got.shape == target and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert called == ([kernel] if kernel else [])


@needs_numba
@pytest.mark.parametrize("kind", ["softmax", "log_softmax", "layer_norm", "sum"])
def test_row_kernels_match_float64(kind: str, monkeypatch) -> None:
    # the row sums are reassociated (vectorised); still float64 sums: within float32 rounding of float64.
    # sum over the trailing axes (at least 256 rows) is a row-sum kernel
    from asg.core.backends.jit import kernels

    called: list[int] = []
    real = kernels.row_sums
    monkeypatch.setattr(kernels, "row_sums", lambda *a: called.append(1) or real(*a))
    rng = np.random.default_rng(6)
    xs = (rng.standard_normal((300, 2, 100)) * 4).astype(np.float32)
    x = ag.input("x", xs.shape)
    y = {
        "softmax": lambda: ag.softmax(x, axis=-1),
        "log_softmax": lambda: ag.log_softmax(x, axis=-1),
        "layer_norm": lambda: ag.layer_norm(x, 100),
        "sum": lambda: (x * 1.5).sum(axis=(1, 2), keepdims=True),
    }[kind]()
    got = ag.compile(y, backend="numpy-jit")(xs)
    x64 = xs.astype(np.float64)
    if kind == "sum":
        want = (x64 * 1.5).sum((1, 2), keepdims=True)
    elif kind == "layer_norm":
        want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    else:
        shifted = x64 - x64.max(-1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(-1, keepdims=True))
        want = np.exp(shifted - lse) if kind == "softmax" else shifted - lse
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
    assert len(called) == (kind == "sum")


@needs_numba
def test_a_concat_of_reshaped_views_is_one_kernel_matching_numpy() -> None:
    # the gradient of attention's q, k, v split: (B, H, T, hs) -> (B, T, H, hs) -> (B, T, d) per part,
    # concatenated; each part is copied from the transposed view into its slice, with no reshaped copy
    b, t, h, hs = 2, 5, 3, 4
    qkv = ag.input("qkv", (b, t, 3 * h * hs))
    d = h * hs
    heads = [qkv[:, :, j * d : (j + 1) * d].reshape(b, t, h, hs).permute(0, 2, 1, 3) for j in range(3)]
    loss = sum(((x * (j + 1.0)) ** 2.0).sum() for j, x in enumerate(heads))
    (g,) = ag.grad(loss, [qkv])
    data = np.random.default_rng(3).standard_normal((b, t, 3 * d)).astype(np.float32)
    got_fn, want_fn = (ag.compile(g, inputs=[qkv], backend=k) for k in ("numpy-jit", "numpy"))
    np.testing.assert_array_equal(got_fn(data), want_fn(data))
    labels = [s.node.meta.get("jit", "") for s in got_fn.plan_for(data).schedule.steps]
    assert any(lab.startswith("concat kernel") and lab.endswith("reshape, concat") for lab in labels), labels
    # a part whose reshape no view of its slice can take ((3, 4) -> (6, 2) beside another column pair)
    a, c = ag.input("a", (3, 4)), ag.input("c", (6, 2))
    joined = ag.concat([(a * 2.0).reshape(6, 2), c], axis=1)
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((6, 2), np.float32)]
    np.testing.assert_array_equal(
        ag.compile(joined, backend="numpy-jit")(*arrays),
        np.concatenate([arrays[0].reshape(6, 2) * 2, arrays[1]], 1),
    )
