"""CIFAR10DataModule over torchvision's real loader, fed a tiny CIFAR-format folder generated here."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_autoopt.data import CIFAR10DataModule
from lightning_autoopt.data.cifar import CIFAR10_MEAN, CIFAR10_STD

torchvision = pytest.importorskip("torchvision")

PER_BATCH = 4  # images per training batch file; the test file has 2 * PER_BATCH


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    # The layout of the real files: uint8 rows of 3072 values (R plane, G plane, B plane), labels as a list.
    entry = {"batch_label": path.name, "labels": labels, "data": images.reshape(len(labels), -1), "filenames": []}
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CIFAR-10 folder with a few images per file; the class's md5 lists are patched to the new files' hashes, so
    torchvision's own integrity check and unpickling code run unchanged."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cifar = torchvision.datasets.CIFAR10
    train_list, test_list = [], []
    for name, _ in cifar.train_list:
        images = rng.integers(0, 256, size=(PER_BATCH, 3, 32, 32), dtype=np.uint8)
        _write_batch(folder / name, images, rng.integers(0, 10, size=PER_BATCH).tolist())
        train_list.append([name, _md5(folder / name)])
    for name, _ in cifar.test_list:
        images = rng.integers(0, 256, size=(2 * PER_BATCH, 3, 32, 32), dtype=np.uint8)
        _write_batch(folder / name, images, list(range(2 * PER_BATCH)))
        test_list.append([name, _md5(folder / name)])
    meta_path = folder / cifar.meta["filename"]
    with open(meta_path, "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    monkeypatch.setattr(cifar, "train_list", train_list)
    monkeypatch.setattr(cifar, "test_list", test_list)
    monkeypatch.setattr(cifar, "meta", dict(cifar.meta, md5=_md5(meta_path)))
    return tmp_path


def test_loads_tiny_folder_through_torchvision(tiny_cifar: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(tiny_cifar), batch_size=3, augment=False)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 5 * PER_BATCH
    assert len(dm.test_set) == 2 * PER_BATCH
    assert dm.val_set is dm.test_set  # val_fraction=0 validates on test
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [0, 1, 2]
    # Normalisation: undoing it gives back the stored uint8 pixels of the first test image.
    raw = pickle.loads((tiny_cifar / "cifar-10-batches-py" / "test_batch").read_bytes())["data"][0]
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    pixels = ((x[0] * std + mean) * 255).round().to(torch.uint8)
    assert torch.equal(pixels.reshape(-1), torch.from_numpy(raw))
    assert (dm.num_classes, dm.in_channels, dm.input_length, dm.dims) == (10, 3, 32, 2)


def test_augmentation_and_validation_split(tiny_cifar: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(tiny_cifar), batch_size=64, augment=True, val_fraction=0.25, seed=1)
    dm.setup("fit")
    assert len(dm.val_set) == 5 and len(dm.train_set) == 15
    # Train and val are disjoint parts of the training files.
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    # Validation images are not augmented: two passes agree. Training images are (crop + flip): passes differ.
    v1, v2 = next(iter(dm.val_dataloader()))[0], next(iter(dm.val_dataloader()))[0]
    assert torch.equal(v1, v2)
    torch.manual_seed(0)
    t1 = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    t2 = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    assert not torch.equal(t1, t2)
    # Augmentation pads then crops: the shape is unchanged.
    assert t1.shape == (15, 3, 32, 32)


def test_missing_files_error_says_how_to_get_them(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "download=True" in message
    assert "cifar-10-batches-py" in message
    assert "cifar-10-python.tar.gz" in message
    with pytest.raises(FileNotFoundError):
        dm.prepare_data()


def test_corrupted_files_fail_the_integrity_check(tiny_cifar: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "train_list", [[name, "0" * 32] for name, _ in cifar.train_list])
    with pytest.raises(RuntimeError, match="integrity"):
        CIFAR10DataModule(data_dir=str(tiny_cifar)).setup("fit")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        CIFAR10DataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        CIFAR10DataModule(batch_size=0)


def test_missing_torchvision_gives_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` raise ImportError
    dm = CIFAR10DataModule()  # constructing does not need torchvision
    with pytest.raises(ImportError, match=r"lightning-autoopt\[vision\]"):
        dm.setup("fit")
