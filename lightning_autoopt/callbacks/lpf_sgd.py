"""LPFSGD: low-pass-filter SGD (Bisla et al., AISTATS 2022) as a callback that works with any optimizer."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt._history import BoundedHistory

__all__ = ["LPFSGD"]

_MASK = (1 << 63) - 1
_HISTORY_KEYS = ("step", "std", "radius", "loss")


def filter_noise(param: Tensor, std: float, scale: str, generator: torch.Generator) -> Tensor:
    """Gaussian noise for one parameter tensor with a filter-relative standard deviation.

    ``"row_norm"`` (the reference code): a tensor with ``ndim > 1`` gets std ``std · ‖W_i‖₂`` on output row i; a
    vector (bias, norm-layer affine) gets ``std · (‖p‖₂ + 1e-16)``. ``"row_rms"`` divides those norms by the square
    root of the row length (fan-in) or the vector length, so wide layers are not perturbed more per element.
    """
    data = param.detach()
    if data.ndim > 1:
        rows = data.reshape(data.shape[0], -1)
        norms = rows.norm(dim=1)
        if scale == "row_rms":
            norms = norms / math.sqrt(rows.shape[1])
        sigma = (std * norms).view(-1, *([1] * (data.ndim - 1)))
    else:
        norm = data.norm()
        if scale == "row_rms":
            norm = norm / math.sqrt(max(data.numel(), 1))
        sigma = std * (norm + 1e-16)
    noise = torch.randn(data.shape, generator=generator, dtype=torch.float32)
    return noise.to(device=data.device, dtype=data.dtype) * sigma


class LPFSGD(Callback):
    r"""Train toward flat minima by following the gradient of the Gaussian-smoothed loss E_u[L(θ + u)] (LPF-SGD).

    Before each training micro-batch's forward pass, filter-relative Gaussian noise u is added to every trainable
    parameter (``on_train_batch_start``); after its backward pass (``on_after_backward``) the parameters are put
    back *exactly* (a saved copy is written back, not ``θ + u − u``). The optimizer then steps from the unperturbed
    θ with the gradient taken at θ + u, which is a one-sample Monte-Carlo estimate of ∇(L ⊛ K)(θ). Any optimizer
    works (SGD, AdamW, ...); weight decay is applied by the optimizer at θ. BatchNorm running statistics are updated
    at the perturbed point, as in the reference code.

    Noise std: ``std · ‖W_i‖`` per output row (see :func:`filter_noise`), with std γ(t) either constant or
    ``"cosine_increase"``: γ(t) = γ₀ (1 + (α − 1)(1 − cos(π t / T)) / 2), rising from γ₀ to α·γ₀ over
    T = ``total_steps`` optimizer steps (default ``trainer.estimated_stepping_batches``). t is
    ``trainer.global_step``, so the schedule advances per optimizer step and resumes by itself.

    M draws per update (``num_draws``): the reference splits each batch into M micro-batches with one noise draw
    each and accumulates their gradients. In Lightning that *is* gradient accumulation: use
    ``Trainer(accumulate_grad_batches=M)`` with the batch size divided by M; a new draw is made for every
    micro-batch. By default (``num_draws=None``) M is the Trainer's ``accumulate_grad_batches``; an explicit
    ``num_draws`` must equal it (checked at setup). Cost per update is the same as SGD (M smaller forward/backward
    passes), unlike SAM's two passes.

    Randomness: each draw uses a private generator seeded from (``seed``, global rank, draw counter); the global RNG
    is never touched. Under DDP every rank draws its own noise (M × world-size Monte-Carlo samples per update,
    matching the reference's per-GPU behaviour); the gradients are then averaged as usual.

    Resume: the draw counter is in :meth:`state_dict` (it determines all future noise), so a resumed run continues
    with exactly the noise an uninterrupted run would use. NaN robustness: if the parameters are not finite, no noise
    is added for that batch (counted in ``lpf_sgd/skipped``); an exception mid-batch restores the parameters.

    Logged: ``lpf_sgd/std`` (γ(t), per step) and ``lpf_sgd/skipped``.

    History: :attr:`history` records, per noise draw, γ(t), the measured relative radius ``‖u‖ / ‖θ‖`` of the draw
    and the training loss at the perturbed point. It lives in the callback's state, bounded (past 2048 entries
    every second one is dropped), and :func:`lightning_autoopt.plots.plot_lpf_sgd` draws it with any logger.

    Args:
        std: Base relative noise std γ₀ (reference: 0.001 for MNIST/LeNet, 0.002 CIFAR, 0.0005 with the cosine rise).
        schedule: ``"constant"`` or ``"cosine_increase"``.
        increase_factor: α, the final multiple of γ₀ for ``"cosine_increase"`` (reference: 15).
        scale: ``"row_norm"`` (reference) or ``"row_rms"`` (norm / √fan-in).
        num_draws: M, noise draws per optimizer step; ``None`` (default) follows
            ``Trainer(accumulate_grad_batches=...)``, an explicit value must equal it.
        total_steps: T of the cosine rise (default: ``trainer.estimated_stepping_batches``).
        seed: Seed of the private noise generator.

    Raises:
        ValueError: On a negative std, an unknown schedule/scale, ``increase_factor < 1``, non-positive counts, a
            mismatch between ``num_draws`` and ``accumulate_grad_batches``, manual optimization, or an unbounded run
            with ``"cosine_increase"`` and no ``total_steps``.

    Example::

        trainer = Trainer(callbacks=[LPFSGD(std=0.0005, schedule="cosine_increase", increase_factor=15)])
    """

    def __init__(
        self,
        std: float = 0.001,
        schedule: Literal["constant", "cosine_increase"] = "constant",
        increase_factor: float = 15.0,
        scale: Literal["row_norm", "row_rms"] = "row_norm",
        num_draws: int | None = None,
        total_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
            raise ValueError(f"`std` must be a finite number >= 0, got {std!r}.")
        if schedule not in ("constant", "cosine_increase"):
            raise ValueError(f"`schedule` must be 'constant' or 'cosine_increase', got {schedule!r}.")
        if not math.isfinite(increase_factor) or increase_factor < 1:
            raise ValueError(f"`increase_factor` must be >= 1 (the final multiple of `std`), got {increase_factor!r}.")
        if scale not in ("row_norm", "row_rms"):
            raise ValueError(f"`scale` must be 'row_norm' or 'row_rms', got {scale!r}.")
        if num_draws is not None and (not isinstance(num_draws, int) or num_draws < 1):
            raise ValueError(
                f"`num_draws` must be a positive int or None (= accumulate_grad_batches), got {num_draws!r}."
            )
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"`total_steps` must be a positive int or None, got {total_steps!r}.")
        self.std = float(std)
        self.schedule = schedule
        self.increase_factor = float(increase_factor)
        self.scale = scale
        self.num_draws = num_draws
        self.total_steps = total_steps
        self.seed = int(seed)
        self.draws = 0
        self.skipped = 0
        self._horizon: float | None = None
        self._saved: list[tuple[Tensor, Tensor]] | None = None
        self._history = BoundedHistory(_HISTORY_KEYS)
        self._draw: tuple[int, float, float] | None = None  # (step, std, radius) of the draw awaiting its loss

    @property
    def history(self) -> dict[str, Any]:
        """The noise over training (a copy; plain lists).

        Keys: ``step`` (optimizer step of the draw), ``std`` (γ(t)), ``radius`` (``‖u‖ / ‖θ‖`` over all trainable
        parameters; 0 with γ = 0, NaN for a skipped draw), ``loss`` (the training loss at θ + u; NaN when
        ``training_step`` returned none), one entry per draw (thinned evenly on long runs: ``every`` draws per entry,
        ``offered`` in all); ``schedule``, ``scale`` and ``skipped``.
        """
        out = self._history.as_dict()
        out["schedule"] = self.schedule
        out["scale"] = self.scale
        out["skipped"] = self.skipped
        return out

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(std=self.std, schedule=self.schedule, seed=self.seed)

    def current_std(self, step: int) -> float:
        """γ at optimizer step ``step``."""
        if self.schedule == "constant":
            return self.std
        horizon = self._horizon if self._horizon is not None else float(self.total_steps or 1)
        progress = min(max(step, 0) / horizon, 1.0)
        return self.std * (1.0 + (self.increase_factor - 1.0) * (1.0 - math.cos(math.pi * progress)) / 2.0)

    # ---------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ValueError(
                "LPFSGD needs automatic optimization: it adds the noise before Lightning's forward/backward and "
                f"removes it after, but {type(pl_module).__name__} sets automatic_optimization=False (its "
                "training_step may run several backward passes or optimizers). Use automatic optimization, or "
                "perturb the weights in your training_step with lightning_autoopt.callbacks.lpf_sgd.filter_noise."
            )
        if self.num_draws is not None and trainer.accumulate_grad_batches != self.num_draws:
            raise ValueError(
                f"LPFSGD(num_draws={self.num_draws}) draws one noise sample per micro-batch, so it needs "
                f"Trainer(accumulate_grad_batches={self.num_draws}) (got {trainer.accumulate_grad_batches}); "
                "set both to M and divide the batch size by M."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule != "cosine_increase":
            return
        horizon = float(self.total_steps) if self.total_steps is not None else float(trainer.estimated_stepping_batches)
        if not math.isfinite(horizon) or horizon < 1:
            raise ValueError(
                "LPFSGD(schedule='cosine_increase') needs a finite horizon: set `total_steps` or bound the run with "
                "max_epochs/max_steps."
            )
        self._horizon = horizon

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._restore()  # defensive: never stack two perturbations
        std = self.current_std(trainer.global_step)
        # one private generator per draw, seeded from (seed, rank, draw counter): resumable and rank-distinct
        draw_seed = (((self.seed * 1_000_003) ^ (trainer.global_rank * 7_919)) * 1_000_033 + self.draws) & _MASK
        self.draws += 1
        params = [p for p in pl_module.parameters() if p.requires_grad]
        with torch.no_grad():
            if not _flat.all_finite(params):
                self.skipped += 1
                self._draw = (trainer.global_step, std, math.nan)
                pl_module.log("lpf_sgd/skipped", float(self.skipped), on_step=True, on_epoch=False)
                return
            if std == 0.0:
                self._draw = (trainer.global_step, std, 0.0)
                return
            generator = torch.Generator().manual_seed(draw_seed)
            saved: list[tuple[Tensor, Tensor]] = [(p, p.detach().clone()) for p in params]
            # summed on the parameters' device, read once per draw (fp32: MPS has no float64)
            noise_sq = param_sq = torch.zeros((), dtype=torch.float32, device=pl_module.device)
            for p in params:
                noise = filter_noise(p, std, self.scale, generator)
                noise_sq = noise_sq + noise.float().pow(2).sum().to(noise_sq.device)
                param_sq = param_sq + p.detach().float().pow(2).sum().to(param_sq.device)
                p.add_(noise)
        self._saved = saved
        radius = math.sqrt(float(noise_sq) / float(param_sq)) if float(param_sq) > 0 else math.nan
        self._draw = (trainer.global_step, std, radius)
        pl_module.log("lpf_sgd/std", std, on_step=True, on_epoch=False)

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._restore()  # e.g. when training_step returned None and no backward ran

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._saved is not None:
            rank_zero_warn("LPFSGD: no backward ran for this batch; the noise was removed at batch end.")
        self._restore()
        if self._draw is not None:
            step, std, radius = self._draw
            self._draw = None
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            value = float(loss.detach().float().mean()) if isinstance(loss, Tensor) else math.nan
            self._history.append(step=step, std=std, radius=radius, loss=value)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._saved is None:
            return
        with torch.no_grad():
            for p, value in self._saved:
                p.copy_(value)
        self._saved = None

    # ---------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "skipped": self.skipped, "history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.draws = int(state_dict["draws"])
        self.skipped = int(state_dict.get("skipped", 0))
        self._history.load(state_dict.get("history", {}))  # absent in checkpoints written before it was recorded
