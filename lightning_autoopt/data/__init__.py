"""LightningDataModules: MNIST-1D (generated locally, the default), scikit-learn digits, CIFAR-10 (torchvision)."""

from lightning_autoopt.data.cifar import CIFAR10DataModule
from lightning_autoopt.data.digits import DigitsDataModule
from lightning_autoopt.data.mnist1d import MNIST1DDataModule
from lightning_autoopt.data.regression import Friedman1DataModule
from lightning_autoopt.data.streams import TaskStreamDataModule
from lightning_autoopt.data.text import CharTextDataModule

__all__ = [
    "CIFAR10DataModule",
    "CharTextDataModule",
    "DigitsDataModule",
    "Friedman1DataModule",
    "MNIST1DDataModule",
    "TaskStreamDataModule",
]
