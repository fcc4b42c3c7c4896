"""Train TinyClassifier with a local-update strategy on 2 CPU processes; used by tests/strategies/test_launchers.py.

Launch either directly (Lightning's default ``popen`` launcher re-runs this script for rank 1) or under
``torchrun --nproc-per-node=2 --max-restarts=1`` (TorchElastic environment detected by Lightning). Every rank writes
``rank{r}.pt`` with its final flat parameters and strategy state. With ``--crash-step K`` rank 1 dies with
``os._exit(1)`` before optimizer step K+1 on the first attempt only (``TORCHELASTIC_RESTART_COUNT == 0``); a restart
resumes from ``ckpt/last.ckpt`` (saved at every epoch end). Run it with the repository root on ``PYTHONPATH`` (the
test does), so ``tests.helpers`` imports.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_autoopt.strategies import registered_strategies
from tests.helpers import TinyClassifier, TinyDataModule, flat_params, make_trainer

STRATEGY_ARGS = {"lsgd": {"period": 3, "pull_strength": 0.5}, "easgd": {"period": 3}, "localsgd": {"period": 3}}


class Crash(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if trainer.global_step == self.step and trainer.global_rank == 1 and first_attempt:
            os._exit(1)


class Dump(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        s = trainer.strategy
        assert type(s).__name__ != "DDPStrategy"
        assert trainer.model is pl_module, "model must not be wrapped in DDP"
        torch.save(
            {"final": flat_params(pl_module), "state": s.strategy_state_dict(), "global_step": trainer.global_step},
            self.out / f"rank{trainer.global_rank}.pt",
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="lsgd")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--crash-step", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "ckpt" / "last.ckpt"
    ckpt_path = str(last) if last.exists() else None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "none")
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    (out / f"attempt{attempt}_rank{rank}_resume{ckpt_path is not None}").touch()

    strategy = registered_strategies()[args.strategy](start_method="popen", **STRATEGY_ARGS[args.strategy])
    callbacks: list[pl.Callback] = [Dump(out), ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_epochs=1)]
    if args.crash_step >= 0:
        callbacks.append(Crash(args.crash_step))
    trainer = make_trainer(
        out,
        callbacks,
        devices=2,
        num_nodes=1,
        strategy=strategy,
        max_epochs=args.epochs,
        limit_train_batches=4,
        limit_val_batches=0,
        enable_checkpointing=True,
    )
    trainer.fit(TinyClassifier(momentum=0.9), TinyDataModule(), ckpt_path=ckpt_path)


if __name__ == "__main__":
    main()
