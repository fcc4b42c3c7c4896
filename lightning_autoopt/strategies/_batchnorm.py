"""BatchNorm statistics for weights no replica trained with: re-estimate them on a few training batches.

An average (or a leader, or EASGD's centre) of several replicas is a model none of them ran, so the running means and
variances of its BatchNorm layers (kept per rank, or averaged with the weights) do not describe its activations; the
reference implementations re-estimate them with forward passes over training data before they evaluate. This module
is the re-estimation, for any ``nn.Module`` and any batch structure; :class:`~lightning_autoopt.strategies.
_policy.PolicyWeightsMixin` applies it to the policy weights (``bn_recompute_batches``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batchnorm_layers", "recompute_batchnorm_", "running_stats"]


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``module`` that keep running statistics (``track_running_stats=True``)."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def running_stats(layers: Sequence[_BatchNorm]) -> list[Tensor]:
    """Every layer's ``running_mean`` and ``running_var`` (the floating statistics; in a fixed order)."""
    out: list[Tensor] = []
    for m in layers:
        assert m.running_mean is not None and m.running_var is not None
        out += [m.running_mean, m.running_var]
    return out


@torch.no_grad()
def recompute_batchnorm_(
    module: nn.Module, batches: Sequence[Any], forward: Callable[[nn.Module, Any], Any], layers: Sequence[_BatchNorm]
) -> None:
    """Replace the running statistics of ``layers`` by their plain average over ``batches``, in place.

    Every other module stays in eval mode (dropout draws no random numbers, so training is not perturbed); each
    layer's ``momentum`` and ``num_batches_tracked`` are restored afterwards and every module gets its mode back,
    also on an exception.

    Args:
        module: The model (e.g. a LightningModule).
        batches: Batches already on the module's device.
        forward: ``forward(module, batch)`` runs the model on one batch.
        layers: The BatchNorm layers to re-estimate (:func:`batchnorm_layers`).
    """
    modes = [(m, m.training) for m in module.modules()]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    try:
        module.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
            m.train()
        for batch in batches:
            forward(module, batch)
    finally:
        for layer, (momentum, tracked) in zip(layers, saved):
            layer.momentum = momentum
            if tracked is not None and layer.num_batches_tracked is not None:
                layer.num_batches_tracked.copy_(tracked)
        for sub, training in modes:
            sub.training = training
