"""Lightning callbacks: one public callback per module."""

from lightning_autoopt.callbacks.autodrop import AutoDrop
from lightning_autoopt.callbacks.lpf_sgd import LPFSGD
from lightning_autoopt.callbacks.sharpness import SharpnessProbe
from lightning_autoopt.callbacks.task_shift import TaskShiftDetector

__all__ = [
    "AutoDrop",
    "LPFSGD",
    "SharpnessProbe",
    "TaskShiftDetector",
]
