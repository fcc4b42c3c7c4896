"""Lightning callbacks: one public callback per module."""

from lightning_autoopt.callbacks.autodrop import AutoDrop

__all__ = [
    "AutoDrop",
]
