"""Layered (Sugiyama) layout of a :class:`~asg.viz.model.Visible` graph, top to bottom, with igraph.

igraph's ``layout_sugiyama`` does the hard parts: it breaks cycles, assigns layers and orders each
layer to reduce crossings (barycenter heuristic), and routes long edges through dummy vertices. It
places unit-sized vertices, so this module adds what a compound graph needs: each expanded group is
laid out on its own first (recursively), then placed as one box of its size in its parent's layout,
and each layer is packed left to right with the boxes' real widths. Nothing here touches Qt, so the
viewer runs it on a worker thread, and the exporters run it directly.

Example:
    >>> import asg.core as ag
    >>> from asg.viz.model import GraphModel
    >>> x = ag.input("x", (2,))
    >>> y = (x * 2.0).relu()
    >>> lay = compute_layout(GraphModel(ag.Graph([y.node])).visible("forward", set()))
    >>> boxes = lay.boxes
    >>> boxes[x.node.id].y < boxes[y.node.id].y  # inputs above their users
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import igraph

from .model import Item, Visible

HGAP = 28.0  # between boxes of one layer
VGAP = 44.0  # between layers
PAD = 14.0  # inside a group's frame
TITLE = 22.0  # a frame's title bar
CHAR_W = 6.6  # average glyph width of the label font (9 pt sans)
LINE_H = 15.0
MAX_CHARS = 38


@dataclass(frozen=True)
class Box:
    """A placed box: top-left corner, width and height, in scene units (y grows downwards)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def center(self) -> tuple[float, float]:
        """The box's centre ``(x, y)``."""
        return (self.x + self.w / 2, self.y + self.h / 2)

    def moved(self, dx: float, dy: float) -> Box:
        """The same box shifted by ``(dx, dy)``."""
        return Box(self.x + dx, self.y + dy, self.w, self.h)


@dataclass
class Layout:
    """Where everything goes.

    Attributes:
        boxes: item key or expanded group key -> its :class:`Box`.
        routes: ``(src item, dst item)`` -> the polyline of that edge, from the bottom of the source
            to the top of the target.
        width, height: the extent of the drawing.
    """

    boxes: dict[int | str, Box]
    routes: dict[tuple[int | str, int | str], list[tuple[float, float]]]
    width: float
    height: float


