"""Network builders shared by :class:`~lightning_autoopt.models.Classifier`, TAME's experts and the benchmarks.

Small CNN, MLP and ResNet in 1-D or 2-D. Every network works on inputs of shape ``(B, in_channels, L)`` (``dims=1``)
or ``(B, in_channels, L, L)`` (``dims=2``). Convolutions use kernel 5 in 1-D (signals such as MNIST-1D need a wider
view per layer) and 3×3 in 2-D. :func:`build_network` takes the dimensions explicitly; :func:`build_for_input`
reads them from one sample's shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ARCHS", "build_for_input", "build_network"]

ARCHS = ("cnn", "mlp", "resnet")
"""The architecture names :func:`build_network` knows."""


def _conv(dims: int, in_ch: int, out_ch: int, stride: int = 1, bias: bool = True) -> nn.Module:
    if dims == 1:
        return nn.Conv1d(in_ch, out_ch, kernel_size=5, stride=stride, padding=2, bias=bias)
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def _norm(dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)


def _flat_features(body: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Features after ``body`` for one sample, by a dummy forward (lazy modules would break weight averaging)."""
    with torch.no_grad():
        return int(body(torch.zeros(1, *input_shape)).reshape(1, -1).shape[1])


class _ConvNet(nn.Module):
    """Three conv + ReLU layers (``width``, ``width``, ``2*width`` channels; the last two stride 2) and a linear head.

    No normalisation layers, so every parameter is a plain weight (simplest case for weight averaging and sharpness
    probes). Close to the MNIST-1D paper's CNN, which reaches about 94 % test accuracy there.
    """

    def __init__(self, dims: int, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        in_ch = input_shape[0]
        self.features = nn.Sequential(
            _conv(dims, in_ch, width),
            nn.ReLU(),
            _conv(dims, width, width, stride=2),
            nn.ReLU(),
            _conv(dims, width, 2 * width, stride=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(_flat_features(self.features, input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _MLP(nn.Module):
    """Flatten, two hidden layers of ``4*width`` units with ReLU, linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        features = 1
        for size in input_shape:
            features *= size
        hidden = 4 * width
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    """Two conv-BN layers with an identity (or 1×1 conv + BN projection) shortcut, as in He et al. (2016)."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(dims, in_ch, out_ch, stride=stride, bias=False)
        self.bn1 = _norm(dims, out_ch)
        self.conv2 = _conv(dims, out_ch, out_ch, bias=False)
        self.bn2 = _norm(dims, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            conv = nn.Conv1d if dims == 1 else nn.Conv2d
            self.shortcut = nn.Sequential(
                conv(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), _norm(dims, out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class _ResNet(nn.Module):
    """CIFAR-style ResNet: conv stem, three stages of ``depth`` basic blocks, global average pooling, linear head.

    Stages have ``width``, ``2*width``, ``4*width`` channels and strides 1, 2, 2. ``dims=2, width=16, depth=3`` is
    ResNet-20 of He et al.
    """

    def __init__(self, dims: int, input_shape: tuple[int, ...], num_classes: int, width: int, depth: int) -> None:
        super().__init__()
        in_ch = input_shape[0]
        layers: list[nn.Module] = [_conv(dims, in_ch, width, bias=False), _norm(dims, width), nn.ReLU()]
        channels = width
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(dims, channels, out_ch, stride))
                channels = out_ch
        layers.append(nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1))
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_network(
    arch: str, dims: int, input_shape: tuple[int, ...], num_classes: int, width: int, depth: int
) -> nn.Module:
    """Build the network named ``arch`` (one of :data:`ARCHS`) for inputs of shape ``input_shape`` (no batch dim).

    Args:
        arch: ``"cnn"``, ``"mlp"`` or ``"resnet"``.
        dims: 1 for signals ``(C, L)``, 2 for images ``(C, L, L)``.
        input_shape: Shape of one input without the batch dimension.
        num_classes: Outputs of the network.
        width: Base channel count (conv nets) or a quarter of the hidden units (MLP).
        depth: Basic blocks per stage (``"resnet"`` only).

    Raises:
        ValueError: For an unknown ``arch``.

    Example::

        net = build_network("cnn", 1, (1, 40), num_classes=10, width=32, depth=1)
    """
    if arch == "cnn":
        return _ConvNet(dims, input_shape, num_classes, width)
    if arch == "mlp":
        return _MLP(input_shape, num_classes, width)
    if arch == "resnet":
        return _ResNet(dims, input_shape, num_classes, width, depth)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}.")


def build_for_input(
    arch: str, input_shape: Sequence[int], num_classes: int, width: int = 32, depth: int = 1
) -> nn.Module:
    """:func:`build_network` for inputs of shape ``input_shape`` (no batch dim): ``dims = len(input_shape) - 1``.

    Example::

        net = build_for_input("mlp", [1, 64], num_classes=10, width=16)  # digits: 1 channel, 64 steps
    """
    shape = tuple(int(s) for s in input_shape)
    return build_network(arch, len(shape) - 1, shape, num_classes, width, depth)
