"""SharpnessProbe with your own loss: a regression module with dict batches and a Huber loss.

What it shows: the probe measuring a model this package knows nothing about. The module's batches are dicts
(``{"features": ..., "target": ...}``) and it trains on a Huber loss, so no default loss fits; the probe is given
the same objective as a plain function ``loss_fn(module, batch) -> scalar``. Every epoch it measures, on a fixed
subset of the training data, the LPF-smoothed loss, the top Hessian eigenvalue and the Hessian trace of *that*
loss, without changing training (weights, gradients and the RNG are restored bit for bit).

At the end it prints the measures of every probe and writes ``sharpness.png`` (one panel per measure, from the
probe's own history). In YAML, give the function by its import path: ``loss_fn: mypkg.losses.huber_loss``.

Run (about 15 seconds on 2 CPU cores; ``--fast`` is a smoke run of a few seconds)::

    python examples/sharpness_custom_loss.py
    python examples/sharpness_custom_loss.py --epochs 30 --out runs/my_sharpness
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_autoopt.callbacks import SharpnessProbe
from lightning_autoopt.cli import silence_lightning_noise


class WaveDataset(Dataset):
    """``y = sin(w · x) + noise`` for 16-dimensional ``x``; items are dicts, as in many real pipelines."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        direction = torch.randn(16, generator=torch.Generator().manual_seed(123))
        self.x = torch.randn(n, 16, generator=g)
        self.y = torch.sin(self.x @ direction / 2) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "target": self.y[i]}


class WaveRegressor(pl.LightningModule):
    """An MLP regressor trained on the Huber loss of dict batches."""

    def __init__(self, hidden: int = 64, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.out = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(features)).squeeze(-1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = huber_loss(self, batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)


def huber_loss(module: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The probe's loss contract: ``loss_fn(module, batch) -> scalar`` (module-level, so it pickles and has a path)."""
    return F.huber_loss(module(batch["features"]), batch["target"], delta=0.5)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("runs/sharpness_custom_loss"))
    parser.add_argument("--fast", action="store_true", help="tiny settings: a smoke run in seconds (tests)")
    args = parser.parse_args(argv)
    silence_lightning_noise()
    pl.seed_everything(0, verbose=False)
    loader = DataLoader(WaveDataset(256 if args.fast else 4096), batch_size=64, shuffle=True)
    probe = SharpnessProbe(
        measures=["lpf", "hessian_top", "hessian_trace"],
        loss_fn=huber_loss,  # or its import path, e.g. "mypkg.losses.huber_loss"
        every_n_epochs=1,
        max_batches=2,
        measure_kwargs={"lpf": {"num_samples": 10}, "hessian_trace": {"num_probes": 10}},
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2 if args.fast else args.epochs,
        callbacks=[probe],
        default_root_dir=args.out,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.fast,
    )
    trainer.fit(WaveRegressor(), train_dataloaders=loader)

    print("probe  step  " + "  ".join(f"{m:>13}" for m in probe.measures))
    for i, row in enumerate(probe.history):
        print(f"{i:>5}  {int(row['step']):>4}  " + "  ".join(f"{row[m]:>13.4g}" for m in probe.measures))
    from lightning_autoopt.plots import plot_sharpness

    png = plot_sharpness(probe, args.out / "sharpness.png", title="SharpnessProbe on a Huber-loss regressor")
    print(f"plot: {png}")
    return probe.history


if __name__ == "__main__":
    main()
