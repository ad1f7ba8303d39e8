"""MkDocs hooks of the ASG site (mkdocs.yml: ``hooks:``).

- Runs every tutorial script of docs/tutorials once per build (two at a time) and puts its source and
  captured output into the page at ``<!-- tutorial: NAME.py -->``; the figures a tutorial writes to
  $ASG_DOCS_OUT become files of the site. A tutorial that fails fails the build.
- Draws the packages at ``<!-- packages -->`` from their pyproject.toml dependencies, and the layering of asg-core at ``<!-- layering -->`` as a mermaid diagram, from the table that
  tests/core/test_layering.py enforces.
- Checks that every public name (``__all__``) of every package has a docstring, read statically by
  griffe; a missing one is a warning, so the strict build fails.

``ASG_DOCS_TUTORIALS=0`` skips running the tutorials (the pages then say so) for a quick local build.
"""

from __future__ import annotations

import ast
import itertools
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.asg")
ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
PACKAGES = ["core", "data", "nn", "gpu", "viz", "zoo"]
LAZY = {"asg.viz": {"Viewer": "asg.viz.window", "LiveView": "asg.viz.live"}}  # module __getattr__ names
_outputs: dict[str, str] = {}
_figures = Path(tempfile.mkdtemp(prefix="asg-docs-"))


def run_tutorial(name: str, out: Path, timeout: float = 120.0) -> str:
    """Run one tutorial script from the repository root; its stdout, or RuntimeError with its stderr."""
    env = {**os.environ, "ASG_DOCS_OUT": str(out), "PYTHONHASHSEED": "0", "XDG_RUNTIME_DIR": str(out)}
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(TUTORIALS / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tutorial {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    log.info("tutorial %s ran in %.1f s", name, time.perf_counter() - start)
    return proc.stdout


def on_pre_build(config: Any) -> None:
    _check_docstrings()
    names = sorted(p.name for p in TUTORIALS.glob("*.py"))
    if os.environ.get("ASG_DOCS_TUTORIALS", "1") == "0":
        _outputs.update({n: "(not run: ASG_DOCS_TUTORIALS=0)" for n in names})
        return
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, text in zip(names, pool.map(lambda n: run_tutorial(n, _figures), names), strict=True):
            _outputs[name] = text


def on_files(files: Files, config: Any) -> Files:
    for png in sorted(_figures.glob("*.png")):
        files.append(File.generated(config, f"tutorials/{png.name}", abs_src_path=str(png)))
    return files


def _fence(text: str, lang: str = "") -> str:
    ticks = "````" if "```" in text else "```"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def _tutorial_block(match: re.Match[str]) -> str:
    name, shown = match.group(1), match.group(2)
    parts = [f"`docs/tutorials/{name}`:", _fence((TUTORIALS / name).read_text(), "py")]
    if shown:
        parts += [f"It runs `{shown}`:", _fence((ROOT / shown).read_text(), "py")]
    parts += [
        f"Output of `python docs/tutorials/{name}` in this build:",
        _fence(_outputs.get(name, "(no output)"), "text"),
    ]
    return "\n\n".join(parts)


def layering_diagram() -> str:
    """A mermaid flowchart of asg-core's module layers, from tests/core/test_layering.py's LAYERS."""
    tree = ast.parse((ROOT / "tests" / "core" / "test_layering.py").read_text())
    layers: dict[str, int] = {}
    top = 0
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "LAYERS":
                layers = ast.literal_eval(node.value)
            elif node.targets[0].id == "TOP":
                top = ast.literal_eval(node.value)
    by_level: dict[int, list[str]] = {}
    for module, level in layers.items():
        by_level.setdefault(level, []).append(module)
    by_level[top] = ["function, passes, schedule, lowering, backends, bundle, export, testing, ..."]
    lines = ["flowchart TB"]
    levels = sorted(by_level)
    for level in levels:
        label = "<br>".join(sorted(by_level[level]) if level != top else by_level[level])
        lines.append(f'    L{level}["layer {level}: {label}"]')
    lines += [f"    L{b} --> L{a}" for a, b in itertools.pairwise(levels)]
    return _fence("\n".join(lines), "mermaid")


def package_diagram() -> str:
    """A mermaid graph of the packages, an edge per dependency on a sibling in its pyproject.toml."""
    lines = ["flowchart TB"]
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        name = project["name"]
        lines.append(f'    {name.replace("-", "_")}["{name}"]')
        for dep in project.get("dependencies", []):
            sibling = re.match(r"(asg-[a-z]+)", dep)
            if sibling:
                lines.append(f"    {name.replace('-', '_')} --> {sibling.group(1).replace('-', '_')}")
    return _fence("\n".join(lines), "mermaid")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    markdown = re.sub(r"<!-- tutorial: (\S+\.py)(?: shows (\S+))? -->", _tutorial_block, markdown)
    made = {png.name for png in _figures.glob("*.png")}
    markdown = re.sub(
        r"!\[[^\]]*\]\(([\w.-]+\.png)\)",
        lambda m: (
            m.group(0) if m.group(1) in made else f"(figure `{m.group(1)}` not made: tutorials not run)"
        ),
        markdown,
    )
    markdown = markdown.replace("<!-- packages -->", package_diagram())
    return markdown.replace("<!-- layering -->", layering_diagram())


def _check_docstrings() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    import griffe
    from griffe_exports import StaticAll

    paths = [str(ROOT / "packages" / f"asg-{p}" / "src") for p in PACKAGES]
    loader = griffe.GriffeLoader(search_paths=paths, extensions=griffe.Extensions(StaticAll()))
    modules = {p: loader.load(f"asg.{p}") for p in PACKAGES}
    loader.resolve_aliases(implicit=False, external=False)
    for package, module in modules.items():
        for name in map(str, module.exports or []):
            if name.startswith("__"):
                continue
            lazy = LAZY.get(module.path, {}).get(name)
            obj = loader.modules_collection[lazy].members.get(name) if lazy else module.members.get(name)
            if obj is None:
                log.warning("asg.%s.%s is in __all__ but not defined", package, name)
                continue
            target = obj.final_target if obj.is_alias else obj
            if not target.is_attribute and not target.docstring:
                log.warning("asg.%s.%s (%s) has no docstring", package, name, target.path)
