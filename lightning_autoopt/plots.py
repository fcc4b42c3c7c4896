"""Plot helpers (PNG, no display needed); matplotlib is optional: ``pip install 'lightning-autoopt[plot]'``.

Every function imports matplotlib lazily and draws on a ``Figure`` with the Agg canvas, so it works on headless
machines and never changes the global pyplot backend.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RunPlots",
    "find_run_checkpoint",
    "load_checkpoint_for_plots",
    "plot_autodrop",
    "plot_dco",
    "plot_lpf_sgd",
    "plot_lr_schedules",
    "plot_metrics",
    "plot_run",
    "plot_sharpness",
    "plot_strategy",
    "plot_tame",
    "plot_task_shift",
    "read_metrics_csv",
    "strategy_histories",
]

# One look for every method's plot: the signal in blue, its smoothed/derived curve in orange, thresholds in green,
# decisions (drops, shifts, consolidations) in red.
_SIGNAL, _DERIVED, _THRESHOLD, _EVENT, _RAW = "tab:blue", "tab:orange", "tab:green", "tab:red", "0.6"
_DPI = 110


def _figure(
    nrows: int, height: float, width: float = 8.0, height_ratios: Sequence[float] | None = None
) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Plotting needs matplotlib, which is an optional dependency: pip install 'lightning-autoopt[plot]'."
        ) from err
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ratios = {"height_ratios": list(height_ratios)} if height_ratios is not None else None
    axes = fig.subplots(nrows, 1, sharex=True, squeeze=False, gridspec_kw=ratios)[:, 0]
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


# ------------------------------------------------------------------------------------------ shared helpers
def _save(fig: Any, out_png: str | Path) -> Path:
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI)
    return out


def _floats(values: Sequence[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _log_if_wide(ax: Any, values: Sequence[float], ratio: float = 30.0) -> None:
    """Log y scale when every finite value is positive and they span more than ``ratio``."""
    finite = _finite(values)
    if finite and min(finite) > 0 and max(finite) / min(finite) > ratio:
        ax.set_yscale("log")


def _running_mean(values: Sequence[float], n: int) -> list[float]:
    """Trailing mean of the last ``n`` finite values (NaN until there is one)."""
    out, window = [], []
    for v in values:
        if math.isfinite(v):
            window.append(v)
            if len(window) > n:
                window.pop(0)
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


def _clip_spikes(ax: Any, raw: Sequence[float], keep: Sequence[float]) -> None:
    """Y range from 0 to the 99th percentile of a noisy ``raw`` curve, never below the ``keep`` curves' maximum.

    The first batches of a new task spike and would flatten the rest; the EMA and the detections stay in view.
    """
    finite = _finite(raw)
    if len(finite) < 2:
        return
    top = sorted(finite)[int(0.99 * (len(finite) - 1))] if len(finite) >= 100 else max(finite)
    top = max([top, *_finite(keep)])
    low = min(0.0, min(finite))
    if top > low:
        ax.set_ylim(bottom=low, top=low + (top - low) * 1.08)


def _mark(axes: Sequence[Any], xs: Sequence[float], label: str, color: str = _EVENT, style: str = "--") -> None:
    """Vertical lines at ``xs`` on every axis; the label goes on the first axis only (one legend entry)."""
    for i, ax in enumerate(axes):
        for j, x in enumerate(xs):
            ax.axvline(float(x), color=color, linestyle=style, linewidth=1, label=label if i == 0 and j == 0 else None)


def _every_note(history: Mapping[str, Any], unit: str) -> str:
    every = int(history.get("every", 1) or 1)
    return f" (one point per {every} {unit}s)" if every > 1 else ""


def _history_from(source: Any, what: str, keys: Sequence[str]) -> Mapping[str, Any]:
    """The history dict of a callback, of its state dict (``{"history": ...}``) or the history itself."""
    history = getattr(source, "history", source)
    if isinstance(history, Mapping) and not all(k in history for k in keys):
        inner = history.get("history")
        if isinstance(inner, Mapping):
            history = inner
    if not isinstance(history, Mapping) or not all(k in history for k in keys):
        raise ValueError(
            f"plot_{what} needs the callback, its state dict or its `history` dict (keys {', '.join(keys)}, ...); "
            f"got {type(source).__name__}"
            + (f" with keys {sorted(map(str, history))[:8]}" if isinstance(history, Mapping) else "")
            + "."
        )
    return history


def _legend(ax: Any, ncol: int = 3) -> None:
    """The legend in a row above the panel, where it never hides the curves."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(ncol, len(handles)), frameon=False,
            borderaxespad=0.2, handlelength=1.8,
        )  # fmt: skip


def _finish(axes: Sequence[Any], fig: Any, xlabel: str, title: str) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(xlabel)
    fig.suptitle(title)


