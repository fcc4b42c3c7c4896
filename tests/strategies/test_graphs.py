"""Graphs, matchings, schedules, and the gossip / AL-DSGD core on a 4-process gloo pool."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lightning_autoopt.strategies._comm import exchange_with_neighbours
from lightning_autoopt.strategies._gossip import adjacent_leader_update, gossip_mix, select_adjacent_leaders
from lightning_autoopt.strategies.graphs import (
    CommunicationGraph,
    GraphSchedule,
    build_graph,
    check_world_size,
    decompose_into_matchings,
)
from tests.strategies._gloo_pool import run_on_pool, shared_pool

WORLD = 4


# ----------------------------------------------------------------------------------------------- pure graph tests
@pytest.mark.parametrize("name,n", [("ring", 2), ("ring", 4), ("ring", 5), ("complete", 4), ("matcha8_a", 8),
                                    ("matcha8_b", 8), ("erdos_renyi", 6)])  # fmt: skip
def test_named_graphs_are_valid_matchings(name, n):
    g = build_graph(name, n, edge_prob=0.5, seed=3)
    for m in g.matchings:
        nodes = [r for e in m for r in e]
        assert len(nodes) == len(set(nodes)), "a matching uses a node twice"
    lap = g.laplacian()
    assert torch.allclose(lap.sum(1), torch.zeros(n, dtype=torch.float64))
    assert torch.equal(torch.diag(lap), torch.tensor(g.degrees(), dtype=torch.float64))
    assert 0 < g.mixing_weight() <= 1.0


def test_ring_degrees_and_matchings():
    g = build_graph("ring", 4)
    assert g.matchings == [[(0, 1), (2, 3)], [(1, 2), (0, 3)]]
    assert g.degrees() == [2, 2, 2, 2]
    assert g.degrees(active=[0]) == [1, 1, 1, 1]
    assert g.neighbours(0) == [1, 3]
    # ring(4): L eigenvalues 0, 2, 2, 4 -> alpha = 2 / (2 + 4)
    assert g.mixing_weight() == pytest.approx(1 / 3)
    assert build_graph("ring", 2).mixing_weight() == pytest.approx(0.5)
    assert build_graph("ring", 2).edges == [(0, 1)]


def test_matcha_graph_has_the_reference_edges():
    g = build_graph("matcha8_a", 8)
    assert len(g.edges) == 12
    assert g.degrees() == [3, 5, 2, 4, 1, 2, 3, 4]


def test_decomposition_covers_every_edge_once():
    edges = [[0, 1], [0, 2], [0, 3], [1, 2], [2, 3], [1, 3]]
    ms = decompose_into_matchings(4, edges)
    flat = sorted(e for m in ms for e in m)
    assert flat == sorted(tuple(sorted(e)) for e in edges)
    assert len(ms) <= 2 * 3 - 1


def test_erdos_renyi_is_seeded_and_connected():
    a = build_graph("erdos_renyi", 8, edge_prob=0.3, seed=7)
    b = build_graph("erdos_renyi", 8, edge_prob=0.3, seed=7)
    c = build_graph("erdos_renyi", 8, edge_prob=0.3, seed=8)
    assert a.edges == b.edges
    assert a.edges != c.edges
    assert a.mixing_weight() > 0  # connected


@pytest.mark.parametrize(
    "edges,match",
    [([[0, 0]], "Self loop"), ([[0, 4]], "outside"), ([[0, 1], [1, 0]], "Duplicate"), ([[0, 1, 2]], "pair"),
     ([[0, 1], [2, 3]], "connect")],
)  # fmt: skip
def test_bad_edge_lists_raise(edges, match):
    with pytest.raises(ValueError, match=match):
        build_graph(edges, 4)


def test_bad_names_and_sizes_raise():
    with pytest.raises(ValueError, match="Unknown graph"):
        build_graph("hypercube", 4)
    with pytest.raises(ValueError, match="8 nodes"):
        build_graph("matcha8_a", 4)
    with pytest.raises(ValueError, match="world_size"):
        check_world_size(build_graph("ring", 4), 2)
    with pytest.raises(ValueError, match="uses a worker twice"):
        CommunicationGraph(3, [[(0, 1), (1, 2)]])
    with pytest.raises(ValueError, match="activation"):
        GraphSchedule([build_graph("ring", 4)], activation="sometimes")
    with pytest.raises(ValueError, match="disconnected"):
        CommunicationGraph(4, [[(0, 1)]]).mixing_weight()


def test_schedules_rotate_and_are_reproducible():
    g1, g2 = build_graph("ring", 4), build_graph("complete", 4)
    rot = GraphSchedule([g1, g2], activation="all")
    assert [rot.active(r)[0] for r in range(4)] == [0, 1, 0, 1]
    alt = GraphSchedule([g1], activation="alternate")
    assert [alt.active(r)[1] for r in range(4)] == [[0], [1], [0], [1]]
    rnd1 = GraphSchedule([g2], activation="random", budget=0.5, seed=11)
    rnd2 = GraphSchedule([g2], activation="random", budget=0.5, seed=11)
    plans = [rnd1.active(r) for r in range(50)]
    assert plans == [rnd2.active(r) for r in range(50)]
    sizes = [len(a) for _, a in plans]
    assert 0 < sum(sizes) / (50 * len(g2.matchings)) < 1
    assert alt.expected_degree(0) == pytest.approx(1.0)


def test_adjacent_leader_selection_rules():
    deg = [1, 1, 2, 0]
    # ties go to self; NaN never wins; max degree prefers higher degree
    assert select_adjacent_leaders(0, [1], {0: 1.0, 1: 1.0}, deg) == (0, 0)
    assert select_adjacent_leaders(0, [1], {0: 1.0, 1: float("nan")}, deg) == (0, 0)
    assert select_adjacent_leaders(0, [1, 2], {0: float("inf"), 1: float("nan"), 2: 0.5}, deg) == (2, 2)
    assert select_adjacent_leaders(1, [0], {0: float("nan"), 1: float("nan")}, deg) == (1, 1)
    assert select_adjacent_leaders(1, [0], {0: 0.1, 1: 2.0}, deg) == (0, 1)


def test_adjacent_leader_update_closed_form():
    xbar, xb, xm = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([5.0])
    out = adjacent_leader_update(xbar, xb, xm, best_mix=0.3, degree_mix=0.1, best_pull=0.2, degree_pull=0.2)
    y = 0.6 * 1 + 0.3 * 3 + 0.1 * 5
    assert out.item() == pytest.approx(0.6 * y + 0.2 * 3 + 0.2 * 5)


# ----------------------------------------------------------------------------------------- gloo pool (4 ranks)
@pytest.fixture(scope="module")
def pool():
    return shared_pool(WORLD)


def _gossip_round(graph_spec, activation, round_index):
    rank = dist.get_rank()
    g = build_graph(graph_spec, dist.get_world_size())
    sched = GraphSchedule([g], activation=activation)
    graph, active, alpha = sched.round_plan(round_index)
    x = torch.arange(5, dtype=torch.float64) * (rank + 1) + rank**2
    nbrs = graph.neighbours(rank, active)
    recv = exchange_with_neighbours(x, nbrs)
    return rank, (x, gossip_mix(x, rank, dict(zip(nbrs, recv)), alpha), dict(zip(nbrs, recv)))


@pytest.mark.parametrize("spec,activation,r", [("ring", "all", 0), ("ring", "alternate", 1), ("complete", "all", 0)])
def test_gossip_matches_dense_mixing_matrix(pool, spec, activation, r):
    res = run_on_pool(pool, WORLD, _gossip_round, spec, activation, r)
    X = torch.stack([x for x, _, _ in res])
    g = build_graph(spec, WORLD)
    sched = GraphSchedule([g], activation=activation)
    _, active, alpha = sched.round_plan(r)
    W = g.mixing_matrix(alpha, active)
    # bit-for-bit: the dense row product accumulated term by term in rank order
    for i in range(WORLD):
        ref = torch.zeros(5, dtype=torch.float64)
        for k in range(WORLD):
            if W[i, k] != 0:
                ref.add_(X[k], alpha=float(W[i, k]))
        assert torch.equal(res[i][1], ref)
    torch.testing.assert_close(torch.stack([m for _, m, _ in res]), W @ X)
    # doubly stochastic W keeps the average
    torch.testing.assert_close(torch.stack([m for _, m, _ in res]).mean(0), X.mean(0))
    # symmetric exchange: what i received from j is exactly j's buffer, and vice versa
    for i in range(WORLD):
        for j, buf in res[i][2].items():
            assert torch.equal(buf, X[j])
            assert i in res[j][2]
