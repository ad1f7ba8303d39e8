"""The asg-viz command line, in a subprocess: export without a window, exit codes, clean Qt shutdown."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from asg.viz import cli


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run(
        [sys.executable, "-m", "asg.viz.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_export_png_and_svg_of_a_saved_graph_exits_cleanly(gpt, tmp_path):
    step, _ = gpt
    graph_file = tmp_path / "gpt.json"
    graph_file.write_text(step.graph.to_json(include_data=False))
    for out in ("g.svg", "g.png"):
        proc = _run(str(graph_file), "--export", out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "Fatal" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert f"wrote {out}" in proc.stdout
    svg = (tmp_path / "g.svg").read_text()
    assert svg.startswith("<?xml") and svg.rstrip().endswith("</svg>")
    assert svg.count('class="group"') >= 2  # opened as the window opens: blocks as boxes
    png = (tmp_path / "g.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_expand_all_export_of_a_bundle_draws_every_input_edge(gpt, tmp_path):
    step, _ = gpt
    step.save(tmp_path / "step.asg")
    proc = _run("step.asg", "--export", "d.svg", "--expand-all", "--mode", "both", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    svg = (tmp_path / "d.svg").read_text()
    assert 'class="group"' not in svg  # every group open
    assert svg.count('class="edge"') == sum(len(n.inputs) for n in step.graph.nodes)
    assert svg.count('class="node"') == len(step.graph.nodes)


def test_errors_exit_with_status_2_and_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    proc = _run("bad.json", "--export", "x.svg", cwd=tmp_path)
    assert proc.returncode == 2
    assert "bad.json" in proc.stderr and "not valid JSON" in proc.stderr
    proc = _run("missing.json", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "asg-viz: no such file 'missing.json'"
    proc = _run("a.json", "--demo", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "give one of" in proc.stderr


def test_zoo_without_asg_zoo_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "asg.zoo", None)  # import asg.zoo now raises ImportError
    with pytest.raises(SystemExit, match="--zoo needs asg-zoo, which is not installed"):
        cli.main(["--zoo", "gpt"])


def test_importing_asg_viz_loads_no_qt_and_no_asg_nn():
    code = (
        "import sys, asg.viz, asg.viz.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph') or m.startswith(('asg.nn', 'asg.zoo'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zoo_flag_exports_a_zoo_models_training_graph(tmp_path):
    pytest.importorskip("asg.zoo")
    out = tmp_path / "lenet.svg"
    proc = subprocess.run(
        [sys.executable, "-m", "asg.viz.cli", "--zoo", "lenet5", "--export", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Fatal" not in proc.stderr
    assert out.stat().st_size > 1000 and out.read_text().count('class="edge"') > 20
