"""ResumableCSVLogger: one folder per run, rows appended across launches, rows a resumed fit replays dropped once."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_autoopt.checkpoint import find_last_checkpoint
from lightning_autoopt.loggers import REPLAYED_FILE, ResumableCSVLogger, read_csv_rows
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer


class _Crash(Exception):
    pass


class _CrashAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step == self.step:
            raise _Crash


def _trainer(root: Path, *callbacks: pl.Callback, epochs: int = 3) -> pl.Trainer:
    return make_trainer(
        root,
        [ModelCheckpoint(save_last=True), *callbacks],
        logger=ResumableCSVLogger(root, name="run"),
        enable_checkpointing=True,
        max_epochs=epochs,
        limit_train_batches=4,
        limit_val_batches=2,
        log_every_n_steps=1,
    )


def _cells(path: Path) -> list[tuple[int, str, str]]:
    _, rows, _ = read_csv_rows(path)
    return sorted((int(r["step"]), k, v) for r in rows for k, v in r.items() if k not in ("step", "epoch") and v)


def _fit(trainer: pl.Trainer, ckpt_path: str | None = None) -> None:
    pl.seed_everything(0, verbose=False)
    trainer.fit(TinyClassifier(momentum=0.9), TinyDataModule(), ckpt_path=ckpt_path)


def test_fixed_folder_no_version_and_checkpoints_inside(tmp_path: Path):
    trainer = _trainer(tmp_path, epochs=1)
    _fit(trainer)
    logger = trainer.logger
    assert isinstance(logger, ResumableCSVLogger)
    assert Path(logger.log_dir) == tmp_path / "run"
    assert (tmp_path / "run" / "metrics.csv").is_file()
    assert find_last_checkpoint(trainer) == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert not any(p.name.startswith("version_") for p in (tmp_path / "run").iterdir())


def test_crash_and_resume_gives_the_uninterrupted_record_each_step_once(tmp_path: Path):
    _fit(_trainer(tmp_path / "ref"))
    reference = _cells(tmp_path / "ref" / "run" / "metrics.csv")

    crashed = _trainer(tmp_path / "got", _CrashAt(6))
    with pytest.raises(_Crash):
        _fit(crashed)
    partial = _cells(tmp_path / "got" / "run" / "metrics.csv")
    assert max(s for s, _, _ in partial) >= 5  # rows after the step-4 checkpoint were written before the crash

    resumed = _trainer(tmp_path / "got")
    last = find_last_checkpoint(resumed)
    assert last is not None
    _fit(resumed, ckpt_path=last)
    got = _cells(tmp_path / "got" / "run" / "metrics.csv")
    assert not [k for k, n in Counter((s, m) for s, m, _ in got).items() if n > 1]
    assert got == reference
    replayed = _cells(tmp_path / "got" / "run" / REPLAYED_FILE)
    assert replayed and min(s for s, _, _ in replayed) == 4  # the first row the resumed fit logged again


def test_validate_after_fit_appends_and_never_drops_training_rows(tmp_path: Path):
    trainer = _trainer(tmp_path, epochs=1)
    _fit(trainer)
    before = _cells(tmp_path / "run" / "metrics.csv")
    again = _trainer(tmp_path, epochs=1)  # a new process / logger on the same folder, e.g. `autoopt validate`
    again.validate(TinyClassifier(), TinyDataModule())
    after = _cells(tmp_path / "run" / "metrics.csv")
    assert set(before) <= set(after) and len(after) > len(before)
    assert not (tmp_path / "run" / REPLAYED_FILE).exists()


def test_new_fit_without_checkpoint_replaces_the_record_and_keeps_the_old_rows_aside(tmp_path: Path):
    _fit(_trainer(tmp_path, epochs=1))
    first = _cells(tmp_path / "run" / "metrics.csv")
    _fit(_trainer(tmp_path, epochs=1))  # from step 0 again: every earlier row is replayed
    assert _cells(tmp_path / "run" / "metrics.csv") == first
    assert _cells(tmp_path / "run" / REPLAYED_FILE) == first


def test_torn_last_line_is_skipped_not_read_as_a_number(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,train_loss\n0,0,1.5\n0,1,1.25\n0,2,1.2")  # cut inside the last row
    header, rows, torn = read_csv_rows(run / "metrics.csv")
    assert header == ["epoch", "step", "train_loss"] and [r["step"] for r in rows] == ["0", "1"] and torn == 1
    logger = ResumableCSVLogger(tmp_path, name="run")
    logger.log_metrics({"train_loss": 1.0}, step=3)
    logger.save()
    with (run / "metrics.csv").open(newline="") as fh:
        lines = list(csv.reader(fh))
    assert lines[1:] == [["0", "0", "1.5"], ["0", "1", "1.25"], ["", "3", "1.0"]], lines


def test_torn_header_is_dropped(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,st")
    assert read_csv_rows(run / "metrics.csv") == ([], [], 1)


def test_name_must_not_be_empty(tmp_path: Path):
    with pytest.raises(ValueError, match="`name`"):
        ResumableCSVLogger(tmp_path, name="")


def test_explicit_version_keeps_a_subfolder(tmp_path: Path):
    assert Path(ResumableCSVLogger(tmp_path, name="run", version="a").log_dir) == tmp_path / "run" / "a"
    assert Path(ResumableCSVLogger(tmp_path, name="run", version=3).log_dir) == tmp_path / "run" / "version_3"
