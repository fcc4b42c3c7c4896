"""DigitsDataModule: scikit-learn's 8×8 digits as signals or images."""

from __future__ import annotations

import pytest
import torch

from lightning_autoopt.data import DigitsDataModule


def _dm(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_signal_shapes_splits_and_standardisation() -> None:
    dm = _dm(batch_size=50)
    sizes = (len(dm.train_set), len(dm.val_set), len(dm.test_set))
    assert sum(sizes) == 1797 and sizes == (1258, 180, 359)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 1, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    train_x = dm.train_set.tensors[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1.0) < 1e-3
    assert set(torch.cat([dm.train_set.tensors[1], dm.test_set.tensors[1]]).tolist()) == set(range(10))
    assert (dm.num_classes, dm.in_channels, dm.input_length, dm.dims) == (10, 1, 64, 1)


def test_image_option() -> None:
    dm = _dm(image=True, batch_size=8)
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 1, 8, 8)
    assert (dm.input_length, dm.dims) == (8, 2)
    flat = _dm(image=False)
    torch.testing.assert_close(dm.train_set.tensors[0].reshape(-1, 1, 64), flat.train_set.tensors[0])


def test_seeded_split() -> None:
    a, b, c = _dm(seed=1), _dm(seed=1), _dm(seed=2)
    assert torch.equal(a.test_set.tensors[0], b.test_set.tensors[0])
    assert not torch.equal(a.test_set.tensors[0], c.test_set.tensors[0])
    assert torch.equal(next(iter(a.train_dataloader()))[1], next(iter(b.train_dataloader()))[1])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, "val_fraction \\+ test_fraction"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DigitsDataModule(**kwargs)
