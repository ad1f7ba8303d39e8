"""The picture as data: boxes, frames, edges and gradient links with their colours, and its SVG.

:func:`build_drawing` turns a model, a visible graph and a layout into a :class:`Drawing`; the Qt scene
draws it, and :func:`to_svg` writes it as SVG text (written directly, not through pyqtgraph's
SVGExporter, which fails on such scenes), one ``<path class="edge">`` per visible edge carrying the
graph edges it stands for in ``data-edges`` (``src>dst#input``).

Example:
    >>> import asg.core as ag
    >>> from asg.viz.layout import compute_layout
    >>> from asg.viz.model import GraphModel
    >>> x = ag.input("x", (2,))
    >>> m = GraphModel(ag.Graph([(x * x).node]))
    >>> v = m.visible("forward", set())
    >>> svg = to_svg(build_drawing(m, v, compute_layout(v)))
    >>> svg.count('class="edge"')  # x * x reads x twice: one path per input
    2
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from .layout import LINE_H, Box, Layout, elide
from .model import FAMILY_COLORS, GRAD_GROUP_COLOR, GROUP_COLOR, Edge, GraphModel, Visible

EDGE_COLOR = "#6b7280"
SAVED_COLOR = "#c4c9d2"  # a forward value read by the backward pass: drawn lighter, it crosses everything
HIGHLIGHT = "#1d4ed8"
SELECTED = "#111827"
NONFINITE = "#dc2626"
GRAD_LINK = "#b04a8f"
FRAME_STROKE = "#9aa5b8"


@dataclass
class BoxShape:
    """A node or a collapsed group."""

    key: int | str
    box: Box
    fill: str
    stroke: str
    stroke_width: float
    lines: tuple[str, ...]
    is_group: bool
    dimmed: bool = False
    tooltip: str = ""


@dataclass
class FrameShape:
    """An expanded group: a frame with a title bar around its items."""

    key: str
    box: Box
    title: str
    fill: str


@dataclass
class EdgeShape:
    """One input edge (a visible edge between collapsed groups stands for several graph edges)."""

    src: int | str
    dst: int | str
    points: list[tuple[float, float]]
    edges: list[Edge]
    color: str = EDGE_COLOR
    width: float = 1.2


@dataclass
class Drawing:
    """Everything to paint, in scene coordinates: boxes, group frames, edges, the dashed
    gradient links, the size, and the legend's ``(label, colour)`` entries. Rendered by
    :func:`to_svg`, :func:`write_drawing` and the Qt viewer alike.
    """

    boxes: list[BoxShape]
    frames: list[FrameShape]
    edges: list[EdgeShape]
    links: list[tuple[tuple[float, float], tuple[float, float]]]
    width: float
    height: float
    background: str = "#ffffff"
    legend: list[tuple[str, str]] = field(default_factory=list)


def build_drawing(
    model: GraphModel,
    visible: Visible,
    layout: Layout,
    fills: Mapping[int | str, str] | None = None,
    selected: int | None = None,
    highlighted: set[int] | None = None,
    nonfinite: int | None = None,
) -> Drawing:
    """The drawing of ``visible`` placed by ``layout``.

    Args:
        fills: item key -> fill colour replacing the op family colour (the profiler heat map).
        selected: the selected node; ``highlighted`` its ancestors and descendants (others are dimmed).
        nonfinite: the node that made the first NaN/Inf (outlined in red, its group too).

    Gradient links (dashed) are drawn between collapsed groups, and for the selected node.
    """
    fills = fills or {}
    lit_items: set[int | str] | None = None
    if selected is not None and selected in visible.rep:
        lit = {selected, *(highlighted or set())}
        lit_items = {visible.rep[k] for k in lit if k in visible.rep}
    bad_item = visible.rep.get(nonfinite) if nonfinite is not None else None
    boxes = []
    for key, item in visible.items.items():
        if item.is_group:
            group = model.groups[key]  # type: ignore[index]
            fill = fills.get(key, GRAD_GROUP_COLOR if group.kind != "forward" else GROUP_COLOR)
            tip = f"{group.path or group.title}: {group.size} nodes (double-click to expand)"
        else:
            info = model.nodes[key]  # type: ignore[index]
            fill = fills.get(key, FAMILY_COLORS[item.family])
            tip = info.line
        stroke, width = ("#4b5563", 1.0) if not item.is_group else ("#6b7280", 1.6)
        if lit_items is not None and key in lit_items:
            stroke, width = HIGHLIGHT, 2.4
        if selected is not None and visible.rep.get(selected) == key:
            stroke, width = SELECTED, 3.2
        if bad_item == key:
            stroke, width = NONFINITE, 3.6
        boxes.append(
            BoxShape(
                key,
                layout.boxes[key],
                fill,
                stroke,
                width,
                item.lines,
                item.is_group,
                dimmed=lit_items is not None and key not in lit_items,
                tooltip=tip,
            )
        )
    frames = []
    for key in visible.frames:
        group = model.groups[key]
        fill = "#fbf5f9" if group.kind != "forward" else "#f7f9fc"
        title = (
            group.title if not group.path else (f"∇ {group.path}" if group.kind == "gradient" else group.path)
        )
        frames.append(FrameShape(key, layout.boxes[key], title, fill))
    frames.sort(key=lambda f: f.key.count("."))  # outer frames first: drawn below inner ones

    def forward(key: int | str) -> bool:
        if isinstance(key, str):
            return model.groups[key].kind == "forward"
        return model.nodes[key].role == "forward"

    edges = []
    for (a, b), under in visible.edges.items():
        color, width = EDGE_COLOR, 1.2
        if visible.mode == "both" and forward(a) and not forward(b):
            color, width = SAVED_COLOR, 1.0
        if lit_items is not None and a in lit_items and b in lit_items:
            color, width = HIGHLIGHT, 2.2
        for e in under if not (visible.items[a].is_group or visible.items[b].is_group) else [None]:
            shown = [e] if e is not None else list(under)
            edges.append(EdgeShape(a, b, layout.routes[(a, b)], shown, color, width))
    links = []
    # Gradient links between two boxes of groups, and those of the selected node; node-level links
    # everywhere would cross the whole forward graph.
    chosen = visible.rep.get(selected) if selected is not None else None
    for a, b in sorted(visible.grad_links, key=str):
        if not (isinstance(a, str) and isinstance(b, str)) and chosen not in (a, b):
            continue
        ba, bb = layout.boxes[a], layout.boxes[b]
        links.append(((ba.x, ba.y + ba.h / 2), (bb.x + bb.w, bb.y + bb.h / 2)))
    families = sorted({item.family for item in visible.items.values() if not item.is_group})
    legend = [(f, FAMILY_COLORS[f]) for f in families]
    return Drawing(boxes, frames, edges, links, layout.width, layout.height, legend=legend)


def to_svg(drawing: Drawing, margin: float = 20.0) -> str:
    """The drawing as a standalone SVG document (nodes and groups as ``<g>``, edges as ``<path>``)."""
    w, h = drawing.width + 2 * margin, drawing.height + 2 * margin
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
        f'viewBox="{-margin:.1f} {-margin:.1f} {w:.1f} {h:.1f}" font-family="DejaVu Sans, sans-serif" font-size="11">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/></marker></defs>',
        f'<rect x="{-margin:.1f}" y="{-margin:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{drawing.background}"/>',
    ]
    for f in drawing.frames:
        b = f.box
        out.append(
            f'<g class="frame" data-key={quoteattr(str(f.key))}><rect x="{b.x:.1f}" y="{b.y:.1f}" '
            f'width="{b.w:.1f}" height="{b.h:.1f}" rx="6" fill="{f.fill}" stroke="{FRAME_STROKE}"/>'
            f'<text x="{b.x + 8:.1f}" y="{b.y + 15:.1f}" font-weight="bold">{escape(elide(f.title, 60))}</text></g>'
        )
    for e in drawing.edges:
        d = "M " + " L ".join(f"{x:.1f} {y:.1f}" for x, y in e.points)
        refs = " ".join(f"{x.src}>{x.dst}#{x.index}" for x in e.edges)
        out.append(
            f'<path class="edge" data-src={quoteattr(str(e.src))} data-dst={quoteattr(str(e.dst))} '
            f'data-edges="{refs}" d="{d}" fill="none" stroke="{e.color}" stroke-width="{e.width}" '
            'marker-end="url(#arrow)"/>'
        )
    for (x0, y0), (x1, y1) in drawing.links:
        out.append(
            f'<path class="grad-link" d="M {x0:.1f} {y0:.1f} L {x1:.1f} {y1:.1f}" fill="none" '
            f'stroke="{GRAD_LINK}" stroke-width="1" stroke-dasharray="5 4" opacity="0.7"/>'
        )
    for s in drawing.boxes:
        b = s.box
        cls = "group" if s.is_group else "node"
        opacity = ' opacity="0.35"' if s.dimmed else ""
        out.append(
            f'<g class="{cls}" data-key={quoteattr(str(s.key))}{opacity}><title>{escape(s.tooltip)}</title>'
            f'<rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" rx="{6 if s.is_group else 3}" '
            f'fill="{s.fill}" stroke="{s.stroke}" stroke-width="{s.stroke_width}"/>'
        )
        top = b.y + (b.h - LINE_H * len(s.lines)) / 2 + LINE_H - 3
        for i, line in enumerate(s.lines):
            weight = ' font-weight="bold"' if i == 0 else ' fill="#374151"'
            out.append(
                f'<text x="{b.x + b.w / 2:.1f}" y="{top + i * LINE_H:.1f}" text-anchor="middle"{weight}>'
                f"{escape(elide(line))}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_drawing(drawing: Drawing, path: str) -> None:
    """Write ``drawing`` as SVG (written directly, no Qt) or PNG (painted by Qt), by the file's suffix."""
    lower = path.lower()
    if lower.endswith(".svg"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_svg(drawing))
    elif lower.endswith(".png"):
        from .qt import application, render_png

        application(headless=True)
        render_png(drawing, path)
    else:
        raise ValueError(f"asg-viz: export to a .png or .svg file, not {path!r}")
