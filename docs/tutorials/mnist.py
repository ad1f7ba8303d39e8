"""Tutorial 2: MNIST with LeNet-5 through nn.fit, from local IDX files.

The files come from `bash scripts/fetch_test_data.sh` (into .data/mnist); without them the tutorial
falls back to the 8x8 digits bundled with asg-data and says so. Small settings: a subset, one epoch.
"""

import os
import time

import numpy as np

from asg import nn
from asg.data import load_digits, load_mnist, train_test_split
from asg.zoo import LeNet5, LeNetConfig

ROOT = os.environ.get("ASG_MNIST_DIR", ".data/mnist")
N_TRAIN, N_TEST = 1024, 256

try:
    x_train, y_train = load_mnist(ROOT, split="train")
    x_test, y_test = load_mnist(ROOT, split="test")
    print(f"MNIST from {ROOT}: {x_train.shape[0]} training and {x_test.shape[0]} test images")
    config = LeNetConfig()  # 28x28 input, LeNet-5's sizes
except (FileNotFoundError, OSError, ValueError) as error:
    print(f"MNIST not found ({type(error).__name__}); using the bundled 8x8 digits instead")
    images, labels = load_digits(as_float=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, seed=0, stratify=labels
    )
    config = LeNetConfig(image_size=8, kernel_size=3, conv2_padding=1)


def prepare(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    x = x / 255.0 if x.max() > 1.5 else x / max(float(x.max()), 1.0)
    return ((x - 0.5) / 0.5)[:, None]  # (N, 1, H, W)


x_train, y_train = prepare(x_train[:N_TRAIN]), np.asarray(y_train[:N_TRAIN], np.int64)
x_test, y_test = prepare(x_test[:N_TEST]), np.asarray(y_test[:N_TEST], np.int64)
print("train", x_train.shape, "test", x_test.shape)

nn.init.manual_seed(0)
model = LeNet5(config)
opt = nn.optim.Adam(model.parameters(), lr=2e-3)
batches = [(x_train[i : i + 64], y_train[i : i + 64]) for i in range(0, len(y_train), 64)]
accuracy = {"acc": lambda y, logits: float((np.asarray(logits).argmax(-1) == y).mean())}
start = time.perf_counter()
history = nn.fit(
    model, nn.CrossEntropyLoss(), opt, batches, epochs=1, val_batches=[(x_test, y_test)], metrics=accuracy,
    progress=False,
)  # fmt: skip
print(f"loss {history['loss'][-1]:.3f}, test accuracy {history['val_acc'][-1]:.3f} after 1 epoch")
print(f"{time.perf_counter() - start:.0f} s; examples/train_images.py trains on the full set")
