"""Qt pieces shared by the window and the exporters: the application, and scene items for a Drawing.

Everything Qt is imported here (through pyqtgraph, which picks the installed binding: PySide6).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from typing import Any

import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from .drawing import FRAME_STROKE, GRAD_LINK, BoxShape, Drawing, EdgeShape, FrameShape
from .layout import LINE_H, elide

FONT_PT = 8


def application(headless: bool = False) -> QtWidgets.QApplication:
    """The running QApplication, or a new one.

    ``headless`` (or, on Linux, no X or Wayland display) picks Qt's offscreen platform unless
    ``QT_QPA_PLATFORM`` is set: without a display Qt would abort the process.
    """
    app = QtWidgets.QApplication.instance()
    if app is None:
        no_display = sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        )
        if (headless or no_display) and not os.environ.get("QT_QPA_PLATFORM"):
            if not headless:
                print("asg-viz: no display ($DISPLAY is unset): drawing offscreen", file=sys.stderr)
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        app = QtWidgets.QApplication(sys.argv[:1])
    return app  # type: ignore[return-value]


def shutdown() -> None:
    """Close every window and let Qt process what that posts, before the interpreter exits.

    (The ``Fatal Python error: none_dealloc`` seen at exit with PySide6 6.12 is that release's bug on
    Python 3.11: every call of a void method drops a reference to None. asg-viz requires PySide6 < 6.12
    on Python 3.11.)
    """
    app = QtWidgets.QApplication.instance()
    if app is None:
        return
    for widget in app.topLevelWidgets():
        widget.close()
    app.processEvents()
    gc.collect()


def _font(bold: bool = False) -> QtGui.QFont:
    font = QtGui.QFont("DejaVu Sans")
    font.setPointSizeF(FONT_PT)
    font.setBold(bold)
    return font


class BoxItem(QtWidgets.QGraphicsPathItem):
    """A node or collapsed group box; forwards clicks and hovers to the viewer's callbacks."""

    def __init__(self, shape: BoxShape, on_event: Callable[[str, Any], None] | None) -> None:
        super().__init__()
        b = shape.box
        path = QtGui.QPainterPath()
        radius = 6.0 if shape.is_group else 3.0
        path.addRoundedRect(QtCore.QRectF(b.x, b.y, b.w, b.h), radius, radius)
        self.setPath(path)
        self.key = shape.key
        self._on_event = on_event
        self.restyle(shape)
        self.setToolTip(shape.tooltip)
        self.setAcceptHoverEvents(True)
        self._lines = [elide(line) for line in shape.lines]

    def restyle(self, shape: BoxShape) -> None:
        """Take the colours of ``shape`` (same place): selection and heat-map changes keep the items."""
        self.shape_data = shape
        self.setBrush(pg.mkBrush(shape.fill))
        self.setPen(pg.mkPen(shape.stroke, width=shape.stroke_width))
        self.setOpacity(0.35 if shape.dimmed else 1.0)

    def paint(self, painter: QtGui.QPainter, option: Any, widget: Any = None) -> None:
        """Paint the box, then its label lines (the first in bold)."""
        super().paint(painter, option, widget)
        # The labels are painted here rather than as child items: removing a box with Python-owned
        # children from a scene crashes PySide6 6.12 at interpreter exit.
        b = self.shape_data.box
        top = b.y + (b.h - LINE_H * len(self._lines)) / 2
        for i, line in enumerate(self._lines):
            painter.setFont(_font(bold=i == 0))
            painter.setPen(QtGui.QColor("#111827" if i == 0 else "#374151"))
            rect = QtCore.QRectF(b.x, top + i * LINE_H, b.w, LINE_H)
            painter.drawText(rect, QtCore.Qt.AlignmentFlag.AlignCenter, line)

    # pyqtgraph's GraphicsScene delivers these (it handles drags for the ViewBox itself)
    def mouseClickEvent(self, ev: Any) -> None:
        """Report a left click (``"click"``) or double click (``"double"``) to the viewer."""
        if ev.button() == QtCore.Qt.MouseButton.LeftButton and self._on_event is not None:
            ev.accept()
            self._on_event("double" if ev.double() else "click", self.key)

    def hoverEvent(self, ev: Any) -> None:
        """Report the hovered box (``"hover"``) to the viewer."""
        if self._on_event is not None and not ev.isExit():
            self._on_event("hover", self.key)


class FrameItem(QtWidgets.QGraphicsPathItem):
    """An expanded group's frame; double-click its title bar to collapse it."""

    def __init__(self, shape: FrameShape, on_event: Callable[[str, Any], None] | None) -> None:
        super().__init__()
        b = shape.box
        path = QtGui.QPainterPath()
        path.addRoundedRect(QtCore.QRectF(b.x, b.y, b.w, b.h), 6.0, 6.0)
        self.setPath(path)
        self.key = shape.key
        self._on_event = on_event
        self.setBrush(pg.mkBrush(shape.fill))
        self.setPen(pg.mkPen(FRAME_STROKE, width=1.0))
        self.setZValue(-10 + shape.key.count("."))
        self._title = elide(shape.title, 60)
        self._box = b
        self.setToolTip(f"{shape.title}: double-click to collapse")

    def paint(self, painter: QtGui.QPainter, option: Any, widget: Any = None) -> None:
        """Paint the frame, then its title."""
        super().paint(painter, option, widget)
        painter.setFont(_font(bold=True))
        painter.setPen(QtGui.QColor("#374151"))
        b = self._box
        rect = QtCore.QRectF(b.x + 8, b.y + 3, b.w - 16, LINE_H + 2)
        painter.drawText(
            rect, QtCore.Qt.AlignmentFlag.AlignLeft | QtCore.Qt.AlignmentFlag.AlignVCenter, self._title
        )

    def mouseClickEvent(self, ev: Any) -> None:
        """Report a left double click (``"collapse"``) to the viewer."""
        if ev.button() == QtCore.Qt.MouseButton.LeftButton and self._on_event is not None and ev.double():
            ev.accept()
            self._on_event("collapse", self.key)


