"""Private network builders for :class:`~lightning_autoopt.models.Classifier`: small CNN, MLP and ResNet in 1-D or 2-D.

Every builder works on inputs of shape ``(B, in_channels, L)`` (``dims=1``) or ``(B, in_channels, L, L)``
(``dims=2``). Convolutions use kernel 5 in 1-D (signals such as MNIST-1D need a wider view per layer) and 3×3 in 2-D.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("cnn", "mlp", "resnet")


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
    """Build the network named ``arch`` (one of :data:`ARCHS`) for inputs of shape ``input_shape`` (no batch dim)."""
    if arch == "cnn":
        return _ConvNet(dims, input_shape, num_classes, width)
    if arch == "mlp":
        return _MLP(input_shape, num_classes, width)
    if arch == "resnet":
        return _ResNet(dims, input_shape, num_classes, width, depth)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}.")
