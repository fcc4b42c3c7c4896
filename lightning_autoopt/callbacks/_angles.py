"""Pure core of AutoDrop's geometry: angular velocity of a parameter trajectory and weighted averaging.

Nothing here knows about a ``Trainer``; every function works on plain tensors, so AutoDrop's maths can be used and
tested from plain PyTorch. The saturation tests over the angles are in :mod:`._saturation`; the Lightning adapter is
:class:`lightning_autoopt.callbacks.AutoDrop`.

Definitions (Teng, Wang & Choromanska, arXiv 2111.15317; UAI 2024):

* For three consecutive positions ``p0, p1, p2`` of the flattened trainable parameters, the displacements are
  ``d_old = p1 - p0`` and ``d_new = p2 - p1``; the angular velocity is the angle between them, in degrees:
  ``omega = degrees(arccos(clamp(<d_new, d_old> / (|d_new| |d_old| + 1e-8), -1 + 1e-16, 1 - 1e-16)))``.
* At a drop, the parameters may be replaced by the linearly weighted average of the ``K`` snapshots taken since
  detection, ``sum_k k * x_k / (K (K + 1) / 2)``, kept as ONE running sum rather than ``K`` copies (the flat-vector
  helpers, running sums and finite checks are :mod:`lightning_autoopt._flat`'s).
"""

from __future__ import annotations

import math

import torch

from lightning_autoopt._flat import chunks

__all__ = ["ANGLE_EPS", "COS_CLAMP", "angular_velocity", "linear_weight_total"]

#: Added to the product of the norms so a zero displacement gives 90 degrees instead of a division by zero.
ANGLE_EPS = 1e-8
#: Cosine clamp, as in the reference code; keeps ``arccos`` finite and away from its infinite slope.
COS_CLAMP = 1.0 - 1e-16


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
        for c0, c1, c2 in chunks(p0, p1, p2):
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


def linear_weight_total(num_snapshots: int) -> int:
    """``1 + 2 + ... + K = K (K + 1) / 2``: the weight sum of ``K`` linearly weighted snapshots."""
    return num_snapshots * (num_snapshots + 1) // 2
