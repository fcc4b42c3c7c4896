"""Checkpoints that fail loudly: truncated, garbage and bit-flipped files, payload checksums, what resume drops."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_autoopt.checkpoint import (
    CHECKPOINT_KEY,
    CheckpointError,
    VerifiedCheckpointIO,
    payload_checksum,
    verify_checkpoint,
)
from lightning_autoopt.strategies import LSGDStrategy
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-device Lightning checkpoint of the tests' tiny classifier (epoch 0, step 4)."""
    root = tmp_path_factory.mktemp("plain")
    trainer = make_trainer(
        root,
        [ModelCheckpoint(dirpath=root, filename="plain")],
        enable_checkpointing=True,
        limit_train_batches=4,
        limit_val_batches=0,
    )
    trainer.fit(TinyClassifier(momentum=0.9), TinyDataModule())
    return root / "plain.ckpt"


def _with_local_update_payload(plain: Path, out: Path, world_size: int = 2) -> Path:
    """``plain`` plus a local-update payload for ``world_size`` ranks, as LSGDStrategy writes it (checksummed)."""
    data = torch.load(plain, weights_only=False)
    data["hyper_parameters"]["_class_path"] = "tests.helpers.TinyClassifier"  # as the CLI writes it
    state = LSGDStrategy(period=3).strategy_state_dict()
    ranks = []
    for r in range(world_size):
        model = {k: v + 0.01 * r for k, v in data["state_dict"].items()}
        ranks.append({"model": model, "strategy": dict(state, num_steps=4), "optimizers": data["optimizer_states"]})
    data[CHECKPOINT_KEY] = {
        "world_size": world_size,
        "strategy": "LSGDStrategy",
        "eval_policy": "average",
        "ranks": ranks,
        "checksum": payload_checksum(ranks),
    }
    torch.save(data, out)
    return out


@pytest.fixture
def lu_ckpt(plain_ckpt: Path, tmp_path: Path) -> Path:
    return _with_local_update_payload(plain_ckpt, tmp_path / "lu.ckpt")


def _truncated(src: Path, out: Path) -> Path:
    out.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return out


def _garbage(out: Path) -> Path:
    out.write_bytes(bytes(range(256)) * 40)
    return out


