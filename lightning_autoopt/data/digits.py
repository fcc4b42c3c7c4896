"""scikit-learn's 8×8 handwritten digits as a LightningDataModule (shipped with scikit-learn, no download)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset
from typing_extensions import override

from lightning_autoopt.data._sampling import SplitLoadersMixin, check_loader_args, check_split_fractions


class DigitsDataModule(SplitLoadersMixin):
    """The 1 797 8×8 grey-scale digits of ``sklearn.datasets.load_digits`` (UCI optdigits test set), 10 classes.

    The samples are shuffled with ``seed`` and cut into train / val / test; pixel values (0..16) are standardised
    with the mean and standard deviation of the *training* pixels (one scalar each, so blank border pixels stay
    uniform instead of dividing by a zero per-pixel deviation).

    Batches are ``(x, y)`` with ``x`` float32 of shape ``(B, 1, 64)`` (rows flattened into one 64-step signal, so the
    1-D nets of :class:`~lightning_autoopt.models.Classifier` apply with ``input_length=64``) or, with
    ``image=True``, ``(B, 1, 8, 8)`` (use ``Classifier(dims=2, input_length=8)``); ``y`` is int64 in ``0..9``.
    The attributes ``num_classes``, ``in_channels``, ``input_length`` and ``dims`` describe the batches.

    Measured (2026-11-23, one CPU thread): ``Classifier(arch="cnn", scheduler="cosine")`` with defaults otherwise,
    20 epochs, reaches 98.1 % test accuracy on the signals and 98.3 % on the images (``image=True``, ``dims=2``),
    about 20 s each.

    Args:
        batch_size: Samples per batch for every loader.
        seed: Seeds the split and the training-loader shuffling.
        val_fraction: Fraction of the samples used for validation, in ``(0, 1)``.
        test_fraction: Fraction of the samples used for testing, in ``(0, 1)``; ``val_fraction + test_fraction < 1``.
        image: Yield ``(B, 1, 8, 8)`` images instead of ``(B, 1, 64)`` signals.
        num_workers: ``DataLoader`` worker processes.

    Raises:
        ValueError: If an argument is out of range (the message names it).

    Example::

        dm = DigitsDataModule(batch_size=64)
        model = Classifier(arch="cnn", input_length=64)
        Trainer(max_epochs=20).fit(model, datamodule=dm)
    """

    num_classes: int = 10
    in_channels: int = 1
    num_samples: int = 1797

    def __init__(
        self,
        batch_size: int = 64,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        image: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        check_split_fractions(val_fraction, test_fraction)
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.seed = seed
        self.image = image
        self.num_workers = num_workers
        self.input_length = 8 if image else 64
        self.dims = 2 if image else 1
        self.num_test = round(test_fraction * self.num_samples)
        self.num_val = round(val_fraction * self.num_samples)
        self.num_train = self.num_samples - self.num_test - self.num_val
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    @override
    def setup(self, stage: str | None = None) -> None:
        """Load the digits from scikit-learn's package data, shuffle, split and standardise them."""
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

        bunch = load_digits()
        x = np.asarray(bunch.data, dtype=np.float32)  # (1797, 64), values 0..16
        y = np.asarray(bunch.target, dtype=np.int64)
        order = np.random.default_rng(self.seed).permutation(len(y))
        x, y = x[order], y[order]
        a, b = self.num_train, self.num_train + self.num_val
        mean, std = float(x[:a].mean()), float(x[:a].std())
        x = (x - mean) / std
        shape = (-1, 1, 8, 8) if self.image else (-1, 1, 64)
        xt, yt = torch.from_numpy(x).reshape(shape), torch.from_numpy(y)
        self.train_set = TensorDataset(xt[:a], yt[:a])
        self.val_set = TensorDataset(xt[a:b], yt[a:b])
        self.test_set = TensorDataset(xt[b:], yt[b:])
