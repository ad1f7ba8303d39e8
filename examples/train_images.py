"""Train a zoo image classifier on MNIST, Fashion-MNIST or CIFAR-10 from local files (or the bundled digits).

    python examples/train_images.py --dataset mnist --data-dir .data/mnist --model lenet5 --epochs 3
    python examples/train_images.py --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist
    python examples/train_images.py --dataset cifar10 --data-dir cifar-10-batches-bin --model resnet18

The same as `asg-zoo train MODEL --dataset NAME ...`: nothing is downloaded (scripts/fetch_test_data.sh
fetches MNIST; the loaders' errors say where to get the others). Prints "test accuracy: NN.NN%" at the end.
"""

from __future__ import annotations

import argparse

from asg.zoo.cli import run


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=["digits", "mnist", "fashion-mnist", "cifar10"])
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--model", default="lenet5", choices=["mlp", "lenet5", "resnet18", "resnet34", "resnet50", "vit"]
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--out", default=None, help="checkpoint directory (default runs/<dataset>-<model>)")
    a = p.parse_args(argv)
    args = [
        "train",
        a.model,
        "--dataset",
        a.dataset,
        "--epochs",
        str(a.epochs),
        "--batch-size",
        str(a.batch_size),
    ]
    args += ["--lr", str(a.lr), "--backend", a.backend, "--out", a.out or f"runs/{a.dataset}-{a.model}"]
    if a.data_dir:
        args += ["--data-dir", a.data_dir]
    return run(args)


if __name__ == "__main__":
    main()
