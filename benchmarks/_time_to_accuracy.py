"""Time to accuracy from per-epoch curves: the tables and plots of ``benchmarks/constrained_link.py`` (pure, no torch).

A *run* is one ``(setting, method, seed)`` training run: ``{"setting", "method", "label", "seed", "curve": [...]}``
where every curve point is one epoch: ``epoch``, ``steps``, ``rounds``, ``seconds`` (that epoch's training wall time,
slowest rank, evaluation excluded), ``acc`` (test accuracy of the policy weights, 0-1), ``self_bytes_sum`` (the
strategies' own ``bytes_sent_total`` summed over ranks, cumulative), ``kernel_bytes`` (what the kernel counted on the
shaped links during the timed epochs, cumulative) and, in runs recorded since they exist, ``wire_bytes_sum`` (the
strategies' ``wire_bytes_total`` summed over ranks) and ``kernel_all_bytes`` (every interface: on several hosts the
link plus each host's loopback; one host: the link).

Time to target, per setting: the target is DDP's final accuracy (mean over seeds) minus ``margin`` points; a method's
curve is the mean over its seeds, epoch by epoch (accuracy, cumulative wall time, bytes); its time to target is the
mean cumulative wall time at the end of the first epoch whose mean accuracy reaches the target ("not reached"
otherwise). ``seeds reaching`` counts the seeds whose own curve reaches the same target.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Run = dict[str, Any]


def cumulative_seconds(curve: Sequence[dict[str, Any]]) -> list[float]:
    """Wall time at the end of every epoch (the per-epoch ``seconds`` summed)."""
    out, total = [], 0.0
    for point in curve:
        total += float(point["seconds"])
        out.append(total)
    return out


def mean_curve(runs: Sequence[Run]) -> list[dict[str, float]]:
    """Epoch-by-epoch mean over ``runs`` (cut to the shortest): ``acc``, ``time`` (cumulative s), bytes, steps.

    Raises:
        ValueError: On an empty list of runs.
    """
    if not runs:
        raise ValueError("mean_curve needs at least one run.")
    n = min(len(r["curve"]) for r in runs)
    times = [cumulative_seconds(r["curve"]) for r in runs]
    out = []
    for i in range(n):
        points = [r["curve"][i] for r in runs]
        out.append(
            {
                "epoch": float(points[0]["epoch"]),
                "acc": statistics.mean(float(p["acc"]) for p in points),
                "time": statistics.mean(t[i] for t in times),
                "steps": statistics.mean(float(p["steps"]) for p in points),
                "rounds": statistics.mean(float(p.get("rounds", 0)) for p in points),
                "self_bytes_sum": statistics.mean(float(p["self_bytes_sum"]) for p in points),
                "kernel_bytes": statistics.mean(float(p["kernel_bytes"]) for p in points),
            }
        )
    return out


def _mean_of(points: Sequence[dict[str, Any]], key: str) -> float:
    """The mean of ``key`` over ``points``; NaN when a point lacks it (runs recorded before it existed)."""
    if any(key not in p for p in points):
        return math.nan
    return statistics.mean(float(p[key]) for p in points)


def time_to_target(curve: Sequence[dict[str, float]], target: float) -> tuple[int, float] | None:
    """``(epoch, time)`` of the first point of a :func:`mean_curve` whose ``acc`` reaches ``target``, else ``None``."""
    for point in curve:
        if point["acc"] >= target - 1e-12:
            return int(point["epoch"]), float(point["time"])
    return None


@dataclass(frozen=True)
class MethodSummary:
    """One row of a setting's table (accuracies in %, times in s, bytes in bytes)."""

    method: str
    label: str
    seeds: int
    final_acc: float
    final_acc_sd: float
    target_epoch: int | None
    target_time: float | None
    seeds_reaching: int
    total_time: float
    self_bytes_sum: float
    kernel_bytes: float
    rounds: float
    steps: float
    wire_bytes_sum: float = math.nan
    kernel_all_bytes: float = math.nan

    @property
    def kernel_over_self(self) -> float:
        """Kernel-counted bytes per self-counted byte (NaN when nothing was self-counted)."""
        return self.kernel_bytes / self.self_bytes_sum if self.self_bytes_sum > 0 else math.nan

    @property
    def kernel_over_wire(self) -> float:
        """Every interface's kernel-counted bytes per self-counted wire byte (NaN without wire counts)."""
        if math.isnan(self.wire_bytes_sum) or self.wire_bytes_sum <= 0:
            return math.nan
        return self.kernel_all_bytes / self.wire_bytes_sum


def ddp_target(runs: Sequence[Run], margin: float = 0.5) -> float | None:
    """DDP's final accuracy (mean over its seeds) minus ``margin`` points, as a fraction; ``None`` without DDP runs."""
    finals = [r["curve"][-1]["acc"] for r in runs if r["method"] == "ddp" and r["curve"]]
    return statistics.mean(finals) - margin / 100 if finals else None


