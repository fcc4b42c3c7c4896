"""Strategies II benchmark: MGRAWA, LGRAWA, D-PSGD and AL-DSGD (static / dynamic graph) against DDP on MNIST-1D.

Four CPU worker processes are started once (a process group shared by every run, like ``torchrun``) and train
every method for every seed in the same processes, side by side, so ratios are comparable even on a shared
machine. Per run: test accuracy of the averaged model, bytes sent per optimizer step relative to DDP (DDP counted
as one fp32 all-reduce of the gradients per step, the convention of ``dist/bytes_sent``), training wall time
relative to the no-communication limit (local SGD with an infinite period), the final consensus distance and the
top Hessian eigenvalue of the averaged weights (``lightning_autoopt.landscape``, Lanczos on 512 training samples).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.strategies_ii                 # 3 seeds, 12 epochs
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.strategies_ii --seeds 0 --epochs 2   # smoke run

(from the repository root; the worker harness is shared with ``strategies.py`` in ``benchmarks/_harness.py``).

Writes ``benchmarks/out/strategies_ii.json`` and ``benchmarks/out/strategies_ii_acc_vs_bytes.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch.distributed as dist

from benchmarks import _harness as H
from benchmarks._harness import OUT


def methods(period: int) -> H.Methods:
    """name -> (strategy class name or "ddp", init args)."""
    gossip = {"period": period, "graph": "ring"}
    no_degree = {"degree_mix": 0.0, "degree_pull": 0.0}
    return {
        "DDP": ("ddp", {}),
        "no-comm": ("LocalSGDStrategy", {"period": 10**9, "consensus_every": 0}),
        f"LocalSGD (p={period})": ("LocalSGDStrategy", {"period": period}),
        f"MGRAWA (p={period}, l=0.5)": ("GRAWAStrategy", {"level": "model", "period": period, "pull_strength": 0.5}),
        f"LGRAWA (p={period}, l=0.5)": ("GRAWAStrategy", {"level": "layer", "period": period, "pull_strength": 0.5}),
        f"D-PSGD ring (p={period})": ("DPSGDStrategy", dict(gossip)),
        f"AL-DSGD ring (p={period})": ("ALDSGDStrategy", {**gossip, "dynamic_graph": None}),
        f"AL-DSGD ring<->random ring (p={period})": ("ALDSGDStrategy", {**gossip, "dynamic_graph": "random_ring"}),
        # on a ring every neighbour has the same degree: the degree terms only pull toward oneself (see the card)
        f"AL-DSGD ring, no degree terms (p={period})": (
            "ALDSGDStrategy",
            {**gossip, **no_degree, "dynamic_graph": None},
        ),
        f"AL-DSGD ring<->random ring, no degree terms (p={period})": (
            "ALDSGDStrategy",
            {**gossip, **no_degree, "dynamic_graph": "random_ring"},
        ),
        f"D-PSGD ring<->random ring (p={period})": ("DPSGDStrategy", {**gossip, "dynamic_graph": "random_ring"}),
    }


def _worker(rank: int, world: int, args: argparse.Namespace) -> None:
    import lightning.pytorch as pl
    import torch

    from lightning_autoopt import _flat
    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.landscape import compute_measure, make_fixed_batches
    from lightning_autoopt.models import Classifier

    class Timer(pl.Callback):
        def on_train_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            self.seconds = time.perf_counter() - self.t0

    results = []
    for seed, name, cls_name, kwargs in H.runs(args, methods(args.period)):
        pl.seed_everything(seed, workers=True, verbose=False)
        dm = MNIST1DDataModule(batch_size=args.batch_size, num_samples=5000, seed=0)
        model = Classifier(arch="cnn", lr=args.lr, momentum=0.9, weight_decay=5e-4)
        timer = Timer()
        strategy = H.build_strategy(cls_name, kwargs)
        trainer = H.make_trainer(world, strategy, args.epochs, [timer], OUT / "strategies_ii_runs")
        trainer.fit(model, datamodule=dm)
        steps = trainer.global_step
        n_params = sum(p.numel() for p in model.parameters())
        if cls_name == "ddp":
            bytes_per_step = 4.0 * n_params
        else:
            bytes_per_step = trainer.strategy.bytes_sent_total / max(steps, 1)
        consensus = float(trainer.callback_metrics.get("dist/consensus_distance", float("nan")))
        # the averaged model (parameters and floating buffers), identical on every rank
        tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
        with torch.no_grad():
            flat = _flat.flatten(tensors)
            local = flat.clone()
            dist.all_reduce(flat)
            flat /= world
            sq = (local - flat).pow(2).sum().reshape(1)
            dist.all_reduce(sq)
            _flat.unflatten_(flat, tensors)
        dm.setup("test")
        accuracy = H.test_split_accuracy(model, dm)
        (wall,) = H.slowest([timer.seconds])
        if rank == 0:
            lam = float("nan")
            if args.hessian:
                batches = make_fixed_batches(dm.train_set, num_samples=512, batch_size=128, seed=0)
                lam = compute_measure("hessian_top", model, batches, seed=0)
            row = {
                "method": name, "seed": seed, "test_acc": accuracy, "bytes_per_step": bytes_per_step,
                "ddp_bytes_per_step": 4.0 * n_params, "train_seconds": wall, "steps": steps,
                "final_consensus": (float(sq) / world) ** 0.5, "last_logged_consensus": consensus,
                "hessian_top": lam,
            }  # fmt: skip
            results.append(row)
            print(json.dumps(row), flush=True)
        dist.barrier()
    H.finish(rank, args, results, args.out_name)


def summarize(paths: list[Path]) -> str:
    datas = [json.loads(p.read_text()) for p in paths if p.exists()]
    data = datas[0]
    runs = [r for d in datas for r in d["runs"]]
    names = list(dict.fromkeys(r["method"] for r in runs))

    def agg(name: str, key: str) -> list[float]:
        return [r[key] for r in runs if r["method"] == name]

    ddp_acc = statistics.mean(agg("DDP", "test_acc"))
    nocomm_t = statistics.mean(agg("no-comm", "train_seconds"))
    lines = [
        "| method | test acc (mean ± sd, %) | Δ vs DDP (points) | bytes/step vs DDP | wall time vs no-comm | "
        "final consensus dist. | top Hessian eig. |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    for name in names:
        acc = [100 * a for a in agg(name, "test_acc")]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        ratio = statistics.mean(agg(name, "bytes_per_step")) / statistics.mean(agg(name, "ddp_bytes_per_step"))
        t = statistics.mean(agg(name, "train_seconds")) / nocomm_t
        cons = statistics.mean(agg(name, "final_consensus"))
        lam = agg(name, "hessian_top")
        lam_s = "n/a" if all(v != v for v in lam) else f"{statistics.mean(lam):.2f}"
        d = statistics.mean(acc) - 100 * ddp_acc
        rows.append((name, statistics.mean(acc), ratio))
        lines.append(
            f"| {name} | {statistics.mean(acc):.2f} ± {sd:.2f} | {d:+.2f} | {ratio:.3f} | {t:.2f} | {cons:.3f} | "
            f"{lam_s} |"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name, acc, ratio in rows:
            ax.scatter(max(ratio, 1e-4), acc)
            ax.annotate(name, (max(ratio, 1e-4), acc), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("bytes sent per optimizer step / DDP's (log; no-comm plotted at 1e-4)")
        ax.set_ylabel("test accuracy of the averaged model (%)")
        ax.set_title(f"MNIST-1D, 4 CPU workers, {len(data['args']['seeds'])} seeds")
        fig.tight_layout()
        fig.savefig(OUT / "strategies_ii_acc_vs_bytes.png", dpi=120)
    except ImportError:  # pragma: no cover
        pass
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_common_args(parser, epochs=12, period=4)
    parser.add_argument("--no-hessian", dest="hessian", action="store_false")
    parser.add_argument("--out-name", default="strategies_ii.json", help="results file under benchmarks/out/")
    parser.add_argument("--merge", nargs="*", default=["strategies_ii_extra.json"], help="extra result files to table")
    args = parser.parse_args()
    if not args.summarize_only:
        H.launch(_worker, args)
    names = dict.fromkeys(["strategies_ii.json", args.out_name, *args.merge])
    print(summarize([OUT / n for n in names]))


if __name__ == "__main__":
    main()
