"""The viewer window, headless (QT_QPA_PLATFORM=offscreen): real mouse events for hover, click and
double-click, search, mode toggle, side panel, profiler heat map, NaN highlight, training curves, export."""

from __future__ import annotations

import numpy as np
import pytest

import asg.core as ag
from asg.viz import RunData
from asg.viz.drawing import HIGHLIGHT, NONFINITE, SELECTED
from asg.viz.model import FAMILY_COLORS

pytestmark = pytest.mark.usefixtures("qapp")


@pytest.fixture(scope="module")
def run(gpt):
    step, feeds = gpt
    return RunData.collect(step, *feeds)


@pytest.fixture
def viewer(gpt, run, qapp):
    from asg.viz.window import Viewer

    step, _ = gpt
    w = Viewer(step.graph, run=run, mode="both")
    w.resize(1200, 800)
    w.show()
    w.wait_layout()
    yield w
    w.close()
    w.deleteLater()
    qapp.processEvents()


def _viewport_pos(w, key):
    from pyqtgraph.Qt import QtWidgets

    w.centre_on(key)
    QtWidgets.QApplication.processEvents()
    item = w.box_items[w.visible.rep.get(key, key) if isinstance(key, int) else key]
    return w.view.mapFromScene(item.mapToScene(item.boundingRect().center()))


def test_scene_has_a_box_per_visible_item_and_the_edges(viewer):
    assert set(viewer.box_items) == set(viewer.visible.items)
    assert viewer.drawing is not None and len(viewer.drawing.edges) >= len(viewer.visible.edges)
    groups = [k for k in viewer.visible.items if isinstance(k, str)]
    assert "f:transformer.h.0" in viewer.visible.frames or "f:transformer.h.0" in groups


def test_real_mouse_hover_click_and_double_click(viewer, gpt):
    from pyqtgraph.Qt import QtCore, QtTest, QtWidgets

    step, _ = gpt
    wte = next(n for n in step.graph.nodes if n.name == "transformer.wte.weight")
    viewer.expand("f:transformer.wte")
    viewer.wait_layout()
    pos = _viewport_pos(viewer, wte.id)
    QtTest.QTest.mouseMove(viewer.view.viewport(), pos)
    QtWidgets.QApplication.processEvents()
    assert viewer.hovered == wte.id
    text = viewer.hover_label.text()
    assert "parameter" in text and "f32[29,16]" in text and "transformer.wte" in text
    assert "min " in text and "std " in text  # value statistics after a run

    QtTest.QTest.mouseClick(viewer.view.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=pos)
    QtWidgets.QApplication.processEvents()
    assert viewer.selected == wte.id
    strokes = {b.key: b.stroke for b in viewer.drawing.boxes}
    assert strokes[wte.id] == SELECTED
    lit = viewer.model.descendants(wte.id)
    assert any(strokes.get(viewer.visible.rep[k]) == HIGHLIGHT for k in lit if k in viewer.visible.rep)
    unrelated = [
        b for b in viewer.drawing.boxes if isinstance(b.key, int) and b.key not in lit and b.key != wte.id
    ]
    assert unrelated and all(b.dimmed for b in unrelated)

    # a double click on a collapsed group opens it
    viewer.collapse("f:transformer.h.1")
    viewer.wait_layout()
    assert "f:transformer.h.1" in viewer.visible.items
    pos = _viewport_pos(viewer, "f:transformer.h.1")
    left = QtCore.Qt.MouseButton.LeftButton
    QtTest.QTest.mouseDClick(viewer.view.viewport(), left, pos=pos)
    QtTest.QTest.mouseRelease(viewer.view.viewport(), left, pos=pos)  # pyqtgraph sends clicks on release
    QtWidgets.QApplication.processEvents()
    viewer.wait_layout()
    assert "f:transformer.h.1" in viewer.visible.frames


def test_search_reveals_and_centres_on_a_node(viewer, gpt):
    step, _ = gpt
    target = next(n for n in step.graph.nodes if n.name == "transformer.h.1.resid_mlp")
    viewer.collapse_all()
    viewer.wait_layout()
    assert target.id not in viewer.visible.items
    matches = viewer.search("h.1.resid_mlp")
    viewer.wait_layout()
    assert matches[0] == target.id and viewer.selected == target.id
    assert target.id in viewer.visible.items  # its groups were opened
    view_rect = viewer.viewbox.viewRect()
    cx, cy = viewer.layout_result.boxes[target.id].center
    assert view_rect.contains(cx, cy)
    assert viewer.search("no-such-node") == [] and "no match" in viewer.search_label.text()
    by_op = viewer.search("softmax")
    assert len(by_op) == sum(1 for n in step.graph.nodes if "softmax" in n.op)  # softmax and log_softmax


