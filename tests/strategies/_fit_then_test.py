"""``fit`` then ``validate`` in one process with the default ``popen`` launcher (2 CPU ranks); see test_faults.py.

Each rank writes ``popen{rank}.txt`` at interpreter exit: whether the default process group existed after ``fit``,
after ``validate`` and at exit (after the strategy's exit hook). With ``--crash-rank R`` rank R raises inside
``training_step`` at step 2, records when, and stays alive ``--linger`` seconds (a caller that catches the error);
the other rank records when its own ``fit`` failed. Run with the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from lightning_autoopt.strategies import LSGDStrategy
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--crash-rank", type=int, default=-1)
    parser.add_argument("--linger", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # the launching process is rank 0 and has no LOCAL_RANK yet
    record: list[str] = []

    def write() -> None:  # registered before fit: runs after the strategy's exit hook (atexit is LIFO)
        (out / f"popen{rank}.txt").write_text(" ".join([*record, f"exit={dist.is_initialized()}"]))

    atexit.register(write)
    strategy = LSGDStrategy(period=2, start_method="popen", timeout=timedelta(seconds=120))
    trainer = make_trainer(out, devices=2, strategy=strategy, max_steps=4, limit_val_batches=1)
    model = TinyClassifier(crash_at_step=2 if rank == args.crash_rank else -1)
    try:
        trainer.fit(model, TinyDataModule())
    except RuntimeError:
        record.append(f"failed_at={time.time()}")
        if rank == args.crash_rank:
            time.sleep(args.linger)
        raise
    record.append(f"fit_end={dist.is_initialized()}")
    trainer.validate(model, TinyDataModule())
    record.append(f"test_end={dist.is_initialized()}")


if __name__ == "__main__":
    main()