# ------------------------------------------------------------------------------------------ SharpnessProbe
def _sharpness_rows(source: Any) -> list[Mapping[str, Any]]:
    rows = getattr(source, "history", source)
    if isinstance(rows, Mapping):
        rows = rows.get("history")
    if not isinstance(rows, Sequence) or isinstance(rows, str) or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(
            "plot_sharpness needs a SharpnessProbe, its state dict or its `history` (a list of {'epoch', 'step', "
            f"<measure>: value}} dicts, one per probe); got {type(source).__name__}."
        )
    return list(rows)


def _measure_description(name: str) -> str:
    try:
        from lightning_autoopt.landscape.registry import get_measure

        return get_measure(name).description
    except (ImportError, KeyError, ValueError):
        return ""


def plot_sharpness(
    source: Any, out_png: str | Path, x: str = "step", title: str | None = None, labels: Sequence[str] | None = None
) -> Path:
    """Plot every sharpness measure over training, one panel per measure, from SharpnessProbe's own history.

    Args:
        source: A ``SharpnessProbe``, its state dict (e.g. ``checkpoint["callbacks"][probe.state_key]``) or its
            ``history`` (one dict per probe). Several runs can be overlaid by passing a list of such sources and
            ``labels`` (e.g. SGD vs LPF-SGD).
        out_png: Where to write the PNG (parent folders are created).
        x: ``"step"`` (optimizer step of the probe, the default) or ``"epoch"``.
        title: Figure title.
        labels: One legend label per source when ``source`` is a list of sources.

    Returns:
        The path of the PNG.

    Raises:
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
        ValueError: If ``source`` holds no probe history, the history is empty, or ``x`` is unknown.

    Example::

        plot_sharpness(probe, "sharpness.png")
        plot_sharpness([sgd_probe, lpf_probe], "compare.png", labels=["SGD", "LPF-SGD"])
    """
    if x not in ("step", "epoch"):
        raise ValueError(f"x must be 'step' or 'epoch', got {x!r}.")
    if labels is not None:
        runs = [_sharpness_rows(s) for s in source]
        if len(runs) != len(labels):
            raise ValueError(f"got {len(runs)} sources but {len(labels)} labels.")
    else:
        runs, labels = [_sharpness_rows(source)], [""]
    measures: list[str] = []
    for rows in runs:
        for row in rows:
            measures += [k for k in row if k not in ("epoch", "step") and k not in measures]
    if not measures:
        raise ValueError("plot_sharpness: the history holds no probe yet (nothing was measured).")
    fig, axes = _figure(len(measures), 1.0 + 2.1 * len(measures))
    colors = [_SIGNAL, _DERIVED, _THRESHOLD, "tab:purple", "tab:brown"]
    for ax, name in zip(axes, measures):
        shown: list[float] = []
        for i, (rows, label) in enumerate(zip(runs, labels)):
            xs = [float(r.get(x, float("nan"))) for r in rows if name in r]
            ys = [float(r[name]) for r in rows if name in r]
            shown += ys
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.2, color=colors[i % len(colors)], label=label or None)
        _log_if_wide(ax, shown)
        ax.set_ylabel(name)
        description = _measure_description(name)
        if description:
            ax.set_title(description, fontsize=8, loc="left")
        if labels != [""]:
            ax.legend(fontsize=8, loc="best")
    n = max(len(rows) for rows in runs)
    _finish(axes, fig, "optimizer step" if x == "step" else "epoch", title or f"Sharpness over training ({n} probes)")
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ TaskShiftDetector
def plot_task_shift(
    source: Any, out_png: str | Path, true_boundaries: Sequence[float] = (), title: str | None = None
) -> Path:
    """Plot TAME's task-shift test over a stream: the loss, its EMA, the threshold and the detected shifts.

    Drawn from ``TaskShiftDetector.history`` against the optimizer step: the loss of each step (grey), its EMA
    (blue), the threshold ``mean(window) + k·max(std, floor)`` where the test is active (green; gaps after a shift
    while the new task's window fills), and a red triangle where the EMA crossed it (a shift; dashed line).

    Args:
        source: A ``TaskShiftDetector``, its state dict or its ``history``.
        out_png: Where to write the PNG (parent folders are created).
        true_boundaries: Optimizer steps where the task really changed (dotted lines), when known.
        title: Figure title.

    Returns:
        The path of the PNG.

    Raises:
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
        ValueError: If ``source`` holds no TaskShiftDetector history.
    """
    hist = _history_from(source, "task_shift", ("step", "loss", "loss_ema", "threshold"))
    steps = _floats(hist["step"])
    fig, axes = _figure(1, 4.2)
    ax = axes[0]
    loss = _floats(hist["loss"])
    ax.plot(steps, loss, color=_RAW, linewidth=0.7, label="loss of the step")
    ax.plot(steps, _floats(hist["loss_ema"]), color=_SIGNAL, linewidth=1.4, label="loss EMA")
    k = hist.get("k_sigma")
    threshold = _floats(hist["threshold"])
    ax.plot(
        steps,
        threshold,
        color=_THRESHOLD,
        linewidth=1.2,
        label=("threshold: mean + " + (f"{float(k):g}" if k is not None else "k") + "·std of the window")
        if _finite(threshold)
        else None,
    )
    shifts = _floats(hist.get("shift_steps", []))
    ema_at = _floats(hist.get("shift_loss_ema", [])) or [float("nan")] * len(shifts)
    if shifts:
        ax.plot(shifts, ema_at, linestyle="none", marker="v", markersize=9, color=_EVENT, label="shift detected")
    _mark([ax], shifts, "", style="--")
    _mark([ax], true_boundaries, "true task change", color="black", style=":")
    _clip_spikes(ax, loss, _floats(hist["loss_ema"]) + ema_at)
    ax.set_ylabel("training loss")
    _legend(ax, ncol=3)
    n = len(shifts)
    _finish(
        axes,
        fig,
        "optimizer step" + _every_note(hist, "step"),
        title or f"TaskShiftDetector: {n} shift{'s' * (n != 1)} detected",
    )
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ TAME
def plot_tame(source: Any, out_png: str | Path, title: str | None = None) -> Path:
    """Plot TAME's experts over the stream: the active expert, its shift test, spawns and re-uses.

    Two panels against the batch index of the stream: the active expert's loss with its EMA and threshold (shifts
    as dashed lines), and the active expert, with a triangle where an expert was spawned and a circle where an old
    one was re-used. When the batches carried task ids, the true tasks are shaded in the background and labelled.

    Args:
        source: A ``TAME`` module, its ``history``, or the ``"tame"`` entry of its checkpoint.
        out_png: Where to write the PNG (parent folders are created).
        title: Figure title.

    Returns:
        The path of the PNG.

    Raises:
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
        ValueError: If ``source`` holds no TAME history.
    """
    hist = _history_from(source, "tame", ("batch", "expert", "loss", "loss_ema", "threshold"))
    batches = _floats(hist["batch"])
    experts = _floats(hist["expert"])
    fig, axes = _figure(2, 6.4)
    end = max(batches, default=0.0) + 1
    changes = [(float(b), int(t)) for b, t in hist.get("true_task_changes", [])]
    for i, (start, task) in enumerate(changes):
        stop = changes[i + 1][0] if i + 1 < len(changes) else end
        for ax in axes:
            ax.axvspan(start, stop, color=f"C{task % 10}", alpha=0.08, linewidth=0)
        label_at = axes[1].get_xaxis_transform()
        axes[1].text((start + stop) / 2, 1.0, f"task {task}", transform=label_at, ha="center", va="bottom", fontsize=7)
    ax = axes[0]
    ax.plot(batches, _floats(hist["loss"]), color=_RAW, linewidth=0.7, label="active expert's loss")
    ax.plot(batches, _floats(hist["loss_ema"]), color=_SIGNAL, linewidth=1.4, label="its loss EMA")
    ax.plot(batches, _floats(hist["threshold"]), color=_THRESHOLD, linewidth=1.2, label="its threshold")
    shifts = _floats(hist.get("shift_batches", []))
    _mark([ax], shifts, "shift detected")
    _clip_spikes(ax, _floats(hist["loss"]), _floats(hist["loss_ema"]))
    ax.set_ylabel("loss")
    _legend(ax, ncol=4)

    ax = axes[1]
    ax.step(batches, experts, where="post", color=_SIGNAL, linewidth=1.4, label="active expert")
    spawns = {float(b) for b in hist.get("spawn_batches", [])}
    chosen = _floats(hist.get("switch_experts", []))
    if len(chosen) == len(shifts):
        spawn_pts = [(b, e) for b, e in zip(shifts, chosen) if b in spawns]
        reuse_pts = [(b, e) for b, e in zip(shifts, chosen) if b not in spawns]
        for pts, marker, color, label in (
            (spawn_pts, "^", _THRESHOLD, "expert spawned"),
            (reuse_pts, "o", _DERIVED, "expert re-used"),
        ):
            if pts:
                ax.plot(*zip(*pts), linestyle="none", marker=marker, markersize=8, color=color, label=label)
    num = int(hist.get("num_experts", max([int(e) for e in _finite(experts)], default=0) + 1))
    ax.set_yticks(list(range(num)))
    ax.set_ylim(-0.5, num - 0.5)
    ax.set_ylabel("active expert")
    ax.legend(fontsize=8, loc="upper left")  # experts are numbered in spawn order: the upper left stays empty
    n_spawn, n_reuse = len(spawns), max(len(shifts) - len(spawns), 0)
    _finish(
        axes,
        fig,
        "batch of the stream" + _every_note(hist, "batch"),
        title or f"TAME: {num} expert{'s' * (num != 1)}, {len(shifts)} shifts ({n_spawn} spawns, {n_reuse} re-uses)",
    )
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ LPFSGD
def plot_lpf_sgd(source: Any, out_png: str | Path, title: str | None = None) -> Path:
    """Plot LPF-SGD's noise over training: γ(t), the measured radius ‖u‖/‖θ‖, and the loss at the noisy weights.

    Args:
        source: An ``LPFSGD`` callback, its state dict or its ``history``.
        out_png: Where to write the PNG (parent folders are created).
        title: Figure title.

    Returns:
        The path of the PNG.

    Raises:
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
        ValueError: If ``source`` holds no LPFSGD history.
    """
    hist = _history_from(source, "lpf_sgd", ("step", "std", "radius", "loss"))
    steps = _floats(hist["step"])
    fig, axes = _figure(2, 6.0)
    ax = axes[0]
    std = _floats(hist["std"])
    radius = _floats(hist["radius"])
    ax.plot(steps, std, color=_THRESHOLD, linewidth=1.4, label="γ(t): relative std per filter")
    ax.plot(steps, radius, color=_SIGNAL, linewidth=0, marker=".", markersize=2, label="measured ‖u‖ / ‖θ‖ per draw")
    _log_if_wide(ax, std + radius, ratio=5.0)
    ax.set_ylabel("noise radius")
    _legend(ax)
    ax = axes[1]
    loss = _floats(hist["loss"])
    ax.plot(steps, loss, color=_RAW, linewidth=0.7, label="training loss at θ + u")
    ax.plot(steps, _running_mean(loss, max(len(loss) // 40, 5)), color=_DERIVED, linewidth=1.4, label="running mean")
    _log_if_wide(ax, loss)
    ax.set_ylabel("loss")
    _legend(ax)
    skipped = int(hist.get("skipped", 0))
    _finish(
        axes,
        fig,
        "optimizer step" + _every_note(hist, "draw"),
        title
        or f"LPF-SGD ({hist.get('schedule', 'constant')}, {hist.get('scale', 'row_norm')})"
        + (f": {skipped} skipped draws" if skipped else ""),
    )
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ DCO
def plot_dco(source: Any, out_png: str | Path, true_boundaries: Sequence[float] = (), title: str | None = None) -> Path:
    """Plot DCO's constraint over training: the penalty and its gradient against the task's gradient.

    Two panels against the optimizer step: the penalty ``strength · Σ_t ‖E_t(θ − θ*_t)‖²`` (log scale) and the norms
    of the task gradient and of the penalty gradient on the constrained weights (with the clip), so one sees when
    the constraint dominates the update. Dashed lines mark the consolidations (a task closed).

    Args:
        source: A ``DCO`` callback, its state dict or its ``history``.
        out_png: Where to write the PNG (parent folders are created).
        true_boundaries: Optimizer steps where the task really changed (dotted lines), when known.
        title: Figure title.

    Returns:
        The path of the PNG.

    Raises:
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
        ValueError: If ``source`` holds no DCO history.
    """
    hist = _history_from(source, "dco", ("step", "penalty", "task_grad_norm", "penalty_grad_norm"))
    steps = _floats(hist["step"])
    fig, axes = _figure(2, 6.0)
    penalty = [v if v > 0 else float("nan") for v in _floats(hist["penalty"])]
    axes[0].plot(steps, penalty, color=_SIGNAL, linewidth=1.2, label="penalty")
    if _finite(penalty):
        axes[0].set_yscale("log")
    else:
        axes[0].text(0.5, 0.5, "no task consolidated yet", transform=axes[0].transAxes, ha="center", color="0.4")
    axes[0].set_ylabel("DCO penalty")
    task = _floats(hist["task_grad_norm"])
    pen = _floats(hist["penalty_grad_norm"])
    clip = float(hist.get("penalty_grad_clip", 0.0) or 0.0)
    applied = [min(v, clip) if clip > 0 else v for v in pen]
    axes[1].plot(
        steps,
        _running_mean(task, max(len(task) // 60, 3)),
        color=_RAW,
        linewidth=1.2,
        label="‖task grad‖ (running mean)",
    )
    if clip > 0 and any(v > clip for v in _finite(pen)):
        axes[1].plot(steps, pen, color=_DERIVED, linewidth=0.6, alpha=0.45, label="‖penalty grad‖ before the clip")
        axes[1].axhline(clip, color=_THRESHOLD, linestyle=":", linewidth=1, label=f"clip {clip:g}")
    axes[1].plot(steps, applied, color=_DERIVED, linewidth=1.4, label="‖penalty grad‖ applied")
    if [v for v in _finite(task + applied) if v > 0]:
        axes[1].set_yscale("log")
    axes[1].set_ylabel("gradient norm")
    consolidations = _floats(hist.get("consolidation_steps", []))
    _mark(axes, consolidations, "task consolidated")
    _mark(axes, true_boundaries, "true task change", color="black", style=":")
    for ax in axes:
        _legend(ax, ncol=4)
    n = len(consolidations)
    _finish(
        axes,
        fig,
        "optimizer step" + _every_note(hist, "step"),
        title or f"DCO (strength {float(hist.get('strength', 0)):g}): {n} task{'s' * (n != 1)} consolidated",
    )
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ local-update strategies
_STRATEGY_KEYS = ("step", "round", "bytes_sent_total", "consensus_distance", "leader", "losses")


def _strategy_history_of(state: Any) -> Mapping[str, Any] | None:
    """The history in a strategy, its state dict (``history`` or ``extra.history``) or the history itself."""
    for candidate in (
        getattr(state, "history", None),
        state,
        state.get("history") if isinstance(state, Mapping) else None,
        (state.get("extra") or {}).get("history") if isinstance(state, Mapping) else None,
    ):
        if isinstance(candidate, Mapping) and all(k in candidate for k in _STRATEGY_KEYS):
            return candidate
    return None


def strategy_histories(source: Any) -> tuple[list[Mapping[str, Any]], str | None]:
    """Every rank's round history in ``source``, and the strategy's class name when known.

    Args:
        source: A local-update strategy (``.history``), one rank's history or strategy state dict, a list of them
            (one per rank), or a checkpoint's local-update entry (``checkpoint[CHECKPOINT_KEY]``, whose ``ranks``
            hold each rank's ``strategy`` state).

    Returns:
        ``(histories, name)``; ``histories`` is empty when no state holds a history (e.g. a checkpoint written
        before the strategies recorded one).
    """
    name = type(source).__name__ if hasattr(source, "history") and not isinstance(source, Mapping) else None
    if isinstance(source, Mapping) and isinstance(source.get("ranks"), Sequence):
        name = source.get("strategy")
        states: list[Any] = [r.get("strategy", r) if isinstance(r, Mapping) else r for r in source["ranks"]]
    elif isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        states = list(source)
    else:
        states = [source]
    for state in states:
        if isinstance(state, Mapping) and isinstance(state.get("class"), str):
            name = name or state["class"]
    found = [_strategy_history_of(state) for state in states]
    return [h for h in found if h is not None], name


def plot_strategy(source: Any, out_png: str | Path, title: str | None = None) -> Path:
    """Plot a local-update strategy's rounds: per-rank loss and the leader, consensus distance, bytes sent.

    Drawn from the strategy's own round history (``LocalUpdateStrategy.history``: one entry per round with
    ``step``, ``round``, ``bytes_sent_total``, ``consensus_distance``, ``leader``, ``losses``, ``healed``,
    ``nonfinite``), against the optimizer step. Panels that the strategy has no data for are left out: the loss
    panel when it does not gather the ranks' losses, the leader panel without a leader, the consensus panel when the
    distance was never computed. Red lines mark rounds where a replica was healed or a non-finite value was seen.

    Args:
        source: A strategy, one rank's history or state dict, a list of per-rank histories, or a checkpoint's
            local-update entry (``checkpoint[CHECKPOINT_KEY]``); bytes are drawn per rank when several are given.
        out_png: Where to write the PNG (parent folders are created).
        title: Figure title.

    Returns:
        The path of the PNG.

    Raises:
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
        ValueError: If ``source`` holds no round history, or the history has no round.

    Example::

        plot_strategy(trainer.strategy, "rounds.png")
        plot_strategy(torch.load("last.ckpt", weights_only=True)[CHECKPOINT_KEY], "rounds.png")
    """
    histories, name = strategy_histories(source)
    if not histories:
        raise ValueError(
            "plot_strategy needs a local-update strategy's round history (keys "
            f"{', '.join(_STRATEGY_KEYS)}, ...); none found in {type(source).__name__}."
        )
    hist = histories[0]
    steps = _floats(hist["step"])
    if not steps:
        raise ValueError("plot_strategy: the history holds no round yet.")
    rounds = len(steps)
    losses_per_round = [list(v) if isinstance(v, Sequence) else [] for v in hist["losses"]]
    num_ranks = max((len(v) for v in losses_per_round), default=0)
    leader = [int(v) for v in _floats(hist["leader"])] if hist["leader"] else []
    has_leader = any(v >= 0 for v in leader)
    consensus = _floats(hist["consensus_distance"])
    panels = ["loss"] * (num_ranks > 0) + ["leader"] * has_leader + ["consensus"] * bool(_finite(consensus))
    panels.append("bytes")
    heights = {"loss": 3.0, "leader": 1.6, "consensus": 2.2, "bytes": 2.2}
    fig, axes = _figure(len(panels), 1.2 + sum(heights[p] for p in panels), height_ratios=[heights[p] for p in panels])
    ax_of = dict(zip(panels, axes))
    if "loss" in ax_of:
        ax = ax_of["loss"]
        for r in range(num_ranks):
            ys = [float(v[r]) if r < len(v) and v[r] is not None else float("nan") for v in losses_per_round]
            ax.plot(steps, ys, linewidth=1.0, color=f"C{r % 10}", label=f"rank {r}")
        if has_leader:
            pts = [
                (s, float(v[lead]))
                for s, v, lead in zip(steps, losses_per_round, leader)
                if 0 <= lead < len(v) and v[lead] is not None
            ]
            if pts:
                ax.plot(*zip(*pts), linestyle="none", marker="*", markersize=7, color="black", label="leader")
        _log_if_wide(ax, [float(x) for v in losses_per_round for x in v if x is not None])
        ax.set_ylabel("loss at the round")
    if "leader" in ax_of:
        ax = ax_of["leader"]
        ax.step(steps, [v if v >= 0 else float("nan") for v in leader], where="post", color="black", linewidth=1.2)
        top = max(max(leader), num_ranks - 1, 0)
        ax.set_yticks(list(range(top + 1)) if top < 12 else list(range(0, top + 1, max(top // 6, 1))))
        ax.set_ylim(-0.5, top + 0.5)
        ax.set_ylabel("leader (rank)")
    if "consensus" in ax_of:
        ax = ax_of["consensus"]
        pts = [(s, c) for s, c in zip(steps, consensus) if math.isfinite(c)]  # NaN: rounds that did not measure it
        ax.plot(*zip(*pts), marker=".", markersize=4, linewidth=1.0, color=_DERIVED)
        _log_if_wide(ax, consensus, ratio=10.0)
        ax.set_ylabel("consensus distance")
    ax = ax_of["bytes"]
    for r, h in enumerate(histories):
        ax.plot(
            _floats(h["step"]),
            [v / 1e6 for v in _floats(h["bytes_sent_total"])],
            linewidth=1.2,
            color=f"C{r % 10}" if len(histories) > 1 else _SIGNAL,
            label=f"rank {r}" if len(histories) > 1 else None,
        )
    ax.set_ylabel("MB sent (cumulative)")
    for key, label in (("healed", "replica healed"), ("nonfinite", "non-finite seen")):
        values = _floats(hist.get(key, []))
        events = [s for s, a, b in zip(steps[1:], values, values[1:]) if b > a]
        if values and values[0] > 0:
            events.insert(0, steps[0])
        _mark(axes, events, label, style="--" if key == "healed" else ":")
    for ax in axes:
        _legend(ax, ncol=6)
    _finish(axes, fig, "optimizer step" + _every_note(hist, "round"), title or f"{name or 'strategy'}: {rounds} rounds")
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ training curves
_MAX_METRIC_PANELS = 6


def _metric_group(key: str) -> str:
    """``train_loss_step`` -> ``loss``; ``val_acc`` -> ``acc``; ``lr-SGD`` -> ``lr-SGD``."""
    for suffix in ("_step", "_epoch"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    return key.rsplit("_", 1)[-1] if "_" in key else key


def plot_metrics(
    metrics_csv: str | Path, out_png: str | Path, keys: Sequence[str] | None = None, title: str | None = None
) -> Path:
    """Plot the training curves of a CSVLogger ``metrics.csv``: one panel per kind of metric, against the step.

    Metrics are grouped by their last word (``train_loss`` and ``val_loss`` share the ``loss`` panel, ``val_acc``
    gets an ``acc`` panel); by default the method signals logged under a ``prefix/`` (``autodrop/lr``, ...) are
    left to the methods' own plots, and at most six panels are drawn.

    Args:
        metrics_csv: The ``metrics.csv`` file.
        out_png: Where to write the PNG (parent folders are created).
        keys: The metrics to draw (default: every metric without a ``/``, or all of them if every one has one).
        title: Figure title.

    Returns:
        The path of the PNG.

    Raises:
        FileNotFoundError: If the file does not exist.
        ImportError: If matplotlib is not installed (install the ``plot`` extra).
        ValueError: If the file holds no metric to draw (or a key in ``keys`` is not in it).
    """
    metrics = read_metrics_csv(metrics_csv, x="step")
    if keys is None:
        chosen = [k for k in metrics if "/" not in k] or list(metrics)
    else:
        missing = [k for k in keys if k not in metrics]
        if missing:
            raise ValueError(f"metrics {missing} are not in {metrics_csv} (it has {sorted(metrics)}).")
        chosen = list(keys)
    if not chosen:
        raise ValueError(f"{metrics_csv} holds no metric to plot.")
    groups: dict[str, list[str]] = {}
    for key in chosen:
        groups.setdefault(_metric_group(key), []).append(key)
    order = sorted(groups, key=lambda g: (g not in ("loss", "acc", "accuracy"), g not in ("loss",), g))
    order = order[:_MAX_METRIC_PANELS]
    fig, axes = _figure(len(order), 1.0 + 2.2 * len(order))
    for ax, group in zip(axes, order):
        shown: list[float] = []
        for key in groups[group]:
            xs, ys = metrics[key]
            ax.plot(xs, ys, marker="." if len(xs) < 60 else None, markersize=4, linewidth=1.2, label=key)
            shown += ys
        if group == "loss":
            _log_if_wide(ax, shown, ratio=10.0)
        ax.set_ylabel(group)
        ax.legend(fontsize=8, loc="best")
    _finish(axes, fig, "optimizer step", title or f"Training curves ({Path(metrics_csv).parent.name})")
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------------ a whole run
# Callback class name -> (file stem, plot function), and the history keys that identify a subclass's state.
_CALLBACK_PLOTS: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    "AutoDrop": ("autodrop", plot_autodrop, ("omega", "statistic")),
    "SharpnessProbe": ("sharpness", plot_sharpness, ()),
    "TaskShiftDetector": ("task_shift", plot_task_shift, ("loss_ema", "threshold", "shift_steps")),
    "LPFSGD": ("lpf_sgd", plot_lpf_sgd, ("std", "radius")),
    "DCO": ("dco", plot_dco, ("penalty", "task_grad_norm")),
}


@dataclass
class RunPlots:
    """What :func:`plot_run` wrote and found.

    Attributes:
        checkpoint: The checkpoint the method signals were read from.
        paths: The PNGs written, training curves first.
        notes: One line per thing that could not be plotted, and why (e.g. a strategy state without history).
    """

    checkpoint: Path
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint of a run folder: ``checkpoints/last.ckpt``, else the newest ``last*.ckpt``, else the newest.

    Looks in ``run_dir/checkpoints/`` (the ``autoopt`` CLI's layout: ``ResumableCSVLogger`` with the default
    ``ModelCheckpoint``), then in ``run_dir`` itself. ``run_dir`` may also be the ``.ckpt`` file.

    Raises:
        FileNotFoundError: If ``run_dir`` does not exist or holds no checkpoint; the message names the run folders
            found below it, if any (e.g. ``lightning_logs/`` was given instead of ``lightning_logs/NAME/``).
    """
    run = Path(run_dir)
    if run.is_file():
        return run
    if not run.is_dir():
        raise FileNotFoundError(f"{run} does not exist; give the run folder (the one holding metrics.csv).")
    for folder in (run / "checkpoints", run):
        if not folder.is_dir():
            continue
        if (folder / "last.ckpt").is_file():
            return folder / "last.ckpt"
        for pattern in ("last*.ckpt", "*.ckpt"):
            found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
            if found:
                return found[-1]
    below = sorted({p.parent.parent for p in run.glob("**/checkpoints/*.ckpt")})
    hint = f" Run folders below it: {', '.join(str(p) for p in below[:5])}." if below else ""
    raise FileNotFoundError(
        f"No checkpoint in {run / 'checkpoints'} or {run}: the method plots are drawn from the callbacks' state in "
        f"the run's last checkpoint (the autoopt CLI writes checkpoints/last.ckpt unless checkpointing is off).{hint}"
    )


def load_checkpoint_for_plots(path: str | Path) -> tuple[dict[str, Any], bool]:
    """Verify and load a checkpoint on the CPU, with torch's safe loader (``weights_only=True``) when it can.

    Returns:
        ``(checkpoint, safe)``; ``safe`` is ``False`` when the file holds objects the safe loader refuses (e.g.
        custom classes in the hyperparameters) and it was loaded with ``weights_only=False``; only do that with
        files you trust, such as your own runs.

    Raises:
        CheckpointError: If the file is missing, truncated, corrupted or not a checkpoint (one message naming it).
    """
    import pickle

    import torch

    from lightning_autoopt.checkpoint import CheckpointError, verify_checkpoint

    verify_checkpoint(path, load=False)  # CRC of every record: a damaged file fails here, naming it
    try:
        checkpoint, safe = torch.load(path, map_location="cpu", weights_only=True), True
    except pickle.UnpicklingError:
        checkpoint, safe = torch.load(path, map_location="cpu", weights_only=False), False
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"holds a {type(checkpoint).__name__}, not a Lightning checkpoint dict")
    return checkpoint, safe


def _callback_kind(state_key: str, state: Any) -> str | None:
    name = state_key.split("{", 1)[0].rsplit(".", 1)[-1]
    if name in _CALLBACK_PLOTS:
        return name
    history = state.get("history") if isinstance(state, Mapping) else None
    for kind, (_, _, keys) in _CALLBACK_PLOTS.items():  # a subclass keeps its parent's state layout
        if keys and isinstance(history, Mapping) and all(k in history for k in keys):
            return kind
    return None


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> RunPlots:
    """Draw every plot of a finished (or interrupted) run: training curves plus one PNG per method signal.

    Reads ``run_dir/metrics.csv`` (training curves, :func:`plot_metrics`) and the run's checkpoint
    (:func:`find_run_checkpoint`, verified and loaded with :func:`load_checkpoint_for_plots`), whose state holds each
    method's own history: AutoDrop, SharpnessProbe, TaskShiftDetector, LPFSGD and DCO callbacks (found by class
    name, or by the layout of their state for a subclass), a TAME module, and a local-update strategy's per-rank
    round history. Files are named after the method (``autodrop.png``, ``task_shift.png``, ``strategy.png``,
    ``training.png``; ``_2``, ``_3`` for a second callback of a kind).

    Args:
        run_dir: The run folder (``lightning_logs/NAME`` with the ``autoopt`` CLI), or a ``.ckpt`` file.
        out_dir: Where to write the PNGs (default ``run_dir/plots``).

    Returns:
        The checkpoint used, the PNGs written, and notes on what could not be drawn.

    Raises:
        FileNotFoundError: If the folder does not exist or holds no checkpoint.
        CheckpointError: If the checkpoint is damaged.
        ImportError: If matplotlib is not installed (install the ``plot`` extra).

    Example::

        result = plot_run("lightning_logs/autodrop_mnist1d")
        for path in result.paths:
            print(path)
    """
    from lightning_autoopt.checkpoint import CHECKPOINT_KEY

    ckpt_path = find_run_checkpoint(run_dir)
    run = Path(run_dir) if Path(run_dir).is_dir() else ckpt_path.parent
    if run.name == "checkpoints" or (run == ckpt_path.parent and run.name == "checkpoints"):
        run = run.parent
    out = Path(out_dir) if out_dir is not None else run / "plots"
    result = RunPlots(checkpoint=ckpt_path)
    checkpoint, safe = load_checkpoint_for_plots(ckpt_path)
    if not safe:
        result.notes.append(
            f"{ckpt_path} holds objects torch's safe loader refuses; it was loaded with weights_only=False."
        )
    metrics_csv = run / "metrics.csv"
    if metrics_csv.is_file():
        try:
            result.paths.append(plot_metrics(metrics_csv, out / "training.png"))
        except ValueError as err:
            result.notes.append(f"training curves: {err}")
    else:
        result.notes.append(f"no {metrics_csv}: no training curves (the run was not logged with a CSV logger).")
    used: dict[str, int] = {}
    found = False

    def stem_for(stem: str) -> Path:
        used[stem] = used.get(stem, 0) + 1
        return out / (f"{stem}.png" if used[stem] == 1 else f"{stem}_{used[stem]}.png")

    for state_key, state in (checkpoint.get("callbacks") or {}).items():
        kind = _callback_kind(str(state_key), state)
        if kind is None:
            continue
        found = True
        stem, plot, _ = _CALLBACK_PLOTS[kind]
        try:
            if kind == "AutoDrop":
                csv_file = metrics_csv if metrics_csv.is_file() else None
                result.paths.append(plot(state["history"], stem_for(stem), metrics_csv=csv_file))
            else:
                result.paths.append(plot(state, stem_for(stem)))
        except (ValueError, KeyError) as err:
            result.notes.append(f"{kind}: nothing to plot ({err}).")
    if isinstance(checkpoint.get("tame"), Mapping):
        found = True
        try:
            result.paths.append(plot_tame(checkpoint["tame"], stem_for("tame")))
        except ValueError as err:
            result.notes.append(f"TAME: nothing to plot ({err}).")
    stored = checkpoint.get(CHECKPOINT_KEY)
    if isinstance(stored, Mapping):
        found = True
        histories, name = strategy_histories(stored)
        if histories:
            try:
                result.paths.append(plot_strategy(stored, stem_for("strategy")))
            except ValueError as err:
                result.notes.append(f"{name or 'strategy'}: nothing to plot ({err}).")
        else:
            result.notes.append(
                f"{name or 'the local-update strategy'}: its saved state holds no round history (written by a "
                "version that does not record one); no strategy plot."
            )
    if not found:
        result.notes.append("no method signal found in the checkpoint (no callback or strategy of this package).")
    return result
