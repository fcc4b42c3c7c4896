"""Distributed strategies I benchmark: DDP vs LocalSGD vs EASGD vs LSGD (one group, two groups) on MNIST-1D.

Four CPU worker processes (gloo) are started once, like ``torchrun`` would, and every method x seed is trained in
the same processes one after the other, so the ratios are measured side by side. Every run: the reference 1-D CNN
(``Classifier(arch="cnn")``), the same epochs and per-worker batch, SGD lr 0.05 momentum 0.9. After every epoch the
strategy's *policy weights* (LSGD: average, its default since the follow-up; EASGD: center; LocalSGD: average; DDP:
its single model) are tested on the full MNIST-1D test split, together with the cumulative bytes sent so far
(``dist/bytes_sent`` convention: a collective over ``n`` fp32 values counts ``4 n`` bytes per rank; DDP = one
all-reduce of the ``4 * num_params`` gradient bytes per step). Wall time per epoch excludes that evaluation and is
compared with the no-communication limit (local SGD with an infinite period). ``consensus_every=0`` everywhere: the
diagnostic is off.

``--also-eval leader`` additionally tests the leader's weights of every LSGD run on the *same* replicas (no
retraining; paired comparison) and reports them as extra rows ``"<name> (leader eval)"``.

Add a method: one entry in :func:`methods` (``name -> (strategy class name in lightning_autoopt.strategies or
"ddp", init args)``).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.strategies                        # 3 seeds x 8 epochs
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.strategies --seeds 0 --epochs 1   # smoke run

(from the repository root; the worker harness is shared with ``strategies_ii.py`` in ``benchmarks/_harness.py``).

Writes ``benchmarks/out/strategies.json`` and ``benchmarks/out/strategies_acc_vs_bytes.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from benchmarks import _harness as H
from benchmarks._harness import OUT


def methods(period: int) -> H.Methods:
    """name -> (strategy class name in ``lightning_autoopt.strategies`` or ``"ddp"``, init args)."""
    off = {"consensus_every": 0}
    return {
        "DDP": ("ddp", {}),
        "no-comm": ("LocalSGDStrategy", {"period": 10**9, **off}),
        f"LocalSGD p={period}": ("LocalSGDStrategy", {"period": period, **off}),
        f"EASGD p={period} b=0.43": ("EASGDStrategy", {"period": period, "elastic_strength": 0.43, **off}),
        f"LSGD p={period} l=0.5": ("LSGDStrategy", {"period": period, "pull_strength": 0.5, **off}),
        f"LSGD 2x2 p={period}/{period // 4} l=0.5": (
            "LSGDStrategy",
            {
                "period": period,
                "pull_strength": 0.5,
                "local_period": max(period // 4, 1),
                "local_pull_strength": 0.5,
                "group_size": 2,
                **off,
            },
        ),
        # Strategies II (GRAWA, decentralized gossip); also in benchmarks/strategies_ii.py
        f"MGRAWA p={period} l=0.5": (
            "GRAWAStrategy",
            {"level": "model", "period": period, "pull_strength": 0.5, **off},
        ),
        f"LGRAWA p={period} l=0.5": (
            "GRAWAStrategy",
            {"level": "layer", "period": period, "pull_strength": 0.5, **off},
        ),
        f"D-PSGD ring p={period}": ("DPSGDStrategy", {"graph": "ring", "period": period, **off}),
        f"AL-DSGD ring p={period}": (
            "ALDSGDStrategy",
            {"graph": "ring", "dynamic_graph": None, "period": period, **off},
        ),
        f"AL-DSGD ring+random_ring p={period}": ("ALDSGDStrategy", {"graph": "ring", "period": period, **off}),
    }


def _worker(rank: int, world: int, args: argparse.Namespace) -> None:
    import lightning.pytorch as pl

    import lightning_autoopt.strategies as S
    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier

    class Probe(pl.Callback):
        """Per epoch: training seconds (excluding this probe) and the policy weights' test accuracy and bytes."""

        def __init__(self, dm: Any, also_eval: list[str]) -> None:
            self.dm, self.rows, self.t0, self.also_eval = dm, [], 0.0, also_eval

        def on_train_epoch_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            seconds = time.perf_counter() - self.t0
            strategy = trainer.strategy
            alt = {}
            if isinstance(strategy, S.LocalUpdateStrategy):
                with strategy.policy_weights():  # collective: every rank
                    acc = H.test_split_accuracy(pl_module, self.dm)
                for policy in self.also_eval if isinstance(strategy, S.LSGDStrategy) else []:
                    if policy != strategy.eval_policy:
                        with strategy.policy_weights(policy):  # the same replicas, another policy's weights
                            alt[policy] = H.test_split_accuracy(pl_module, self.dm)
                sent = strategy.bytes_sent_total
            else:
                acc = H.test_split_accuracy(pl_module, self.dm)
                sent = 4 * sum(p.numel() for p in pl_module.parameters()) * trainer.global_step
            self.rows.append({"epoch": trainer.current_epoch + 1, "seconds": seconds, "acc": acc,
                              "bytes": sent, "steps": trainer.global_step, "alt_acc": alt})  # fmt: skip

    results = []
    for seed, name, cls_name, kwargs in H.runs(args, methods(args.period)):
        pl.seed_everything(seed, workers=True, verbose=False)
        dm = MNIST1DDataModule(batch_size=args.batch_size, num_samples=5000, seed=0, cache_dir=str(OUT / "cache"))
        dm.setup("test")
        model = Classifier(arch="cnn", lr=args.lr, momentum=0.9, weight_decay=5e-4)
        probe = Probe(dm, args.also_eval)
        strategy = H.build_strategy(cls_name, kwargs)
        H.make_trainer(world, strategy, args.epochs, [probe], OUT / "strategies_runs").fit(model, datamodule=dm)
        secs = H.slowest([r["seconds"] for r in probe.rows])
        if rank == 0:
            n_params = sum(p.numel() for p in model.parameters())
            for r, s in zip(probe.rows, secs):
                r["seconds"] = s
            row = {"method": name, "seed": seed, "n_params": n_params, "curve": probe.rows}
            results.append(row)
            for policy in probe.rows[-1]["alt_acc"]:  # same replicas, other policy weights
                curve = [{**r, "acc": r["alt_acc"][policy]} for r in probe.rows]
                results.append({**row, "method": f"{name} ({policy} eval)", "curve": curve})
            last = probe.rows[-1]
            print(json.dumps({"method": name, "seed": seed, "acc": last["acc"], "alt_acc": last["alt_acc"],
                              "bytes": last["bytes"], "steps": last["steps"],
                              "sec_per_epoch": statistics.mean(secs)}), flush=True)  # fmt: skip
        dist.barrier()
    H.finish(rank, args, results, "strategies.json")


