"""LSGD (Leader SGD): workers are pulled towards the best-performing worker, with optional local and global leaders.

Paper: Teng, Gao, Kadra, Choromanska, "Leader Stochastic Gradient Descent for Distributed Training of Deep
Learning Models", NeurIPS 2019. This is a synchronous re-implementation (every worker takes ``local_period``
local steps, then a collective round), see ``docs/methods/lsgd.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_autoopt import _flat
from lightning_autoopt.strategies import _comm
from lightning_autoopt.strategies._checks import check_choice, check_group_size, check_period, check_strength
from lightning_autoopt.strategies._registry import register_strategy
from lightning_autoopt.strategies.local_update import LocalUpdateStrategy

_LEADER_METRICS = ("loss", "grad_decrease")


class LSGDStrategy(LocalUpdateStrategy):
    """Leader SGD as a Lightning strategy: every ``period`` optimizer steps, ``x <- x - pull_strength (x - leader)``.

    The leader is the worker with the lowest leader metric: the running mean of its last ``window`` training losses
    (``leader_metric="loss"``, the paper's choice), or the SDTL proxy ``"grad_decrease"`` (an EMA 0.9/0.1 of the
    first-order decrease estimate ``(x_prev - x_new) . grad`` of the last step; argmin as in the SDTL code). Ties go
    to the lowest rank; a NaN/inf metric counts as +inf, so a diverged worker is never the leader (each
    non-finite loss is counted in ``nonfinite_events``; a round where no worker has a finite metric has no leader
    and is counted in ``skipped_rounds``). The leader's parameters travel in one flat broadcast from its rank; the
    metrics, each rank's health flag and the fault counters in one all-gather before it (4 float64 per rank).

    A replica that is not finite at a round (see :class:`LocalUpdateStrategy`) is never the leader and copies the
    leader's parameters (pull strength 1 for it, whatever ``pull_strength``), with its optimizer state and loss
    window cleared; in a round without a leader it copies the lowest finite rank.

    **Multi-leader**: with more than one worker group (``group_size``, default one group per node) and a
    ``local_period``, workers are pulled towards their group's leader every ``local_period`` steps (broadcast inside
    the group) and towards the global leader every ``period`` steps. With one group only the global rounds run.

    **Proximal pull** (2021 reference code): after every local step ``x <- x - (proximal_strength / period)
    (x - stored_leader)`` towards the last broadcast global leader (and ``/ local_period`` towards the local leader),
    no communication. Off by default.

    The training loss is read without user changes from the optimizer closure (automatic optimization); under
    manual optimization log it as ``loss_key`` before ``opt.step()``.

    Args:
        period: Optimizer steps between global-leader rounds (``tau_G``).
        pull_strength: Global pull ``lambda_G`` in [0, 1]; 1 copies the leader.
        local_period: Optimizer steps between local-leader rounds (``tau``); ``None`` disables local rounds.
        local_pull_strength: Local pull ``lambda`` in [0, 1].
        group_size: Workers per group for local leaders; ``None`` = devices per node.
        window: Number of recent losses averaged for the leader choice; ``None`` = the shortest period.
        leader_metric: ``"loss"`` or ``"grad_decrease"``.
        proximal_strength: Per-step pull towards the stored leader(s), divided by the period; 0 disables.
        buffer_policy: See :class:`LocalUpdateStrategy`.
        eval_policy: Weights validated during fit and saved as the checkpoint's ``"state_dict"``: ``"average"``
            (default; the mean of the workers, the "center" the paper evaluates), ``"leader"`` (the last global
            leader's replica) or ``"local"``.
        consensus_every: See :class:`LocalUpdateStrategy`. Off (``0``) by default: LSGD pays one full-model
            diagnostic all-reduce per logged round for it (doubling a round's traffic).
        loss_key: See :class:`LocalUpdateStrategy`.
        **kwargs: Forwarded to :class:`~lightning.pytorch.strategies.DDPStrategy`.

    Raises:
        ValueError: If a period is < 1, a strength is outside [0, 1], ``window`` < 1 or the metric is unknown.

    Example::

        trainer = Trainer(accelerator="cpu", devices=4, strategy=LSGDStrategy(period=16, pull_strength=0.1))
        trainer = Trainer(devices=2, strategy="lsgd")  # registered defaults
    """

    strategy_name = "lsgd"

    def __init__(
        self,
        period: int = 16,
        pull_strength: float = 0.1,
        local_period: int | None = None,
        local_pull_strength: float = 0.1,
        group_size: int | None = None,
        window: int | None = None,
        leader_metric: str = "loss",
        proximal_strength: float = 0.0,
        buffer_policy: str = "local",
        eval_policy: str = "average",
        consensus_every: int = 0,
        loss_key: str = "train_loss",
        **kwargs: Any,
    ) -> None:
        self.period = check_period("period", period)
        self.local_period = check_period("local_period", local_period, allow_none=True)
        self.pull_strength = check_strength("pull_strength", pull_strength)
        self.local_pull_strength = check_strength("local_pull_strength", local_pull_strength)
        self.proximal_strength = check_strength("proximal_strength", proximal_strength)
        self.group_size = check_group_size(group_size)
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"`window` must be an integer >= 1 (losses averaged) or None, got {window!r}.")
        self.leader_metric = check_choice("leader_metric", leader_metric, _LEADER_METRICS)
        super().__init__(
            buffer_policy=buffer_policy,
            eval_policy=eval_policy,
            consensus_every=consensus_every,
            loss_key=loss_key,
            **kwargs,
        )
        self.window: int = window if window is not None else min(self.period, self.local_period or self.period)
        self.keep_losses(self.window)
        self._decrease_ema = math.inf
        self._prev_params: Tensor | None = None
        self.leader_counts: list[int] = []
        self.local_leader: int | None = None
        self._stored_leader: Tensor | None = None
        self._stored_local_leader: Tensor | None = None

    # ------------------------------------------------------------------ setup
    def setup_round_state(self) -> None:
        self.setup_groups(self.group_size)
        if len(self.leader_counts) != self.world_size:
            self.leader_counts = [0] * self.world_size
        if self._stored_leader is not None:
            self._stored_leader = self._stored_leader.to(self.root_device)
        if self._stored_local_leader is not None:
            self._stored_local_leader = self._stored_local_leader.to(self.root_device)

    # ------------------------------------------------------------------ per step
    def leader_metric_value(self) -> float:
        """This worker's current leader metric (lower is better; +inf when unknown or non-finite)."""
        if self.leader_metric == "grad_decrease":
            return self._decrease_ema
        if not self.recent_losses:
            return math.inf
        # a NaN/inf loss stays in the window (the mean is then not finite): never the leader until it slides out
        return _flat.finite_or_inf(sum(self.recent_losses) / len(self.recent_losses))

    def on_before_local_step(self, step: int) -> None:
        if self.leader_metric == "grad_decrease":
            self._prev_params = self.flat_params()

    def on_local_step(self, step: int) -> None:
        if self.leader_metric == "loss":
            self.record_step_loss()
        else:
            assert self._prev_params is not None
            params = self.params
            grads = _flat.flatten([p.grad for p in params], like=params)
            decrease = float(torch.dot(self._prev_params - self.flat_params(), grads).item())
            self._prev_params = None
            if not math.isfinite(decrease):
                self.note_nonfinite()
                self._decrease_ema = math.inf
            elif not math.isfinite(self._decrease_ema):
                self._decrease_ema = decrease
            else:
                self._decrease_ema = 0.9 * self._decrease_ema + 0.1 * decrease
        if self.proximal_strength > 0:
            self._proximal_pull()

    def _proximal_pull(self) -> None:
        if self._stored_leader is None and self._stored_local_leader is None:
            return
        flat = self.flat_params()
        if self._stored_leader is not None:
            _comm.leader_pull_(flat, self._stored_leader, self.proximal_strength / self.period)
        if self._stored_local_leader is not None and self.local_period is not None:  # local rounds ran
            _comm.leader_pull_(flat, self._stored_local_leader, self.proximal_strength / self.local_period)
        self.write_params(flat)

    # ------------------------------------------------------------------ rounds
    def round_due(self, step: int) -> bool:
        return step % self.period == 0 or self.group_round_due(step, self.local_period)

    def on_round(self, step: int) -> None:
        if self.group_round_due(step, self.local_period):
            self._leader_round(self.group, self.group_ranks, self.local_pull_strength, scope="local")
        if step % self.period == 0:
            self._leader_round(None, list(range(self.world_size)), self.pull_strength, scope="global")

    def _leader_round(self, group: Any, ranks: list[int], strength: float, scope: str) -> None:
        # one all-gather carries every rank's metric and health (finite flag + counters in global rounds)
        row = torch.cat(
            [torch.tensor([self.leader_metric_value()], dtype=torch.float64), self.health_tail(group is None)]
        )
        gathered, sent = _comm.all_gather_(row.to(self.root_device), group=group)
        self.count_bytes(sent, op="all_gather", group=group)
        n_finite = self.read_health(gathered[:, 1:].sum(dim=0), group)  # raises when no replica is finite
        if scope == "global":  # every rank's leader metric, for the round history's loss panel
            self.round_losses = [float(v) for v in gathered[:, 0].tolist()]
        if n_finite == 0:  # a group round with no finite member: the next global round heals them
            return
        healthy = gathered[:, 1] > 0.5
        index = _comm.argmin_lowest_index(
            torch.where(healthy, gathered[:, 0], torch.full_like(gathered[:, 0], math.inf))
        )
        chosen = index is not None
        if index is None:  # nobody has a finite metric: no leader this round
            self.skipped_rounds += 1
            self.log_value("dist/skipped_rounds", self.skipped_rounds)
            if bool(healthy.all()):
                return
            index = int(torch.nonzero(healthy)[0])  # still heal the non-finite replicas, from the lowest finite rank
        leader = ranks[index]
        flat = self.flat_params()
        buffer = flat.clone() if self.global_rank == leader else torch.empty_like(flat)
        self.count_bytes(_comm.broadcast_(buffer, src=leader, group=group), op="broadcast", group=group, src=leader)
        if scope == "global" and self.consensus_due():
            self.log_consensus(flat)
        if not self.replica_finite:
            self.heal_(buffer)
        elif chosen:
            self.log_value(f"dist/{scope}_leader_distance", float(torch.linalg.vector_norm(flat - buffer).item()))
            _comm.leader_pull_(flat, buffer, strength)
            self.write_params(flat)
        self.average_buffers(group)
        if not chosen:
            return
        if scope == "global":
            self.leader = leader
            self.leader_counts[leader] += 1
            self._stored_leader = buffer
            self.log_value("dist/leader", leader)
        else:
            self.local_leader = leader
            self._stored_local_leader = buffer
            self.log_value("dist/local_leader", leader)

    def reset_after_heal(self) -> None:
        """The healed replica's loss window is gone (base); its decrease EMA described the diverged replica too."""
        self._decrease_ema = math.inf
        self._prev_params = None

    def validate_world_size(self, world_size: int) -> None:
        self.validate_group_size(self.group_size, world_size)

    # ------------------------------------------------------------------ state
    def extra_state_dict(self) -> dict[str, Any]:
        return {
            "decrease_ema": self._decrease_ema,
            "leader_counts": list(self.leader_counts),
            "local_leader": self.local_leader,
            "stored_leader": self._stored_leader,
            "stored_local_leader": self._stored_local_leader,
        }

    def load_extra_state_dict(self, state: Mapping[str, Any]) -> None:
        self._decrease_ema = float(state.get("decrease_ema", math.inf))
        self.leader_counts = list(state.get("leader_counts", []))
        self.local_leader = state.get("local_leader")
        self._stored_leader = state.get("stored_leader")
        self._stored_local_leader = state.get("stored_local_leader")


register_strategy(LSGDStrategy)
