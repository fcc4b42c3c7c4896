"""TAME's statistical task-shift test on a stream of training losses (pure Python, no Trainer).

The test (TAME, Zhu et al. 2022, spec B4): an exponential moving average (EMA) of the loss is compared against a
threshold built from a window of recent losses, ``mean(window) + k * max(std(window), std_floor)`` (population
std). The window only holds losses of batches the model *trained on* while the current task was active, so the
threshold describes the loss of the current task; a loss that rises far above it marks a new task.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of the task-shift test, stated once for the detector, the callback and TAME.

    :class:`LossShiftDetector` takes a config; :class:`~lightning_autoopt.callbacks.TaskShiftDetector` and
    :class:`~lightning_autoopt.continual.TAME` take the same names as ``__init__`` arguments (YAML-friendly), with
    the defaults of :data:`DETECTOR_DEFAULTS`, and build one.

    Attributes:
        window: Number of recent trained-on losses that define the threshold (TAME split-MNIST: 35).
        ema_alpha: Weight of the newest loss in the EMA, ``s <- alpha * loss + (1 - alpha) * s`` (TAME: 0.2).
        k_sigma: Number of standard deviations above the window mean that counts as a shift (TAME: 3).
        std_floor: Lower bound on the window's std, so a very flat loss does not make the test hair-trigger
            (TAME: 0.005).
        min_history: The test stays silent until the window holds at least this many losses (after a start or a
            shift). TAME's code tests from the first batch; a few batches of warm-up avoid firing on the noisy
            first steps of a new task. Use 1 to reproduce the reference. ``None`` (default) = ``min(5, window)``,
            so a small ``window`` never conflicts with it (see :attr:`resolved_min_history`).
        initial_loss: Seed of the window and the EMAs, e.g. ``ln(num_classes)`` (the loss of a uniform guess), as
            TAME does for a fresh expert. ``None`` seeds them with the first finite loss seen instead.
        lag: A recorded loss joins the window only ``lag`` records later. In TAME's code (``lag=0``) the first
            losses of a new task enter the window at once and raise the threshold faster than the EMA (alpha 0.2)
            rises, so a jump smaller than about ``5 * k * std`` can go unseen (measured: permuted MNIST-1D with an
            MLP misses every boundary). With a lag, the EMA has ``lag`` batches to climb above a threshold that
            still describes the old task; a jump of about ``1.2 * k * std`` is then detected within ``lag`` batches.

    Raises:
        ValueError: If a setting is out of range (the message names it).

    Example::

        config = DetectorConfig(window=35, lag=0)
        detector = LossShiftDetector(config)
    """

    window: int = 35
    ema_alpha: float = 0.2
    k_sigma: float = 3.0
    std_floor: float = 0.005
    min_history: int | None = None
    initial_loss: float | None = None
    lag: int = 10

    def __post_init__(self) -> None:
        window, min_history, lag = self.window, self.min_history, self.lag
        if int(window) != window or window < 2:
            raise ValueError(f"`window` must be an integer >= 2, got {window!r}.")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"`ema_alpha` must be in (0, 1], got {self.ema_alpha!r}.")
        if not self.k_sigma > 0.0:
            raise ValueError(f"`k_sigma` must be > 0, got {self.k_sigma!r}.")
        if not self.std_floor >= 0.0:
            raise ValueError(f"`std_floor` must be >= 0, got {self.std_floor!r}.")
        if min_history is not None and (int(min_history) != min_history or not 1 <= min_history <= window):
            raise ValueError(
                f"`min_history` must be None (= min(5, window)) or an integer in [1, window={window}], "
                f"got {min_history!r}."
            )
        if int(lag) != lag or lag < 0:
            raise ValueError(f"`lag` must be an integer >= 0 (0 = TAME's code), got {lag!r}.")
        if self.initial_loss is not None and not math.isfinite(self.initial_loss):
            raise ValueError(f"`initial_loss` must be finite or None, got {self.initial_loss!r}.")

    @property
    def resolved_min_history(self) -> int:
        """The warm-up actually used: ``min_history``, or ``min(5, window)`` when it is ``None``."""
        return min(5, int(self.window)) if self.min_history is None else int(self.min_history)

    @classmethod
    def pick(cls, values: Mapping[str, Any], **overrides: Any) -> DetectorConfig:
        """The config of the settings found in ``values`` (e.g. a caller's ``locals()``), plus ``overrides``.

        Example::

            self.config = DetectorConfig.pick(locals())  # in an __init__ taking window, ema_alpha, ...
        """
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in values.items() if k in names}, **overrides})


DETECTOR_DEFAULTS = DetectorConfig()
"""The default settings; callers' signatures take their defaults from here so they are stated once."""


