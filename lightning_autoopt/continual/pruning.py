"""Global magnitude pruning of Linear/Conv weights with ``torch.nn.utils.prune`` (TAME's selector and experts)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(modules: Sequence[nn.Module]) -> list[tuple[nn.Module, str]]:
    """``(layer, "weight")`` for every Linear/Conv layer inside ``modules``."""
    return [(m, "weight") for module in modules for m in module.modules() if isinstance(m, _PRUNABLE)]


def global_magnitude_prune(modules: Sequence[nn.Module], amount: float) -> None:
    """Zero the ``amount`` fraction of smallest-magnitude Linear/Conv weights, ranked jointly over ``modules``.

    The masks stay attached (``weight_orig`` * ``weight_mask``) so fine-tuning keeps pruned weights at zero; call
    :func:`make_pruning_permanent` afterwards.

    Raises:
        ValueError: If ``amount`` is not in ``[0, 1)`` or there is nothing to prune.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"`amount` must be in [0, 1), got {amount}.")
    params = prunable_weights(modules)
    if not params:
        raise ValueError("No Linear/Conv layer to prune.")
    if amount > 0:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(amount))


def make_pruning_permanent(modules: Sequence[nn.Module]) -> None:
    """Fold every pruning mask into its weight (``prune.remove``), restoring plain ``weight`` parameters."""
    for layer, name in prunable_weights(modules):
        if prune.is_pruned(layer) and hasattr(layer, name + "_orig"):
            prune.remove(layer, name)


def sparsity(modules: Sequence[nn.Module]) -> float:
    """Fraction of exactly-zero Linear/Conv weights in ``modules``."""
    zeros = total = 0
    for layer, name in prunable_weights(modules):
        weight: torch.Tensor = getattr(layer, name)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / max(total, 1)
