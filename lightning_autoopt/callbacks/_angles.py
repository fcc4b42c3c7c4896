"""Pure core of AutoDrop's geometry: angular velocity of a parameter trajectory and weighted averaging.

Nothing here knows about a ``Trainer``; every function works on plain tensors, so AutoDrop's maths can be used and
tested from plain PyTorch. The saturation tests over the angles are in :mod:`._saturation`; the Lightning adapter is
:class:`lightning_autoopt.callbacks.AutoDrop`.

Definitions (Teng, Wang & Choromanska, arXiv 2111.15317; UAI 2024):

* For three consecutive positions ``p0, p1, p2`` of the flattened trainable parameters, the displacements are
  ``d_old = p1 - p0`` and ``d_new = p2 - p1``; the angular velocity is the angle between them, in degrees:
  ``omega = degrees(arccos(clamp(<d_new, d_old> / (|d_new| |d_old| + 1e-8), -1 + 1e-16, 1 - 1e-16)))``.
* At a drop, the parameters may be replaced by the linearly weighted average of the ``K`` snapshots taken since
  detection, ``sum_k k * x_k / (K (K + 1) / 2)``, kept as ONE running sum rather than ``K`` copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "ANGLE_EPS",
    "COS_CLAMP",
    "all_finite",
    "angular_velocity",
    "copy_into_",
    "linear_weight_total",
    "weighted_average_update_",
]

#: Added to the product of the norms so a zero displacement gives 90 degrees instead of a division by zero.
ANGLE_EPS = 1e-8
#: Cosine clamp, as in the reference code; keeps ``arccos`` finite and away from its infinite slope.
COS_CLAMP = 1.0 - 1e-16
#: Elements per chunk when reducing over parameter-sized vectors: bounds the temporary memory to a few MB.
_CHUNK = 1 << 20


def _chunks(*tensors: torch.Tensor, chunk: int = _CHUNK):  # type: ignore[no-untyped-def]
    n = tensors[0].numel()
    flat = [t.reshape(-1) for t in tensors]
    for start in range(0, n, chunk):
        yield tuple(f[start : start + chunk] for f in flat)


def angular_velocity(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, eps: float = ANGLE_EPS) -> float:
    """Angle in degrees between the displacements ``p1 - p0`` and ``p2 - p1`` of three consecutive positions.

    The reduction runs in float64 over chunks, so it costs no parameter-sized temporary and keeps small angles
    accurate even for float32 or bfloat16 positions.

    Args:
        p0: Oldest position (any shape; all three must have the same number of elements).
        p1: Middle position.
        p2: Newest position.
        eps: Added to the product of the norms (``1e-8`` as in the reference implementation).

    Returns:
        The angle in degrees in ``[0, 180]``, or ``nan`` when any input is NaN/inf (no decision may use it).

    Raises:
        ValueError: If the positions do not have the same number of elements.

    Example::

        >>> import torch
        >>> round(angular_velocity(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])), 6)
        90.0
    """
    if not (p0.numel() == p1.numel() == p2.numel()):
        raise ValueError(
            f"angular_velocity: positions must have the same number of elements, got {p0.numel()}, "
            f"{p1.numel()} and {p2.numel()}."
        )
    dot = 0.0
    sq_new = 0.0
    sq_old = 0.0
    with torch.no_grad():
        for c0, c1, c2 in _chunks(p0, p1, p2):
            c1d = c1.double()
            d_new = c2.double() - c1d
            d_old = c1d - c0.double()
            dot += float(torch.dot(d_new, d_old))
            sq_new += float(torch.dot(d_new, d_new))
            sq_old += float(torch.dot(d_old, d_old))
    if not (math.isfinite(dot) and math.isfinite(sq_new) and math.isfinite(sq_old)):
        return float("nan")
    cosine = dot / (math.sqrt(sq_new) * math.sqrt(sq_old) + eps)
    cosine = min(max(cosine, -COS_CLAMP), COS_CLAMP)
    return math.degrees(math.acos(cosine))


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite, checked chunk by chunk (no parameter-sized boolean temporary)."""
    with torch.no_grad():
        return all(bool(torch.isfinite(c).all()) for (c,) in _chunks(tensor))


def linear_weight_total(num_snapshots: int) -> int:
    """``1 + 2 + ... + K = K (K + 1) / 2``: the weight sum of ``K`` linearly weighted snapshots."""
    return num_snapshots * (num_snapshots + 1) // 2


def copy_into_(buffer: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Flatten ``tensors`` into the 1-D ``buffer`` slice by slice (no concatenated temporary); returns ``buffer``."""
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            buffer[offset : offset + n].copy_(t.detach().reshape(-1))
            offset += n
    if offset != buffer.numel():
        raise ValueError(f"copy_into_: buffer has {buffer.numel()} elements but the tensors have {offset}.")
    return buffer


def weighted_average_update_(
    running_sum: torch.Tensor, tensors: torch.Tensor | Sequence[torch.Tensor], weight: float
) -> torch.Tensor:
    """``running_sum += weight * x`` in place, where ``x`` is a flat tensor or a sequence flattened in order.

    With ``weight = k`` for the ``k``-th snapshot, ``running_sum / linear_weight_total(K)`` is the linearly weighted
    average ``sum_k k x_k / (K (K + 1) / 2)`` that AutoDrop loads at a drop; one buffer replaces ``K`` snapshots.

    Args:
        running_sum: 1-D accumulator (updated in place and returned).
        tensors: The snapshot ``x``, flat or as a sequence of tensors (e.g. ``list(model.parameters())``).
        weight: Weight of this snapshot.

    Returns:
        ``running_sum``.
    """
    parts = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    offset = 0
    with torch.no_grad():
        for t in parts:
            n = t.numel()
            running_sum[offset : offset + n].add_(t.detach().reshape(-1).to(running_sum), alpha=weight)
            offset += n
    if offset != running_sum.numel():
        raise ValueError(f"weighted_average_update_: buffer has {running_sum.numel()} elements but x has {offset}.")
    return running_sum
