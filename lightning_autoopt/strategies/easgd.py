"""EASGD (elastic averaging SGD), synchronous, with a center variable kept identically on every rank.

Paper: Zhang, Choromanska, LeCun, "Deep learning with Elastic Averaging SGD", NeurIPS 2015. The round follows the
LSGD reference code's EASGD baseline (see ``docs/methods/easgd.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_autoopt.strategies import _comm
from lightning_autoopt.strategies._checks import check_period, check_strength
from lightning_autoopt.strategies._registry import register_strategy
from lightning_autoopt.strategies.local_update import LocalUpdateStrategy


class EASGDStrategy(LocalUpdateStrategy):
    """Elastic averaging: every ``period`` steps workers move towards the center and the center towards them.

    With ``beta = elastic_strength`` and ``alpha = beta / world_size``, one round is

    * ``mean = average of the workers`` (one flat all-reduce),
    * workers: ``x <- (1 - alpha) x + alpha * center_old``,
    * center: ``center <- (1 - beta) center + beta * mean`` (the mean taken before the pull).

    Every rank holds the same center (it is computed from all-reduced values only), so no extra broadcast is needed.
    The center starts at the broadcast initial weights and is saved in checkpoints (each rank's strategy state).
    A non-finite replica is left out of the mean and restarts from the updated center (optimizer state cleared).

    Args:
        period: Optimizer steps between rounds.
        elastic_strength: ``beta`` in [0, 1]; the reference code uses 0.43.
        buffer_policy: See :class:`LocalUpdateStrategy`.
        eval_policy: ``"center"`` (default: center parameters + averaged floating buffers), ``"average"``,
            ``"leader"`` (rank 0) or ``"local"``.
        consensus_every: See :class:`LocalUpdateStrategy` (free here: the mean is computed anyway).
        **kwargs: Forwarded to :class:`LocalUpdateStrategy` / ``DDPStrategy``.

    Raises:
        ValueError: If ``period`` < 1 or ``elastic_strength`` is outside [0, 1].

    Example::

        trainer = Trainer(accelerator="cpu", devices=4, strategy=EASGDStrategy(period=8, elastic_strength=0.43))
    """

    strategy_name = "easgd"
    eval_policies: ClassVar[tuple[str, ...]] = ("local", "average", "leader", "center")

    def __init__(
        self,
        period: int = 16,
        elastic_strength: float = 0.43,
        buffer_policy: str = "local",
        eval_policy: str = "center",
        consensus_every: int = 1,
        **kwargs: Any,
    ) -> None:
        self.period = check_period("period", period)
        self.elastic_strength = check_strength("elastic_strength", elastic_strength)
        super().__init__(
            buffer_policy=buffer_policy, eval_policy=eval_policy, consensus_every=consensus_every, **kwargs
        )
        self.center: Tensor | None = None

    def setup_round_state(self) -> None:
        if self.center is None or not self.resumed:
            self.center = self.flat_params()  # identical on every rank right after the initial broadcast
        self.center = self.center.to(self.root_device)

    def round_due(self, step: int) -> bool:
        return step % self.period == 0

    def on_round(self, step: int) -> None:
        assert self.center is not None
        flat = self.flat_params()
        mean = self.masked_mean(flat)  # of the finite replicas; raises on every rank when there is none
        assert mean is not None
        if self.consensus_due():
            self.log_consensus(flat, mean)
        alpha = self.elastic_strength / self.world_size
        if self.replica_finite:
            _comm.elastic_update_(flat, self.center, mean, alpha, self.elastic_strength)
            self.write_params(flat)
        else:  # the same centre update as everywhere, then this replica restarts from the new centre
            self.center.mul_(1.0 - self.elastic_strength).add_(mean, alpha=self.elastic_strength)
            self.heal_(self.center)
        self.average_buffers()

    def policy_flat(self, policy: str) -> Tensor:
        if policy != "center" or self.center is None:  # no center outside fit: fall back to the average
            return super().policy_flat("average" if policy == "center" else policy)
        return torch.cat([self.center, self.finite_buffer_mean().to(self.center.device)])

    def extra_state_dict(self) -> dict[str, Any]:
        return {"center": self.center}

    def load_extra_state_dict(self, state: Mapping[str, Any]) -> None:
        self.center = state.get("center")


register_strategy(EASGDStrategy)
