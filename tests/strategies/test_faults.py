"""Faults: non-finite replicas isolated and healed in every strategy's round (gloo pool), the all-non-finite stop,
world-wide fault counters, evaluation policies over finite replicas, impossible configurations refused when the
Trainer is built, DDP-only options refused, and process groups torn down (spawned workers and the popen launcher).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Trainer

import lightning_autoopt  # noqa: F401  (registers the names)
from lightning_autoopt.strategies import (
    ALDSGDStrategy,
    DiLoCoStrategy,
    DPSGDStrategy,
    EASGDStrategy,
    GRAWAStrategy,
    LGRAWAStrategy,
    LocalSGDStrategy,
    LSGDStrategy,
    NonFiniteReplicasError,
    registered_strategies,
)
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer
from tests.strategies._gloo_pool import run_on_pool, shared_pool
from tests.strategies._local_update_helpers import GroupProbe, detached

WORLD = 4
N_PARAMS = 8  # Linear(3, 2) in the helpers
ROOT = Path(__file__).resolve().parents[2]

CLASSES = {
    "lsgd": (LSGDStrategy, {"period": 1, "pull_strength": 0.1, "window": 1}),
    "easgd": (EASGDStrategy, {"period": 1}),
    "localsgd": (LocalSGDStrategy, {"period": 1}),
    "mgrawa": (GRAWAStrategy, {"period": 1}),
    "lgrawa": (LGRAWAStrategy, {"period": 1}),
    "dpsgd": (DPSGDStrategy, {"graph": "complete"}),
    "aldsgd": (ALDSGDStrategy, {"graph": "complete", "dynamic_graph": None}),
    "diloco": (DiLoCoStrategy, {"period": 1}),
}


def _values(rank: int) -> torch.Tensor:
    return torch.arange(N_PARAMS, dtype=torch.float32) + 10.0 * rank


def _poison(s, bad: bool) -> None:
    if bad:
        with torch.no_grad():
            for p in s.params:
                p.fill_(float("nan"))
            for b in s.float_buffers:
                b.fill_(float("nan"))


def _with_momentum(s) -> torch.optim.Optimizer:
    """An SGD optimizer with a momentum buffer for every parameter (one step on a finite fake gradient)."""
    opt = torch.optim.SGD(s.params, lr=0.0, momentum=0.9)
    for p in s.params:
        p.grad = torch.ones_like(p)
    opt.step()
    s.optimizers = [opt]
    return opt


# ----------------------------------------------------------------------------- pool tasks (module level)
def _one_round(name, bad_ranks, events):
    rank = dist.get_rank()
    cls, kwargs = CLASSES[name]
    s = detached(cls, **kwargs)
    opt = _with_momentum(s)
    s._closure_output = torch.tensor(float("nan") if rank in bad_ranks else 1.0 + rank)
    s.on_local_step(1)  # LSGD and AL-DSGD record the loss window (and count a NaN loss themselves)
    s._count_step_loss()  # what optimizer_step does for the others
    s.nonfinite_events += events[rank]
    s._poison_buffers = rank in bad_ranks
    _poison(s, rank in bad_ranks)
    pre = s.flat_params()
    try:
        s.run_round(1)
    except NonFiniteReplicasError as err:
        return rank, {"error": str(err)}
    return rank, {
        "pre": pre,
        "post": s.flat_params(),
        "buffers": torch.cat([b.reshape(-1) for b in s.float_buffers]),
        "momentum": len(opt.state),
        "healed": s.healed,
        "world_healed": s.world_healed,
        "world_events": s.world_nonfinite_events,
        "events": s.nonfinite_events,
        "leader": s.leader,
        "logs": dict(s._pending_logs),
        "policy": s.policy_flat(s.eval_policy)[:N_PARAMS],
    }


def _group_rounds():
    """LocalSGD, groups {0, 1} and {2, 3}; group {0, 1} entirely NaN: its group round waits, the global one heals."""
    rank = dist.get_rank()
    s = detached(LocalSGDStrategy, period=2, local_period=1, group_size=2)
    _poison(s, rank < 2)
    s.run_round(1)  # group round only
    after_group = s.flat_params()
    s.run_round(2)  # group + global round
    return rank, {"group": after_group, "global": s.flat_params(), "healed": s.healed, "world": s.world_healed}


def _gossip_without_a_usable_neighbour():
    """Ring of 4, one matching per round: round 0 pairs (0, 1) and (2, 3); ranks 0 and 1 are both NaN."""
    rank = dist.get_rank()
    s = detached(DPSGDStrategy, graph="ring", activation="alternate")
    _poison(s, rank < 2)
    s.run_round(1)
    first = (s.flat_params(), s.healed, s.world_healed)
    s.run_round(2)  # round 1 pairs (1, 2) and (0, 3): both NaN ranks have a finite neighbour now
    return rank, {"first": first, "second": (s.flat_params(), s.healed, s.world_healed)}


def _policies_over_finite(bad_ranks, leader):
    rank = dist.get_rank()
    s = detached(LSGDStrategy, period=1)
    s.leader = leader
    _poison(s, rank in bad_ranks)
    out = {}
    for policy in ("average", "leader"):
        try:
            out[policy] = s.policy_flat(policy)[:N_PARAMS]
        except NonFiniteReplicasError as err:
            out[policy] = str(err)
    return rank, out


def _heal_now(eval_policy):
    rank = dist.get_rank()
    s = detached(EASGDStrategy, period=1, eval_policy=eval_policy)
    opt = _with_momentum(s)
    _poison(s, rank == 3)
    s.nonfinite_events = rank  # not yet reported: heal_now brings the world total up to date
    healed = s.heal_now()
    return rank, {
        "healed": healed,
        "post": s.flat_params(),
        "momentum": len(opt.state),
        "center": s.center.clone(),
        "totals": (s.world_healed, s.world_nonfinite_events, s.healed),
    }


@pytest.fixture(scope="module")
def pool():
    return shared_pool(WORLD)


# ----------------------------------------------------------------------------- isolation and healing in rounds
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_a_nan_replica_contributes_nothing_and_is_healed(pool, name):
    res = run_on_pool(pool, WORLD, _one_round, name, [1], [0, 0, 0, 2])
    for rank, r in enumerate(res):
        assert torch.isfinite(r["post"]).all(), (name, rank)
        assert torch.isfinite(r["buffers"]).all(), (name, rank)  # the NaN BatchNorm buffers are healed too
        assert torch.isfinite(r["policy"]).all(), (name, rank)
        assert r["world_healed"] == 1 and r["logs"]["dist/healed"] == 1
        assert r["world_events"] == 3 and r["logs"]["dist/nonfinite_events"] == 3  # rank 1's NaN loss + rank 3's 2
    assert res[1]["healed"] == 1 and all(res[r]["healed"] == 0 for r in (0, 2, 3))
    assert res[1]["momentum"] == 0, "the healed rank's optimizer state must be cleared"
    assert all(res[r]["momentum"] == N_PARAMS // 4 for r in (0, 2, 3))  # Linear: weight and bias (2 tensors)
    if name == "lsgd":
        assert all(r["leader"] == 0 for r in res)  # lowest finite loss among the finite replicas
        assert torch.equal(res[1]["post"], res[0]["pre"])  # pull strength 0.1, but the NaN replica copies
    if name in ("localsgd", "diloco", "easgd"):
        mean = (_values(0) + _values(2) + _values(3)) / 3  # the finite replicas only
        if name == "localsgd":
            assert all(torch.allclose(r["post"], mean) for r in res)


def test_localsgd_mean_is_over_the_finite_replicas_exactly(pool):
    res = run_on_pool(pool, WORLD, _one_round, "localsgd", [2], [0, 0, 0, 0])
    expected = (_values(0) + _values(1) + _values(3)) / 3
    for r in res:
        torch.testing.assert_close(r["post"], expected)
        torch.testing.assert_close(r["policy"], expected)


def test_every_replica_nan_raises_on_every_rank(pool):
    for name in sorted(CLASSES):
        res = run_on_pool(pool, WORLD, _one_round, name, [0, 1, 2, 3], [0, 0, 0, 0])
        assert all("every replica is non-finite" in r.get("error", "") for r in res), name


def test_group_without_a_finite_replica_waits_for_the_global_round(pool):
    res = run_on_pool(pool, WORLD, _group_rounds)
    assert not torch.isfinite(res[0]["group"]).any() and not torch.isfinite(res[1]["group"]).any()
    torch.testing.assert_close(res[2]["group"], (_values(2) + _values(3)) / 2)
    for r in res:
        torch.testing.assert_close(r["global"], (_values(2) + _values(3)) / 2)
        assert r["world"] == 2  # both heals counted once, in the global round
    assert [r["healed"] for r in res] == [1, 1, 0, 0]


def test_gossip_replica_without_a_usable_neighbour_waits_and_is_not_counted(pool):
    res = run_on_pool(pool, WORLD, _gossip_without_a_usable_neighbour)
    for rank, r in enumerate(res):
        flat, healed, world_healed = r["first"]
        assert bool(torch.isfinite(flat).all()) == (rank >= 2)
        assert healed == 0 and world_healed == 0  # nobody healed in round 0: nothing counted
        flat, healed, world_healed = r["second"]
        assert torch.isfinite(flat).all()
        assert healed == (1 if rank < 2 else 0) and world_healed == 2


# ----------------------------------------------------------------------------- policies and heal_now
def test_average_and_leader_policies_skip_non_finite_replicas(pool):
    res = run_on_pool(pool, WORLD, _policies_over_finite, [0, 2], 2)
    for r in res:
        torch.testing.assert_close(r["average"], (_values(1) + _values(3)) / 2)
        assert torch.equal(r["leader"], _values(1))  # the leader (2) is NaN: the lowest finite rank
    res = run_on_pool(pool, WORLD, _policies_over_finite, [0, 1, 2, 3], 2)
    assert all("every replica is non-finite" in r["average"] for r in res)
    assert all("every replica is non-finite" in r["leader"] for r in res)


@pytest.mark.parametrize("eval_policy", ["center", "local"])
def test_heal_now_uses_the_policy_weights(pool, eval_policy):
    res = run_on_pool(pool, WORLD, _heal_now, eval_policy)
    assert all(r["healed"] == 1 for r in res)
    assert [r["totals"] for r in res] == [(1, 6, 0), (1, 6, 0), (1, 6, 0), (1, 6, 1)]
    # (a detached EASGD starts its centre from each rank's own values; in a fit it is the same everywhere)
    expected = res[3]["center"] if eval_policy == "center" else (_values(0) + _values(1) + _values(2)) / 3
    torch.testing.assert_close(res[3]["post"], expected)
    assert res[3]["momentum"] == 0 and res[0]["momentum"] == 2
    assert all(torch.equal(res[r]["post"], _values(r)) for r in range(3))


# ----------------------------------------------------------------------------- impossible configurations
@pytest.mark.parametrize(
    ("strategy", "devices", "match"),
    [
        (DPSGDStrategy(graph=[[0, 1], [1, 2], [2, 3]]), 3, r"`graph`=\[\[0, 1\].* devices\*num_nodes=3"),
        (DPSGDStrategy(graph="matcha8_a"), 2, "`graph`='matcha8_a' cannot run on devices\\*num_nodes=2"),
        (ALDSGDStrategy(dynamic_graph="matcha8_b"), 4, "`dynamic_graph`='matcha8_b'"),
        (LSGDStrategy(group_size=3, local_period=2), 4, r"`group_size=3` does not divide .*=4: use one of \[1, 2, 4\]"),
        (LocalSGDStrategy(group_size=3, local_period=2), 2, "`group_size=3`"),
    ],
)
def test_impossible_configurations_fail_when_the_trainer_is_built(strategy, devices, match):
    with pytest.raises(ValueError, match=match) as info:
        Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False)  # no worker has started
    assert info.value.__cause__ is None and "\n" not in str(info.value)  # one line, no chained traceback


def test_world_size_one_and_fitting_configurations():
    for name in sorted(registered_strategies()):
        if not registered_strategies()[name].__module__.startswith("lightning_autoopt."):
            continue
        with pytest.raises(ValueError, match="devices>=2"):
            Trainer(accelerator="cpu", devices=1, strategy=name, logger=False)
    Trainer(accelerator="cpu", devices=4, strategy=DPSGDStrategy(graph=[[0, 1], [1, 2], [2, 3]]), logger=False)
    Trainer(accelerator="cpu", devices=4, strategy=LSGDStrategy(group_size=2, local_period=2), logger=False)


# ----------------------------------------------------------------------------- DDP-only options
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_ddp_only_options_are_refused_by_name(name):
    cls = CLASSES[name][0]
    with pytest.raises(ValueError, match=r"`bucket_cap_mb`, `find_unused_parameters`, `static_graph` configure DDP"):
        cls(find_unused_parameters=True, static_graph=True, bucket_cap_mb=1)
    with pytest.raises(ValueError, match="`ddp_comm_hook` configures DDP"):
        cls(ddp_comm_hook=print)
    with pytest.raises(ValueError, match=f"{cls.__name__} has no argument `perod`"):
        cls(perod=3)
    kept = cls(start_method="spawn", process_group_backend="gloo", timeout=None, cluster_environment=None)
    assert kept._start_method == "spawn" and kept._process_group_backend == "gloo" and kept._timeout is None


def test_cli_signature_shows_only_the_options_that_matter():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(LSGDStrategy, "strategy")
    names = {a.dest.split(".", 1)[1] for a in parser._actions if a.dest.startswith("strategy.")}
    assert {"period", "pull_strength", "start_method", "timeout", "process_group_backend"} <= names
    assert {"cluster_environment", "eval_policy"} <= names
    hidden = {"find_unused_parameters", "static_graph", "bucket_cap_mb", "ddp_comm_hook", "gradient_as_bucket_view"}
    assert not names & hidden, names & hidden
    assert len(names) < 30, sorted(names)


# ----------------------------------------------------------------------------- teardown
@pytest.mark.slow
@pytest.mark.parametrize("name", ["lsgd", "localsgd"])
def test_spawned_workers_leave_no_process_group(tmp_path, name):
    cls = registered_strategies()[name]
    kwargs = {"period": 2, "local_period": 1, "group_size": 1}  # subgroups too
    probe = GroupProbe(str(tmp_path))
    trainer = make_trainer(
        tmp_path, [probe], devices=2, strategy=cls(start_method="spawn", **kwargs), max_steps=4, limit_val_batches=0
    )
    trainer.fit(TinyClassifier(), TinyDataModule())  # a worker that aborts at exit makes this raise
    for rank in range(2):
        seen = torch.load(tmp_path / f"groups{rank}.pt", weights_only=False)
        assert seen["during_fit"] == (True, True), seen  # default group and a subgroup existed
        assert seen["after_teardown"] is False, seen  # destroyed by the strategy's teardown


@pytest.mark.slow
def test_popen_fit_then_test_in_one_process_then_clean_exit(tmp_path):
    proc = _run_script(tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "terminate called" not in proc.stderr
    for rank in range(2):
        seen = (tmp_path / f"popen{rank}.txt").read_text().split()
        # after fit the group is kept (test() reuses it), after test too; the exit hook destroyed it
        assert seen == ["fit_end=True", "test_end=True", "exit=False"], seen


@pytest.mark.slow
def test_an_exception_on_one_rank_releases_the_other(tmp_path):
    """Rank 1 raises and its caller keeps the process alive: rank 0, blocked in the next round, must fail at once
    (the strategy destroyed rank 1's group on the way out) instead of waiting for rank 1's exit or the timeout."""
    proc = _run_script(tmp_path, "--crash-rank", "1", "--linger", "30")
    assert proc.returncode != 0 and "CRASH" in proc.stderr
    crashed, other = ((tmp_path / f"popen{r}.txt").read_text().split() for r in (1, 0))
    assert crashed[-1] == other[-1] == "exit=False"
    delay = float(other[0].split("=")[1]) - float(crashed[0].split("=")[1])
    assert delay < 15.0, f"rank 0 failed {delay:.1f} s after rank 1 (rank 1 lingered 30 s)"


def _run_script(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    script = ROOT / "tests" / "strategies" / "_fit_then_test.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHELASTIC", "LOCAL_RANK", "RANK", "WORLD"))}
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK"):
        env.pop(key, None)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(script), str(tmp_path), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
