"""Task-free continual-learning streams (split, permuted, recurring) over embedded data sets, no downloads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from typing_extensions import override

_DATASETS = ("digits", "mnist1d")
_KINDS = ("split", "permuted")


def _load_arrays(
    dataset: str, seed: int, num_samples: int, test_fraction: float, cache_dir: str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` with x of shape ``(N, 1, L)`` float32 and y int64 in 0..9."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
        x = ((x - x.mean()) / x.std()).unsqueeze(1)  # (1797, 1, 64), standardised
        y = torch.tensor(bunch.target, dtype=torch.int64)
        # A stratified, seeded train/test cut: the last `test_fraction` of each class's shuffled samples.
        g = torch.Generator().manual_seed(int(seed))
        train_idx, test_idx = [], []
        for c in range(10):
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            n_test = max(1, round(test_fraction * len(idx)))
            test_idx.append(idx[:n_test])
            train_idx.append(idx[n_test:])
        tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
        return x[tr], y[tr], x[te], y[te]
    from lightning_autoopt.data.mnist1d import MNIST1DDataModule

    dm = MNIST1DDataModule(
        num_samples=num_samples, seed=seed, test_fraction=test_fraction, val_fraction=0.05, cache_dir=cache_dir
    )
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None and dm.test_set is not None
    # The stream has no validation phase: the validation split joins the training pool.
    x_train = torch.cat([dm.train_set.tensors[0], dm.val_set.tensors[0]])
    y_train = torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1]])
    return x_train, y_train, dm.test_set.tensors[0], dm.test_set.tensors[1]


class _StreamBatches(Dataset):
    """Item ``b`` is the whole ``b``-th batch of the stream: ``(x, y, task_id)`` or ``(x, y)``."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_indices: torch.Tensor,
        batch_tasks: torch.Tensor,
        permutations: torch.Tensor | None,
        return_task_id: bool,
    ) -> None:
        self.x, self.y = x, y
        self.batch_indices, self.batch_tasks = batch_indices, batch_tasks
        self.permutations = permutations
        self.return_task_id = return_task_id

    def __len__(self) -> int:
        return len(self.batch_indices)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, ...]:
        idx = self.batch_indices[b]
        task = int(self.batch_tasks[b])
        x = self.x[idx]
        if self.permutations is not None:
            x = x[..., self.permutations[task]]
        task_ids = torch.full((len(idx),), task, dtype=torch.int64)
        return (x, self.y[idx], task_ids) if self.return_task_id else (x, self.y[idx])


class _ChunkSampler(Sampler[int]):
    """Yields the stream's batch numbers of the current epoch's chunk, in order (no shuffle across tasks).

    Lightning calls ``set_epoch`` at every epoch start (also after a resume), so epoch ``e`` serves batches
    ``[e * chunk, (e + 1) * chunk)`` of the stream (wrapping around after the end).
    """

    def __init__(self, num_batches: int, chunk: int) -> None:
        self.num_batches, self.chunk, self.epoch = num_batches, chunk, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # A generator: the epoch is read at the first ``next``, not at ``iter``. On a resume, Lightning creates the
        # iterator before it calls ``set_epoch``.
        start = self.epoch * self.chunk
        for i in range(self.chunk):
            yield (start + i) % self.num_batches

    def __len__(self) -> int:
        return self.chunk


