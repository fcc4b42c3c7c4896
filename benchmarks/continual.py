"""Task-free continual learning: TAME vs fine-tuning vs EWC vs DCO vs joint training, on MNIST-1D and digits streams.

Every method sees the same stream (tasks one after another, no task labels) and is scored on the test sets of all
tasks at the end: class-IL accuracy (argmax over all 10 classes), task-IL accuracy (argmax restricted to the true
task's classes; TAME routes through its selector first), average forgetting (single-network methods: best earlier
accuracy on a task minus the final one), parameters, and -- for the detector-driven methods (TAME, DCO) -- the
detection delay and false detections against the true boundaries. It also times TAME's no-shift steps against
plain fine-tuning of the same network *in the same run* and prints the ratio.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.continual                 # ~15-20 min on 2 busy shared cores
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.continual --seeds 0 --streams digits_split   # quick

EWC is a compact baseline implemented here (empirical Fisher of per-sample gradients, penalty
``lambda * sum F (theta - theta*)^2`` per task with lambda 100, without the 1/2, as Avalanche's EWCPlugin) and is
given the *true* task boundaries (it is task-aware); DCO and TAME find the boundaries themselves. Joint training
(upper bound) sees the same number of batches drawn i.i.d. from all tasks.

The step-time ratio is measured separately and interleaved (TAME, plain, TAME, plain, ... on one task, i.e. with
no shift), pooling per-batch wall times, because other jobs on a shared machine make back-to-back runs noisy.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoopt.callbacks import DCO, TaskShiftDetector
from lightning_autoopt.continual import TAME, evaluate_tasks
from lightning_autoopt.continual.metrics import forgetting, match_detections
from lightning_autoopt.data import TaskStreamDataModule
from lightning_autoopt.models import build_for_input

OUT = Path(__file__).parent / "out"

# name -> (dataset, kind, expert arch, batches per task)
STREAMS = {
    "mnist1d_split": ("mnist1d", "split", "cnn", 100),
    "mnist1d_permuted": ("mnist1d", "permuted", "mlp", 100),
    "digits_split": ("digits", "split", "mlp", 100),
}
SELECTOR_EPOCHS = 15
BUFFER = 1000
WIDTH = 16
LR = 0.05
BATCH = 64


class StreamNet(pl.LightningModule):
    """One network trained on the stream (fine-tuning / EWC / DCO / joint); records an accuracy matrix."""

    def __init__(self, arch: str, input_shape: list[int], ewc_lambda: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = build_for_input(arch, input_shape, 10, WIDTH, 1)
        self.ewc_lambda = ewc_lambda
        self.ewc_terms: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self.acc_matrix: list[list[float]] = []
        self.last_task: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch[0], batch[1]
        if len(batch) > 2:
            self.last_task = int(batch[2][0])
        loss = F.cross_entropy(self.net(x), y)
        total = loss
        for fisher, centre in self.ewc_terms:
            total = total + self.ewc_lambda * sum(
                (f * (p - c).pow(2)).sum() for f, p, c in zip(fisher, self.net.parameters(), centre)
            )
        self.log("train_loss", loss)
        return {"loss": total, "task_loss": loss.detach()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)

    def consolidate_ewc(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Empirical Fisher (mean squared per-sample gradient) over up to 256 samples of the finished task."""
        params = list(self.net.parameters())
        fisher = [torch.zeros_like(p) for p in params]
        was = self.net.training
        self.net.eval()
        n = 0
        with torch.enable_grad():
            for i in range(min(len(x), 256)):
                self.net.zero_grad()
                F.cross_entropy(self.net(x[i : i + 1]), y[i : i + 1]).backward()
                for f, p in zip(fisher, params):
                    f += p.grad.detach().pow(2)
                n += 1
        self.net.zero_grad()
        self.net.train(was)
        self.ewc_terms.append(([f / n for f in fisher], [p.detach().clone() for p in params]))


class StreamProbe(pl.Callback):
    """Per-batch loss and wall time; accuracy matrix and EWC consolidation at the true boundaries."""

    def __init__(self, dm: TaskStreamDataModule, ewc: bool = False) -> None:
        self.dm, self.ewc = dm, ewc
        self.losses: list[float] = []
        self.times: list[float] = []
        self._t0 = 0.0
        self.ends = set(dm.true_boundaries) | {dm.num_stream_batches}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.times.append(time.perf_counter() - self._t0)
        out = outputs["task_loss"] if isinstance(outputs, dict) and "task_loss" in outputs else outputs
        if isinstance(out, dict):
            out = out["loss"]
        self.losses.append(float(out) if out is not None else math.nan)
        seen = len(self.times)
        if isinstance(pl_module, StreamNet) and seen in self.ends:
            if self.ewc and seen < self.dm.num_stream_batches and pl_module.last_task is not None:
                pl_module.consolidate_ewc(*self.dm.task_tensors(pl_module.last_task, train=True))
            pl_module.acc_matrix.append(per_task_accuracy(pl_module, self.dm))


