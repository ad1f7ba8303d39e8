"""Convolutional networks: LeNet-5 and ResNet (BasicBlock, Bottleneck; ResNet-18/34/50).

ResNet uses torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``fc``), so a torchvision ``state_dict`` loads by name. Two stems: ``"imagenet"`` (7x7 stride-2 conv and a
3x3 max pool) and ``"cifar"`` (one 3x3 stride-1 conv, no pool) for 32x32 images.

>>> import asg.core as ag
>>> from asg.zoo import LeNet5, LeNetConfig, resnet18
>>> LeNet5(LeNetConfig())(ag.input("x", ("N", 1, 28, 28))).shape
('N', 10)
>>> resnet18(num_classes=10, stem="cifar")(ag.input("x", ("N", 3, 32, 32))).shape
('N', 10)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import asg.core as ag
from asg import nn

from .mlp import activation_module

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "LeNet5",
    "LeNetConfig",
    "ResNet",
    "ResNetConfig",
    "resnet18",
    "resnet34",
    "resnet50",
]


# --------------------------------------------------------------------------- LeNet-5
@dataclass
class LeNetConfig:
    """LeNet-5: conv(c1) -> pool -> conv(c2) -> pool -> fc(120) -> fc(84) -> fc(num_classes).

    ``conv1`` is padded to keep the image size (LeCun's 32x32 input for 28x28 MNIST digits); ``conv2``
    takes ``conv2_padding`` (0 in the original). For the bundled 8x8 digits use ``image_size=8,
    kernel_size=3, conv2_padding=1``.
    """

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    channels: tuple[int, int] = (6, 16)
    kernel_size: int = 5
    conv2_padding: int = 0
    fc: tuple[int, ...] = (120, 84)
    activation: str = "relu"
    dropout: float = 0.0


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with max pooling and a configurable activation.

    Shape: ``(N, in_channels, image_size, image_size)`` -> ``(N, num_classes)``.
    """

    def __init__(self, config: LeNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or LeNetConfig()
        k = c.kernel_size
        self.conv1 = nn.Conv2d(c.in_channels, c.channels[0], k, padding=k // 2)
        self.conv2 = nn.Conv2d(c.channels[0], c.channels[1], k, padding=c.conv2_padding)
        self.pool = nn.MaxPool2d(2)
        self.act = activation_module(c.activation)
        size = c.image_size // 2  # conv1 keeps the size, the pool halves it
        size = (size + 2 * c.conv2_padding - k + 1) // 2
        if size < 1:
            raise ValueError(
                f"LeNetConfig: image_size={c.image_size} is too small for kernel_size={k} and "
                f"conv2_padding={c.conv2_padding} (conv2's output would be empty); raise conv2_padding"
            )
        widths = [c.channels[1] * size * size, *c.fc]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(widths[-1], c.num_classes)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Classifies images: ``(N, in_channels, image_size, image_size)`` -> logits ``(N, num_classes)``."""
        x = self.pool(self.act(self.conv1(x)))  # (N, c1, H/2, W/2)
        x = self.pool(self.act(self.conv2(x)))  # (N, c2, s, s)
        x = ag.flatten(x, 1, -1)  # (N, c2 * s * s)
        for fc in self.fcs:
            x = self.dropout(self.act(fc(x)))
        return self.head(x)


# --------------------------------------------------------------------------- ResNet
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1-projected) shortcut; ``expansion = 1``."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``:
        ``(N, inplanes, H, W) -> (N, planes, H / stride, W / stride)``.
        """
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, torchvision's "ResNet v1.5"), 1x1 expand by 4, with a shortcut."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """The 1x1-3x3-1x1 path plus the shortcut:
        ``(N, inplanes, H, W) -> (N, 4 * planes, H / stride, W / stride)``.
        """
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass
class ResNetConfig:
    """``block``: ``"basic"`` or ``"bottleneck"``; ``layers``: blocks per stage; ``stem``: ``"imagenet"`` or ``"cifar"``."""

    block: str = "basic"
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_classes: int = 1000
    in_channels: int = 3
    width: int = 64
    stem: str = "imagenet"


class ResNet(nn.Module):
    """ResNet (He et al. 2016) with torchvision's names and initialisation.

    Shape: ``(N, in_channels, H, W)`` -> ``(N, num_classes)``; ``features(x)`` gives the pooled ``(N, C)``.
    """

    def __init__(self, config: ResNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ResNetConfig()
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if c.block not in blocks:
            raise ValueError(f"ResNetConfig.block must be 'basic' or 'bottleneck', got {c.block!r}")
        if c.stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNetConfig.stem must be 'imagenet' or 'cifar', got {c.stem!r}")
        block = blocks[c.block]
        self.inplanes = c.width
        if c.stem == "imagenet":
            self.conv1 = nn.Conv2d(c.in_channels, c.width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = _conv3x3(c.in_channels, c.width)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(c.width)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, c.width, c.layers[0])
        self.layer2 = self._make_layer(block, c.width * 2, c.layers[1], stride=2)
        self.layer3 = self._make_layer(block, c.width * 4, c.layers[2], stride=2)
        self.layer4 = self._make_layer(block, c.width * 8, c.layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c.width * 8 * block.expansion, c.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type, planes: int, count: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def features(self, x: ag.Tensor) -> ag.Tensor:
        """The stem, the four stages and global average pooling: ``(N, C, H, W)`` -> ``(N, features)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, width, H/4, W/4) with the ImageNet stem
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 8 width * expansion, H/32, W/32)
        return ag.flatten(self.avgpool(x), 1, -1)  # (N, C)

    def forward(self, x: ag.Tensor) -> ag.Tensor:
        """Classifies images: ``fc(features(x))`` -> logits ``(N, num_classes)``."""
        return self.fc(self.features(x))


def resnet18(num_classes: int = 1000, stem: str = "imagenet", **kwargs: int) -> ResNet:
    """ResNet-18: BasicBlocks (2, 2, 2, 2)."""
    return ResNet(ResNetConfig("basic", (2, 2, 2, 2), num_classes, stem=stem, **kwargs))


def resnet34(num_classes: int = 1000, stem: str = "imagenet", **kwargs: int) -> ResNet:
    """ResNet-34: BasicBlocks (3, 4, 6, 3)."""
    return ResNet(ResNetConfig("basic", (3, 4, 6, 3), num_classes, stem=stem, **kwargs))


def resnet50(num_classes: int = 1000, stem: str = "imagenet", **kwargs: int) -> ResNet:
    """ResNet-50: Bottlenecks (3, 4, 6, 3)."""
    return ResNet(ResNetConfig("bottleneck", (3, 4, 6, 3), num_classes, stem=stem, **kwargs))
