"""Overlapped rounds (``overlap=True``: LocalSGD and DiLoCo): closed form, faults, resume while a round is in flight."""

from __future__ import annotations

import math
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_autoopt  # noqa: F401
from lightning_autoopt.strategies import DiLoCoStrategy, LocalSGDStrategy
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer
from tests.strategies._gloo_pool import run_on_pool, shared_pool
from tests.strategies._local_update_helpers import FlatRecorder, NaNFromStep, detached

WORLD = 4


def test_overlap_arguments_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        LocalSGDStrategy(overlap="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local_period"):
        LocalSGDStrategy(overlap=True, local_period=4)
    with pytest.raises(ValueError, match="overlap"):
        DiLoCoStrategy(overlap=1)  # type: ignore[arg-type]


def _local_step(s, delta: float) -> None:
    with torch.no_grad():
        for p in s.params:
            p.add_(delta)


def _localsgd_overlap(nan_rank):
    rank = dist.get_rank()
    s = detached(LocalSGDStrategy, period=1, overlap=True)
    try:
        x1 = s.flat_params()
        if rank == nan_rank:
            _local_step(s, float("nan"))
            s.replica_finite = False
        s.on_round(1)  # launches the average of the x1 (nothing in flight yet): the replica is untouched
        untouched = s.flat_params()
        _local_step(s, 1.0 + rank)  # a local step while the average is in flight
        s.replica_finite = rank != nan_rank
        s.on_round(2)  # applies x <- x + (mean_1 - x1), launches the next
        after = s.flat_params()
        state = s.strategy_state_dict()  # waits for the sum in flight
        s.finish_rounds()
        final = s.flat_params()
        restored = detached(LocalSGDStrategy, period=1, overlap=True)
        restored.load_strategy_state_dict(state)
        restored.write_params(after)
        restored.finish_rounds()
        from_state = restored.flat_params()
        restored._destroy_overlap_group()
        return rank, {"x1": x1, "untouched": untouched, "after": after, "final": final, "from_state": from_state}
    finally:
        s._destroy_overlap_group()


@pytest.fixture(scope="module")
def pool():
    return shared_pool(WORLD)


def test_localsgd_overlap_applies_the_last_rounds_average_on_top_of_the_new_steps(pool):
    res = run_on_pool(pool, WORLD, _localsgd_overlap, None)
    mean1 = sum(r["x1"] for r in res) / WORLD
    for rank, r in enumerate(res):
        assert torch.equal(r["untouched"], r["x1"])
        torch.testing.assert_close(r["after"], mean1 + (1.0 + rank))  # mean_1 plus this rank's own later step
    mean2 = sum(r["after"] for r in res) / WORLD
    for r in res:
        torch.testing.assert_close(r["final"], mean2)  # no step after the last launch: every replica is the mean
        assert torch.equal(r["from_state"], r["final"])  # the checkpointed sum gives the same numbers


def test_localsgd_overlap_never_lets_a_nan_snapshot_in_and_heals_it(pool):
    res = run_on_pool(pool, WORLD, _localsgd_overlap, 1)
    mean1 = sum(res[r]["x1"] for r in (0, 2, 3)) / 3  # rank 1's NaN snapshot was masked out
    for rank in (0, 2, 3):
        torch.testing.assert_close(res[rank]["after"], mean1 + (1.0 + rank))
    torch.testing.assert_close(res[1]["after"], mean1)  # healed to the mean (its later step is dropped)
    for r in res:
        assert bool(torch.isfinite(r["final"]).all())


def _fit(tmp_path, cls, kwargs, out, ckpt_path=None, model=None, max_epochs=2):
    os.makedirs(out, exist_ok=True)
    trainer = make_trainer(
        tmp_path,
        [FlatRecorder(str(out)), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)],
        devices=2,
        strategy=cls(start_method="spawn", overlap=True, timeout=timedelta(seconds=120), **kwargs),
        max_epochs=max_epochs,
        limit_train_batches=4,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
    )
    trainer.fit(model or TinyClassifier(momentum=0.9), TinyDataModule(), ckpt_path=ckpt_path)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "kwargs"), [(LocalSGDStrategy, {"period": 3}), (DiLoCoStrategy, {"period": 3})])
def test_resume_while_a_round_is_in_flight_is_exact(tmp_path, cls, kwargs):
    full = _fit(tmp_path, cls, kwargs, tmp_path / "full")
    assert full[0]["state"]["num_rounds"] == 2  # launched at steps 3 and 6 (the last one is applied at the end)
    ckpt = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"  # written while the round launched at step 3 was in flight
    resumed = _fit(tmp_path, cls, kwargs, tmp_path / "resumed", ckpt_path=str(ckpt))
    for r in range(2):
        assert torch.equal(resumed[r]["final"], full[r]["final"]), f"rank {r} differs after resume"
        for key in ("num_steps", "num_rounds", "bytes_sent_total"):
            assert resumed[r]["state"][key] == full[r]["state"][key], key


@pytest.mark.slow
def test_overlap_isolates_and_heals_a_nan_rank(tmp_path):
    out = tmp_path / "out"
    ranks = _fit(tmp_path, LocalSGDStrategy, {"period": 4}, out, model=NaNFromStep(nan_rank=1, from_step=6))
    assert all(bool(torch.isfinite(flat).all()) for _, flat in ranks[0]["steps"]), "the healthy rank was poisoned"
    assert bool(torch.isfinite(ranks[1]["final"]).all()) and ranks[1]["state"]["healed"] >= 1
    assert math.isfinite(ranks[0]["metrics"]["val_loss"])
