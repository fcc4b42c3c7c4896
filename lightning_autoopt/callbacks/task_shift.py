"""TaskShiftDetector: TAME's loss-statistics task-shift test as a callback for any LightningModule.

Whoever wants to hear about a shift implements the declared hook: a callback is a :class:`TaskShiftListener`
(e.g. :class:`~lightning_autoopt.callbacks.DCO`), the LightningModule a :class:`TaskShiftAwareModule`; both receive
a :class:`TaskShiftInfo`.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any, Protocol, TypedDict, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_autoopt._history import BoundedHistory
from lightning_autoopt.continual.detector import DETECTOR_DEFAULTS, DetectorConfig, LossShiftDetector

__all__ = ["TaskShiftAwareModule", "TaskShiftDetector", "TaskShiftInfo", "TaskShiftListener"]

_HISTORY_KEYS = ("step", "loss", "loss_ema", "threshold")


class TaskShiftInfo(TypedDict):
    """What a task-shift hook receives."""

    step: int
    """``trainer.global_step`` when the shift was detected."""
    shift_index: int
    """1 for the first shift of the run, 2 for the second, ..."""
    loss_ema: float
    """The smoothed loss that crossed the threshold."""
    threshold: float
    """The threshold it crossed."""


@runtime_checkable
class TaskShiftListener(Protocol):
    """A callback that :class:`TaskShiftDetector` notifies of every detected shift (e.g. DCO closes its task)."""

    def on_task_shift(self, trainer: pl.Trainer, pl_module: pl.LightningModule, info: TaskShiftInfo) -> None:
        """Called on every rank right after the shift at ``info["step"]`` was detected."""


@runtime_checkable
class TaskShiftAwareModule(Protocol):
    """A LightningModule that :class:`TaskShiftDetector` notifies of every detected shift."""

    def on_task_shift(self, trainer: pl.Trainer, info: TaskShiftInfo) -> None:
        """Called on every rank right after the shift at ``info["step"]`` was detected."""


class TaskShiftDetector(Callback):
    """Detects task shifts in a data stream from the training loss the module already computes.

    After every optimizer step, the mean training loss of the step (the ``loss`` returned by ``training_step``,
    averaged over accumulated micro-batches and over ranks) is fed to a
    :class:`~lightning_autoopt.continual.LossShiftDetector`: the EMA of the loss is compared against
    ``mean(window) + k_sigma * max(std(window), std_floor)`` (TAME, spec B4). No extra forward pass is run.

    On a shift the callback

    * calls ``pl_module.on_task_shift(trainer, info)`` if the module is a :class:`TaskShiftAwareModule`, and
      ``callback.on_task_shift(trainer, pl_module, info)`` on every other callback that is a
      :class:`TaskShiftListener` (e.g. :class:`~lightning_autoopt.callbacks.DCO`), with a :class:`TaskShiftInfo`;
    * optionally resets the optimizers' state, restores the initial learning rates, and saves a checkpoint.

    Works with any LightningModule whose ``training_step`` returns its loss (a tensor, or a dict with
    ``loss_key``), with automatic or manual optimization (under manual optimization the test runs after every
    batch, or after every optimizer step when the module steps Lightning optimizers), any batch structure and any
    number of optimizers. If the first batch's output has no loss, ``fit`` stops with a message saying what to
    return.

    It logs ``task_shift/loss_ema``, ``task_shift/threshold``, ``task_shift/shifts`` and ``task_shift/nonfinite``.
    NaN/inf losses are skipped and counted; they never trigger a shift. All ranks decide identically because the
    loss is averaged over ranks before the test.

    History: :attr:`history` records, per optimizer step, the loss the test saw, its EMA and the threshold (NaN
    while the test is silent), plus every shift with the EMA and threshold that revealed it. It lives in the
    callback's state, bounded (past 2048 entries every second one is dropped, so long runs stay covered at half the
    resolution), and :func:`lightning_autoopt.plots.plot_task_shift` draws it with any logger, from a checkpoint,
    after a resume.

    Args:
        window, ema_alpha, k_sigma, std_floor, min_history, initial_loss, lag: The test's settings, documented once
            in :class:`~lightning_autoopt.continual.DetectorConfig` (kept as :attr:`config`).
        loss_key: Key of the loss when ``training_step`` returns a dict.
        reset_optimizer_state: On a shift, clear every optimizer's state (momentum, Adam moments).
        restore_initial_lr: On a shift, set every parameter group's learning rate back to its value at the start of
            training. A scheduler that sets the LR from its own counter will override it at its next step.
        save_checkpoint: On a shift, save a checkpoint ``task_shift_step{step}.ckpt`` in ``dirpath`` (default: the
            trainer's ``default_root_dir``).
        dirpath: Where shift checkpoints go.
        verbose: Print a line on every shift (rank zero).

    Raises:
        ValueError: If a detector argument is out of range or ``loss_key`` is empty; during the first training
            batch, if ``training_step`` returned no loss.

    Example::

        trainer = Trainer(callbacks=[TaskShiftDetector(window=35, ema_alpha=0.2, reset_optimizer_state=True)])
    """

    def __init__(
        self,
        window: int = DETECTOR_DEFAULTS.window,
        ema_alpha: float = DETECTOR_DEFAULTS.ema_alpha,
        k_sigma: float = DETECTOR_DEFAULTS.k_sigma,
        std_floor: float = DETECTOR_DEFAULTS.std_floor,
        min_history: int | None = DETECTOR_DEFAULTS.min_history,
        initial_loss: float | None = DETECTOR_DEFAULTS.initial_loss,
        lag: int = DETECTOR_DEFAULTS.lag,
        loss_key: str = "loss",
        reset_optimizer_state: bool = False,
        restore_initial_lr: bool = False,
        save_checkpoint: bool = False,
        dirpath: str | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if not loss_key:
            raise ValueError("`loss_key` must be a non-empty string naming the loss in training_step's output dict.")
        self.config = DetectorConfig.pick(locals())
        self.detector = LossShiftDetector(self.config)
        self.loss_key = loss_key
        self.reset_optimizer_state = reset_optimizer_state
        self.restore_initial_lr = restore_initial_lr
        self.save_checkpoint = save_checkpoint
        self.dirpath = dirpath
        self.verbose = verbose
        self.shift_steps: list[int] = []
        self.initial_lrs: list[list[float]] | None = None
        self._pending_sum = 0.0
        self._pending_count = 0
        self._last_step: int | None = None
        self._history = BoundedHistory(_HISTORY_KEYS)
        self._shift_ema: list[float] = []
        self._shift_threshold: list[float] = []

    @property
    def history(self) -> dict[str, Any]:
        """The test over training (a copy; plain lists, so it pickles and serialises as JSON).

        Keys: ``step``, ``loss`` (the mean loss of the step the test saw; NaN when it was not finite), ``loss_ema``,
        ``threshold`` (NaN while the test is silent: before ``min_history`` losses of the current task), one entry
        per recorded step (thinned evenly on long runs: ``every`` steps per entry, ``offered`` steps in all);
        ``shift_steps``, ``shift_loss_ema`` and ``shift_threshold`` per detected shift; ``k_sigma`` and ``window``.
        """
        out = self._history.as_dict()
        out["shift_steps"] = list(self.shift_steps)
        out["shift_loss_ema"] = list(self._shift_ema)
        out["shift_threshold"] = list(self._shift_threshold)
        out["k_sigma"] = self.detector.k_sigma
        out["window"] = self.detector.window_size
        return out

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            window=self.detector.window_size, ema_alpha=self.detector.ema_alpha, k_sigma=self.detector.k_sigma
        )

    @property
    def num_shifts(self) -> int:
        return len(self.shift_steps)

    # ------------------------------------------------------------------ hooks
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.initial_lrs is None:  # not restored from a checkpoint
            self.initial_lrs = [[float(g["lr"]) for g in opt.param_groups] for opt in trainer.optimizers]
        if self._last_step is None:
            self._last_step = trainer.global_step

    def _extract_loss(self, outputs: Any) -> torch.Tensor | None:
        if isinstance(outputs, torch.Tensor):
            return outputs
        if isinstance(outputs, dict) and isinstance(outputs.get(self.loss_key), torch.Tensor):
            return outputs[self.loss_key]
        return None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = self._extract_loss(outputs)
        if loss is None and self.detector.steps == 0 and self.detector.num_nonfinite == 0:
            # Nothing seen yet and no loss to see: the detector would silently never act.
            if outputs is None or (isinstance(outputs, dict) and not outputs):
                what = "nothing (None)"
            elif isinstance(outputs, dict):
                what = f"a dict without {self.loss_key!r} (keys {sorted(map(str, outputs))})"
            else:
                what = type(outputs).__name__
            raise ValueError(
                f"TaskShiftDetector needs the training loss, but {type(pl_module).__name__}.training_step returned "
                f"{what}. Return the loss tensor or a dict with the key {self.loss_key!r} "
                "(with manual optimization: `return loss.detach()`), or set `loss_key` to your dict's key."
            )
        # The same value on every rank even when one rank's output is missing (NaN -> skipped everywhere).
        value = float(loss.detach().float().mean()) if loss is not None else float("nan")
        self._pending_sum += value
        self._pending_count += 1
        # Count in optimizer steps: with gradient accumulation, wait for the step; under manual optimization
        # without Lightning optimizers (global_step never moves), test every batch.
        stepped = trainer.global_step != self._last_step
        if not stepped and pl_module.automatic_optimization:
            return
        self._last_step = trainer.global_step
        mean_loss = torch.tensor(self._pending_sum / self._pending_count, dtype=torch.float64, device=pl_module.device)
        self._pending_sum, self._pending_count = 0.0, 0
        # Every rank reaches this line at the same step, so the collective is never behind a rank-dependent branch.
        mean_loss = trainer.strategy.reduce(mean_loss, reduce_op="mean")
        value = float(mean_loss)
        shift = self.detector.update(value)
        self._record(trainer.global_step, value, shift)
        # log() is costly next to a small model's step: log on the logger's cadence, at shifts and at bad losses.
        every = max(getattr(trainer, "log_every_n_steps", 50), 1)
        if shift or not math.isfinite(value) or trainer.global_step % every == 0:
            self._log(pl_module, value, shift)
        if shift:
            self._on_shift(trainer, pl_module)

    def _record(self, step: int, loss: float, shift: bool) -> None:
        detector = self.detector
        ema: float | None
        if shift:  # the statistics restarted on the new task: record what revealed the shift
            ema, threshold = detector.last_shift["loss_ema"], detector.last_shift["threshold"]
            self._shift_ema.append(ema)
            self._shift_threshold.append(threshold)
        else:
            armed = len(detector.window) >= detector.min_history and math.isfinite(detector.threshold)
            ema, threshold = detector.smoothed, detector.threshold if armed else math.nan
        self._history.append(step=step, loss=loss, loss_ema=ema, threshold=threshold)

    def _log(self, pl_module: pl.LightningModule, value: float, shift: bool) -> None:
        if math.isfinite(value):
            pl_module.log("task_shift/loss_ema", float(self.detector.smoothed or 0.0), on_step=True, on_epoch=False)
            if math.isfinite(self.detector.threshold):
                pl_module.log("task_shift/threshold", self.detector.threshold, on_step=True, on_epoch=False)
        pl_module.log("task_shift/shifts", float(self.num_shifts + int(shift)), on_step=True, on_epoch=False)
        pl_module.log("task_shift/nonfinite", float(self.detector.num_nonfinite), on_step=True, on_epoch=False)

    def _on_shift(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self.shift_steps.append(step)
        info: TaskShiftInfo = {
            "step": step,
            "shift_index": len(self.shift_steps),
            "loss_ema": self.detector.last_shift["loss_ema"],
            "threshold": self.detector.last_shift["threshold"],
        }
        if self.verbose:
            rank_zero_info(f"[TaskShiftDetector] task shift #{len(self.shift_steps)} detected at step {step}.")
        if self.reset_optimizer_state:
            for opt in trainer.optimizers:
                opt.state = defaultdict(dict)
        if self.restore_initial_lr and self.initial_lrs is not None:
            for opt, lrs in zip(trainer.optimizers, self.initial_lrs):
                for group, lr in zip(opt.param_groups, lrs):
                    group["lr"] = lr
        if isinstance(pl_module, TaskShiftAwareModule):
            pl_module.on_task_shift(trainer, info)
        for callback in getattr(trainer, "callbacks", []):
            if callback is not self and isinstance(callback, TaskShiftListener):
                callback.on_task_shift(trainer, pl_module, info)
        if self.save_checkpoint:
            dirpath = self.dirpath or trainer.default_root_dir
            trainer.save_checkpoint(os.path.join(dirpath, f"task_shift_step{step}.ckpt"))

    # ------------------------------------------------------------------ persistence
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector.state_dict(),
            "shift_steps": list(self.shift_steps),
            "initial_lrs": self.initial_lrs,
            "pending_sum": self._pending_sum,
            "pending_count": self._pending_count,
            "last_step": self._last_step,
            "history": self.history,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.detector.load_state_dict(state_dict["detector"])
        self.shift_steps = [int(s) for s in state_dict["shift_steps"]]
        self.initial_lrs = state_dict["initial_lrs"]
        self._pending_sum = float(state_dict["pending_sum"])
        self._pending_count = int(state_dict["pending_count"])
        self._last_step = state_dict["last_step"]
        history = state_dict.get("history", {})  # absent in checkpoints written before it was recorded
        self._history.load(history)
        self._shift_ema = [float(v) for v in history.get("shift_loss_ema", [])]
        self._shift_threshold = [float(v) for v in history.get("shift_threshold", [])]
