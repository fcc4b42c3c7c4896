"""D-PSGD strategy: argument checks, graph/world-size validation, real rounds on a 4-rank gloo pool."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lightning_autoopt.strategies.dpsgd import DPSGDStrategy
from lightning_autoopt.strategies.graphs import build_graph
from tests.strategies._gloo_pool import run_on_pool, shared_pool
from tests.strategies._local_update_helpers import detached

WORLD = 4
N = 8 + 4  # Linear(3, 2) parameters + BatchNorm running mean/var (gossiped with buffer_policy="average")


@pytest.mark.parametrize(
    "kwargs,match",
    [({"graph": "hypercube"}, "graph"), ({"graph": [[0, 1, 2]]}, "graph"), ({"graph": []}, "empty"),
     ({"dynamic_graph": "x"}, "dynamic_graph"), ({"activation": "some"}, "activation"), ({"budget": 0.0}, "budget"),
     ({"period": 0}, "period"), ({"edge_prob": 1.5}, "edge_prob")],
)  # fmt: skip
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPSGDStrategy(**kwargs)


def test_graph_size_must_match_world_size():
    with pytest.raises(ValueError, match="8 nodes"):
        DPSGDStrategy(graph="matcha8_a").build_schedule(4)
    with pytest.raises(ValueError, match="outside"):
        DPSGDStrategy(graph=[[0, 1], [1, 5]]).build_schedule(4)
    sched = DPSGDStrategy(graph=[[0, 1], [1, 2], [2, 3]], dynamic_graph="random_ring").build_schedule(4)
    assert len(sched.graphs) == 2


def _dpsgd_rounds(kwargs, rounds):
    rank = dist.get_rank()
    s = detached(DPSGDStrategy, **kwargs)
    with torch.no_grad():
        for b in s.float_buffers:
            b.fill_(float(rank))
    out = []
    for r in range(rounds):
        pre = s.flat_state()
        s._round_bytes, s._round_wire_bytes = 0, 0.0
        s.on_round(r + 1)
        out.append({"pre": pre, "post": s.flat_state(), "bytes": s._round_bytes, "logs": dict(s._pending_logs),
                    "wire": s._round_wire_bytes})  # fmt: skip
        s.num_rounds += 1  # what the base does after on_round
    return rank, out


@pytest.fixture(scope="module")
def pool():
    return shared_pool(WORLD)


@pytest.mark.parametrize(
    "kwargs",
    [{"graph": "ring"}, {"graph": "ring", "activation": "alternate"}, {"graph": "complete", "buffer_policy": "average"},
     {"graph": "ring", "dynamic_graph": "complete"}, {"graph": "complete", "activation": "random", "budget": 0.5}],
)  # fmt: skip
def test_rounds_match_dense_mixing_matrix(pool, kwargs):
    rounds = 3
    res = run_on_pool(pool, WORLD, _dpsgd_rounds, kwargs, rounds)
    sched = DPSGDStrategy(**kwargs).build_schedule(WORLD)
    n = N if kwargs.get("buffer_policy") == "average" else 8
    for r in range(rounds):
        X = torch.stack([res[i][r]["pre"][:n] for i in range(WORLD)]).double()
        graph, active, alpha = sched.round_plan(r)
        W = graph.mixing_matrix(alpha, active)
        post = torch.stack([res[i][r]["post"][:n] for i in range(WORLD)]).double()
        torch.testing.assert_close(post, W @ X, rtol=1e-6, atol=1e-5)
        for i in range(WORLD):
            deg = graph.degrees(active)[i]
            assert res[i][r]["logs"]["dist/degree"] == deg
            assert res[i][r]["bytes"] == deg * (n + 1) * 4 + 24  # + health flag; health all-reduce
            # on the wire: each send once, the 24-byte health all-reduce as a ring (2 (w - 1) / w of it)
            assert res[i][r]["wire"] == deg * (n + 1) * 4 + 24 * 2 * (WORLD - 1) / WORLD
            if kwargs.get("buffer_policy") != "average":  # buffers untouched by default
                assert torch.equal(res[i][r]["post"][8:], res[i][r]["pre"][8:])
        # the average over workers is preserved (W doubly stochastic)
        torch.testing.assert_close(post.mean(0), X.mean(0), rtol=1e-6, atol=1e-5)
    # same graph, same schedule: the two rounds of the dynamic case use different graphs
    if "dynamic_graph" in kwargs:
        assert [res[0][r]["logs"]["dist/graph"] for r in range(rounds)] == [0, 1, 0]


def test_single_edge_is_exact_pairwise_averaging():
    g = build_graph("ring", 2)
    assert g.mixing_weight() == 0.5
