"""Train a small MLP on the bundled UCI handwritten digits with asg-core and asg-data.

The whole training step — forward pass, cross-entropy, graph-to-graph gradients and the Adam update —
is one compiled ASG graph: the Adam moments and the step counter are ``ag.state`` variables that the
plan updates in place (``compile(updates=...)``). Runs in a few seconds on a laptop CPU:

    python examples/train_digits.py [--epochs 10] [--lr 0.003] [--seed 0]

Needs only asg-core and asg-data (and numpy).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import asg.core as ag
from asg.data import DataLoader, InMemoryDataset, load_digits, train_test_split


def init_linear(
    rng: np.random.Generator, fan_in: int, fan_out: int, name: str
) -> tuple[ag.Tensor, ag.Tensor]:
    """A weight (fan_in, fan_out) and bias, uniform in +-1/sqrt(fan_in) as in torch.nn.Linear."""
    bound = 1.0 / np.sqrt(fan_in)
    w = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)
    b = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
    return ag.parameter(w, name=f"{name}.w"), ag.parameter(b, name=f"{name}.b")


def adam_updates(
    params: list[ag.Tensor],
    grads: list[ag.Tensor],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> dict[ag.Tensor, ag.Tensor]:
    """Adam (as torch.optim.Adam) written as graph updates: ``{variable: new value}``."""
    beta1, beta2 = betas
    step = ag.state(np.zeros((), np.float32), name="adam.step")
    t = step + 1.0
    # Bias corrections 1 - beta^t, computed from the step counter inside the graph.
    step_size = lr / (1.0 - ag.pow(beta1, t))
    sqrt_bc2 = ag.sqrt(1.0 - ag.pow(beta2, t))
    updates: dict[ag.Tensor, ag.Tensor] = {step: t}
    for p, g in zip(params, grads, strict=True):
        m = ag.state(np.zeros(p.shape, np.float32), name=f"adam.m.{p.name}")
        v = ag.state(np.zeros(p.shape, np.float32), name=f"adam.v.{p.name}")
        m_new = beta1 * m + (1.0 - beta1) * g
        v_new = beta2 * v + (1.0 - beta2) * (g * g)
        updates[m] = m_new
        updates[v] = v_new
        updates[p] = p - step_size * m_new / (ag.sqrt(v_new) / sqrt_bc2 + eps)
    return updates


def main(argv: list[str] | None = None) -> float:
    """Train, print per-epoch progress and return the final test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set (default 10)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 0.003)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, init and shuffling (default 0)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units (default 128)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    # Data: 1,797 images 8x8 in [0, 1], a seeded stratified 80/20 split, standardised with train statistics.
    images, labels = load_digits(as_float=True)
    x = images.reshape(len(images), 64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, labels, test_size=0.2, seed=args.seed, stratify=labels
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 0.1
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    loader = DataLoader(
        InMemoryDataset(x_train.astype(np.float32), y_train),
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
    )
    print(
        f"UCI digits: {len(x_train)} training and {len(x_test)} test images, 10 classes, batch {args.batch_size}"
    )

    # Model: 64 -> hidden -> 10 MLP with ReLU, built from asg-core ops.
    rng = np.random.default_rng(args.seed)
    w1, b1 = init_linear(rng, 64, args.hidden, "fc1")
    w2, b2 = init_linear(rng, args.hidden, 10, "fc2")
    params = [w1, b1, w2, b2]
    xb = ag.input("x", ("B", 64))
    yb = ag.input("y", ("B",), "int64")
    logits = (xb @ w1 + b1).relu() @ w2 + b2
    loss = ag.cross_entropy(logits, yb)
    correct = ag.sum(ag.cast(ag.equal(ag.argmax(logits, axis=1), yb), "int64"))

    grads = ag.grad(loss, params)
    train_step = ag.compile([loss, correct], inputs=[xb, yb], updates=adam_updates(params, grads, args.lr))
    evaluate = ag.compile([loss, correct], inputs=[xb, yb])

    accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        total_loss, total_correct, seen = 0.0, 0, 0
        batches = len(loader)
        for i, (bx, by) in enumerate(loader, 1):
            batch_loss, batch_correct = train_step(bx, by)
            total_loss += float(batch_loss) * len(by)
            total_correct += int(batch_correct)
            seen += len(by)
            if sys.stdout.isatty():
                print(
                    f"\repoch {epoch:3d}/{args.epochs} [{i:3d}/{batches}] loss {total_loss / seen:.4f}",
                    end="",
                )
        test_loss, test_correct = evaluate(x_test.astype(np.float32), y_test)
        accuracy = int(test_correct) / len(y_test)
        print(
            f"\repoch {epoch:3d}/{args.epochs} [{batches}/{batches}] train loss {total_loss / seen:.4f} "
            f"acc {total_correct / seen:.2%} | test loss {float(test_loss):.4f} acc {accuracy:.2%}"
        )
    elapsed = time.perf_counter() - start
    print(f"final test accuracy: {accuracy:.4f} ({accuracy:.2%}) in {elapsed:.1f} s")
    return accuracy


if __name__ == "__main__":
    main()
