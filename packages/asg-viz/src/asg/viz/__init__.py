"""asg.viz — a desktop viewer for ASG graphs: forward and gradient graphs, modules as expandable groups,
values, per-op timings and NaN checks, training curves, PNG/SVG export. Built on asg-core and pyqtgraph.

``import asg.viz`` loads no Qt: the model (:mod:`asg.viz.model`), layout and SVG writer work without it;
:func:`show`, :class:`Viewer` and :class:`LiveView` import Qt when first used.

Example:
    >>> import asg.core as ag
    >>> from asg.viz import GraphModel, compute_layout
    >>> x = ag.input("x", ("B", 3))
    >>> with ag.scope("block"):
    ...     y = (x * 2.0).relu()
    >>> model = GraphModel(ag.Graph([y.node]))
    >>> visible = model.visible("forward", expanded={"f:block"})
    >>> len(compute_layout(visible).boxes)  # x, the constant, mul, relu, and the block's frame
    5
"""

from __future__ import annotations

from typing import Any

from .drawing import build_drawing, to_svg, write_drawing
from .layout import compute_layout
from .model import GraphModel
from .sources import RunData, as_graph, load_path

__version__ = "0.1.0"

__all__ = [
    "GraphModel",
    "LiveView",
    "RunData",
    "Viewer",
    "as_graph",
    "build_drawing",
    "compute_layout",
    "export",
    "load_path",
    "show",
    "to_svg",
]


def __getattr__(name: str) -> Any:
    if name == "Viewer":
        from .window import Viewer

        return Viewer
    if name == "LiveView":
        from .live import LiveView

        return LiveView
    raise AttributeError(f"module 'asg.viz' has no attribute {name!r}")


def show(
    obj: Any, inputs: tuple[Any, ...] | list[Any] | None = None, mode: str = "both", block: bool = True
) -> Any:
    """Open a viewer window on a Graph, a Function, tensors, or a graph JSON / bundle path.

    Args:
        obj: what to show.
        inputs: for a Function, arrays of one call: the step is profiled (no parameter update), every
            value is captured, and NaN/Inf are checked, so hover shows statistics and times.
        mode: ``"forward"``, ``"gradient"`` or ``"both"``.
        block: run the Qt event loop until the window is closed (``False`` returns the window).
    """
    import os

    from asg.core import Function

    from .qt import application
    from .window import Viewer

    app = application()
    function = obj if isinstance(obj, Function) else None
    if isinstance(obj, (str, os.PathLike)):
        graph, function = load_path(obj)
        title = f"asg-viz: {os.fspath(obj)}"
    else:
        graph, title = as_graph(obj), "asg-viz"
    run = RunData.collect(function, *inputs) if function is not None and inputs is not None else None
    window = Viewer(graph, run=run, mode=mode, title=title)  # type: ignore[arg-type]
    window.show()
    if block:
        app.exec()
        from .qt import shutdown

        shutdown()
    return window


def export(obj: Any, path: str, mode: str = "both", expand: bool = False) -> None:
    """Lay out ``obj`` (as for :func:`show`) and write it to ``path`` (``.png`` or ``.svg``), with no window.

    Groups open as the window opens them; ``expand=True`` opens every group, so every node and every
    input edge is drawn.
    """
    import os

    if isinstance(obj, (str, os.PathLike)):
        graph, _ = load_path(obj)
    else:
        graph = as_graph(obj)
    model = GraphModel(graph)
    expanded = set(model.groups) if expand else model.default_expanded(mode=mode)  # type: ignore[arg-type]
    visible = model.visible(mode, expanded)  # type: ignore[arg-type]
    write_drawing(build_drawing(model, visible, compute_layout(visible)), os.fspath(path))
