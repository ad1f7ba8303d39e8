"""Live training curves: a callback that asg-nn's ``fit`` calls (duck-typed: no asg-nn import).

``LiveView`` implements the hooks of asg-nn's ``Callback`` protocol (``set_trainer``,
``on_train_begin/end``, ``on_epoch_begin/end(epoch, logs)``, ``on_batch_begin/end(batch, logs)``) and plots
every number it is given, per batch and per epoch, in pyqtgraph plots that repaint as training runs.

Example (with asg-nn installed)::

    view = asg.viz.LiveView()
    view.show()
    asg.nn.fit(model, loss, optimizer, batches, epochs=3, callbacks=[view])
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from pyqtgraph.Qt import QtWidgets

from .qt import application

_COLORS = ["#1d4ed8", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777"]


class LiveView:
    """Loss and metric curves that update during training.

    Attributes:
        batch_history: per key, ``(global batch, value)`` points logged at each batch end.
        epoch_history: per key, ``(epoch, value)`` points logged at each epoch end.
        widget: the Qt widget holding the two plots (shown in the viewer's Training tab, or alone).
    """

    def __init__(self, process_events: bool = True) -> None:
        application()
        self.batch_history: dict[str, list[tuple[int, float]]] = {}
        self.epoch_history: dict[str, list[tuple[int, float]]] = {}
        self.trainer: Any = None
        self._process_events = process_events
        self._step = 0
        self.widget = pg.GraphicsLayoutWidget()
        self.widget.setBackground("w")
        self.batch_plot = self.widget.addPlot(row=0, col=0, title="per batch")
        self.epoch_plot = self.widget.addPlot(row=1, col=0, title="per epoch")
        for plot, label in ((self.batch_plot, "batch"), (self.epoch_plot, "epoch")):
            plot.addLegend()
            plot.showGrid(x=True, y=True, alpha=0.3)
            plot.setLabel("bottom", label)
        self._curves: dict[tuple[str, str], Any] = {}

    # asg-nn's Callback protocol -------------------------------------------------------------
    def set_trainer(self, trainer: Any) -> None:
        """Called by ``fit``: keep the trainer (``Callback`` protocol)."""
        self.trainer = trainer

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Nothing to do before training (``Callback`` protocol)."""

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Redraw the curves with the final values."""
        self._refresh()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Nothing to do before an epoch (``Callback`` protocol)."""

    def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Nothing to do before a batch (``Callback`` protocol)."""

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Add every numeric entry of ``logs`` (except ``batch`` and ``size``) to the per-batch curves."""
        self._add(self.batch_history, self._step, logs, skip=("batch", "size"))
        self._step += 1
        self._refresh()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Add every numeric entry of ``logs`` to the per-epoch curves."""
        self._add(self.epoch_history, epoch, logs, skip=())
        self._refresh()

    # ---------------------------------------------------------------------------------------
    def show(self) -> None:
        """Show the curves in a window of their own."""
        self.widget.setWindowTitle("asg-viz: training")
        self.widget.resize(700, 500)
        self.widget.show()

    @staticmethod
    def _add(history: dict[str, list[tuple[int, float]]], x: int, logs: Any, skip: tuple[str, ...]) -> None:
        for key, value in (logs or {}).items():
            if key in skip:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            history.setdefault(key, []).append((x, number))

    def _refresh(self) -> None:
        for which, plot, history in (
            ("batch", self.batch_plot, self.batch_history),
            ("epoch", self.epoch_plot, self.epoch_history),
        ):
            for key, points in history.items():
                curve = self._curves.get((which, key))
                if curve is None:
                    color = _COLORS[len([k for k in self._curves if k[0] == which]) % len(_COLORS)]
                    curve = plot.plot(
                        name=key, pen=pg.mkPen(color, width=2), symbol="o" if which == "epoch" else None
                    )
                    self._curves[(which, key)] = curve
                curve.setData([p[0] for p in points], [p[1] for p in points])
        if self._process_events:
            QtWidgets.QApplication.processEvents()
