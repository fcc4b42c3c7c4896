"""D-PSGD: decentralized parallel SGD (gossip averaging with graph neighbours), with static or dynamic graphs.

Reference: Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
Decentralized Parallel Stochastic Gradient Descent", NeurIPS 2017. Graph handling follows the MATCHA / AL-DSGD
code base (graphs as lists of matchings, ``alpha = 2 / (lambda_2 + lambda_max)``). See ``docs/methods/aldsgd.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt.strategies import _comm
from lightning_autoopt.strategies._checks import check_choice, check_number, check_period
from lightning_autoopt.strategies._gossip import gossip_mix
from lightning_autoopt.strategies._registry import register_strategy
from lightning_autoopt.strategies.graphs import (
    ACTIVATIONS,
    GRAPH_NAMES,
    CommunicationGraph,
    GraphSchedule,
    build_graph,
    check_world_size,
)
from lightning_autoopt.strategies.local_update import LocalUpdateStrategy

GraphSpec = str | list[list[int]]


def _check_graph_spec(name: str, spec: Any, allow_none: bool = False) -> None:
    if spec is None and allow_none:
        return
    if isinstance(spec, str):
        if spec.lower() not in GRAPH_NAMES:
            raise ValueError(f"`{name}` must be one of {GRAPH_NAMES} or an edge list [[u, v], ...], got {spec!r}.")
        return
    if isinstance(spec, Sequence) and all(
        isinstance(e, Sequence) and len(e) == 2 and all(isinstance(r, int) and not isinstance(r, bool) for r in e)
        for e in spec
    ):
        if not spec:
            raise ValueError(f"`{name}` is an empty edge list; give at least one edge [u, v].")
        return
    raise ValueError(f"`{name}` must be a graph name {GRAPH_NAMES} or an edge list [[u, v], ...], got {spec!r}.")


class DPSGDStrategy(LocalUpdateStrategy):
    """Decentralized gossip: every ``period`` optimizer steps each worker averages with its active neighbours.

    A round mixes ``x_i <- (1 - d_i * alpha) * x_i + alpha * sum_{j in N_i} x_j`` over the ``d_i`` neighbours of
    the round's active matchings (``W = I - alpha * L``, doubly stochastic, so the average of all workers is
    preserved). Neighbours exchange flat buffers point to point (``batch_isend_irecv``); since the active edges are
    a union of matchings the exchange cannot deadlock. The only global collectives in a round are a 3-float health
    all-reduce (24 bytes, counted: the stop when no replica is finite, and the world fault counters) and the
    optional diagnostic ``dist/consensus_distance``.

    Each message ends with the sender's health flag; a receiver mixes only neighbours whose flag is set and whose
    buffer is finite (the weights of the others are left on itself, so ``W`` stays row-stochastic). A non-finite
    replica instead takes the average of its usable neighbours (optimizer state cleared); with none this round it
    waits for a later one.

    Graphs (see :mod:`lightning_autoopt.strategies.graphs`): a named graph (``"ring"``, ``"random_ring"``,
    ``"complete"``, ``"erdos_renyi"``, ``"matcha8_a"``, ``"matcha8_b"``) or an edge list; it must span exactly
    ``world_size`` workers. With ``dynamic_graph`` set, rounds alternate between the two graphs (AL-DSGD's "graph
    rotation"). ``activation`` picks the matchings active in a round: ``"all"`` (classic D-PSGD), ``"alternate"``
    (one matching per round, cycling) or ``"random"`` (each with probability ``budget``, MATCHA-style sampling with
    a shared seed). The schedule is a pure function of the round counter, identical on every rank, and survives
    resume through the persisted counter.

    Logged per round: ``dist/degree`` (this rank's active degree), ``dist/graph`` (index of the graph used),
    ``dist/consensus_distance`` and the base's byte counters.

    Args:
        graph: Base graph (name or edge list).
        dynamic_graph: Optional second graph; rounds alternate ``graph``, ``dynamic_graph``, ``graph``, ...
        activation: ``"all"``, ``"alternate"`` or ``"random"``.
        budget: Activation probability of each matching for ``activation="random"``.
        period: Optimizer steps between gossip rounds. Default 4: on a ring every worker sends its model to two
            neighbours per round, so period 1 sends 2x the model per step, more than DDP's ring all-reduce
            (1.5x on 4 workers) and slower than DDP on a slow link; period 4 sends a third of DDP's bytes (see
            ``benchmarks/RESULTS.md``, constrained link). ``period=1`` is the paper's D-PSGD.
        edge_prob: Edge probability of ``"erdos_renyi"`` graphs.
        graph_seed: Seed for random graphs (the dynamic graph uses ``graph_seed + 1``) and random activation.
        buffer_policy: ``"local"`` (default) or ``"average"`` (floating buffers are gossiped with the parameters).
        eval_policy: ``"average"`` (default), ``"leader"`` (rank 0) or ``"local"``.
        consensus_every: See :class:`LocalUpdateStrategy`. Off (``0``) by default: it costs one full-model
            diagnostic all-reduce per logged round, more than a gossip round on a ring.
        **kwargs: Forwarded to :class:`LocalUpdateStrategy` / ``DDPStrategy``.

    Raises:
        ValueError: For an unknown graph name, a malformed edge list, an unknown activation, a budget outside
            (0, 1] or a period < 1; when the Trainer is built, for a graph that does not fit the world size.

    Example::

        trainer = Trainer(accelerator="cpu", devices=4, strategy=DPSGDStrategy(graph="ring", period=2))
        trainer = Trainer(accelerator="cpu", devices=4, strategy="dpsgd")
    """

    strategy_name = "dpsgd"

    def __init__(
        self,
        graph: GraphSpec = "ring",
        dynamic_graph: GraphSpec | None = None,
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
        _check_graph_spec("graph", graph)
        _check_graph_spec("dynamic_graph", dynamic_graph, allow_none=True)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.budget = check_number("budget", budget, 0.0, 1.0, low_open=True)  # probability a matching is active
        self.edge_prob = check_number("edge_prob", edge_prob, 0.0, 1.0, low_open=True)
        self.graph = graph
        self.dynamic_graph = dynamic_graph
        self.period = check_period("period", period)
        self.graph_seed = int(graph_seed)
        super().__init__(
            buffer_policy=buffer_policy, eval_policy=eval_policy, consensus_every=consensus_every, **kwargs
        )
        self.schedule: GraphSchedule | None = None

    # ------------------------------------------------------------------ graph
    def build_schedule(self, world_size: int) -> GraphSchedule:
        """The round schedule for ``world_size`` workers (identical on every rank)."""
        graphs: list[CommunicationGraph] = [build_graph(self.graph, world_size, self.edge_prob, self.graph_seed)]
        if self.dynamic_graph is not None:
            graphs.append(build_graph(self.dynamic_graph, world_size, self.edge_prob, self.graph_seed + 1))
        for g in graphs:
            check_world_size(g, world_size)
        return GraphSchedule(graphs, activation=self.activation, budget=self.budget, seed=self.graph_seed)

    @override
    def setup_round_state(self) -> None:
        self.schedule = self.build_schedule(self.world_size)

    # ------------------------------------------------------------------ rounds
    @override
    def round_due(self, step: int) -> bool:
        return step % self.period == 0

    def gossip_tensors(self) -> list[Tensor]:
        """What a round mixes: the parameters, plus floating buffers when ``buffer_policy="average"``."""
        return self.params + (self.float_buffers if self.buffer_policy == "average" else [])

    def make_payload(self, flat: Tensor) -> Tensor:
        """The buffer sent to neighbours (subclasses append scalars)."""
        return flat

    def mix(
        self, flat: Tensor, received: dict[int, Tensor], graph: CommunicationGraph, active: list[int], alpha: float
    ) -> Tensor:
        """New local state from this rank's state and the neighbours' payloads."""
        n = flat.numel()
        return gossip_mix(flat, self.global_rank, {j: buf[:n] for j, buf in received.items()}, alpha)

    @override
    def on_round(self, step: int) -> None:
        if self.schedule is None:
            self.setup_round_state()
        assert self.schedule is not None
        round_index = self.num_rounds
        graph_index, active = self.schedule.active(round_index)
        graph, alpha = self.schedule.graphs[graph_index], self.schedule.alphas[graph_index]
        rank = self.global_rank
        neighbours = graph.neighbours(rank, active)

        tensors = self.gossip_tensors()
        flat = _flat.flatten(tensors)
        n = flat.numel()
        finite = self.replica_finite
        # the sender's health travels as the last element: a finite-looking buffer from a rank whose loss was
        # NaN is refused too
        payload = torch.cat([self.make_payload(flat), flat.new_tensor([1.0 if finite else 0.0])])
        received = _comm.exchange_with_neighbours(payload, neighbours)
        self.count_bytes(len(neighbours) * _comm.nbytes(payload), op="isend_irecv")
        usable = {
            j: buf[:-1] for j, buf in zip(neighbours, received) if float(buf[-1]) > 0.5 and _flat.all_finite(buf[:n])
        }
        if self.consensus_due():
            self.log_consensus(self.flat_params())
        if finite:
            _flat.unflatten_(self.mix(flat, usable, graph, active, alpha), tensors)
        elif usable:  # heal from the finite neighbours' average
            source = torch.zeros_like(flat)
            for j in sorted(usable):
                source.add_(usable[j][:n])
            self.heal_(source.div_(len(usable)), tensors)
        # no world collective otherwise: one 3-float all-reduce gives the all-non-finite stop and the world counters
        self.exchange_health()
        self.log_value("dist/degree", len(neighbours))
        self.log_value("dist/graph", graph_index)

    @override
    def validate_world_size(self, world_size: int) -> None:
        """Build the graphs for ``world_size`` now, so a graph that does not fit fails before any worker starts."""
        specs = (("graph", self.graph, self.graph_seed), ("dynamic_graph", self.dynamic_graph, self.graph_seed + 1))
        for name, spec, seed in specs:
            if spec is None:
                continue
            try:
                check_world_size(build_graph(spec, world_size, self.edge_prob, seed), world_size)
            except ValueError as err:
                raise ValueError(f"`{name}`={spec!r} cannot run on devices*num_nodes={world_size}: {err}") from None


register_strategy(DPSGDStrategy)
