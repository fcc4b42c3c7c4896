"""Pure maths of gradient-based weighted averaging (GRAWA, MGRAWA, LGRAWA) on flat buffers (no collectives).

Weights are inversely proportional to a power of each worker's gradient norm:
``w_m = (||g_m|| + eps)^-q / sum_k (||g_k|| + eps)^-q`` (per layer for LGRAWA). The centre is
``x_C = sum_m w_m x_m`` (the sum of every worker's :func:`weighted_term`, one all-reduce) and each worker is pulled
``x_m <- x_m - pull_strength * (x_m - x_C)`` (:func:`lightning_autoopt.strategies._comm.leader_pull_`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def grawa_weights(
    norms: torch.Tensor, exponent: float = 1.0, eps: float = 1e-8, include: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalised inverse-gradient-norm weights across workers.

    Computed as ``r_m = ((n_min + eps) / (n_m + eps))^q`` and ``w_m = r_m / sum_k r_k`` in float64, which equals
    the formula above but makes equal norms give ``r_m = 1`` and therefore weights of *exactly* ``1/M`` (plain
    averaging). A non-finite norm gets weight 0 (a diverged worker never attracts the others); so does a worker
    left out by ``include`` (a non-finite replica). If no included worker has a finite norm in a column, the
    weights fall back to uniform over the included workers (``1/M`` when all are).

    Args:
        norms: shape ``(M,)`` (model level) or ``(M, L)`` (one column per layer).
        exponent: ``q`` (1 = "inversely proportional", the reading of the paper abstract; 2 is the other reading).
        eps: guard added to every norm (a zero-gradient worker would otherwise get an infinite weight).
        include: boolean ``(M,)``: which workers may get weight (default: all). At least one must be included.

    Returns:
        float64 weights of the same shape whose columns sum to 1.

    Example::

        >>> grawa_weights(torch.tensor([1.0, 1.0, 1.0, 1.0])).tolist()
        [0.25, 0.25, 0.25, 0.25]
        >>> grawa_weights(torch.tensor([1.0, 1.0, 1.0, 1.0]), include=torch.tensor([True, False, True, True])).tolist()
        [0.3333333333333333, 0.0, 0.3333333333333333, 0.3333333333333333]
        >>> grawa_weights(torch.tensor([1.0, 3.0]), eps=0.0).tolist()
        [0.75, 0.25]
    """
    n = norms.detach().to(torch.float64)
    member = torch.ones(n.shape[0], dtype=torch.bool) if include is None else include.detach().cpu().to(torch.bool)
    member = member.reshape(-1, *([1] * (n.dim() - 1))).to(n.device).expand_as(n)
    finite = torch.isfinite(n) & member
    n = torch.where(finite, n + eps, torch.ones_like(n))
    ref = torch.where(finite, n, torch.full_like(n, math.inf)).amin(dim=0, keepdim=True)
    ratio = torch.where(finite, (ref / n).pow(exponent), torch.zeros_like(n))
    total = ratio.sum(dim=0, keepdim=True)
    members = member.to(torch.float64)
    uniform = members / members.sum(dim=0, keepdim=True)
    out = torch.where(total > 0, ratio / torch.where(total > 0, total, torch.ones_like(total)), uniform)
    return out


def layer_norms(grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """L2 norm of every gradient tensor (``None`` counts as 0), as a float64 vector."""
    norms = [
        torch.zeros((), dtype=torch.float64) if g is None else torch.linalg.vector_norm(g.detach().to(torch.float64))
        for g in grads
    ]
    if not norms:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([n.cpu() for n in norms]) if len({n.device for n in norms}) > 1 else torch.stack(norms).cpu()


def model_norm(per_layer: torch.Tensor) -> torch.Tensor:
    """Model-level norm from per-layer norms: ``sqrt(sum_l ||g_l||^2)``."""
    return per_layer.pow(2).sum().sqrt().reshape(1)


def scale_segments_(flat: torch.Tensor, sizes: Sequence[int], factors: torch.Tensor) -> torch.Tensor:
    """Multiply consecutive segments of ``flat`` (lengths ``sizes``) by ``factors`` in place."""
    if len(sizes) != factors.numel():
        raise ValueError(f"Got {len(sizes)} segments but {factors.numel()} factors.")
    offset = 0
    for size, f in zip(sizes, factors.tolist()):
        flat[offset : offset + size].mul_(f)
        offset += size
    return flat


def weighted_term(flat: torch.Tensor, my_weights: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """This worker's term ``w_m x_m`` of the centre ``x_C = sum_m w_m x_m`` (a new tensor; ``flat`` is not modified).

    Summing the terms over the workers (one all-reduce, :func:`lightning_autoopt.strategies._comm.all_reduce_sum_`)
    gives the centre.

    Args:
        flat: this worker's flat parameters.
        my_weights: this worker's weight: one element (model level) or one per segment (layer level).
        sizes: segment lengths for the layer level (required when ``my_weights`` has more than one element).

    Raises:
        ValueError: If per-segment weights come without ``sizes``.
    """
    term = flat.detach().clone()
    if my_weights.numel() == 1:
        return term.mul_(float(my_weights.reshape(())))
    if sizes is None:
        raise ValueError("`sizes` is required for per-layer weights.")
    return scale_segments_(term, sizes, my_weights)
