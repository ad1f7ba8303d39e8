"""The asg-data README examples and the docstring examples of the data-pipeline modules really run."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "packages" / "asg-data" / "README.md"
PIPELINE_MODULES = [
    "asg.data",
    "asg.data._atomic",
    "asg.data.builtin",
    "asg.data.bundled",
    "asg.data.collate",
    "asg.data.datasets",
    "asg.data.errors",
    "asg.data.loader",
    "asg.data.samplers",
    "asg.data.transforms",
    "asg.data.formats",
    "asg.data.formats.cifar",
    "asg.data.formats.idx",
    "asg.data.formats.imagefolder",
]


def _blocks(name: str) -> list[str]:
    text = README.read_text()
    section = text[text.index(f"<!-- {name}-examples:start") : text.index(f"<!-- {name}-examples:end")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _pipeline_blocks() -> list[str]:
    return _blocks("pipeline")


def test_readme_pipeline_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _pipeline_blocks()
    assert len(blocks) >= 5
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in blocks:  # one namespace: later blocks use names from earlier ones, as a reader would
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "22"
    assert printed[1] == "(4, 4) [0 1 2 0] ['r0', 'r1', 'r2', 'r3']"
    assert printed[-2:] == ["(3, 28, 28) [7 2 1]", "(2, 32, 32, 3) [3 8]"]


def test_readme_text_and_metrics_examples_print_what_they_say(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _blocks("text") + _blocks("metrics")
    assert len(blocks) == 6
    expected = [m.group(1) for block in blocks for m in re.finditer(r"# -> (.*)$", block, flags=re.M)]
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert capsys.readouterr().out.splitlines() == expected
    assert len(expected) == 19


@pytest.mark.parametrize("module_name", PIPELINE_MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
