"""Fixtures for the asg-viz tests: headless Qt, and a GPT-like training step built from asg.core ops."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

pytest.importorskip("pyqtgraph")
pytest.importorskip("igraph")

from asg.viz.examples import gpt_training_step


@pytest.fixture(scope="session")
def gpt():
    """(step, feeds) of a 2-block GPT-like training step: forward, gradient and update nodes, scopes."""
    return gpt_training_step(n_layer=2)


@pytest.fixture(scope="session")
def qapp():
    from asg.viz.qt import application, shutdown

    app = application(headless=True)
    yield app
    shutdown()
