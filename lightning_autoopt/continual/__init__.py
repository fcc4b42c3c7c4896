"""Continual learning: TAME's loss-shift detector and multi-expert learner, and DCO."""

from lightning_autoopt.continual.buffer import ReservoirBuffer
from lightning_autoopt.continual.dco import DCO
from lightning_autoopt.continual.detector import LossShiftDetector
from lightning_autoopt.continual.tame import TAME

__all__ = ["DCO", "TAME", "LossShiftDetector", "ReservoirBuffer"]
