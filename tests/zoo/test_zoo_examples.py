"""The zoo's examples run as a user would run them (short settings; the full runs are in the README)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MINILM_DIR = Path(os.environ.get("ASG_MINILM_DIR") or REPO / ".data" / "all-minilm-l6-v2")


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_images_on_digits(tmp_path, capsys):
    acc = example("train_images").main(["--dataset", "digits", "--epochs", "3", "--batch-size", "64",
                                        "--lr", "3e-3", "--out", str(tmp_path)])  # fmt: skip
    assert acc > 0.85
    assert f"test accuracy: {acc:.2%}" in capsys.readouterr().out


def test_gpt_shakespeare_runs_and_samples(capsys):
    sample = example("gpt_shakespeare").main(["--steps", "2", "--block-size", "16", "--batch-size", "4"])
    assert sample.startswith("ROMEO:\n") and len(sample) == len("ROMEO:\n") + 300
    assert "step 2/2: loss" in capsys.readouterr().out


@pytest.mark.data
def test_sentence_embeddings_find_the_neighbours():
    if not (MINILM_DIR / "model.safetensors").is_file():
        pytest.skip(f"no all-MiniLM-L6-v2 files in {MINILM_DIR} (run scripts/fetch_test_data.sh)")
    best = example("sentence_embeddings").main(["--model-dir", str(MINILM_DIR)])
    assert best == [
        "A man is eating food.",
        "A monkey is playing drums.",
        "The stock market fell sharply today.",
    ]
