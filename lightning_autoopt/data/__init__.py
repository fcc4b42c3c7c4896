"""LightningDataModules: MNIST-1D (generated locally, the default), scikit-learn digits, CIFAR-10 (torchvision)."""

from lightning_autoopt.data.mnist1d import MNIST1DDataModule

__all__ = ["MNIST1DDataModule"]