def _edge_paths(edges: list[EdgeShape]) -> tuple[QtGui.QPainterPath, QtGui.QPainterPath]:
    """All edges as one stroked path and all arrowheads as one filled path (fast for thousands)."""
    lines, heads = QtGui.QPainterPath(), QtGui.QPainterPath()
    for e in edges:
        pts = e.points
        lines.moveTo(*pts[0])
        for p in pts[1:]:
            lines.lineTo(*p)
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
        dx, dy = x1 - x0, y1 - y0
        norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
        ux, uy = dx / norm, dy / norm
        size = 7.0
        bx, by = x1 - ux * size, y1 - uy * size
        poly = QtGui.QPolygonF(
            [
                QtCore.QPointF(x1, y1),
                QtCore.QPointF(bx - uy * size * 0.45, by + ux * size * 0.45),
                QtCore.QPointF(bx + uy * size * 0.45, by - ux * size * 0.45),
            ]
        )
        heads.addPolygon(poly)
        heads.closeSubpath()
    return lines, heads


def drawing_items(
    drawing: Drawing, on_event: Callable[[str, Any], None] | None = None
) -> tuple[list[QtWidgets.QGraphicsItem], dict[int | str, BoxItem]]:
    """Scene items for ``drawing``, bottom to top, and the box items by key."""
    items: list[QtWidgets.QGraphicsItem] = [FrameItem(f, on_event) for f in drawing.frames]
    items += edge_items(drawing)
    boxes: dict[int | str, BoxItem] = {}
    for s in drawing.boxes:
        item = BoxItem(s, on_event)
        item.setZValue(10)
        boxes[s.key] = item
        items.append(item)
    return items, boxes


def edge_items(drawing: Drawing) -> list[QtWidgets.QGraphicsItem]:
    """The edges (one path per colour), their arrowheads and the gradient links of ``drawing``."""
    items: list[QtWidgets.QGraphicsItem] = []
    by_style: dict[tuple[str, float], list[EdgeShape]] = {}
    for e in drawing.edges:
        by_style.setdefault((e.color, e.width), []).append(e)
    for (color, width), edges in sorted(by_style.items(), key=lambda kv: kv[0][1]):
        lines, heads = _edge_paths(edges)
        line_item = QtWidgets.QGraphicsPathItem(lines)
        line_item.setPen(pg.mkPen(color, width=width))
        line_item.setZValue(1 + width)
        head_item = QtWidgets.QGraphicsPathItem(heads)
        head_item.setPen(pg.mkPen(None))
        head_item.setBrush(pg.mkBrush(color))
        head_item.setZValue(1 + width)
        items += [line_item, head_item]
    if drawing.links:
        path = QtGui.QPainterPath()
        for (x0, y0), (x1, y1) in drawing.links:
            path.moveTo(x0, y0)
            path.lineTo(x1, y1)
        link_item = QtWidgets.QGraphicsPathItem(path)
        pen = pg.mkPen(GRAD_LINK, width=1.0, style=QtCore.Qt.PenStyle.DashLine)
        link_item.setPen(pen)
        link_item.setOpacity(0.7)
        link_item.setZValue(4)
        items.append(link_item)
    return items


def render_png(drawing: Drawing, path: str, scale: float = 1.0, margin: float = 20.0) -> tuple[int, int]:
    """Paint ``drawing`` into a PNG file; returns its pixel size. Needs a QApplication (see :func:`application`)."""
    scene = QtWidgets.QGraphicsScene()
    items, _ = drawing_items(drawing)
    for item in items:
        scene.addItem(item)
    source = QtCore.QRectF(-margin, -margin, drawing.width + 2 * margin, drawing.height + 2 * margin)
    # Keep the image within 16k pixels a side and 12 megapixels: scale very large drawings down.
    area = max(source.width() * source.height(), 1.0)
    scale = min(scale, 16000 / max(source.width(), 1), 16000 / max(source.height(), 1), (12e6 / area) ** 0.5)
    size = (max(1, round(source.width() * scale)), max(1, round(source.height() * scale)))
    image = QtGui.QImage(size[0], size[1], QtGui.QImage.Format.Format_ARGB32)
    image.fill(QtGui.QColor(drawing.background))
    painter = QtGui.QPainter(image)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QtGui.QPainter.RenderHint.TextAntialiasing)
    scene.render(painter, QtCore.QRectF(0, 0, size[0], size[1]), source)
    painter.end()
    if not image.save(path, "PNG"):
        raise OSError(f"asg-viz: could not write the PNG file {path!r}")
    scene.clear()
    return size
