"""Packaging checks for every member of the workspace (each ``packages/<name>/pyproject.toml``).

For each package: build its wheel and sdist as a release would, check that the wheel really holds the
package (a PEP 420 namespace package built with the wrong hatch settings gives a wheel with no modules
at all) and no ``asg/__init__.py``, then install the wheel ALONE in a fresh venv outside the workspace
and use it there: asg-core trains a small model, asg-data loads its bundled digits. The fresh venv must
not pull the GPU or viewer stacks (wgpu, Qt, pyqtgraph).

These tests are slow (pip, venvs) but run by default: they are the real check that the wheels work.
Everything they write lives under pytest's tmp_path.
"""

from __future__ import annotations

import email
import importlib.util
import os
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
NAMES = [p.name for p in PACKAGES]

# Distributions that must never be pulled in by a wheel installed alone (GPU and viewer stacks), except by
# the one package that exists to bring them: asg-gpu brings wgpu, asg-viz brings Qt and pyqtgraph.
HEAVY = ("wgpu", "pyside6", "pyqt5", "pyqt6", "pyqtgraph")
ALLOWED_HEAVY = {"asg-gpu": ("wgpu",), "asg-viz": ("pyside6", "pyqtgraph")}


def forbidden(name: str) -> tuple[str, ...]:
    """The heavy distributions that package ``name`` must not pull in."""
    return tuple(h for h in HEAVY if h not in ALLOWED_HEAVY.get(name, ()))


# What each package's wheel must do once installed alone; a package without an entry is imported.
SMOKE = {
    "asg-core": """
        import numpy as np

        import asg.core as ag

        rng = np.random.default_rng(0)
        xs = rng.normal(size=(128, 4)).astype("float32")
        ys = ((xs[:, 0] > 0).astype("int64") + (xs[:, 1] > 0).astype("int64"))  # 3 classes

        x = ag.input("x", ("B", 4))
        y = ag.input("y", ("B",), dtype="int64")
        w = ag.parameter(rng.normal(size=(4, 3)).astype("float32") * 0.1, name="w")
        b = ag.parameter(np.zeros(3, "float32"), name="b")
        loss = ag.cross_entropy(x @ w + b, y)
        gw, gb = ag.grad(loss, [w, b])
        step = ag.compile([loss], inputs=[x, y], updates={w: w - 0.5 * gw, b: b - 0.5 * gb})

        losses = [float(step(xs, ys)[0]) for _ in range(60)]
        print("loss", losses[0], "->", losses[-1])
        assert np.isfinite(losses).all(), losses
        assert losses[-1] < 0.6 * losses[0], losses
        assert w.numpy().shape == (4, 3)
    """,
    "asg-data": """
        import numpy as np

        import asg.data

        images, labels = asg.data.load_digits()  # bundled in the wheel
        assert images.shape == (1797, 8, 8) and labels.shape == (1797,), (images.shape, labels.shape)
        loader = asg.data.DataLoader(asg.data.InMemoryDataset(images, labels), batch_size=256, shuffle=True, seed=0)
        seen = sorted(int(i) for _, y in loader for i in y)
        assert seen == sorted(labels.tolist())
    """,
    "asg-nn": """
        import numpy as np

        import asg.core as ag
        from asg import nn

        rng = np.random.default_rng(0)
        xs = rng.normal(size=(128, 4)).astype("float32")
        ys = ((xs[:, 0] > 0).astype("int64") + (xs[:, 1] > 0).astype("int64"))
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        step = nn.compile_train_step(model, nn.CrossEntropyLoss(), nn.optim.Adam(model.parameters(), lr=0.05))
        losses = [float(step(xs, ys)) for _ in range(40)]
        assert losses[-1] < 0.6 * losses[0], losses
    """,
    "asg-gpu": """
        import asg.core as ag
        import asg.gpu

        assert "wgpu" in ag.available_backends(), ag.available_backends()
    """,
    "asg-viz": """
        import asg.core as ag
        from asg.viz import GraphModel, build_drawing, compute_layout, to_svg

        x = ag.input("x", ("B", 3))
        model = GraphModel(ag.Graph([(x * x).relu().sum().node]))
        visible = model.visible("forward", set())
        svg = to_svg(build_drawing(model, visible, compute_layout(visible)))
        assert svg.count('class="edge"') == 4, svg  # x read twice, then relu, then sum
    """,
}


def _module_dir(pkg: Path) -> str:
    """``packages/asg-core`` -> ``asg/core``: the import path the package owns."""
    return pkg.name.replace("-", "/", 1)


def _run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"command failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def _source_files(pkg: Path) -> set[str]:
    """Files under src/asg/<name>, relative to src/, as they should appear in the wheel."""
    src = pkg / "src"
    top = src / _module_dir(pkg)
    return {
        p.relative_to(src).as_posix()
        for p in top.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }


