"""Zoo models on the wgpu backend (lavapipe on CI): three LeNet-5 Adam steps give the numpy backend's numbers.
Skipped without asg-gpu or a wgpu adapter. One training step of every model is in test_gpu_models.py."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

import asg.core as ag
from asg import nn
from asg.zoo import LeNet5, LeNetConfig

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg-"))
device = pytest.importorskip("asg.gpu.device")
if "wgpu" not in ag.available_backends() or not device.adapter_available():
    pytest.skip(
        "no wgpu backend or adapter (install asg-gpu and mesa-vulkan-drivers)", allow_module_level=True
    )

RNG = np.random.default_rng(0)


@pytest.mark.slow
def test_lenet_training_steps_match_numpy():
    x, y = RNG.normal(size=(8, 1, 8, 8)).astype("float32"), RNG.integers(0, 10, 8)
    losses, weights = {}, {}
    for backend in ("numpy", "wgpu"):
        nn.init.manual_seed(0)
        model = LeNet5(LeNetConfig(image_size=8, kernel_size=3, conv2_padding=1))
        opt = nn.optim.Adam(model.parameters(), lr=1e-2)
        step = nn.compile_train_step(model, nn.CrossEntropyLoss(), opt, backend=backend)
        losses[backend] = [step(x, y) for _ in range(3)]
        weights[backend] = model.state_dict()["conv1.weight"]
    np.testing.assert_allclose(losses["wgpu"], losses["numpy"], rtol=1e-4)
    np.testing.assert_allclose(weights["wgpu"], weights["numpy"], rtol=1e-4, atol=1e-5)
