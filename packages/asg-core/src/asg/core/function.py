"""``compile``: from output tensors to a callable, with plans cached by input shapes."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import inspection
from .backends import get_backend
from .backends.base import Backend, Capabilities, Plan, build_plan, resolve_options
from .dtypes import is_float
from .errors import ShapeError
from .graph import Graph, Node
from .lowering import check_lowerable
from .passes import Pass, run_passes
from .passes.decompose import decompose
from .passes.narrow import check_supported_dtypes, narrow_index_dtypes
from .shapes import format_shape
from .specialize import bind_inputs, specialize
from .storage import claim_all
from .tensor import Tensor


class Function:
    """A compiled graph: call it with input arrays; parameters are updated in place.

    Plans are built on the first call for each distinct set of input shapes and cached, so a
    smaller last batch just works (it builds one more plan).

    Calls from several threads are safe: they are serialised by a lock held for the whole step (each
    plan owns one set of buffers, and a training step's updates must not interleave), so two threads
    get the results of two sequential calls. Attributes kept for tools (bundles, viewers):
    ``graph`` (the optimised graph), ``num_outputs``, ``inputs``, ``updates``, ``backend_name``,
    ``options``.
    """

    def __init__(
        self,
        outputs: Sequence[Tensor],
        inputs: Sequence[Tensor] | None,
        updates: Mapping[Tensor, Tensor] | Sequence[tuple[Tensor, Tensor]] | None,
        backend: str,
        passes: Sequence[str | Pass] | None,
        memory_planning: bool,
        single: bool,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        update_pairs = _check_updates(updates)
        source = Graph(
            [t.node for t in outputs] + [value.node for _, value in update_pairs],
            None if inputs is None else [_check_input(t) for t in inputs],
        )
        missing = [n.label for n in source.nodes if n.op == "input" and n not in source.inputs]
        if missing:
            raise ValueError(
                f"compile: the outputs depend on inputs not listed in inputs=: {', '.join(missing)}"
            )
        optimized = run_passes(source, passes)
        params = {p.data: p for p in optimized.parameters}
        pairs = [
            (params.get(param.node.data, param.node), new)
            for (param, _), new in zip(update_pairs, optimized.outputs[len(outputs) :], strict=True)
        ]
        self._setup(optimized, len(outputs), pairs, backend, options, single, memory_planning)
        self.source_graph = source

    @classmethod
    def from_graph(
        cls,
        graph: Graph,
        num_outputs: int,
        updates: Sequence[tuple[Node, Node]] = (),
        backend: str = "numpy",
        options: Mapping[str, Any] | None = None,
        single: bool = False,
    ) -> Function:
        """A Function over an already-optimised graph; no pass runs again.

        ``graph.outputs`` are the ``num_outputs`` results followed by the new value of each update;
        ``updates`` pairs each parameter node with its new-value node (``graph.outputs[num_outputs:]``).
        ``single=True`` makes a call return one array instead of a list (as ``compile(tensor)`` does).

        Example:
            >>> import asg.core as ag
            >>> x = ag.input("x", (2,))
            >>> f = ag.compile(x * 2.0)
            >>> g = ag.Function.from_graph(f.graph, f.num_outputs, f.updates, single=True)
            >>> g(np.ones(2, "float32")).tolist()
            [2.0, 2.0]
        """
        pairs = list(updates)
        if [v.id for _, v in pairs] != [n.id for n in graph.outputs[num_outputs:]]:
            raise ValueError(
                "Function.from_graph: graph.outputs must be the num_outputs results followed by the "
                f"update values in updates order; got {len(graph.outputs)} outputs, num_outputs={num_outputs}, "
                f"{len(pairs)} updates"
            )
        for param, _ in pairs:
            if param.op != "parameter":
                raise TypeError(f"Function.from_graph: update targets must be parameter nodes, got {param!r}")
        self = cls.__new__(cls)
        self._setup(graph, num_outputs, pairs, backend, options, single)
        self.source_graph = graph
        return self

    def _setup(
        self,
        graph: Graph,
        num_outputs: int,
        updates: list[tuple[Node, Node]],
        backend: str,
        options: Mapping[str, Any] | None,
        single: bool,
        memory_planning: bool | None = None,
    ) -> None:
        self._single = single
        self.num_outputs = num_outputs
        self.graph = graph
        self.inputs: list[Node] = graph.inputs
        self._updates = updates
        self.backend: Backend = get_backend(backend)
        self.backend_name = backend
        opts = dict(options or {})
        if memory_planning is not None and not memory_planning:
            opts.setdefault("memory_planning", False)
        self.options: dict[str, Any] = resolve_options(backend, self.backend, opts)
        # What the backend runs: the graph narrowed and checked for its capabilities.
        self._run_graph, self._run_updates = _for_backend(
            graph, num_outputs, updates, backend, self.backend, self.options["decompose"]
        )
        self._run_inputs = self._run_graph.inputs
        self._feed_dtypes = [np.dtype(n.dtype) for n in self._run_inputs]
        self._check_numerics = bool(self.options["check_numerics"])
        self._plans: dict[tuple, Plan] = {}
        self._lock = threading.Lock()

    @property
    def updates(self) -> list[tuple[Node, Node]]:
        """(parameter node, new-value node) pairs of the optimised graph, in ``graph.outputs`` order."""
        return list(self._updates)

    @property
    def single(self) -> bool:
        """True when a call returns one array (compiled from one tensor), False for a list."""
        return self._single

    if TYPE_CHECKING:  # attached by asg.core.bundle, which sits above this module

        def save(self, path: str | os.PathLike[str]) -> None:
            """Write the graph (JSON) and every parameter and state value (safetensors) to one file, atomically."""

        def state_dict(self) -> dict[str, np.ndarray]:
            """Copies of the current parameter and state values, keyed by name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dtypes = self._feed_dtypes
        if (
            kwargs
            or len(args) != len(dtypes)
            or any(type(a) is not np.ndarray or a.dtype is not d for a, d in zip(args, dtypes, strict=False))
        ):
            args = self._feeds(args, kwargs)  # converted and checked; else: arrays of the inputs' dtypes
        with self._lock:
            plan = self._plan(args)
            if self._check_numerics:
                results = inspection.check_numerics(plan, args)
            else:
                results = plan(args)
        return results[0] if self._single else results

    def _plan(self, arrays: Sequence[np.ndarray]) -> Plan:
        # The feeds have the inputs' dtypes (_feeds converts them), so their shapes key the plan.
        key = tuple(a.shape for a in arrays)
        plan = self._plans.get(key)
        if plan is None:
            graph = self._run_graph
            spec = specialize(graph, bind_inputs(graph, arrays))
            plan = build_plan(
                self.backend_name,
                self.backend,
                graph,
                spec,
                self.num_outputs,
                self._run_updates,
                self.options,
            )
            self._plans[key] = plan
        return plan

    def plan_for(self, *args: Any, **kwargs: Any) -> Plan:
        """The plan that a call with these arguments runs (building it if needed).

        ``plan.schedule`` is its :class:`~asg.core.schedule.Schedule`; numpy plans show their
        generated code as ``plan.source``.
        """
        arrays = self._feeds(args, kwargs)
        with self._lock:
            return self._plan(arrays)

    def to(self, backend: str, options: Mapping[str, Any] | None = None) -> Function:
        """The same function on another backend; the parameter values move to that backend's storage.

        ``options`` default to this function's core options (``memory_planning``, ``check_numerics``).
        Calling either function afterwards works: each moves the values to its backend before a step.

        Example:
            >>> import asg.core as ag
            >>> w = ag.parameter(np.ones(2, "float32"), name="w")
            >>> f = ag.compile(w * 2.0)
            >>> g = f.to("numpy")
            >>> g().tolist(), g.backend_name
            ([2.0, 2.0], 'numpy')
        """
        if options is None:
            options = {k: self.options[k] for k in ("memory_planning", "check_numerics")}
        moved = Function.from_graph(
            self.graph, self.num_outputs, self._updates, backend, options, self._single
        )
        claim_all((n.data for n in self.graph.parameters), moved.backend.storage)
        return moved

    def profile(self, *args: Any, update: bool = False, **kwargs: Any) -> inspection.Profile:
        """Run one step and time every node: op, name, scope, seconds and share, plus memory figures.

        ``print(f.profile(x))`` shows a table. ``update=True`` also applies the parameter updates.

        Example:
            >>> import asg.core as ag
            >>> x = ag.input("x", (64, 64))
            >>> f = ag.compile(ag.tanh(x @ x).sum())
            >>> p = f.profile(np.ones((64, 64), "float32"))
            >>> [t.op for t in p.nodes], round(sum(t.share for t in p.nodes), 6)
            (['matmul', 'tanh', 'sum'], 1.0)
        """
        arrays = self._feeds(args, kwargs)
        with self._lock:
            return inspection.profile(self._plan(arrays), arrays, self.backend_name, update=update)

    def capture(
        self, names: Sequence[str], *args: Any, update: bool = False, **kwargs: Any
    ) -> dict[str, np.ndarray]:
        """Run one step and return the values of the named nodes (user or printed names).

        Example:
            >>> import asg.core as ag
            >>> x = ag.input("x", (2,))
            >>> h = (x * 3.0).named("h")
            >>> f = ag.compile((h + 1.0).sum())
            >>> f.capture(["h"], np.ones(2, "float32"))["h"].tolist()
            [3.0, 3.0]
        """
        arrays = self._feeds(args, kwargs)
        with self._lock:
            return inspection.capture(self._plan(arrays), arrays, list(names), update=update)

    def check_numerics(self, *args: Any, update: bool = True, **kwargs: Any) -> Any:
        """Run one step and raise :class:`~asg.core.errors.NonFiniteError` at the first node producing
        a NaN or infinity, naming it, its op, scope and source line (also its attributes).

        A step that passes applies the parameter updates unless ``update=False``; a failing step never
        does. ``compile(..., options={"check_numerics": True})`` checks every call this way.

        Example:
            >>> import asg.core as ag
            >>> x = ag.input("x", (2,))
            >>> f = ag.compile(ag.log(x).named("logx") * 2.0)
            >>> f.check_numerics(np.array([1.0, -1.0], "float32"))
            Traceback (most recent call last):
            ...
            asg.core.errors.NonFiniteError: check_numerics: the first non-finite value is made by logx:f32[2] = log x
            ...
        """
        arrays = self._feeds(args, kwargs)
        with self._lock:
            results = inspection.check_numerics(self._plan(arrays), arrays, update=update)
        return results[0] if self._single else results

    @property
    def num_plans(self) -> int:
        """How many input-shape specialisations have been compiled."""
        return len(self._plans)

    def _feeds(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[np.ndarray]:
        names = [n.name for n in self._run_inputs]
        if len(args) > len(names):
            hint = (
                " (the outputs depend on no input; list the inputs to accept with compile(..., inputs=[...]))"
                if not names
                else ""
            )
            raise TypeError(
                f"expected at most {len(names)} inputs ({', '.join(map(str, names))}), got {len(args)}{hint}"
            )
        values: list[Any] = list(args) + [None] * (len(names) - len(args))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"unknown input {key!r}; inputs are {', '.join(map(str, names))}")
            i = names.index(key)
            if i < len(args):
                raise TypeError(f"input {key!r} given twice")
            values[i] = value
        arrays = []
        for node, value in zip(self._run_inputs, values, strict=True):
            if value is None:
                raise TypeError(f"missing input {node.name!r} {format_shape(node.shape)} {node.dtype}")
            arrays.append(_coerce(node, value))
        return arrays


def _coerce(node: Node, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.name == node.dtype:
        return array
    kind = array.dtype.kind
    if is_float(node.dtype) and kind in "fiub":
        return array.astype(node.dtype)
    if node.dtype in ("int32", "int64") and kind in "iub":
        info = np.iinfo(node.dtype)
        if array.size and kind != "b" and (array.min() < info.min or array.max() > info.max):
            raise ShapeError(
                f"input {node.name!r} is {node.dtype}, but the array holds values outside its range "
                f"({array.min()}..{array.max()})"
            )
        return array.astype(node.dtype)
    if node.dtype == "bool" and kind == "b":
        return array
    raise ShapeError(f"input {node.name!r} expects {node.dtype}, got an array of {array.dtype}")


def _check_input(t: Tensor) -> Node:
    if not isinstance(t, Tensor) or t.node.op != "input":
        raise TypeError(f"compile: inputs= must list tensors made by ag.input(), got {t!r}")
    return t.node


def _check_updates(
    updates: Mapping[Tensor, Tensor] | Sequence[tuple[Tensor, Tensor]] | None,
) -> list[tuple[Tensor, Tensor]]:
    if updates is None:
        return []
    if isinstance(updates, Mapping):
        items = list(updates.items())
    else:
        items = []
        for item in updates:
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise TypeError(
                    "compile: updates= takes {parameter: new_value} or a list of (parameter, new_value) "
                    f"pairs, got the item {item!r}"
                )
            items.append((item[0], item[1]))
    pairs = []
    seen: set[int] = set()
    for param, value in items:
        if not isinstance(param, Tensor) or param.node.op != "parameter":
            raise TypeError(
                f"compile: updates= keys must be parameters (ag.parameter/ag.state), got {param!r}"
            )
        if not isinstance(value, Tensor):
            raise TypeError(
                f"compile: the update of {param.node.label} must be a Tensor, got {type(value).__name__}"
            )
        if value.shape != param.shape or value.dtype != param.dtype:
            raise ShapeError(
                f"compile: update of {param.node.label} {format_shape(param.shape)} {param.dtype} has type "
                f"{format_shape(value.shape)} {value.dtype}; it must match exactly"
            )
        if param.node.id in seen:
            raise ValueError(f"compile: updates= lists parameter {param.node.label} twice")
        seen.add(param.node.id)
        pairs.append((param, value))
    return pairs


def _for_backend(
    graph: Graph,
    num_outputs: int,
    updates: list[tuple[Node, Node]],
    name: str,
    backend: Backend,
    decompose_ops: Collection[str] | None = None,
) -> tuple[Graph, list[tuple[Node, Node]]]:
    """The graph as ``backend`` runs it: fused ops it prefers as formulas decomposed, index dtypes
    narrowed where it asks, dtypes and kernels checked."""
    caps = getattr(backend, "capabilities", None) or Capabilities()
    rewrites: list[Callable[[Graph], Graph]] = [
        lambda g: decompose(g, caps.decompose if decompose_ops is None else decompose_ops)
    ]
    if caps.narrow_index:
        rewrites.append(narrow_index_dtypes)
    for rewrite_graph in rewrites:
        rewritten = rewrite_graph(graph)
        if rewritten is not graph:  # the update pairs follow the rewritten parameters and values
            params = {p.data: p for p in rewritten.parameters}
            updates = [
                (params.get(param.data, param), value)
                for (param, _), value in zip(updates, rewritten.outputs[num_outputs:], strict=True)
            ]
            graph = rewritten
    if not set(n.dtype for n in graph.nodes) <= caps.dtypes:
        check_supported_dtypes(graph, caps.dtypes, name)
    prepare = getattr(backend, "prepare_lowerings", None)
    if prepare is not None:
        prepare()
    check_lowerable(graph, name)
    return graph, updates


def compile(
    outputs: Tensor | Sequence[Tensor],
    inputs: Sequence[Tensor] | None = None,
    updates: Mapping[Tensor, Tensor] | Sequence[tuple[Tensor, Tensor]] | None = None,
    backend: str = "numpy",
    passes: Sequence[str | Pass] | None = None,
    memory_planning: bool = True,
    options: Mapping[str, Any] | None = None,
) -> Function:
    """Compile output tensors (and parameter updates) into a callable.

    Args:
        outputs: a tensor (the call returns one array) or a list (the call returns a list).
        inputs: input tensors in call order; default: every input the graph reads, in creation order.
            Inputs can also be passed by name.
        updates: ``{parameter: new_value}`` or a list of ``(parameter, new_value)`` pairs; after each
            call the parameters hold the new values.
        backend: ``"numpy"`` or an installed backend such as ``"wgpu"``.
        passes: optimisation passes to run (``None``: the default pipeline, ``[]``: none).
        memory_planning: reuse buffers of intermediate values; shorthand for
            ``options={"memory_planning": False}``.
        options: backend options; every backend takes ``memory_planning`` (default True) and
            ``check_numerics`` (default False: when True, every call stops at the first NaN/Inf,
            see :meth:`Function.check_numerics`). An unknown option is an error listing the known ones.

    Example:
        >>> import asg.core as ag
        >>> x = ag.input("x", ("B", 2))
        >>> w = ag.parameter(np.ones((2, 1), "float32"), name="w")
        >>> loss = ((x @ w) ** 2).mean()
        >>> (gw,) = ag.grad(loss, [w])
        >>> step = ag.compile(loss, updates={w: w - 0.1 * gw})
        >>> float(step(np.ones((4, 2), "float32")))
        4.0
        >>> w.numpy().ravel().tolist()
        [0.6000000238418579, 0.6000000238418579]
    """
    single = isinstance(outputs, Tensor)
    outs = [outputs] if single else list(outputs)
    for t in outs:
        if not isinstance(t, Tensor):
            raise TypeError(f"compile: outputs must be Tensors, got {type(t).__name__}")
    return Function(outs, inputs, updates, backend, passes, memory_planning, single, options)
