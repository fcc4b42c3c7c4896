"""Filter normalisation: a function-preserving reparametrisation that makes sharpness scale-invariant."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from lightning_autoopt import _flat

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SCALE = "_filter_scale"


def _unit_scales(module: nn.Module) -> Tensor | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        return None
    bias = getattr(module, "bias", None)
    rows = weight.detach().reshape(weight.shape[0], -1)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        scale = rows.abs().sum(dim=1)  # |γ_i|
    else:
        scale = rows.norm(dim=1)  # ‖W_i‖₂
    if isinstance(bias, Tensor):
        scale = scale + bias.detach().abs()
    # a dead unit (all zeros) is left alone instead of dividing by zero
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _rescale_output(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    scale: Tensor = getattr(module, _SCALE)
    if isinstance(module, nn.Linear):
        return output * scale
    return output * scale.view(1, -1, *([1] * (output.ndim - 2)))


def filter_normalized_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` computing the same function, with every unit's parameters scaled to "norm" 1.

    For each ``Linear``/``Conv`` layer, output unit i gets p_i = ‖W_i‖₂ + |b_i| and (W_i, b_i) ← (W_i, b_i)/p_i; for
    each ``BatchNorm``, p_i = |γ_i| + |β_i| and (γ_i, β_i) ← (γ_i, β_i)/p_i. The removed scale p is stored as a
    non-parameter buffer and multiplied back onto the layer's output by a forward hook, so the copy's outputs equal
    the original's (up to rounding) while perturbations, HVPs and norms act on the normalised parameters (the LPF-SGD
    reference's ``model.norm()``, generalised to any module tree). BatchNorm must be in eval mode for exactness,
    which every landscape measure uses. The original model is never modified; a LightningModule's trainer
    reference is shared, not copied.

    Args:
        model: The module to copy.

    Returns:
        The normalised copy (same ``training`` flags, same device).

    Example::

        normed = filter_normalized_copy(model)
        torch.testing.assert_close(normed.eval()(x), model.eval()(x))
    """
    memo: dict[int, Any] = {}
    trainer = getattr(model, "_trainer", None)
    if trainer is not None:
        memo[id(trainer)] = trainer
    clone = copy.deepcopy(model, memo)
    with torch.no_grad():
        for module in clone.modules():
            if not isinstance(module, _LAYERS) or hasattr(module, _SCALE):
                continue
            scale = _unit_scales(module)
            if scale is None:
                continue
            weight: Tensor = module.weight  # type: ignore[assignment]
            weight.div_(scale.view(-1, *([1] * (weight.ndim - 1))))
            if isinstance(module.bias, Tensor):
                module.bias.div_(scale)
            module.register_buffer(_SCALE, scale.clone(), persistent=False)
            module.register_forward_hook(_rescale_output)
    return clone


def filter_scales(model: nn.Module) -> dict[str, Tensor]:
    """The per-element divisors :func:`filter_normalized_copy` would apply, keyed by parameter name.

    Useful to carry another weight vector (e.g. the initial weights for PAC-Bayes) into the normalised coordinates.
    Parameters that are not normalised get a divisor of 1.
    """
    out: dict[str, Tensor] = {}
    for mod_name, module in model.named_modules():
        scale = _unit_scales(module) if isinstance(module, _LAYERS) else None
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if scale is not None and p_name in ("weight", "bias"):
                out[full] = scale.view(-1, *([1] * (p.ndim - 1))).expand_as(p).clone()
            else:
                out[full] = torch.ones_like(p)
    return out


def to_normalized_coordinates(model: nn.Module, flat: Tensor) -> Tensor:
    """Carry a flat vector in the layout of ``model``'s trainable parameters into filter-normalised coordinates.

    Divides element-wise by :func:`filter_scales`, i.e. applies to ``flat`` the rescaling
    :func:`filter_normalized_copy` applies to the weights (e.g. the initial weights θ₀ of PAC-Bayes, so that
    ``θ − θ₀`` is measured in the same coordinates as the normalised θ).

    Returns:
        A new tensor on the scales' device and dtype.
    """
    scales = filter_scales(model)
    divisor = _flat.flatten([scales[n] for n, p in model.named_parameters() if p.requires_grad])
    return flat.reshape(-1).to(divisor) / divisor
