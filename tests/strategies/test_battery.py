"""The same battery for every registered local-update strategy (the list lives in ``_battery.py``).

fit with 2 spawned processes, checkpoint at an epoch end, resume -> bitwise-equal replicas and counters, the
checkpoint's ``state_dict`` equals the strategy's evaluation policy, and bad arguments fail early.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import StrategyRegistry

import lightning_autoopt  # noqa: F401
from lightning_autoopt.strategies import CHECKPOINT_KEY, registered_strategies
from tests.helpers import TinyClassifier, TinyDataModule, flat_params, make_trainer
from tests.strategies._battery import CASES, POLICY_CHECKS
from tests.strategies._local_update_helpers import FlatRecorder, NaNFromStep

NAMES = sorted(CASES)


def test_every_registered_strategy_is_in_the_battery():
    # Only this package's strategies: user subclasses registered by other tests (the guide's example) are not ours.
    ours = {n for n, cls in registered_strategies().items() if cls.__module__.startswith("lightning_autoopt.")}
    missing = ours - set(CASES)
    assert not missing, f"add {sorted(missing)} to tests/strategies/_battery.py::CASES"


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_and_one_device(name):
    cls = registered_strategies()[name]
    with pytest.raises(ValueError, match="period"):
        cls(period=0)
    with pytest.raises(ValueError, match="eval_policy"):
        cls(eval_policy="nonsense")
    with pytest.raises(ValueError, match="devices>=2"):
        Trainer(accelerator="cpu", devices=1, strategy=f"{name}_spawn", logger=False)
    assert isinstance(StrategyRegistry.get(name), cls)


def _fit(tmp_path, name, out, ckpt_path=None):
    os.makedirs(out, exist_ok=True)
    cls = registered_strategies()[name]
    trainer = make_trainer(
        tmp_path,
        [FlatRecorder(str(out)), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)],
        devices=2,
        strategy=cls(start_method="spawn", **CASES[name]),
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        enable_checkpointing=True,
    )
    trainer.fit(TinyClassifier(momentum=0.9), TinyDataModule(), ckpt_path=ckpt_path)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fit_checkpoint_policy_and_resume(tmp_path, name):
    full = _fit(tmp_path, name, tmp_path / "full")
    assert full[0]["state"]["num_steps"] == 8 and full[0]["state"]["num_rounds"] == 2  # rounds at steps 3 and 6
    assert full[0]["state"]["bytes_sent_total"] > 0
    assert not torch.equal(full[0]["final"], full[1]["final"])  # two steps after the last round: diverged

    ckpt = tmp_path / "ckpt" / "epoch=0-step=4.ckpt"
    data = torch.load(ckpt, weights_only=False)
    stored = data[CHECKPOINT_KEY]
    assert stored["world_size"] == 2 and len(stored["ranks"]) == 2
    assert not torch.equal(stored["ranks"][0]["model"]["net.0.weight"], stored["ranks"][1]["model"]["net.0.weight"])
    assert len(stored["ranks"][1]["optimizers"]) == 1  # each rank's own momentum buffers
    expected = POLICY_CHECKS[name](stored)
    for key, value in expected.items():
        torch.testing.assert_close(data["state_dict"][key], value, rtol=1e-6, atol=1e-7)

    resumed = _fit(tmp_path, name, tmp_path / "resumed", ckpt_path=str(ckpt))
    for r in range(2):
        assert torch.equal(resumed[r]["final"], full[r]["final"]), f"rank {r} differs after resume"
        for key in ("num_steps", "num_rounds", "bytes_sent_total", "leader"):
            assert resumed[r]["state"][key] == full[r]["state"][key], key


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_nan_on_one_rank_is_isolated_and_healed(tmp_path, name):
    """Issue 9's probe at default arguments: rank 1's loss is NaN from step 4 on, for good."""
    out = tmp_path / "out"
    out.mkdir()
    cls = registered_strategies()[name]
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=10)
    trainer = make_trainer(
        tmp_path,
        [FlatRecorder(str(out)), checkpoints],
        devices=2,
        strategy=cls(start_method="spawn", timeout=timedelta(seconds=120)),  # default method arguments
        max_steps=32,  # rounds at 16 and 32 for the period-16 defaults, every step for the gossip ones
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
    )
    model = NaNFromStep(nan_rank=1, from_step=4, momentum=0.9)
    trainer.fit(model, TinyDataModule())
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(_finite(flat) for _, flat in ranks[0]["steps"]), "the healthy rank was poisoned"
    if trainer.strategy.period > 1:  # with a round after every step (gossip defaults) it is healed within the step
        assert any(not _finite(flat) for _, flat in ranks[1]["steps"]), "the probe did not make rank 1 NaN"
    assert _finite(ranks[1]["final"]), "the NaN rank was not healed"
    assert ranks[1]["state"]["healed"] >= 1 and ranks[0]["state"]["healed"] == 0
    assert ranks[1]["state"]["nonfinite_events"] > 0 and ranks[0]["state"]["nonfinite_events"] == 0
    logged = ranks[0]["metrics"]  # rank 0's own logs hold the world totals
    assert logged["dist/nonfinite_events"] > 0 and logged["dist/healed"] >= 1
    assert math.isfinite(logged["val_loss"])
    assert _finite(flat_params(model))  # the model fit hands back
    files = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert len(files) == 3  # steps 10, 20, 30: all between rounds for the period-16 defaults
    for path in files:
        data = torch.load(path, weights_only=False)
        assert all(_finite(v) for v in data["state_dict"].values()), path.name
        for r, entry in enumerate(data[CHECKPOINT_KEY]["ranks"]):
            assert all(_finite(v) for v in entry["model"].values() if v.is_floating_point()), (path.name, r)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_rank_nan_stops_with_a_clear_error(tmp_path, name):
    cls = registered_strategies()[name]
    trainer = make_trainer(
        tmp_path,
        devices=2,
        strategy=cls(start_method="spawn", timeout=timedelta(seconds=120)),
        max_steps=32,
        limit_val_batches=0,
    )
    with pytest.raises(Exception, match="every replica is non-finite"):
        trainer.fit(NaNFromStep(nan_rank=-1, from_step=4), TinyDataModule())
