"""Module-level (picklable) pieces for the local-update strategy tests: recorders, a NaN model, detached strategies."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import LightningEnvironment
from torch import nn

from lightning_autoopt.strategies import LSGDStrategy
from tests.helpers import TinyClassifier, flat_params


class FlatRecorder(pl.Callback):
    """Saves ``(global_step, flat params)`` after every training batch and the strategy counters at the end."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.steps: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.steps.append((trainer.global_step, flat_params(pl_module)))

    def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        s = trainer.strategy
        state = s.strategy_state_dict() if hasattr(s, "strategy_state_dict") else {}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        torch.save(
            {"steps": self.steps, "final": flat_params(pl_module), "state": state, "metrics": metrics},
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )


class RecordingLSGD(LSGDStrategy):
    """LSGD that records, at every round, the metric, the pre-round and post-round parameters and the leader."""

    def __init__(self, record_dir: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_dir = record_dir
        self.records: list[dict[str, Any]] = []

    def on_round(self, step: int) -> None:
        rec = {"step": step, "metric": self.leader_metric_value(), "pre": self.flat_params()}
        super().on_round(step)
        rec.update(post=self.flat_params(), leader=self.leader, local_leader=self.local_leader)
        self.records.append(rec)

    def teardown(self) -> None:
        if self.record_dir and self.records:
            torch.save(self.records, os.path.join(self.record_dir, f"rounds{self.global_rank}.pt"))
            self.records = []
        super().teardown()


class NaNOnRank(TinyClassifier):
    """TinyClassifier whose loss is NaN on one rank at one optimizer step (the replica then stays NaN)."""

    def __init__(self, nan_rank: int = 1, nan_step: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_rank, self.nan_step = nan_rank, nan_step

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        loss = super().training_step(batch, batch_idx)
        if self.global_rank == self.nan_rank and self.global_step == self.nan_step:
            loss = loss * float("nan")
        return loss


class NaNFromStep(TinyClassifier):
    """TinyClassifier whose loss is NaN from optimizer step ``from_step`` on (``global_step >= from_step``) and stays
    NaN, on rank ``nan_rank`` (``-1``: every rank): the probe of issue 9, a worker that keeps diverging."""

    def __init__(self, nan_rank: int = 1, from_step: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_rank, self.from_step = nan_rank, from_step

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        loss = super().training_step(batch, batch_idx)
        if self.nan_rank in (-1, self.global_rank) and self.global_step >= self.from_step:
            loss = loss * float("nan")
        return loss


class Linear(pl.LightningModule):
    """A 3->2 linear layer plus a BatchNorm buffer, for detached strategies on the gloo pool."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2, affine=False)


def detached(cls: type, values: torch.Tensor | None = None, **kwargs: Any) -> Any:
    """A strategy wired to a tiny module on the current gloo rank without a Trainer (round maths only)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    strategy = cls(**kwargs)
    strategy.parallel_devices = [torch.device("cpu")] * world
    env = LightningEnvironment()
    env.set_world_size(world)
    env.set_global_rank(rank)
    strategy.cluster_environment = env
    module = Linear()
    with torch.no_grad():
        flat = values if values is not None else torch.arange(8, dtype=torch.float32) + 10.0 * rank
        n = 0
        for p in module.parameters():
            p.copy_(flat[n : n + p.numel()].view_as(p))
            n += p.numel()
    strategy._lightning_module = module
    strategy.model = module
    strategy.setup_round_state()
    strategy._groups_ready = True
    return strategy


class ManualTiny(TinyClassifier):
    """TinyClassifier with manual optimization; logs ``train_loss`` before ``opt.step()`` (the LSGD fallback)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y) * (1.0 + self.global_rank)  # rank 0 always leads
        self.log("train_loss", loss)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


class GroupProbe(pl.Callback):
    """Records whether the default group and the strategy's subgroup exist at the end of training, and whether the
    default group still exists in the callbacks' ``teardown`` hook (Lightning calls it after the strategy's)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.during: tuple[bool, bool] = (False, False)

    def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        self.during = (dist.is_initialized(), getattr(trainer.strategy, "group", None) is not None)

    def teardown(self, trainer, pl_module, stage):  # type: ignore[no-untyped-def]
        seen = {"during_fit": self.during, "after_teardown": dist.is_initialized()}
        torch.save(seen, os.path.join(self.out_dir, f"groups{trainer.global_rank}.pt"))