def test_mode_toggle_forward_gradient_both(viewer):
    roles = {k: n.role for k, n in viewer.model.nodes.items()}
    viewer.mode_box.setCurrentText("forward")  # the toolbar's combo box, as a user would
    viewer.wait_layout()
    assert viewer.mode == "forward" and all(roles[k] == "forward" for k in viewer.visible.rep)
    viewer.set_mode("gradient")
    viewer.wait_layout()
    assert viewer.visible.rep and all(roles[k] != "forward" for k in viewer.visible.rep)
    viewer.set_mode("both")
    viewer.wait_layout()
    assert set(viewer.visible.rep) == set(roles)
    assert viewer.drawing.links  # gradient groups/nodes linked to what they differentiate
    with pytest.raises(ValueError, match="mode must be one of forward, gradient, both"):
        viewer.set_mode("sideways")


def test_side_panel_links_histogram_and_gradient_link(viewer, gpt):
    from pyqtgraph.Qt import QtCore

    step, _ = gpt
    param = next(n for n in step.graph.nodes if n.name == "transformer.h.0.attn.c_attn.weight")
    viewer.reveal(param.id)
    viewer.wait_layout()
    html = viewer.details.toHtml()
    users = viewer.model.nodes[param.id].users
    assert users and all(f'href="node:{u}"' in html for u in users)
    curves = viewer.histogram.getPlotItem().listDataItems()
    assert curves and sum(curves[0].yData) == param.data.value.size  # every value in a bin
    viewer._on_link(QtCore.QUrl(f"node:{users[0]}"))  # what clicking the link does
    viewer.wait_layout()
    assert viewer.selected == users[0]
    grad = next(k for k, n in viewer.model.nodes.items() if n.grad_of is not None)
    viewer.reveal(grad)
    viewer.wait_layout()
    assert "gradient of" in viewer.describe(grad) and "differentiates" in viewer.details.toPlainText()
    box = viewer.layout_result.boxes[grad]
    assert (box.x, box.y + box.h / 2) in [start for start, _ in viewer.drawing.links]  # its dashed link


def test_profiler_tables_and_heat_map(viewer, run):
    assert viewer.slowest.rowCount() > 0 and viewer.by_op.rowCount() > 0
    families = [viewer.memory.item(r, 0).text() for r in range(viewer.memory.rowCount())]
    assert "linalg" in families and "(peak)" in families
    slowest = max(run.profile.nodes, key=lambda t: t.seconds)
    assert viewer.slowest.item(0, 3).text() == slowest.name
    viewer.expand_all()
    viewer.wait_layout()
    viewer.set_colouring("time")
    fills = {b.key: b.fill for b in viewer.drawing.boxes}
    key = slowest.node_id
    assert viewer.model.nodes[key].printed == slowest.name
    from pyqtgraph.Qt import QtGui

    lightness = {k: QtGui.QColor(c).lightnessF() for k, c in fills.items()}
    assert lightness[key] == min(lightness.values())  # the slowest node is the darkest
    viewer.slowest.cellDoubleClicked.emit(0, 0)
    assert viewer.selected == key


def test_nonfinite_node_is_outlined(qapp):
    from asg.viz.window import Viewer

    x = ag.input("x", (3,))
    with ag.scope("blk"):
        y = ag.sqrt(x - 1.0).named("root")
    f = ag.compile((y * 2.0).sum())
    run = RunData.collect(f, np.array([2.0, 0.0, 5.0], "float32"))
    w = Viewer(f.graph, run=run, mode="forward")
    w.wait_layout()
    key = w.model.by_printed()["root"]
    assert run.nonfinite == key
    strokes = {b.key: b.stroke for b in w.drawing.boxes}
    assert strokes[w.visible.rep[key]] == NONFINITE
    assert "first non-finite" in w.details.toPlainText().lower() or "NaN check" in w.details.toPlainText()
    w.close()


