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


def test_export_a_trained_lenet_to_onnx_and_an_inference_bundle(tmp_path, capsys):
    import numpy as np

    import asg.core as ag
    from asg.zoo.cli import _restore, load_dataset

    out = tmp_path / "run"
    run(["train", "lenet5", "--dataset", "digits", "--epochs", "1", "--out", str(out), "--no-progress"])
    onnx_file, bundle_file = tmp_path / "lenet.onnx", tmp_path / "lenet.asg"
    result = run(
        ["export", "lenet5", "--weights", str(out), "--onnx", str(onnx_file), "--bundle", str(bundle_file)]
    )
    text = capsys.readouterr().out
    assert f"wrote {onnx_file}" in text and f"wrote {bundle_file}" in text
    ds = load_dataset("digits")
    images = ds["x_test"][:7]  # a batch size the exported files never saw
    assert "pixels in [0, 1]" in text

    model, _ = _restore(out)
    model.eval()
    x = ag.input("x", ("B", 1, 8, 8))
    want = ag.compile(model(x), inputs=[x])(images)
    # the files take the images as load_digits(as_float=True) gives them: the training standardisation
    # is inside (fed standardised images, as before, a user got ~90% instead of ~98% test accuracy)
    images = (images * ds["std"] + ds["mean"]).astype(np.float32)
    assert images.min() >= -1e-6 and images.max() <= 1 + 1e-6

    loaded = ag.load(bundle_file)  # the forward graph alone: no optimizer state, no gradient nodes
    np.testing.assert_allclose(loaded(images), want, rtol=1e-5, atol=1e-6)
    assert not any("grad_of" in n.meta for n in loaded.graph.nodes)
    assert len(loaded.graph.nodes) == result["nodes"]

    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": images})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_export_needs_an_output_and_a_matching_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="give --onnx FILE, --bundle FILE or both"):
        run(["export", "lenet5"])
    out = tmp_path / "run"
    run(["train", "mlp", "--dataset", "digits", "--epochs", "1", "--out", str(out), "--no-progress"])
    with pytest.raises(SystemExit, match="holds a mlp checkpoint"):
        run(["export", "lenet5", "--weights", str(out), "--bundle", str(tmp_path / "x.asg")])


def test_export_onnx_without_the_onnx_package_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real_find_spec(name, *a)
    )
    onnx_file = tmp_path / "lenet.onnx"
    with pytest.raises(SystemExit, match=r"onnx package is not installed: `pip install onnx`"):
        run(["export", "lenet5", "--onnx", str(onnx_file)])
    assert not onnx_file.exists()
    run(["export", "lenet5", "--bundle", str(tmp_path / "lenet.asg")])  # the bundle needs no onnx
    assert (tmp_path / "lenet.asg").is_file()


def test_cifar10_without_data_dir_asks_for_it(tmp_path):
    with pytest.raises(SystemExit, match=r"--dataset cifar10 reads local files: pass --data-dir DIR"):
        run(["train", "lenet5", "--dataset", "cifar10", "--epochs", "1", "--out", str(tmp_path / "r")])


def test_default_out_is_per_model_and_resume_refuses_another_models_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(["train", "mlp", "--dataset", "digits", "--epochs", "1", "--no-progress"])
    run(["train", "lenet5", "--dataset", "digits", "--epochs", "1", "--no-progress"])
    assert run(["eval", "runs/mlp-digits"]) > 0.5 and run(["eval", "runs/lenet5-digits"]) > 0.3
    # both went to runs/asg-zoo, where `train mlp --resume` met lenet5's weights (a StateDictError)
    with pytest.raises(
        SystemExit, match=r"runs/mlp-digits/ckpt-\d+\.safetensors holds a mlp checkpoint on digits"
    ):
        run(
            [
                "train",
                "lenet5",
                "--dataset",
                "digits",
                "--out",
                "runs/mlp-digits",
                "--resume",
                "--no-progress",
            ]
        )


def test_training_graph_is_a_whole_training_step():
    import numpy as np

    from asg.zoo import training_graph

    fn = training_graph("lenet5")
    assert [n.name for n in fn.inputs] == ["x", "y"] and fn.inputs[0].shape == ("B", 1, 8, 8)
    assert fn.updates and any("grad_of" in n.meta for n in fn.graph.nodes)  # gradients and Adam updates
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 1, 8, 8)).astype("float32"), rng.integers(0, 10, 4)
    first, second = float(fn(x, y)[0]), float(fn(x, y)[0])
    assert second < first  # it trains
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        training_graph("alexnet")


def checkpoint_arrays(folder) -> dict:
    from asg import nn

    index = json.loads((folder / "checkpoints.json").read_text())
    return nn.load_state_dict(folder / index["entries"][-1]["file"])


def assert_same_arrays(a: dict, b: dict) -> None:
    import numpy as np

    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resumed_training_sees_the_batches_of_an_uninterrupted_run(tmp_path, capsys):
    # 2 epochs straight, and 1 epoch then --resume to 2: the same shuffle order and learning rates
    args = ["train", "mlp", "--dataset", "digits", "--no-progress", "--batch-size", "256"]
    run([*args, "--epochs", "2", "--out", str(tmp_path / "straight")])
    run([*args, "--epochs", "1", "--out", str(tmp_path / "resumed")])
    run([*args, "--epochs", "2", "--out", str(tmp_path / "resumed"), "--resume"])
    assert "after epoch 1" in capsys.readouterr().out
    assert_same_arrays(checkpoint_arrays(tmp_path / "straight"), checkpoint_arrays(tmp_path / "resumed"))


def test_resumed_gpt_training_continues_the_batch_stream(tmp_path):
    args = ["train", "gpt", "--dataset", "shakespeare", "--block-size", "8", "--batch-size", "2"]
    args += ["--n-embd", "8", "--n-layer", "1", "--n-head", "2", "--max-new-tokens", "1", "--no-progress"]
    run([*args, "--steps", "4", "--out", str(tmp_path / "straight")])
    run([*args, "--steps", "2", "--out", str(tmp_path / "resumed")])
    run([*args, "--steps", "4", "--out", str(tmp_path / "resumed"), "--resume"])
    assert_same_arrays(checkpoint_arrays(tmp_path / "straight"), checkpoint_arrays(tmp_path / "resumed"))


def test_train_vit_on_digits_takes_its_recipe_and_learns(tmp_path, capsys):
    acc = run(
        ["train", "vit", "--dataset", "digits", "--epochs", "4", "--out", str(tmp_path), "--no-progress"]
    )
    text = capsys.readouterr().out
    assert "AdamW lr 0.002 weight decay 0.05" in text  # ViT's defaults (the other models: Adam lr 0.003)
    assert acc > 0.5  # 10 classes; 4 epochs on 1,437 images
    run(["train", "vit", "--dataset", "digits", "--epochs", "0", "--lr", "1e-3", "--weight-decay", "0",
         "--out", str(tmp_path / "adam")])  # fmt: skip
    assert "Adam lr 0.001, backend" in capsys.readouterr().out
