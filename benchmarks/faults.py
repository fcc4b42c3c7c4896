"""Fault injection: a worker whose loss turns NaN, for every registered local-update strategy at its defaults.

Two CPU worker processes (gloo) are started once and train MNIST-1D (CNN, SGD with momentum) with every registered
strategy at its default arguments, under four scenarios:

* ``clean``: no fault (the reference);
* ``transient``: rank 1's training loss is NaN for optimizer steps 20-29, then healthy again;
* ``persistent``: rank 1's loss is NaN from step 20 to the end (the probe of issue 9);
* ``all``: every rank's loss is NaN from step 20 (expected: ``NonFiniteReplicasError`` on every rank).

Per run: optimizer steps done, rank 1's heals, the world totals rank 0 holds (``world_healed``,
``world_nonfinite_events``; logged as ``dist/healed``, ``dist/nonfinite_events`` at every round, so the last log lags
by the end-of-fit heal), whether each replica is finite, and the test accuracy of each rank's replica at the end of
training (before the end-of-fit heal) and of the model ``fit`` hands back (the evaluation policy's weights).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.faults                    # 8 strategies x 4 scenarios
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.faults --methods lsgd --epochs 2   # smoke run

Writes ``benchmarks/out/faults.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

from benchmarks import _harness as H
from benchmarks._harness import OUT

SCENARIOS = ("clean", "transient", "persistent", "all")
NAN_FROM, NAN_UNTIL = 20, 30


def _model_class() -> type:
    from lightning_autoopt.models import Classifier

    class FaultyClassifier(Classifier):
        """Classifier whose training loss is NaN on the chosen ranks for a range of optimizer steps."""

        def __init__(self, nan_ranks: tuple[int, ...] = (), nan_from: int = 0, nan_until: int = 0, **kw: Any) -> None:
            super().__init__(**kw)
            self.nan_ranks, self.nan_from, self.nan_until = nan_ranks, nan_from, nan_until

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            if self.global_rank in self.nan_ranks and self.nan_from <= self.global_step < self.nan_until:
                loss = loss * float("nan")
            return loss

    return FaultyClassifier


def _worker(rank: int, world: int, args: argparse.Namespace) -> None:
    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist

    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.strategies import NonFiniteReplicasError, registered_strategies

    # the group exists before any Trainer: the strategies reuse it and never destroy it, so a run that stops on
    # NonFiniteReplicasError leaves it usable for the next one
    dist.init_process_group("gloo")
    faulty = _model_class()

    class Replicas(pl.Callback):
        """Each rank's replica at the end of training (before the end-of-fit heal and the policy weights)."""

        def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            self.finite = all(bool(torch.isfinite(p).all()) for p in pl_module.parameters())
            trainer.datamodule.setup("test")
            self.acc = H.test_split_accuracy(pl_module, trainer.datamodule) if self.finite else math.nan

    names = [n for n, c in registered_strategies().items() if c.__module__.startswith("lightning_autoopt.")]
    results = []
    for name in sorted(names):
        if args.methods and not any(name.startswith(m) for m in args.methods):
            continue
        for scenario in SCENARIOS:
            pl.seed_everything(0, workers=True, verbose=False)
            nan_ranks = {"clean": (), "transient": (1,), "persistent": (1,), "all": tuple(range(world))}[scenario]
            until = NAN_UNTIL if scenario == "transient" else 10**9
            dm = MNIST1DDataModule(batch_size=args.batch_size, num_samples=4000, seed=0)
            model = faulty(nan_ranks=nan_ranks, nan_from=NAN_FROM, nan_until=until, arch="cnn", lr=args.lr)
            probe = Replicas()
            strategy = registered_strategies()[name]()  # default arguments
            trainer = H.make_trainer(world, strategy, args.epochs, [probe], OUT / "faults_runs")
            t0 = time.perf_counter()
            error = ""
            try:
                trainer.fit(model, datamodule=dm)
            except NonFiniteReplicasError as err:
                error = str(err)
            seconds = time.perf_counter() - t0
            s = trainer.strategy
            row = {
                "strategy": name, "scenario": scenario, "steps": trainer.global_step, "rounds": s.num_rounds,
                "error": error.split(";")[0], "healed_rank": s.healed, "events_rank": s.nonfinite_events,
                "seconds": seconds,
            }  # fmt: skip
            if not error:
                dm.setup("test")
                row.update(
                    replica_finite=probe.finite,
                    replica_acc=probe.acc,
                    returned_acc=H.test_split_accuracy(model, dm),
                    world_healed=s.world_healed,  # identical on every rank; the logs lag by the end-of-fit heal
                    world_events=s.world_nonfinite_events,
                    logged_healed=float(trainer.callback_metrics.get("dist/healed", math.nan)),
                    logged_events=float(trainer.callback_metrics.get("dist/nonfinite_events", math.nan)),
                )
            rows = [None] * world
            dist.all_gather_object(rows, row)
            if rank == 0:
                merged = dict(rows[0])
                for key in ("replica_finite", "replica_acc", "healed_rank", "events_rank"):
                    merged[key] = [r.get(key) for r in rows]
                merged["error_on_every_rank"] = all(r["error"] for r in rows) if error else False
                results.append(merged)
                print(json.dumps(merged), flush=True)
            dist.barrier()
    H.finish(rank, args, results, "faults.json")


def summarize(data: dict[str, Any]) -> str:
    clean = {r["strategy"]: r for r in data["runs"] if r["scenario"] == "clean"}
    lines = [
        "| strategy | fault | steps | rank-1 heals | world heals / non-finite events (rank 0) | "
        "replicas finite at end | test acc rank 0 / rank 1 replica (%) | returned model acc (%) | "
        "clean run's returned acc (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(v: Any) -> str:
        return "NaN" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"

    for r in data["runs"]:
        ref = pct(clean[r["strategy"]]["returned_acc"]) if r["strategy"] in clean else "-"
        if r["error"]:
            every = "every rank" if r["error_on_every_rank"] else "NOT every rank"
            lines.append(
                f"| {r['strategy']} | {r['scenario']} | {r['steps']} | - | stopped: `NonFiniteReplicasError` on "
                f"{every} at step {r['steps'] + 1} | - | - | - | {ref} |"
            )
            continue
        accs = " / ".join(pct(a) for a in r["replica_acc"])
        lines.append(
            f"| {r['strategy']} | {r['scenario']} | {r['steps']} | {r['healed_rank'][1]} | "
            f"{r['world_healed']:.0f} / {r['world_events']:.0f} | {r['replica_finite']} | {accs} | "
            f"{pct(r['returned_acc'])} | {ref} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64, help="per worker")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None, help="registered names to run (prefixes)")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()
    if not args.summarize_only:
        H.launch(_worker, args)
    print(summarize(json.loads((OUT / "faults.json").read_text())))


if __name__ == "__main__":
    main()