def _bit_flipped(src: Path, out: Path) -> Path:
    """Overwrite 4 bytes inside the first tensor record (the zip structure stays valid; only a CRC disagrees)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 16)
    header = record.header_offset
    name_len, extra_len = struct.unpack("<HH", data[header + 26 : header + 30])
    start = header + 30 + name_len + extra_len
    data[start + 4 : start + 8] = b"\xff\xff\xff\xff"  # a NaN in float32
    out.write_bytes(bytes(data))
    return out


# ---------------------------------------------------------------------------------------------- verify_checkpoint
def test_intact_checkpoint_passes_with_its_step(plain_ckpt: Path):
    info = verify_checkpoint(plain_ckpt)
    assert info.crc_checked and info.loaded and info.global_step == 4 and info.epoch == 0
    assert info.local_update_world_size is None and not info.payload_checked


def test_truncated_file_is_named_and_called_truncated(plain_ckpt: Path, tmp_path: Path):
    bad = _truncated(plain_ckpt, tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError) as info:
        verify_checkpoint(bad)
    msg = str(info.value)
    assert str(bad) in msg and "is truncated" in msg and "Resume from another checkpoint" in msg
    assert info.value.path == str(bad)


def test_garbage_file_is_not_a_checkpoint_and_no_weights_only_advice(tmp_path: Path):
    bad = _garbage(tmp_path / "garbage.ckpt")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as info:
        verify_checkpoint(bad)
    assert "weights_only" not in str(info.value)


def test_bit_flip_inside_a_tensor_record_fails_its_crc(plain_ckpt: Path, tmp_path: Path):
    bad = _bit_flipped(plain_ckpt, tmp_path / "flipped.ckpt")
    loaded = torch.load(bad, weights_only=False)  # torch itself does not notice
    assert any(torch.isnan(t).any() for t in loaded["state_dict"].values())
    with pytest.raises(CheckpointError, match=r"fails its CRC-32 check"):
        verify_checkpoint(bad)


def test_empty_and_missing_files(tmp_path: Path):
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(CheckpointError, match="is empty"):
        verify_checkpoint(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        verify_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="not a file"):
        verify_checkpoint(tmp_path)


def test_payload_checksum_detects_an_edited_replica(lu_ckpt: Path, tmp_path: Path):
    info = verify_checkpoint(lu_ckpt)
    assert info.payload_checked and info.local_update_world_size == 2 and info.local_update_strategy == "LSGDStrategy"
    data = torch.load(lu_ckpt, weights_only=False)
    data[CHECKPOINT_KEY]["ranks"][1]["model"]["net.0.weight"][0, 0] += 1.0  # a valid zip, CRCs recomputed on save
    edited = tmp_path / "edited.ckpt"
    torch.save(data, edited)
    with pytest.raises(CheckpointError, match="checksum .* does not match"):
        verify_checkpoint(edited)


def test_payload_checksum_is_order_independent_and_value_sensitive():
    a = {"x": torch.arange(3.0), "y": [1, 2.5, None, "s"]}
    b = {"y": [1, 2.5, None, "s"], "x": torch.arange(3.0)}
    assert payload_checksum(a) == payload_checksum(b)
    assert payload_checksum(a) != payload_checksum({**a, "x": torch.tensor([0.0, 1.0, 2.5])})
    assert payload_checksum(a) != payload_checksum({**a, "x": torch.arange(3.0).double()})  # dtype counts
    assert payload_checksum({"t": torch.tensor(1.0)}) != payload_checksum({"t": torch.tensor([1.0])})  # shape counts


# ---------------------------------------------------------------------------------------------- the IO plugin
def test_verified_io_stops_a_bit_flipped_file_before_torch_loads_it(plain_ckpt: Path, tmp_path: Path):
    bad = _bit_flipped(plain_ckpt, tmp_path / "flipped.ckpt")
    with pytest.raises(CheckpointError, match="CRC-32"):
        VerifiedCheckpointIO(local_update=True).load_checkpoint(bad)


def test_plain_strategy_resume_of_a_local_update_checkpoint_warns_once_with_what_is_dropped(lu_ckpt: Path, tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=0)
    trainer.strategy.checkpoint_io = VerifiedCheckpointIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyClassifier(momentum=0.9), TinyDataModule(), ckpt_path=str(lu_ckpt))
    ours = [str(w.message) for w in caught if "per-rank replicas" in str(w.message)]
    assert len(ours) == 1, ours
    assert str(lu_ckpt) in ours[0] and "LSGDStrategy with 2 per-rank replicas" in ours[0]
    assert "'average' weights" in ours[0] and "Dropped" in ours[0]
    assert trainer.global_step == 8  # resumed from step 4 with the checkpoint's state_dict


# ---------------------------------------------------------------------------------------------- local-update strategies
def test_local_update_launcher_reports_a_truncated_file_before_any_worker_starts(plain_ckpt: Path, tmp_path: Path):
    bad = _truncated(plain_ckpt, tmp_path / "cut.ckpt")
    trainer = make_trainer(tmp_path, devices=2, strategy=LSGDStrategy(period=3, start_method="spawn"))
    with pytest.raises(CheckpointError, match="is truncated"):
        trainer.fit(TinyClassifier(), TinyDataModule(), ckpt_path=str(bad))
    assert trainer.global_step == 0


def test_local_update_strategies_default_to_the_verified_io():
    strategy = LSGDStrategy(period=3)
    assert isinstance(strategy.checkpoint_io, VerifiedCheckpointIO) and strategy.checkpoint_io.local_update
    custom = VerifiedCheckpointIO()
    strategy.checkpoint_io = custom
    assert strategy.checkpoint_io is custom and custom.local_update  # no "replicas dropped" warning from our own IO


def _detached_lsgd(world_size: int) -> LSGDStrategy:
    from lightning.fabric.plugins.environments import LightningEnvironment

    strategy = LSGDStrategy(period=3)
    strategy.parallel_devices = [torch.device("cpu")] * world_size
    env = LightningEnvironment()
    env.set_world_size(world_size)
    env.set_global_rank(0)
    strategy.cluster_environment = env
    return strategy


def test_world_size_change_warns_with_what_is_reused_and_dropped(plain_ckpt: Path, tmp_path: Path):
    ckpt = torch.load(_with_local_update_payload(plain_ckpt, tmp_path / "lu3.ckpt", world_size=3), weights_only=False)
    strategy = _detached_lsgd(2)
    with pytest.warns(UserWarning) as record:
        assert strategy._own_entry(ckpt) is None  # nobody reloads a replica: the state_dict is used
    messages = [str(w.message) for w in record if "per-rank replicas" in str(w.message)]
    assert len(messages) == 1
    assert "holds 3 per-rank replicas but this run has world size 2" in messages[0]
    assert "'average' weights" in messages[0] and "rank 0's optimizer state" in messages[0] and "Dropped" in messages[0]
    assert strategy.num_steps == 4  # rank 0's strategy state was re-used


def test_same_world_size_returns_this_ranks_entry_and_checks_the_payload(lu_ckpt: Path):
    ckpt = torch.load(lu_ckpt, weights_only=False)
    strategy = _detached_lsgd(2)
    assert strategy._own_entry(ckpt) is ckpt[CHECKPOINT_KEY]["ranks"][0]
    ckpt[CHECKPOINT_KEY]["ranks"][1]["strategy"]["num_steps"] = 5  # edited after the checksum was taken
    with pytest.raises(CheckpointError, match="does not match"):
        strategy._own_entry(ckpt)


# ---------------------------------------------------------------------------------------------- the CLI
TINY_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 2
  limit_train_batches: 4
  limit_val_batches: 0
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: tests.helpers.TinyClassifier
data:
  class_path: tests.helpers.TinyDataModule
"""


