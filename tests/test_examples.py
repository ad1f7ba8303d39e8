"""End-to-end: the examples in examples/ run as a user would run them and reach their accuracy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC_PATHS = [ROOT / "packages" / "asg-core" / "src", ROOT / "packages" / "asg-data" / "src"]


def run_example(script: str, *args: str, timeout: float = 600) -> str:
    """Run ``examples/<script>`` in a fresh interpreter and return its stdout (fails on a non-zero exit)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, SRC_PATHS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def final_accuracy(output: str) -> float:
    match = re.search(r"final test accuracy: ([0-9.]+)", output)
    assert match, f"no final accuracy in the output:\n{output}"
    return float(match.group(1))


@pytest.mark.slow
def test_train_digits_reaches_accuracy() -> None:
    out = run_example("train_digits.py", "--epochs", "4", "--seed", "0")
    assert out.count("epoch ") >= 4, out
    assert final_accuracy(out) >= 0.93, out


@pytest.mark.slow
def test_train_digits_is_reproducible() -> None:
    a = run_example("train_digits.py", "--epochs", "1", "--seed", "3")
    b = run_example("train_digits.py", "--epochs", "1", "--seed", "3")
    assert final_accuracy(a) == final_accuracy(b)