def elide(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def item_size(item: Item) -> tuple[float, float]:
    """Width and height of an item's box, from its label lines."""
    longest = max((len(elide(line)) for line in item.lines), default=4)
    w = max(56.0, longest * CHAR_W + 18.0)
    h = LINE_H * max(1, len(item.lines)) + 10.0
    if item.is_group:
        w, h = w + 12.0, h + 8.0
    return (w, h)


def compute_layout(
    visible: Visible, size_of: Callable[[Item], tuple[float, float]] = item_size, maxiter: int = 50
) -> Layout:
    """Lay out ``visible``: every item and expanded group gets a :class:`Box`, every edge a route."""
    chains = _chains(visible)
    children: dict[str | None, list[int | str]] = {}
    for key in visible.items:
        children.setdefault(visible.items[key].container, []).append(key)
    for key, parent in visible.frames.items():
        children.setdefault(parent, []).append(key)
    local: dict[int | str, Box] = {}
    routes_local: dict[str | None, dict[tuple[int | str, int | str], list[tuple[float, float]]]] = {}
    sizes: dict[int | str, tuple[float, float]] = {k: size_of(it) for k, it in visible.items.items()}

    level_edges: dict[str | None, set[tuple[int | str, int | str]]] = {}
    for a, b in visible.edges:
        container, ca, cb = _lift(chains[a], chains[b], a, b)
        if ca != cb:
            level_edges.setdefault(container, set()).add((ca, cb))

    def place(container: str | None) -> tuple[float, float]:
        kids = children.get(container, [])
        for k in kids:
            if k in visible.frames:
                sizes[k] = place(k)  # type: ignore[arg-type]
        boxes, routes, w, h = _layered(kids, sizes, level_edges.get(container, set()), maxiter)
        top = TITLE + PAD if container is not None else 0.0
        left = PAD if container is not None else 0.0
        for k, box in boxes.items():
            local[k] = box.moved(left, top)
        routes_local[container] = {e: [(x + left, y + top) for x, y in pts] for e, pts in routes.items()}
        if container is None:
            return (w, h)
        return (max(w + 2 * PAD, len(container) * CHAR_W + 2 * PAD), h + top + PAD)

    width, height = place(None)
    # Local boxes -> absolute: add the offsets of the enclosing frames, outermost first.
    boxes: dict[int | str, Box] = {}
    offsets: dict[str | None, tuple[float, float]] = {None: (0.0, 0.0)}

    def absolute(container: str | None) -> None:
        ox, oy = offsets[container]
        for k in children.get(container, []):
            boxes[k] = local[k].moved(ox, oy)
            if k in visible.frames:
                offsets[k] = (boxes[k].x, boxes[k].y)  # type: ignore[index]
                absolute(k)  # type: ignore[arg-type]

    absolute(None)
    routes: dict[tuple[int | str, int | str], list[tuple[float, float]]] = {}
    for a, b in visible.edges:
        container, ca, cb = _lift(chains[a], chains[b], a, b)
        ox, oy = offsets[container]
        middle = [(x + ox, y + oy) for x, y in routes_local.get(container, {}).get((ca, cb), [])]
        src, dst = boxes[a], boxes[b]
        routes[(a, b)] = [(src.x + src.w / 2, src.y + src.h), *middle, (dst.x + dst.w / 2, dst.y)]
    return Layout(boxes, routes, width, height)


def _chains(visible: Visible) -> dict[int | str, list[str]]:
    """Item key -> the expanded groups holding it, outermost first."""
    out: dict[int | str, list[str]] = {}
    for key, item in visible.items.items():
        chain: list[str] = []
        frame = item.container
        while frame is not None:
            chain.append(frame)
            frame = visible.frames[frame]
        out[key] = chain[::-1]
    return out


def _lift(
    ca: list[str], cb: list[str], a: int | str, b: int | str
) -> tuple[str | None, int | str, int | str]:
    """The innermost frame holding both items, and the child of it that holds each."""
    depth = 0
    while depth < len(ca) and depth < len(cb) and ca[depth] == cb[depth]:
        depth += 1
    container = ca[depth - 1] if depth else None
    return container, (ca[depth] if depth < len(ca) else a), (cb[depth] if depth < len(cb) else b)


def _layered(
    kids: list[int | str],
    sizes: Mapping[int | str, tuple[float, float]],
    edges: set[tuple[int | str, int | str]],
    maxiter: int,
) -> tuple[dict[int | str, Box], dict[tuple[int | str, int | str], list[tuple[float, float]]], float, float]:
    """Boxes for ``kids`` (relative to 0, 0), the routes of ``edges`` among them, and the extent."""
    if not kids:
        return {}, {}, 0.0, 0.0
    index = {k: i for i, k in enumerate(kids)}
    edge_list = sorted(edges, key=lambda e: (index[e[0]], index[e[1]]))
    g = igraph.Graph(n=len(kids), edges=[(index[a], index[b]) for a, b in edge_list], directed=True)
    lay = g.layout_sugiyama(hgap=1, vgap=1, maxiter=maxiter)
    coords = lay.coords[: len(kids)]
    layers = [round(y) for _, y in coords]
    nlayers = max(layers) + 1
    heights = [0.0] * nlayers
    for k, layer in zip(kids, layers, strict=True):
        heights[layer] = max(heights[layer], sizes[k][1])
    tops = [0.0] * nlayers
    for layer in range(1, nlayers):
        tops[layer] = tops[layer - 1] + heights[layer - 1] + VGAP
    widths = sorted(sizes[k][0] for k in kids)
    unit = widths[len(widths) // 2] + HGAP
    boxes: dict[int | str, Box] = {}
    by_layer: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        by_layer.setdefault(layer, []).append(i)
    for layer, members in by_layer.items():
        members.sort(key=lambda i: coords[i][0])
        right = -float("inf")
        for i in members:
            w, h = sizes[kids[i]]
            center = max(coords[i][0] * unit, right + HGAP + w / 2)
            right = center + w / 2
            top = tops[layer] + (heights[layer] - h) / 2
            boxes[kids[i]] = Box(center - w / 2, top, w, h)
    shift = -min(b.x for b in boxes.values())
    boxes = {k: b.moved(shift, 0.0) for k, b in boxes.items()}
    routes: dict[tuple[int | str, int | str], list[tuple[float, float]]] = {}
    routing = lay.edge_routing or []
    for e, points in zip(edge_list, routing, strict=False):
        routes[e] = [
            (x * unit + shift, tops[min(round(y), nlayers - 1)] + heights[min(round(y), nlayers - 1)] / 2)
            for x, y in points
        ]
    width = max(b.x + b.w for b in boxes.values())
    height = tops[-1] + heights[-1]
    return boxes, routes, width, height
