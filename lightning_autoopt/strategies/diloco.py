"""DiLoCo: local inner steps, then an outer Nesterov-SGD step on the averaged pseudo-gradient.

Paper: Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models", arXiv 2311.08105
(2023). Re-implemented from the paper's algorithm description; see ``docs/methods/diloco.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_autoopt.strategies._checks import check_overlap, check_period
from lightning_autoopt.strategies._registry import register_strategy
from lightning_autoopt.strategies.local_update import LocalUpdateStrategy


@torch.no_grad()
def outer_nesterov_step_(
    global_params: Tensor, momentum_buffer: Tensor, pseudo_grad: Tensor, lr: float, momentum: float, nesterov: bool
) -> Tensor:
    """One outer SGD step on the global weights in place; returns the applied step ``global_old - global_new``.

    Same rule as ``torch.optim.SGD`` (dampening 0) with the pseudo-gradient as the gradient::

        buf <- momentum * buf + pseudo_grad
        step = pseudo_grad + momentum * buf   (nesterov)   or   buf   (plain momentum)
        global <- global - lr * step

    ``momentum_buffer`` starts at zeros (so the first step equals torch's, which starts the buffer at the gradient).
    """
    momentum_buffer.mul_(momentum).add_(pseudo_grad)
    step = pseudo_grad.add(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer.clone()
    step.mul_(lr)
    global_params.sub_(step)
    return step


class DiLoCoStrategy(LocalUpdateStrategy):
    """Every ``period`` (H) inner optimizer steps, an outer Nesterov-SGD step on the averaged pseudo-gradient.

    Each worker trains its own replica with its own inner optimizer (whatever ``configure_optimizers`` returns; the
    paper uses AdamW; its state stays local and is never averaged). All ranks hold the same *global* weights
    ``theta``. A round, after inner step ``k * period``:

    * ``mean = average of the replicas`` (one flat all-reduce of the parameters),
    * pseudo-gradient ``delta = theta - mean``,
    * outer SGD with (Nesterov) momentum on ``theta`` with gradient ``delta`` (:func:`outer_nesterov_step_`),
    * every replica restarts from the new ``theta``.

    ``outer_lr=1, outer_momentum=0`` is exactly local SGD (``theta`` becomes the mean). ``theta`` and the momentum
    buffer are computed from all-reduced values only, so they are identical on every rank without a broadcast;
    both are saved in checkpoints and restored on resume. The mean is over the finite replicas only: a non-finite
    replica adds nothing to the pseudo-gradient and restarts from ``theta`` with its inner optimizer state cleared.

    Logged per round: ``diloco/pseudo_grad_norm`` (``||delta||``), ``diloco/outer_step_norm`` (``||theta_old -
    theta_new||``), ``diloco/momentum_norm`` and the base's byte counters; all computed locally, no extra
    communication.

    Args:
        period: Inner optimizer steps between outer steps (``H``; the paper uses 500 on language models; 16 here,
            the period of the other strategies, for equal-bytes comparisons on small workloads).
        outer_lr: Outer learning rate (> 0; default 0.7, the paper's).
        outer_momentum: Outer momentum in [0, 1) (default 0.9, the paper's; on MNIST-1D at period 16 it matched
            0.5 within noise and beat no momentum by 5 points, see ``docs/methods/diloco.md``).
        nesterov: Nesterov momentum (the paper's outer optimizer) or plain heavy-ball momentum.
        buffer_policy: See :class:`LocalUpdateStrategy`; floating buffers are not part of ``theta`` (BatchNorm
            statistics are averaged at rounds with ``"average"``, kept per rank with ``"local"``).
        eval_policy: ``"global"`` (default: ``theta`` plus averaged floating buffers; the model the paper
            evaluates), ``"average"`` (current mean of the replicas), ``"leader"`` (rank 0) or ``"local"``.
        consensus_every: See :class:`LocalUpdateStrategy`; off by default here because it costs a scalar
            all-reduce per round (the mean itself is computed anyway); not logged with ``overlap=True``.
        overlap: Overlap each round with the next ``period`` inner steps (streaming DiLoCo's overlapped outer step,
            Douillard et al. 2025, with a delay of one period): the replicas' average at step ``t`` is launched
            asynchronously on its own process group; at ``t + period`` the outer step is taken from it and every
            replica moves by ``theta' - x_t`` (keeping the inner steps it took meanwhile). Default ``False``.
        **kwargs: Forwarded to :class:`LocalUpdateStrategy` / ``DDPStrategy``.

    Raises:
        ValueError: If ``period`` < 1, ``outer_lr`` is not a finite number > 0, ``outer_momentum`` is outside
            [0, 1) or ``nesterov`` is not a bool.

    Example::

        trainer = Trainer(accelerator="cpu", devices=4, strategy=DiLoCoStrategy(period=16))
        trainer = Trainer(accelerator="cpu", devices=4, strategy="diloco")  # or "diloco_spawn", ...
    """

    strategy_name = "diloco"
    eval_policies: ClassVar[tuple[str, ...]] = ("local", "average", "leader", "global")

    def __init__(
        self,
        period: int = 16,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        nesterov: bool = True,
        buffer_policy: str = "local",
        eval_policy: str = "global",
        consensus_every: int = 0,
        overlap: bool = False,
        **kwargs: Any,
    ) -> None:
        self.period = check_period("period", period)
        self.overlap = check_overlap(overlap)
        if isinstance(outer_lr, bool) or not isinstance(outer_lr, (int, float)) or not math.isfinite(outer_lr):
            raise ValueError(f"`outer_lr` must be a finite number > 0 (paper: 0.7), got {outer_lr!r}.")
        if outer_lr <= 0:
            raise ValueError(f"`outer_lr` must be > 0 (paper: 0.7), got {outer_lr!r}.")
        if (
            isinstance(outer_momentum, bool)
            or not isinstance(outer_momentum, (int, float))
            or not 0.0 <= float(outer_momentum) < 1.0
        ):
            raise ValueError(f"`outer_momentum` must be a number in [0, 1) (paper: 0.9), got {outer_momentum!r}.")
        if not isinstance(nesterov, bool):
            raise ValueError(f"`nesterov` must be True or False, got {nesterov!r}.")
        super().__init__(
            buffer_policy=buffer_policy, eval_policy=eval_policy, consensus_every=consensus_every, **kwargs
        )
        self.outer_lr = float(outer_lr)
        self.outer_momentum = float(outer_momentum)
        self.nesterov = nesterov
        self.global_params: Tensor | None = None
        self.momentum_buffer: Tensor | None = None

    def setup_round_state(self) -> None:
        if self.global_params is None or self.momentum_buffer is None or not self.resumed:
            self.global_params = self.flat_params()  # identical on every rank right after the initial broadcast
            self.momentum_buffer = torch.zeros_like(self.global_params)
        self.global_params = self.global_params.to(self.root_device)
        self.momentum_buffer = self.momentum_buffer.to(self.root_device)
        if self.overlap:
            self.setup_overlap_group()

    def round_due(self, step: int) -> bool:
        return step % self.period == 0

    def on_round(self, step: int) -> None:
        if self.overlap:
            self.finish_rounds()
            self.launch_overlapped_mean(self.flat_params())
            self.average_buffers()
            return
        flat = self.flat_params()
        mean = self.masked_mean(flat)  # of the finite replicas; raises on every rank when there is none
        assert mean is not None
        if self.consensus_due():
            self.log_consensus(flat, mean)
        self._outer_step(mean)
        assert self.global_params is not None
        if self.replica_finite:
            self.write_params(self.global_params)
        else:  # every replica restarts from theta anyway; a healed one also loses its inner optimizer state
            self.heal_(self.global_params)
        self.average_buffers()

    def finish_rounds(self) -> None:
        done = self.take_overlapped_mean()
        if done is not None:
            snapshot, mean = done
            self._outer_step(mean)
            assert self.global_params is not None
            self.apply_overlapped(snapshot, self.global_params)

    def _outer_step(self, mean: Tensor) -> None:
        assert self.global_params is not None and self.momentum_buffer is not None
        pseudo_grad = self.global_params - mean
        step_vec = outer_nesterov_step_(
            self.global_params, self.momentum_buffer, pseudo_grad, self.outer_lr, self.outer_momentum, self.nesterov
        )
        self.log_value("diloco/pseudo_grad_norm", float(pseudo_grad.norm()))
        self.log_value("diloco/outer_step_norm", float(step_vec.norm()))
        self.log_value("diloco/momentum_norm", float(self.momentum_buffer.norm()))

    def policy_flat(self, policy: str) -> Tensor:
        if policy != "global" or self.global_params is None:  # no global weights outside fit: the average
            return super().policy_flat("average" if policy == "global" else policy)
        return torch.cat([self.global_params, self.finite_buffer_mean().to(self.global_params.device)])

    def extra_state_dict(self) -> dict[str, Any]:
        return {"global_params": self.global_params, "momentum_buffer": self.momentum_buffer}

    def load_extra_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_params = state.get("global_params")
        self.momentum_buffer = state.get("momentum_buffer")


register_strategy(DiLoCoStrategy)
