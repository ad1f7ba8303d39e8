"""The viewer window: the graph (pan, zoom, fit), mode toggle, search, side panel, profiler, training curves."""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from asg.core import Graph

from .drawing import Drawing, build_drawing, write_drawing
from .layout import Layout, compute_layout
from .live import LiveView
from .model import MODES, GraphModel, Mode, Visible
from .qt import BoxItem, drawing_items, edge_items
from .sources import RunData

HEAT = pg.colormap.get("inferno")


def heat_color(share: float, top: float) -> str:
    """A colour for a time share: pale for nothing, dark red for the slowest node."""
    t = 0.0 if top <= 0 else min(1.0, share / top) ** 0.5
    color = HEAT.map(0.95 - 0.75 * t, mode="qcolor")
    return color.name()


class _Signals(QtCore.QObject):
    layout_ready = QtCore.Signal(object)


class Viewer(QtWidgets.QMainWindow):
    """A window showing one graph.

    Args:
        graph: the graph to show.
        run: run data to overlay (timings, values, the first non-finite node), or ``None``.
        mode: ``"forward"``, ``"gradient"`` or ``"both"``.
        title: the window title.

    The layout runs on a worker thread; :meth:`wait_layout` blocks (processing events) until it is done.
    """

    def __init__(
        self, graph: Graph, run: RunData | None = None, mode: Mode = "both", title: str = "asg-viz"
    ) -> None:
        super().__init__()
        self.setWindowTitle(title)
        self.model = GraphModel(graph)
        self.run = run or RunData()
        self._slowest_keys: list[int] = []  # node key of each row of the slowest-nodes table
        self.mode: Mode = mode
        self.expanded: set[str] = self.model.default_expanded(mode=mode)
        self.colouring = "family"
        self.selected: int | None = None
        self.hovered: int | str | None = None
        self.visible: Visible | None = None
        self.layout_result: Layout | None = None
        self.drawing: Drawing | None = None
        self.box_items: dict[int | str, BoxItem] = {}
        self._scene_items: list[QtWidgets.QGraphicsItem] = []
        self._edge_items: list[QtWidgets.QGraphicsItem] = []
        self._drawn_generation = -2
        self._generation = 0
        self._pending: threading.Thread | None = None
        self._focus_after_layout: int | None = None
        self._matches: list[int] = []
        self._match_index = 0
        self._signals = _Signals()
        self._signals.layout_ready.connect(self._on_layout_ready)
        self.live = LiveView()
        self._build_ui()
        self.resize(1400, 900)
        self.relayout()

    # ------------------------------------------------------------------ widgets
    def _build_ui(self) -> None:
        bar = QtWidgets.QToolBar("view")
        self.addToolBar(bar)
        bar.addWidget(QtWidgets.QLabel(" show "))
        self.mode_box = QtWidgets.QComboBox()
        self.mode_box.addItems(list(MODES))
        self.mode_box.setCurrentText(self.mode)
        self.mode_box.currentTextChanged.connect(lambda text: self.set_mode(text))  # type: ignore[arg-type]
        bar.addWidget(self.mode_box)
        bar.addWidget(QtWidgets.QLabel(" colour "))
        self.colour_box = QtWidgets.QComboBox()
        self.colour_box.addItems(["family", "time"])
        self.colour_box.currentTextChanged.connect(self.set_colouring)
        bar.addWidget(self.colour_box)
        bar.addSeparator()
        for text, slot in (
            ("Fit", self.fit),
            ("Expand all", self.expand_all),
            ("Collapse all", self.collapse_all),
            ("PNG…", lambda: self._export_dialog("png")),
            ("SVG…", lambda: self._export_dialog("svg")),
        ):
            action = QtGui.QAction(text, self)
            action.triggered.connect(slot)
            bar.addAction(action)
        bar.addSeparator()
        self.search_box = QtWidgets.QLineEdit()
        self.search_box.setPlaceholderText("find by name, op or scope  (Enter: next)")
        self.search_box.setMinimumWidth(260)
        self.search_box.returnPressed.connect(lambda: self.search(self.search_box.text()))
        bar.addWidget(self.search_box)
        self.search_label = QtWidgets.QLabel("")
        bar.addWidget(self.search_label)

        self.view = pg.GraphicsView(background="w")
        self.viewbox = pg.ViewBox(invertY=True, lockAspect=True, enableMenu=False)
        self.view.setCentralItem(self.viewbox)

        self.details = QtWidgets.QTextBrowser()
        self.details.setOpenLinks(False)
        self.details.anchorClicked.connect(self._on_link)
        self.histogram = pg.PlotWidget(background="w")
        self.histogram.setMaximumHeight(180)
        self.histogram.setLabel("bottom", "value")
        node_tab = QtWidgets.QWidget()
        node_layout = QtWidgets.QVBoxLayout(node_tab)
        node_layout.addWidget(self.details)
        node_layout.addWidget(self.histogram)
        self.expand_button = QtWidgets.QPushButton("Expand / collapse group")
        self.expand_button.clicked.connect(self._toggle_selected_group)
        node_layout.addWidget(self.expand_button)

        self.slowest = QtWidgets.QTableWidget(0, 5)
        self.slowest.setHorizontalHeaderLabels(["ms", "share", "op", "node", "scope"])
        self.slowest.cellDoubleClicked.connect(self._on_slowest_clicked)
        self.by_op = QtWidgets.QTableWidget(0, 4)
        self.by_op.setHorizontalHeaderLabels(["op", "ms", "share", "calls"])
        self.memory = QtWidgets.QTableWidget(0, 2)
        self.memory.setHorizontalHeaderLabels(["op family", "bytes"])
        self.profile_summary = QtWidgets.QLabel("No profile: run asg.viz.show(function, inputs=...)")
        self.profile_summary.setWordWrap(True)
        prof_tab = QtWidgets.QWidget()
        prof_layout = QtWidgets.QVBoxLayout(prof_tab)
        prof_layout.addWidget(self.profile_summary)
        for label, table in (
            ("Slowest nodes", self.slowest),
            ("Time per op", self.by_op),
            ("Memory per op family", self.memory),
        ):
            prof_layout.addWidget(QtWidgets.QLabel(f"<b>{label}</b>"))
            prof_layout.addWidget(table)

        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(node_tab, "Node")
        self.tabs.addTab(prof_tab, "Profile")
        self.tabs.addTab(self.live.widget, "Training")
        self.tabs.setMinimumWidth(380)

        split = QtWidgets.QSplitter()
        split.addWidget(self.view)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        self.setCentralWidget(split)
        self.hover_label = QtWidgets.QLabel("hover a node for its details")
        self.statusBar().addWidget(self.hover_label, 1)
        self._fill_profile_tables()
        self._show_details()

    # ------------------------------------------------------------------ layout (worker thread)
    def relayout(self) -> None:
        """Recompute what is visible and lay it out on a worker thread; the scene is rebuilt when done."""
        self._generation += 1
        generation = self._generation
        visible = self.model.visible(self.mode, self.expanded)

        def work() -> None:
            try:
                result: Any = compute_layout(visible)
            except Exception as err:  # delivered to the UI thread, shown there
                result = err
            self._signals.layout_ready.emit((generation, visible, result))

        self._pending = threading.Thread(target=work, name="asg-viz-layout", daemon=True)
        self._pending.start()

    def wait_layout(self, timeout: float = 30.0) -> None:
        """Process events until the latest layout is on screen."""
        timer = QtCore.QElapsedTimer()
        timer.start()
        app = QtWidgets.QApplication.instance()
        while self.layout_result is None or self._shown_generation != self._generation:
            if timer.elapsed() > timeout * 1000:
                raise TimeoutError("asg-viz: the layout did not finish in time")
            app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 20)  # type: ignore[union-attr]

    _shown_generation = -1

    def _on_layout_ready(self, payload: tuple[int, Visible, Any]) -> None:
        generation, visible, result = payload
        if generation != self._generation:
            return  # a newer layout is on its way
        if isinstance(result, Exception):
            self.hover_label.setText(f"layout failed: {result}")
            raise result
        first = self.layout_result is None
        self.visible, self.layout_result = visible, result
        self._shown_generation = generation
        self.redraw()
        if self._focus_after_layout is not None:
            key, self._focus_after_layout = self._focus_after_layout, None
            self.centre_on(key)
        elif first:
            self.fit()

    # ------------------------------------------------------------------ drawing
    def fills(self) -> dict[int | str, str]:
        """Fill colours replacing the family colours (the time heat map when colouring by time)."""
        if self.colouring != "time" or not self.run.share_by_id or self.visible is None:
            return {}
        share: dict[int | str, float] = {}
        for key, s in self.run.share_by_id.items():
            if key in self.visible.rep:
                item = self.visible.rep[key]
                share[item] = share.get(item, 0.0) + s
        top = max(share.values(), default=0.0)
        out: dict[int | str, str] = {k: "#f3f4f6" for k in self.visible.items}
        out.update({k: heat_color(s, top) for k, s in share.items()})
        return out

    def nonfinite_key(self) -> int | None:
        """The node key of the NaN check's first non-finite node, if it is in the shown graph."""
        return self.run.nonfinite if self.run.nonfinite in self.model.nodes else None

    def current_drawing(self) -> Drawing:
        """The drawing of what is on screen now (for export)."""
        assert self.visible is not None and self.layout_result is not None, "wait_layout() first"
        highlighted = None
        if self.selected is not None:
            highlighted = self.model.ancestors(self.selected) | self.model.descendants(self.selected)
        return build_drawing(
            self.model,
            self.visible,
            self.layout_result,
            fills=self.fills(),
            selected=self.selected,
            highlighted=highlighted,
            nonfinite=self.nonfinite_key(),
        )

    def redraw(self) -> None:
        """Draw the current layout: new items after a new layout; otherwise the boxes keep their items
        (a click must not delete the box a double-click is about to reach) and only edges are redrawn."""
        if self.visible is None:
            return
        self.drawing = self.current_drawing()
        if self._drawn_generation == self._shown_generation:
            for shape in self.drawing.boxes:
                self.box_items[shape.key].restyle(shape)
            for item in self._edge_items:
                self.viewbox.removeItem(item)
            self._edge_items = edge_items(self.drawing)
            for item in self._edge_items:
                self.viewbox.addItem(item, ignoreBounds=True)
            return
        for item in [*self._scene_items, *self._edge_items]:
            self.viewbox.removeItem(item)
        items, boxes = drawing_items(self.drawing, self._on_item_event)
        for item in items:
            self.viewbox.addItem(item, ignoreBounds=False)
        self._scene_items, self.box_items, self._edge_items = items, boxes, []
        self._drawn_generation = self._shown_generation

    def fit(self) -> None:
        """Zoom so the whole graph fits the view."""
        if self.layout_result is not None:
            lay = self.layout_result
            self.viewbox.setRange(QtCore.QRectF(-20, -20, lay.width + 40, lay.height + 40), padding=0.02)

    def centre_on(self, key: int | str) -> None:
        """Centre the view on the box showing node (or group) ``key``, keeping the zoom readable."""
        if self.visible is None or self.layout_result is None:
            return
        item = self.visible.rep.get(key, key) if isinstance(key, int) else key
        box = self.layout_result.boxes.get(item)
        if box is None:
            return
        cx, cy = box.center
        self.viewbox.setRange(QtCore.QRectF(cx - 450, cy - 300, 900, 600), padding=0)

    # ------------------------------------------------------------------ interaction
    def _on_item_event(self, kind: str, key: Any) -> None:
        if kind == "hover":
            self.hover(key)
        elif kind == "click":
            if isinstance(key, int):
                self.select(key)
            else:
                self.select_group(key)
        elif kind == "double":
            if isinstance(key, str):
                self.expand(key)
        elif kind == "collapse":
            self.collapse(key)

    def hover(self, key: int | str) -> str:
        """Show the details of node (or group) ``key`` in the status line; returns the text."""
        self.hovered = key
        text = self.describe(key, rich=False)
        self.hover_label.setText(text.replace("\n", "  |  "))
        return text

    def select(self, key: int | None) -> None:
        """Select node ``key``: highlight its ancestors and descendants, show it in the side panel."""
        self.selected = key
        self._show_details()
        self.redraw()

    def select_group(self, key: str) -> None:
        """Select group ``key``: show its details (no node selected)."""
        self.selected = None
        self._show_details(group=key)
        self.redraw()

    def expand(self, key: str) -> None:
        """Open group ``key`` (and the groups holding it)."""
        while key is not None:
            self.expanded.add(key)
            key = self.model.groups[key].parent  # type: ignore[assignment]
        self.relayout()

    def collapse(self, key: str) -> None:
        """Close group ``key`` and every group inside it."""
        self.expanded = {
            k
            for k in self.expanded
            if not (k == key or k.startswith(key + ".") or (key.endswith(":") and k.startswith(key)))
        }
        self.relayout()

    def expand_all(self) -> None:
        """Open every group."""
        self.expanded = set(self.model.groups)
        self.relayout()

    def collapse_all(self) -> None:
        """Close every group."""
        self.expanded = set()
        self.relayout()

    def set_mode(self, mode: Mode) -> None:
        """Show the forward graph, the gradient graph or both."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        if self.mode_box.currentText() != mode:
            self.mode_box.setCurrentText(mode)
        if self.selected is not None and not self.model.in_mode(self.selected, mode):
            self.selected = None
        self.relayout()

    def set_colouring(self, colouring: str) -> None:
        """Colour boxes by op ``"family"`` or by kernel ``"time"`` (the profiler heat map)."""
        self.colouring = colouring
        if self.colour_box.currentText() != colouring:
            self.colour_box.setCurrentText(colouring)
        self.redraw()

    def search(self, text: str) -> list[int]:
        """Find nodes by name, op or scope; select the next match and centre on it. Returns the matches."""
        matches = self.model.search(text)
        if matches != self._matches:
            self._matches, self._match_index = matches, 0
        elif matches:
            self._match_index = (self._match_index + 1) % len(matches)
        if not matches:
            self.search_label.setText(" no match")
            return matches
        self.search_label.setText(f" {self._match_index + 1}/{len(matches)}")
        self.reveal(matches[self._match_index])
        return matches

    def reveal(self, key: int) -> None:
        """Select node ``key``, switching mode and opening its groups so it is a box of its own."""
        if not self.model.in_mode(key, self.mode):
            self.mode = "both"
            self.mode_box.blockSignals(True)
            self.mode_box.setCurrentText("both")
            self.mode_box.blockSignals(False)
        chain = self.model.group_chain(key)
        self.selected = key
        self._show_details()
        if (
            (chain and not set(chain) <= self.expanded)
            or self.visible is None
            or self.visible.mode != self.mode
        ):
            self.expanded |= set(chain)
            self._focus_after_layout = key
            self.relayout()
        else:
            self.redraw()
            self.centre_on(key)

    def _on_link(self, url: QtCore.QUrl) -> None:
        target = url.toString()
        if target.startswith("node:"):
            self.reveal(int(target[5:]))
        elif target.startswith("group:"):
            self.expand(target[6:])

    def _toggle_selected_group(self) -> None:
        if self.selected is None:
            return
        chain = self.model.group_chain(self.selected)
        if chain:
            self.collapse(chain[-1])

    def _on_slowest_clicked(self, row: int, _column: int) -> None:
        if row < len(self._slowest_keys) and self._slowest_keys[row] in self.model.nodes:
            self.reveal(self._slowest_keys[row])

    # ------------------------------------------------------------------ text
    def describe(self, key: int | str, rich: bool = True) -> str:
        """Everything known about node (or group) ``key``: op, attributes, type, name, scope, source line,
        then value statistics and execution time after a run."""
        if isinstance(key, str):
            g = self.model.groups[key]
            lines = [f"group {g.path or g.title} ({g.kind}): {g.size} nodes", f"{len(g.children)} subgroups"]
            total = sum(self.run.seconds_by_id.get(k, 0.0) for k in self._group_nodes(key))
            if total:
                lines.append(f"time {total * 1e3:.3f} ms")
            return "\n".join(lines)
        info = self.model.nodes[key]
        attrs = ", ".join(f"{k}={v!r}" for k, v in sorted(info.attrs.items())) or "none"
        lines = [
            f"{info.printed} = {info.op}   ({info.family})",
            f"type {info.type_str}  shape {info.shape}  dtype {info.dtype}",
            f"name {info.name or '-'}   scope {info.scope or '-'}   role {info.role}",
            f"attrs {attrs}",
            f"source {info.source or 'unknown (not recorded, e.g. loaded from JSON)'}",
        ]
        if info.grad_of is not None:
            fwd = self.model.nodes[info.grad_of]
            lines.append(f"gradient of {fwd.printed} = {fwd.op}")
        stats = self.run.stats.get(key)
        if stats is not None:
            lines.append(f"value {stats.text()}")
        seconds = self.run.seconds_by_id.get(key)
        if seconds is not None:
            share = self.run.share_by_id.get(key, 0.0)
            lines.append(f"time {seconds * 1e3:.3f} ms ({share:.1%} of the step)")
        if self.run.nonfinite == key:
            lines.append("FIRST NON-FINITE VALUE of the NaN check")
        return "\n".join(lines)

    def _group_nodes(self, key: str) -> Iterable[int]:
        stack = [key]
        while stack:
            g = self.model.groups[stack.pop()]
            yield from g.members
            stack.extend(g.children)

    def _show_details(self, group: str | None = None) -> None:
        self.histogram.clear()
        if group is not None:
            self.model.groups[group]
            self.details.setHtml(
                f'<pre style="white-space: pre-wrap">{html.escape(self.describe(group))}</pre>'
                f'<p><a href="group:{html.escape(group)}">expand</a></p>'
            )
            return
        if self.selected is None:
            text = "<p>Click a node to see its details, inputs and users.</p>"
            if self.run.nonfinite_message:
                text += f"<p style='color:#dc2626'><b>NaN check</b></p><pre>{html.escape(self.run.nonfinite_message)}</pre>"
            self.details.setHtml(text)
            return
        info = self.model.nodes[self.selected]

        def link(k: int) -> str:
            n = self.model.nodes[k]
            return f'<a href="node:{k}">{html.escape(n.printed)}</a> {html.escape(n.op)} {html.escape(n.type_str)}'

        parts = [f'<pre style="white-space: pre-wrap">{html.escape(self.describe(self.selected))}</pre>']
        parts.append(
            "<p><b>inputs</b><br>"
            + ("<br>".join(f"{i}: {link(k)}" for i, k in enumerate(info.inputs)) or "none")
            + "</p>"
        )
        parts.append(
            "<p><b>users</b><br>" + ("<br>".join(link(k) for k in info.users) or "none (an output)") + "</p>"
        )
        if info.grad_of is not None:
            parts.append(f"<p><b>differentiates</b><br>{link(info.grad_of)}</p>")
        grads = [k for k, n in self.model.nodes.items() if n.grad_of == self.selected]
        if grads:
            parts.append("<p><b>gradient nodes</b><br>" + "<br>".join(link(k) for k in grads[:20]) + "</p>")
        self.details.setHtml("".join(parts))
        sample = self.run.samples.get(self.selected)
        if sample is None and info.op == "parameter":
            node = next(n for n in self.model.graph.nodes if n.id == self.selected)
            if node.data is not None and node.data.has_value:
                sample = np.asarray(node.data.value).ravel()
        if sample is not None and sample.size:
            finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
            if finite.size:
                counts, edges = np.histogram(finite.astype("float64"), bins=40)
                self.histogram.plot(edges, counts, stepMode="center", fillLevel=0, brush="#4c9be8")
                self.histogram.setTitle(f"values of {info.printed} ({finite.size} shown)")

    def _fill_profile_tables(self) -> None:
        prof = self.run.profile
        if prof is None:
            return

        def fill(table: QtWidgets.QTableWidget, rows: list[list[str]]) -> None:
            table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                for c, value in enumerate(row):
                    table.setItem(r, c, QtWidgets.QTableWidgetItem(value))
            table.resizeColumnsToContents()

        nodes = sorted(prof.nodes, key=lambda t: -t.seconds)[:25]
        self._slowest_keys = [self.run.key(t.node_id) for t in nodes]
        fill(
            self.slowest,
            [[f"{t.seconds * 1e3:.3f}", f"{t.share:.1%}", t.op, t.name, t.scope or "-"] for t in nodes],
        )
        fill(self.by_op, [[op, f"{s * 1e3:.3f}", f"{share:.1%}", str(n)] for op, s, share, n in prof.by_op()])
        mem = prof.memory
        rows = [[family, f"{b:,}"] for family, b in mem.bytes_by_family.items()]
        rows += [["(planned buffers)", f"{mem.planned_bytes:,}"], ["(peak)", f"{mem.peak_bytes:,}"]]
        fill(self.memory, rows)
        self.profile_summary.setText(
            f"{prof.backend}: {len(prof.nodes)} kernels, {prof.kernel_seconds * 1e3:.3f} ms in kernels, "
            f"{prof.wall_seconds * 1e3:.3f} ms for the step. Colour by 'time' for the heat map."
        )

    def set_run(self, run: RunData) -> None:
        """Overlay new run data (timings, values, NaN check) and redraw."""
        self.run = run
        self._fill_profile_tables()
        self._show_details()
        self.redraw()

    # ------------------------------------------------------------------ export
    def export(self, path: str) -> None:
        """Write what is shown (the whole laid-out graph) to ``path``: ``.png`` or ``.svg``."""
        write_drawing(self.current_drawing(), path)

    def _export_dialog(self, kind: str) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, f"Export {kind.upper()}", f"graph.{kind}")
        if path:
            self.export(path)