def per_task_accuracy(model: torch.nn.Module, dm: TaskStreamDataModule) -> list[float]:
    scores = evaluate_tasks(model, *dm.eval_tensors())
    return [scores[f"acc_task{t}"] for t in range(dm.num_tasks)]


def scores(model: torch.nn.Module, dm: TaskStreamDataModule) -> dict[str, float]:
    out = evaluate_tasks(model, *dm.eval_tensors(), task_classes=dm.task_classes)
    return {"class_il": out["class_il_acc"], "task_il": out["task_il_acc"]}


def trainer(callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def make_dm(stream: str, seed: int) -> TaskStreamDataModule:
    dataset, kind, _, bpt = STREAMS[stream]
    dm = TaskStreamDataModule(dataset=dataset, kind=kind, batches_per_task=bpt, batch_size=BATCH, seed=seed)
    dm.setup("fit")
    return dm


def run_tame(stream: str, seed: int) -> dict[str, Any]:
    dm = make_dm(stream, seed)
    arch = STREAMS[stream][2]
    pl.seed_everything(seed, verbose=False)
    model = TAME(expert=arch, width=WIDTH, lr=LR, selector_epochs=SELECTOR_EPOCHS, buffer_size=BUFFER, seed=seed)
    probe = StreamProbe(dm)
    t0 = time.perf_counter()
    trainer([probe]).fit(model, datamodule=dm)
    wall = time.perf_counter() - t0
    det = match_detections(model.shift_batches, dm.true_boundaries, max_delay=50)
    # No-shift step time: every batch except the shift batches and the first one (warm-up).
    skip = set(model.shift_batches) | {0}
    steps = [t for i, t in enumerate(probe.times) if i not in skip]
    params = sum(p.numel() for p in model.experts.parameters())
    if model.selector_net is not None:
        params += sum(int((p != 0).sum()) for p in model.selector_net.parameters())
    return {
        **scores(model, dm),
        "forgetting": math.nan,
        "experts": model.num_experts,
        "params": params,
        "delays": det["delays"],
        "missed": det["missed"],
        "false": det["false_detections"],
        "step_ms": 1000 * statistics.median(steps),
        "wall": wall,
        "losses": probe.losses,
        "shifts": list(model.shift_batches),
        "boundaries": dm.true_boundaries,
        "selector_acc": model.final_metrics.get("selector_acc", math.nan),
    }


def run_single(stream: str, seed: int, method: str) -> dict[str, Any]:
    dm = make_dm(stream, seed)
    arch = STREAMS[stream][2]
    pl.seed_everything(seed, verbose=False)
    model = StreamNet(arch, list(dm.input_shape), ewc_lambda=100.0 if method == "ewc" else 0.0, seed=seed)
    probe = StreamProbe(dm, ewc=method == "ewc")
    callbacks: list[pl.Callback] = [probe]
    detector = dco = None
    if method == "dco":
        detector = TaskShiftDetector(verbose=False)
        dco = DCO(num_directions=20, ae_steps=200, report=False, seed=seed)
        callbacks += [detector, dco]
    t0 = time.perf_counter()
    if method == "joint":
        # Same number of batches, drawn i.i.d. from the union of all tasks' training pools (upper bound).
        xs, ys = zip(*(dm.task_tensors(t, train=True) for t in range(dm.num_tasks)))
        x, y = torch.cat(xs), torch.cat(ys)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(len(x), (dm.num_stream_batches * BATCH,), generator=g)
        loader = DataLoader(TensorDataset(x[idx], y[idx]), batch_size=BATCH)
        probe.ends = {dm.num_stream_batches}
        trainer(callbacks).fit(model, train_dataloaders=loader)
    else:
        trainer(callbacks).fit(model, datamodule=dm)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {
        **scores(model, dm),
        "forgetting": forgetting(model.acc_matrix) if method != "joint" else math.nan,
        "experts": 1,
        "params": sum(p.numel() for p in model.parameters()),
        "delays": [],
        "missed": math.nan,
        "false": math.nan,
        "step_ms": 1000 * statistics.median(probe.times[1:]),
        "wall": wall,
    }
    if detector is not None:
        det = match_detections(detector.shift_steps, [b + 1 for b in dm.true_boundaries], max_delay=50)
        # The callback reports global_step after the step (batch b -> step b + 1): compare on that scale.
        out.update(delays=det["delays"], missed=det["missed"], false=det["false_detections"])
    return out


def time_ratio(stream: str, rounds: int = 4, batches: int = 100) -> tuple[float, float, float]:
    """Median per-batch time of TAME (no shift) and of plain training, interleaved: (tame_ms, plain_ms, ratio)."""
    dataset, _, arch, _ = STREAMS[stream]
    times: dict[str, list[float]] = {"tame": [], "plain": []}
    for r in range(rounds):
        for method in ("tame", "plain") if r % 2 == 0 else ("plain", "tame"):
            dm = TaskStreamDataModule(
                dataset=dataset, kind="split", num_tasks=1, batches_per_task=batches, batch_size=BATCH
            )
            dm.setup("fit")
            if method == "tame":
                model: pl.LightningModule = TAME(expert=arch, width=WIDTH, lr=LR, selector_epochs=0, buffer_size=2000)
            else:
                model = StreamNet(arch, list(dm.input_shape))
            probe = StreamProbe(dm)
            probe.ends = set()
            trainer([probe]).fit(model, datamodule=dm)
            if method == "tame":
                assert model.num_experts == 1, "a shift was detected on a single-task stream"
            times[method] += probe.times[5:]  # skip warm-up batches
    tame_ms, plain_ms = (1000 * statistics.median(times[m]) for m in ("tame", "plain"))
    return tame_ms, plain_ms, tame_ms / plain_ms


def fmt(values: list[float], pct: bool = True) -> str:
    vals = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    scale = 100 if pct else 1
    mean = statistics.mean(vals) * scale
    sd = statistics.pstdev(vals) * scale if len(vals) > 1 else 0.0
    return f"{mean:.1f}±{sd:.1f}" if pct else f"{mean:.0f}"


def plot(stream: str, res: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(res["losses"], lw=0.8, label="TAME training loss (active expert)")
    for i, b in enumerate(res["boundaries"]):
        ax.axvline(b, color="k", ls="--", lw=1, label="true boundary" if i == 0 else None)
    for i, s in enumerate(res["shifts"]):
        ax.axvline(s, color="r", ls=":", lw=1.5, label="detected shift" if i == 0 else None)
    ax.set_xlabel("batch")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"TAME on {stream} (seed 0): {res['experts']} experts")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"continual_{stream}.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--methods", nargs="+", default=["tame", "finetune", "ewc", "dco", "joint"])
    parser.add_argument("--timing-streams", nargs="*", default=["mnist1d_split"], choices=list(STREAMS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_autoopt"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()
    for stream in args.streams:
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
        for seed in args.seeds:
            for method in args.methods:
                res = run_tame(stream, seed) if method == "tame" else run_single(stream, seed, method)
                results[method].append(res)
                print(
                    f"[progress] {stream} seed {seed} {method}: class-IL {res['class_il']:.3f} "
                    f"task-IL {res['task_il']:.3f} ({res['wall']:.0f} s)",
                    flush=True,
                )
                if method == "tame" and seed == args.seeds[0]:
                    plot(stream, res)
        print(f"\n### {stream} ({len(args.seeds)} seeds; mean±std over seeds)\n")
        print(
            "| method | class-IL % | task-IL % | forgetting % | experts | params | delays (batches) | missed "
            "| false det. | step ms | run s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for method, runs in results.items():
            delays = [d for r in runs for d in r["delays"]]
            delay_txt = f"mean {statistics.mean(delays):.1f}, max {max(delays)}" if delays else "-"
            print(
                f"| {method} | {fmt([r['class_il'] for r in runs])} | {fmt([r['task_il'] for r in runs])} | "
                f"{fmt([r['forgetting'] for r in runs])} | {fmt([r['experts'] for r in runs], False)} | "
                f"{fmt([r['params'] for r in runs], False)} | {delay_txt} | "
                f"{fmt([r['missed'] for r in runs], False)} | {fmt([r['false'] for r in runs], False)} | "
                f"{statistics.mean(r['step_ms'] for r in runs):.2f} | {statistics.mean(r['wall'] for r in runs):.0f} |"
            )
        if "tame" in results:
            tame = results["tame"]
            print(f"\nTAME selector accuracy: {fmt([r['selector_acc'] for r in tame])} %")
            for other in ("finetune", "ewc", "dco"):
                if other in results:
                    margins = [a["class_il"] - b["class_il"] for a, b in zip(tame, results[other])]
                    print(f"TAME class-IL margin over {other}: {fmt(margins)} points")
        if "tame" in results and stream in args.timing_streams:
            tame_ms, plain_ms, ratio = time_ratio(stream)
            print(
                f"TAME no-shift step / plain training step (interleaved, median per-batch wall time): "
                f"{tame_ms:.2f} ms / {plain_ms:.2f} ms = {ratio:.3f}"
            )
    print(f"\ntotal wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
