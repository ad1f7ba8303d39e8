"""The asg-zoo command line: train (checkpoints, resume, the final accuracy line), eval, generate, info."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from asg.zoo.cli import main, run


def test_train_eval_resume_lenet_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    acc = run(["train", "lenet5", "--dataset", "digits", "--epochs", "2", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    line = text.strip().splitlines()[-1]
    assert re.fullmatch(r"test accuracy: \d+\.\d\d%", line), text
    assert float(line.split()[-1][:-1]) == pytest.approx(100 * acc, abs=0.006)
    assert acc > 0.6  # two epochs on 1,437 images
    index = json.loads((out / "checkpoints.json").read_text())
    assert [e["file"] for e in index["entries"]] == ["ckpt-00000001.safetensors", "ckpt-00000002.safetensors"]
    assert run(["eval", str(out)]) == acc  # rebuilt from the checkpoint's config, same weights
    resumed = run(["train", "lenet5", "--dataset", "digits", "--epochs", "3", "--out", str(out), "--resume"])
    text = capsys.readouterr().out
    assert (
        "resumed from" in text and "after epoch 2" in text and "epoch 3/3" in text and "epoch 2/3" not in text
    )
    assert 0.0 < resumed <= 1.0
    assert [e["step"] for e in json.loads((out / "checkpoints.json").read_text())["entries"]] == [2, 3]


def test_train_gpt_then_generate_is_seeded(tmp_path, capsys):
    out = tmp_path / "gpt"
    args = [
        "train",
        "gpt",
        "--dataset",
        "shakespeare",
        "--steps",
        "3",
        "--block-size",
        "16",
        "--batch-size",
        "4",
    ]
    run([*args, "--n-embd", "16", "--n-layer", "1", "--out", str(out), "--max-new-tokens", "20"])
    text = capsys.readouterr().out
    assert re.search(r"^test accuracy \(next character\): \d+\.\d\d%$", text, re.M), text
    assert "sample:\nROMEO:\n" in text
    gen = ["generate", str(out), "--prompt", "KING", "--max-new-tokens", "12", "--top-k", "5", "--seed", "1"]
    a, b = run(gen), run(gen)
    assert a == b and a.startswith("KING") and len(a) == 16


def test_info_prints_parameters_nodes_and_flops(capsys):
    result = run(["info", "lenet5", "--dataset", "mnist"])
    text = capsys.readouterr().out
    assert result["parameters"] == 61_706  # LeNet-5 on 28x28 with padding 2: the classic count
    # conv1: 28*28*6 outputs x 25 taps, conv2: 10*10*16 x 150, fc: 400*120 + 120*84 + 84*10; x2
    assert result["flops"] == 2 * (28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10)
    assert "parameters: 61,706" in text and "conv2d 2" in text


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="--dataset must be one of shakespeare"):
        run(["train", "gpt", "--dataset", "digits", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such checkpoint"):
        run(["eval", str(tmp_path / "missing.safetensors")])
    with pytest.raises(SystemExit, match="backend 'nope' is not installed"):
        run(["eval", str(tmp_path), "--backend", "nope"])


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from asg.zoo.cli import main; sys.exit(main())", "info", "mlp"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert main(["info", "mlp"]) == 0
