"""Tiny models and data shared by the test suite (module-level so they pickle under ``spawn``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_trainer(root: str | Path, callbacks: Iterable[pl.Callback] = (), **overrides: Any) -> pl.Trainer:
    """The suite's Trainer: one CPU device, quiet (no logger, checkpointing, progress bar or model summary).

    Runs one epoch unless ``max_epochs`` or ``max_steps`` is given. ``overrides`` replace any default, e.g.
    ``devices=2, strategy="lsgd_spawn"`` or ``enable_checkpointing=True`` (needed with a ``ModelCheckpoint``).
    """
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
    )
    if "max_steps" not in overrides:
        settings["max_epochs"] = 1
    settings.update(overrides)
    return pl.Trainer(**settings)


def make_blobs(n: int = 256, dim: int = 8, classes: int = 4, seed: int = 0) -> TensorDataset:
    """A small, learnable classification set: Gaussian blobs around random centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2.0
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + 0.5 * torch.randn(n, dim, generator=g)
    return TensorDataset(x, y)


class TinyDataModule(pl.LightningDataModule):
    """Blobs in train/val loaders; no shuffling so runs are bitwise repeatable."""

    def __init__(self, n: int = 256, dim: int = 8, classes: int = 4, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.n, self.dim, self.classes, self.batch_size, self.seed = n, dim, classes, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(make_blobs(self.n, self.dim, self.classes, self.seed), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(make_blobs(64, self.dim, self.classes, self.seed + 1), batch_size=self.batch_size)


class TinyClassifier(pl.LightningModule):
    """Two-layer MLP with SGD; ``nan_at_step`` makes the loss NaN at one optimizer step (robustness tests)."""

    def __init__(
        self,
        dim: int = 8,
        hidden: int = 16,
        classes: int = 4,
        lr: float = 0.1,
        momentum: float = 0.0,
        nan_at_step: int = -1,
        crash_at_step: int = -1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.global_step == self.hparams.crash_at_step:
            raise RuntimeError("CRASH")
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        if self.global_step == self.hparams.nan_at_step:
            loss = loss * float("nan")
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)


def flat_params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])
