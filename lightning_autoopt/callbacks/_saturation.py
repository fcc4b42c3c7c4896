"""Pure core of AutoDrop's decisions: saturation tests over a stream of angular velocities, and the drop logic.

Nothing here touches tensors or a ``Trainer``: the inputs are floats (one angular velocity ω per decision), so the
logic can be replayed offline on recorded traces (``benchmarks/autodrop_replay.py``) and tested on synthetic series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SATURATION_TESTS", "SaturationDetector", "is_saturated_reference", "mann_kendall_z", "trend_statistic"]

#: The saturation tests :class:`SaturationDetector` knows.
SATURATION_TESTS = ("trend", "reference")


def trend_statistic(values: Sequence[float]) -> float:
    r"""Least-squares slope of ``values`` against their index, divided by its standard error (a t statistic).

    For ``n >= 3`` equally spaced values ``y_i`` (``i = 0..n-1``), the ordinary-least-squares slope is
    ``b = Σ (i − ī)(y_i − ȳ) / S_xx`` with ``S_xx = n (n² − 1) / 12``; its standard error is
    ``SE(b) = sqrt(Σ r_i² / (n − 2) / S_xx)`` where ``r_i`` are the residuals of the fitted line. The result
    ``b / SE(b)`` has no unit: multiplying the values by a constant or adding one leaves it unchanged, so a test
    on it needs no threshold in degrees.

    Args:
        values: At least three finite numbers, oldest first.

    Returns:
        ``b / SE(b)``; ``±inf`` for a perfect non-flat line and ``0.0`` for a constant series.

    Raises:
        ValueError: If fewer than three values are given.

    Example::

        >>> round(trend_statistic([1.0, 2.0, 2.9, 4.1]), 2)
        24.04
        >>> trend_statistic([5.0, 5.0, 5.0])
        0.0
    """
    n = len(values)
    if n < 3:
        raise ValueError(f"trend_statistic needs at least 3 values, got {n}.")
    x_mean = (n - 1) / 2.0
    y_mean = math.fsum(values) / n
    s_xx = n * (n * n - 1) / 12.0
    s_xy = math.fsum((i - x_mean) * (y - y_mean) for i, y in enumerate(values))
    slope = s_xy / s_xx
    ssr = math.fsum((y - y_mean - slope * (i - x_mean)) ** 2 for i, y in enumerate(values))
    # Residuals below round-off of the values are zero: treat the series as an exact line.
    scale = max(abs(y) for y in values)
    if ssr <= (1e-12 * max(scale, 1e-300)) ** 2 * n:
        return 0.0 if abs(slope) * n <= 1e-12 * max(scale, 1e-300) else math.copysign(math.inf, slope)
    return slope / math.sqrt(ssr / (n - 2) / s_xx)


def mann_kendall_z(values: Sequence[float]) -> float:
    r"""Mann–Kendall trend statistic of ``values``: ``S / sqrt(Var S)`` with ``S = Σ_{i<j} sign(y_j − y_i)``.

    ``Var S = n (n − 1) (2n + 5) / 18`` (no ties; a tie counts 0 in ``S``). The statistic depends only on the
    order of the values, so it is unchanged by any increasing transformation of them (a unit, an offset, a
    compression of large angles) and one outlier moves it by at most ``2 (n − 1) / sqrt(Var S)``.

    Args:
        values: At least three numbers, oldest first.

    Returns:
        The standardised statistic: about ``N(0, 1)`` for a trendless series, large and positive for a rise.

    Raises:
        ValueError: If fewer than three values are given.

    Example::

        >>> round(mann_kendall_z([1.0, 2.0, 3.0, 4.0]), 3)  # S = 6 of at most 6
        2.038
        >>> round(mann_kendall_z([2.0, 1.0, 2.0, 1.0]), 3)  # S = -2
        -0.679
    """
    n = len(values)
    if n < 3:
        raise ValueError(f"mann_kendall_z needs at least 3 values, got {n}.")
    s = 0
    for i in range(n - 1):
        yi = values[i]
        for j in range(i + 1, n):
            s += (values[j] > yi) - (values[j] < yi)
    return s / math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)


def is_saturated_reference(omega_previous: float, omega_current: float, theta: float) -> bool:
    """The paper's test ``|omega_current - omega_previous| < theta`` (degrees); False on NaN/inf."""
    delta = omega_current - omega_previous
    return math.isfinite(delta) and abs(delta) < theta


