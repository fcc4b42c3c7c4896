"""Small reference LightningModules and the network builders used by the recipes, TAME, benchmarks and docs."""

from lightning_autoopt.models.classifier import Classifier
from lightning_autoopt.models.nets import ARCHS, build_for_input, build_network

__all__ = ["ARCHS", "Classifier", "build_for_input", "build_network"]
