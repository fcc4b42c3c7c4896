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


def read_metrics_csv(metrics_csv: str | Path, x: str = "epoch") -> dict[str, tuple[list[float], list[float]]]:
    """Read a Lightning ``CSVLogger`` ``metrics.csv`` into ``{metric: (x, values)}``.

    ``x`` is the ``epoch`` column when present (the default; epoch-level metrics, the usual case) or the ``step``
    column (``x="step"``), falling back to the other one. Empty cells (metrics logged in other rows) are skipped.

    Args:
        metrics_csv: Path of the ``metrics.csv`` file.
        x: ``"epoch"`` or ``"step"``: which column gives the x positions.

    Returns:
        For each metric column, the x positions and values in file order.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If ``x`` is not ``"epoch"`` or ``"step"``.
    """
    if x not in ("epoch", "step"):
        raise ValueError(f"x must be 'epoch' or 'step', got {x!r}.")
    other = "step" if x == "epoch" else "epoch"
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"No metrics file at {path}; was the run logged with a CSVLogger?")
    out: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            x_raw = row.get(x) or row.get(other) or ""
            if x_raw == "":
                continue
            pos = float(x_raw)
            for key, value in row.items():
                if key in ("epoch", "step") or value in ("", None):
                    continue
                xs, ys = out.setdefault(key, ([], []))
                xs.append(pos)
                ys.append(float(value))
    return out


def _history_of(source: Any) -> Mapping[str, Any]:
    history = getattr(source, "history", source)
    if not isinstance(history, Mapping) or "step" not in history or "omega" not in history:
        raise ValueError(
            "plot_autodrop needs an AutoDrop callback or its `history` dict (keys step, omega, statistic, threshold, "
            f"lr, drops, detections, drop_steps); got {type(source).__name__}."
        )
    return history


def plot_autodrop(
    source: Any,
    out_png: str | Path,
    metrics_csv: str | Path | None = None,
    title: str | None = None,
) -> Path:
    """Plot why AutoDrop dropped the LR: LR, angular velocity ω, the saturation statistic with its threshold.

    Drawn from the callback's own :attr:`~lightning_autoopt.callbacks.AutoDrop.history` (so it works with any
    logger, or none, and after a resume), against the optimizer step:

    1. the learning rate (log scale);
    2. ω in degrees, one point per decision (gaps where the window was reset after a drop);
    3. the test statistic with its threshold: for the trend test, the Mann–Kendall ``z`` of the last ``window``
       values of ω with the band ``|z| < threshold`` shaded: ω must first rise above the band, the drop is detected
       when ``z`` falls back into it; for the reference test, ``|Δω|`` against θ (log scale);
    4. optionally ``val_loss``/``val_acc`` against the step, read from a CSVLogger ``metrics.csv``.

    Triangles mark detections, dashed red lines the drops (``patience`` decisions later).

    Args:
        source: An ``AutoDrop`` callback, or its ``history`` dict (e.g. read from a checkpoint's callback state).
        out_png: Where to write the PNG (parent folders are created).
        metrics_csv: A CSVLogger ``metrics.csv`` of the same run, for the validation panel (optional).
        title: Figure title.

    Returns:
        The path of the PNG.

    Raises:
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
        ValueError: If ``source`` holds no AutoDrop history.
    """
    hist = _history_of(source)
    val: tuple[str, tuple[list[float], list[float]]] | None = None
    if metrics_csv is not None:
        metrics = read_metrics_csv(metrics_csv, x="step")
        key = next((k for k in ("val_loss", "val_acc") if k in metrics), None)
        val = (key, metrics[key]) if key else None
    steps = [float(v) for v in hist["step"]]
    fig, axes = _figure(4 if val else 3, 9.0 if val else 7.2)
    drops = [float(v) for v in hist.get("drop_steps", [])]
    detections = [float(v) for v in hist.get("detections", [])]
    trend = hist.get("saturation", "trend") == "trend"

    axes[0].step(steps, hist["lr"], where="post", color="tab:blue")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("learning rate")

    axes[1].plot(steps, hist["omega"], marker=".", markersize=3, linewidth=1, color="tab:orange")
    axes[1].set_ylabel("angular velocity ω (°)")

    stat = [float(v) for v in hist["statistic"]]
    thr = [float(v) for v in hist["threshold"]]
    ax = axes[2]
    if trend:
        z = thr[-1] if thr else 2.0
        finite = [v for v in stat if math.isfinite(v)]
        cap = 12.0 * z  # a perfect line of angles has a large z: clip for display, keeps the band readable
        shown = [max(-cap, min(cap, v)) if not math.isnan(v) else float("nan") for v in stat]
        ax.plot(
            steps, shown, marker=".", markersize=3, linewidth=1, color="tab:purple", label="trend z of ω (Mann–Kendall)"
        )
        ax.axhspan(-z, z, color="tab:green", alpha=0.12, label=f"|z| < {z:g}: no trend (saturated once armed)")
        ax.axhline(z, color="tab:green", linewidth=0.8, linestyle=":", label=f"z > {z:g}: ω rising (arms the test)")
        low = min([-1.5 * z, *[max(-cap, v) for v in finite]]) - 0.3 * z
        high = max([1.5 * z, *[min(cap, v) for v in finite]]) + 0.3 * z
        ax.set_ylim(low, high)
        ax.set_ylabel("trend z of ω")
    else:
        positive = [v if math.isfinite(v) and v > 0 else float("nan") for v in stat]
        ax.plot(steps, positive, marker=".", markersize=3, linewidth=1, color="tab:purple", label="|Δω| (°)")
        ax.step(steps, thr, where="post", color="tab:green", label="θ (°)")
        ax.set_yscale("log")
        ax.set_ylabel("|Δω| vs θ (°)")
    at = {s: v for s, v in zip(steps, stat)}
    det_y = [at.get(s, float("nan")) for s in detections]
    if trend:
        det_y = [max(-cap, min(cap, v)) for v in det_y]
    ax.plot(detections, det_y, linestyle="none", marker="v", markersize=9, color="tab:red", label="detected")
    ax.legend(loc="best", fontsize=8)

    if val:
        val_key, (vx, vy) = val
        axes[3].plot(vx, vy, marker=".", markersize=3, linewidth=1, color="tab:green")
        axes[3].set_ylabel(val_key)
    for i, axis in enumerate(axes):
        for j, x in enumerate(drops):
            axis.axvline(
                x, color="tab:red", linestyle="--", linewidth=1, label="LR drop" if i == 0 and j == 0 else None
            )
        axis.grid(alpha=0.3)
    if drops:
        axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("optimizer step")
    n = len(drops)
    fig.suptitle(title or f"AutoDrop ({hist.get('saturation', 'trend')} test): {n} drop{'s' * (n != 1)}")
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
