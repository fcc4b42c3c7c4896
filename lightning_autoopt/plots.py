"""Plot helpers (PNG, no display needed); matplotlib is optional: ``pip install 'lightning-autoopt[plot]'``.

Every function imports matplotlib lazily and draws on a ``Figure`` with the Agg canvas, so it works on headless
machines and never changes the global pyplot backend.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_autodrop", "plot_lr_schedules", "read_metrics_csv"]


def _figure(nrows: int, height: float) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Plotting needs matplotlib, which is an optional dependency: pip install 'lightning-autoopt[plot]'."
        ) from err
    fig = Figure(figsize=(8.0, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, axes


def read_metrics_csv(metrics_csv: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """Read a Lightning ``CSVLogger`` ``metrics.csv`` into ``{metric: (x, values)}``.

    ``x`` is the ``epoch`` column when present (epoch-level metrics, the usual case), else the ``step`` column.
    Empty cells (metrics logged in other rows) are skipped.

    Args:
        metrics_csv: Path of the ``metrics.csv`` file.

    Returns:
        For each metric column, the x positions and values in file order.

    Raises:
        FileNotFoundError: If the file does not exist.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"No metrics file at {path}; was the run logged with a CSVLogger?")
    out: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            x_raw = row.get("epoch") or row.get("step") or ""
            if x_raw == "":
                continue
            x = float(x_raw)
            for key, value in row.items():
                if key in ("epoch", "step") or value in ("", None):
                    continue
                xs, ys = out.setdefault(key, ([], []))
                xs.append(x)
                ys.append(float(value))
    return out


def _drop_positions(xs: Sequence[float], drops: Sequence[float]) -> list[float]:
    """Positions where the cumulative drop count increased (from 0 before the first entry)."""
    return [x for x, now, before in zip(xs, drops, [0.0, *drops]) if now > before]


def plot_autodrop(metrics_csv: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Plot AutoDrop's LR and angular velocity per epoch, with the drops marked, from a CSVLogger file.

    Panels: learning rate (log scale), angular velocity ω (degrees), and ``val_acc``/``val_loss`` when logged.
    Vertical dashed lines mark the epochs where ``autodrop/drops`` increased.

    Args:
        metrics_csv: ``metrics.csv`` written by ``CSVLogger`` for a run with the AutoDrop callback.
        out_png: Where to write the PNG (parent folders are created).
        title: Figure title (defaults to the run folder name).

    Returns:
        The path of the PNG.

    Raises:
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
        ValueError: If the file holds no ``autodrop/lr`` column.
    """
    metrics = read_metrics_csv(metrics_csv)
    if "autodrop/lr" not in metrics:
        raise ValueError(f"{metrics_csv} has no 'autodrop/lr' column; was AutoDrop in the run's callbacks?")
    extra = next((k for k in ("val_acc", "val_loss") if k in metrics), None)
    fig, axes = _figure(3 if extra else 2, 7.5 if extra else 5.5)
    lr_x, lr_y = metrics["autodrop/lr"]
    axes[0].step(lr_x, lr_y, where="post", color="tab:blue")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("learning rate")
    if "autodrop/angular_velocity" in metrics:
        w_x, w_y = metrics["autodrop/angular_velocity"]
        axes[1].plot(w_x, w_y, marker=".", color="tab:orange")
    axes[1].set_ylabel("angular velocity (deg)")
    if extra:
        axes[2].plot(*metrics[extra], marker=".", color="tab:green")
        axes[2].set_ylabel(extra)
    drops: list[float] = []
    if "autodrop/drops" in metrics:
        drops = _drop_positions(*metrics["autodrop/drops"])
    for ax in axes:
        for i, x in enumerate(drops):
            ax.axvline(x, color="tab:red", linestyle="--", linewidth=1, label="LR drop" if i == 0 else None)
        ax.grid(alpha=0.3)
    if drops:
        axes[0].legend(loc="upper right")
    axes[-1].set_xlabel("epoch")
    run = Path(metrics_csv).resolve().parent
    fig.suptitle(title or f"AutoDrop: {run.parent.name}/{run.name}")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def plot_lr_schedules(
    lr_curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    out_png: str | Path,
    omega: tuple[Sequence[float], Sequence[float]] | None = None,
    drop_epochs: Sequence[float] = (),
    title: str = "Learning-rate schedules",
) -> Path:
    """Compare LR schedules (one curve per method, log scale) and optionally AutoDrop's angular velocity.

    Args:
        lr_curves: ``{method: (epochs, lrs)}``.
        out_png: Where to write the PNG (parent folders are created).
        omega: ``(epochs, degrees)`` of AutoDrop's angular velocity, drawn in a second panel.
        drop_epochs: Epochs at which AutoDrop dropped the LR (vertical dashed lines).
        title: Figure title.

    Returns:
        The path of the PNG.

    Raises:
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
    """
    fig, axes = _figure(2 if omega else 1, 6.0 if omega else 3.8)
    for name, (xs, ys) in lr_curves.items():
        ys_pos = [y if y > 0 and math.isfinite(y) else float("nan") for y in ys]
        axes[0].step(list(xs), ys_pos, where="post", label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("learning rate")
    axes[0].legend(fontsize=8)
    if omega:
        axes[1].plot(list(omega[0]), list(omega[1]), marker=".", color="tab:orange")
        axes[1].set_ylabel("AutoDrop angular velocity (deg)")
    for ax in axes:
        for x in drop_epochs:
            ax.axvline(x, color="tab:red", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
