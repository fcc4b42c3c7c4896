"""A local-update strategy on your own module, launched by ``torchrun`` (or by Lightning itself).

What it shows: LSGD (leader SGD) as the Trainer's strategy for an ordinary ``LightningModule`` and data loader of
your own. Each process trains its own replica; every ``--period`` optimizer steps the replicas are pulled toward the
one with the lowest loss (the leader). Nothing in the module changes: the strategy is picked by name or instance.
The run is restart-ready: one folder (``--out/lsgd_run``) with ``metrics.csv`` and ``checkpoints/last.ckpt``, which
``autoopt plot`` draws (training curves, and the strategy's rounds once it records them).

Run on 2 CPU processes (gloo), either under torchrun::

    torchrun --standalone --nproc_per_node=2 examples/strategy_torchrun.py
    torchrun --standalone --nproc_per_node=2 examples/strategy_torchrun.py --strategy easgd --period 8

or directly, in which case Lightning starts the second process itself (``devices=2``)::

    python examples/strategy_torchrun.py

Measured (``python examples/strategy_torchrun.py``, 2 shared CPU cores): 160 LSGD rounds in 640 steps, 3.20 MB sent
by rank 0, validation accuracy 0.992 of the replicas' average, 26 s. On a GPU node: ``--accelerator gpu`` (NCCL)
with ``--nproc_per_node`` = the number of GPUs. ``--fast`` is a smoke run of a few seconds (tests). Then:
``autoopt plot runs/strategy_torchrun/lsgd_run``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoopt.cli import silence_lightning_noise
from lightning_autoopt.loggers import ResumableCSVLogger
from lightning_autoopt.strategies import registered_strategies


def spiral_data(n: int = 4096, classes: int = 4, seed: int = 0) -> TensorDataset:
    """Interleaved 2-D spirals embedded in 8 dimensions: a small, non-linear classification set."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    r = torch.rand(n, generator=g)
    angle = 4.0 * r + y * (2 * torch.pi / classes) + 0.2 * torch.randn(n, generator=g)
    plane = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    mixing = torch.randn(2, 8, generator=torch.Generator().manual_seed(99))
    return TensorDataset(plane @ mixing, y)


class SpiralNet(pl.LightningModule):
    """Your module: an MLP classifier. It logs ``train_loss``, which LSGD also uses to pick the leader."""

    def __init__(self, hidden: int = 64, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", default="lsgd", help="a registered name: lsgd, easgd, localsgd, ...")
    parser.add_argument("--period", type=int, default=4, help="optimizer steps between synchronisations")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/strategy_torchrun"))
    parser.add_argument("--fast", action="store_true", help="tiny settings: a smoke run in seconds (tests)")
    args = parser.parse_args(argv)
    silence_lightning_noise()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    # Under torchrun every process is started already (LOCAL_WORLD_SIZE of them); otherwise Lightning starts 2.
    devices = int(os.environ.get("LOCAL_WORLD_SIZE", 2))
    strategy = registered_strategies()[args.strategy](period=args.period)
    train = DataLoader(spiral_data(1024 if args.fast else 8192), batch_size=64, shuffle=True)
    val = DataLoader(spiral_data(512, seed=1), batch_size=256)
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=devices,
        strategy=strategy,
        max_epochs=2 if args.fast else args.epochs,
        logger=ResumableCSVLogger(args.out, name=f"{args.strategy}_run"),
        callbacks=[ModelCheckpoint(save_last=True)],
        enable_progress_bar=not args.fast,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(SpiralNet(), train_dataloaders=train, val_dataloaders=val)
    if trainer.is_global_zero:
        s = trainer.strategy
        acc = float(trainer.callback_metrics["val_acc"])
        print(
            f"{type(s).__name__} on {trainer.world_size} processes: {s.num_rounds} rounds in {trainer.global_step} "
            f"steps, {s.bytes_sent_total / 1e6:.2f} MB sent by rank 0, val_acc {acc:.3f} (eval_policy "
            f"{s.eval_policy!r})"
        )
        print(f"run folder: {Path(trainer.logger.log_dir)}  (autoopt plot {Path(trainer.logger.log_dir)})")


if __name__ == "__main__":
    main()
