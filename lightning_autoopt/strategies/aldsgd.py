"""AL-DSGD: adjacent-leader decentralized SGD (gossip plus pulls toward the best and the busiest neighbour).

Reference: He, Wang, Choromanska, "AL-DSGD: Adjacent Leader Decentralized Stochastic Gradient Descent",
arXiv 2405.11389. Re-implemented from the description of the public code (``communicator.py``,
``LLDSGDCommunicator``); see ``docs/methods/aldsgd.md`` for the deviations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_autoopt.strategies._checks import check_period, check_strength
from lightning_autoopt.strategies._gossip import adjacent_leader_update, gossip_mix, select_adjacent_leaders
from lightning_autoopt.strategies._registry import register_strategy
from lightning_autoopt.strategies.dpsgd import DPSGDStrategy, GraphSpec
from lightning_autoopt.strategies.graphs import CommunicationGraph


class ALDSGDStrategy(DPSGDStrategy):
    """D-PSGD gossip plus AL-DSGD's corrective pulls toward adjacent leaders, on static or dynamic graphs.

    In a pull round, after the gossip average ``xbar_i``, each worker with at least one active neighbour looks at
    ``{self} ∪ neighbours`` and picks ``b`` = the member with the lowest leader signal (training loss) and ``m`` =
    the member with the highest *active* degree this round (ties go to self, then to the lower rank). With the
    members' *pre-gossip* parameters ``x_b``, ``x_m``:

    ``y = (1 - best_mix - degree_mix) * xbar_i + best_mix * x_b + degree_mix * x_m``,
    ``x_i <- (1 - best_pull - degree_pull) * y + best_pull * x_b + degree_pull * x_m``.

    The names follow what the reference *code* does (its ``c1``/``p1`` act on the best-loss neighbour and
    ``c2``/``p2`` on the max-degree neighbour; its help text says the opposite). Each neighbour message carries the
    flat parameters plus the sender's leader signal (one extra element); degrees come from the shared schedule.
    A NaN/inf loss maps to ``+inf`` and never makes a worker the best neighbour.

    Degenerate case: when every worker has active degree <= 1 (e.g. ``activation="alternate"``, one matching per
    round, as in the reference code's fixed processor), the max-degree member is the worker itself, so the degree
    terms pull toward the worker's own pre-gossip parameters. The degree terms only matter when several matchings
    are active at once on an irregular graph.

    Logged per round (besides D-PSGD's): ``dist/best_neighbour`` and ``dist/max_degree_neighbour`` (ranks chosen in
    the last pull round; this rank when it pulled toward itself), ``dist/leader_signal``.

    Args:
        best_mix: ``c1`` (code semantics), mixing weight of the best-loss member. Default 0.3.
        degree_mix: ``c2``, mixing weight of the max-degree member. Default 0.1.
        best_pull: ``p1``, corrective pull toward the best-loss member. Default 0.2 (README command).
        degree_pull: ``p2``, corrective pull toward the max-degree member. Default 0.2.
        pull_period: Pull every this many gossip rounds (other rounds are plain gossip). Default 1.
        loss_window: Leader signal = mean of the last ``loss_window`` finite training losses (1 = the current
            minibatch loss, as in the reference code). A non-finite current loss makes the signal ``+inf``.
        graph, dynamic_graph, activation, budget, period, edge_prob, graph_seed: See :class:`DPSGDStrategy`.
            AL-DSGD's default is dynamic: ``graph="ring"``, ``dynamic_graph="random_ring"``; ``period`` 4 as
            D-PSGD's (the reference code gossips every step: ``period=1``).
        buffer_policy, eval_policy, consensus_every: See :class:`LocalUpdateStrategy` (``consensus_every`` off by
            default: it costs a full-model diagnostic all-reduce).
        **kwargs: Forwarded to :class:`LocalUpdateStrategy` / ``DDPStrategy``.

    Raises:
        ValueError: If a mix or pull is outside [0, 1], ``best_mix + degree_mix > 1``,
            ``best_pull + degree_pull > 1``, ``pull_period``/``loss_window`` < 1, or for a bad graph argument.

    Example::

        trainer = Trainer(accelerator="cpu", devices=4, strategy=ALDSGDStrategy(graph="erdos_renyi"))
        trainer = Trainer(accelerator="cpu", devices=4, strategy="aldsgd")
    """

    strategy_name = "aldsgd"

    def __init__(
        self,
        best_mix: float = 0.3,
        degree_mix: float = 0.1,
        best_pull: float = 0.2,
        degree_pull: float = 0.2,
        pull_period: int = 1,
        loss_window: int = 1,
        graph: GraphSpec = "ring",
        dynamic_graph: GraphSpec | None = "random_ring",
        activation: str = "all",
        budget: float = 0.5,
        period: int = 4,
        edge_prob: float = 0.5,
        graph_seed: int = 0,
        buffer_policy: str = "local",
        eval_policy: str = "average",
        consensus_every: int = 0,
        **kwargs: Any,
    ) -> None:
        self.best_mix = check_strength("best_mix", best_mix)
        self.degree_mix = check_strength("degree_mix", degree_mix)
        self.best_pull = check_strength("best_pull", best_pull)
        self.degree_pull = check_strength("degree_pull", degree_pull)
        if self.best_mix + self.degree_mix > 1.0:
            raise ValueError(f"`best_mix + degree_mix` must be <= 1, got {self.best_mix + self.degree_mix}.")
        if self.best_pull + self.degree_pull > 1.0:
            raise ValueError(f"`best_pull + degree_pull` must be <= 1, got {self.best_pull + self.degree_pull}.")
        self.pull_period = check_period("pull_period", pull_period)
        self.loss_window = check_period("loss_window", loss_window)
        super().__init__(
            graph=graph,
            dynamic_graph=dynamic_graph,
            activation=activation,
            budget=budget,
            period=period,
            edge_prob=edge_prob,
            graph_seed=graph_seed,
            buffer_policy=buffer_policy,
            eval_policy=eval_policy,
            consensus_every=consensus_every,
            **kwargs,
        )
        self.keep_losses(self.loss_window)

    # ------------------------------------------------------------------ leader signal
    @override
    def on_local_step(self, step: int) -> None:
        self.record_step_loss()

    def leader_signal(self) -> float:
        """Mean of the finite losses in the window; ``+inf`` if the latest loss is not finite (or none recorded)."""
        if not self.recent_losses or not math.isfinite(self.recent_losses[-1]):
            return math.inf
        finite = [v for v in self.recent_losses if math.isfinite(v)]
        return sum(finite) / len(finite)

    # ------------------------------------------------------------------ rounds
    @override
    def make_payload(self, flat: Tensor) -> Tensor:
        signal = torch.tensor([self.leader_signal()], dtype=flat.dtype, device=flat.device)
        return torch.cat([flat, signal])

    @override
    def mix(
        self, flat: Tensor, received: dict[int, Tensor], graph: CommunicationGraph, active: list[int], alpha: float
    ) -> Tensor:
        n = flat.numel()
        rank = self.global_rank
        params = {j: buf[:n] for j, buf in received.items()}
        mixed = gossip_mix(flat, rank, params, alpha)
        pull = self.num_rounds % self.pull_period == 0
        self.log_value("dist/leader_signal", self.leader_signal())
        if not pull or not received:
            return mixed
        # compare signals at the precision they travel with, so both ends of an edge see the same numbers
        own_signal = float(torch.tensor(self.leader_signal(), dtype=flat.dtype))
        losses = {rank: own_signal, **{j: float(buf[n]) for j, buf in received.items()}}
        best, max_deg = select_adjacent_leaders(rank, list(received), losses, graph.degrees(active))
        params[rank] = flat
        self.log_value("dist/best_neighbour", best)
        self.log_value("dist/max_degree_neighbour", max_deg)
        return adjacent_leader_update(
            mixed, params[best], params[max_deg], self.best_mix, self.degree_mix, self.best_pull, self.degree_pull
        )


register_strategy(ALDSGDStrategy)
