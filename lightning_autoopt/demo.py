"""``make demo``: train the AutoDrop recipe on MNIST-1D, test it, plot and explain every LR drop.

Runs the ``autodrop_mnist1d`` recipe through :class:`~lightning_autoopt.cli.AutoOptCLI` (the same path as
``autoopt fit --config ...``), evaluates the final weights on the test split, writes the plot of the LR, the angular
velocity and the trend statistic with its threshold (from the callback's own history, plus the validation curve
from the CSV log), and prints where each drop happened and why.

Example::

    python -m lightning_autoopt.demo                 # the recipe as written (a minute or two on 2 cores)
    python -m lightning_autoopt.demo --epochs 20     # a quicker look (fewer decisions)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

_RECIPE = "autodrop_mnist1d.yaml"


def find_recipe(name: str = _RECIPE) -> Path:
    """The path of a recipe shipped inside the package (works from a wheel as well as from a clone)."""
    from lightning_autoopt.recipes import recipe_path

    return recipe_path(name)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the demo; returns the paths and the final test accuracy (also printed)."""
    parser = argparse.ArgumentParser(prog="python -m lightning_autoopt.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=None, help="Lightning CLI YAML (default: the AutoDrop recipe)")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    parser.add_argument("--root", type=Path, default=Path("runs"), help="folder for logs and checkpoints")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to metrics.csv)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")

    from lightning_autoopt.cli import AutoOptCLI
    from lightning_autoopt.plots import plot_autodrop

    recipe = args.recipe if args.recipe is not None else find_recipe()
    cli_args = ["--config", str(recipe), f"--trainer.logger.init_args.save_dir={args.root}"]
    if args.epochs is not None:
        cli_args.append(f"--trainer.max_epochs={args.epochs}")
    cli = AutoOptCLI(args=cli_args, run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=datamodule)
    results = trainer.test(model, datamodule=datamodule, verbose=False)  # the final weights, not the best ones
    test_acc = float(results[0]["test_acc"]) if results else float("nan")

    logger_dir = trainer.logger.log_dir if trainer.logger is not None else None
    log_dir = Path(logger_dir or trainer.default_root_dir)
    metrics_csv = log_dir / "metrics.csv"
    ckpt = trainer.checkpoint_callback
    checkpoint = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
    autodrop = next((cb for cb in getattr(trainer, "callbacks", []) if type(cb).__name__ == "AutoDrop"), None)
    plot_path = None
    if autodrop is not None:
        plot_path = plot_autodrop(
            autodrop,
            args.plot or log_dir / "autodrop.png",
            metrics_csv=metrics_csv if metrics_csv.is_file() else None,
            title=f"AutoDrop() defaults on {recipe.stem}: {autodrop.drops} LR drops, test acc {test_acc:.4f}",
        )
    summary: dict[str, object] = {
        "logs": str(metrics_csv),
        "checkpoint": checkpoint or "(none)",
        "plot": str(plot_path),
        "test_acc": test_acc,
        "drops": getattr(autodrop, "drops", None),
    }
    print("\nAutoDrop demo finished")  # the demo is a script: printing is its job
    print(f"  recipe        : {recipe}")
    print(f"  logs          : {metrics_csv}")
    print(f"  checkpoint    : {summary['checkpoint']}")
    print(f"  plot          : {plot_path}")
    print(f"  final test acc: {test_acc:.4f}")
    if autodrop is not None:
        for line in explain_drops(autodrop.history, trainer.global_step):
            print(line)
    return summary


def explain_drops(history: dict, budget: float) -> list[str]:
    """Human-readable lines: the decision interval and, for every drop, where it was detected, why, and the new LR.

    Args:
        history: :attr:`AutoDrop.history`.
        budget: Optimizer steps of the run (for the "% of the run" figures).
    """
    steps = [int(s) for s in history["step"]]
    at = {int(s): i for i, s in enumerate(history["step"])}
    total = int(budget) if budget and budget != float("inf") else (steps[-1] if steps else 0)
    test = history["saturation"]
    lines = [
        f"  decisions     : {len(steps)}, every {history['interval']} optimizer steps ({test} test)",
        f"  LR drops      : {len(history['drop_steps'])}",
    ]
    for k, drop in enumerate(history["drop_steps"]):
        detect = history["detections"][k] if k < len(history["detections"]) else drop
        i, j = at.get(int(detect)), at.get(int(drop))
        stat = history["statistic"][i] if i is not None else float("nan")
        thr = history["threshold"][i] if i is not None else float("nan")
        lr = history["lr"][j] if j is not None else float("nan")
        why = (
            f"trend z of the last angles fell to {stat:+.2f} (|z| < {thr:g}) "
            + ("after rising" if k == 0 else "at the new LR")
            if test == "trend"
            else f"|Δω| = {stat:.3g}° < θ = {thr:.3g}°"
        )
        where = f"{100 * drop / total:.0f} % of the run" if total else ""
        lines.append(f"  drop {k + 1}        : step {drop} ({where}): lr -> {lr:.3g}; detected at step {detect}: {why}")
    if not history["drop_steps"]:
        lines.append(
            "  note          : no drop: the angular velocity never rose and levelled off within the run (see the plot);"
            " a longer run gives the test more decisions."
        )
    return lines


if __name__ == "__main__":
    main()
