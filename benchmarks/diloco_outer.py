"""DiLoCo's outer optimizer on a small workload: which outer learning rate / momentum to ship as defaults.

Same workload as ``benchmarks/strategies.py`` (4 CPU gloo workers started once, MNIST-1D 5 000 samples, reference
1-D CNN, SGD lr 0.05 momentum 0.9 wd 5e-4 as the inner optimizer, per-worker batch 32, period 16), side by side:
DDP, LocalSGD (= DiLoCo with outer lr 1 and no momentum) and DiLoCo with several outer settings, including the
paper's (Nesterov, lr 0.7, momentum 0.9). Test accuracy of the global weights after every epoch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diloco_outer.py                    # 3 seeds x 15 epochs, ~4 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diloco_outer.py --seeds 0 --epochs 2

Writes ``benchmarks/out/diloco_outer.json`` and prints a table (final accuracy, mean ± sd over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def configs(period: int) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "DDP": ("ddp", {}),
        f"LocalSGD p={period}": ("LocalSGDStrategy", {"period": period, "consensus_every": 0}),
        **{
            f"DiLoCo p={period} lr={lr} mu={mu}{'' if nest else ' heavy-ball'}": (
                "DiLoCoStrategy",
                {"period": period, "outer_lr": lr, "outer_momentum": mu, "nesterov": nest},
            )
            for lr, mu, nest in (
                (0.7, 0.9, True),  # the paper's
                (0.7, 0.5, True),
                (1.0, 0.5, True),
                (0.7, 0.0, True),
                (1.0, 0.3, True),
            )
        },
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
    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist

    import lightning_autoopt.strategies as S
    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier

    torch.set_num_threads(1)

    class Probe(pl.Callback):
        def __init__(self, dm: Any) -> None:
            self.dm, self.acc = dm, []

        def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            strategy = trainer.strategy
            local = isinstance(strategy, S.LocalUpdateStrategy)
            if local:
                strategy._swap_in_policy()  # collective: every rank
            pl_module.eval()
            correct = total = 0
            with torch.no_grad():
                for x, y in self.dm.test_dataloader():
                    correct += int((pl_module(x).argmax(1) == y).sum())
                    total += len(y)
            pl_module.train()
            if local:
                strategy._swap_out_policy()
            self.acc.append(correct / total)

    results = []
    for seed in args.seeds:
        for name, (cls_name, kwargs) in configs(args.period).items():
            pl.seed_everything(seed, workers=True, verbose=False)
            dm = MNIST1DDataModule(batch_size=32, num_samples=5000, seed=0, cache_dir=str(OUT / "cache"))
            dm.setup("test")
            model = Classifier(arch="cnn", lr=0.05, momentum=0.9, weight_decay=5e-4)
            strategy = "ddp" if cls_name == "ddp" else getattr(S, cls_name)(**kwargs)
            probe = Probe(dm)
            trainer = pl.Trainer(
                accelerator="cpu", devices=world, strategy=strategy, max_epochs=args.epochs, limit_val_batches=0,
                num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False, logger=False,
                enable_checkpointing=False, callbacks=[probe], default_root_dir=str(OUT / "diloco_runs"),
            )  # fmt: skip
            trainer.fit(model, datamodule=dm)
            if rank == 0:
                results.append({"method": name, "seed": seed, "acc": probe.acc})
                print(json.dumps({"method": name, "seed": seed, "final_acc": probe.acc[-1]}), flush=True)
            dist.barrier()
    if rank == 0:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "diloco_outer.json").write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def summarize(path: Path) -> str:
    runs = json.loads(path.read_text())["runs"]
    names = list(dict.fromkeys(r["method"] for r in runs))
    lines = ["| method | final test acc % (mean ± sd) | best epoch acc % (mean) |", "|---|---|---|"]
    for name in names:
        final = [100 * r["acc"][-1] for r in runs if r["method"] == name]
        best = [100 * max(r["acc"]) for r in runs if r["method"] == name]
        sd = statistics.stdev(final) if len(final) > 1 else 0.0
        lines.append(f"| {name} | {statistics.mean(final):.2f} ± {sd:.2f} | {statistics.mean(best):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--period", type=int, default=16)
    parser.add_argument("--world", type=int, default=4)
    args = parser.parse_args()
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(args.world, _free_port(), args), nprocs=args.world, start_method="spawn")
    print(summarize(OUT / "diloco_outer.json"))


if __name__ == "__main__":
    main()
