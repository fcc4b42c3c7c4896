"""CIFAR-10 as a LightningDataModule over torchvision's own ``CIFAR10`` loader (optional ``vision`` extra)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset
from typing_extensions import override

from lightning_autoopt.data._sampling import SplitLoadersMixin, check_loader_args

# Per-channel mean and standard deviation of the CIFAR-10 training images, as used by the AutoDrop reference code.
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
_ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError as err:
        raise ImportError(
            "CIFAR10DataModule needs torchvision, which is optional: pip install 'lightning-autoopt[vision]' "
            "(or pip install torchvision matching your torch version)."
        ) from err
    return torchvision


class CIFAR10DataModule(SplitLoadersMixin):
    """CIFAR-10 (50 000 train / 10 000 test 32×32 colour images, 10 classes) through ``torchvision.datasets.CIFAR10``.

    Nothing is downloaded unless ``download=True``: by default the data must already be in
    ``<data_dir>/cifar-10-batches-py`` (the extracted ``cifar-10-python.tar.gz``), otherwise ``setup`` raises a
    ``FileNotFoundError`` saying how to get it. torchvision checks the md5 of every file.

    Training images get the standard augmentation when ``augment=True`` (random 32×32 crop of the image padded by 4
    pixels, random horizontal flip); every image is normalised with the CIFAR-10 channel mean and standard deviation
    (:data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`). Batches are ``(x, y)`` with ``x`` float32 ``(B, 3, 32, 32)`` and
    ``y`` int64 in ``0..9``; use ``Classifier(dims=2, in_channels=3, input_length=32)``.

    With ``val_fraction=0`` (default) the validation loader is the *test* set, as in the papers whose curves this
    package reproduces (they report test accuracy during training); with ``val_fraction > 0`` a seeded random part
    of the training images (without augmentation) is held out instead.

    Args:
        data_dir: Directory that contains (or will contain, with ``download=True``) ``cifar-10-batches-py``.
        download: Download and extract the archive (about 170 MB) into ``data_dir`` if it is missing.
        batch_size: Samples per batch for every loader.
        augment: Random crop with 4-pixel padding and horizontal flip for training images.
        val_fraction: Fraction of the training images held out for validation, in ``[0, 1)``; 0 validates on test.
        seed: Seeds the validation split and the training-loader shuffling.
        num_workers: ``DataLoader`` worker processes (image decoding and augmentation run there).

    Raises:
        ValueError: If an argument is out of range.
        ImportError: If torchvision is not installed (at ``prepare_data``/``setup``).
        FileNotFoundError: If the files are missing and ``download=False`` (at ``prepare_data``/``setup``).

    Example::

        dm = CIFAR10DataModule(data_dir="data", download=True, batch_size=128)
        model = Classifier(arch="resnet", dims=2, in_channels=3, input_length=32, width=16, depth=3, nesterov=True)
        Trainer(max_epochs=200).fit(model, datamodule=dm)
    """

    num_classes: int = 10
    in_channels: int = 3
    input_length: int = 32
    dims: int = 2

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 128,
        augment: bool = True,
        val_fraction: float = 0.0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1) (0 validates on the test set), got {val_fraction}.")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.download = download
        self.batch_size = batch_size
        self.augment = augment
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def folder(self) -> Path:
        """The extracted data folder, ``<data_dir>/cifar-10-batches-py``."""
        return Path(self.data_dir).expanduser() / _torchvision().datasets.CIFAR10.base_folder

    def _check_files(self) -> None:
        cifar = _torchvision().datasets.CIFAR10
        expected = [name for name, _ in cifar.train_list + cifar.test_list] + [cifar.meta["filename"]]
        missing = [name for name in expected if not (self.folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 not found: {self.folder} lacks {', '.join(missing)}. Either pass download=True "
                f"(CIFAR10DataModule(data_dir={self.data_dir!r}, download=True) fetches about 170 MB), or download "
                f"{_ARCHIVE_URL} and extract it into {Path(self.data_dir).expanduser()} so that {self.folder} holds "
                "data_batch_1 ... data_batch_5, test_batch and batches.meta."
            )

    def _dataset(self, train: bool, transform: Any) -> Any:
        cifar = _torchvision().datasets.CIFAR10
        try:
            return cifar(root=str(Path(self.data_dir).expanduser()), train=train, transform=transform, download=False)
        except RuntimeError as err:  # torchvision's md5 check failed: the files are there but not the right ones
            raise RuntimeError(
                f"CIFAR-10 files in {self.folder} failed torchvision's integrity check ({err}). Delete the folder "
                "and download again (download=True)."
            ) from err

    @override
    def prepare_data(self) -> None:
        """Download (``download=True``, one process) or check that the files are there."""
        if self.download:
            root = str(Path(self.data_dir).expanduser())
            cifar = _torchvision().datasets.CIFAR10
            cifar(root=root, train=True, download=True)
            cifar(root=root, train=False, download=True)
        self._check_files()

    @override
    def setup(self, stage: str | None = None) -> None:
        """Build the train/val/test datasets with their transforms."""
        if self.train_set is not None:
            return
        self._check_files()
        transforms = _torchvision().transforms
        normalize = [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
        eval_tf = transforms.Compose(normalize)
        train_tf = eval_tf
        if self.augment:
            train_tf = transforms.Compose(
                [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), *normalize]
            )
        train_full = self._dataset(train=True, transform=train_tf)
        self.test_set = self._dataset(train=False, transform=eval_tf)
        if self.val_fraction == 0.0:
            self.train_set, self.val_set = train_full, self.test_set
            return
        num_val = max(1, round(self.val_fraction * len(train_full)))
        order = np.random.default_rng(self.seed).permutation(len(train_full)).tolist()
        # A shallow copy shares the image array and only swaps the transform (no augmentation for validation).
        val_base = copy.copy(train_full)
        val_base.transform = eval_tf
        self.train_set = Subset(train_full, order[num_val:])
        self.val_set = Subset(val_base, order[:num_val])
