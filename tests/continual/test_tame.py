import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_autoopt.continual import TAME, ReservoirBuffer
from lightning_autoopt.continual.pruning import global_magnitude_prune, make_pruning_permanent, sparsity
from lightning_autoopt.data.streams import TaskStreamDataModule
from tests.helpers import make_trainer
from tests.test_history import same


def _tame(**kwargs):
    defaults = dict(expert="mlp", width=8, lr=0.05, selector_epochs=3, finetune_epochs=1, buffer_size=200)
    defaults.update(kwargs)
    return TAME(**defaults)


def test_spawns_one_expert_per_new_task_and_reuses_on_recurring_task(tmp_path):
    dm = TaskStreamDataModule(
        dataset="digits", kind="split", num_tasks=3, batches_per_task=40, batch_size=32, task_order=[0, 1, 2, 1]
    )
    model = _tame(selector_epochs=20)
    trainer = make_trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    assert model.num_experts == 3  # tasks 0, 1, 2; task 1's return re-uses expert 1
    assert model.spawn_batches == [40, 80]
    assert model.shift_batches == [40, 80, 120]
    assert model.expert_of_task() == {0: 0, 1: 1, 2: 2}
    hist = model.history  # what plot_tame draws
    assert hist["batch"] == [float(b) for b in range(160)] and hist["switch_experts"] == [1, 2, 1]
    assert hist["expert"][39:41] == [0.0, 1.0] and hist["expert"][125] == 1.0
    assert hist["true_task_changes"] == [[0, 0], [40, 1], [80, 2], [120, 1]]
    m = model.final_metrics
    assert m["false_detections"] == 0 and m["missed_boundaries"] == 0
    assert m["class_il_acc"] > 0.6 and m["selector_acc"] > 0.6
    assert model.summary()["selector_sparsity"] == pytest.approx(0.5, abs=0.01)
    # The final checkpoint (saved after fit) restores the pool and the pruned selector.
    trainer.save_checkpoint(tmp_path / "final.ckpt")
    loaded = TAME.load_from_checkpoint(tmp_path / "final.ckpt")
    x, _, _ = dm.eval_tensors()
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class _TinyNet(nn.Module):
    def __init__(self, features: int = 64, hidden: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


def test_resume_mid_stream_continues_identically(tmp_path):
    def dm():
        return TaskStreamDataModule(
            dataset="digits", kind="split", num_tasks=3, batches_per_task=20, batch_size=16, batches_per_epoch=15
        )  # 4 epochs; the checkpoint after epoch 2 is mid-task 1

    spec = {"class_path": f"{__name__}._TinyNet", "init_args": {"hidden": 16}}
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    full = _tame(expert=spec)
    make_trainer(tmp_path, max_epochs=4, enable_checkpointing=True, callbacks=[ckpt]).fit(full, datamodule=dm())
    assert full.num_experts == 3
    path = tmp_path / "ck" / "epoch=1.ckpt"
    assert torch.load(path, weights_only=False)["tame"]["num_experts"] == 2
    resumed = _tame(expert=spec)
    make_trainer(tmp_path, max_epochs=4).fit(resumed, datamodule=dm(), ckpt_path=str(path))
    assert resumed.num_experts == full.num_experts
    assert resumed.shift_batches == full.shift_batches
    assert same(resumed.history, full.history)
    for a, b in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert a[0] == b[0]
        assert torch.equal(a[1], b[1]), a[0]
    assert torch.equal(full.buffer.label, resumed.buffer.label)
    assert full.final_metrics == resumed.final_metrics


class _WithNaN:
    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, (x, y, t) in enumerate(self.loader):
            yield (x * float("nan"), y, t) if i == 10 else (x, y, t)


class _NaNStream(TaskStreamDataModule):
    def train_dataloader(self):
        return _WithNaN(super().train_dataloader())


def test_nan_batches_are_skipped(tmp_path):
    dm = _NaNStream(dataset="digits", kind="split", num_tasks=2, batches_per_task=30, batch_size=16)
    model = _tame(selector_epochs=1)
    make_trainer(tmp_path).fit(model, datamodule=dm)
    assert model.num_nonfinite == 1
    assert model.num_experts == 2 and model.shift_batches == [30]


def test_pruning_reaches_requested_sparsity():
    nets = [nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3)) for _ in range(2)]
    global_magnitude_prune(nets, 0.7)
    make_pruning_permanent(nets)
    assert sparsity(nets) == pytest.approx(0.7, abs=0.01)
    assert all(not hasattr(m, "weight_orig") for net in nets for m in net.modules())
    with pytest.raises(ValueError, match="amount"):
        global_magnitude_prune(nets, 1.0)


def test_reservoir_buffer_is_class_balanced_and_uniform():
    buf = ReservoirBuffer(capacity=40, num_strata=4, seed=0)
    for step in range(50):
        y = torch.arange(32) % 4
        buf.add(torch.full((32, 2), float(step)), y, step, y)
    x, y, label = buf.tensors()
    assert len(y) == 40 and torch.bincount(y).tolist() == [10, 10, 10, 10]
    assert label.float().mean() > 15  # not just the first samples: the reservoir keeps sampling the stream
    clone = ReservoirBuffer(capacity=40, num_strata=4, seed=1)
    clone.load_state_dict(buf.state_dict())
    assert torch.equal(clone.tensors()[0], x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"expert": "transformer"}, "expert"),
        ({"expert": {"class_path": "torch.nn.NoSuchNet"}}, "class_path"),
        ({"expert": {"class_path": "builtins.dict"}}, "nn.Module"),
        ({"buffer_mode": "fifo"}, "buffer_mode"),
        ({"window": 1}, "window"),
        ({"selector_prune_amount": 1.0}, "selector_prune_amount"),
        ({"max_experts": 0}, "max_experts"),
        ({"buffer_size": 3}, "buffer_size"),
    ],
)
def test_bad_args_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TAME(**kwargs)


EXPERT_LOSS_CALLS: list[int] = []


def smoothed_expert_loss(expert, batch):
    """A custom expert loss of the package's contract loss_fn(module, batch)."""
    x, y = batch
    EXPERT_LOSS_CALLS.append(len(y))
    return torch.nn.functional.cross_entropy(expert(x), y, label_smoothing=0.1)


def per_sample_loss(expert, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(expert(x), y, reduction="none")


def test_foreign_expert_with_a_custom_loss_by_import_path(tmp_path):
    dm = TaskStreamDataModule(dataset="digits", kind="split", num_tasks=2, batches_per_task=10, batch_size=16)
    spec = {"class_path": f"{__name__}._TinyNet", "init_args": {"hidden": 8}}
    EXPERT_LOSS_CALLS.clear()
    model = _tame(expert=spec, loss_fn=f"{__name__}.smoothed_expert_loss", selector_epochs=1)
    make_trainer(tmp_path).fit(model, datamodule=dm)
    assert model._expert_loss_fn is smoothed_expert_loss
    assert len(EXPERT_LOSS_CALLS) >= 20  # every training batch (plus the check and any shift evaluations)
    assert 0.0 <= model.final_metrics["class_il_acc"] <= 1.0
    with pytest.raises(ValueError, match="scalar"):
        make_trainer(tmp_path).fit(_tame(expert=spec, loss_fn=f"{__name__}.per_sample_loss"), datamodule=dm)
    with pytest.raises(ValueError, match="loss_fn"):
        _tame(loss_fn="mse")
    with pytest.raises(ValueError, match="not importable"):
        _tame(loss_fn=f"{__name__}.no_such_loss")
