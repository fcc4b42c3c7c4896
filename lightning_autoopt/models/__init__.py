"""Small reference LightningModules used by the recipes, benchmarks and docs."""

from lightning_autoopt.models.classifier import Classifier

__all__ = ["Classifier"]
