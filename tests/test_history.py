"""The callbacks' recorded histories: bounded, resumable, and what the plots read."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_autoopt._history import BoundedHistory
from lightning_autoopt.callbacks import DCO, LPFSGD, TaskShiftDetector
from tests.callbacks.test_task_shift import BATCHES_PER_TASK, ShiftingBlobs
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer


def same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN (histories hold NaN for 'not measured')."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------------------------------- BoundedHistory
def test_bounded_history_halves_its_resolution_and_covers_the_whole_run():
    history = BoundedHistory(("step", "value"), capacity=4)
    for i in range(100):
        history.append(step=i, value=i * 0.5)
    steps = history.as_dict()["step"]
    assert 4 <= len(steps) < 8
    every = history.every
    assert every in (16, 32) and steps == [float(s) for s in range(0, 100, every)]  # even spacing, first row kept
    assert history.as_dict()["value"] == [s * 0.5 for s in steps] and history.offered == 100
    assert steps[-1] > 100 - 2 * every  # the end of the run is covered


def test_bounded_history_resumes_exactly():
    full = BoundedHistory(("step",), capacity=3)
    for i in range(50):
        full.append(step=i)
    first = BoundedHistory(("step",), capacity=3)
    for i in range(23):
        first.append(step=i)
    resumed = BoundedHistory(("step",), capacity=3)
    resumed.load(first.as_dict())
    for i in range(23, 50):
        resumed.append(step=i)
    assert resumed.as_dict() == full.as_dict()


def test_bounded_history_checks_rows_and_fills_columns_missing_from_old_states():
    history = BoundedHistory(("step", "loss"))
    with pytest.raises(KeyError, match="exactly the columns"):
        history.append(step=1)
    history.load({"step": [1, 2]})  # a state written before "loss" was recorded
    assert history.columns["step"] == [1.0, 2.0] and all(math.isnan(v) for v in history.columns["loss"])
    with pytest.raises(ValueError, match="different lengths"):
        history.load({"step": [1, 2], "loss": [0.5]})
    history.load({})
    assert len(history) == 0
    history.append(step=3, loss=None)
    assert math.isnan(history.last("loss"))


# ---------------------------------------------------------------------------------------------- TaskShiftDetector
def test_task_shift_history_records_every_step_and_the_shift(tmp_path):
    det = TaskShiftDetector(verbose=False)
    make_trainer(tmp_path, callbacks=[det]).fit(TinyClassifier(lr=0.1, momentum=0.9), datamodule=ShiftingBlobs())
    hist = det.history
    assert hist["step"] == [float(s) for s in range(1, 2 * BATCHES_PER_TASK + 1)]
    assert len(hist["loss"]) == len(hist["loss_ema"]) == len(hist["threshold"]) == len(hist["step"])
    assert all(math.isnan(t) for t in hist["threshold"][:4])  # silent until min_history=5 losses are recorded
    assert math.isfinite(hist["threshold"][30])  # after min_history + lag (10) losses
    assert hist["shift_steps"] == det.shift_steps and len(det.shift_steps) == 1
    assert hist["shift_loss_ema"][0] > hist["shift_threshold"][0]  # what revealed the shift
    at_shift = hist["step"].index(float(det.shift_steps[0]))
    assert hist["loss_ema"][at_shift] == hist["shift_loss_ema"][0]
    assert det.state_dict()["history"]["shift_steps"] == det.shift_steps


def test_task_shift_history_survives_a_resume_and_old_states_load(tmp_path):
    def run(root, epochs, ckpt_path=None):
        det = TaskShiftDetector(verbose=False)
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}", save_top_k=-1)
        trainer = make_trainer(root, callbacks=[det, ckpt], max_epochs=epochs, enable_checkpointing=True)
        trainer.fit(TinyClassifier(lr=0.1, momentum=0.9), datamodule=ShiftingBlobs(), ckpt_path=ckpt_path)
        return det

    full = run(tmp_path / "a", 2)
    resumed = run(tmp_path / "b", 2, ckpt_path=str(tmp_path / "ck" / "epoch=0.ckpt"))
    assert len(full.shift_steps) >= 2 and same(resumed.history, full.history)
    old = {k: v for k, v in full.state_dict().items() if k != "history"}
    clone = TaskShiftDetector()
    clone.load_state_dict(old)
    assert clone.history["step"] == [] and clone.history["shift_steps"] == full.shift_steps


# ---------------------------------------------------------------------------------------------- LPFSGD, DCO
def test_lpf_sgd_history_has_the_schedule_the_measured_radius_and_the_loss(tmp_path):
    lpf = LPFSGD(std=0.01, schedule="cosine_increase", increase_factor=4.0)
    make_trainer(tmp_path, callbacks=[lpf]).fit(TinyClassifier(), datamodule=TinyDataModule())
    hist = lpf.history
    steps = 256 // 16
    assert hist["step"] == [float(s) for s in range(steps)]
    assert hist["std"] == [lpf.current_std(int(s)) for s in hist["step"]]
    assert hist["std"][-1] > 3 * hist["std"][0]
    # row_norm noise: per row std·‖W_i‖ per element, so ‖u‖/‖θ‖ ≈ std·sqrt(fan-in) on average
    assert all(0 < r for r in hist["radius"]) and hist["radius"][-1] > 2 * hist["radius"][0]
    assert all(math.isfinite(v) and v > 0 for v in hist["loss"])
    zero = LPFSGD(std=0.0)
    make_trainer(tmp_path, callbacks=[zero], max_steps=3).fit(TinyClassifier(), datamodule=TinyDataModule())
    assert zero.history["radius"] == [0.0, 0.0, 0.0]
    clone = LPFSGD(std=0.01, schedule="cosine_increase", increase_factor=4.0)
    clone.load_state_dict(lpf.state_dict())
    assert clone.history == hist


def test_lpf_sgd_radius_is_measured_not_assumed():
    """One draw on a known layer: the recorded radius is ‖u‖/‖θ‖ of the noise actually added."""
    model = TinyClassifier()
    lpf = LPFSGD(std=0.05)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])

    class _Trainer:
        global_step, global_rank = 0, 0

    lpf.on_train_batch_start(_Trainer(), model, None, 0)  # type: ignore[arg-type]
    after = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    lpf._restore()
    lpf.on_train_batch_end(_Trainer(), model, torch.tensor(1.5), None, 0)  # type: ignore[arg-type]
    expected = float((after - before).norm() / before.norm())
    assert lpf.history["radius"][0] == pytest.approx(expected, rel=1e-4)
    assert lpf.history["loss"] == [1.5]


def test_dco_history_penalty_starts_at_the_first_consolidation(tmp_path):
    dco = DCO(boundaries=[BATCHES_PER_TASK], ae_steps=30, num_directions=3)
    make_trainer(tmp_path, [dco]).fit(TinyClassifier(lr=0.1, momentum=0.9), datamodule=ShiftingBlobs())
    hist = dco.history
    assert hist["step"] == [float(s) for s in range(1, 2 * BATCHES_PER_TASK + 1)]
    first = hist["step"].index(float(BATCHES_PER_TASK + 1))
    assert all(math.isnan(v) for v in hist["penalty"][:first])
    assert hist["penalty"][first] == 0.0  # the first step after it starts at the centre theta*
    assert all(v > 0 for v in hist["penalty"][first + 1 :]) and hist["penalty"][-1] == pytest.approx(dco.last_penalty)
    assert all(v > 0 for v in hist["task_grad_norm"]) and all(v > 0 for v in hist["penalty_grad_norm"][first + 1 :])
    assert hist["consolidation_steps"] == [BATCHES_PER_TASK]
    clone = DCO(boundaries=[BATCHES_PER_TASK], ae_steps=30, num_directions=3)
    clone.load_state_dict(dco.state_dict())
    assert same(clone.history, hist)
