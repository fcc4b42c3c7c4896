"""MNIST1DDataModule: shapes, splits, seeding, the on-disk cache, loaders and argument checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_autoopt.data import MNIST1DDataModule
from lightning_autoopt.data._cache import save_npz_atomic

N = 300  # small sets keep generation well under a second


def _dm(tmp_path: Path, **kwargs) -> MNIST1DDataModule:
    kwargs.setdefault("num_samples", N)
    kwargs.setdefault("cache_dir", str(tmp_path))
    dm = MNIST1DDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_shapes_splits_and_attributes(tmp_path: Path) -> None:
    dm = _dm(tmp_path, batch_size=32, val_fraction=0.1, test_fraction=0.2)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (210, 30, 60)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 40) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    all_y = torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1], dm.test_set.tensors[1]])
    assert all_y.min() >= 0 and all_y.max() <= 9
    assert torch.equal(all_y.bincount(minlength=10), torch.full((10,), N // 10))  # equal counts per class
    assert (dm.num_classes, dm.in_channels, dm.input_length, dm.dims) == (10, 1, 40, 1)
    # Loader sizes: every split covered exactly once.
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 30
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 60


def test_default_split_is_the_papers_4000_1000_with_val_carved_from_train() -> None:
    dm = MNIST1DDataModule()  # nothing is generated until prepare_data/setup
    assert (dm.num_train, dm.num_val, dm.num_test) == (3500, 500, 1000)
    assert dm.num_train + dm.num_val == 4000


def test_test_split_matches_mnist1d_own_split(tmp_path: Path) -> None:
    from mnist1d.data import get_dataset_args, make_dataset
    from mnist1d.utils import ObjectView

    dm = _dm(tmp_path, seed=3, test_fraction=0.2)
    args = get_dataset_args(as_dict=True)
    args.update(num_samples=N, seed=3, train_split=0.8)
    reference = make_dataset(ObjectView(args))
    torch.testing.assert_close(dm.test_set.tensors[0][:, 0], torch.from_numpy(reference["x_test"]).float())
    assert torch.equal(dm.test_set.tensors[1], torch.from_numpy(reference["y_test"]))


def test_same_seed_same_data_different_seed_different_data(tmp_path: Path) -> None:
    a = _dm(tmp_path / "a", seed=5)
    b = _dm(tmp_path / "b", seed=5)  # separate caches: both generated from scratch
    c = _dm(tmp_path / "c", seed=6)
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert torch.equal(a.test_set.tensors[1], b.test_set.tensors[1])
    assert not torch.equal(a.train_set.tensors[0], c.train_set.tensors[0])


def test_generation_leaves_global_rngs_untouched(tmp_path: Path) -> None:
    import random

    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    _dm(tmp_path)
    assert np.random.rand() == expected_np
    assert random.random() == expected_py


def test_cache_hit_does_not_regenerate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _dm(tmp_path, batch_size=16)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [first.cache_path.name]  # one file, no temporary leftovers
    mtime = files[0].stat().st_mtime_ns

    def fail(self):  # noqa: ANN001, ANN202
        raise AssertionError("regenerated despite a cached file")

    monkeypatch.setattr(MNIST1DDataModule, "generate", fail)
    # Loader and split arguments are not part of the cache key: the same file serves them.
    second = _dm(tmp_path, batch_size=64, val_fraction=0.2)
    assert second.cache_path == first.cache_path
    assert files[0].stat().st_mtime_ns == mtime
    full_first = torch.cat([first.train_set.tensors[0], first.val_set.tensors[0], first.test_set.tensors[0]])
    full_second = torch.cat([second.train_set.tensors[0], second.val_set.tensors[0], second.test_set.tensors[0]])
    assert torch.equal(full_first, full_second)


def test_cache_key_follows_generation_arguments(tmp_path: Path) -> None:
    base = MNIST1DDataModule(num_samples=N, cache_dir=str(tmp_path))
    assert base.cache_path.parent == tmp_path
    assert MNIST1DDataModule(num_samples=N, cache_dir=str(tmp_path), batch_size=7).cache_path == base.cache_path
    for change in ({"seed": 1}, {"num_samples": N + 10}, {"iid_noise_scale": 0.1}, {"shuffle_seq": True}):
        other = MNIST1DDataModule(**{"num_samples": N, "cache_dir": str(tmp_path), **change})
        assert other.cache_path != base.cache_path, change


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_AUTOOPT_CACHE", str(tmp_path / "env"))
    assert MNIST1DDataModule().cache_path.parent == tmp_path / "env"
    monkeypatch.delenv("LIGHTNING_AUTOOPT_CACHE")
    assert MNIST1DDataModule().cache_path.parent == Path.home() / ".cache" / "lightning_autoopt"


def test_corrupt_cache_file_is_regenerated(tmp_path: Path) -> None:
    reference = _dm(tmp_path / "ref")
    dm = MNIST1DDataModule(num_samples=N, cache_dir=str(tmp_path / "bad"))
    dm.cache_path.parent.mkdir(parents=True)
    dm.cache_path.write_bytes(b"not an npz file")
    dm.prepare_data()
    dm.setup("fit")
    assert torch.equal(dm.train_set.tensors[0], reference.train_set.tensors[0])


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_npz_atomic(tmp_path / "x.npz", {"a": np.zeros(3)})
    assert os.listdir(tmp_path) == []


def test_training_order_depends_only_on_seed_and_epoch(tmp_path: Path) -> None:
    dm = _dm(tmp_path, batch_size=1000)
    loader = dm.train_dataloader()
    y0 = next(iter(loader))[1]
    assert torch.equal(y0, next(iter(dm.train_dataloader()))[1])  # a fresh loader repeats epoch 0
    assert not torch.equal(y0, dm.train_set.tensors[1])  # shuffled
    loader.sampler.set_epoch(1)
    y1 = next(iter(loader))[1]
    assert not torch.equal(y0, y1)
    assert torch.equal(y0.sort().values, y1.sort().values)  # a permutation of the same samples
    val = torch.cat([b[1] for b in dm.val_dataloader()])
    assert torch.equal(val, dm.val_set.tensors[1])  # evaluation loaders keep order


def test_persistent_workers_only_with_workers(tmp_path: Path) -> None:
    assert not _dm(tmp_path, num_workers=0).train_dataloader().persistent_workers
    assert _dm(tmp_path, num_workers=1).train_dataloader().persistent_workers  # built, not iterated


def test_loader_before_setup_raises() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        MNIST1DDataModule().train_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_samples": 55}, "num_samples"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
        ({"num_samples": 10, "val_fraction": 0.01}, "empty split"),
        ({"iid_noise_scale": -1.0}, "iid_noise_scale"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MNIST1DDataModule(**kwargs)


def test_concurrent_generation_into_one_cache(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    reference = _dm(tmp_path / "ref")

    def build(_: int) -> torch.Tensor:
        return _dm(tmp_path / "shared").train_set.tensors[0]

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(build, range(3)))
    for x in results:
        assert torch.equal(x, reference.train_set.tensors[0])
    assert [p.name for p in (tmp_path / "shared").iterdir()] == [reference.cache_path.name]


def test_sampler_order_is_drawn_when_iteration_starts() -> None:
    # Lightning creates the loader iterator on resume before calling set_epoch; the order must follow the epoch
    # set before the first index is drawn, not the one at iter() time.
    from lightning_autoopt.data._sampling import EpochSeededRandomSampler

    sampler = EpochSeededRandomSampler(50, seed=3)
    sampler.set_epoch(4)
    expected = list(sampler)
    sampler.set_epoch(0)
    it = iter(sampler)
    sampler.set_epoch(4)
    assert list(it) == expected
