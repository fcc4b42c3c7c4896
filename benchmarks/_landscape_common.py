"""Shared helpers of the landscape benchmarks: MNIST-1D tensors, the reference CNN, a plain training loop."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_autoopt.data import MNIST1DDataModule
from lightning_autoopt.models import Classifier

OUT = Path(__file__).resolve().parent / "out"


def mnist1d_tensors(num_samples: int = 5000, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    dm = MNIST1DDataModule(num_samples=num_samples, seed=seed)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return {name: tuple(getattr(dm, f"{name}_set").tensors) for name in ("train", "val", "test")}  # type: ignore[misc]


def make_model(arch: str = "cnn", width: int = 32, seed: int = 0, **kwargs) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(arch=arch, width=width, **kwargs)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        out = model(x)
        return float(F.cross_entropy(out, y)), float((out.argmax(-1) == y).float().mean())


def train_plain(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float = 0.05,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    stop_loss: float | None = None,
) -> dict[str, float]:
    """Plain PyTorch SGD loop (no Lightning overhead) for the model grids; stops when train CE <= stop_loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    epoch = 0
    loss = float("nan")
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if stop_loss is not None and epoch % 5 == 0:
            loss, _ = evaluate(model, x, y)
            if loss <= stop_loss:
                break
    loss, acc = evaluate(model, x, y)
    return {"epochs": epoch, "train_loss": loss, "train_acc": acc}


def machine() -> str:
    load = os.getloadavg()[0]
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, load avg {load:.1f}, torch {torch.__version__}"


def now() -> str:
    return subprocess.run(["date"], capture_output=True, text=True).stdout.strip()


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
