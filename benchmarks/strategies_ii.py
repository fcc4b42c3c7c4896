"""Strategies II benchmark: MGRAWA, LGRAWA, D-PSGD and AL-DSGD (static / dynamic graph) against DDP on MNIST-1D.

Four CPU worker processes are started once (a process group shared by every run, like ``torchrun``) and train
every method for every seed in the same processes, side by side, so ratios are comparable even on a shared
machine. Per run: test accuracy of the averaged model, bytes sent per optimizer step relative to DDP (DDP counted
as one fp32 all-reduce of the gradients per step, the convention of ``dist/bytes_sent``), training wall time
relative to the no-communication limit (local SGD with an infinite period), the final consensus distance and the
top Hessian eigenvalue of the averaged weights (``lightning_autoopt.landscape``, Lanczos on 512 training samples).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/strategies_ii.py                 # 3 seeds, 12 epochs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/strategies_ii.py --seeds 0 --epochs 2   # smoke run

Writes ``benchmarks/out/strategies_ii.json`` and ``benchmarks/out/strategies_ii_acc_vs_bytes.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def methods(period: int) -> dict[str, tuple[str, dict[str, Any]]]:
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
        LOCAL_RANK=str(rank), NODE_RANK="0", OMP_NUM_THREADS="1",
    )  # fmt: skip
    sys.path.insert(0, str(HERE.parent))
    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist

    import lightning_autoopt.strategies as S
    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.landscape import compute_measure, make_fixed_batches
    from lightning_autoopt.models import Classifier

    torch.set_num_threads(1)

    class Timer(pl.Callback):
        def on_train_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            self.seconds = time.perf_counter() - self.t0

    results = []
    for seed in args.seeds:
        for name, (cls_name, kwargs) in methods(args.period).items():
            if args.methods and not any(name.startswith(m) for m in args.methods):
                continue
            pl.seed_everything(seed, workers=True, verbose=False)
            dm = MNIST1DDataModule(batch_size=args.batch_size, num_samples=5000, seed=0)
            model = Classifier(arch="cnn", lr=args.lr, momentum=0.9, weight_decay=5e-4)
            strategy = "ddp" if cls_name == "ddp" else getattr(S, cls_name)(**kwargs)
            timer = Timer()
            trainer = pl.Trainer(
                accelerator="cpu", devices=world, strategy=strategy, max_epochs=args.epochs, limit_val_batches=0,
                num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False, logger=False,
                enable_checkpointing=False, callbacks=[timer], default_root_dir=str(OUT / "strategies_ii_runs"),
            )  # fmt: skip
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
                flat = torch.cat([t.detach().reshape(-1) for t in tensors])
                local = flat.clone()
                dist.all_reduce(flat)
                flat /= world
                spread = local - flat
                sq = spread.pow(2).sum().reshape(1)
                dist.all_reduce(sq)
                off = 0
                for t in tensors:
                    t.copy_(flat[off : off + t.numel()].view_as(t))
                    off += t.numel()
            dm.setup("test")
            model.eval()
            correct = total = 0
            with torch.no_grad():
                for x, y in dm.test_dataloader():
                    correct += int((model(x).argmax(1) == y).sum())
                    total += len(y)
            wall = torch.tensor([timer.seconds])
            dist.all_reduce(wall, op=dist.ReduceOp.MAX)
            if rank == 0:
                lam = float("nan")
                if args.hessian:
                    batches = make_fixed_batches(dm.train_set, num_samples=512, batch_size=128, seed=0)
                    lam = compute_measure("hessian_top", model, batches, seed=0)
                row = {
                    "method": name, "seed": seed, "test_acc": correct / total, "bytes_per_step": bytes_per_step,
                    "ddp_bytes_per_step": 4.0 * n_params, "train_seconds": float(wall), "steps": steps,
                    "final_consensus": (float(sq) / world) ** 0.5, "last_logged_consensus": consensus,
                    "hessian_top": lam,
                }  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True)
            dist.barrier()
    if rank == 0:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / args.out_name).write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))
    dist.barrier()
    dist.destroy_process_group()


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--period", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker (4 workers -> 128 global)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--no-hessian", dest="hessian", action="store_false")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument(
        "--methods", nargs="*", default=None, help="run only methods whose name starts with one of these"
    )
    parser.add_argument("--out-name", default="strategies_ii.json", help="results file under benchmarks/out/")
    parser.add_argument("--merge", nargs="*", default=["strategies_ii_extra.json"], help="extra result files to table")
    args = parser.parse_args()
    if not args.summarize_only:
        import torch.multiprocessing as mp

        t0 = time.time()
        mp.start_processes(_worker, args=(args.world, _free_port(), args), nprocs=args.world, start_method="spawn")
        print(f"total wall time {time.time() - t0:.0f} s")
    names = dict.fromkeys(["strategies_ii.json", args.out_name, *args.merge])
    print(summarize([OUT / n for n in names]))


if __name__ == "__main__":
    main()
