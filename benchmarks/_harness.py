"""Shared harness of the distributed strategy benchmarks (``strategies.py``, ``strategies_ii.py``, and the Trainer,
strategy and accuracy helpers of ``constrained_link.py``).

``launch`` starts ``--world`` CPU worker processes once (spawn, gloo, the environment ``torchrun`` would set), and
each benchmark's worker trains every method x seed in those same processes one after the other, so ratios are
measured side by side (``constrained_link.py`` starts its workers with ``torchrun`` on an emulated cluster instead).
Everything the benchmarks do the same way lives here: the command-line options, the method filter, the strategy from
its class name, the Trainer, test accuracy, the slowest-rank wall time and the results file.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"

Methods = dict[str, tuple[str, dict[str, Any]]]
"""name -> (strategy class name in ``lightning_autoopt.strategies`` or ``"ddp"``, init args)."""


def add_common_args(parser: argparse.ArgumentParser, epochs: int, period: int) -> None:
    """The options both benchmarks take (their defaults for ``--epochs`` and ``--period`` differ)."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--period", type=int, default=period)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker (4 workers -> 128 global)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument(
        "--methods", nargs="*", default=None, help="run only methods whose name starts with one of these"
    )
    parser.add_argument("--summarize-only", action="store_true")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    rank: int, worker: Callable[[int, int, argparse.Namespace], None], port: int, args: argparse.Namespace
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(args.world), RANK=str(rank),
        LOCAL_RANK=str(rank), NODE_RANK="0", OMP_NUM_THREADS="1",
    )  # fmt: skip
    import torch

    torch.set_num_threads(1)
    worker(rank, args.world, args)


def launch(worker: Callable[[int, int, argparse.Namespace], None], args: argparse.Namespace) -> None:
    """Run ``worker(rank, world, args)`` in ``args.world`` spawned processes and print the total wall time."""
    import torch.multiprocessing as mp

    t0 = time.time()
    mp.start_processes(_entry, args=(worker, _free_port(), args), nprocs=args.world, start_method="spawn")
    print(f"total wall time {time.time() - t0:.0f} s")


def runs(args: argparse.Namespace, methods: Methods) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    """``(seed, name, class name, init args)`` for every seed and every method ``--methods`` selects."""
    for seed in args.seeds:
        for name, (cls_name, kwargs) in methods.items():
            if not args.methods or any(name.startswith(m) for m in args.methods):
                yield seed, name, cls_name, kwargs


def build_strategy(cls_name: str, kwargs: dict[str, Any]) -> Any:
    """``"ddp"`` or an instance of the named class of :mod:`lightning_autoopt.strategies`."""
    import lightning_autoopt.strategies as strategies

    return "ddp" if cls_name == "ddp" else getattr(strategies, cls_name)(**kwargs)


def make_trainer(
    world: int, strategy: Any, epochs: int, callbacks: list[Any], root: Path, num_nodes: int = 1, **overrides: Any
) -> Any:
    """The benchmarks' Trainer: CPU, ``world`` devices (per node), no validation, logging or checkpoints.

    ``num_nodes`` > 1 for a multi-node ``torchrun`` job (``world`` is then the devices of one node); ``overrides``
    are further ``Trainer`` arguments (e.g. ``limit_train_batches``).
    """
    import lightning.pytorch as pl

    kwargs: dict[str, Any] = dict(
        accelerator="cpu", devices=world, num_nodes=num_nodes, strategy=strategy, max_epochs=epochs,
        limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
        logger=False, enable_checkpointing=False, callbacks=callbacks, default_root_dir=str(root),
    )  # fmt: skip
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def test_split_accuracy(model: Any, datamodule: Any) -> float:
    """Top-1 accuracy of ``model`` on the full test split (eval mode, restored afterwards)."""
    import torch

    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in datamodule.test_dataloader():
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / total


def sharded_accuracy(model: Any, x: Any, y: Any, rank: int, world: int) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, each rank scoring every ``world``-th sample (a collective).

    Every rank must hold the same weights (DDP, or a policy's weights inside ``strategy.policy_weights()``); the
    counts are summed with one all-reduce, so the result is the accuracy on the whole set, identical on every rank.
    """
    import torch
    import torch.distributed as dist

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        xs, ys = x[rank::world], y[rank::world]
        correct = float((model(xs).argmax(1) == ys).sum()) if len(ys) else 0.0
    model.train(was_training)
    counts = torch.tensor([correct, float(len(ys))], dtype=torch.float64)
    dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def slowest(seconds: list[float]) -> list[float]:
    """Element-wise maximum over the ranks (the slowest rank decides a wall time)."""
    import torch
    import torch.distributed as dist

    values = torch.tensor(seconds, dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values.tolist()


def finish(rank: int, args: argparse.Namespace, results: list[dict[str, Any]], filename: str) -> None:
    """Rank 0 writes ``{"args", "runs"}`` to ``OUT / filename``; then every rank leaves the process group."""
    import torch.distributed as dist

    if rank == 0:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / filename).write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))
    dist.barrier()
    dist.destroy_process_group()
