"""What the viewer opens (graph JSON, a function bundle, a Function, a Graph, tensors) and the run data
it overlays: a profile from :meth:`asg.core.Function.profile`, captured values, the first non-finite node.

Example:
    >>> import numpy as np
    >>> import asg.core as ag
    >>> x = ag.input("x", (2,))
    >>> f = ag.compile((x * 2.0).named("y"))
    >>> g = as_graph(f)
    >>> [n.op for n in g.nodes]
    ['input', 'constant', 'mul']
    >>> run = RunData.collect(f, np.ones(2, "float32"))
    >>> y = f.graph.outputs[0].id
    >>> run.stats[y].max, run.seconds_by_id[y] >= 0
    (2.0, True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import asg.core as ag
from asg.core import Function, Graph, NonFiniteError, Tensor
from asg.core.serialize import graph_from_json


def load_path(path: str | os.PathLike[str]) -> tuple[Graph, Function | None]:
    """The graph in a graph JSON file (parameters need no data) or in a function bundle (``Function.save``).

    Returns the graph and, for a bundle, the loaded :class:`~asg.core.Function` (so it can be profiled).
    """
    where = os.fspath(path)
    if os.path.isdir(where):
        raise FileNotFoundError(
            f"{where!r} is a folder; give a graph JSON file (Graph.to_json) or a function bundle "
            "(Function.save). For a checkpoint of `asg-zoo train`, write its bundle first: "
            f"`asg-zoo export MODEL --weights {where} --bundle model.asg`"
        )
    if not os.path.isfile(where):
        raise FileNotFoundError(f"no such file {where!r}")  # the CLI prefixes "asg-viz: "
    with open(where, "rb") as f:
        head = f.read(1)
    if head in (b"{", b"[", b" ", b"\n", b"\r", b"\t"):
        with open(where, encoding="utf-8") as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"asg-viz: {where!r} is not valid JSON ({err})") from None
        try:
            return graph_from_json(doc, structure_only=True), None
        except ValueError as err:
            raise ValueError(f"asg-viz: {where!r}: {err}") from None
    function = ag.load(where)  # a safetensors bundle; its errors name the file
    return function.graph, function


def as_graph(obj: Any) -> Graph:
    """A :class:`~asg.core.Graph` from a Graph, a Function (its optimised graph), a Tensor or tensors."""
    if isinstance(obj, Graph):
        return obj
    if isinstance(obj, Function):
        return obj.graph
    if isinstance(obj, Tensor):
        return Graph([obj.node])
    if isinstance(obj, Sequence) and obj and all(isinstance(t, Tensor) for t in obj):
        return Graph([t.node for t in obj])
    raise TypeError(
        "asg.viz shows an asg.core Graph, a compiled Function, a Tensor or a list of Tensors, "
        f"not a {type(obj).__name__}; for a file use asg.viz.show(path) or `asg-viz FILE`"
    )


@dataclass(frozen=True)
class Stats:
    """Summary of one value: min/max/mean/std over the finite entries, and counts of NaN and infinities."""

    shape: tuple[int, ...]
    min: float
    max: float
    mean: float
    std: float
    nan: int
    inf: int

    @classmethod
    def of(cls, array: np.ndarray) -> Stats:
        """The statistics of ``array`` (bools counted as 0/1; NaN everywhere if nothing is finite).

        >>> Stats.of(np.array([1.0, 3.0, np.nan])).text()
        'min 1, max 3, mean 2, std 1, NaN 1, Inf 0'
        """
        a = np.asarray(array)
        if a.dtype.kind == "b":
            a = a.astype("int8")
        finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a.ravel()
        nan = int(np.isnan(a).sum()) if a.dtype.kind == "f" else 0
        inf = int(np.isinf(a).sum()) if a.dtype.kind == "f" else 0
        if finite.size == 0:
            return cls(a.shape, float("nan"), float("nan"), float("nan"), float("nan"), nan, inf)
        f64 = finite.astype("float64")
        return cls(a.shape, float(f64.min()), float(f64.max()), float(f64.mean()), float(f64.std()), nan, inf)

    def text(self) -> str:
        """One line: min, max, mean, std, and the NaN/Inf counts."""
        bad = f", NaN {self.nan}, Inf {self.inf}" if self.nan or self.inf else ", no NaN/Inf"
        return f"min {self.min:.4g}, max {self.max:.4g}, mean {self.mean:.4g}, std {self.std:.4g}{bad}"


def shown_ids(ran: Graph, shown: Graph) -> dict[int, int]:
    """Node ids of the graph a plan ran (``plan.schedule.graph``) -> ids of the graph the viewer shows.

    The same ids when the backend ran ``Function.graph`` itself; when it ran a rewritten copy (a backend
    narrowing int64 to int32 gives the rewritten nodes new ids) the nodes are matched by printed name,
    which such rewrites keep.
    """
    if ran is shown:
        return {n.id: n.id for n in ran.nodes}
    by_printed = {name: key for key, name in shown.names().items()}
    return {i: by_printed[name] for i, name in ran.names().items() if name in by_printed}


@dataclass
class RunData:
    """What one run tells about the nodes, keyed by node id (``node.id``, the viewer's node key).

    Attributes:
        profile: the :class:`asg.core.inspection.Profile`, or ``None``.
        seconds_by_id, share_by_id: kernel time and share of the step per node.
        stats: value statistics per node; ``samples`` keeps (a sample of) the values of parameters and
            captured values, for histograms.
        nonfinite: id of the node that made the first NaN/Inf, and ``nonfinite_message`` the error text.
        ids: ids of the graph the plan ran -> ids of the graph shown (see :func:`shown_ids`); ids
            missing from it are taken as they are.
    """

    profile: Any = None
    seconds_by_id: dict[int, float] = field(default_factory=dict)
    share_by_id: dict[int, float] = field(default_factory=dict)
    stats: dict[int, Stats] = field(default_factory=dict)
    samples: dict[int, np.ndarray] = field(default_factory=dict)
    nonfinite: int | None = None
    nonfinite_message: str | None = None
    ids: dict[int, int] = field(default_factory=dict)

    def key(self, node_id: int) -> int:
        """The viewer's key of node ``node_id`` of the graph the plan ran."""
        return self.ids.get(node_id, node_id)

    def add_profile(self, profile: Any) -> None:
        """Take the timings of a :class:`~asg.core.inspection.Profile` (``Function.profile``)."""
        self.profile = profile
        for t in profile.nodes:
            key = self.key(t.node_id)
            self.seconds_by_id[key] = self.seconds_by_id.get(key, 0.0) + t.seconds
            self.share_by_id[key] = self.share_by_id.get(key, 0.0) + t.share

    def add_values(self, values: dict[int, np.ndarray], keep_samples: bool = True) -> None:
        """Take captured values by node id: statistics, and samples for histograms."""
        for node_id, value in values.items():
            key = self.key(node_id)
            self.stats[key] = Stats.of(value)
            if keep_samples:
                flat = np.asarray(value).ravel()
                self.samples[key] = flat[:: max(1, flat.size // 20000)]

    def add_nonfinite(self, error: NonFiniteError) -> None:
        """Take the :class:`~asg.core.NonFiniteError` of ``Function.check_numerics``."""
        self.nonfinite = None if error.node_id is None else self.key(error.node_id)
        self.nonfinite_message = str(error)

    @classmethod
    def collect(cls, function: Function, *inputs: Any, capture: bool = True) -> RunData:
        """Profile one step of ``function`` (no parameter update), capture every value, check numerics.

        Runs the step up to three times on the same inputs, never updating the parameters.
        """
        graph = function.plan_for(*inputs).schedule.graph
        run = cls(ids=shown_ids(graph, function.graph))
        run.add_profile(function.profile(*inputs, update=False))
        if capture:
            printed = graph.names()
            leaves = [n.id for n in graph.nodes if n.op in ("parameter", "input")]
            wanted = [*leaves, *(t.node_id for t in run.profile.nodes)]
            values = function.capture([printed[i] for i in wanted], *inputs, update=False)
            run.add_values({i: values[printed[i]] for i in wanted})
        if any(s.nan or s.inf for s in run.stats.values()) or not capture:
            try:
                function.check_numerics(*inputs, update=False)
            except NonFiniteError as err:
                run.add_nonfinite(err)
        return run
