"""Continual learning: TAME's loss-shift detector and multi-expert learner, and DCO's pure core.

The DCO *callback* lives in :mod:`lightning_autoopt.callbacks` (``lightning_autoopt.callbacks.DCO``);
``lightning_autoopt.continual.DCO`` still resolves to it, so older imports and YAML ``class_path`` values keep
working.
"""

from typing import Any

from lightning_autoopt.continual.buffer import ReservoirBuffer
from lightning_autoopt.continual.detector import DETECTOR_DEFAULTS, DetectorConfig, LossShiftDetector
from lightning_autoopt.continual.metrics import evaluate_tasks
from lightning_autoopt.continual.tame import TAME

__all__ = [
    "DCO",
    "DETECTOR_DEFAULTS",
    "TAME",
    "DetectorConfig",
    "LossShiftDetector",
    "ReservoirBuffer",
    "evaluate_tasks",
]


def __getattr__(name: str) -> Any:
    # Lazy, because callbacks.dco imports this package's core (an eager import here would be circular).
    if name == "DCO":
        from lightning_autoopt.callbacks.dco import DCO

        return DCO
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
