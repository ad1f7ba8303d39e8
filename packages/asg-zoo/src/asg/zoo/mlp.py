"""A multilayer perceptron with configurable depth, width, activation and dropout.

>>> import asg.core as ag
>>> from asg.zoo import MLP, MLPConfig
>>> model = MLP(MLPConfig(in_features=64, hidden=(128, 64), num_classes=10, dropout=0.1))
>>> model(ag.input("x", ("B", 64))).shape, list(model.state_dict())[:2]
(('B', 10), ['layers.0.weight', 'layers.0.bias'])
"""

from __future__ import annotations

from dataclasses import dataclass

import asg.core as ag
from asg import nn

__all__ = ["ACTIVATIONS", "MLP", "MLPConfig", "activation_module"]

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def activation_module(name: str) -> nn.Module:
    """A fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


@dataclass
class MLPConfig:
    """``in_features`` -> each width of ``hidden`` (Linear, activation, dropout) -> ``num_classes``.

    ``flatten`` first flattens every axis after the batch axis, so images ``(N, C, H, W)`` work as input.
    """

    in_features: int = 784
    hidden: tuple[int, ...] = (256, 128)
    num_classes: int = 10
    activation: str = "relu"
    dropout: float = 0.0
    flatten: bool = True


class MLP(nn.Module):
    """A multilayer perceptron; parameters ``layers.<i>.weight`` as in a ``torch.nn.Sequential``.

    Shape: ``(N, in_features)`` (or ``(N, *)`` with ``flatten``) -> ``(N, num_classes)``.
    """

    def __init__(self, config: MLPConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MLPConfig()
        if config.activation not in ACTIVATIONS:
            raise ValueError(
                f"MLPConfig.activation must be one of {', '.join(ACTIVATIONS)}, got {config.activation!r}"
            )
        mods: list[nn.Module] = []
        width = config.in_features
        for h in config.hidden:
            mods += [nn.Linear(width, h), activation_module(config.activation)]
            if config.dropout > 0:
                mods.append(nn.Dropout(config.dropout))
            width = h
        mods.append(nn.Linear(width, config.num_classes))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """``(N, in_features)`` (any ``(N, *)`` with ``flatten``) -> logits ``(N, num_classes)``."""
        x = ag.as_tensor(x)
        if self.config.flatten and x.ndim > 2:
            x = ag.flatten(x, 1, -1)
        return self.layers(x)
