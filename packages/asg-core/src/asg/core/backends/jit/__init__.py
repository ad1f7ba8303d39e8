"""The fused CPU executor: backend ``"numpy-jit"``, the numpy executor with numba-compiled fused loops.

``compile(..., backend="numpy-jit")`` runs the same schedule, storage and numpy kernels as
``"numpy"``, except where numba can do one multi-threaded pass over memory instead of several
single-threaded numpy passes:

- every elementwise fusion group of :func:`asg.core.find_fusion_groups` (and the elementwise
  epilogue or prologue of a matmul or reduction, whose anchor stays on numpy/BLAS) becomes one
  generated loop (:mod:`.codegen`): GELU and its gradient, bias + activation, the elementwise parts
  of cross_entropy, dropout's mask-and-scale;
- elementwise ops not in a group (erf, gelu, sigmoid ...) on large arrays run as one-op loops;
- softmax/log_softmax over the last axis and layer_norm forward/backward are row-wise kernels;
  layer_norm's weight gradient and ``sum_to`` over leading axes (bias gradients) are parallel
  column sums (blocks of rows, each into its own partial sums in float64), ``sum`` over trailing
  axes (softmax's backward) parallel row sums;
- conv_transpose2d (conv2d's input gradient) scatters its GEMM's columns in one parallel pass;
- index_select_backward over axis 0 (an embedding's gradient) is one scatter-add pass, the columns
  split between threads (numpy's kernel sorts the indices and sums segments);
- a sum of ``slice_backward`` of disjoint parts (the gradient of attention's q, k, v split) is one
  array the parts are copied into; so is a ``concat`` of reshaped parts, each copied from the
  reshape's input (a transposed view) without a reshaped copy first;
- the optimizer updates (``adam_update``, ``sgd_update``, ``rmsprop_update``) of one parameter, one op
  per updated tensor in the graph, run as one kernel computing all of them, written into the state's
  own arrays where nothing else reads them afterwards (AMSGrad runs the numpy kernel's single call).

It is a backend rather than an option of ``"numpy"`` because it changes what runs (which nodes exist
as values: ``Function.capture`` sees only a fused group's outputs) while keeping everything numpy
decides; the ``"numpy"`` backend and its options stay exactly as they are.

numba is optional (``pip install asg-core[jit]``). Without it, or with ``ASG_JIT=0`` in the
environment, ``"numpy-jit"`` runs the numpy kernels unchanged (logged once on the
``asg.core.jit`` logger). Compiled kernels are cached on disk (numba ``cache=True``) under
``$ASG_JIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/asg/jit`` or ``~/.cache/asg/jit``; when that is not
writable, or others may write it, a private temporary directory is used (logged) and kernels are
compiled again in each process. The directory holds code: its modules are imported and numba's cache
files are unpickled by numba, so it must be writable by you alone (it is created with mode 0700).

A fused group runs as one step named after its first output (``Function.profile`` lists it under that
output's op; ``step.node.meta["jit"]`` says which ops it fuses); ``Function.capture`` sees only a
group's outputs, not the values inside it. Running numpy-jit functions from several threads at once
needs numba's ``omp`` or ``tbb`` threading layer (the ``workqueue`` layer refuses concurrent launches).
numba picks the layer (``tbb`` when the tbb package is installed, else ``omp``; ``NUMBA_THREADING_LAYER``
chooses); ``benchmarks/jit_threads.py`` shows which, and whether idle threads spin.

Backend options (``compile(..., backend="numpy-jit", options={...})``):

- ``fuse`` (True): compile fusion groups; False keeps only the one-op and row-wise kernels;
- ``min_elements`` (4096): smaller elementwise groups stay on numpy (a numpy call is ~1 µs);
- ``parallel_min_elements`` (32768): smaller loops are compiled single-threaded (they compile in a
  fifth of the time, and threads do not pay below that size).

Threads: :func:`asg.core.set_num_threads` (default: the cores this process may run on). The kernels
alternate with numpy's BLAS threads, so the backend sets ``OMP_WAIT_POLICY=PASSIVE`` (unless it is
set) before numba starts its OpenMP threads: spinning idle threads took the BLAS's cores (an MLP step
at 2 threads took 16 ms instead of 1.1 ms). That environment variable is seen by every OpenMP runtime
loaded later in the process too; set ``OMP_WAIT_POLICY=ACTIVE`` to keep spinning.

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", (64, 128))
    >>> f = ag.compile(ag.gelu(x * 2.0 + 1.0), backend="numpy-jit")
    >>> xs = np.linspace(-3, 3, 64 * 128, dtype="float32").reshape(64, 128)
    >>> want = ag.compile(ag.gelu(x * 2.0 + 1.0))(xs)
    >>> bool(np.allclose(f(xs), want, rtol=1e-6, atol=1e-6))
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import math
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ...fusion import FusionGroup, find_fusion_groups, fused_steps, unit_boundary
from ...graph import LEAF_OPS, Graph, Node
from ...lowering import LoweringContext, lower
from ...passes.rewrite import copy_node
from ...registry import ELEMENTWISE, OPS, Kernel, get_op, register_lowering
from ...schedule import Schedule, build_schedule, plan_memory
from ...specialize import Specialization
from ...threads import apply_num_threads
from ..numpy_backend import NumpyBackend, NumpyPlan, head_and_tails
from . import codegen

__all__ = ["BACKEND", "NumpyJitBackend", "cache_dir", "enabled", "inherit_numpy_lowerings"]

BACKEND = "numpy-jit"
log = logging.getLogger("asg.core.jit")
_lock = threading.RLock()
_said: set[str] = set()


def _once(key: str, level: int, message: str, *args: Any) -> None:
    if key not in _said:
        _said.add(key)
        log.log(level, message, *args)


def enabled() -> bool:
    """True when numba can be used: it is installed and ``ASG_JIT`` is not ``0``.

    >>> import os
    >>> enabled() == (os.environ.get("ASG_JIT", "1") != "0" and importlib.util.find_spec("numba") is not None)
    True
    """
    if os.environ.get("ASG_JIT", "1").strip() == "0":
        _once("env", logging.INFO, "ASG_JIT=0: backend %r runs the numpy kernels", BACKEND)
        return False
    # numba's OpenMP threads spin after each kernel by default, taking the cores that the BLAS threads of
    # the next matmul need (2 threads: 16 ms instead of 1.1 ms per MLP step). Before numba starts them:
    # sleep when idle, unless the user chose a policy.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import numba  # noqa: F401
    except ImportError:
        _once("missing", logging.INFO, "numba is not installed: backend %r runs the numpy kernels", BACKEND)
        return False
    return True


_cache_dir: str | None = None


def cache_dir() -> str:
    """The directory holding generated kernel modules and numba's compiled cache (created if needed).

    ``$ASG_JIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/asg/jit``, else ``~/.cache/asg/jit``; a fresh
    temporary directory when that one cannot be written (logged as a warning).
    """
    global _cache_dir
    with _lock:
        if _cache_dir is not None:
            return _cache_dir
        base = os.environ.get("ASG_JIT_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "asg", "jit"
        )
        try:
            os.makedirs(base, mode=0o700, exist_ok=True)
            info = os.stat(base)
            if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
                # Its files are imported and numba unpickles its cache: only this user may write there.
                raise PermissionError("it is not private to this user (owner, or group/other write bit)")
            with tempfile.NamedTemporaryFile(dir=base, prefix=".probe-"):
                pass
            _cache_dir = base
        except OSError as err:
            _cache_dir = tempfile.mkdtemp(prefix="asg-jit-")
            log.warning(
                "JIT cache directory %s is not usable (%s); kernels are compiled into %s and not kept "
                "between processes (set ASG_JIT_CACHE_DIR to a directory only you can write)",
                base,
                err,
                _cache_dir,
            )
        return _cache_dir


_modules: dict[str, Any] = {}


def load_source(source: str, name: str) -> Any:
    """The numba function ``name`` defined by ``source``, from a module file in :func:`cache_dir`.

    The file is named by the source's hash, so numba's on-disk cache (``cache=True``) finds the
    machine code compiled by an earlier process.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    with _lock:
        module = _modules.get(digest)
        if module is None:
            path = os.path.join(cache_dir(), f"asg_kernel_{digest}.py")
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    f.write(source)
                os.replace(tmp, path)
            spec = importlib.util.spec_from_file_location(f"asg_jit_kernel_{digest}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # numba's cache finds the module's helpers by its name
            spec.loader.exec_module(module)
            _modules[digest] = module
    return getattr(module, name)


# ============================================================================ lowering
def _as_numpy(ctx: LoweringContext) -> Any:
    """Lower a node as the numpy backend does (the kernels numpy-jit does not replace)."""
    return lower(dataclasses.replace(ctx, backend="numpy"))


def inherit_numpy_lowerings() -> None:
    """Let ``"numpy-jit"`` run every registered op that ``"numpy"`` runs, through numpy's lowering.

    Called when asg-core is imported and before each ``compile(..., backend="numpy-jit")``
    (:meth:`NumpyJitBackend.prepare_lowerings`), so ops that other packages or users define later are
    covered; an op's own ``register_lowering(op, "numpy-jit", rule)`` is kept.
    """
    for op in list(OPS.values()):
        if BACKEND not in op.lowerings and ("numpy" in op.kernels or "numpy" in op.lowerings):
            op.lowerings[BACKEND] = _as_numpy


def _row_kernel(make: Callable[[LoweringContext], Any | None]) -> Callable[[LoweringContext], Any]:
    """A lowering that uses the numba kernel ``make(ctx)`` builds, or numpy's when it returns None.

    The kernel takes ``out=`` (a C-contiguous array of the result's shape and dtype, such as the
    buffer the plan reuses between steps; None: a new array), so the plan's memory planner gives it a
    buffer instead of a fresh array per call (page faults on every large result).
    """

    def rule(ctx: LoweringContext) -> Any:
        if enabled() and ctx.out_type.dtype in ("float32", "float64") and math.prod(ctx.out_type.shape):
            fn = make(ctx)
            if fn is not None:
                return Kernel(fn, out_arg=True)
        return _as_numpy(ctx)

    return rule


def _out(out: np.ndarray | None, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """``out`` when it can be written as the flat rows a row kernel writes, else a new array."""
    if (
        out is not None
        and out.flags.c_contiguous
        and out.flags.writeable
        and out.dtype == dtype
        and tuple(out.shape) == tuple(shape)
    ):
        return out
    return np.empty(shape, dtype)


def _rows_of(shape: Sequence[int], k: int) -> tuple[int, int]:
    return math.prod(shape[: len(shape) - k]), math.prod(shape[len(shape) - k :])


def _softmax_lowering(log_of: bool) -> Callable[[LoweringContext], Any]:
    def make(ctx: LoweringContext) -> Any:
        shape = ctx.out_type.shape
        if ctx.attrs["axis"] != len(shape) - 1:
            return None
        from . import kernels

        kernel = kernels.log_softmax_rows if log_of else kernels.softmax_rows
        rows = _rows_of(shape, 1)

        def run(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
            out = _out(out, shape, x.dtype)
            kernel(np.ascontiguousarray(x).reshape(rows), out.reshape(rows))
            return out

        return run

    return _row_kernel(make)


def _layer_norm_make(ctx: LoweringContext) -> Any:
    from . import kernels

    shape, attrs = ctx.out_type.shape, ctx.attrs
    rows = _rows_of(shape, len(attrs["normalized_shape"]))
    eps, has_w, has_b = float(attrs["eps"]), bool(attrs["has_weight"]), bool(attrs["has_bias"])

    def run(x: np.ndarray, *params: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = _out(out, shape, x.dtype)
        none = np.empty(0, x.dtype)
        w = params[0].reshape(-1) if has_w else none
        b = params[-1].reshape(-1) if has_b else none
        kernels.layer_norm_rows(
            np.ascontiguousarray(x).reshape(rows), w, b, has_w, has_b, eps, out.reshape(rows)
        )
        return out

    return run


def _layer_norm_backward_make(ctx: LoweringContext) -> Any:
    from . import kernels

    shape, attrs = ctx.out_type.shape, ctx.attrs
    rows = _rows_of(shape, len(attrs["normalized_shape"]))
    eps, has_w = float(attrs["eps"]), bool(attrs["has_weight"])

    def run(g: np.ndarray, x: np.ndarray, *weight: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = _out(out, shape, x.dtype)
        w = weight[0].reshape(-1) if has_w else np.empty(0, x.dtype)
        kernels.layer_norm_backward_rows(
            np.ascontiguousarray(g).reshape(rows),
            np.ascontiguousarray(x).reshape(rows),
            w,
            has_w,
            eps,
            out.reshape(rows),
        )
        return out

    return run


def _layer_norm_weight_grad_make(ctx: LoweringContext) -> Any:
    from . import kernels

    shape, attrs = ctx.in_types[1].shape, ctx.attrs
    rows = _rows_of(shape, len(attrs["normalized_shape"]))
    eps, out_shape = float(attrs["eps"]), ctx.out_type.shape

    def run(g: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = _out(out, out_shape, x.dtype).reshape(rows[1])
        g2, x2 = np.ascontiguousarray(g).reshape(rows), np.ascontiguousarray(x).reshape(rows)
        return kernels.layer_norm_weight_grad_rows(g2, x2, eps, out).reshape(out_shape)

    return run


_COLUMN_SUMS_MIN = 1 << 17  # elements (and 256 rows); below, numpy's sum is as fast as a parallel launch


def _sum_to_make(ctx: LoweringContext) -> Any:
    """sum_to keeping one block of consecutive axes, in parallel: column sums over leading axes (bias
    gradients: (B, T, N) -> (N,)), or channel sums over the axes either side ((N, C, H, W) -> (1, C, 1, 1))."""
    from . import kernels

    shape, target = tuple(ctx.in_types[0].shape), tuple(ctx.out_type.shape)
    padded = (1,) * (len(shape) - len(target)) + target
    kept = [a for a, t in enumerate(padded) if t != 1]
    if not kept or any(shape[a] != padded[a] for a in kept) or kept != list(range(kept[0], kept[-1] + 1)):
        return None
    first, stop = kept[0], kept[-1] + 1
    view = (math.prod(shape[:first]), math.prod(shape[first:stop]), math.prod(shape[stop:]))
    if view[0] < (256 if view[2] == 1 else 2) or math.prod(shape) < _COLUMN_SUMS_MIN:
        return None

    def run(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        flat = _out(out, target, x.dtype).reshape(view[1])
        x = np.ascontiguousarray(x)
        if view[2] == 1:
            return kernels.column_sums(x.reshape(view[:2]), flat).reshape(target)
        return kernels.channel_sums(x.reshape(view), flat).reshape(target)

    return run


def _sum_rows_make(ctx: LoweringContext) -> Any:
    """sum over trailing axes (softmax's backward: (B, H, T, T) -> (B, H, T, 1)) as parallel row sums."""
    from . import kernels

    shape, axes = ctx.in_types[0].shape, tuple(sorted(ctx.attrs["axes"]))  # normalised: 0 <= axis < ndim
    k = len(axes)
    if not k or axes != tuple(range(len(shape) - k, len(shape))) or k == len(shape):
        return None
    rows = _rows_of(shape, k)
    if rows[0] < 256 or math.prod(shape) < _COLUMN_SUMS_MIN // 4:
        return None
    out_shape = ctx.out_type.shape

    def run(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = _out(out, out_shape, x.dtype).reshape(rows[0])
        return kernels.row_sums(np.ascontiguousarray(x).reshape(rows), out).reshape(out_shape)

    return run


def _conv_transpose_make(ctx: LoweringContext) -> Any:
    from ...ops.convolution import conv_transpose_columns
    from . import kernels

    shape, attrs = ctx.out_type.shape, ctx.attrs
    (sh, sw), (dh, dw), groups = attrs["stride"], attrs["dilation"], int(attrs["groups"])
    top, left = attrs["padding"][0], attrs["padding"][2]

    def run(g: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = _out(out, shape, g.dtype)
        kernels.col2im(conv_transpose_columns(g, w, groups), sh, sw, dh, dw, top, left, out)
        return out

    return run


def _index_select_backward_make(ctx: LoweringContext) -> Any:
    """index_select_backward over axis 0 (the embedding gradient) as one scatter-add pass, not numpy's
    argsort, gather and ``add.reduceat``."""
    from . import kernels

    shape = tuple(ctx.out_type.shape)
    if int(ctx.attrs["axis"]) != 0 or not shape or ctx.in_types[1].dtype not in ("int32", "int64"):
        return None
    count = math.prod(ctx.in_types[1].shape)
    if not count:
        return None

    def run(g: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = _out(out, shape, g.dtype)
        rows = np.ascontiguousarray(g).reshape(count, -1)
        kernels.scatter_add_rows(rows, idx.reshape(-1) % shape[0], out.reshape(shape[0], -1))
        return out

    return run


register_lowering("conv_transpose2d", BACKEND, _row_kernel(_conv_transpose_make))
register_lowering("index_select_backward", BACKEND, _row_kernel(_index_select_backward_make))
register_lowering("softmax", BACKEND, _softmax_lowering(False))
register_lowering("log_softmax", BACKEND, _softmax_lowering(True))
register_lowering("layer_norm", BACKEND, _row_kernel(_layer_norm_make))
register_lowering("layer_norm_backward", BACKEND, _row_kernel(_layer_norm_backward_make))
register_lowering("layer_norm_weight_grad", BACKEND, _row_kernel(_layer_norm_weight_grad_make))
register_lowering("sum_to", BACKEND, _row_kernel(_sum_to_make))
register_lowering("sum", BACKEND, _row_kernel(_sum_rows_make))
inherit_numpy_lowerings()  # every op asg-core defines (imported before the backends)
from .conv import register as _register_conv  # noqa: E402

_register_conv(BACKEND, enabled)  # conv and pool kernels; they fall back to the rules above


# ============================================================================ units: what one kernel computes
@dataclasses.dataclass
class _Unit:
    """Nodes computed by one kernel: reads ``inputs``, writes ``outputs`` (values used outside it)."""

    nodes: list[Node]
    inputs: list[Node]
    outputs: list[Node]
    kind: str  # "elementwise" or the optimizer op


def _unit(nodes: list[Node], users: Mapping[int, list[Node]], graph_outputs: set[int], kind: str) -> _Unit:
    inputs, outputs = unit_boundary(nodes, users, graph_outputs)
    return _Unit(nodes, inputs, outputs, kind)


_OPTIMIZERS = ("adam_update", "sgd_update", "rmsprop_update")


def _find_units(schedule: Schedule, options: Mapping[str, Any]) -> list[_Unit]:
    graph, shapes = schedule.graph, schedule.spec.shapes
    users = graph.users()
    graph_outputs = {n.id for n in graph.outputs}
    minimum = int(options["min_elements"])
    taken: set[int] = set()
    units: list[_Unit] = []

    def fits(nodes: list[Node]) -> bool:
        return all(codegen.supported(n) for n in nodes) and math.prod(shapes[nodes[-1].id]) >= minimum

    if options["fuse"]:
        found = [
            *_slice_sums(schedule, users, graph_outputs),
            *_concats(schedule, users, graph_outputs),
            *_softmax_units(schedule, users, graph_outputs),
            *_norm_backward_adds(schedule, users, graph_outputs),
            *_scaled_matmuls(schedule, users, graph_outputs),
        ]
        for unit in found:
            if any(n.id in taken for n in unit.nodes):
                continue
            units.append(unit)
            taken.update(n.id for n in unit.nodes)
        for group in find_fusion_groups(graph):
            members = [n for n in group.nodes if n is not group.anchor and n.id not in taken]
            if members and fits(members):
                units.append(_unit(members, users, graph_outputs, "elementwise"))
                taken.update(n.id for n in members)
    for n in graph.nodes:
        if n.id in taken or n.op in LEAF_OPS:
            continue
        if get_op(n.op).has(ELEMENTWISE) and fits([n]):
            units.append(_unit([n], users, graph_outputs, "elementwise"))
            taken.add(n.id)
    sets: dict[tuple, list[Node]] = {}
    for n in graph.nodes:
        # AMSGrad's max_exp_avg_sq has no numba kernel: the numpy kernel computes that set (in one call)
        if n.op in _OPTIMIZERS and n.dtype in ("float32", "float64") and not n.attrs.get("amsgrad"):
            attrs = tuple(sorted((k, v) for k, v in n.attrs.items() if k != "output"))
            sets.setdefault((n.op, tuple(i.id for i in n.inputs), attrs), []).append(n)
    for nodes in sets.values():
        units.append(_unit(nodes, users, graph_outputs, nodes[0].op))
    return [u for u in units if u.outputs]


def _slice_sums(schedule: Schedule, users: Mapping[int, list[Node]], graph_outputs: set[int]) -> list[_Unit]:
    """Trees of ``add`` over ``slice_backward`` nodes of disjoint slices of one shape (the gradient of a
    tensor split into parts, such as attention's q, k, v): one unit each, written as one assignment per
    part into one array instead of a zero-filled array per part and an add per pair."""
    shapes, attrs = schedule.spec.shapes, schedule.spec.attrs
    taken: set[int] = set()
    found = []
    for root in reversed(schedule.graph.nodes):
        if root.op != "add" or root.id in taken or root.dtype not in ("float32", "float64"):
            continue
        shape, nodes, leaves, stack = shapes[root.id], [], [], [root]
        while stack:
            n = stack.pop()
            nodes.append(n)
            for i in n.inputs:
                inner = users[i.id] == [n] and i.id not in graph_outputs and shapes[i.id] == shape
                inner = inner and i.dtype == root.dtype
                if inner and i.op == "add":
                    stack.append(i)
                elif inner and i.op == "slice_backward":
                    nodes.append(i)
                    leaves.append(i)
                else:
                    nodes = []
                    break
            if not nodes:
                break
        if len(leaves) < 2 or _cover(shape, leaves, attrs).max() > 1:
            continue  # overlapping parts would be summed in another order than the adds'
        order = {n.id: k for k, n in enumerate(schedule.graph.nodes)}
        nodes.sort(key=lambda n: order[n.id])
        taken.update(n.id for n in nodes)
        found.append(_unit(nodes, users, graph_outputs, "slice_sum"))
    return found


def _concats(schedule: Schedule, users: Mapping[int, list[Node]], graph_outputs: set[int]) -> list[_Unit]:
    """``concat`` nodes with parts that are reshapes read only there (the gradient of attention's q, k,
    v split: (B, T, H, hs) transposed views -> (B, T, d) each, then (B, T, 3d)): one unit each, which
    copies each reshape's input straight into its part of the result, not into a reshaped copy first."""
    found = []
    for n in schedule.graph.nodes:
        if n.op != "concat" or n.dtype not in ("float32", "float64"):
            continue
        parts = [
            i for i in n.inputs if i.op == "reshape" and users[i.id] == [n] and i.id not in graph_outputs
        ]
        if parts:
            found.append(_unit([*dict.fromkeys(parts), n], users, graph_outputs, "concat"))
    return found


def _bias_suffix(shape: tuple[int, ...], bias: tuple[int, ...]) -> bool:
    """``bias`` (leading 1s dropped) is a trailing part of ``shape``, last axis included: it broadcasts
    over the leading axes only, so row ``r`` of ``shape`` reads row ``r % rows`` of ``bias``."""
    bias = tuple(bias)
    while bias and bias[0] == 1:
        bias = bias[1:]
    return bool(shape) and len(bias) <= len(shape) and tuple(shape[len(shape) - len(bias) :]) == bias


def _softmax_units(
    schedule: Schedule, users: Mapping[int, list[Node]], graph_outputs: set[int]
) -> list[_Unit]:
    """Softmax over the last axis, with the additive bias before it and its gradient, as row kernels:

    - ``softmax(x + bias)`` (attention's additive mask; ``bias`` broadcast over leading axes), the sum
      read only by the softmax: one pass instead of an add and a softmax (kind ``softmax_bias``);
    - ``y * (g - sum(g * y, -1, keepdims))`` (softmax's gradient rule), each inner value read only by
      the next: one pass over each row instead of a mul, a row sum and a sub-mul (``softmax_backward``).
    """
    shapes, attrs = schedule.spec.shapes, schedule.spec.attrs
    floats = ("float32", "float64")

    def inner(n: Node) -> bool:
        return n.id not in graph_outputs and len(users[n.id]) == 1

    found = []
    for n in schedule.graph.nodes:
        if n.dtype not in floats:
            continue
        shape = tuple(shapes[n.id])
        if n.op == "softmax" and shape and int(attrs[n.id]["axis"]) == len(shape) - 1:
            add = n.inputs[0]
            if add.op != "add" or not inner(add) or any(i.dtype != n.dtype for i in add.inputs):
                continue
            a, b = add.inputs
            if tuple(shapes[a.id]) != shape:
                a, b = b, a
            if tuple(shapes[a.id]) == shape and _bias_suffix(shape, tuple(shapes[b.id])) and a is not b:
                found.append(_unit([add, n], users, graph_outputs, "softmax_bias"))
        elif n.op == "mul" and len(shape) >= 1:
            for y, d in (n.inputs, n.inputs[::-1]):
                if d.op != "sub" or not inner(d) or tuple(shapes[y.id]) != shape:
                    continue
                g, total = d.inputs
                if total.op != "sum" or not inner(total) or tuple(shapes[g.id]) != shape:
                    continue
                axes = tuple(sorted(a % len(shape) for a in attrs[total.id]["axes"]))
                if axes != (len(shape) - 1,) or not attrs[total.id]["keepdims"]:
                    continue
                prod = total.inputs[0]
                if prod.op != "mul" or not inner(prod) or {i.id for i in prod.inputs} != {g.id, y.id}:
                    continue
                if g is y or any(v.dtype != n.dtype for v in (g, y, d, total, prod)):
                    continue
                found.append(_unit([prod, total, d, n], users, graph_outputs, "softmax_backward"))
                break
    return found


def _norm_backward_adds(
    schedule: Schedule, users: Mapping[int, list[Node]], graph_outputs: set[int]
) -> list[_Unit]:
    """``r + layer_norm_backward(g, x[, w])`` with the backward read only there (the residual stream's
    gradient of pre-norm blocks): one row kernel adding ``r`` as it stores dx (``norm_backward_add``)."""
    shapes = schedule.spec.shapes
    found = []
    for n in schedule.graph.nodes:
        if n.op != "add" or n.dtype not in ("float32", "float64"):
            continue
        shape = tuple(shapes[n.id])
        for lnb, res in (n.inputs, n.inputs[::-1]):
            if (
                lnb.op == "layer_norm_backward"
                and lnb is not res
                and users[lnb.id] == [n]
                and lnb.id not in graph_outputs
                and lnb.dtype == n.dtype == res.dtype
                and tuple(shapes[lnb.id]) == tuple(shapes[res.id]) == shape
                and all(i.dtype == n.dtype for i in lnb.inputs)
            ):
                found.append(_unit([lnb, n], users, graph_outputs, "norm_backward_add"))
                break
    return found


def _norm_backward_add_kernel(unit: _Unit, schedule: Schedule) -> Any:
    """A :func:`_norm_backward_adds` unit: layer_norm's input gradient plus the residual, rows in parallel."""
    from . import kernels

    lnb, add = unit.nodes
    shapes, attrs = schedule.spec.shapes, schedule.spec.attrs[lnb.id]
    shape, dtype = tuple(shapes[add.id]), np.dtype(add.dtype)
    rows = _rows_of(shape, len(attrs["normalized_shape"]))
    eps, has_w = float(attrs["eps"]), bool(attrs["has_weight"])
    position = {n.id: k for k, n in enumerate(unit.inputs)}
    res = add.inputs[1] if add.inputs[0] is lnb else add.inputs[0]
    g_at, x_at, res_at = position[lnb.inputs[0].id], position[lnb.inputs[1].id], position[res.id]
    w_at = position[lnb.inputs[2].id] if has_w else None
    first_out: list[np.ndarray | None] = [None]

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        out = first_out[0] if first_out[0] is not None else np.empty(shape, dtype)
        w = arrays[w_at].reshape(-1) if w_at is not None else np.empty(0, dtype)
        g, x, r = (np.ascontiguousarray(arrays[k]).reshape(rows) for k in (g_at, x_at, res_at))
        kernels.layer_norm_backward_add_rows(g, x, w, has_w, eps, r, out.reshape(rows))
        return [out]

    run.first_out = first_out  # type: ignore[attr-defined]
    return run


def _scaled_matmuls(
    schedule: Schedule, users: Mapping[int, list[Node]], graph_outputs: set[int]
) -> list[_Unit]:
    """``matmul(a, b) * c`` with ``c`` a one-element float constant and the product read only there
    (attention's query gradient times 1/sqrt(head_size)): one GEMM with alpha ``c`` (``scaled_matmul``)."""
    found = []
    for n in schedule.graph.nodes:
        if n.op != "mul" or n.dtype not in ("float32", "float64"):
            continue
        for mm, c in (n.inputs, n.inputs[::-1]):
            if (
                mm.op == "matmul"
                and _scalar_constant(c) is not None
                and c.dtype == n.dtype == mm.dtype
                and users[mm.id] == [n]
                and mm.id not in graph_outputs
                and tuple(schedule.spec.shapes[mm.id]) == tuple(schedule.spec.shapes[n.id])
            ):
                found.append(_unit([mm, n], users, graph_outputs, "scaled_matmul"))
                break
    return found


def _scaled_matmul_kernel(unit: _Unit, schedule: Schedule) -> Any:
    """A :func:`_scaled_matmuls` unit: :func:`asg.core.blas.matmul` with ``alpha``."""
    from ... import blas

    mm, mul = unit.nodes
    c = next(i for i in mul.inputs if i is not mm)
    alpha = _scalar_constant(c)
    position = {n.id: k for k, n in enumerate(unit.inputs)}
    a_at, b_at = position[mm.inputs[0].id], position[mm.inputs[1].id]
    first_out: list[np.ndarray | None] = [None]

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        return [blas.matmul(arrays[a_at], arrays[b_at], first_out[0], alpha=alpha)]

    run.first_out = first_out  # type: ignore[attr-defined]
    return run


def _cover(shape: tuple[int, ...], leaves: Sequence[Node], attrs: Mapping[int, Any]) -> np.ndarray:
    """How many of the ``slice_backward`` leaves write each element (built once per plan)."""
    cover = np.zeros(shape, np.uint8)
    for leaf in leaves:
        cover[tuple(slice(*a) for a in attrs[leaf.id]["index"])] += 1
    return cover


# ============================================================================ kernels of units
def _slice_sum_kernel(unit: _Unit, schedule: Schedule) -> Any:
    """The parts of a :func:`_slice_sums` unit assigned into one array (zeros where none lands)."""
    position = {n.id: k for k, n in enumerate(unit.inputs)}
    leaves = [n for n in unit.nodes if n.op == "slice_backward"]
    attrs = schedule.spec.attrs
    parts = [(position[n.inputs[0].id], tuple(slice(*a) for a in attrs[n.id]["index"])) for n in leaves]
    shape, dtype = schedule.spec.shapes[unit.outputs[0].id], unit.outputs[0].dtype
    covered = bool(_cover(shape, leaves, attrs).min())  # every element written: no zero fill
    first_out: list[np.ndarray | None] = [None]

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        out = first_out[0] if first_out[0] is not None else np.empty(shape, dtype)
        if not covered:
            out.fill(0)
        for k, index in parts:
            out[index] = arrays[k]
        return [out]

    run.first_out = first_out  # type: ignore[attr-defined]
    return run


def _concat_kernel(unit: _Unit, schedule: Schedule) -> Any:
    """A :func:`_concats` unit: each part copied into its slice of the result, a reshaped part from its
    reshape's input (through a view of the slice in the input's shape, where the strides allow one)."""
    concat, shapes = unit.nodes[-1], schedule.spec.shapes
    axis, position = int(schedule.spec.attrs[concat.id]["axis"]), {n.id: k for k, n in enumerate(unit.inputs)}
    shape, dtype = shapes[concat.id], concat.dtype
    parts, start = [], 0
    for part in concat.inputs:
        source = part.inputs[0] if part.id not in position else part
        index = tuple(
            slice(start, start + shapes[part.id][axis]) if a == axis else slice(None)
            for a in range(len(shape))
        )
        parts.append((position[source.id], index, tuple(shapes[source.id])))
        start += shapes[part.id][axis]
    first_out: list[np.ndarray | None] = [None]

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        out = first_out[0] if first_out[0] is not None else np.empty(shape, dtype)
        for k, index, source_shape in parts:
            target = out[index].view()
            try:
                target.shape = source_shape  # a view of the part in the source's shape
            except AttributeError:
                target = out[index]
                np.copyto(target, arrays[k].reshape(target.shape))
                continue
            np.copyto(target, arrays[k])
        return [out]

    run.first_out = first_out  # type: ignore[attr-defined]
    return run


def _softmax_kernel(unit: _Unit, schedule: Schedule) -> Any:
    """A :func:`_softmax_units` unit: ``softmax(x + bias)`` or softmax's gradient, rows in parallel."""
    from . import kernels

    shapes = schedule.spec.shapes
    last = unit.nodes[-1]
    shape, dtype = tuple(shapes[last.id]), np.dtype(last.dtype)
    rows = _rows_of(shape, 1)
    position = {n.id: k for k, n in enumerate(unit.inputs)}
    if unit.kind == "softmax_bias":
        a, b = unit.nodes[0].inputs
        if tuple(shapes[a.id]) != shape:
            a, b = b, a
        order = (position[a.id], position[b.id])
        bias_rows = (math.prod(shapes[b.id]) // shape[-1], shape[-1])
        kernel = kernels.softmax_bias_rows
    else:
        d = unit.nodes[2]
        y = next(i for i in last.inputs if i is not d)
        order = (position[d.inputs[0].id], position[y.id])  # (g, y)
        bias_rows = rows
        kernel = kernels.softmax_backward_rows
    first_out: list[np.ndarray | None] = [None]

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        out = first_out[0] if first_out[0] is not None else np.empty(shape, dtype)
        x, other = (np.ascontiguousarray(arrays[k]) for k in order)
        kernel(x.reshape(rows), other.reshape(bias_rows), out.reshape(rows))
        return [out]

    run.first_out = first_out  # type: ignore[attr-defined]
    return run


def _scalar_constant(node: Node) -> float | None:
    """The value of a one-element finite float constant (a literal in the generated loop), else None."""
    if node.op != "constant" or node.dtype not in ("float32", "float64") or node.data is None:
        return None
    data = np.asarray(node.data)
    if data.size != 1 or not np.isfinite(data).all():
        return None
    return float(data.reshape(-1)[0])


def _elementwise_kernel(unit: _Unit, schedule: Schedule, options: Mapping[str, Any]) -> Any | None:
    shapes = schedule.spec.shapes
    space = shapes[unit.outputs[0].id]
    lay = codegen.layout(space, [shapes[i.id] for i in unit.inputs])
    if lay is None:
        return None
    parallel = math.prod(space) >= int(options["parallel_min_elements"])
    literals = {k: _scalar_constant(n) for k, n in enumerate(unit.inputs) if _scalar_constant(n) is not None}
    source = codegen.kernel_source("kernel", unit.nodes, unit.inputs, unit.outputs, lay, parallel, literals)
    fn = load_source(source, "kernel")
    in_shapes, loop_shape = lay.input_shapes, lay.shape
    dtypes = [np.dtype(o.dtype) for o in unit.outputs]

    # Where each output is written, when given: a planned buffer for the first output, a buffer of its
    # own for each other one (:func:`_plan_unit_buffers`); None: a fresh array per call.
    first_out: list[np.ndarray | None] = [None] * len(dtypes)

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        args = [np.ascontiguousarray(a).reshape(s) for a, s in zip(arrays, in_shapes, strict=True)]
        outs = [o if o is not None else np.empty(space, d) for o, d in zip(first_out, dtypes, strict=True)]
        fn(*args, *[o.reshape(loop_shape) for o in outs])
        return outs

    run.source = source  # type: ignore[attr-defined]
    run.first_out = first_out  # type: ignore[attr-defined]
    return run


def _optimizer_kernel(unit: _Unit, schedule: Schedule) -> Any:
    """One numba call computing every output of an optimizer set; ``out=`` (aligned with the unit's
    outputs) names arrays to write them into, such as the state's own (the numpy plan's in-place updates)."""
    from . import kernels

    first = unit.nodes[0]
    attrs = schedule.spec.attrs[first.id]
    wanted = [n.attrs["output"] for n in unit.outputs]
    if unit.kind == "adam_update":
        names: tuple[str, ...] = ("param", "exp_avg", "exp_avg_sq")
        written = names
        beta1, beta2, eps = float(attrs["beta1"]), float(attrs["beta2"]), float(attrs["eps"])
        wd, decoupled, maximize = (
            float(attrs["weight_decay"]),
            bool(attrs["decoupled_weight_decay"]),
            bool(attrs["maximize"]),
        )

        def compute(outs: list[np.ndarray], p: Any, g: Any, m: Any, v: Any, step: Any, lr: Any) -> None:
            t, lr_ = float(step), float(lr)
            c = np.array(
                [
                    1 - beta1,
                    beta2,
                    1 - beta2,
                    lr_ / (1 - beta1**t),
                    math.sqrt(1 - beta2**t),
                    eps,
                    1 - lr_ * wd,
                    wd,
                    1,
                ],
                p.dtype,
            )
            kernels.adam(*_flat(p, g, m, v), c, decoupled, maximize, *outs)

    elif unit.kind == "sgd_update":
        momentum = float(attrs["momentum"])
        names = ("param", "momentum_buffer")
        written = names if momentum else names[:1]
        dampening, nesterov = float(attrs["dampening"]), bool(attrs["nesterov"])
        wd, maximize = float(attrs["weight_decay"]), bool(attrs["maximize"])

        def compute(outs: list[np.ndarray], *arrays: Any) -> None:
            p, g, lr = arrays[0], arrays[1], float(arrays[-1])
            buf, first = (arrays[2], float(arrays[3]) <= 1) if momentum else (p, True)
            c = np.array([lr, momentum, 1 - dampening, wd], p.dtype)
            kernels.sgd(*_flat(p, g, buf), c, first, nesterov, maximize, *outs)

    else:  # rmsprop_update
        alpha, eps = float(attrs["alpha"]), float(attrs["eps"])
        momentum, centered = float(attrs["momentum"]), bool(attrs["centered"])
        wd, maximize = float(attrs["weight_decay"]), bool(attrs["maximize"])
        names = ("param", "square_avg", "grad_avg", "momentum_buffer")
        written = tuple(
            n for n in names if (n != "grad_avg" or centered) and (n != "momentum_buffer" or momentum)
        )

        def compute(outs: list[np.ndarray], *arrays: Any) -> None:
            p, g, sq, lr = arrays[0], arrays[1], arrays[2], float(arrays[-1])
            grad_avg = arrays[3] if centered else p
            buf = arrays[3 + centered] if momentum else p
            # as the numpy kernel's Python-float constants, rounded to p's dtype
            c = np.array([alpha, 1 - alpha, 1 - (1 - alpha), eps, lr, momentum, wd], p.dtype)
            kernels.rmsprop(*_flat(p, g, sq, grad_avg, buf), c, centered, momentum != 0, maximize, *outs)

    index = [names.index(w) for w in wanted]

    def run(*arrays: np.ndarray, out: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        p = arrays[0]
        given: list[Any] = [None] * len(names)
        for i, target in zip(index, out or (), strict=False):
            given[i] = target
        # each output into its target when that is contiguous (the kernel writes flat), else a fresh array;
        # one element for an output the kernel does not write (SGD without momentum ...)
        outs = [
            t
            if t is not None and t.flags.c_contiguous
            else np.empty_like(p)
            if name in written
            else np.empty(1, p.dtype)
            for t, name in zip(given, names, strict=True)
        ]
        compute([o.reshape(-1) for o in outs], *arrays)
        for t, o in zip(given, outs, strict=True):
            if t is not None and t is not o:
                np.copyto(t, o)
        return [given[i] if given[i] is not None else outs[i] for i in index]

    run.output_names = tuple(wanted)  # type: ignore[attr-defined]
    return run


def _flat(*arrays: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(a).reshape(-1) for a in arrays]


def _unit_kernel(unit: _Unit, schedule: Schedule, options: Mapping[str, Any]) -> Any | None:
    if unit.kind == "elementwise":
        return _elementwise_kernel(unit, schedule, options)
    if unit.kind == "slice_sum":
        return _slice_sum_kernel(unit, schedule)
    if unit.kind == "concat":
        return _concat_kernel(unit, schedule)
    if unit.kind in ("softmax_bias", "softmax_backward"):
        return _softmax_kernel(unit, schedule)
    if unit.kind == "norm_backward_add":
        return _norm_backward_add_kernel(unit, schedule)
    if unit.kind == "scaled_matmul":
        return _scaled_matmul_kernel(unit, schedule)
    return _optimizer_kernel(unit, schedule)


# ============================================================================ the schedule, rewritten
def fuse_schedule(
    schedule: Schedule, kernels: Sequence[Any], options: Mapping[str, Any]
) -> tuple[Schedule, list[Any]]:
    """The schedule with each unit (fused group, optimizer set) as one kernel, and its kernels.

    Each unit's first output becomes a node reading the unit's inputs (its kernel computes every
    output of the unit); its other outputs become nodes reading that one. Nodes downstream are
    copied to read the new nodes; leaves and everything else stay as they are. The buffer plan is
    made again for the new steps.
    """
    graph, spec = schedule.graph, schedule.spec
    kernel_of = {step.node.id: k for step, k in zip(schedule.steps, kernels, strict=True)}
    units, built = [], []
    for unit in _find_units(schedule, options):
        compute = _unit_kernel(unit, schedule, options)
        if compute is not None:
            units.append(unit)
            built.append(compute)
    if not units:
        return schedule, list(kernels)
    groups = [
        FusionGroup(i, u.kind, tuple(u.nodes), tuple(u.inputs), tuple(u.outputs), None, graph)
        for i, u in enumerate(units)
    ]
    mapping: dict[int, Node] = {}
    shapes, attrs = dict(spec.shapes), dict(spec.attrs)
    flags: dict[int, Any] = {}
    pooled: dict[int, list[np.ndarray | None]] = {}  # head node id -> its kernel's output buffer slots
    # (slots, index, node) of the other outputs of elementwise units: each gets a buffer of its own
    tails: list[tuple[list[np.ndarray | None], int, Node]] = []
    final = {n.id for n in graph.outputs}
    for step in fused_steps(graph, groups):
        if isinstance(step, FusionGroup):
            unit, compute = units[step.index], built[step.index]
            fns = head_and_tails(compute, len(unit.outputs))
            label = (
                f"{unit.kind} kernel over {len(unit.nodes)} node{'s' * (len(unit.nodes) > 1)}: "
                + ", ".join(n.op for n in unit.nodes)
            )
            head: Node | None = None
            for k, (out, fn) in enumerate(zip(unit.outputs, fns, strict=True)):
                ins = [mapping.get(i.id, i) for i in unit.inputs] if head is None else [head]
                new = Node(
                    out.op, ins, out.attrs, out.shape, out.dtype, out.name, None, {**out.meta, "jit": label}
                )
                if head is None and hasattr(compute, "first_out"):
                    pooled[new.id] = compute.first_out
                elif k and unit.kind == "elementwise" and out.id not in final:
                    tails.append((compute.first_out, k, new))
                head = head or new
                mapping[out.id] = new
                shapes[new.id], attrs[new.id] = spec.shapes[out.id], spec.attrs[out.id]
                flags[new.id] = Kernel(fn)
            continue
        ins = [mapping.get(i.id, i) for i in step.inputs]
        new = step if all(a is b for a, b in zip(ins, step.inputs, strict=True)) else copy_node(step, ins)
        mapping[step.id] = new
        shapes[new.id], attrs[new.id] = spec.shapes[step.id], spec.attrs[step.id]
        flags[new.id] = kernel_of[step.id]
    outputs = [mapping.get(n.id, n) for n in graph.outputs]
    new_graph = Graph(outputs, graph.inputs)
    updates = [(param, mapping.get(value.id, value)) for param, value in schedule.updates]
    new_spec = Specialization(spec.bindings, shapes, attrs)
    planning = bool(options.get("memory_planning", True))
    new_schedule = build_schedule(
        new_graph, new_spec, len(schedule.outputs), updates, flags, memory_planning=planning
    )
    if planning and pooled:
        _plan_unit_buffers(new_graph, new_spec, flags, pooled)
    if planning:
        # The head writes every output at its step, but a tail's step (where a planned lifetime would
        # start) comes later, at its first reader: a buffer shared with values live in between could be
        # overwritten, so each tail gets one of its own. These values (GELU's derivative, kept for the
        # backward) are alive across most of a training step anyway; fresh arrays cost page faults.
        for slots, k, node in tails:
            slots[k] = np.empty(new_spec.shapes[node.id], node.dtype)
            node.meta["jit_own_buffer"] = True
    return new_schedule, [flags[s.node.id] for s in new_schedule.steps]


def _plan_unit_buffers(
    graph: Graph,
    spec: Specialization,
    flags: Mapping[int, Any],
    pooled: Mapping[int, list[np.ndarray | None]],
) -> None:
    """Give the fused kernels' first outputs buffers reused between them, as numpy's planner does.

    The kernels allocate otherwise: a fresh 2 MiB array per kernel per step costs page faults (15%
    of a GPT-tiny step). These buffers are planned on their own (every other value keeps numpy's
    plan), with the lifetimes of the whole schedule; graph outputs and update values never share one.
    """
    only_units = {
        node_id: Kernel(k.fn, out_arg=True)
        if node_id in pooled
        else dataclasses.replace(k, out_arg=False, in_place=False)
        for node_id, k in flags.items()
    }
    plan = plan_memory(graph, spec, (), only_units)
    buffers = [np.empty(b.shape, b.dtype) for b in plan.buffers]
    for node_id, b in plan.buffer_of.items():
        pooled[node_id][0] = buffers[b]
    for node in graph.nodes:
        if node.id in plan.buffer_of:
            node.meta["jit_buffer"] = plan.buffer_of[node.id]  # which of these buffers it writes


class NumpyJitBackend(NumpyBackend):
    """``"numpy-jit"``: the numpy executor with fused numba kernels (see :mod:`asg.core.backends.jit`)."""

    options: ClassVar[Mapping[str, Any]] = {
        "fuse": True,
        "min_elements": 4096,
        "parallel_min_elements": 1 << 15,
    }

    def __init__(self) -> None:
        inherit_numpy_lowerings()

    def prepare_lowerings(self) -> None:
        """Ops defined since (asg-nn's, a user's) lower as on numpy: :func:`inherit_numpy_lowerings`."""
        inherit_numpy_lowerings()

    def compile(self, schedule: Schedule, kernels: Sequence[Any], options: Mapping[str, Any]) -> NumpyPlan:
        """A :class:`JitPlan` with the fusible runs of ``schedule`` as numba kernels; without numba (or
        ``ASG_JIT=0``) the plain numpy plan."""
        if enabled():
            schedule, kernels = fuse_schedule(schedule, kernels, options)
            return JitPlan(schedule, kernels, options)
        return NumpyPlan(schedule, kernels, options)


class JitPlan(NumpyPlan):
    """A numpy plan whose steps include numba kernels: gives numba the thread count before each run."""

    def __call__(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        apply_num_threads()
        return super().__call__(feeds)

    def run_traced(self, feeds: Sequence[np.ndarray], on_step: Any, update: bool = True) -> list[np.ndarray]:
        """:meth:`NumpyPlan.run_traced <asg.core.backends.numpy_backend.NumpyPlan.run_traced>` with
        numba's thread count set first."""
        apply_num_threads()
        return super().run_traced(feeds, on_step, update)