@dataclass
class SaturationDetector:
    """AutoDrop's decision logic over a stream of angular velocities (one per decision); no tensors involved.

    Call :meth:`update` once per decision with that decision's angular velocity ω (``None`` while fewer than three
    positions exist, ``nan`` for a bad interval). Two saturation tests:

    * ``"trend"`` (default): the ω values since the last reset (the start, or the last drop) are kept and, once
      there are ``window`` of them, the trend of the last ``window`` values is tested with the Mann–Kendall
      statistic ``z`` (:func:`mann_kendall_z`). ω must first be seen *rising* (``z > threshold``: the test is
      *armed*), and is then saturated as soon as the trend is no longer significant (``|z| < threshold``): the
      "rises, then levels off" of the paper, read with a statistic that depends only on the order of the values.
      It does not depend on the level or jitter of ω (nor on any increasing transformation of it), so one
      threshold works for any model size and interval length, and a single outlier cannot fake a level-off.
      Arming stops the test from firing on the jitter of the first decisions (ω often dips before it rises).
      After each drop the values are cleared (:attr:`resets_on_drop`): positions straddling a drop (and the
      weighted average loaded there) make ω spike, and the test restarts on the new LR's curve. The arming is
      cleared too only with ``rearm_after_drop=True``; by default the rise is needed before the first drop only.
    * ``"reference"``: the paper's rule (Teng, Wang & Choromanska): saturated when two consecutive ω differ by less
      than ``threshold`` degrees (θ); after each drop θ grows to ``min(θ / drop_factor, max_theta)`` with
      ``auto_theta``. Nothing is reset at a drop, as in the reference code.

    Either way, the first saturated decision sets a sticky flag; that decision and the next ``patience`` ones each
    take a snapshot with weight ``k = 1, 2, ...`` (the caller adds it to the running weighted sum), and the last one
    is the drop. A non-finite ω changes nothing except :attr:`skipped`.

    Args:
        saturation: ``"trend"`` or ``"reference"``.
        threshold: ``"trend"``: bound on ``|t|``; ``"reference"``: θ in degrees.
        window: ``"trend"``: number of most recent ω values tested (at least 3).
        patience: Decisions trained at the old LR after saturation is detected, before the drop.
        drop_factor: LR multiplier per drop (used here only to grow θ in ``"reference"`` mode).
        auto_theta: ``"reference"``: grow θ by ``1 / drop_factor`` after each drop.
        max_theta: ``"reference"``: cap on the growing θ (``None``: no cap).
        max_drops: Stop detecting after this many drops (``None``: no limit).
        rearm_after_drop: ``"trend"``: after a drop, ω must again be seen rising (``z > threshold``) before the
            test can fire. ``False`` (default): only the first drop needs the rise (the test is armed from the start
            of every later cycle; the window is still cleared).

    Example::

        >>> det = SaturationDetector(window=5, patience=1)
        >>> [det.update(w)[0] for w in (10.0, 30.0, 50.0, 70.0, 90.0, 80.0, 95.0, 85.0)]  # armed at 90 (z = 2.45)
        ['none', 'none', 'none', 'none', 'none', 'snapshot', 'drop', 'none']
    """

    saturation: str = "trend"
    threshold: float = 2.0
    window: int = 10
    patience: int = 5
    drop_factor: float = 0.2
    auto_theta: bool = True
    max_theta: float | None = None
    max_drops: int | None = None
    rearm_after_drop: bool = False
    values: list[float] = field(default_factory=list)  # ω since the last reset (trend) / the last two (reference)
    armed: bool = False  # trend: a significant rise was seen since the last reset
    detected: bool = False
    snapshots_since_detection: int = 0
    drops: int = 0
    skipped: int = 0
    statistic: float | None = None  # of the last update only (None: too few values); not part of the state

    def __post_init__(self) -> None:
        if self.saturation not in SATURATION_TESTS:
            raise ValueError(f"`saturation` must be one of {SATURATION_TESTS}, got {self.saturation!r}.")
        if self.window < 3:
            raise ValueError(f"`window` must be an int >= 3 (a trend needs 3 points), got {self.window!r}.")

    @property
    def resets_on_drop(self) -> bool:
        """Whether a drop clears the ω window (and the caller's positions): True for the trend test."""
        return self.saturation == "trend"

    def current_statistic(self) -> float | None:
        """The test statistic over the current values (``None`` while there are too few)."""
        if self.saturation == "reference":
            if len(self.values) < 2:
                return None
            return abs(self.values[-1] - self.values[-2])
        if len(self.values) < self.window:
            return None
        return mann_kendall_z(self.values[-self.window :])

    def is_saturated(self, statistic: float | None) -> bool:
        """Whether a statistic passes the test (``|t| < threshold`` or ``|Δω| < θ``); False for ``None``/NaN."""
        return statistic is not None and math.isfinite(statistic) and abs(statistic) < self.threshold

    def update(self, omega: float | None) -> tuple[str, int]:
        """Feed one decision's angular velocity; returns ``(action, snapshot_weight)`` for this decision.

        Returns:
            ``("skip", 0)`` for a non-finite ω (nothing changed but :attr:`skipped`), ``("none", 0)`` when there
            is nothing to do, ``("snapshot", k)`` while saturated (add the current parameters with weight ``k``)
            and ``("drop", patience + 1)`` when the drop is due (add the final snapshot with that weight, then
            drop the LR; θ, the counters, the window and :attr:`drops` are already updated).
        """
        self.statistic = None
        if omega is None:
            return "none", 0
        if not math.isfinite(omega):
            self.skipped += 1
            return "skip", 0
        self.values.append(float(omega))
        if self.saturation == "reference" and len(self.values) > 2:
            del self.values[:-2]  # the reference test only ever looks at the last two values
        exhausted = self.max_drops is not None and self.drops >= self.max_drops
        self.statistic = self.current_statistic()  # also during patience, so a plot shows the whole curve
        if not self.detected and not exhausted:
            if self.saturation == "trend" and not self.armed:
                # Saturation needs a rise first: a significant upward trend arms the test.
                self.armed = self.statistic is not None and self.statistic > self.threshold
            else:
                self.detected = self.is_saturated(self.statistic)
        if not self.detected:
            return "none", 0
        self.snapshots_since_detection += 1
        weight = self.snapshots_since_detection
        if weight <= self.patience:
            return "snapshot", weight
        if self.saturation == "reference" and self.auto_theta:
            self.threshold = self.threshold / self.drop_factor
            if self.max_theta is not None:
                self.threshold = min(self.threshold, self.max_theta)
        if self.resets_on_drop:
            self.values.clear()
            self.armed = not self.rearm_after_drop
        self.drops += 1
        self.detected = False
        self.snapshots_since_detection = 0
        return "drop", weight

    def state_dict(self) -> dict[str, Any]:
        return {
            "saturation": self.saturation,
            "threshold": self.threshold,
            "values": list(self.values),
            "armed": self.armed,
            "detected": self.detected,
            "snapshots_since_detection": self.snapshots_since_detection,
            "drops": self.drops,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("saturation", self.saturation) != self.saturation:
            raise ValueError(
                f"AutoDrop: the checkpoint was written with saturation={state['saturation']!r} but this callback uses "
                f"saturation={self.saturation!r}; resume with the same setting."
            )
        self.threshold = float(state["threshold"])
        self.values = [float(v) for v in state["values"]]
        self.armed = bool(state.get("armed", False))
        self.detected = bool(state["detected"])
        self.snapshots_since_detection = int(state["snapshots_since_detection"])
        self.drops = int(state["drops"])
        self.skipped = int(state["skipped"])