def _no_isolation() -> list[str]:
    """Build with the hatchling installed here (scripts/test.sh installs it) rather than in a fresh
    isolated build env per build: each isolated env is another index resolution, which is slow."""
    return [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every member's wheel, plus the wheels of their dependencies (numpy, ...) from the index.

    One `pip wheel` call resolves everything once; the fresh venvs below then install from this
    directory alone (`--no-index`), so what they get is exactly what a member's metadata asks for.
    """
    out = tmp_path_factory.mktemp("wheelhouse")
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", *_no_isolation(), "-w", out, *PACKAGES)
    return out


@pytest.fixture(scope="module")
def wheels(wheelhouse: Path) -> dict[str, Path]:
    built = {}
    for name in NAMES:
        found = list(wheelhouse.glob(name.replace("-", "_") + "-*.whl"))
        assert len(found) == 1, f"expected one wheel for {name} in {sorted(wheelhouse.iterdir())}"
        built[name] = found[0]
    return built


@pytest.fixture(scope="module")
def sdists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed (scripts/test.sh installs it)")
    out = tmp_path_factory.mktemp("sdists")
    no_isolation = ["--no-isolation"] if _no_isolation() else []
    for pkg in PACKAGES:
        _run(sys.executable, "-m", "build", "--sdist", *no_isolation, "--outdir", out, pkg)
    built = {}
    for name in NAMES:
        found = list(out.glob(name.replace("-", "_") + "-*.tar.gz"))
        assert len(found) == 1, f"expected one sdist for {name} in {sorted(out.iterdir())}"
        built[name] = found[0]
    return built


@pytest.mark.parametrize("name", NAMES)
def test_wheel_holds_the_package(name: str, wheels: dict[str, Path]) -> None:
    pkg = ROOT / "packages" / name
    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    mod = _module_dir(pkg)
    with zipfile.ZipFile(wheels[name]) as zf:
        files = set(zf.namelist())
        dist_info = f"{name.replace('-', '_')}-{project['version']}.dist-info"
        metadata = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
        wheel_info = email.message_from_bytes(zf.read(f"{dist_info}/WHEEL"))

    code = {f for f in files if not f.startswith(dist_info + "/")}
    assert f"{mod}/__init__.py" in code, f"{wheels[name].name} holds no {mod}/__init__.py: {sorted(files)}"
    assert f"{mod}/py.typed" in code
    assert "asg/__init__.py" not in code, "asg is a namespace package: no wheel may ship asg/__init__.py"
    assert code == _source_files(pkg), (
        f"{wheels[name].name} differs from src/{mod}: "
        f"missing {sorted(_source_files(pkg) - code)}, extra {sorted(code - _source_files(pkg))}"
    )
    assert metadata["Name"] == name
    assert metadata["Requires-Python"] == ">=3.11"
    assert wheel_info.get_all("Tag") == ["py3-none-any"], wheel_info.get_all("Tag")
    requires = [r.lower() for r in metadata.get_all("Requires-Dist") or []]
    assert not [r for r in requires if r.startswith(forbidden(name)) and "extra ==" not in r], requires
    assert not any(r.split(";")[0].strip() == "asg" for r in requires), "never depend on the bare `asg`"


@pytest.mark.parametrize("name", NAMES)
def test_sdist_holds_the_sources(name: str, sdists: dict[str, Path]) -> None:
    pkg = ROOT / "packages" / name
    with tarfile.open(sdists[name]) as tf:
        top = tf.getnames()[0].split("/")[0]
        files = {n.removeprefix(top + "/") for n in tf.getnames() if not tf.getmember(n).isdir()}
    expected = {"pyproject.toml", "PKG-INFO", "README.md"} | {f"src/{f}" for f in _source_files(pkg)}
    if (pkg / "CHANGELOG.md").is_file():
        expected.add("CHANGELOG.md")
    assert expected <= files, f"{sdists[name].name} lacks {sorted(expected - files)}"
    assert "src/asg/__init__.py" not in files
    assert not [f for f in files if f.startswith(("tests/", "tools/", ".venv"))], sorted(files)


@pytest.mark.parametrize("name", NAMES)
def test_wheel_installs_alone_and_works(name: str, wheels: dict[str, Path], tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    # A bare venv; this process's pip installs into it (`pip --python`), which spares an ensurepip run.
    venv.create(env_dir, with_pip=False, clear=True)
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check"]
    # Only this wheel is asked for; its dependencies (numpy, a sibling ASG package) come from the
    # wheelhouse, which holds just what the members' metadata pulled from the index.
    _run(*pip, "install", "--quiet", "--no-index", "--find-links", wheels[name].parent, wheels[name])

    installed = _run(*pip, "list", "--format=freeze").lower().splitlines()
    dists = {line.split("==")[0].replace("_", "-") for line in installed}
    assert name in dists
    assert not [d for d in dists if d.startswith(forbidden(name))], f"{name} pulled in {sorted(dists)}"

    mod = _module_dir(ROOT / "packages" / name).replace("/", ".")
    script = textwrap.dedent(SMOKE.get(name, f"import {mod}")) + textwrap.dedent(f"""
        import importlib.metadata, sys
        import {mod} as _m
        assert "site-packages" in _m.__file__, _m.__file__  # the wheel, not the checkout
        _v = getattr(_m, "__version__", None)
        assert _v in (None, importlib.metadata.version("{name}")), _v
        _heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("wgpu", "torch", "PySide6", "PyQt5", "PyQt6", "pyqtgraph"))  # importing never loads a heavy stack
        assert not _heavy, _heavy
    """)  # fmt: skip
    # -I: isolated mode, so neither the checkout (cwd) nor PYTHONPATH can shadow the installed wheel.
    _run(python, "-I", "-c", script, cwd=tmp_path)
