"""Communication graphs for decentralized (gossip) strategies: graphs as lists of matchings, and schedules.

A graph on ``num_nodes`` workers is stored as a list of *matchings* (sets of disjoint edges). Exchanging
parameters pairwise inside one matching can never deadlock, because every worker has at most one partner per
matching. A :class:`GraphSchedule` decides, for each communication round, which graph and which of its matchings
are active. It is a pure function of ``(seed, round_index)``, so every rank computes the same active set without
any communication, and resuming from a checkpoint only needs the round counter.

Named graphs (``build_graph``):

- ``"ring"``: the cycle 0-1-...-(n-1)-0 (for n = 2 a single edge).
- ``"random_ring"``: a cycle through a seeded random permutation of the workers (a ring with other neighbours;
  rotating between ``"ring"`` and ``"random_ring"`` lets every worker meet more peers at degree 2).
- ``"complete"``: every pair of workers.
- ``"erdos_renyi"``: each edge present with probability ``edge_prob`` from a seeded generator; resampled (same
  seed stream) until connected.
- ``"matcha8_a"``, ``"matcha8_b"``: the two 8-node Erdős–Rényi example graphs used by the AL-DSGD code as its
  base graphs 0 and 1 (edge lists from ``HectorHHZ/Adjacent_Leader_Dencentralized_SGD@6da2baa``, the MATCHA
  paper's Fig. 1(a) graph and a relabelled copy). Requires 8 workers.
- an explicit edge list ``[[u, v], ...]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

Edge = tuple[int, int]
Matching = list[Edge]

# The two 8-node base graphs of the AL-DSGD code (graph ids 0 and 1), as plain edge lists.
_MATCHA8_A: list[Edge] = [
    (1, 5), (6, 7), (0, 4), (2, 3), (1, 7), (3, 6), (1, 0), (3, 7), (5, 6), (1, 2), (7, 0), (3, 1),
]  # fmt: skip
_MATCHA8_B: list[Edge] = [
    (4, 6), (5, 2), (3, 1), (7, 0), (4, 2), (0, 5), (4, 3), (0, 2), (6, 5), (4, 7), (2, 3), (0, 4),
]  # fmt: skip

GRAPH_NAMES = ("ring", "random_ring", "complete", "erdos_renyi", "matcha8_a", "matcha8_b")
ACTIVATIONS = ("all", "alternate", "random")


def _normalize_edges(num_nodes: int, edges: Sequence[Sequence[int]]) -> list[Edge]:
    """Validate an edge list and return it as sorted ``(min, max)`` tuples, keeping the input order."""
    if num_nodes < 1:
        raise ValueError(f"`num_nodes` must be >= 1, got {num_nodes}.")
    out: list[Edge] = []
    seen: set[Edge] = set()
    for e in edges:
        if len(e) != 2:
            raise ValueError(f"Every edge must be a pair [u, v]; got {list(e)!r}.")
        u, v = int(e[0]), int(e[1])
        if u == v:
            raise ValueError(f"Self loop ({u}, {v}) in the graph: remove it (a worker always keeps its own weights).")
        for r in (u, v):
            if not 0 <= r < num_nodes:
                raise ValueError(
                    f"Edge ({u}, {v}) names rank {r}, outside 0..{num_nodes - 1}: the graph must have exactly "
                    f"world_size = {num_nodes} nodes."
                )
        key = (min(u, v), max(u, v))
        if key in seen:
            raise ValueError(f"Duplicate edge ({u}, {v}) in the graph: list every edge once.")
        seen.add(key)
        out.append(key)
    return out


def decompose_into_matchings(num_nodes: int, edges: Sequence[Sequence[int]]) -> list[Matching]:
    """Split an edge set into matchings (disjoint edge sets) by greedy edge colouring.

    Edges are taken in the given order and each goes into the first matching where both endpoints are still free,
    so the result is deterministic. At most ``2 * max_degree - 1`` matchings are produced.

    Args:
        num_nodes: number of workers.
        edges: pairs ``[u, v]`` of ranks.

    Returns:
        A list of matchings; every edge appears in exactly one.

    Raises:
        ValueError: for self loops, duplicate edges or ranks outside ``0..num_nodes-1``.

    Example::

        >>> decompose_into_matchings(4, [[0, 1], [1, 2], [2, 3], [3, 0]])
        [[(0, 1), (2, 3)], [(1, 2), (0, 3)]]
    """
    matchings: list[Matching] = []
    busy: list[set[int]] = []
    for u, v in _normalize_edges(num_nodes, edges):
        for m, used in zip(matchings, busy):
            if u not in used and v not in used:
                m.append((u, v))
                used.update((u, v))
                break
        else:
            matchings.append([(u, v)])
            busy.append({u, v})
    return matchings


def _is_connected(num_nodes: int, edges: Sequence[Edge]) -> bool:
    adj: list[list[int]] = [[] for _ in range(num_nodes)]
    for u, v in edges:
        adj[u].append(v)
        adj[v].append(u)
    seen, stack = {0}, [0]
    while stack:
        for w in adj[stack.pop()]:
            if w not in seen:
                seen.add(w)
                stack.append(w)
    return len(seen) == num_nodes


@dataclass
class CommunicationGraph:
    """An undirected graph on ``num_nodes`` workers stored as a list of matchings.

    Args:
        num_nodes: number of workers (must equal the world size when used by a strategy).
        matchings: lists of disjoint edges ``(u, v)``; each worker appears at most once per matching.

    Raises:
        ValueError: for self loops, duplicate edges, out-of-range ranks, or a "matching" that uses a worker twice.

    Example::

        >>> g = CommunicationGraph.from_edges(4, [[0, 1], [1, 2], [2, 3], [3, 0]])
        >>> g.degrees()
        [2, 2, 2, 2]
    """

    num_nodes: int
    matchings: list[Matching] = field(default_factory=list)

    def __post_init__(self) -> None:
        flat = [e for m in self.matchings for e in m]
        norm = _normalize_edges(self.num_nodes, flat)
        it = iter(norm)
        fixed: list[Matching] = []
        for m in self.matchings:
            fixed_m = [next(it) for _ in m]
            used: set[int] = set()
            for u, v in fixed_m:
                if u in used or v in used:
                    raise ValueError(
                        f"Matching {fixed_m} uses a worker twice; a matching must be a set of disjoint edges "
                        "(use CommunicationGraph.from_edges to decompose an arbitrary edge list)."
                    )
                used.update((u, v))
            fixed.append(fixed_m)
        self.matchings = [m for m in fixed if m]

    @classmethod
    def from_edges(cls, num_nodes: int, edges: Sequence[Sequence[int]]) -> CommunicationGraph:
        """Build a graph from an arbitrary edge list (decomposed into matchings greedily)."""
        return cls(num_nodes, decompose_into_matchings(num_nodes, edges))

    @property
    def edges(self) -> list[Edge]:
        return [e for m in self.matchings for e in m]

    def degrees(self, active: Sequence[int] | None = None) -> list[int]:
        """Degree of every node, counting only the matchings with indices in ``active`` (all when ``None``)."""
        deg = [0] * self.num_nodes
        idx = range(len(self.matchings)) if active is None else active
        for k in idx:
            for u, v in self.matchings[k]:
                deg[u] += 1
                deg[v] += 1
        return deg

    def laplacian(self, active: Sequence[int] | None = None) -> torch.Tensor:
        """Graph Laplacian ``D - A`` (float64) of the active matchings (all when ``None``)."""
        lap = torch.zeros(self.num_nodes, self.num_nodes, dtype=torch.float64)
        idx = range(len(self.matchings)) if active is None else active
        for k in idx:
            for u, v in self.matchings[k]:
                lap[u, v] -= 1.0
                lap[v, u] -= 1.0
                lap[u, u] += 1.0
                lap[v, v] += 1.0
        return lap

    def mixing_weight(self) -> float:
        """The gossip weight ``alpha = 2 / (lambda_2 + lambda_max)`` of the full Laplacian.

        This is the optimal constant edge weight for ``W = I - alpha * L`` (the choice of the D-PSGD path of the
        AL-DSGD code). For a single edge (two nodes) it is 0.5, i.e. exact pairwise averaging.

        Raises:
            ValueError: if the graph has no edges or is disconnected (lambda_2 = 0).
        """
        if not self.edges:
            raise ValueError("The graph has no edges; gossip needs at least one edge.")
        eig = torch.linalg.eigvalsh(self.laplacian())
        lam2, lam_max = float(eig[1]), float(eig[-1])
        if lam2 <= 1e-9:
            raise ValueError("The graph is disconnected (lambda_2 = 0); gossip would never reach consensus.")
        return 2.0 / (lam2 + lam_max)

    def neighbours(self, rank: int, active: Sequence[int] | None = None) -> list[int]:
        """Partners of ``rank`` in the active matchings, in matching order (one per matching at most)."""
        out: list[int] = []
        idx = range(len(self.matchings)) if active is None else active
        for k in idx:
            for u, v in self.matchings[k]:
                if u == rank:
                    out.append(v)
                elif v == rank:
                    out.append(u)
        return out

    def mixing_matrix(self, alpha: float, active: Sequence[int] | None = None) -> torch.Tensor:
        """Dense ``W = I - alpha * L_active`` (float64): the gossip step as a matrix, for tests and analysis."""
        return torch.eye(self.num_nodes, dtype=torch.float64) - alpha * self.laplacian(active)


def _erdos_renyi_edges(num_nodes: int, edge_prob: float, seed: int) -> list[Edge]:
    g = torch.Generator().manual_seed(seed)
    for _ in range(1000):
        edges = [
            (u, v)
            for u in range(num_nodes)
            for v in range(u + 1, num_nodes)
            if float(torch.rand((), generator=g, dtype=torch.float64)) < edge_prob
        ]
        if _is_connected(num_nodes, edges):
            return edges
    raise ValueError(
        f"Could not draw a connected Erdős–Rényi graph with n={num_nodes}, edge_prob={edge_prob} in 1000 tries; "
        "raise `edge_prob`."
    )


def build_graph(
    spec: str | Sequence[Sequence[int]], num_nodes: int, edge_prob: float = 0.5, seed: int = 0
) -> CommunicationGraph:
    """Build a named graph or one from an explicit edge list, for ``num_nodes`` workers.

    Args:
        spec: one of :data:`GRAPH_NAMES` or a list of edges ``[[u, v], ...]``.
        num_nodes: number of workers (the world size).
        edge_prob: edge probability for ``"erdos_renyi"``.
        seed: seed for ``"erdos_renyi"`` and ``"random_ring"`` (every rank builds the same graph from the same seed).

    Raises:
        ValueError: for an unknown name, a graph whose size does not match ``num_nodes``, or an invalid edge list.

    Example::

        >>> build_graph("ring", 4).matchings
        [[(0, 1), (2, 3)], [(1, 2), (0, 3)]]
    """
    if num_nodes < 2:
        raise ValueError(f"A communication graph needs at least 2 workers, got world_size={num_nodes}.")
    if isinstance(spec, str):
        name = spec.lower()
        if name == "ring":
            edges: list[Edge] = [(i, (i + 1) % num_nodes) for i in range(num_nodes if num_nodes > 2 else 1)]
        elif name == "random_ring":
            perm = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(seed)).tolist()
            edges = [(perm[i], perm[(i + 1) % num_nodes]) for i in range(num_nodes if num_nodes > 2 else 1)]
        elif name == "complete":
            edges = [(u, v) for u in range(num_nodes) for v in range(u + 1, num_nodes)]
        elif name == "erdos_renyi":
            if not 0.0 < edge_prob <= 1.0:
                raise ValueError(f"`edge_prob` must be in (0, 1], got {edge_prob}.")
            edges = _erdos_renyi_edges(num_nodes, edge_prob, seed)
        elif name in ("matcha8_a", "matcha8_b"):
            if num_nodes != 8:
                raise ValueError(f"Graph {name!r} has 8 nodes but world_size = {num_nodes}; use 8 processes.")
            edges = list(_MATCHA8_A if name == "matcha8_a" else _MATCHA8_B)
        else:
            raise ValueError(f"Unknown graph {spec!r}; choose one of {GRAPH_NAMES} or give an edge list [[u, v], ...].")
        return CommunicationGraph.from_edges(num_nodes, edges)
    edges_in = [list(e) for e in spec]
    graph = CommunicationGraph.from_edges(num_nodes, edges_in)
    if not _is_connected(num_nodes, graph.edges):
        raise ValueError(
            f"The edge list does not connect all {num_nodes} workers (world_size); add edges so every rank is reached."
        )
    return graph


def _round_seed(seed: int, graph_index: int, counter: int) -> int:
    digest = hashlib.sha256(f"{seed}:{graph_index}:{counter}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class GraphSchedule:
    """Which graph and which of its matchings are active in each communication round.

    Round ``r`` uses graph ``r % len(graphs)`` (the "graph rotation" of AL-DSGD when two graphs are given); that
    graph's own counter is ``c = r // len(graphs)``. Within it:

    - ``"all"``: every matching is active (classic D-PSGD: ``W = I - alpha * L``);
    - ``"alternate"``: only matching ``c % num_matchings`` (the single-matching cycling of the AL-DSGD code's
      fixed processor; there every node has active degree <= 1);
    - ``"random"``: each matching independently with probability ``budget``, drawn from a generator seeded by
      ``(seed, graph, c)`` so every rank draws the same set. If none is drawn, the round has no communication.

    Args:
        graphs: one or more graphs on the same number of nodes.
        activation: ``"all"``, ``"alternate"`` or ``"random"``.
        budget: activation probability per matching for ``"random"``.
        seed: shared schedule seed.

    Raises:
        ValueError: for an empty list, graphs of different sizes, an unknown activation or a budget outside (0, 1].

    Example::

        >>> s = GraphSchedule([build_graph("ring", 4)], activation="alternate")
        >>> [s.active(r)[1] for r in range(3)]
        [[0], [1], [0]]
    """

    graphs: list[CommunicationGraph]
    activation: str = "all"
    budget: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.graphs:
            raise ValueError("`graphs` must hold at least one graph.")
        sizes = {g.num_nodes for g in self.graphs}
        if len(sizes) != 1:
            raise ValueError(f"All graphs must have the same number of nodes, got sizes {sorted(sizes)}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {self.activation!r}.")
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"`budget` must be in (0, 1], got {self.budget}.")
        self.alphas = [g.mixing_weight() for g in self.graphs]

    @property
    def num_nodes(self) -> int:
        return self.graphs[0].num_nodes

    def active(self, round_index: int) -> tuple[int, list[int]]:
        """Return ``(graph_index, active_matching_indices)`` for a round (0-based)."""
        gi = round_index % len(self.graphs)
        counter = round_index // len(self.graphs)
        n_match = len(self.graphs[gi].matchings)
        if self.activation == "all":
            return gi, list(range(n_match))
        if self.activation == "alternate":
            return gi, [counter % n_match]
        g = torch.Generator().manual_seed(_round_seed(self.seed, gi, counter))
        draws = torch.rand(n_match, generator=g, dtype=torch.float64)
        return gi, [k for k in range(n_match) if float(draws[k]) < self.budget]

    def round_plan(self, round_index: int) -> tuple[CommunicationGraph, list[int], float]:
        """Return ``(graph, active_matchings, alpha)`` for a round."""
        gi, act = self.active(round_index)
        return self.graphs[gi], act, self.alphas[gi]

    def expected_degree(self, rank: int) -> float:
        """Mean number of partners of ``rank`` per round over one full cycle of the schedule (for byte counts)."""
        total = 0.0
        for g in self.graphs:
            deg = g.degrees()
            if self.activation == "all":
                total += deg[rank]
            elif self.activation == "random":
                total += deg[rank] * self.budget
            else:
                total += deg[rank] / len(g.matchings)
        return total / len(self.graphs)


def check_world_size(graph: CommunicationGraph, world_size: int) -> None:
    """Raise a clear error when a graph was built for another number of workers."""
    if graph.num_nodes != world_size:
        raise ValueError(
            f"The communication graph has {graph.num_nodes} nodes but world_size = {world_size}; build the graph "
            "for the actual number of processes (devices x num_nodes)."
        )


__all__ = [
    "ACTIVATIONS",
    "GRAPH_NAMES",
    "CommunicationGraph",
    "GraphSchedule",
    "build_graph",
    "check_world_size",
    "decompose_into_matchings",
]
