"""AutoDrop (defaults, no tuning) vs LR schedules and Schedule-Free SGD on five small workloads, 3 seeds.

One command; on one CPU core the full run took 63 minutes on a shared 2-core machine (5 workloads x 7 methods x 3
seeds; the character LM is about half of it), ``--overhead`` about 5 minutes. Results are cached per (workload,
method, seed) in ``benchmarks/out/autodrop_bench.json`` so an interrupted run continues where it stopped
(``--fresh`` starts over).

Workloads and methods: see ``benchmarks/_autodrop_workloads.py`` (each workload's budget is one where a decay is
known to help; the table checks that cosine beats constant there). Every method trains the same model from the same
seed with SGD (momentum 0.9) at the workload's LR for the same number of optimizer steps, validating 50 times:

* ``autodrop``            constant LR + ``AutoDrop()`` with its defaults (trend test, interval "auto", patience 5,
  x0.5 per drop, armed once)
* ``autodrop_v1``         constant LR + the first default (``V1_KWARGS``: x0.2 per drop, re-armed after each drop),
  kept for comparison after ``benchmarks/autodrop_sensitivity.py`` changed the default
* ``autodrop_reference``  constant LR + the paper's rule at the reference scripts' settings
  (``AutoDrop(saturation="reference", interval="epoch", theta=0.01, max_theta=1.0, min_lr=1e-4)``)
* ``constant``, ``cosine`` (per step to 0), ``multistep`` (x0.2 at 50 % and 75 %), ``plateau`` (ReduceLROnPlateau on
  val_loss, x0.2, patience 3 validations), ``schedulefree`` (Schedule-Free SGD at 10x the LR, eval at its average)

Prints, per workload, the final test metric (mean ± std over seeds; accuracy in %, or test loss), how often and where
AutoDrop dropped, and the targets: AutoDrop drops on every workload and never in the first 10 % of the budget; its
metric >= constant LR everywhere and within 0.3 accuracy points (or 2 % relative loss) of the best baseline on at
least 4 of 5 workloads; its first drop vs the step where the constant-LR validation loss plateaued (definition in
``plateau_step``). Writes ``benchmarks/out/autodrop_bench.png`` (LR and val loss of every method, seed 0) and one
``plot_autodrop`` figure per workload.

    OMP_NUM_THREADS=1 python -m benchmarks.autodrop_vs_schedules                 # everything
    OMP_NUM_THREADS=1 python -m benchmarks.autodrop_vs_schedules --workloads digits --seeds 0
    OMP_NUM_THREADS=1 python -m benchmarks.autodrop_vs_schedules --overhead      # per-step overhead
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks._autodrop_workloads import METHODS, WORKLOADS, Workload, run_method, total_steps
from lightning_autoopt.callbacks import AutoDrop  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
CACHE = OUT / "autodrop_bench.json"
#: AutoDrop's first default (issue 14, first pass), spelled out so that the row keeps its meaning.
V1_KWARGS: dict[str, Any] = dict(
    decisions_per_run=70, window=10, trend_threshold=2.0, patience=5, drop_factor=0.2, average_on_drop=True,
    rearm_after_drop=True,
)  # fmt: skip
EARLY = 0.10
PLATEAU_FRAC = 0.05
SMOOTH_HALF = 2  # 5 of the 50 validations: a tenth of the run, as the trace replay's 9 of 100


class Curves(pl.Callback):
    """Validation loss/metric and the LR (group 0) at every validation."""

    def __init__(self) -> None:
        self.val: list[list[float]] = []

    def on_validation_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        acc = float(m["val_acc"]) if "val_acc" in m else float("nan")
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.val.append([trainer.global_step, float(m["val_loss"]), acc, lr])


def plateau_step(val: list[list[float]], frac: float = PLATEAU_FRAC, half: int = SMOOTH_HALF) -> int:
    """First validation step at which the smoothed val loss has made all but ``frac`` of its total improvement.

    The validation loss of the constant-LR run is smoothed by a centred moving average over ``2 * half + 1``
    validations (``s``); the plateau is the first step ``t`` with ``s(t) <= min(s) + frac * (s(first) - min(s))``.
    """
    losses = [v[1] for v in val]
    s = [
        sum(losses[max(0, i - half) : i + half + 1]) / len(losses[max(0, i - half) : i + half + 1])
        for i in range(len(losses))
    ]
    low, first = min(s), s[0]
    return int(next(v[0] for v, x in zip(val, s) if x <= low + frac * (first - low)))


def make_callbacks(
    method: str, autodrop_kwargs: dict[str, Any] | None = None
) -> tuple[list[pl.Callback], AutoDrop | None]:
    """The method's callbacks; ``autodrop_kwargs`` replaces AutoDrop's defaults (the sensitivity study's candidates)."""
    autodrop = None
    if method == "autodrop":
        autodrop = AutoDrop(verbose=False, **(autodrop_kwargs or {}))
    elif method == "autodrop_v1":
        autodrop = AutoDrop(verbose=False, **V1_KWARGS)
    elif method == "autodrop_reference":
        autodrop = AutoDrop(
            saturation="reference", interval="epoch", theta=0.01, max_theta=1.0, min_lr=1e-4, patience=19,
            verbose=False,
        )  # fmt: skip
    return ([autodrop] if autodrop is not None else []), autodrop


def run_one(
    workload: Workload,
    method: str,
    seed: int,
    datamodule: pl.LightningDataModule,
    autodrop_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    callbacks, autodrop = make_callbacks(method, autodrop_kwargs)
    curves = Curves()
    start = time.perf_counter()
    out = run_method(workload, method if not method.startswith("autodrop") else "constant", seed, datamodule,
                     callbacks=[*callbacks, curves], root=str(OUT / "lightning"))  # fmt: skip
    res: dict[str, Any] = {
        "metric": out["test"][workload.metric],
        "test": out["test"],
        "val": curves.val,
        "steps": total_steps(workload, datamodule),
        "wall_s": time.perf_counter() - start,
    }
    if autodrop is not None:
        res["history"] = autodrop.history
        res["drops"] = autodrop.drops
    return res


def load_cache(fresh: bool) -> dict[str, Any]:
    if fresh or not CACHE.is_file():
        return {}
    return json.loads(CACHE.read_text())


def fmt_metric(workload: Workload, values: list[float]) -> str:
    scale = 100.0 if workload.higher_is_better else 1.0
    vals = [scale * v for v in values]
    mean = statistics.mean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{mean:6.2f} ± {std:4.2f}" if workload.higher_is_better else f"{mean:.4f} ± {std:.4f}"


def report(results: dict[str, Any], workloads: list[str], seeds: list[int], methods: list[str]) -> None:
    targets: dict[str, dict[str, Any]] = {}
    for name in workloads:
        w = WORKLOADS[name]
        rows = {m: [results[f"{name}/{m}/{s}"] for s in seeds if f"{name}/{m}/{s}" in results] for m in methods}
        rows = {m: r for m, r in rows.items() if r}
        if not rows:
            continue
        steps = next(iter(rows.values()))[0]["steps"]
        unit = "test acc (%)" if w.higher_is_better else "test loss"
        print(f"\n### {name}: {w.title}; SGD lr {w.lr}, wd {w.weight_decay}, {steps} steps ({w.epochs} epochs)")
        print(f"| method | {unit} | LR drops per seed | first drop (step, % of budget) per seed |")
        print("|---|---|---|---|")
        means = {}
        for m, runs in rows.items():
            means[m] = statistics.mean(r["metric"] for r in runs)
            drops = ", ".join(str(r["drops"]) for r in runs) if "drops" in runs[0] else "-"
            firsts = "-"
            if "history" in runs[0]:
                firsts = ", ".join(
                    f"{r['history']['drop_steps'][0]} ({r['history']['drop_steps'][0] / steps:.0%})"
                    if r["history"]["drop_steps"]
                    else "none"
                    for r in runs
                )
            print(f"| {m} | {fmt_metric(w, [r['metric'] for r in runs])} | {drops} | {firsts} |")
        print()
        better = (lambda a, b: a > b) if w.higher_is_better else (lambda a, b: a < b)
        t: dict[str, Any] = {}
        if "constant" in means and "cosine" in means:
            t["decay_helps"] = better(means["cosine"], means["constant"])
            print(f"- decay helps here (cosine better than constant): {'yes' if t['decay_helps'] else 'NO'}")
        if "autodrop" in rows:
            ad = rows["autodrop"]
            firsts = [r["history"]["drop_steps"][0] / steps for r in ad if r["history"]["drop_steps"]]
            t["dropped_every_seed"] = len(firsts) == len(ad)
            t["never_early"] = all(f >= EARLY for f in firsts)
            if "constant" in means:
                t["ge_constant"] = not better(means["constant"], means["autodrop"])
            baselines = [m for m in means if not m.startswith("autodrop")]
            if baselines:
                best = max(baselines, key=lambda m: means[m] if w.higher_is_better else -means[m])
                if w.higher_is_better:
                    gap = 100 * (means["autodrop"] - means[best])
                    t["near_best"] = gap >= -0.3
                    gap_txt = f"{gap:+.2f} points"
                else:
                    gap = (means["autodrop"] - means[best]) / means[best]
                    t["near_best"] = gap <= 0.02
                    gap_txt = f"{100 * gap:+.1f} % loss"
                print(f"- AutoDrop vs best baseline ({best}): {gap_txt}; vs constant: "
                      f"{'>=' if t.get('ge_constant') else 'WORSE'}; drops on every seed: "
                      f"{'yes' if t['dropped_every_seed'] else 'NO'}; none in the first 10 %: "
                      f"{'yes' if t['never_early'] else 'NO'}")  # fmt: skip
            if "constant" in rows:
                cells = []
                for s in seeds:
                    a, c = results.get(f"{name}/autodrop/{s}"), results.get(f"{name}/constant/{s}")
                    if a is None or c is None:
                        continue
                    plateau = plateau_step(c["val"])
                    det = a["history"]["detections"][:1]
                    drop = a["history"]["drop_steps"][:1]
                    cells.append(
                        f"seed {s}: plateau {plateau} ({plateau / steps:.0%}), first detection "
                        f"{det[0] if det else 'none'}, first drop {drop[0] if drop else 'none'}"
                        + (f" ({drop[0] / steps:.0%})" if drop else "")
                    )
                print("- first drop vs constant-LR val-loss plateau: " + "; ".join(cells))
        targets[name] = t
    if targets:
        print("\n## Targets (AutoDrop defaults, one setting for every workload)")
        for key, label in (
            ("decay_helps", "cosine beats constant (the budget is one where a decay helps)"),
            ("dropped_every_seed", "AutoDrop drops at least once, every seed"),
            ("never_early", "no drop in the first 10 % of the budget"),
            ("ge_constant", "final metric >= constant LR"),
            ("near_best", "within 0.3 points / 2 % relative loss of the best baseline"),
        ):
            ok = [n for n, t in targets.items() if t.get(key)]
            print(f"- {label}: {len(ok)} of {len(targets)} ({', '.join(ok) or '-'})")


def plot(results: dict[str, Any], workloads: list[str], methods: list[str], seed: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lightning_autoopt.plots import plot_autodrop

    names = [n for n in workloads if f"{n}/constant/{seed}" in results]
    if not names:
        return
    fig = Figure(figsize=(12, 2.6 * len(names)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in zip(axes, names):
        for m in methods:
            r = results.get(f"{name}/{m}/{seed}")
            if r is None:
                continue
            xs = [v[0] for v in r["val"]]
            style = {"linewidth": 2.2, "color": "black"} if m == "autodrop" else {"linewidth": 1}
            row[0].step(xs, [v[3] for v in r["val"]], where="post", label=m, **style)
            row[1].plot(xs, [v[1] for v in r["val"]], label=m, **style)
        ad = results.get(f"{name}/autodrop/{seed}")
        for ax in row:
            for x in ad["history"]["drop_steps"] if ad else []:
                ax.axvline(x, color="tab:red", linestyle="--", linewidth=0.8)
            ax.grid(alpha=0.3)
        row[0].set_yscale("log")
        row[0].set_ylabel(f"{name}\nLR")
        row[1].set_yscale("log")
        row[1].set_ylabel("val loss")
        if ad:
            plot_autodrop(ad["history"], OUT / f"autodrop_bench_{name}.png", title=f"AutoDrop() on {name}, seed {seed}")
    axes[0][0].legend(fontsize=7, ncol=2)
    axes[-1][0].set_xlabel("optimizer step")
    axes[-1][1].set_xlabel("optimizer step")
    fig.suptitle(f"LR and validation loss of every method (seed {seed}); red dashes: AutoDrop's drops")
    fig.tight_layout()
    fig.savefig(OUT / "autodrop_bench.png", dpi=90)
    print(f"\nplots: {OUT / 'autodrop_bench.png'} and {OUT}/autodrop_bench_<workload>.png")


class TimedAutoDrop(AutoDrop):
    """AutoDrop that also sums the wall time spent inside its per-step and per-epoch hooks (exact overhead)."""

    hook_seconds = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.hook_seconds += time.perf_counter() - t0


class TrainTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self.seconds += time.perf_counter() - self._t0


class StopAfter(pl.Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def overhead(repeats: int, epochs: int, budget: int) -> None:
    """Interleaved with/without ``AutoDrop()`` on a >= 1M-parameter CNN; training-epoch time only (no validation).

    The trainer's budget is ``budget`` optimizer steps (``max_steps``), so ``interval="auto"`` decides as often as in
    a real run of that length (every ``budget // 70`` steps), but only the first ``epochs`` epochs are trained and
    timed.
    """
    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier

    dm = MNIST1DDataModule(batch_size=128, num_samples=5000, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    times: dict[str, list[float]] = {"without": [], "with": []}
    fractions: list[float] = []
    decisions: list[int] = []
    params = Classifier(arch="cnn", width=256).num_parameters
    for r in range(repeats):
        for variant in ("without", "with") if r % 2 == 0 else ("with", "without"):
            pl.seed_everything(100 + r, verbose=False)
            model = Classifier(arch="cnn", width=256, lr=0.05, weight_decay=5e-4)
            timer = TrainTimer()
            callbacks: list[pl.Callback] = [timer, StopAfter(epochs * len(dm.train_dataloader()))]
            if variant == "with":
                timed = TimedAutoDrop(verbose=False)  # the defaults: interval "auto", 70 decisions in the run
                callbacks.insert(0, timed)
            trainer = pl.Trainer(
                accelerator="cpu", devices=1, max_steps=budget, callbacks=callbacks, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, num_sanity_val_steps=0,
            )  # fmt: skip
            trainer.fit(model, datamodule=dm)
            times[variant].append(timer.seconds)
            if variant == "with":
                fractions.append(timed.hook_seconds / timer.seconds)
                decisions.append(len(timed.history["step"]))
    steps = epochs * len(dm.train_dataloader())
    ratio_median = statistics.median(times["with"]) / statistics.median(times["without"])
    print(
        f"\nOverhead of AutoDrop() on a {params / 1e6:.2f}M-parameter CNN (MNIST-1D, width 256): the first {steps} "
        f"optimizer steps of a {budget}-step run (interval 'auto' = {budget // 70} steps: {decisions[0]} decisions "
        f"timed), {repeats} interleaved repeats, training-epoch time only:"
    )
    print(f"  without AutoDrop: {', '.join(f'{t:.2f}' for t in times['without'])} s")
    print(f"  with AutoDrop   : {', '.join(f'{t:.2f}' for t in times['with'])} s")
    print(f"  ratio with/without: median {ratio_median:.4f}, min {min(times['with']) / min(times['without']):.4f}"
          f" (target <= 1.01: {'MET' if ratio_median <= 1.01 else 'MISSED'})")  # fmt: skip
    print(
        f"  time inside AutoDrop's hooks / training time (median): {statistics.median(fractions):.5f} "
        f"-> per-step ratio {1 + statistics.median(fractions):.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="\n\n".join(__doc__.split("\n\n")[:2]), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--report-only", action="store_true", help="print the tables from the cache, train nothing")
    parser.add_argument("--overhead", action="store_true", help="measure the per-step overhead instead")
    parser.add_argument("--overhead-repeats", type=int, default=6)
    parser.add_argument("--overhead-epochs", type=int, default=4)
    parser.add_argument("--overhead-budget", type=int, default=2240, help="max_steps of the timed runs (the demo's)")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.overhead:
        overhead(args.overhead_repeats, args.overhead_epochs, args.overhead_budget)
        return
    results = load_cache(args.fresh)
    if not args.report_only:
        for name in args.workloads:
            w = WORKLOADS[name]
            dm = w.make_data()
            dm.prepare_data()
            dm.setup("fit")
            for seed in args.seeds:
                for method in args.methods:
                    key = f"{name}/{method}/{seed}"
                    if key in results:
                        continue
                    res = run_one(w, method, seed, dm)
                    results[key] = res
                    CACHE.write_text(json.dumps(results))
                    extra = f" drops={res['drops']} at {res['history']['drop_steps']}" if "drops" in res else ""
                    print(f"  {key:32s} {w.metric}={res['metric']:.4f}{extra}", flush=True)
    report(results, args.workloads, args.seeds, args.methods)
    plot(results, args.workloads, args.methods, args.seeds[0])


if __name__ == "__main__":
    main()
