"""Private helpers shared by the data modules: a seeded, epoch-aware shuffling sampler and loader checks."""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from typing_extensions import override


class EpochSeededRandomSampler(Sampler[int]):
    """Shuffles ``range(num_samples)`` with a permutation that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at the start of every training epoch, so epoch ``k`` sees the same order whether
    the run was interrupted and resumed or not (a ``RandomSampler`` with a generator would restart its stream after
    a resume). Under DDP Lightning wraps this sampler in a ``DistributedSamplerWrapper`` that shards it per rank.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # A generator, so the permutation is drawn when iteration starts, not when ``iter()`` is called: on resume
        # Lightning creates the loader iterator before calling ``set_epoch``, and an eager permutation would replay
        # epoch 0's order in the resumed epoch.
        # SeedSequence mixes (seed, epoch) without the collisions of e.g. ``seed + epoch``.
        state = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(state)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()

    def __len__(self) -> int:
        return self.num_samples


def check_loader_args(batch_size: int, num_workers: int) -> None:
    """Validate the loader arguments every data module shares."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0 loads in the main process), got {num_workers}.")


def check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Validate the validation / test fractions of a random split (both in (0, 1), leaving training samples)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training samples, got "
            f"{val_fraction} + {test_fraction}. Lower one of them."
        )


def make_loader(dataset: Dataset | None, batch_size: int, num_workers: int, seed: int, train: bool) -> DataLoader:
    """A loader that shuffles with :class:`EpochSeededRandomSampler` when ``train``, and keeps order otherwise."""
    if dataset is None:
        raise RuntimeError("Call `setup()` (the Trainer does) before asking for a dataloader.")
    sampler = EpochSeededRandomSampler(len(dataset), seed) if train else None  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        # Persistent workers only make sense (and are only allowed) with worker processes.
        persistent_workers=num_workers > 0,
    )


class SplitLoadersMixin(pl.LightningDataModule):
    """Train/val/test/predict loaders over ``train_set``/``val_set``/``test_set``, shared by the data modules.

    Subclasses set ``batch_size``, ``num_workers``, ``seed`` and the three datasets (in ``setup``); training
    shuffles with :class:`EpochSeededRandomSampler`, the others keep order; predict uses the test set.
    """

    batch_size: int
    num_workers: int
    seed: int
    train_set: Dataset | None
    val_set: Dataset | None
    test_set: Dataset | None

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        return make_loader(dataset, self.batch_size, self.num_workers, self.seed, train)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
