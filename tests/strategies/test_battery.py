"""The same battery for every registered local-update strategy (the list lives in ``_battery.py``).

fit with 2 spawned processes, checkpoint at an epoch end, resume -> bitwise-equal replicas and counters, the
checkpoint's ``state_dict`` equals the strategy's evaluation policy, and bad arguments fail early.
"""

from __future__ import annotations

import os

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import StrategyRegistry

import lightning_autoopt  # noqa: F401
from lightning_autoopt.strategies import CHECKPOINT_KEY, registered_strategies
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer
from tests.strategies._battery import CASES, POLICY_CHECKS
from tests.strategies._local_update_helpers import FlatRecorder

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
