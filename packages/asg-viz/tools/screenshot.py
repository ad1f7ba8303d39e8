"""Take a screenshot of the real asg-viz window on a GPT-like training step (run by screenshot.sh under Xvfb).

The window is opened on the X display in $DISPLAY (QT_QPA_PLATFORM=xcb), one step is profiled and its
values captured, a node is selected, and the whole X screen is grabbed (what a person would see).

    python tools/screenshot.py OUT.png
"""

from __future__ import annotations

import os
import sys

from pyqtgraph.Qt import QtCore, QtWidgets

from asg.viz import RunData
from asg.viz.examples import gpt_training_step
from asg.viz.qt import application, shutdown
from asg.viz.window import Viewer


def main(out: str) -> int:
    if not os.environ.get("DISPLAY"):
        print("screenshot.py: no $DISPLAY; run tools/screenshot.sh (it starts Xvfb)", file=sys.stderr)
        return 2
    app = application()
    step, feeds = gpt_training_step(n_layer=2)
    window = Viewer(
        step.graph, run=RunData.collect(step, *feeds), mode="both", title="asg-viz: GPT training step"
    )
    window.setGeometry(0, 0, 1600, 1000)
    window.show()
    window.wait_layout()
    window.search("transformer.h.0.attn.c_attn.weight")
    window.wait_layout()
    window.set_colouring("family")
    window.tabs.setCurrentIndex(0)
    window.viewbox.setRange(QtCore.QRectF(-20, -20, 1300, 1150), padding=0)
    for _ in range(30):  # let the window map and paint
        app.processEvents()
        QtCore.QThread.msleep(30)
    image = app.primaryScreen().grabWindow(0)  # the X root window: the real screen
    image = image.copy(0, 0, 1600, 1000).scaledToWidth(
        1200, QtCore.Qt.TransformationMode.SmoothTransformation
    )
    if not image.save(out, "PNG"):
        print(f"screenshot.py: could not write {out}", file=sys.stderr)
        return 1
    print(f"screenshot.py: wrote {out} ({os.path.getsize(out)} bytes, {image.width()}x{image.height()})")
    del window
    shutdown()
    QtWidgets.QApplication.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "screenshot.png"))
