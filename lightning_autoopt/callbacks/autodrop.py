"""AutoDrop: drop the learning rate when the angular velocity of the weights saturates.

Lightning adapter around two pure cores: :mod:`lightning_autoopt.callbacks._angles` (positions, angles, averaging)
and :mod:`lightning_autoopt.callbacks._saturation` (the saturation tests and the drop logic).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt.callbacks._angles import angular_velocity
from lightning_autoopt.callbacks._saturation import SATURATION_TESTS, SaturationDetector

__all__ = ["AutoDrop"]

_NEVER = 1 << 62  # "no action scheduled" as an int, so the per-step check stays a single integer comparison
_REFUSED_SCHEDULERS = (OneCycleLR, ReduceLROnPlateau, CyclicLR)
#: ``interval="auto"`` when the training budget is unknown or infinite: optimizer steps per decision.
AUTO_FALLBACK_INTERVAL = 100
#: ``drop_factor=None``: the LR multiplier per drop for each saturation test (the reference mode keeps the paper's).
DEFAULT_DROP_FACTOR = {"trend": 0.5, "reference": 0.2}
_HISTORY_KEYS = ("step", "epoch", "omega", "statistic", "threshold", "lr", "drops")


class AutoDrop(Callback):
    r"""Drop the learning rate when the angular velocity of the parameter trajectory saturates (AutoDrop).

    Once per *decision* (every ``interval`` optimizer steps) the flattened trainable parameters are recorded as a
    position ``P_e``. The angular velocity ``ω_e`` is the angle (degrees) between the displacements
    ``P_e - P_{e-1}`` and ``P_{e-1} - P_{e-2}``. At a constant LR, ω rises and then levels off; when a saturation
    test says it has levelled off, training continues at the old LR for ``patience`` more decisions, then every
    param group's LR is multiplied by ``drop_factor`` (never below ``min_lr``) and, with ``average_on_drop``, the
    parameters are replaced by the linearly weighted average ``Σ k·x_k / (K(K+1)/2)`` of the ``K = patience + 1``
    snapshots taken since detection (one running sum, not ``K`` copies).

    Saturation tests (``saturation``):

    * ``"trend"`` (default, scale-free): ``z``, the Mann–Kendall trend statistic of the last ``window`` values of
      ω (``S = Σ_{i<j} sign(ω_j − ω_i)`` over its standard deviation; about N(0, 1) without a trend). Once ω has
      been seen rising (``z > trend_threshold``), it is saturated as soon as the trend is no longer significant
      (``|z| < trend_threshold``): "rises, then levels off", read with a statistic that depends only on the order
      of the values, so it does not depend on the level or jitter of ω, the number of parameters or the steps per
      interval, and one outlier cannot fake a level-off. After each drop the positions and the ω window are
      cleared (ω spikes across a drop and after loading the average) and the test starts again on the new LR's
      curve: the next drop comes once ``window`` fresh angles show no significant trend. The rise is required
      before the first drop only (``rearm_after_drop=False``): it guards against the dip of ω early in training,
      and after a drop ω is often level from the start, so waiting for a new rise delayed or blocked later drops.
      Each drop multiplies the LR by 0.5 (``drop_factor``).
    * ``"reference"``: the paper's rule, ``|ω_e − ω_{e−1}| < theta`` degrees, with ``theta`` growing by
      ``1 / drop_factor`` after each drop up to ``max_theta`` (``auto_theta``), nothing reset at a drop (Teng, Wang
      & Choromanska, arXiv 2111.15317, reference scripts: θ 0.01°, cap 1°, drop 0.2, floor 1e-4, extra 20 epochs).
      ω's epoch-to-epoch jitter is often hundreds of times θ, so this rule may never fire (see the method card).

    Timing (``interval``): ``"auto"`` (default) picks ``max(1, budget // decisions_per_run)`` optimizer steps per
    decision from ``trainer.estimated_stepping_batches``, so every run has about ``decisions_per_run`` decisions
    whatever its epoch length; when the budget is unknown or infinite (``max_epochs=-1`` without ``max_steps``, or
    an iterable dataset without ``max_steps``) it falls back to ``AUTO_FALLBACK_INTERVAL`` (100) steps and says so.
    An int fixes the steps per decision. With ``"epoch"`` the position is taken after the first optimizer step of
    each epoch and the decision after the second, as in the reference code (epochs need at least two optimizer
    steps). Steps are ``trainer.global_step``, so ``accumulate_grad_batches`` and iteration-based or infinite
    training work. The resolved interval is kept in the checkpoint, so a resumed run decides at the same steps.

    LR and schedulers: the drop is applied to all param groups (``param_groups="first"``: only group 0, as the
    reference code) of every optimizer of the trainer. A user scheduler keeps the drop because AutoDrop also scales
    its ``base_lrs`` and the groups' ``initial_lr`` (StepLR, MultiStepLR, cosine, LambdaLR, LinearLR, ...).
    ``OneCycleLR``, ``CyclicLR`` and ``ReduceLROnPlateau`` set the LR themselves and are refused at fit start.

    Distributed: ω is computed on every rank, but rank 0's value is broadcast before the decision, so the test,
    the drop and the counters are identical on all ranks even when replicas differ (local-update strategies). At a
    drop with averaging, the averaged parameters are broadcast from rank 0, so all replicas restart from the same
    point.

    Resume: :meth:`state_dict` holds the positions, the ω window, the counters, the flag, the averaging buffer with
    its weight sum, the resolved interval and the decision history; a drop already made lives in the
    optimizer/scheduler state and is never re-applied.

    History: :attr:`history` has one entry per decision (step, epoch, ω, test statistic, threshold, LR, drops so
    far) plus the steps of each detection and drop; it lives in the callback's state, so it survives a resume and
    :func:`lightning_autoopt.plots.plot_autodrop` can draw it with any logger (or none).

    Logged (``pl_module.log``, once per decision; epoch-aggregated when ``interval="epoch"``):
    ``autodrop/angular_velocity``, ``autodrop/statistic`` (``z`` of the trend test, or ``|Δω|`` in reference mode,
    when the test ran), ``autodrop/threshold``, ``autodrop/lr`` (group 0 of optimizer 0), ``autodrop/drops`` and
    ``autodrop/skipped`` (decisions whose ω or parameters were NaN/inf; they never trigger anything).

    Memory: at most three parameter-sized position buffers plus the averaging buffer, in the parameters' dtype on
    their device (or on ``buffer_device``). Per-step cost: one integer comparison; work only at decision steps.

    Args:
        interval: ``"auto"``, ``"epoch"`` or a number of optimizer steps between decisions.
        saturation: ``"trend"`` (scale-free, the default) or ``"reference"`` (the paper's ``|Δω| < theta``).
        patience: Decisions trained at the old LR after saturation is detected, before the drop; also the averaging
            window (``patience + 1`` snapshots). The reference code's ``extra_epochs=20`` is ``patience=19``.
        window: Trend test: number of most recent ω values it looks at (>= 3). The first test comes
            ``window + 2`` decisions after a reset (three positions make the first ω).
        trend_threshold: Trend test: ω is rising while the Mann–Kendall ``z`` is above this and saturated when
            ``|z|`` falls below it afterwards (2 ≈ a trend significant at about 95 %).
        decisions_per_run: ``interval="auto"``: decisions in the whole training budget.
        rearm_after_drop: Trend test: after a drop, ω must again be seen rising (``z > trend_threshold``) before the
            test can fire. ``False`` (default): only the first drop needs the rise (it guards against the early dip
            of ω at the start of training); the window is still cleared at every drop, so a later drop needs
            ``window`` fresh angles without a significant trend.
        drop_factor: LR multiplier at each drop, in ``(0, 1)``. ``None`` (default): 0.5 with the trend test (gentle
            steps, more of them), 0.2 with ``saturation="reference"`` (the paper's).
        min_lr: LR floor; a drop never takes a group below it (``0``, the default, disables the floor; the reference
            scripts used ``1e-4``).
        theta: Reference test: threshold on ``|Δω|`` in degrees (the reference scripts' 0.01).
        auto_theta: Reference test: after each drop, grow θ to ``theta / drop_factor`` (capped by ``max_theta``).
        max_theta: Reference test: cap for the growing θ (``None``: no cap; the reference scripts' 1.0). A cap below
            ``theta`` is raised to ``theta`` (θ then never grows), so ``AutoDrop(theta=2.0)`` works with the default.
        average_on_drop: At a drop, load the linearly weighted average of the snapshots taken since detection.
        max_drops: Stop detecting after this many drops (``None``: no limit).
        stop_when_min_lr: Set ``trainer.should_stop`` when a drop is due but every LR is already at ``min_lr``.
        param_groups: ``"all"`` param groups or only the ``"first"`` one of each optimizer.
        buffer_device: Device for the position and averaging buffers (e.g. ``"cpu"`` to save accelerator memory);
            ``None`` keeps them on the parameters' device.
        verbose: Announce each detection and drop (with the statistic that triggered it) with ``rank_zero_info``.

    Raises:
        ValueError: On an invalid argument (named in the message), or at fit start when the module has no
            trainable parameters or the trainer has a ``OneCycleLR``/``CyclicLR``/``ReduceLROnPlateau`` scheduler.

    Example::

        from lightning.pytorch import Trainer
        from lightning_autoopt.callbacks import AutoDrop

        trainer = Trainer(max_epochs=60, callbacks=[AutoDrop()])  # constant-LR optimizer in the module

    YAML (LightningCLI)::

        trainer:
          callbacks:
            - class_path: lightning_autoopt.callbacks.AutoDrop
    """

    def __init__(
        self,
        interval: int | Literal["auto", "epoch"] = "auto",
        saturation: Literal["trend", "reference"] = "trend",
        patience: int = 5,
        window: int = 10,
        trend_threshold: float = 2.0,
        decisions_per_run: int = 70,
        rearm_after_drop: bool = False,
        drop_factor: float | None = None,
        min_lr: float = 0.0,
        theta: float = 0.01,
        auto_theta: bool = True,
        max_theta: float | None = 1.0,
        average_on_drop: bool = True,
        max_drops: int | None = None,
        stop_when_min_lr: bool = False,
        param_groups: Literal["all", "first"] = "all",
        buffer_device: str | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if interval not in ("auto", "epoch") and (
            isinstance(interval, bool) or not isinstance(interval, int) or interval < 1
        ):
            raise ValueError(
                f"AutoDrop: `interval` must be 'auto', 'epoch' or an int >= 1 optimizer steps, got {interval!r}."
            )
        if saturation not in SATURATION_TESTS:
            raise ValueError(f"AutoDrop: `saturation` must be one of {SATURATION_TESTS}, got {saturation!r}.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"AutoDrop: `patience` must be an int >= 0 (decisions), got {patience!r}.")
        if isinstance(window, bool) or not isinstance(window, int) or window < 3:
            raise ValueError(f"AutoDrop: `window` must be an int >= 3 (decisions; a trend needs 3), got {window!r}.")
        if not (isinstance(trend_threshold, (int, float)) and math.isfinite(trend_threshold) and trend_threshold > 0):
            raise ValueError(
                f"AutoDrop: `trend_threshold` must be a finite number > 0, e.g. 2, got {trend_threshold!r}."
            )
        if isinstance(decisions_per_run, bool) or not isinstance(decisions_per_run, int) or decisions_per_run < 1:
            raise ValueError(f"AutoDrop: `decisions_per_run` must be an int >= 1, e.g. 100, got {decisions_per_run!r}.")
        if not isinstance(rearm_after_drop, bool):
            raise ValueError(f"AutoDrop: `rearm_after_drop` must be True or False, got {rearm_after_drop!r}.")
        if drop_factor is None:
            drop_factor = DEFAULT_DROP_FACTOR[saturation]
        if isinstance(drop_factor, bool) or not (isinstance(drop_factor, (int, float)) and 0.0 < drop_factor < 1.0):
            raise ValueError(f"AutoDrop: `drop_factor` must be None or in (0, 1), e.g. 0.5, got {drop_factor!r}.")
        if not (isinstance(min_lr, (int, float)) and math.isfinite(min_lr) and min_lr >= 0):
            raise ValueError(f"AutoDrop: `min_lr` must be >= 0 (0 disables the floor), got {min_lr!r}.")
        if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta > 0):
            raise ValueError(f"AutoDrop: `theta` must be a finite number of degrees > 0, got {theta!r}.")
        if max_theta is not None and not (
            isinstance(max_theta, (int, float)) and math.isfinite(max_theta) and max_theta > 0
        ):
            raise ValueError(
                f"AutoDrop: `max_theta` must be None or a finite number of degrees > 0, got {max_theta!r}."
            )
        if max_drops is not None and (isinstance(max_drops, bool) or not isinstance(max_drops, int) or max_drops < 1):
            raise ValueError(f"AutoDrop: `max_drops` must be None or an int >= 1, got {max_drops!r}.")
        if param_groups not in ("all", "first"):
            raise ValueError(f"AutoDrop: `param_groups` must be 'all' or 'first', got {param_groups!r}.")
        if buffer_device is not None:
            try:
                torch.device(buffer_device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(
                    f"AutoDrop: `buffer_device` must be None or a device string like 'cpu', got {buffer_device!r}."
                ) from err
        self.interval = interval
        self.saturation = saturation
        self.decisions_per_run = decisions_per_run
        self.drop_factor = float(drop_factor)
        self.min_lr = float(min_lr)
        self.average_on_drop = average_on_drop
        self.stop_when_min_lr = stop_when_min_lr
        self.param_groups = param_groups
        self.buffer_device = buffer_device
        self.verbose = verbose
        reference = saturation == "reference"
        self._detector = SaturationDetector(
            saturation=saturation,
            threshold=float(theta) if reference else float(trend_threshold),
            window=window,
            patience=patience,
            drop_factor=self.drop_factor,
            auto_theta=auto_theta,
            # a cap below the starting θ (e.g. theta=2 with the default cap 1.0) is raised to θ: θ then stays fixed
            max_theta=None if max_theta is None else max(float(max_theta), float(theta)),
            max_drops=max_drops,
            rearm_after_drop=rearm_after_drop,
        )
        # Run-time state (all of it is in state_dict).
        self._every: int | None = interval if isinstance(interval, int) else None  # steps per decision; None: epoch
        self._positions: list[torch.Tensor | None] = [None, None, None]
        self._valid_slots: list[int] = []  # slots holding usable positions, oldest first
        self._pending_slot: int | None = None  # epoch mode: position taken, decision not yet made
        self._avg_sum: torch.Tensor | None = None
        self._avg_weight = 0.0
        self._next_action_step = _NEVER  # set in on_train_start (or restored)
        self._epoch_seen = -1
        self._decisions = 0
        self._history: dict[str, list[float]] = {key: [] for key in _HISTORY_KEYS}
        self._detect_log: list[int] = []  # global_step of each detection
        self._drop_log: list[tuple[int, int]] = []  # (global_step, epoch) of each drop
        self._params: list[torch.Tensor] = []

    # ------------------------------------------------------------------ public read-only views
    @property
    def theta(self) -> float:
        """Reference test: current threshold on ``|Δω|`` in degrees (grows after drops with ``auto_theta``)."""
        if self.saturation != "reference":
            raise AttributeError("AutoDrop.theta exists only with saturation='reference'; see `threshold`.")
        return self._detector.threshold

    @property
    def threshold(self) -> float:
        """Current threshold of the test (the ``|z|`` bound for ``"trend"``, θ in degrees for ``"reference"``)."""
        return self._detector.threshold

    @property
    def drops(self) -> int:
        """Number of LR drops made so far."""
        return self._detector.drops

    @property
    def skipped(self) -> int:
        """Number of decisions skipped because of NaN/inf parameters or angles."""
        return self._detector.skipped

    @property
    def interval_steps(self) -> int | None:
        """Optimizer steps per decision once resolved (``None`` for ``interval="epoch"`` or before training)."""
        return self._every

    @property
    def omega_history(self) -> list[float]:
        """Angular velocities (degrees) of all decisions that had one, in order."""
        return [w for w in self._history["omega"] if math.isfinite(w)]

    @property
    def drop_history(self) -> list[tuple[int, int]]:
        """``(global_step, epoch)`` at which each drop was made."""
        return list(self._drop_log)

    @property
    def history(self) -> dict[str, Any]:
        """One entry per decision, plus the detection and drop steps (a copy; plain lists, JSON-serializable).

        Keys: ``step``, ``epoch``, ``omega`` (degrees; NaN before three positions exist or for a bad interval),
        ``statistic`` (the test statistic, ``z`` or ``|Δω|``; NaN when the test did not run), ``threshold``
        (the one the statistic was compared with), ``lr`` (group 0 of optimizer 0 after the decision), ``drops``
        (after the decision), ``detections`` and ``drop_steps`` (global steps), ``saturation`` and ``interval``
        (steps per decision once resolved, else ``"epoch"``/``"auto"``).
        """
        out: dict[str, Any] = {key: list(values) for key, values in self._history.items()}
        out["detections"] = list(self._detect_log)
        out["drop_steps"] = [step for step, _ in self._drop_log]
        out["saturation"] = self.saturation
        out["interval"] = self._every if self._every is not None else self.interval  # "auto" until training starts
        return out

    @property
    def state_key(self) -> str:
        return self._generate_state_key(interval=self.interval, saturation=self.saturation)

    # ------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if config.reduce_on_plateau or isinstance(scheduler, _REFUSED_SCHEDULERS):
                raise ValueError(
                    f"AutoDrop cannot be combined with the {type(scheduler).__name__} scheduler: it sets the LR "
                    "itself and would undo or fight the drops. Remove that scheduler (AutoDrop decides the drops) "
                    "or remove AutoDrop. StepLR, MultiStepLR, cosine, LambdaLR and other base_lrs-based schedulers "
                    "are supported."
                )
        self._params = [p for p in pl_module.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("AutoDrop: the LightningModule has no trainable parameters (requires_grad=True).")
        numel = sum(p.numel() for p in self._params)
        dtypes = {p.dtype for p in self._params}
        dtype = self._params[0].dtype if len(dtypes) == 1 else torch.float32
        device = torch.device(self.buffer_device) if self.buffer_device is not None else self._params[0].device
        # Buffers restored from a checkpoint are moved here; fresh ones are allocated lazily.
        for i, buf in enumerate(self._positions):
            if buf is not None:
                self._positions[i] = self._checked(buf, numel, "position").to(device=device, dtype=dtype)
        if self._avg_sum is not None:
            self._avg_sum = self._checked(self._avg_sum, numel, "averaging buffer").to(device=device, dtype=dtype)
        self._numel, self._dtype, self._device = numel, dtype, device

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step  # restored by now, unlike in on_fit_start
        if self.interval == "auto" and self._every is None:  # not restored from a checkpoint
            self._every = self._auto_interval(trainer)
        if self._every is not None and (self._next_action_step == _NEVER or self._next_action_step <= step):
            self._next_action_step = (step // self._every + 1) * self._every
        if self.interval == "epoch" and trainer.current_epoch != self._epoch_seen:
            # Resuming from a checkpoint written at the last batch of an epoch: Lightning continues with the next
            # epoch without calling on_train_epoch_start for it, so start that epoch's bookkeeping here.
            self._start_epoch(trainer)
        if self.interval == "epoch":
            steps = trainer.num_training_batches
            if isinstance(steps, int) and steps // max(1, trainer.accumulate_grad_batches) < 2:
                rank_zero_warn(
                    "AutoDrop(interval='epoch') needs at least 2 optimizer steps per epoch (position after the first,"
                    f" decision after the second); this run has {steps} batches per epoch with "
                    f"accumulate_grad_batches={trainer.accumulate_grad_batches}, so it will never decide. Use "
                    "interval='auto' or an int (optimizer steps) instead."
                )
        self._warn_if_too_short(trainer)

    def _auto_interval(self, trainer: pl.Trainer) -> int:
        budget = trainer.estimated_stepping_batches
        if isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0:
            every = max(1, int(budget) // self.decisions_per_run)
            rank_zero_info(
                f"AutoDrop: interval='auto' -> a decision every {every} optimizer steps ({int(budget)} steps in the "
                f"run / decisions_per_run={self.decisions_per_run})."
            )
        else:
            every = AUTO_FALLBACK_INTERVAL
            rank_zero_info(
                "AutoDrop: interval='auto' but the training budget is unknown or infinite "
                f"(trainer.estimated_stepping_batches={budget}); deciding every {every} optimizer steps. Set "
                "max_steps/max_epochs, or pass an int interval."
            )
        if trainer.world_size > 1:
            every = int(trainer.strategy.broadcast(every, src=0))  # one interval for all ranks, whatever each saw
        return every

    def _warn_if_too_short(self, trainer: pl.Trainer) -> None:
        budget = trainer.estimated_stepping_batches
        if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            return
        if self._every is not None:
            decisions = int(budget) // self._every
        else:
            per_epoch = trainer.num_training_batches
            if not (isinstance(per_epoch, int) and per_epoch > 0):
                return
            decisions = int(budget) * max(1, trainer.accumulate_grad_batches) // per_epoch
        first_test = self._detector.window + 2 if self.saturation == "trend" else 4
        needed = first_test + self._detector.patience
        if decisions < needed:
            rank_zero_warn(
                f"AutoDrop: this run has about {decisions} decisions but the first drop needs at least {needed} "
                f"(first test after {first_test}, then patience={self._detector.patience}); it cannot drop. Use a "
                "longer run, a smaller interval, or a smaller window/patience."
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval != "epoch" or trainer.current_epoch == self._epoch_seen:
            return  # step interval, or an epoch already started (resumed mid-epoch, or started in on_train_start)
        self._start_epoch(trainer)

    def _start_epoch(self, trainer: pl.Trainer) -> None:
        self._epoch_seen = trainer.current_epoch
        self._pending_slot = None
        self._next_action_step = trainer.global_step + 1  # position after the epoch's first optimizer step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step < self._next_action_step:  # the whole per-step cost
            return
        self._on_boundary(trainer, pl_module, trainer.global_step)

    # ------------------------------------------------------------------ logic at decision steps
    def _on_boundary(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        if self._every is None:  # epoch mode
            if self._pending_slot is None:
                self._pending_slot = self._take_position()
                self._next_action_step = step + 1
                return
            slot, self._pending_slot = self._pending_slot, None
            self._next_action_step = _NEVER  # until the next epoch starts
        else:
            slot = self._take_position()
            self._next_action_step = (step // self._every + 1) * self._every
        self._decide(trainer, pl_module, slot)

    def _take_position(self) -> int:
        if len(self._valid_slots) == 3:
            slot = self._valid_slots.pop(0)  # the oldest position is no longer needed
        else:
            slot = next(i for i in range(3) if i not in self._valid_slots)
        if self._positions[slot] is None:
            self._positions[slot] = torch.empty(self._numel, dtype=self._dtype, device=self._device)
        _flat.copy_into_(self._positions[slot], self._params)  # type: ignore[arg-type]
        return slot

    def _decide(self, trainer: pl.Trainer, pl_module: pl.LightningModule, slot: int) -> None:
        self._decisions += 1
        omega: float | None
        if _flat.all_finite(self._positions[slot]):  # type: ignore[arg-type]
            self._valid_slots.append(slot)
            if len(self._valid_slots) == 3:
                p0, p1, p2 = (self._positions[i] for i in self._valid_slots)
                omega = angular_velocity(p0, p1, p2)  # type: ignore[arg-type]
            else:
                omega = None
        else:
            omega = float("nan")  # the slot stays free: a bad position never enters the history
        if trainer.world_size > 1:
            # Collective on every rank (the decision step is the same everywhere); rank 0's ω decides for all.
            omega = trainer.strategy.broadcast(omega, src=0)
        detector = self._detector
        skipped_before, detected_before, threshold = detector.skipped, detector.detected, detector.threshold
        action, weight = detector.update(omega)
        if action in ("snapshot", "drop") and not detected_before:
            self._detect_log.append(trainer.global_step)
            if self.verbose:
                rank_zero_info(
                    f"AutoDrop: saturation detected at step {trainer.global_step} (epoch {trainer.current_epoch}): "
                    f"{self._explain(detector.statistic, threshold)}; dropping after {detector.patience} more "
                    "decisions."
                )
        if action in ("snapshot", "drop") and self.average_on_drop:
            if self._avg_sum is None:
                self._avg_sum = torch.zeros(self._numel, dtype=self._dtype, device=self._device)
            _flat.add_weighted_(self._avg_sum, self._params, float(weight))
            self._avg_weight += weight
        if action == "drop":
            self._drop(trainer)
            if detector.resets_on_drop:
                self._valid_slots.clear()  # the next angle uses positions from the new LR only
        self._record(trainer, omega, detector.statistic, threshold)
        self._log(trainer, pl_module, omega, detector.statistic, threshold, skipped=detector.skipped != skipped_before)

    def _explain(self, statistic: float | None, threshold: float) -> str:
        if self.saturation == "trend":
            return f"trend z = {statistic:+.2f}, |z| < {threshold:.3g}: the angular velocity rose and has levelled off"
        return f"|Δω| = {statistic:.3g}° < theta = {threshold:.3g}°"

    def _drop(self, trainer: pl.Trainer) -> None:
        at_floor = True
        for optimizer in trainer.optimizers:
            groups = optimizer.param_groups if self.param_groups == "all" else optimizer.param_groups[:1]
            for index, group in enumerate(groups):
                old = float(group["lr"])
                new = max(old * self.drop_factor, self.min_lr) if old > self.min_lr else old
                at_floor = at_floor and new == old
                if new == old or old <= 0:
                    continue
                ratio = new / old
                group["lr"] = new
                if "initial_lr" in group:
                    group["initial_lr"] = group["initial_lr"] * ratio
                for config in trainer.lr_scheduler_configs:
                    if getattr(config.scheduler, "optimizer", None) is optimizer:
                        _scale_base_lr(config.scheduler, index, ratio)
        if self.average_on_drop and self._avg_sum is not None and self._avg_weight > 0:
            self._avg_sum.div_(self._avg_weight)
            _flat.broadcast_(self._avg_sum, src=0, device=trainer.strategy.root_device)
            if _flat.all_finite(self._avg_sum):
                offset = 0
                with torch.no_grad():
                    for p in self._params:
                        n = p.numel()
                        p.copy_(self._avg_sum[offset : offset + n].view_as(p))
                        offset += n
            else:
                self._detector.skipped += 1
                rank_zero_warn("AutoDrop: the weighted average is not finite; parameters were left unchanged.")
            self._avg_sum.zero_()
            self._avg_weight = 0.0
        self._drop_log.append((trainer.global_step, trainer.current_epoch))
        if self.verbose:
            extra = f", theta -> {self.threshold:.3g}" if self.saturation == "reference" else ""
            rank_zero_info(
                f"AutoDrop: drop {self.drops} at step {trainer.global_step} (epoch {trainer.current_epoch}): "
                f"lr -> {_first_lr(trainer):.3g}{extra}"
            )
        if at_floor and self.stop_when_min_lr:
            trainer.should_stop = True  # same value on every rank: the decision was broadcast
            rank_zero_info("AutoDrop: the LR is already at min_lr and the trajectory saturated again; stopping.")

    def _record(self, trainer: pl.Trainer, omega: float | None, statistic: float | None, threshold: float) -> None:
        row = (
            float(trainer.global_step),
            float(trainer.current_epoch),
            float("nan") if omega is None else float(omega),
            float("nan") if statistic is None else float(statistic),
            float(threshold),
            _first_lr(trainer),
            float(self.drops),
        )
        for key, value in zip(_HISTORY_KEYS, row):
            self._history[key].append(value)

    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        omega: float | None,
        statistic: float | None,
        threshold: float,
        skipped: bool,
    ) -> None:
        per_epoch = self._every is None
        kwargs: dict[str, Any] = {"on_step": not per_epoch, "on_epoch": per_epoch, "batch_size": 1}
        if omega is not None and math.isfinite(omega):
            pl_module.log("autodrop/angular_velocity", omega, **kwargs)
        if statistic is not None and math.isfinite(statistic):
            pl_module.log("autodrop/statistic", statistic, **kwargs)
        pl_module.log("autodrop/threshold", threshold, **kwargs)
        pl_module.log("autodrop/lr", _first_lr(trainer), **kwargs)
        pl_module.log("autodrop/drops", float(self.drops), **kwargs)
        pl_module.log("autodrop/skipped", float(self.skipped), **kwargs)
        if skipped:
            rank_zero_warn(
                f"AutoDrop: skipped the decision at step {trainer.global_step}: NaN/inf in the parameters or the "
                "angle (no decision taken from it)."
            )

    # ------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self._detector.state_dict(),
            "every": self._every,
            "positions": list(self._positions),
            "valid_slots": list(self._valid_slots),
            "pending_slot": self._pending_slot,
            "avg_sum": self._avg_sum,
            "avg_weight": self._avg_weight,
            "next_action_step": self._next_action_step,
            "epoch_seen": self._epoch_seen,
            "decisions": self._decisions,
            "history": self.history,  # complete, so plot_autodrop(ckpt["callbacks"][key]["history"]) works
            "drop_log": list(self._drop_log),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._detector.load_state_dict(state_dict["detector"])
        every = state_dict.get("every")
        if self.interval == "auto" or isinstance(self.interval, int):
            # The checkpoint's interval wins, so the ω window keeps one spacing across the resume.
            self._every = int(every) if every is not None else self._every
        self._positions = list(state_dict["positions"])
        self._valid_slots = list(state_dict["valid_slots"])
        self._pending_slot = state_dict["pending_slot"]
        self._avg_sum = state_dict["avg_sum"]
        self._avg_weight = float(state_dict["avg_weight"])
        self._next_action_step = int(state_dict["next_action_step"])
        self._epoch_seen = int(state_dict["epoch_seen"])
        self._decisions = int(state_dict["decisions"])
        history = state_dict.get("history", {})
        self._history = {key: [float(v) for v in history.get(key, [])] for key in _HISTORY_KEYS}
        self._detect_log = [int(s) for s in history.get("detections", [])]
        self._drop_log = [(int(a), int(b)) for a, b in state_dict.get("drop_log", [])]

    @staticmethod
    def _checked(buffer: torch.Tensor, numel: int, what: str) -> torch.Tensor:
        if buffer.numel() != numel:
            raise ValueError(
                f"AutoDrop: the checkpoint's {what} has {buffer.numel()} elements but the model has {numel} trainable "
                "parameters; resume with the same model, or drop the AutoDrop state from the checkpoint."
            )
        return buffer


def _first_lr(trainer: pl.Trainer) -> float:
    return float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else float("nan")


def _scale_base_lr(scheduler: Any, index: int, ratio: float) -> None:
    """Scale a scheduler's ``base_lrs[index]`` (and its children's, for SequentialLR/ChainedScheduler)."""
    base_lrs = getattr(scheduler, "base_lrs", None)
    if base_lrs is not None and index < len(base_lrs):
        base_lrs[index] = base_lrs[index] * ratio
    for child in getattr(scheduler, "_schedulers", None) or []:
        _scale_base_lr(child, index, ratio)
