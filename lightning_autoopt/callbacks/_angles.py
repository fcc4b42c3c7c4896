"""Pure core of AutoDrop: angular velocity of a parameter trajectory, the saturation test, weighted averaging.

Nothing here knows about a ``Trainer``; every function works on plain tensors, so AutoDrop's maths can be used and
tested from plain PyTorch. The Lightning adapter is :class:`lightning_autoopt.callbacks.AutoDrop`.

Definitions (Teng, Wang & Choromanska, arXiv 2111.15317; UAI 2024):

* For three consecutive positions ``p0, p1, p2`` of the flattened trainable parameters, the displacements are
  ``d_old = p1 - p0`` and ``d_new = p2 - p1``; the angular velocity is the angle between them, in degrees:
  ``omega = degrees(arccos(clamp(<d_new, d_old> / (|d_new| |d_old| + 1e-8), -1 + 1e-16, 1 - 1e-16)))``.
* The trajectory has *saturated* when two consecutive angular velocities differ by less than ``theta`` degrees.
* At a drop, the parameters may be replaced by the linearly weighted average of the ``K`` snapshots taken since
  detection, ``sum_k k * x_k / (K (K + 1) / 2)``, kept as ONE running sum rather than ``K`` copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "ANGLE_EPS",
    "COS_CLAMP",
    "SaturationDetector",
    "all_finite",
    "angular_velocity",
    "copy_into_",
    "is_saturated",
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


def is_saturated(omega_previous: float, omega_current: float, theta: float) -> bool:
    """The AutoDrop saturation test ``|omega_current - omega_previous| < theta`` (degrees); False on NaN/inf."""
    delta = omega_current - omega_previous
    return math.isfinite(delta) and abs(delta) < theta


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


@dataclass
class SaturationDetector:
    """AutoDrop's decision logic over a stream of angular velocities (one per interval); no tensors involved.

    Call :meth:`update` once per interval with the interval's angular velocity (``None`` while fewer than three
    positions exist, ``nan`` for a bad interval). The state machine follows the reference implementation:

    1. From the second angular velocity on, the saturation test ``|omega_e - omega_{e-1}| < theta`` sets a sticky
       flag (``detected``).
    2. Every interval while the flag is set, starting with the detecting one, takes a snapshot with weight ``k``
       (``k = 1, 2, ...``; the caller adds it to the running weighted sum when ``"snapshot"`` is returned).
    3. ``patience`` intervals after the detecting one (so ``K = patience + 1`` snapshots), the drop is due: θ grows
       to ``min(theta / drop_factor, max_theta)`` when ``auto_theta``, the counters reset, ``drops`` increases.

    A non-finite angular velocity changes nothing except ``skipped``.

    Args:
        theta: Saturation threshold on ``|Δω|`` in degrees.
        patience: Intervals trained at the old LR after detection before the drop.
        drop_factor: LR multiplier per drop (only used here to grow θ).
        auto_theta: Grow θ by ``1 / drop_factor`` after each drop.
        max_theta: Cap on θ when it grows (``None``: no cap).
        max_drops: Stop detecting after this many drops (``None``: no limit).
    """

    theta: float
    patience: int
    drop_factor: float
    auto_theta: bool = True
    max_theta: float | None = None
    max_drops: int | None = None
    previous_omega: float | None = None
    detected: bool = False
    snapshots_since_detection: int = 0
    drops: int = 0
    skipped: int = 0
    history: list[float] = field(default_factory=list)

    def update(self, omega: float | None) -> tuple[str, int]:
        """Feed one interval's angular velocity; returns ``(action, snapshot_weight)`` for this interval.

        Returns:
            ``("skip", 0)`` for a non-finite ω (nothing changed but :attr:`skipped`), ``("none", 0)`` when there
            is nothing to do, ``("snapshot", k)`` when saturated (add the current parameters with weight ``k``)
            and ``("drop", patience + 1)`` when the drop is due (add the final snapshot with that weight, then
            drop the LR; θ, the counters and :attr:`drops` are already updated).
        """
        if omega is None:
            return "none", 0
        if not math.isfinite(omega):
            self.skipped += 1
            return "skip", 0
        self.history.append(omega)
        previous, self.previous_omega = self.previous_omega, omega
        exhausted = self.max_drops is not None and self.drops >= self.max_drops
        if not self.detected and not exhausted and previous is not None:
            self.detected = is_saturated(previous, omega, self.theta)
        if not self.detected:
            return "none", 0
        self.snapshots_since_detection += 1
        weight = self.snapshots_since_detection
        if weight <= self.patience:
            return "snapshot", weight
        if self.auto_theta:
            self.theta = self.theta / self.drop_factor
            if self.max_theta is not None:
                self.theta = min(self.theta, self.max_theta)
        self.drops += 1
        self.detected = False
        self.snapshots_since_detection = 0
        return "drop", weight

    def state_dict(self) -> dict:
        return {
            "theta": self.theta,
            "previous_omega": self.previous_omega,
            "detected": self.detected,
            "snapshots_since_detection": self.snapshots_since_detection,
            "drops": self.drops,
            "skipped": self.skipped,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        self.theta = float(state["theta"])
        self.previous_omega = state["previous_omega"]
        self.detected = bool(state["detected"])
        self.snapshots_since_detection = int(state["snapshots_since_detection"])
        self.drops = int(state["drops"])
        self.skipped = int(state["skipped"])
        self.history = list(state["history"])