class TaskStreamDataModule(pl.LightningDataModule):
    """A task-free stream of tasks built from MNIST-1D or scikit-learn digits, with class-IL/task-IL test sets.

    The training loader is one long sequential stream: the tasks come one after another in ``task_order``, each for
    ``batches_per_task`` batches (samples are shuffled *within* a task with a seeded generator and recycled when a
    task has fewer samples than it needs). Nothing tells the learner where a task ends: batches carry the true task
    id only for evaluation and plots, ``(x, y, task_id)`` (or ``(x, y)`` with ``return_task_id=False``, for
    modules that unpack two items). Labels are the global class ids 0..9.

    * ``kind="split"``: task ``t`` holds classes ``t*classes_per_task ... (t+1)*classes_per_task - 1`` (5x2 default).
    * ``kind="permuted"``: task ``t`` applies one fixed random permutation of the input positions to all classes
      (task 0 keeps the identity unless ``permute_first_task``).
    * ``task_order`` repeats tasks to make a recurring stream, e.g. ``[0, 1, 2, 1, 3]``.

    The validation and test loaders give the evaluation set ``(x, y, task_id)`` of every task (split: the test
    samples of the task's classes; permuted: the whole test set under the task's permutation); ``(x, y)`` with
    ``return_task_id=False`` (then :meth:`eval_tensors` still has the task ids). Class-IL evaluation
    uses ``y`` over all classes; task-IL evaluation restricts the prediction to ``task_classes[task_id]``.

    With ``batches_per_epoch`` set, epoch ``e`` serves the ``e``-th chunk of the stream, so a run can be checkpointed
    at epoch ends and resumed exactly; ``max_epochs = num_stream_batches / batches_per_epoch`` covers the stream.

    Args:
        dataset: ``"digits"`` (scikit-learn, 8x8 images flattened to ``(1, 64)``) or ``"mnist1d"`` (``(1, 40)``).
        kind: ``"split"`` or ``"permuted"``.
        num_tasks: Number of distinct tasks.
        classes_per_task: Classes per task for ``kind="split"``; ``num_tasks * classes_per_task <= 10``.
        task_order: Order in which tasks appear (ids in ``0..num_tasks-1``, repeats allowed); default
            ``0..num_tasks-1``.
        batch_size: Samples per batch.
        batches_per_task: Consecutive batches of each task occurrence in the stream.
        batches_per_epoch: Stream batches per training epoch; ``None`` = the whole stream is one epoch.
        return_task_id: Whether batches include the true task id (``False`` for modules that unpack ``x, y``).
        seed: Seeds the train/test cut (digits), the MNIST-1D generator, the permutations and the shuffling.
        num_samples: MNIST-1D samples to generate.
        test_fraction: Fraction of the samples held out for evaluation.
        permute_first_task: ``kind="permuted"``: permute task 0 too.
        cache_dir: MNIST-1D cache directory (see :class:`~lightning_autoopt.data.MNIST1DDataModule`).
        eval_batch_size: Batch size of the evaluation loaders.

    Raises:
        ValueError: If an argument is out of range (the message names it).

    Example::

        dm = TaskStreamDataModule(dataset="mnist1d", kind="split", num_tasks=5, batches_per_task=200)
        Trainer(max_epochs=1).fit(TAME(expert="mlp"), datamodule=dm)
    """

    num_classes: int = 10

    def __init__(
        self,
        dataset: str = "mnist1d",
        kind: str = "split",
        num_tasks: int = 5,
        classes_per_task: int = 2,
        task_order: list[int] | None = None,
        batch_size: int = 64,
        batches_per_task: int = 100,
        batches_per_epoch: int | None = None,
        return_task_id: bool = True,
        seed: int = 0,
        num_samples: int = 5000,
        test_fraction: float = 0.2,
        permute_first_task: bool = False,
        cache_dir: str | None = None,
        eval_batch_size: int = 512,
    ) -> None:
        super().__init__()
        if dataset not in _DATASETS:
            raise ValueError(f"`dataset` must be one of {_DATASETS}, got {dataset!r}.")
        if kind not in _KINDS:
            raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
        if num_tasks < 1:
            raise ValueError(f"`num_tasks` must be >= 1, got {num_tasks}.")
        if kind == "split" and (classes_per_task < 1 or num_tasks * classes_per_task > self.num_classes):
            raise ValueError(
                f"`num_tasks * classes_per_task` must be <= {self.num_classes} for kind='split', got "
                f"{num_tasks} * {classes_per_task}. Lower one of them."
            )
        order = list(range(num_tasks)) if task_order is None else [int(t) for t in task_order]
        if not order or any(not 0 <= t < num_tasks for t in order):
            raise ValueError(
                f"`task_order` must be a non-empty list of task ids in [0, {num_tasks}), got {task_order}."
            )
        if batch_size < 1 or batches_per_task < 1 or eval_batch_size < 1:
            raise ValueError(
                "`batch_size`, `batches_per_task` and `eval_batch_size` must be >= 1, got "
                f"{batch_size}, {batches_per_task}, {eval_batch_size}."
            )
        total = len(order) * batches_per_task
        if batches_per_epoch is not None and not 1 <= batches_per_epoch <= total:
            raise ValueError(f"`batches_per_epoch` must be None or in [1, {total}], got {batches_per_epoch}.")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
        self.save_hyperparameters()
        self.dataset, self.kind, self.num_tasks = dataset, kind, num_tasks
        self.classes_per_task = classes_per_task
        self.task_order = order
        self.batch_size, self.batches_per_task = batch_size, batches_per_task
        self.batches_per_epoch = batches_per_epoch or total
        self.return_task_id = return_task_id
        self.seed, self.num_samples, self.test_fraction = seed, num_samples, test_fraction
        self.permute_first_task, self.cache_dir = permute_first_task, cache_dir
        self.eval_batch_size = eval_batch_size
        self._built = False

    # ------------------------------------------------------------------ structure
    @property
    def task_classes(self) -> list[list[int]]:
        """The classes of each task (all classes for ``kind="permuted"``)."""
        if self.kind == "permuted":
            return [list(range(self.num_classes)) for _ in range(self.num_tasks)]
        k = self.classes_per_task
        return [list(range(t * k, (t + 1) * k)) for t in range(self.num_tasks)]

    @property
    def num_stream_batches(self) -> int:
        return len(self.task_order) * self.batches_per_task

    @property
    def stream_task_ids(self) -> list[int]:
        """The true task id of each stream batch, in order."""
        return [t for t in self.task_order for _ in range(self.batches_per_task)]

    @property
    def true_boundaries(self) -> list[int]:
        """Stream batch numbers (= optimizer steps of a one-step-per-batch learner) where a new task starts."""
        ids = self.stream_task_ids
        return [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]

    @property
    def input_shape(self) -> tuple[int, int]:
        return (1, 64) if self.dataset == "digits" else (1, 40)

    # ------------------------------------------------------------------ build
    @override
    def prepare_data(self) -> None:
        if self.dataset == "mnist1d":
            _load_arrays(self.dataset, self.seed, self.num_samples, self.test_fraction, self.cache_dir)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self._built:
            return
        x_tr, y_tr, x_te, y_te = _load_arrays(
            self.dataset, self.seed, self.num_samples, self.test_fraction, self.cache_dir
        )
        self.x_train, self.y_train, self.x_test, self.y_test = x_tr, y_tr, x_te, y_te
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 1]).generate_state(1)[0]))
        length = x_tr.shape[-1]
        self.permutations: torch.Tensor | None = None
        if self.kind == "permuted":
            perms = [torch.randperm(length, generator=g) for _ in range(self.num_tasks)]
            if not self.permute_first_task:
                perms[0] = torch.arange(length)
            self.permutations = torch.stack(perms)
        # Sample pool of each task, then the stream: each occurrence of a task cycles through fresh permutations.
        pools = [self._task_pool(t, y_tr) for t in range(self.num_tasks)]
        batch_indices = []
        for task in self.task_order:
            pool = pools[task]
            need = self.batches_per_task * self.batch_size
            reps = -(-need // len(pool))
            order = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(reps)])[:need]
            batch_indices.append(order.view(self.batches_per_task, self.batch_size))
        self.batch_indices = torch.cat(batch_indices)
        self.batch_tasks = torch.tensor(self.stream_task_ids, dtype=torch.int64)
        self._built = True

    def _task_pool(self, task: int, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "permuted":
            return torch.arange(len(y))
        mask = torch.zeros_like(y, dtype=torch.bool)
        for c in self.task_classes[task]:
            mask |= y == c
        return torch.nonzero(mask).flatten()

    def _require_setup(self) -> None:
        if not self._built:
            raise RuntimeError("Call `setup()` (the Trainer does) before asking for data.")

    # ------------------------------------------------------------------ tensors for evaluation and baselines
    def task_tensors(self, task: int, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``(x, y)`` of one task, from the training pool (``train=True``) or the evaluation set."""
        self._require_setup()
        x, y = (self.x_train, self.y_train) if train else (self.x_test, self.y_test)
        idx = self._task_pool(task, y)
        xt = x[idx]
        if self.permutations is not None:
            xt = xt[..., self.permutations[task]]
        return xt, y[idx]

    def eval_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The evaluation set of every task that occurs in the stream, concatenated: ``(x, y, task_id)``."""
        xs, ys, ts = [], [], []
        for t in sorted(set(self.task_order)):
            x, y = self.task_tensors(t)
            xs.append(x)
            ys.append(y)
            ts.append(torch.full((len(y),), t, dtype=torch.int64))
        return torch.cat(xs), torch.cat(ys), torch.cat(ts)

    # ------------------------------------------------------------------ loaders
    @override
    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        stream = _StreamBatches(
            self.x_train, self.y_train, self.batch_indices, self.batch_tasks, self.permutations, self.return_task_id
        )
        # batch_size=None: each dataset item already is a batch; the sampler picks this epoch's chunk in order.
        return DataLoader(stream, batch_size=None, sampler=_ChunkSampler(len(stream), self.batches_per_epoch))

    def _eval_loader(self) -> DataLoader:
        self._require_setup()
        x, y, t = self.eval_tensors()
        tensors = (x, y, t) if self.return_task_id else (x, y)
        return DataLoader(TensorDataset(*tensors), batch_size=self.eval_batch_size)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    @override
    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def describe(self) -> dict[str, Any]:
        """A short description for logs: data set, kind, tasks, order, batches."""
        return {
            "dataset": self.dataset,
            "kind": self.kind,
            "num_tasks": self.num_tasks,
            "task_order": self.task_order,
            "batches_per_task": self.batches_per_task,
            "batch_size": self.batch_size,
        }
