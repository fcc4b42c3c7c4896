"""Continual learning: TAME's loss-shift detector and multi-expert learner, and DCO."""

from lightning_autoopt.continual.detector import LossShiftDetector

__all__ = ["LossShiftDetector"]
