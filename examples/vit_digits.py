"""Train a small Vision Transformer on the 8x8 UCI digits bundled with asg-data (2x2 patches, 2 layers).

    python examples/vit_digits.py [--epochs 15] [--hidden 48] [--layers 2]

Uses nn.fit with a cosine learning-rate schedule; prints "final test accuracy: 0.9xxx".
"""

from __future__ import annotations

import argparse

import numpy as np

from asg import nn
from asg.data import load_digits, train_test_split
from asg.zoo import ViT, ViTConfig


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--hidden", type=int, default=48)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    images, labels = load_digits(as_float=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images[:, None], labels, test_size=0.2, seed=args.seed, stratify=labels
    )
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    nn.init.manual_seed(args.seed)
    config = ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=4, intermediate_size=2 * args.hidden, num_labels=10,
    )  # fmt: skip
    model = ViT(config)
    opt = nn.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = nn.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    batches = [(x_train[i : i + 64], y_train[i : i + 64]) for i in range(0, len(y_train), 64)]
    acc = {"acc": lambda y, logits: float((np.asarray(logits).argmax(-1) == y).mean())}
    history = nn.fit(
        model, nn.CrossEntropyLoss(), opt, batches, epochs=args.epochs, val_batches=[(x_test, y_test)],
        metrics=acc, callbacks=[nn.LRSchedulerCallback(sched)],
    )  # fmt: skip
    for epoch, (loss, val) in enumerate(zip(history["loss"], history["val_acc"], strict=True), 1):
        print(f"epoch {epoch}: loss {loss:.4f} test accuracy {val:.4f}")
    final = history["val_acc"][-1]
    print(f"final test accuracy: {final:.4f}")
    return final


if __name__ == "__main__":
    main()
