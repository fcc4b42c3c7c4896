"""Lightning callbacks: one public callback per module."""

from lightning_autoopt.callbacks.autodrop import AutoDrop
from lightning_autoopt.callbacks.dco import DCO
from lightning_autoopt.callbacks.lpf_sgd import LPFSGD
from lightning_autoopt.callbacks.sharpness import SharpnessProbe
from lightning_autoopt.callbacks.task_shift import (
    TaskShiftAwareModule,
    TaskShiftDetector,
    TaskShiftInfo,
    TaskShiftListener,
)

__all__ = [
    "DCO",
    "LPFSGD",
    "AutoDrop",
    "SharpnessProbe",
    "TaskShiftAwareModule",
    "TaskShiftDetector",
    "TaskShiftInfo",
    "TaskShiftListener",
]
