"""DCO (Direction-Constrained Optimization) as a callback: keep later tasks out of old tasks' "forbidden" directions.

Lightning adapter around the pure core in :mod:`lightning_autoopt.continual.dco` (the direction autoencoder and the
closed-form penalty).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt._history import BoundedHistory
from lightning_autoopt.callbacks.task_shift import TaskShiftInfo
from lightning_autoopt.continual.dco import as_matrix, direction_penalty, fit_direction_autoencoder
from lightning_autoopt.continual.metrics import evaluate_tasks

__all__ = ["DCO"]

_HISTORY_KEYS = ("step", "penalty", "task_grad_norm", "penalty_grad_norm")


class DCO(Callback):
    """Direction-Constrained Optimization (Teng et al.) as a callback for automatic-optimization LightningModules.

    At the end of each task -- at the optimizer steps listed in ``boundaries``, or when a
    :class:`~lightning_autoopt.callbacks.TaskShiftDetector` in the same Trainer reports a shift (DCO is a
    :class:`~lightning_autoopt.callbacks.TaskShiftListener`) -- DCO

    1. stores the task's centre ``theta*`` (the weights ``skip_recent`` steps before the event, so that the first
       steps on the new task, taken before a detector noticed it, are excluded);
    2. fits a tied linear autoencoder (:func:`~lightning_autoopt.continual.dco.fit_direction_autoencoder`) to the
       task's last training gradients ``g_j`` and their differences ``g_{j+1} - g_j`` (the code's gradient pairs),
       whose ``num_directions`` latents are the task's top "forbidden" directions ``E_t``;
    3. from then on adds the gradient of ``strength * ||E_t (theta - theta*_t)||^2`` (summed over stored tasks)
       to the weights' gradients in ``on_before_optimizer_step``, clipped to norm ``penalty_grad_clip`` -- once per
       optimizer step (after gradient accumulation and AMP unscaling, before Lightning's gradient clipping). The
       loss value is not changed; ``dco/penalty`` is logged.

    History: :attr:`history` records, per optimizer step, the penalty, the norm of the task gradient on the
    constrained weights and the norm of the penalty gradient (before clipping), plus the consolidation steps: how
    strongly the constraint pulls against the new task. It lives in the callback's state, bounded (past 2048
    entries every second one is dropped), and :func:`lightning_autoopt.plots.plot_dco` draws it with any logger.

    Only weight matrices of Linear/Conv layers (parameters with 2+ dimensions) are constrained, as in the code.
    Any LightningModule with such weights and a single optimizer works (any number of parameter groups; manual
    optimization too, where every ``optimizer.step()`` counts as a step); with several optimizers DCO refuses at
    ``on_fit_start``, since one gradient snapshot would only cover the part of the model one optimizer steps.
    Under DDP the gradients are already averaged across ranks when the hook runs, and the autoencoder uses a
    private seeded generator, so every rank computes the same directions and the same penalty (no collective).

    Args:
        boundaries: Optimizer steps (``trainer.global_step``) at which a task ends; ``None`` = only detector events.
        strength: Regulariser weight (DCO code: 100).
        num_directions: Latent units of each task's autoencoder (DCO code: 1000 on large nets; use fewer here).
        num_gradients: Most recent training gradients kept for the autoencoder (consecutive pairs are formed).
        ae_steps: Adam steps of the autoencoder fit.
        ae_lr: Adam learning rate of the autoencoder (DCO code: 1e-2).
        skip_recent: Gradients / weights of the last steps before a *detector* event that are ignored (they may
            belong to the new task already); given boundaries are exact, so they use 0. ``None`` (default) derives
            it from ``num_gradients``: ``min(5, (num_gradients - 2) // 2)``, so at least half of the kept
            gradients (and never fewer than 2) reach the autoencoder (5 with the default 32; 0 with
            ``num_gradients=2``). An explicit value must be in ``[0, num_gradients - 2]``.
        penalty_grad_clip: Norm clip of the penalty gradient (DCO code: 20); ``0`` disables clipping.
        seed: Seed of the autoencoder initialisation.
        report: At the end of training, evaluate the module per task on ``datamodule.eval_tensors()`` (when the
            datamodule has it, e.g. :class:`~lightning_autoopt.data.TaskStreamDataModule`) with
            :func:`~lightning_autoopt.continual.metrics.evaluate_tasks` and print the scores.

    Raises:
        ValueError: If an argument is out of range; at ``on_fit_start``, if the module has no trainable weight
            matrix or uses more than one optimizer.

    Example::

        trainer = Trainer(callbacks=[DCO(boundaries=[200, 400, 600, 800])])
        trainer = Trainer(callbacks=[TaskShiftDetector(), DCO()])  # task ends found by the detector
    """

    def __init__(
        self,
        boundaries: list[int] | None = None,
        strength: float = 100.0,
        num_directions: int = 20,
        num_gradients: int = 32,
        ae_steps: int = 200,
        ae_lr: float = 1e-2,
        skip_recent: int | None = None,
        penalty_grad_clip: float = 20.0,
        seed: int = 0,
        report: bool = True,
    ) -> None:
        super().__init__()
        if boundaries is not None and any(int(b) < 1 for b in boundaries):
            raise ValueError(f"`boundaries` must be optimizer steps >= 1, got {boundaries}.")
        if strength < 0:
            raise ValueError(f"`strength` must be >= 0, got {strength}.")
        if num_directions < 1:
            raise ValueError(f"`num_directions` must be >= 1, got {num_directions}.")
        if num_gradients < 2:
            raise ValueError(f"`num_gradients` must be >= 2 (pairs of consecutive gradients), got {num_gradients}.")
        if ae_steps < 1 or ae_lr <= 0:
            raise ValueError(f"`ae_steps` must be >= 1 and `ae_lr` > 0, got {ae_steps} and {ae_lr}.")
        if skip_recent is None:
            skip_recent = min(5, (num_gradients - 2) // 2)
        elif skip_recent < 0 or skip_recent > num_gradients - 2:
            raise ValueError(
                f"`skip_recent` must be in [0, num_gradients - 2] = [0, {num_gradients - 2}] so that at least one pair "
                f"of gradients is left, got {skip_recent}; raise `num_gradients` or leave `skip_recent=None` to "
                "derive it."
            )
        if penalty_grad_clip < 0:
            raise ValueError(f"`penalty_grad_clip` must be >= 0 (0 disables it), got {penalty_grad_clip}.")
        self.boundaries = sorted({int(b) for b in boundaries or []})
        self.strength, self.num_directions = float(strength), int(num_directions)
        self.num_gradients, self.ae_steps, self.ae_lr = int(num_gradients), int(ae_steps), float(ae_lr)
        self.skip_recent, self.penalty_grad_clip = int(skip_recent), float(penalty_grad_clip)
        self.seed, self.report = int(seed), report
        self._gradients: deque[list[torch.Tensor]] = deque(maxlen=self.num_gradients)
        self._weights: deque[list[torch.Tensor]] = deque(maxlen=self.skip_recent + 1)
        # One entry per consolidated task: centre and directions per constrained layer.
        self.tasks: list[dict[str, list[torch.Tensor]]] = []
        self.consolidation_steps: list[int] = []
        self.last_penalty = 0.0
        self.final_metrics: dict[str, float] = {}
        self._history = BoundedHistory(_HISTORY_KEYS)

    @property
    def history(self) -> dict[str, Any]:
        """The constraint over training (a copy; plain lists).

        Keys: ``step`` (the optimizer step being taken), ``penalty`` (``strength * sum_t ||E_t (theta -
        theta*_t)||^2``; NaN before the first consolidated task), ``task_grad_norm`` (the loss gradient on the
        constrained weights; NaN when one was missing or not finite), ``penalty_grad_norm`` (before the clip; NaN
        while inactive), one entry per step (thinned evenly on long runs: ``every`` steps per entry, ``offered`` in
        all); ``consolidation_steps``, ``strength`` and ``penalty_grad_clip``.
        """
        out = self._history.as_dict()
        out["consolidation_steps"] = list(self.consolidation_steps)
        out["strength"] = self.strength
        out["penalty_grad_clip"] = self.penalty_grad_clip
        return out

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(strength=self.strength, num_directions=self.num_directions)

    @staticmethod
    def _weights_of(pl_module: pl.LightningModule) -> list[torch.nn.Parameter]:
        return [p for p in pl_module.parameters() if p.requires_grad and p.dim() >= 2]

    @staticmethod
    def _matrices(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """CPU float32 copies of ``tensors`` as ``(out, rest)`` matrices."""
        return [as_matrix(t.detach()).to(torch.float32).cpu().clone() for t in tensors]

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._weights_of(pl_module):
            raise ValueError("DCO constrains weight matrices (2+ dims): the module has no trainable one.")
        if len(trainer.optimizers) > 1:
            raise ValueError(
                f"DCO needs a single optimizer (any number of parameter groups), got {len(trainer.optimizers)}: its "
                "gradient snapshots and penalty step cover the whole model at once. Put the parameters in one "
                "optimizer with several parameter groups, or drop DCO."
            )
        if not pl_module.automatic_optimization:
            rank_zero_info("DCO with manual optimization: every optimizer.step() counts as a step.")

    # ------------------------------------------------------------------ per step
    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        weights = self._weights_of(pl_module)
        raw = [p.grad for p in weights]
        task_norm = math.nan
        if all(g is not None for g in raw):
            grads = self._matrices([g for g in raw if g is not None])
            if _flat.all_finite(grads):  # NaN/inf gradients never feed the autoencoder
                self._gradients.append(grads)
                task_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        self._weights.append(self._matrices(list(weights)))
        step = trainer.global_step + 1  # the step this optimizer step completes
        if not self.tasks or self.strength == 0:
            self._history.append(step=step, penalty=None, task_grad_norm=task_norm, penalty_grad_norm=None)
            return
        penalty, grads = self._penalty_and_grads(weights)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        self._history.append(step=step, penalty=penalty, task_grad_norm=task_norm, penalty_grad_norm=norm)
        scale = 1.0
        if self.penalty_grad_clip > 0 and norm > self.penalty_grad_clip:
            scale = self.penalty_grad_clip / norm
        for p, g in zip(weights, grads):
            update = (g * scale).reshape(p.shape).to(dtype=p.dtype, device=p.device)
            if p.grad is None:
                p.grad = update
            else:
                p.grad.add_(update)
        self.last_penalty = penalty
        pl_module.log("dco/penalty", penalty, on_step=True, on_epoch=False)

    def _penalty_and_grads(self, weights: list[torch.nn.Parameter]) -> tuple[float, list[torch.Tensor]]:
        """:func:`~lightning_autoopt.continual.dco.direction_penalty` at the current ``weights``."""
        current = [as_matrix(p.detach()).to(torch.float32).cpu() for p in weights]
        return direction_penalty(current, self.tasks, self.strength)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step in self.boundaries and step not in self.consolidation_steps:
            self.consolidate(step, skip=0, pl_module=pl_module)

    def on_task_shift(self, trainer: pl.Trainer, pl_module: pl.LightningModule, info: TaskShiftInfo) -> None:
        """Called by :class:`~lightning_autoopt.callbacks.TaskShiftDetector` when it detects a new task."""
        step = int(info.get("step", trainer.global_step))
        if step not in self.consolidation_steps:
            self.consolidate(step, skip=self.skip_recent, pl_module=pl_module)

    def consolidate(self, step: int, skip: int = 0, pl_module: pl.LightningModule | None = None) -> None:
        """Close the current task: store its centre and learn its forbidden directions from recent gradients.

        The centre is the module's current weights when ``skip == 0`` and ``pl_module`` is given, else the weights
        recorded ``skip`` optimizer steps ago.
        """
        grads = list(self._gradients)[: len(self._gradients) - skip] if skip else list(self._gradients)
        weights = list(self._weights)
        if len(grads) < 2 or not weights:
            rank_zero_warn(f"DCO: too few gradients at step {step} to learn directions; task boundary skipped.")
            return
        if skip == 0 and pl_module is not None:
            centre = self._matrices(list(self._weights_of(pl_module)))
        else:
            centre = weights[max(len(weights) - 1 - skip, 0)]
        layers = len(grads[0])
        first = [torch.stack([g[i] for g in grads[:-1]]) for i in range(layers)]
        diffs = [torch.stack([b[i] - a[i] for a, b in zip(grads[:-1], grads[1:])]) for i in range(layers)]
        samples = [torch.cat([f, d]) for f, d in zip(first, diffs)]
        with torch.enable_grad():
            directions = fit_direction_autoencoder(
                samples, self.num_directions, self.ae_steps, self.ae_lr, self.seed + len(self.tasks)
            )
        self.tasks.append(
            {
                "centre": [c.clone() for c in centre],
                "u": [u for u, _ in directions],
                "v": [v for _, v in directions],
            }
        )
        self.consolidation_steps.append(step)
        self._gradients.clear()
        rank_zero_info(f"[DCO] task {len(self.tasks)} consolidated at step {step} ({self.num_directions} directions).")

    # ------------------------------------------------------------------ report
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not self.report or datamodule is None or not hasattr(datamodule, "eval_tensors"):
            return
        x, y, t = datamodule.eval_tensors()
        self.final_metrics = evaluate_tasks(pl_module, x, y, t, getattr(datamodule, "task_classes", None))
        self.final_metrics["consolidated_tasks"] = float(len(self.tasks))
        rank_zero_info("[DCO] " + ", ".join(f"{k}={v:.4f}" for k, v in self.final_metrics.items()))

    # ------------------------------------------------------------------ persistence
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "gradients": list(self._gradients),
            "weights": list(self._weights),
            "tasks": self.tasks,
            "consolidation_steps": list(self.consolidation_steps),
            "history": self.history,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._gradients = deque(state_dict["gradients"], maxlen=self.num_gradients)
        self._weights = deque(state_dict["weights"], maxlen=self.skip_recent + 1)
        self.tasks = list(state_dict["tasks"])
        self.consolidation_steps = [int(s) for s in state_dict["consolidation_steps"]]
        self._history.load(state_dict.get("history", {}))  # absent in checkpoints written before it was recorded
