"""Round maths of the local-update strategies: pure helpers, then real strategies on a shared 4-rank gloo pool."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import StrategyRegistry

import lightning_autoopt  # noqa: F401  (registers the names)
from lightning_autoopt.strategies import (
    EASGDStrategy,
    LocalSGDStrategy,
    LSGDStrategy,
    _comm,
    register_strategy,
    registered_strategies,
)
from tests.strategies._gloo_pool import run_on_pool, shared_pool
from tests.strategies._local_update_helpers import detached

WORLD = 4
N_PARAMS = 8  # Linear(3, 2) in the helpers


# ----------------------------------------------------------------------------- pure helpers
def test_argmin_ties_lowest_index_and_nonfinite_never_wins():
    assert _comm.argmin_lowest_index(torch.tensor([2.0, 1.0, 1.0, 3.0])) == 1
    assert _comm.argmin_lowest_index(torch.tensor([float("nan"), float("-inf"), 5.0, 5.0])) == 2
    assert _comm.argmin_lowest_index(torch.tensor([float("nan"), float("inf")])) is None


def test_leader_pull_and_elastic_update_closed_form():
    x, leader = torch.tensor([1.0, 4.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(_comm.leader_pull_(x.clone(), leader, 1.0), leader)
    torch.testing.assert_close(_comm.leader_pull_(x.clone(), leader, 0.25), torch.tensor([1.5, 3.0]))
    flat, center, mean = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([4.0])
    _comm.elastic_update_(flat, center, mean, alpha=0.25, beta=0.5)
    torch.testing.assert_close(flat, torch.tensor([1.5]))
    torch.testing.assert_close(center, torch.tensor([2.0]))


def test_contiguous_groups_and_errors():
    assert _comm.contiguous_groups(4, 2) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="group_size"):
        _comm.contiguous_groups(4, 3)


def test_missing_process_group_is_a_clear_error():
    with pytest.raises(RuntimeError, match="process group"):
        _comm.require_process_group()


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (LSGDStrategy, {"period": 0}, "period"),
        (LSGDStrategy, {"local_period": -1}, "local_period"),
        (LSGDStrategy, {"pull_strength": 1.5}, "pull_strength"),
        (LSGDStrategy, {"local_pull_strength": -0.1}, "local_pull_strength"),
        (LSGDStrategy, {"leader_metric": "acc"}, "leader_metric"),
        (LSGDStrategy, {"window": 0}, "window"),
        (LSGDStrategy, {"group_size": 0}, "group_size"),
        (EASGDStrategy, {"elastic_strength": 2.0}, "elastic_strength"),
        (EASGDStrategy, {"period": 0}, "period"),
        (LocalSGDStrategy, {"period": 1.5}, "period"),
        (LocalSGDStrategy, {"eval_policy": "leaderz"}, "eval_policy"),
        (LocalSGDStrategy, {"buffer_policy": "sync"}, "buffer_policy"),
        (LocalSGDStrategy, {"model_averaging_period": 4}, "model_averaging_period"),
    ],
)
def test_bad_arguments_fail_at_construction(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("name", ["lsgd", "easgd", "localsgd"])
def test_one_device_is_rejected_with_advice(name):
    with pytest.raises(ValueError, match="devices>=2"):
        Trainer(accelerator="cpu", devices=1, strategy=name, logger=False)


def test_registration_is_idempotent_and_lower_case():
    for name in ("lsgd", "easgd", "localsgd"):
        for suffix, start in (("", "popen"), ("_spawn", "spawn"), ("_fork", "fork")):
            entry = StrategyRegistry[name + suffix]
            assert entry["init_params"] == {"start_method": start}
    assert register_strategy(LSGDStrategy) == ["lsgd", "lsgd_spawn", "lsgd_fork"]  # again: no error
    assert StrategyRegistry.get("lsgd_spawn")._start_method == "spawn"
    assert {"lsgd", "easgd", "localsgd"} <= set(registered_strategies())


# ----------------------------------------------------------------------------- pool tasks (module-level)
def _lsgd_round(losses, strength, consensus_every=1):
    rank = dist.get_rank()
    s = detached(LSGDStrategy, period=1, pull_strength=strength, window=1, consensus_every=consensus_every)
    s._closure_output = torch.tensor(losses[rank])
    s.on_local_step(1)
    pre = s.flat_params()
    s.on_round(1)
    return rank, {
        "pre": pre,
        "post": s.flat_params(),
        "leader": s.leader,
        "skipped": s.skipped_rounds,
        "nonfinite": s.nonfinite_events,
        "bytes": s._round_bytes,
        "logs": dict(s._pending_logs),
        "counts": list(s.leader_counts),
    }


def _multi_leader(losses):
    rank = dist.get_rank()
    s = detached(LSGDStrategy, period=2, local_period=1, group_size=2, pull_strength=1.0, local_pull_strength=1.0)
    out = {}
    for step, loss_list in ((1, losses[0]), (2, losses[1])):
        s._closure_output = torch.tensor(loss_list[rank])
        s.on_local_step(step)
        assert s.round_due(step)
        s.on_round(step)
        out[step] = (s.flat_params(), s.local_leader, s.leader)
    return rank, out


def _easgd_round(beta):
    rank = dist.get_rank()
    s = detached(EASGDStrategy, values=torch.ones(N_PARAMS), period=1, elastic_strength=beta)
    center0 = s.center.clone()
    with torch.no_grad():
        for p in s.params:
            p.add_(float(rank))  # local progress: replica r = 1 + r
    s.on_round(1)
    return rank, (s.flat_params(), s.center.clone(), center0)


def _localsgd(group_size, local_period, step):
    rank = dist.get_rank()
    s = detached(LocalSGDStrategy, period=4, local_period=local_period, group_size=group_size)
    s.on_round(step)
    return rank, s.flat_params()


def _policies():
    rank = dist.get_rank()
    s = detached(LSGDStrategy, period=1)
    s.leader = 2
    return rank, {p: s.policy_flat(p)[:N_PARAMS] for p in ("local", "average", "leader")}


def _policy_weights_block():
    rank = dist.get_rank()
    s = detached(LSGDStrategy, period=1, eval_policy="average")
    s.leader = 1
    out = {}
    with s.policy_weights():
        out["inside"] = s.flat_params()
        try:
            with s.policy_weights("leader"):
                pass
        except RuntimeError as err:
            out["nested"] = str(err)
        with s.policy_weights("average"):  # the same policy again: nothing changes
            out["again"] = s.flat_params()
    out["after"] = s.flat_params()
    try:
        with s.policy_weights("leader"):
            out["leader"] = s.flat_params()
            raise KeyError("boom")
    except KeyError:
        out["after_error"] = s.flat_params()
    return rank, out


def _inconsistent_groups():
    rank = dist.get_rank()
    try:
        detached(LocalSGDStrategy, period=2, local_period=1, group_size=1 if rank == 0 else 2)
    except ValueError as err:
        return rank, str(err)
    return rank, None


def _values(rank):
    return torch.arange(N_PARAMS, dtype=torch.float32) + 10.0 * rank


# ----------------------------------------------------------------------------- pool tests
@pytest.fixture(scope="module")
def pool():
    return shared_pool(WORLD)


def test_lsgd_lambda_one_makes_every_worker_the_leader(pool):
    res = run_on_pool(pool, WORLD, _lsgd_round, [3.0, 1.0, 2.0, 5.0], 1.0)
    for r in res:
        assert r["leader"] == 1
        assert torch.equal(r["post"], res[1]["pre"])
        assert r["counts"] == [0, 1, 0, 0]
        assert r["logs"]["dist/leader"] == 1
        # one gather of 4 float64 (metric, health flag, two counters) + one flat fp32 broadcast
        assert r["bytes"] == 32 + 4 * N_PARAMS
        assert r["logs"]["dist/consensus_distance"] > 0


def test_lsgd_partial_pull_formula_and_ties_to_lowest_rank(pool):
    res = run_on_pool(pool, WORLD, _lsgd_round, [2.0, 1.0, 1.0, 3.0], 0.3)
    leader_pre = res[1]["pre"]
    for r in res:
        assert r["leader"] == 1
        expected = r["pre"].clone().add_(leader_pre - r["pre"], alpha=0.3)
        assert torch.equal(r["post"], expected)


def test_lsgd_nan_never_leads_and_all_nan_skips(pool):
    res = run_on_pool(pool, WORLD, _lsgd_round, [float("nan"), float("inf"), 4.0, 4.0], 1.0)
    assert [r["leader"] for r in res] == [2] * WORLD
    assert [r["nonfinite"] for r in res] == [1, 1, 0, 0]
    assert all(torch.equal(r["post"], res[2]["pre"]) for r in res)
    res = run_on_pool(pool, WORLD, _lsgd_round, [float("nan")] * WORLD, 1.0)
    for r in res:
        assert r["leader"] is None and r["skipped"] == 1
        assert torch.equal(r["post"], r["pre"])


def test_lsgd_multi_leader_local_then_global(pool):
    # step 1: local rounds only; group {0,1} leader 1, group {2,3} leader 2. step 2: local + global (leader 3)
    res = run_on_pool(pool, WORLD, _multi_leader, [[5.0, 1.0, 0.5, 9.0], [5.0, 5.0, 5.0, 0.1]])
    flats1 = [r[1][0] for r in res]
    assert [r[1][1] for r in res] == [1, 1, 2, 2]
    assert torch.equal(flats1[0], _values(1)) and torch.equal(flats1[1], _values(1))
    assert torch.equal(flats1[2], _values(2)) and torch.equal(flats1[3], _values(2))
    assert [r[1][2] for r in res] == [None] * WORLD
    # step 2: window=1 -> metrics are the step-2 losses; global leader rank 3 (which after its local round = rank 2)
    assert [r[2][2] for r in res] == [3] * WORLD
    assert all(torch.equal(r[2][0], _values(2)) for r in res)


def test_easgd_round_matches_closed_form(pool):
    beta = 0.4
    res = run_on_pool(pool, WORLD, _easgd_round, beta)
    alpha = beta / WORLD
    mean = 1.0 + sum(range(WORLD)) / WORLD
    for rank, (flat, center, center0) in enumerate(res):
        assert torch.equal(center0, torch.ones(N_PARAMS))
        torch.testing.assert_close(flat, torch.full((N_PARAMS,), (1 - alpha) * (1.0 + rank) + alpha * 1.0))
        torch.testing.assert_close(center, torch.full((N_PARAMS,), (1 - beta) * 1.0 + beta * mean))
    assert all(torch.equal(res[0][1], r[1]) for r in res)  # the center is identical everywhere


def test_localsgd_global_and_group_averages(pool):
    res = run_on_pool(pool, WORLD, _localsgd, None, None, 4)
    mean = sum(_values(r) for r in range(WORLD)) / WORLD
    assert all(torch.allclose(r, mean) and torch.equal(r, res[0]) for r in res)
    res = run_on_pool(pool, WORLD, _localsgd, 2, 1, 1)  # group round at step 1
    torch.testing.assert_close(res[0], (_values(0) + _values(1)) / 2)
    torch.testing.assert_close(res[3], (_values(2) + _values(3)) / 2)
    assert torch.equal(res[0], res[1]) and not torch.equal(res[1], res[2])


def test_eval_policies(pool):
    res = run_on_pool(pool, WORLD, _policies)
    mean = sum(_values(r) for r in range(WORLD)) / WORLD
    for rank, r in enumerate(res):
        assert torch.equal(r["local"], _values(rank))
        torch.testing.assert_close(r["average"], mean)
        assert torch.equal(r["leader"], _values(2))


def test_policy_weights_block_swaps_in_and_always_restores(pool):
    res = run_on_pool(pool, WORLD, _policy_weights_block)
    mean = sum(_values(r) for r in range(WORLD)) / WORLD
    for rank, r in enumerate(res):
        torch.testing.assert_close(r["inside"], mean)
        assert torch.equal(r["again"], r["inside"]) and "leave that block" in r["nested"]
        assert torch.equal(r["after"], _values(rank)) and torch.equal(r["after_error"], _values(rank))
        assert torch.equal(r["leader"], _values(1))
    with pytest.raises(ValueError, match="policy"):
        with LSGDStrategy().policy_weights("centre"):
            pass


def test_inconsistent_group_sizes_fail_on_every_rank(pool):
    res = run_on_pool(pool, WORLD, _inconsistent_groups)
    assert all(msg is not None and "inconsistent group sizes" in msg for msg in res)


def _lsgd_history():
    rank = dist.get_rank()
    s = detached(LSGDStrategy, period=1, pull_strength=0.5, window=1, consensus_every=2)
    for step, loss in ((1, [3.0, 1.0, 2.0, 5.0]), (2, [1.0, 4.0, 2.0, 3.0])):
        s._closure_output = torch.tensor(loss[rank])
        s.num_steps = step
        s.on_local_step(step)
        s.run_round(step)
    state = s.strategy_state_dict()
    restored = detached(LSGDStrategy, period=1, pull_strength=0.5, window=1, consensus_every=2)
    restored.load_strategy_state_dict(state)
    return rank, (s.history, restored.history)


def test_round_history_records_every_round_and_survives_the_checkpoint(pool, tmp_path):
    from lightning_autoopt.plots import plot_strategy

    res = run_on_pool(pool, WORLD, _lsgd_history)
    histories = []
    for hist, restored in res:
        assert repr(restored) == repr(hist)  # NaN-aware equality
        assert hist["step"] == [1.0, 2.0] and hist["round"] == [1.0, 2.0] and hist["offered"] == 2
        assert hist["leader"] == [1.0, 0.0]  # the lowest loss of each round
        assert hist["losses"] == [[3.0, 1.0, 2.0, 5.0], [1.0, 4.0, 2.0, 3.0]]
        first, second = hist["consensus_distance"]
        assert first > 0 and second != second  # consensus_every=2: rounds 0, 2, ... measure it; NaN otherwise
        assert hist["bytes_sent_total"][1] == 2 * hist["bytes_sent_total"][0] > 0
        assert hist["healed"] == [0.0, 0.0] and hist["nonfinite"] == [0.0, 0.0]
        histories.append(hist)
    png = plot_strategy(histories, tmp_path / "rounds.png")
    assert png.stat().st_size > 10_000


def _wire_counts():
    import torch.distributed as dist

    from lightning_autoopt.strategies import _comm

    two = [_comm.new_world_group()]  # a second world group: a group handle that is not the default one
    pairs, _ = _comm.new_groups(WORLD, 2)
    out = {
        "all_reduce": _comm.wire_bytes("all_reduce", 4000),
        "broadcast_src2": _comm.wire_bytes("broadcast", 4000, src=2),
        "all_gather": _comm.wire_bytes("all_gather", 8),
        "p2p": _comm.wire_bytes("isend_irecv", 123),
        "pair_broadcast_src3": _comm.wire_bytes("broadcast", 4000, group=pairs, src=3 if dist.get_rank() >= 2 else 1),
        "other_group": _comm.wire_bytes("all_reduce", 4000, group=two[0]),
    }
    for g in (*two, pairs):
        _comm.destroy_group(g)
    return dist.get_rank(), out


def test_wire_bytes_follow_gloos_algorithms_per_rank_and_group(pool):
    res = dict(enumerate(run_on_pool(pool, WORLD, _wire_counts)))
    assert {r: c["all_reduce"] for r, c in res.items()} == {r: 6000.0 for r in range(4)}  # 2 (w - 1) / w
    # binomial tree rooted at rank 2: 2 -> 3, then 2 -> 0 and 3 -> 1
    assert [res[r]["broadcast_src2"] for r in range(4)] == [0.0, 0.0, 8000.0, 4000.0]
    assert all(c["all_gather"] == 24.0 and c["p2p"] == 123.0 and c["other_group"] == 6000.0 for c in res.values())
    # groups {0, 1} and {2, 3}: the source (global rank 1 or 3) sends the buffer to its partner
    assert [res[r]["pair_broadcast_src3"] for r in range(4)] == [0.0, 4000.0, 0.0, 4000.0]