def _cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str):
    from lightning_autoopt.cli import AutoOptCLI

    monkeypatch.setattr(sys, "argv", ["autoopt"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    return AutoOptCLI(args=["fit", "--config", str(tmp_path / "tiny.yaml"), *extra])


@pytest.mark.parametrize(("make", "words"), [("truncated", "is truncated"), ("garbage", "not a PyTorch checkpoint")])
def test_cli_bad_ckpt_path_is_one_line_naming_the_file(make, words, plain_ckpt, tmp_path, monkeypatch, capsys):
    bad = _truncated(plain_ckpt, tmp_path / "bad.ckpt") if make == "truncated" else _garbage(tmp_path / "bad.ckpt")
    with pytest.raises(SystemExit) as info:
        _cli(tmp_path, monkeypatch, f"--ckpt_path={bad}")
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"autoopt: error: Checkpoint {bad} ") and words in err[0], err


def test_cli_auto_resume_reports_a_damaged_last_checkpoint(plain_ckpt, tmp_path, monkeypatch, capsys):
    ckpt_dir = tmp_path / "lightning_logs" / "tiny" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    bad = _bit_flipped(plain_ckpt, ckpt_dir / "last.ckpt")
    with pytest.raises(SystemExit) as info:
        _cli(tmp_path, monkeypatch)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "CRC-32" in err[0], err


def test_cli_plain_strategy_resume_of_local_update_checkpoint_warns_once(lu_ckpt, tmp_path, monkeypatch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = _cli(tmp_path, monkeypatch, f"--ckpt_path={lu_ckpt}")
    ours = [str(w.message) for w in caught if "per-rank replicas" in str(w.message)]
    assert len(ours) == 1 and "SingleDeviceStrategy restores only its 'state_dict'" in ours[0], ours
    assert cli.trainer.global_step == 8


def test_cli_subprocess_truncated_checkpoint_prints_no_traceback(plain_ckpt, tmp_path):
    bad = _truncated(plain_ckpt, tmp_path / "bad.ckpt")
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "lightning_autoopt", "fit", "--config", "tiny.yaml", f"--ckpt_path={bad}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Errno" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"autoopt: error: Checkpoint {bad} " + errors[0].split(f"{bad} ", 1)[1]], proc.stderr
    assert "is truncated" in errors[0]
