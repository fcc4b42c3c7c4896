import pytest
import torch

from lightning_autoopt.data import TaskStreamDataModule


def _batches(dm):
    dm.setup("fit")
    return list(dm.train_dataloader())


def test_split_stream_is_sequential_with_task_ids_and_classes():
    dm = TaskStreamDataModule(dataset="digits", kind="split", num_tasks=5, batches_per_task=6, batch_size=16)
    batches = _batches(dm)
    assert len(batches) == 30 == dm.num_stream_batches
    assert dm.true_boundaries == [6, 12, 18, 24]
    for i, (x, y, t) in enumerate(batches):
        task = i // 6
        assert x.shape == (16, 1, 64) and x.dtype == torch.float32
        assert torch.all(t == task)
        assert set(y.tolist()) <= set(dm.task_classes[task])
    assert dm.task_classes[2] == [4, 5]
    x, y, t = dm.eval_tensors()
    assert set(t.tolist()) == set(range(5))
    for task in range(5):
        assert set(y[t == task].tolist()) == set(dm.task_classes[task])


def test_permuted_stream_applies_fixed_permutations_and_recurring_order():
    dm = TaskStreamDataModule(
        dataset="digits", kind="permuted", num_tasks=3, task_order=[0, 1, 2, 1], batches_per_task=3, batch_size=8
    )
    batches = _batches(dm)
    assert [int(b[2][0]) for b in batches] == [0] * 3 + [1] * 3 + [2] * 3 + [1] * 3
    assert dm.true_boundaries == [3, 6, 9]
    perm = dm.permutations
    assert torch.equal(perm[0], torch.arange(64)) and not torch.equal(perm[1], perm[2])
    idx = dm.batch_indices[3]
    torch.testing.assert_close(batches[3][0], dm.x_train[idx][..., perm[1]])
    assert dm.task_classes[1] == list(range(10))


def test_same_seed_same_stream_and_shuffled_within_task():
    a = _batches(TaskStreamDataModule(dataset="digits", batches_per_task=4, batch_size=8, seed=3))
    b = _batches(TaskStreamDataModule(dataset="digits", batches_per_task=4, batch_size=8, seed=3))
    c = _batches(TaskStreamDataModule(dataset="digits", batches_per_task=4, batch_size=8, seed=4))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    assert len(set(a[0][1].tolist())) == 2  # both classes of task 0 appear mixed in a batch


def test_chunks_per_epoch_and_no_task_id_mode():
    dm = TaskStreamDataModule(
        dataset="digits", batches_per_task=4, batch_size=8, batches_per_epoch=5, return_task_id=False
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == 5 and len(batches[0]) == 2
    torch.testing.assert_close(batches[0][1], dm.y_train[dm.batch_indices[5]])
    assert len(next(iter(dm.val_dataloader()))) == 2


def test_mnist1d_stream(tmp_path):
    dm = TaskStreamDataModule(
        dataset="mnist1d", kind="split", batches_per_task=2, batch_size=8, cache_dir=str(tmp_path), num_samples=1000
    )
    x, y, t = _batches(dm)[0]
    assert x.shape == (8, 1, 40) and set(y.tolist()) <= {0, 1}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "cifar"}, "dataset"),
        ({"kind": "rotated"}, "kind"),
        ({"num_tasks": 6}, "classes_per_task"),
        ({"task_order": [0, 7]}, "task_order"),
        ({"batches_per_task": 0}, "batches_per_task"),
        ({"batches_per_epoch": 10_000}, "batches_per_epoch"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
)
def test_bad_args_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskStreamDataModule(**kwargs)
