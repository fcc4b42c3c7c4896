import json
import os

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_autoopt.callbacks import TaskShiftAwareModule, TaskShiftDetector, TaskShiftListener
from tests.helpers import TinyClassifier, make_blobs, make_trainer

BATCHES_PER_TASK = 60
BATCH = 16


class ShiftingBlobs(pl.LightningDataModule):
    """Blobs whose labels are rotated after BATCHES_PER_TASK batches: the loss jumps at that step."""

    def __init__(self, per_rank_batches: int = BATCHES_PER_TASK, ranks: int = 1) -> None:
        super().__init__()
        self.n = per_rank_batches * BATCH * ranks

    def train_dataloader(self):
        x, y = make_blobs(self.n, classes=4, seed=0).tensors
        x = torch.cat([x, x])
        y = torch.cat([y, (y + 1) % 4])
        dataset = TensorDataset(x, y)
        if self.trainer is not None and self.trainer.world_size > 1:
            # Ordered shards (Lightning's injected sampler would shuffle and mix the two tasks).
            sampler = DistributedSampler(dataset, self.trainer.world_size, self.trainer.global_rank, shuffle=False)
            return DataLoader(dataset, batch_size=BATCH, sampler=sampler)
        return DataLoader(dataset, batch_size=BATCH, shuffle=False)


class ShiftRecorder(TinyClassifier):
    """Records every shift event; writes them per rank to a file (ddp_spawn returns rank 0 only)."""

    def __init__(self, out_dir: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_dir = out_dir
        self.events: list[dict] = []

    def on_task_shift(self, trainer, info):
        self.events.append(dict(info))
        if self.out_dir:
            with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
                json.dump([e["step"] for e in self.events], f)


def test_listeners_are_found_through_the_declared_protocols():
    assert isinstance(ShiftRecorder(), TaskShiftAwareModule) and not isinstance(TinyClassifier(), TaskShiftAwareModule)
    assert not isinstance(TaskShiftDetector(), TaskShiftListener)


def test_fires_within_a_few_steps_of_the_task_change_and_calls_the_module(tmp_path):
    model = ShiftRecorder(lr=0.1, momentum=0.9)
    det = TaskShiftDetector(reset_optimizer_state=True, restore_initial_lr=True)
    trainer = make_trainer(tmp_path, callbacks=[det])
    trainer.fit(model, datamodule=ShiftingBlobs())
    assert len(det.shift_steps) == 1
    delay = det.shift_steps[0] - BATCHES_PER_TASK
    assert 0 < delay <= 5  # global_step after the step on the first batch of the new task is BATCHES_PER_TASK + 1
    assert [e["step"] for e in model.events] == det.shift_steps
    assert model.events[0]["loss_ema"] > model.events[0]["threshold"]
    assert trainer.callback_metrics["task_shift/shifts"] == 1
    assert "task_shift/loss_ema" in trainer.callback_metrics


def test_reactions_reset_optimizer_and_lr_and_checkpoint(tmp_path):
    class Probe(pl.Callback):
        def on_task_shift(self, trainer, pl_module, info):
            opt = trainer.optimizers[0]
            self.state_len = len(opt.state)
            self.lr = opt.param_groups[0]["lr"]

    probe = Probe()
    model = ShiftRecorder(lr=0.1, momentum=0.9)
    det = TaskShiftDetector(reset_optimizer_state=True, restore_initial_lr=True, save_checkpoint=True)
    trainer = make_trainer(tmp_path, callbacks=[det, probe])
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # noqa: E731
    trainer.fit(model, datamodule=ShiftingBlobs())
    assert probe.state_len == 0 and probe.lr == pytest.approx(0.1)
    assert os.path.isfile(tmp_path / f"task_shift_step{det.shift_steps[0]}.ckpt")


def test_nan_loss_is_ignored_and_counted(tmp_path):
    model = ShiftRecorder(nan_at_step=20)
    det = TaskShiftDetector()
    trainer = make_trainer(tmp_path, callbacks=[det], max_steps=BATCHES_PER_TASK - 5)
    trainer.fit(model, datamodule=ShiftingBlobs())
    # The NaN loss at step 20 also makes the weights NaN, so every later loss is NaN too: all skipped.
    assert det.detector.num_nonfinite == BATCHES_PER_TASK - 5 - 20
    assert det.shift_steps == []
    assert trainer.callback_metrics["task_shift/nonfinite"] == BATCHES_PER_TASK - 5 - 20


def test_state_dict_roundtrip_and_resume(tmp_path):
    det = TaskShiftDetector()
    make_trainer(tmp_path, callbacks=[det], max_steps=30).fit(ShiftRecorder(), datamodule=ShiftingBlobs())
    clone = TaskShiftDetector()
    clone.load_state_dict(det.state_dict())
    assert clone.state_dict() == det.state_dict()
    assert clone.state_key == det.state_key


def test_decisions_agree_across_two_ddp_ranks(tmp_path):
    model = ShiftRecorder(out_dir=str(tmp_path))
    det = TaskShiftDetector(verbose=False)
    trainer = make_trainer(tmp_path, callbacks=[det], devices=2, strategy="ddp_spawn")
    trainer.fit(model, datamodule=ShiftingBlobs(ranks=2))
    steps = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert steps[0] == steps[1] and len(steps[0]) == 1
    assert 0 < steps[0][0] - BATCHES_PER_TASK <= 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 1}, "window"),
        ({"ema_alpha": 2.0}, "ema_alpha"),
        ({"loss_key": ""}, "loss_key"),
        ({"min_history": 0}, "min_history"),
    ],
)
def test_bad_args_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskShiftDetector(**kwargs)


def test_small_window_works_with_the_default_warmup():
    """min_history used to default to 5 and make every window < 5 an error."""
    assert TaskShiftDetector(window=3).detector.min_history == 3
    assert TaskShiftDetector().detector.min_history == 5
    with pytest.raises(ValueError, match="min_history"):
        TaskShiftDetector(window=3, min_history=4)


class NoLossModule(TinyClassifier):
    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)
        return None


def test_a_training_step_without_a_loss_is_refused_at_the_first_batch(tmp_path):
    from tests.helpers import TinyDataModule

    trainer = make_trainer(tmp_path, [TaskShiftDetector()])
    with pytest.raises(ValueError, match=r"training_step returned nothing \(None\).*loss_key"):
        trainer.fit(NoLossModule(), datamodule=TinyDataModule())