class LossShiftDetector:
    """Detects a task shift as a statistically significant rise of the (smoothed) training loss.

    Two ways to use it:

    * single model (the :class:`~lightning_autoopt.callbacks.TaskShiftDetector` callback): call :meth:`update` with
      each batch's loss; it returns ``True`` on a shift and then restarts its statistics on the new task;
    * one detector per expert (the TAME learner): :meth:`observe` every batch, :meth:`exceeds` to test,
      :meth:`record` after the expert trained on a batch, :meth:`fits` / :meth:`reactivate` to re-use an expert.

    Args:
        config: The test's settings (default: :data:`DETECTOR_DEFAULTS`).
        **settings: Fields of :class:`DetectorConfig` overriding ``config`` (``window=35, lag=0``, ...).

    Raises:
        ValueError: If a setting is out of range.
        TypeError: If a setting has an unknown name.

    Example::

        detector = LossShiftDetector(window=35, ema_alpha=0.2)
        for loss in losses:
            if detector.update(loss):
                print("new task at", detector.steps)
    """

    def __init__(self, config: DetectorConfig | None = None, **settings: Any) -> None:
        config = replace(config or DETECTOR_DEFAULTS, **settings)
        self.config = config
        self.window_size = int(config.window)
        self.ema_alpha = float(config.ema_alpha)
        self.k_sigma = float(config.k_sigma)
        self.std_floor = float(config.std_floor)
        self.min_history = config.resolved_min_history
        self.initial_loss = config.initial_loss
        self.lag = int(config.lag)
        self.window: deque[float] = deque(maxlen=self.window_size)
        self.pending: deque[float] = deque()  # recorded losses waiting `lag` records to join the window
        self.smoothed: float | None = None  # EMA over every batch observed (TAME: all_smoothed)
        self.active_smoothed: float | None = None  # EMA over trained-on batches only
        self.threshold: float = math.inf
        self.steps = 0  # finite losses observed
        self.num_shifts = 0
        self.num_nonfinite = 0
        self.last_shift: dict[str, float] = {}
        self.reset(self.initial_loss)

    # ------------------------------------------------------------------ primitives (per-expert use)
    def reset(self, seed_loss: float | None = None) -> None:
        """Forget the window and the EMAs; seed them with ``seed_loss`` if given (counters are kept)."""
        self.window.clear()
        self.pending.clear()
        self.smoothed = self.active_smoothed = None
        self.threshold = math.inf
        if seed_loss is not None:
            self.smoothed = self.active_smoothed = float(seed_loss)
            self.window.append(float(seed_loss))
            self._refresh_threshold()

    def _ema(self, previous: float | None, loss: float) -> float:
        return loss if previous is None else self.ema_alpha * loss + (1.0 - self.ema_alpha) * previous

    def _refresh_threshold(self) -> None:
        n = len(self.window)
        mean = sum(self.window) / n
        std = math.sqrt(max(sum((v - mean) ** 2 for v in self.window) / n, 0.0))
        self.threshold = mean + self.k_sigma * max(std, self.std_floor)

    def observe(self, loss: float) -> bool:
        """Update the all-batches EMA with ``loss``; returns ``False`` (and counts it) if the loss is NaN/inf."""
        loss = float(loss)
        if not math.isfinite(loss):
            self.num_nonfinite += 1
            return False
        self.steps += 1
        self.smoothed = self._ema(self.smoothed, loss)
        return True

    def exceeds(self) -> bool:
        """Whether the all-batches EMA is above the threshold (silent until ``min_history`` losses are recorded)."""
        if self.smoothed is None or len(self.window) < self.min_history:
            return False
        return self.smoothed > self.threshold

    def record(self, loss: float) -> None:
        """Add the (pre-update) loss of a batch the model trained on: window, active EMA and threshold."""
        loss = float(loss)
        if not math.isfinite(loss):
            return
        self.pending.append(loss)
        self.active_smoothed = self._ema(self.active_smoothed, loss)
        if len(self.pending) > self.lag:
            self.window.append(self.pending.popleft())
            self._refresh_threshold()

    def tentative(self, loss: float) -> float:
        """The active EMA this loss would give: ``alpha * loss + (1 - alpha) * active_smoothed``."""
        return self._ema(self.active_smoothed, float(loss))

    def fits(self, loss: float) -> bool:
        """Re-use test: the tentative active EMA *and the loss itself* are below this detector's (frozen) threshold.

        TAME's code tests the tentative EMA only; as it keeps 80 % of the expert's old (low) EMA, an unrelated
        expert can pass on one batch and fire again on the next (a false detection). Requiring the raw loss to fit
        too removes that, while an expert that really knows the batch's task has a loss near its window mean.
        """
        loss = float(loss)
        return math.isfinite(loss) and self.tentative(loss) < self.threshold and loss < self.threshold

    def reactivate(self, loss: float) -> None:
        """Make this detector current again after :meth:`fits`: its all-batches EMA restarts at the tentative EMA."""
        self.smoothed = self.tentative(loss)

    # ------------------------------------------------------------------ single-model use
    def update(self, loss: float) -> bool:
        """Feed one batch's loss; returns ``True`` if a task shift is detected at this batch.

        NaN/inf losses are ignored (counted in ``num_nonfinite``). On a shift the statistics restart on the new
        task, seeded with the loss that revealed it, so the next shift is measured against the new task's loss.
        """
        if not self.observe(loss):
            return False
        loss = float(loss)
        if self.window and self.exceeds():
            self.num_shifts += 1
            # What revealed the shift, kept for reports before the statistics restart.
            self.last_shift = {"loss_ema": float(self.smoothed or 0.0), "threshold": self.threshold}
            self.reset(loss)
            return True
        if not self.window:  # first finite loss (no seed given)
            self.reset(loss)
            return False
        self.record(loss)
        return False

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "window": list(self.window),
            "pending": list(self.pending),
            "smoothed": self.smoothed,
            "active_smoothed": self.active_smoothed,
            "threshold": self.threshold,
            "steps": self.steps,
            "num_shifts": self.num_shifts,
            "num_nonfinite": self.num_nonfinite,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = deque((float(v) for v in state["window"]), maxlen=self.window_size)
        self.pending = deque(float(v) for v in state["pending"])
        self.smoothed = state["smoothed"]
        self.active_smoothed = state["active_smoothed"]
        self.threshold = float(state["threshold"])
        self.steps = int(state["steps"])
        self.num_shifts = int(state["num_shifts"])
        self.num_nonfinite = int(state["num_nonfinite"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(window={self.window_size}, ema_alpha={self.ema_alpha}, k_sigma={self.k_sigma}, "
            f"std_floor={self.std_floor}, min_history={self.min_history}, initial_loss={self.initial_loss}, "
            f"lag={self.lag})"
        )