def summarize(path: Path) -> str:
    data = json.loads(path.read_text())
    runs = data["runs"]
    names = list(dict.fromkeys(r["method"] for r in runs))

    def per(name: str) -> list[dict[str, Any]]:
        return [r for r in runs if r["method"] == name]

    def final_acc(name: str) -> list[float]:
        return [100 * r["curve"][-1]["acc"] for r in per(name)]

    def bytes_per_step(name: str) -> float:
        return statistics.mean(r["curve"][-1]["bytes"] / max(r["curve"][-1]["steps"], 1) for r in per(name))

    def sec_per_epoch(name: str) -> float:
        # skip the first epoch (process warm-up) when there are several
        return statistics.mean(statistics.mean(c["seconds"] for c in (r["curve"][1:] or r["curve"])) for r in per(name))

    ddp_acc = statistics.mean(final_acc("DDP")) if "DDP" in names else float("nan")
    ddp_bytes = 4.0 * runs[0]["n_params"]
    nocomm = sec_per_epoch("no-comm") if "no-comm" in names else float("nan")
    lines = [
        "| method | final test acc % (mean ± sd) | Δ vs DDP (points) | bytes/step vs DDP | s/epoch vs no-comm |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        acc = final_acc(name)
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lines.append(
            f"| {name} | {statistics.mean(acc):.2f} ± {sd:.2f} | {statistics.mean(acc) - ddp_acc:+.2f} | "
            f"{bytes_per_step(name) / ddp_bytes:.4f} | {sec_per_epoch(name) / nocomm:.2f} |"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name in names:
            curves = [r["curve"] for r in per(name)]
            n = min(len(c) for c in curves)
            xs = [statistics.mean(c[i]["bytes"] for c in curves) / 2**20 for i in range(n)]
            ys = [100 * statistics.mean(c[i]["acc"] for c in curves) for i in range(n)]
            if name == "no-comm":
                xs = [max(x, 1e-3) for x in xs]
            ax.plot(xs, ys, marker="o", ms=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("cumulative MiB sent per worker (log; no-comm drawn at 1e-3)")
        ax.set_ylabel("test accuracy of the policy weights (%)")
        ax.set_title(f"MNIST-1D CNN, 4 CPU workers, mean of {len(data['args']['seeds'])} seeds, one point per epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(OUT / "strategies_acc_vs_bytes.png", dpi=120)
    except ImportError:  # pragma: no cover
        pass
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_common_args(parser, epochs=8, period=16)
    parser.add_argument(
        "--also-eval",
        nargs="*",
        default=[],
        choices=["leader", "average"],
        help="LSGD runs: also test these policy weights on the same replicas (extra rows)",
    )
    args = parser.parse_args()
    if not args.summarize_only:
        H.launch(_worker, args)
    print(summarize(OUT / "strategies.json"))


if __name__ == "__main__":
    main()
