"""The documentation site: docs/ built by MkDocs (strict), its tutorials run, its PyTorch page's code runs."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs", reason="the docs tools (mkdocs, mkdocstrings-python) are not installed")
pytest.importorskip("griffe", reason="griffe (from mkdocstrings-python) is not installed")
sys.path.insert(0, str(ROOT / "docs"))

from griffe_exports import fence_doctests, static_all  # noqa: E402

PACKAGES = ["core", "data", "nn", "viz", "zoo"]


@pytest.mark.parametrize("package", PACKAGES)
def test_static_all_matches_the_runtime_all(package: str) -> None:
    init = ROOT / "packages" / f"asg-{package}" / "src" / "asg" / package / "__init__.py"
    assert static_all(init) == list(importlib.import_module(f"asg.{package}").__all__)


def test_fence_doctests_wraps_each_run_of_prompts() -> None:
    text = "Add.\n\nExample:\n    >>> 1 + 1\n    2\n\n    >>> x = 3\n\nDone."
    assert fence_doctests(text) == (
        "Add.\n\nExample:\n    ```pycon\n    >>> 1 + 1\n    2\n    ```\n\n    ```pycon\n    >>> x = 3\n    ```\n\nDone."
    )


@pytest.mark.parametrize("page", ["pytorch.md", "index.md", "architecture.md"])
def test_python_blocks_of_the_pages_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/{page}[block {i}]", "exec"), {})
    if page == "pytorch.md":
        out = capsys.readouterr().out
        assert "('B', 6, 2, 1)" in out
        assert "last loss below 0.5: True" in out and "same predictions: True" in out


def test_every_nav_page_and_tutorial_exists() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    for page in re.findall(r":\s+(\S+\.md)$", config, re.M):
        assert (ROOT / "docs" / page).exists(), page
    for md in (ROOT / "docs" / "tutorials").glob("*.md"):
        (name,) = re.findall(r"<!-- tutorial: (\S+\.py)", md.read_text())
        assert (ROOT / "docs" / "tutorials" / name).exists(), (md.name, name)


@pytest.mark.slow
def test_site_builds_strict_with_the_tutorials(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    site = tmp_path / "site"
    graph = (site / "tutorials" / "graph" / "index.html").read_text()
    assert "finite differences agree: True" in graph and "loaded function agrees: True" in graph
    assert "test accuracy" in (site / "tutorials" / "mnist" / "index.html").read_text()
    assert "--- sample ---" in (site / "tutorials" / "gpt" / "index.html").read_text()
    assert "loss on numpy: 3.0" in (site / "tutorials" / "gpu" / "index.html").read_text()
    assert (site / "tutorials" / "gpt_step.png").stat().st_size > 10_000
    core = (site / "api" / "core" / "index.html").read_text()
    for name in ("asg.core.grad", "asg.core.compile", "asg.core.Tensor", "asg.core.matmul"):
        assert f'id="{name}"' in core, name
    assert 'id="asg.nn.Linear"' in (site / "api" / "nn" / "index.html").read_text()
    assert "flowchart TB" in (site / "architecture" / "index.html").read_text()
