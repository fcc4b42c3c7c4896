"""AL-DSGD: adjacent-leader pulls on the gloo pool (formula, degenerate case, NaN), arguments, a 4-process fit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

import lightning_autoopt  # noqa: F401
from lightning_autoopt.strategies import ALDSGDStrategy
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer
from tests.strategies._gloo_pool import run_on_pool, shared_pool
from tests.strategies._local_update_helpers import FlatRecorder, detached

WORLD = 4
MIX = {"best_mix": 0.3, "degree_mix": 0.1, "best_pull": 0.2, "degree_pull": 0.2}


@pytest.mark.parametrize(
    "kwargs,match",
    [({"best_mix": 1.2}, "best_mix"), ({"best_mix": 0.7, "degree_mix": 0.5}, "best_mix \\+ degree_mix"),
     ({"best_pull": 0.6, "degree_pull": 0.6}, "best_pull \\+ degree_pull"), ({"pull_period": 0}, "pull_period"),
     ({"loss_window": 0}, "loss_window"), ({"graph": "nope"}, "graph")],
)  # fmt: skip
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ALDSGDStrategy(**kwargs)


def _al_round(kwargs, losses):
    rank = dist.get_rank()
    s = detached(ALDSGDStrategy, **kwargs)
    s._closure_output = torch.tensor(losses[rank])
    s.on_local_step(1)
    pre = s.flat_params()
    s.on_round(1)
    return rank, {"pre": pre, "post": s.flat_params(), "logs": dict(s._pending_logs), "bytes": s._round_bytes}


def _expected(X, rank, nbrs, losses, degrees, alpha, mix):
    d = len(nbrs)
    xbar = (1 - d * alpha) * X[rank] + alpha * sum(X[j] for j in nbrs)
    cands = [rank, *sorted(nbrs)]

    def key_loss(r):
        v = losses[r]
        return (v if math.isfinite(v) else math.inf, cands.index(r))

    b = min(cands, key=key_loss)
    m = max(cands, key=lambda r: (degrees[r], -cands.index(r)))
    y = (1 - mix["best_mix"] - mix["degree_mix"]) * xbar + mix["best_mix"] * X[b] + mix["degree_mix"] * X[m]
    return (1 - mix["best_pull"] - mix["degree_pull"]) * y + mix["best_pull"] * X[b] + mix["degree_pull"] * X[m], b, m


@pytest.fixture(scope="module")
def pool():
    return shared_pool(WORLD)


@pytest.mark.parametrize(
    "graph,activation,losses",
    [
        ("ring", "all", [3.0, 1.0, 2.0, 0.5]),
        ([[0, 1], [0, 2], [0, 3], [1, 2]], "all", [2.0, 1.0, 3.0, 4.0]),  # irregular: degree term matters
        ("ring", "alternate", [3.0, 1.0, 2.0, 0.5]),  # degenerate: all degrees <= 1
    ],
)
def test_pull_formula_matches_closed_form(pool, graph, activation, losses):
    kwargs = {"graph": graph, "dynamic_graph": None, "activation": activation, **MIX}
    res = run_on_pool(pool, WORLD, _al_round, kwargs, losses)
    sched = ALDSGDStrategy(**kwargs).build_schedule(WORLD)
    g, active, alpha = sched.round_plan(0)
    degrees = g.degrees(active)
    X = [res[i]["pre"].double() for i in range(WORLD)]
    for i in range(WORLD):
        nbrs = g.neighbours(i, active)
        exp, b, m = _expected(X, i, nbrs, losses, degrees, alpha, MIX)
        torch.testing.assert_close(res[i]["post"].double(), exp, rtol=1e-6, atol=1e-5)
        assert res[i]["logs"]["dist/best_neighbour"] == b
        assert res[i]["logs"]["dist/max_degree_neighbour"] == m
        # params + the leader signal + the health flag per message, and the 3-float64 health all-reduce
        assert res[i]["bytes"] == len(nbrs) * (8 + 2) * 4 + 24
        if activation == "alternate":
            assert m == i  # the documented degenerate case: the degree term pulls toward oneself
    if not isinstance(graph, str):
        assert res[1]["logs"]["dist/max_degree_neighbour"] == 0  # rank 0 has degree 3


def test_symmetric_exchange_on_a_pair(pool):
    # ring on 4, one matching per round: pairs (0, 1) and (2, 3). Equal losses in a pair: both pick themselves,
    # so the two ends apply the same map with roles swapped and the pair's sum is preserved.
    kwargs = {"graph": "ring", "dynamic_graph": None, "activation": "alternate", **MIX}
    res = run_on_pool(pool, WORLD, _al_round, kwargs, [1.0, 1.0, 5.0, 4.0])
    assert [res[i]["logs"]["dist/best_neighbour"] for i in range(WORLD)] == [0, 1, 3, 3]
    c = 0.6 * (0.6 * (2 / 3) + 0.4) + 0.4  # weight on oneself (alpha = 1/3 for ring(4))
    x0, x1 = res[0]["pre"].double(), res[1]["pre"].double()
    torch.testing.assert_close(res[0]["post"].double(), c * x0 + (1 - c) * x1, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(res[1]["post"].double(), c * x1 + (1 - c) * x0, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(res[0]["post"] + res[1]["post"], x0.float() + x1.float(), rtol=1e-6, atol=1e-5)
    # unequal losses: rank 2 (worse) is pulled half-way to rank 3; rank 3 keeps 0.88 of itself
    x2, x3 = res[2]["pre"].double(), res[3]["pre"].double()
    torch.testing.assert_close(res[2]["post"].double(), 0.5 * x2 + 0.5 * x3, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(res[3]["post"].double(), c * x3 + (1 - c) * x2, rtol=1e-6, atol=1e-5)


def test_nan_loss_never_makes_a_worker_the_best_neighbour(pool):
    kwargs = {"graph": "complete", "dynamic_graph": None, **MIX}
    losses = [3.0, float("nan"), float("inf"), 2.5]
    res = run_on_pool(pool, WORLD, _al_round, kwargs, losses)
    for i in range(WORLD):
        assert res[i]["logs"]["dist/best_neighbour"] == 3
    assert res[1]["logs"]["dist/leader_signal"] == math.inf


def test_loss_window_signal():
    s = ALDSGDStrategy(loss_window=3)
    for v in (4.0, 2.0, float("nan"), 3.0):
        s._closure_output = torch.tensor(v)
        s.on_local_step(1)
    assert s.leader_signal() == pytest.approx(2.5)  # mean of the finite values of the last 3
    assert s.nonfinite_events == 1
    s._closure_output = torch.tensor(float("nan"))
    s.on_local_step(2)
    assert s.leader_signal() == math.inf
    state = s.strategy_state_dict()
    t = ALDSGDStrategy(loss_window=3)
    t.load_strategy_state_dict(state)
    assert t.recent_losses[1] == 3.0 and math.isnan(t.recent_losses[0]) and math.isnan(t.recent_losses[2])
    assert t.recent_losses.maxlen == 3 and t.leader_signal() == math.inf


@pytest.mark.slow
def test_four_process_fit_with_dynamic_graph(tmp_path):
    trainer = make_trainer(
        tmp_path,
        [FlatRecorder(str(tmp_path))],
        devices=4,
        strategy=ALDSGDStrategy(
            graph="ring", dynamic_graph="complete", period=2, consensus_every=1, start_method="spawn"
        ),
        max_steps=6,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(TinyClassifier(), TinyDataModule())
    runs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(4)]
    for r in runs:
        assert r["state"]["num_rounds"] == 3 and r["state"]["num_steps"] == 6
        assert r["metrics"]["dist/graph"] == 0.0  # rounds use ring, complete, ring
        assert r["metrics"]["dist/degree"] == 2.0
        assert math.isfinite(r["metrics"]["dist/consensus_distance"])
    # ring (degree 2) twice and complete (degree 3) once: 7 messages of n + 2 floats (signal, health flag) per rank,
    # plus one 24-byte health all-reduce per round
    n = runs[0]["final"].numel()
    assert runs[0]["state"]["bytes_sent_total"] == (2 + 3 + 2) * (n + 2) * 4 + 3 * 24