def summarize_setting(runs: Sequence[Run], margin: float = 0.5) -> tuple[float | None, list[MethodSummary]]:
    """The target accuracy and one :class:`MethodSummary` per method (in first-seen order) of one setting's runs."""
    target = ddp_target(runs, margin)
    names = list(dict.fromkeys(r["method"] for r in runs))
    rows = []
    for name in names:
        mine = [r for r in runs if r["method"] == name and r["curve"]]
        if not mine:
            continue
        curve = mean_curve(mine)
        wired = [r["curve"][-1] for r in mine if "wire_bytes_sum" in r["curve"][-1]]
        finals = [100 * float(r["curve"][-1]["acc"]) for r in mine]
        reached = time_to_target(curve, target) if target is not None else None
        per_seed = 0
        if target is not None:
            per_seed = sum(1 for r in mine if any(float(p["acc"]) >= target - 1e-12 for p in r["curve"]))
        rows.append(
            MethodSummary(
                method=name,
                label=str(mine[0].get("label", name)),
                seeds=len(mine),
                final_acc=statistics.mean(finals),
                final_acc_sd=statistics.stdev(finals) if len(finals) > 1 else 0.0,
                target_epoch=reached[0] if reached else None,
                target_time=reached[1] if reached else None,
                seeds_reaching=per_seed,
                total_time=statistics.mean(cumulative_seconds(r["curve"])[-1] for r in mine),
                self_bytes_sum=curve[-1]["self_bytes_sum"],
                kernel_bytes=curve[-1]["kernel_bytes"],
                rounds=curve[-1]["rounds"],
                steps=curve[-1]["steps"],
                # over the seeds whose runs hold wire counts (older records do not)
                wire_bytes_sum=_mean_of(wired, "wire_bytes_sum") if wired else math.nan,
                kernel_all_bytes=_mean_of(wired, "kernel_all_bytes") if wired else math.nan,
            )
        )
    return target, rows


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def markdown_table(setting: str, target: float | None, rows: Sequence[MethodSummary]) -> str:
    """A markdown table of one setting (the ratio column divides by DDP's total wall time)."""
    ddp = next((r for r in rows if r.method == "ddp"), None)
    nocomm = next((r for r in rows if r.method == "no-comm"), None)
    head = f"**{setting}** — target = DDP final − 0.5 = " + (
        "n/a (no DDP run)" if target is None else f"{100 * target:.2f} %"
    )
    lines = [
        head,
        "",
        "| method | final acc % (mean ± sd) | time to target (s) | ÷ DDP total | seeds reaching | total wall (s) | "
        "÷ no-comm | rounds | self MB (Σ ranks) | kernel MB | kernel ÷ self | kernel (all) ÷ wire |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "–" if r.target_time is None or ddp is None else f"{r.target_time / ddp.total_time:.3f}"
        vs_nocomm = "–" if nocomm is None else f"{r.total_time / nocomm.total_time:.2f}"
        ks, kw = r.kernel_over_self, r.kernel_over_wire
        lines.append(
            f"| {r.label} | {r.final_acc:.2f} ± {r.final_acc_sd:.2f} | {_seconds(r.target_time)}"
            f"{'' if r.target_epoch is None else f' (ep {r.target_epoch})'} | {ratio} | {r.seeds_reaching}/{r.seeds} | "
            f"{r.total_time:.1f} | {vs_nocomm} | {r.rounds:.0f} | {r.self_bytes_sum / 1e6:.1f} | "
            f"{r.kernel_bytes / 1e6:.1f} | {'–' if math.isnan(ks) else f'{ks:.3f}'} | "
            f"{'–' if math.isnan(kw) else f'{kw:.3f}'} |"
        )
    return "\n".join(lines)


def ablation_table(runs: Sequence[Run], names: Sequence[str]) -> str:
    """Final accuracy at equal epochs of the ablation rows ``names`` against their DDP reference, as markdown.

    The reference is ``"ddp-bn"`` for the BatchNorm rows (``*-bn``, ``*-bn-re``) and ``"ddp"`` otherwise (same
    setting, seeds and epochs). Columns: seeds, final accuracy (mean ± sd), its difference to the reference's mean
    (points), self-counted bytes ÷ the reference's, and the final learning rate (mean; shows whether AutoDrop acted).
    """
    lines = [
        "| method | seeds | final acc % (mean ± sd) | Δ vs DDP (points) | bytes ÷ DDP's | final LR |",
        "|---|---|---|---|---|---|",
    ]

    def finals(name: str) -> list[dict[str, Any]]:
        return [r["curve"][-1] for r in runs if r["method"] == name and r["curve"]]

    for name in names:
        mine = finals(name)
        if not mine:
            continue
        ref_name = "ddp-bn" if name.endswith(("-bn", "-bn-re")) else "ddp"
        ref = finals(ref_name)
        accs = [100 * float(p["acc"]) for p in mine]
        acc = statistics.mean(accs)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        delta = "–" if not ref else f"{acc - statistics.mean(100 * float(p['acc']) for p in ref):+.2f}"
        ref_bytes = statistics.mean(float(p["self_bytes_sum"]) for p in ref) if ref else 0.0
        ratio = (
            "–" if ref_bytes <= 0 else f"{statistics.mean(float(p['self_bytes_sum']) for p in mine) / ref_bytes:.3f}"
        )
        lrs = [float(p["lr"]) for p in mine if "lr" in p]
        lr = "–" if not lrs else f"{statistics.mean(lrs):.3g}"
        label = next(str(r.get("label", name)) for r in runs if r["method"] == name)
        lines.append(f"| {label} | {len(mine)} | {acc:.2f} ± {sd:.2f} | {delta} | {ratio} | {lr} |")
    return "\n".join(lines)


def step_costs(rows: Sequence[MethodSummary], period: int) -> str:
    """One line: compute per step (no-comm), DDP's communication per step, and what a round at ``period`` costs.

    ``c`` = no-comm's wall time per step; ``A`` = DDP's minus no-comm's per step (the gradient all-reduce that DDP
    does not hide behind its backward pass). A synchronous round of one model all-reduce at period ``P`` adds about
    ``A / (P c)`` to a step; an overlapped round can hide it when ``A <= P c``.
    """
    ddp = next((r for r in rows if r.method == "ddp"), None)
    nocomm = next((r for r in rows if r.method == "no-comm"), None)
    if ddp is None or nocomm is None or not ddp.steps or not nocomm.steps:
        return "step costs: needs a DDP and a no-comm run."
    c = nocomm.total_time / nocomm.steps
    a = ddp.total_time / ddp.steps - c
    return (
        f"step costs (measured here): compute c = {1e3 * c:.1f} ms/step (no-comm), DDP communication A = "
        f"{1e3 * a:.1f} ms/step (DDP − no-comm), A/c = {a / c:.2f}; a synchronous all-reduce round at period "
        f"{period} adds ≈ A/(P·c) = {a / (period * c):.2f} of a step (an overlapped round can hide it when ≤ 1)."
    )


def ddp_curves_identical(runs: Iterable[Run]) -> dict[int, bool]:
    """Per seed: whether DDP's accuracy curve is the same in every setting (CPU training is deterministic)."""
    by_seed: dict[int, list[list[float]]] = {}
    for r in runs:
        if r["method"] == "ddp":
            by_seed.setdefault(int(r["seed"]), []).append([float(p["acc"]) for p in r["curve"]])
    return {seed: all(c == curves[0] for c in curves) for seed, curves in by_seed.items() if len(curves) > 1}


def plot_setting(setting: str, runs: Sequence[Run], target: float | None, path: Path, title: str = "") -> None:
    """Accuracy of the policy weights (mean over seeds) against cumulative training wall time, one line per method.

    Two panels share the log time axis: the whole run, and a zoom on the last points around the target (a star marks
    where each method's mean curve first reaches it; the legend gives that time).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    names = list(dict.fromkeys(r["method"] for r in runs))
    fig, (ax_all, ax_zoom) = plt.subplots(1, 2, figsize=(14, 6.6), sharex=True)
    colors = plt.get_cmap("tab10").colors
    styles = ["-", "--", "-.", ":"]
    curves: dict[str, list[dict[str, float]]] = {}
    for name in names:
        mine = [r for r in runs if r["method"] == name and r["curve"]]
        if mine:
            curves[name] = mean_curve(mine)
    handles = []
    for i, (name, curve) in enumerate(curves.items()):
        label = next(str(r.get("label", name)) for r in runs if r["method"] == name)
        reached = time_to_target(curve, target) if target is not None else None
        if target is not None:
            label += f"  ({reached[1]:.0f} s)" if reached else "  (not reached)"
        if name == "ddp":
            style = {"color": "black", "lw": 2.6, "ls": "-"}
        elif name == "no-comm":
            style = {"color": "0.6", "lw": 2.6, "ls": "-"}
        else:
            style = {"color": colors[i % 10], "lw": 1.6, "ls": styles[(i // 10 + i) % len(styles)]}
        xs = [p["time"] for p in curve]
        ys = [100 * p["acc"] for p in curve]
        for ax in (ax_all, ax_zoom):
            (line,) = ax.plot(xs, ys, marker="o", ms=3, label=label, **style)
            if reached is not None and target is not None:
                ax.plot([reached[1]], [100 * target], marker="*", ms=13, color=style["color"], mec="white", zorder=5)
        handles.append(line)
    finals = [100 * c[-1]["acc"] for c in curves.values()]
    if target is not None:
        for ax in (ax_all, ax_zoom):
            ax.axhline(100 * target, color="crimson", lw=1.2, ls="--")
        handles.append(ax_zoom.lines[-1])
        handles[-1].set_label(f"target: DDP final − 0.5 = {100 * target:.1f} %")
        top = max([100 * target, *finals]) + 1.5
        ax_zoom.set_ylim(min(100 * target - 10, top - 12), min(top, 100.5))
    for ax in (ax_all, ax_zoom):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("training wall time (s, log scale; slowest rank, evaluation excluded)")
    ax_all.set_ylabel("test accuracy of the policy weights (%)")
    ax_all.set_title("whole run", fontsize=10)
    ax_zoom.set_title("near the target (★ = first reached; legend: that time)", fontsize=10)
    fig.suptitle(title or setting, fontsize=11)
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
