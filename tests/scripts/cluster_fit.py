"""Fit TinyClassifier with a local-update strategy under torchrun on an emulated cluster; used by tests/test_cluster.py.

Run by ``lightning_autoopt.cluster.EmulatedCluster.torchrun`` (any number of nodes x processes). Rank 0 reads the
kernel's byte counters of the shaped links (``read_link_bytes``) right after the initial broadcast and right after
the last optimizer step, each between barriers, so the window holds the strategy's rounds (plus two barriers) and
nothing else; it writes them to ``window.json``. Every rank writes ``rank{r}.pt`` with its strategy state; the
checkpoint written at the end of the epoch holds every rank's counters too.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from lightning_autoopt.cluster import read_link_bytes, read_loopback_bytes  # noqa: E402
from lightning_autoopt.strategies import registered_strategies  # noqa: E402
from tests.helpers import TinyClassifier, TinyDataModule  # noqa: E402


class KernelWindow(pl.Callback):
    """Rank 0 snapshots the kernel byte counters after the start-up broadcast and after the last step."""

    def __init__(self, out: Path, steps: int) -> None:
        self.out, self.steps = out, steps
        self.before: dict | None = None

    def _snapshot(self, trainer: pl.Trainer) -> dict | None:
        dist.barrier()
        snap = None
        if trainer.global_rank == 0:
            snap = {k: asdict(v) for k, v in read_link_bytes().items()}
            snap["loopback"] = read_loopback_bytes()
        dist.barrier()
        return snap

    def on_train_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self.before = self._snapshot(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step != self.steps:
            return
        after = self._snapshot(trainer)
        state = trainer.strategy.strategy_state_dict()
        torch.save({"state": state, "world_size": trainer.world_size}, self.out / f"rank{trainer.global_rank}.pt")
        if trainer.global_rank == 0:
            assert self.before is not None and after is not None
            (self.out / "window.json").write_text(json.dumps({"before": self.before, "after": after}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="localsgd")
    parser.add_argument("--out", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--period", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    strategy = registered_strategies()[args.strategy](start_method="popen", period=args.period, consensus_every=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        num_nodes=args.nodes,
        strategy=strategy,
        max_epochs=1,
        limit_train_batches=args.steps,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=out,
        callbacks=[KernelWindow(out, args.steps), ModelCheckpoint(dirpath=out / "ckpt", save_last=True)],
    )
    world = args.nodes * args.devices  # one epoch of exactly `steps` batches per rank
    trainer.fit(TinyClassifier(hidden=args.hidden), TinyDataModule(n=16 * world * args.steps))


if __name__ == "__main__":
    main()
