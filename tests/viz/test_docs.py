"""The docstring examples of asg.viz's modules run, and so does the README's export example."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "packages" / "asg-viz" / "README.md"
MODULES = [
    "asg.viz",
    "asg.viz.model",
    "asg.viz.layout",
    "asg.viz.drawing",
    "asg.viz.sources",
    "asg.viz.examples",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0


def test_readme_export_example_writes_the_svg(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    block = next(b for b in blocks if "asg.viz.export(" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {})
    svg = (tmp_path / "graph.svg").read_text()
    assert svg.count('class="node"') == 4 and svg.count('class="edge"') == 3  # x, 2.0, mul, relu
