"""Test models with closed-form landscapes (module-level so they pickle)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Quadratic(nn.Module):
    """L(θ) = ½ (θ − c)ᵀ A (θ − c): forward returns that value per sample; use ``mean_loss`` as the loss."""

    def __init__(self, matrix: Tensor, theta: Tensor, centre: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix)
        self.register_buffer("centre", torch.zeros_like(theta) if centre is None else centre)
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: Tensor) -> Tensor:
        d = self.theta - self.centre
        return (0.5 * d @ self.matrix @ d).expand(x.shape[0])


def mean_loss(module: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """The loss contract ``loss_fn(module, batch)``: the quadratic's value (its forward ignores the data)."""
    return module(batch[0]).mean()


def spd_matrix(dim: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=dtype))
    eig = torch.linspace(0.1, 5.0, dim, dtype=dtype)
    eig[-1] = 10.0  # a clear spectral gap for the top eigenvalue
    return q @ torch.diag(eig) @ q.T


def dummy_batches(n_batches: int = 2, batch: int = 4) -> list[tuple[Tensor, Tensor]]:
    return [(torch.zeros(batch, 1), torch.zeros(batch)) for _ in range(n_batches)]


def tiny_mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def mlp_batches(dtype: torch.dtype = torch.float32, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    sizes = (6, 6, 3)  # uneven last batch exercises the sample weighting
    return [(torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


class ConvBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))
