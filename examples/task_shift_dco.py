"""TaskShiftDetector + DCO on a task stream, with your own module reacting to every detected shift.

What it shows: continual learning without task labels. The training stream is permuted MNIST-1D (each task applies
its own permutation to the inputs; nothing in the batches says where a task ends). ``TaskShiftDetector`` watches
the loss your ``training_step`` returns and signals a shift when its moving average jumps above the recent
window; your module hears it through an ``on_task_shift(trainer, info)`` method, and ``DCO`` (a listener too)
closes the task: it learns the directions that task's gradients used and from then on penalises moving along them.

At the end it prints the detected shifts next to the true task changes, DCO's per-task test accuracy, and writes
``task_shift.png`` (loss, EMA, threshold, detections) and ``dco.png`` (penalty and gradient norms), both drawn from
the callbacks' own histories.

Measured with the defaults (4 tasks of 150 batches; 21 s on 2 shared CPU cores): true changes at steps 150, 300,
450, shifts detected at 155, 302, 452, no false detection, 3 tasks consolidated by DCO, class-IL accuracy 31.6 %
after the stream (the short stream leaves the MLP under-trained; see DCO's card for what to expect). ``--fast``
(2 tasks) is a smoke run of about 10 seconds::

    python examples/task_shift_dco.py
    python examples/task_shift_dco.py --tasks 5 --batches-per-task 200 --out runs/my_stream
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_autoopt.callbacks import DCO, TaskShiftDetector, TaskShiftInfo
from lightning_autoopt.cli import silence_lightning_noise
from lightning_autoopt.data import TaskStreamDataModule


class StreamClassifier(pl.LightningModule):
    """Your module: an MLP on 40-sample signals; it keeps a log of the shifts it was told about."""

    def __init__(self, hidden: int = 128, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(40, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )
        self.shifts_heard: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss  # the detector reads this loss: no extra forward pass

    def on_task_shift(self, trainer: pl.Trainer, info: TaskShiftInfo) -> None:
        """Called by TaskShiftDetector on every rank right after a shift (e.g. reset a head, log, save)."""
        self.shifts_heard.append(info["step"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--batches-per-task", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("runs/task_shift_dco"))
    parser.add_argument("--fast", action="store_true", help="tiny settings: a smoke run in seconds (tests)")
    args = parser.parse_args(argv)
    silence_lightning_noise()
    pl.seed_everything(0, verbose=False)
    tasks, per_task = (2, 150) if args.fast else (args.tasks, args.batches_per_task)
    data = TaskStreamDataModule(
        dataset="mnist1d", kind="permuted", num_tasks=tasks, batches_per_task=per_task, return_task_id=False
    )
    detector = TaskShiftDetector(verbose=False)
    dco = DCO(strength=100.0, num_directions=10, ae_steps=50 if args.fast else 200)
    model = StreamClassifier()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_val_batches=0,
        callbacks=[detector, dco],
        default_root_dir=args.out,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.fast,
    )
    trainer.fit(model, datamodule=data)

    true_changes = [per_task * t for t in range(1, tasks)]
    print(f"true task changes at steps {true_changes}")
    print(f"shifts detected at steps   {detector.shift_steps} (the module heard {model.shifts_heard})")
    print(f"DCO consolidated tasks at  {dco.consolidation_steps}")
    # DCO printed its per-task test accuracy at the end of training ("[DCO] class_il_acc=...").
    from lightning_autoopt.plots import plot_dco, plot_task_shift

    shift_png = plot_task_shift(detector, args.out / "task_shift.png", true_boundaries=true_changes)
    dco_png = plot_dco(dco, args.out / "dco.png", true_boundaries=true_changes)
    print(f"plots: {shift_png}, {dco_png}")
    return {"true": true_changes, "detected": detector.shift_steps, "metrics": dco.final_metrics}


if __name__ == "__main__":
    main()
