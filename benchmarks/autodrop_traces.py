"""Record constant-LR angular-velocity traces of the AutoDrop workloads, for designing the saturation test offline.

Trains each workload of ``_autodrop_workloads`` at its constant LR for its benchmark budget and keeps the flattened
parameters every ``budget / snapshots`` optimizer steps (in memory). From those positions it computes ω for
several interval lengths (``budget / D`` steps for ``D`` decisions per run, and one epoch) at every phase the
snapshot grid allows (phases are independent replicas of the same curve's noise), plus the validation curve
(``VALIDATIONS`` evaluations per run) and the training loss per step. Writes one JSON per (workload, seed) to
``benchmarks/out/autodrop_traces/``; ``autodrop_replay.py`` replays the saturation tests on them.

About 12 minutes for the five workloads and two seeds on one idle CPU core.

    OMP_NUM_THREADS=1 python -m benchmarks.autodrop_traces --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks._autodrop_workloads import WORKLOADS, BenchModule, make_trainer, total_steps
from lightning_autoopt.callbacks._angles import angular_velocity  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "autodrop_traces"
DECISIONS = (25, 35, 50, 70, 100, 140, 200, 400)
VALIDATIONS = 100


class TraceRecorder(pl.Callback):
    def __init__(self, every: int, max_snaps: int) -> None:
        self.every = every
        self.snaps: list[torch.Tensor] = []
        self.max_snaps = max_snaps
        self.val: list[tuple[int, float, float]] = []
        self.train_loss: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.train_loss.append(float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs))
        if trainer.global_step % self.every == 0 and len(self.snaps) < self.max_snaps:
            self.snaps.append(torch.cat([p.detach().reshape(-1).float().clone() for p in pl_module.parameters()]))

    def on_validation_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        acc = float(m["val_acc"]) if "val_acc" in m else float("nan")
        self.val.append((trainer.global_step, float(m["val_loss"]), acc))


def omega_traces(snaps: list[torch.Tensor], every: int, interval_steps: int) -> dict[str, list[float]]:
    """ω for positions ``interval_steps`` apart, one sequence per phase of the snapshot grid."""
    k = max(1, round(interval_steps / every))
    out: dict[str, list[float]] = {}
    for phase in range(min(k, 4)):  # at most 4 replicas per interval
        idx = list(range(phase, len(snaps), k))
        out[str(phase * every)] = [
            angular_velocity(snaps[a], snaps[b], snaps[c]) for a, b, c in zip(idx, idx[1:], idx[2:])
        ]
    return out


def record(name: str, seed: int, snapshots: int) -> Path:
    w = WORKLOADS[name]
    dm = w.make_data()
    dm.prepare_data()
    steps = total_steps(w, dm)
    steps_per_epoch = steps // w.epochs
    every = max(1, math.ceil(steps / snapshots))
    pl.seed_everything(seed, verbose=False)
    module = BenchModule(w.make_net(dm), w.task, "constant", w.lr, w.weight_decay, steps)
    rec = TraceRecorder(every, snapshots)
    trainer = make_trainer(w, steps, [rec], str(OUT / "lightning"), val_check_interval=max(1, steps // VALIDATIONS))
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - start
    snaps = rec.snaps  # positions after steps every, 2*every, ...
    intervals = {f"D{d}": max(every, round(steps / d / every) * every) for d in DECISIONS}
    intervals["epoch"] = max(every, round(steps_per_epoch / every) * every)
    result = {
        "workload": name,
        "seed": seed,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "lr": w.lr,
        "snapshot_every": every,
        "val": rec.val,
        "train_loss": rec.train_loss,
        "intervals": intervals,
        "omega": {key: omega_traces(snaps, every, L) for key, L in intervals.items()},
        "wall_s": wall,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}_seed{seed}.json"
    path.write_text(json.dumps(result))
    finite = [x for x in result["omega"]["D100"]["0"] if math.isfinite(x)]
    print(
        f"{name} seed {seed}: {steps} steps, {len(snaps)} snapshots, wall {wall:.0f}s, "
        f"omega(D100) first/last {finite[:1]} {finite[-1:]}",
        flush=True,
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--snapshots", type=int, default=800)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ.setdefault("MPLBACKEND", "Agg")
    for seed in args.seeds:
        for name in args.workloads:
            record(name, seed, args.snapshots)


if __name__ == "__main__":
    main()
