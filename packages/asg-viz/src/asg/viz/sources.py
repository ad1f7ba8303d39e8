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
    >>> run.stats["y"].max, run.seconds_by_name["y"] >= 0
    (2.0, True)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import asg.core as ag
from asg.core import Function, Graph, NonFiniteError, Tensor, inspection
from asg.core.serialize import graph_from_json


def load_path(path: str | os.PathLike[str]) -> tuple[Graph, Function | None]:
    """The graph in a graph JSON file (parameters need no data) or in a function bundle (``Function.save``).

    Returns the graph and, for a bundle, the loaded :class:`~asg.core.Function` (so it can be profiled).
    """
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise FileNotFoundError(f"asg-viz: no such file {where!r}")
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
        bad = f", NaN {self.nan}, Inf {self.inf}" if self.nan or self.inf else ", no NaN/Inf"
        return f"min {self.min:.4g}, max {self.max:.4g}, mean {self.mean:.4g}, std {self.std:.4g}{bad}"


_MADE_BY = re.compile(r"made by (\S+?):[a-z0-9]+\[")


@dataclass
class RunData:
    """What one run tells about the nodes, keyed by printed name (``graph.names()``).

    Attributes:
        profile: the :class:`asg.core.inspection.Profile`, or ``None``.
        seconds_by_name, share_by_name: kernel time and share of the step per node.
        stats: value statistics per node; ``samples`` keeps (a sample of) the values of parameters and
            captured values, for histograms.
        nonfinite: printed name of the node that made the first NaN/Inf, and the error text.
    """

    profile: Any = None
    seconds_by_name: dict[str, float] = field(default_factory=dict)
    share_by_name: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Stats] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    nonfinite: str | None = None
    nonfinite_message: str | None = None

    def add_profile(self, profile: Any) -> None:
        """Take the timings of a :class:`~asg.core.inspection.Profile` (``Function.profile``)."""
        self.profile = profile
        for t in profile.nodes:
            self.seconds_by_name[t.name] = self.seconds_by_name.get(t.name, 0.0) + t.seconds
            self.share_by_name[t.name] = self.share_by_name.get(t.name, 0.0) + t.share

    def add_values(self, values: dict[str, np.ndarray], keep_samples: bool = True) -> None:
        """Take captured values (``Function.capture``): statistics, and samples for histograms."""
        for name, value in values.items():
            self.stats[name] = Stats.of(value)
            if keep_samples:
                flat = np.asarray(value).ravel()
                self.samples[name] = flat[:: max(1, flat.size // 20000)]

    def add_nonfinite(self, error: BaseException | str) -> None:
        """Take the :class:`~asg.core.NonFiniteError` of ``Function.check_numerics`` (or its text)."""
        text = str(error)
        match = _MADE_BY.search(text)
        self.nonfinite = match.group(1) if match else None
        self.nonfinite_message = text

    @classmethod
    def collect(cls, function: Function, *inputs: Any, capture: bool = True) -> RunData:
        """Profile one step of ``function`` (no parameter update), capture every value, check numerics.

        Runs the step up to three times on the same inputs, never updating the parameters.
        """
        run = cls()
        run.add_profile(function.profile(*inputs, update=False))
        names = [t.name for t in run.profile.nodes]
        if capture:
            graph = function.plan_for(*inputs).schedule.graph
            printed = graph.names()
            leaves = [printed[n.id] for n in graph.nodes if n.op in ("parameter", "input")]
            run.add_values(function.capture([*leaves, *names], *inputs, update=False))
        if any(s.nan or s.inf for s in run.stats.values()) or not capture:
            # Function.check_numerics always applies the updates; the traced check can leave them out.
            plan = function.plan_for(*inputs)
            feeds = [np.asarray(a, dtype=n.dtype) for n, a in zip(plan.schedule.inputs, inputs, strict=True)]
            try:
                inspection.check_numerics(plan, feeds, update=False)
            except NonFiniteError as err:
                run.add_nonfinite(err)
        return run