def test_export_png_and_svg_from_the_window(viewer, tmp_path, gpt):
    from pyqtgraph.Qt import QtGui

    step, _ = gpt
    png, svg = tmp_path / "g.png", tmp_path / "g.svg"
    viewer.export(str(png))
    image = QtGui.QImage(str(png)).convertToFormat(QtGui.QImage.Format.Format_RGB888)
    assert image.width() > 500 and image.height() > 500
    assert abs(image.width() - (viewer.layout_result.width + 40)) <= 2  # the whole laid-out graph
    pixels = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    pixels = pixels[:, : 3 * image.width()].reshape(image.height(), image.width(), 3).astype(int)
    for family in ("parameter", "linalg", "input"):
        wanted = QtGui.QColor(FAMILY_COLORS[family])
        close = np.abs(pixels - [wanted.red(), wanted.green(), wanted.blue()]).sum(axis=2) < 8
        assert close.sum() > 200, family  # boxes are painted in their op family's colour
    viewer.expand_all()
    viewer.wait_layout()
    viewer.export(str(svg))
    text = svg.read_text()
    expected = {(x.id, n.id, i) for n in step.graph.nodes for i, x in enumerate(n.inputs)}
    found = {ref for refs in text.split('data-edges="')[1:] for ref in refs.split('"')[0].split()}
    assert found == {f"{a}>{b}#{i}" for a, b, i in expected}
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        viewer.export(str(tmp_path / "g.jpg"))


def test_live_view_plots_batches_and_epochs(qapp):
    from asg.viz import LiveView

    live = LiveView()
    live.set_trainer(object())
    live.on_train_begin({})
    for epoch in range(2):
        live.on_epoch_begin(epoch, {})
        for batch in range(3):
            live.on_batch_begin(batch, {"batch": batch, "size": 4})
            live.on_batch_end(batch, {"batch": batch, "size": 4, "loss": 1.0 / (1 + batch + 3 * epoch)})
        live.on_epoch_end(epoch, {"loss": 0.5 / (1 + epoch), "val_loss": 0.6 / (1 + epoch), "note": "text"})
    live.on_train_end({})
    assert [x for x, _ in live.batch_history["loss"]] == list(range(6))
    assert sorted(live.epoch_history) == ["loss", "val_loss"]  # non-numeric entries are skipped
    curve = live._curves[("epoch", "val_loss")]
    assert list(curve.yData) == pytest.approx([0.6, 0.3])
    live.widget.close()


def test_a_5000_node_step_opens_as_blocks_and_stays_responsive(qapp):
    import time

    from pyqtgraph.Qt import QtCore

    from asg.viz.examples import gpt_training_step
    from asg.viz.window import Viewer

    step, _ = gpt_training_step(n_layer=30, n_embd=8, n_head=2, vocab=11, block=4)
    assert len(step.graph.nodes) > 5000
    ticks = []
    timer = QtCore.QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(5)
    start = time.perf_counter()
    w = Viewer(step.graph, mode="both")  # the layout starts on a worker thread
    constructed = time.perf_counter() - start
    w.wait_layout()
    shown = time.perf_counter() - start
    timer.stop()
    assert ticks  # the event loop ran while the layout was computed
    assert constructed < 5.0 and shown < 15.0, (constructed, shown)
    assert len(w.box_items) <= 100
    assert {f"f:transformer.h.{i}" for i in range(30)} <= set(w.visible.items)  # one box per block
    w.expand("f:transformer.h.7")
    w.wait_layout()
    assert "f:transformer.h.7" in w.visible.frames
    w.close()


def test_live_view_as_an_asg_nn_fit_callback(qapp):
    nn = pytest.importorskip("asg.nn")  # only this test uses asg-nn; asg-viz never imports it
    from asg.viz import LiveView

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 2)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    live = LiveView()
    history = nn.fit(
        model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.5), batches, epochs=3,
        val_batches=[(x[:64], y[:64])], callbacks=[live], progress=False,
    )  # fmt: skip
    assert [v for _, v in live.epoch_history["loss"]] == pytest.approx(history["loss"])
    assert [v for _, v in live.epoch_history["val_loss"]] == pytest.approx(history["val_loss"])
    assert len(live.batch_history["loss"]) == 3 * len(batches)
    assert list(live._curves[("epoch", "loss")].yData) == pytest.approx(history["loss"])
    live.widget.close()
