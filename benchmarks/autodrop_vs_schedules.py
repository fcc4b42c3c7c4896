"""AutoDrop (defaults, no tuning) vs hand-made LR schedules on MNIST-1D with the reference 1-D CNN.

Same model (Classifier arch="cnn", width 32), SGD momentum 0.9, lr 0.05, weight decay 5e-4, batch 128, the same epoch
budget and the same seeds for every method:

* ``autodrop``  constant LR + ``AutoDrop()`` with its defaults (theta 0.01 as the reference scripts)
* ``autodrop_theta1`` sensitivity row, not a tuned variant: ``AutoDrop(theta=1.0, max_theta=5.0)``, the defaults
  this package had before its first benchmark run
* ``constant``  constant LR
* ``multistep`` MultiStepLR at 30 %, 60 % and 80 % of the budget, gamma 0.2 (the reference repo's CIFAR schedule
  [60, 120, 160] of 200 epochs, scaled to the budget)
* ``cosine``    CosineAnnealingLR over the budget
* ``plateau``   ReduceLROnPlateau on val_loss, factor 0.2, patience 3 epochs

Prints final test accuracy (mean ± std over seeds) and epochs-to-best (first epoch reaching the best val_acc), writes
``benchmarks/out/autodrop_schedules.png`` (LR per epoch for every method, AutoDrop's angular velocity, drop epochs).

Then measures AutoDrop's per-step overhead on a >= 1M-parameter model (the CNN at width 256): training-epoch time
with vs without the callback, interleaved repeats, ratio of the medians (and of the minima).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autodrop_vs_schedules.py            # full (3 seeds)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/autodrop_vs_schedules.py --epochs 5 --seeds 0 --overhead-repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_autoopt.callbacks import AutoDrop
from lightning_autoopt.data import MNIST1DDataModule
from lightning_autoopt.models import Classifier
from lightning_autoopt.plots import plot_lr_schedules

METHODS = ("autodrop", "autodrop_theta1", "constant", "multistep", "cosine", "plateau")
OUT = Path(__file__).resolve().parent / "out"


class EpochRecorder(Callback):
    """LR (group 0) and val_acc per epoch, plus the summed training-epoch wall time (validation excluded)."""

    def __init__(self) -> None:
        self.lr: list[float] = []
        self.val_acc: list[float] = []
        self.train_seconds = 0.0
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self.lr.append(float(trainer.optimizers[0].param_groups[0]["lr"]))
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self.train_seconds += time.perf_counter() - self._t0

    def on_validation_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        if not trainer.sanity_checking and "val_acc" in trainer.callback_metrics:
            self.val_acc.append(float(trainer.callback_metrics["val_acc"]))


class TimedAutoDrop(AutoDrop):
    """AutoDrop that also sums the wall time spent inside its per-step and per-epoch hooks (exact overhead)."""

    hook_seconds = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.hook_seconds += time.perf_counter() - t0

    def on_train_epoch_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        super().on_train_epoch_start(trainer, pl_module)
        self.hook_seconds += time.perf_counter() - t0


def _model(method: str, epochs: int, width: int = 32) -> Classifier:
    kwargs: dict = dict(arch="cnn", width=width, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    if method == "multistep":
        milestones = sorted({max(1, round(f * epochs)) for f in (0.3, 0.6, 0.8)})
        kwargs.update(scheduler="multistep", milestones=milestones, gamma=0.2)
    elif method == "cosine":
        kwargs.update(scheduler="cosine")
    elif method == "plateau":
        kwargs.update(scheduler="plateau", gamma=0.2, plateau_patience=3)
    return Classifier(**kwargs)


def _trainer(epochs: int, callbacks: list[Callback], validate: bool = True) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if validate else 0,
        default_root_dir=str(OUT / "lightning"),
    )


def run_one(method: str, seed: int, epochs: int, datamodule: MNIST1DDataModule) -> dict:
    pl.seed_everything(seed, verbose=False)
    model = _model(method, epochs)
    recorder = EpochRecorder()
    callbacks: list[Callback] = [recorder]
    autodrop = None
    if method == "autodrop":
        autodrop = AutoDrop(verbose=False)
    elif method == "autodrop_theta1":
        autodrop = AutoDrop(theta=1.0, max_theta=5.0, verbose=False)
    if autodrop is not None:
        callbacks.insert(0, autodrop)
    trainer = _trainer(epochs, callbacks)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    wall = time.perf_counter() - start
    test_acc = float(trainer.test(model, datamodule=datamodule, verbose=False)[0]["test_acc"])
    best = max(recorder.val_acc) if recorder.val_acc else float("nan")
    epochs_to_best = recorder.val_acc.index(best) + 1 if recorder.val_acc else -1
    out = {"test_acc": test_acc, "epochs_to_best": epochs_to_best, "lr": recorder.lr, "wall": wall}
    if autodrop is not None:
        out["drops"] = autodrop.drops
        out["omega"] = autodrop.omega_history
        out["drop_epochs"] = [epoch for _, epoch in autodrop.drop_history]  # 0-based epoch of each drop
    return out


def overhead(repeats: int, epochs: int, datamodule: MNIST1DDataModule) -> dict:
    """Interleaved with/without AutoDrop on a >= 1M-parameter CNN; training-epoch time only (no validation)."""
    times: dict[str, list[float]] = {"without": [], "with": []}
    hook_fraction: list[float] = []
    params = Classifier(arch="cnn", width=256).num_parameters
    for r in range(repeats):
        order = ("without", "with") if r % 2 == 0 else ("with", "without")
        for variant in order:
            pl.seed_everything(100 + r, verbose=False)
            model = _model("constant", epochs, width=256)
            recorder = EpochRecorder()
            callbacks: list[Callback] = [recorder]
            if variant == "with":
                # defaults, plus a large theta so detection, averaging and drops all happen inside the timed run
                timed = TimedAutoDrop(theta=90.0, max_theta=None, patience=1, verbose=False)
                callbacks.insert(0, timed)
            trainer = _trainer(epochs, callbacks, validate=False)
            trainer.fit(model, datamodule=datamodule)
            times[variant].append(recorder.train_seconds)
            if variant == "with":
                hook_fraction.append(timed.hook_seconds / recorder.train_seconds)
    steps = epochs * len(datamodule.train_dataloader())
    return {
        "params": params,
        "steps": steps,
        "without": times["without"],
        "with": times["with"],
        "ratio_median": statistics.median(times["with"]) / statistics.median(times["without"]),
        "ratio_min": min(times["with"]) / min(times["without"]),
        "hook_fraction": statistics.median(hook_fraction),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--overhead-repeats", type=int, default=6)
    parser.add_argument("--overhead-epochs", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)

    datamodule = MNIST1DDataModule(batch_size=128, num_samples=5000, seed=0)
    datamodule.prepare_data()
    datamodule.setup("fit")
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:  # interleave methods within each seed so machine load hits all methods alike
        for method in args.methods:
            res = run_one(method, seed, args.epochs, datamodule)
            results[method].append(res)
            extra = f" drops={res['drops']} at epochs {res['drop_epochs']}" if "drops" in res else ""
            print(
                f"  seed {seed} {method:15s} test_acc={res['test_acc']:.4f} "
                f"epochs_to_best={res['epochs_to_best']} wall={res['wall']:.0f}s{extra}",
                flush=True,
            )

    print(f"\nMNIST-1D, CNN width 32, SGD(0.05, momentum 0.9), {args.epochs} epochs, seeds {args.seeds}")
    header = f"| {'method':15s} | final test acc (%) | epochs to best val | LR drops |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    means = {}
    for method, runs in results.items():
        accs = [100 * r["test_acc"] for r in runs]
        mean = statistics.mean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        means[method] = mean
        etb = statistics.mean(r["epochs_to_best"] for r in runs)
        drops = ", ".join(str(r["drops"]) for r in runs) if "drops" in runs[0] else "-"
        print(f"| {method:15s} | {mean:6.2f} ± {std:4.2f}      | {etb:18.1f} | {drops:8s} |")
    if "autodrop" in means and len(means) > 1:
        best_name = max((m for m in means if not m.startswith("autodrop")), key=lambda m: means[m])
        gap = means["autodrop"] - means[best_name]
        verdict = "MET" if gap >= -0.3 else "MISSED"
        print(f"AutoDrop - best baseline ({best_name}) = {gap:+.2f} points (target >= -0.30): {verdict}")

    if "autodrop" in results:
        first = results["autodrop"][0]
        curves = {m: (list(range(len(rs[0]["lr"]))), rs[0]["lr"]) for m, rs in results.items()}
        omega_epochs = list(range(2, 2 + len(first["omega"])))
        png = plot_lr_schedules(
            curves,
            OUT / "autodrop_schedules.png",
            omega=(omega_epochs, first["omega"]),
            drop_epochs=first["drop_epochs"],
            title=f"MNIST-1D CNN, seed {args.seeds[0]}: LR per epoch; AutoDrop angular velocity and drops",
        )
        print(f"plot: {png}")

    if args.overhead_repeats > 0:
        ov = overhead(args.overhead_repeats, args.overhead_epochs, datamodule)
        print(
            f"\nOverhead on a {ov['params'] / 1e6:.2f}M-parameter CNN, {ov['steps']} optimizer steps per run, "
            f"{args.overhead_repeats} interleaved repeats (training-epoch time, no validation):"
        )
        print(f"  without AutoDrop: {', '.join(f'{t:.2f}' for t in ov['without'])} s")
        print(f"  with AutoDrop   : {', '.join(f'{t:.2f}' for t in ov['with'])} s")
        verdict = "MET" if ov["ratio_median"] <= 1.01 else "MISSED"
        print(
            f"  ratio with/without: median {ov['ratio_median']:.4f}, min {ov['ratio_min']:.4f} (target <= 1.01): ",
            end="",
        )
        print(verdict)
        print(f"  time inside AutoDrop's hooks / training time (median): {ov['hook_fraction']:.5f}")


if __name__ == "__main__":
    main()
