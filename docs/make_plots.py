"""Draw the method-signal figures of the docs from real short runs: ``python docs/make_plots.py``.

Each figure comes from a short training run on MNIST-1D (generated locally, no download), drawn with the
package's own plot functions from the callbacks' (or strategy's) recorded history, as a user gets it with
``autoopt plot RUN_DIR``. The PNGs go to ``docs/img/`` (the method cards and the plots page show them).

    python docs/make_plots.py                       # every figure (a few minutes on 2 CPU cores)
    python docs/make_plots.py --only task_shift     # one run (task_shift also draws dco: they share the run)
    python docs/make_plots.py --out /tmp/figures    # somewhere else

Runs: ``sharpness`` (SharpnessProbe on a CNN, 12 epochs), ``task_shift`` (TaskShiftDetector + DCO on a permuted
MNIST-1D stream of 5 tasks), ``tame`` (TAME on a split stream with a recurring task), ``lpf_sgd`` (LPF-SGD with the
cosine rise, 10 epochs), ``strategy`` (LSGD on 2 CPU processes, drawn from the checkpoint's per-rank round history;
skipped with a message when the strategies do not record one).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import lightning.pytorch as pl  # noqa: E402

from lightning_autoopt import plots  # noqa: E402
from lightning_autoopt.cli import silence_lightning_noise  # noqa: E402

BATCHES_PER_TASK = 150


def _trainer(root: Path, callbacks: list[pl.Callback], **overrides: object) -> pl.Trainer:
    settings: dict[str, object] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=callbacks,
        log_every_n_steps=10,
    )
    settings.update(overrides)
    return pl.Trainer(**settings)  # type: ignore[arg-type]


def sharpness(out: Path, work: Path) -> list[Path]:
    """SharpnessProbe on the sharpness recipe's CNN: four measures after every epoch."""
    from lightning_autoopt.callbacks import SharpnessProbe
    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier

    pl.seed_everything(0, verbose=False)
    probe = SharpnessProbe(
        measures=["lpf", "hessian_top", "hessian_trace", "eps_sharpness"],
        every_n_epochs=1,
        max_batches=4,
        batch_size=128,
        measure_kwargs={
            "lpf": {"sigma": 0.01, "num_samples": 20},
            "hessian_top": {"max_iter": 50, "tol": 1e-3},
            "hessian_trace": {"num_probes": 20, "block_size": 10},
        },
    )
    model = Classifier(arch="cnn", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    _trainer(work, [probe], max_epochs=12).fit(model, datamodule=MNIST1DDataModule(batch_size=128, seed=0))
    return [
        plots.plot_sharpness(
            probe,
            out / "sharpness_probe.png",
            title="SharpnessProbe: CNN on MNIST-1D, SGD lr 0.05, one probe per epoch",
        )
    ]


def task_shift(out: Path, work: Path) -> list[Path]:
    """TaskShiftDetector + DCO on the DCO recipe's permuted MNIST-1D stream (5 tasks of 150 batches)."""
    from lightning_autoopt.callbacks import DCO, TaskShiftDetector
    from lightning_autoopt.data import TaskStreamDataModule
    from lightning_autoopt.models import Classifier

    pl.seed_everything(0, verbose=False)
    detector = TaskShiftDetector(verbose=False)
    dco = DCO(strength=100.0, num_directions=20, num_gradients=32, ae_steps=200, report=False)
    data = TaskStreamDataModule(
        dataset="mnist1d", kind="permuted", num_tasks=5, batches_per_task=BATCHES_PER_TASK, return_task_id=False
    )
    model = Classifier(arch="mlp", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.0)
    _trainer(work, [detector, dco], max_epochs=1, limit_val_batches=0).fit(model, datamodule=data)
    boundaries = [BATCHES_PER_TASK * t for t in range(1, 5)]
    return [
        plots.plot_task_shift(
            detector,
            out / "task_shift_signal.png",
            true_boundaries=boundaries,
            title="TaskShiftDetector (defaults): MLP on permuted MNIST-1D, 5 tasks of 150 batches",
        ),
        plots.plot_dco(
            dco,
            out / "dco_constraint.png",
            true_boundaries=boundaries,
            title="DCO (strength 100) with TaskShiftDetector: the same permuted MNIST-1D stream",
        ),
    ]


def tame(out: Path, work: Path) -> list[Path]:
    """TAME on split MNIST-1D with a recurring task (order 0, 1, 2, 0, 3), the recipe's settings."""
    from lightning_autoopt.continual import TAME
    from lightning_autoopt.data import TaskStreamDataModule

    pl.seed_everything(0, verbose=False)
    model = TAME(expert="cnn", width=16, num_classes=10, lr=0.05, selector_epochs=10, finetune_epochs=2)
    data = TaskStreamDataModule(
        dataset="mnist1d", kind="split", num_tasks=4, task_order=[0, 1, 2, 0, 3], batches_per_task=100
    )
    _trainer(work, [], max_epochs=1, limit_val_batches=0).fit(model, datamodule=data)
    return [
        plots.plot_tame(
            model,
            out / "tame_experts.png",
            title="TAME: split MNIST-1D, tasks 0, 1, 2, 0, 3 (100 batches each)",
        )
    ]


def lpf_sgd(out: Path, work: Path) -> list[Path]:
    """LPF-SGD with the recipe's cosine rise of the noise (γ0 = 0.002, ×5) on the CNN, 10 epochs."""
    from lightning_autoopt.callbacks import LPFSGD
    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier

    pl.seed_everything(0, verbose=False)
    lpf = LPFSGD(std=0.002, schedule="cosine_increase", increase_factor=5.0)
    model = Classifier(arch="cnn", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, scheduler="cosine")
    _trainer(work, [lpf], max_epochs=10).fit(model, datamodule=MNIST1DDataModule(batch_size=128, seed=0))
    return [
        plots.plot_lpf_sgd(
            lpf, out / "lpf_sgd_noise.png", title="LPF-SGD: CNN on MNIST-1D, γ0 = 0.002 rising ×5 (cosine)"
        )
    ]


def strategy(out: Path, work: Path) -> list[Path]:
    """LSGD on 2 CPU processes (spawn), 4 epochs; drawn from last.ckpt like ``autoopt plot`` does."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_autoopt.checkpoint import CHECKPOINT_KEY
    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier
    from lightning_autoopt.strategies import LSGDStrategy

    if not hasattr(LSGDStrategy(), "history"):
        print("strategy: skipped: the local-update strategies do not record a round history in this version.")
        return []
    pl.seed_everything(0, verbose=False)
    checkpoint = ModelCheckpoint(dirpath=str(work / "checkpoints"), save_last=True)
    trainer = _trainer(
        work,
        [checkpoint],
        max_epochs=4,
        devices=2,
        strategy=LSGDStrategy(period=8, consensus_every=1, start_method="spawn"),
        enable_checkpointing=True,
    )
    model = Classifier(arch="cnn", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    trainer.fit(model, datamodule=MNIST1DDataModule(batch_size=128, seed=0))
    stored, _ = plots.load_checkpoint_for_plots(work / "checkpoints" / "last.ckpt")
    histories, _ = plots.strategy_histories(stored[CHECKPOINT_KEY])
    if not histories:
        print("strategy: skipped: the checkpoint's strategy state holds no round history.")
        return []
    return [
        plots.plot_strategy(
            stored[CHECKPOINT_KEY],
            out / "strategy_rounds.png",
            title="LSGD (period 8, consensus_every=1) on 2 CPU processes: CNN on MNIST-1D, 4 epochs",
        )
    ]


RUNS: dict[str, Callable[[Path, Path], list[Path]]] = {
    "sharpness": sharpness,
    "task_shift": task_shift,
    "tame": tame,
    "lpf_sgd": lpf_sgd,
    "strategy": strategy,
}


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(RUNS), help="run only these")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the PNGs go")
    args = parser.parse_args(argv)
    silence_lightning_noise()
    written: list[Path] = []
    for name in args.only or list(RUNS):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"make_plots_{name}_") as work:
            paths = RUNS[name](args.out, Path(work))
        written += paths
        for path in paths:
            print(f"{name}: {path} ({time.perf_counter() - start:.0f} s)")
    return written


if __name__ == "__main__":
    main()
