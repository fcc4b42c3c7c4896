"""Local-update strategies inside a real ``Trainer`` (2-4 spawned CPU processes, gloo)."""

from __future__ import annotations

import os

import pytest
import torch

import lightning_autoopt  # noqa: F401
from tests.helpers import TinyClassifier, TinyDataModule, flat_params, make_trainer
from tests.strategies._local_update_helpers import FlatRecorder, ManualTiny, NaNOnRank, RecordingLSGD

pytestmark = pytest.mark.slow


def _trainer(tmp_path, strategy, devices=2, max_steps=8, **kwargs):
    return make_trainer(
        tmp_path, strategy=strategy, devices=devices, max_steps=max_steps, limit_val_batches=0, **kwargs
    )


def _load(tmp_path, name, world):
    return [torch.load(os.path.join(tmp_path, f"{name}{r}.pt"), weights_only=False) for r in range(world)]


def test_lsgd_replicas_diverge_between_rounds_and_meet_by_the_formula(tmp_path):
    lam, period = 0.5, 3
    strategy = RecordingLSGD(
        record_dir=str(tmp_path), period=period, pull_strength=lam, eval_policy="leader", start_method="spawn"
    )
    trainer = _trainer(tmp_path, strategy, max_steps=7, callbacks=[FlatRecorder(str(tmp_path))])
    model = TinyClassifier()
    trainer.fit(model, TinyDataModule())
    rounds = _load(tmp_path, "rounds", 2)
    steps = _load(tmp_path, "rank", 2)
    assert [r["step"] for r in rounds[0]] == [3, 6]
    # fit hands back the policy weights (eval_policy="leader": the last leader's replica), also under spawn
    assert torch.equal(flat_params(model), steps[rounds[0][-1]["leader"]]["final"])
    for i in range(2):
        metrics = torch.tensor([rounds[r][i]["metric"] for r in range(2)])
        leader = int(torch.argmin(metrics))  # argmin returns the first (lowest-rank) minimum
        assert rounds[0][i]["leader"] == rounds[1][i]["leader"] == leader
        pre_leader = rounds[leader][i]["pre"]
        assert not torch.equal(rounds[0][i]["pre"], rounds[1][i]["pre"])  # diverged since the last round
        for r in range(2):
            pre = rounds[r][i]["pre"]
            assert torch.equal(rounds[r][i]["post"], pre.clone().add_(pre_leader - pre, alpha=lam))
    # per-step trajectories: distinct at every step (partial pull), and the logged signals exist
    for (s0, f0), (s1, f1) in zip(steps[0]["steps"], steps[1]["steps"]):
        assert s0 == s1 and not torch.equal(f0, f1)
    m = steps[0]["metrics"]
    assert m["dist/rounds"] == 2 and m["dist/leader"] in (0.0, 1.0)
    n = sum(p.numel() for p in TinyClassifier().parameters())
    assert m["dist/bytes_sent"] == 4 * n + 32 and m["dist/bytes_sent_total"] == 2 * (4 * n + 32)
    assert steps[0]["state"]["num_steps"] == 7
    # on the wire (2 ranks): the leader's broadcast leaves the leader once, each rank sends its 32-byte chunk once
    assert sum(steps[r]["state"]["wire_bytes_total"] for r in range(2)) == 2 * (4 * n + 64)
    assert m["dist/wire_bytes_sent_total"] == steps[0]["state"]["wire_bytes_total"]


def test_multi_leader_four_processes_two_groups(tmp_path):
    strategy = RecordingLSGD(
        record_dir=str(tmp_path),
        period=4,
        local_period=2,
        group_size=2,
        pull_strength=1.0,
        local_pull_strength=1.0,
        start_method="spawn",
    )
    trainer = _trainer(tmp_path, strategy, devices=4, max_steps=6, callbacks=[FlatRecorder(str(tmp_path))])
    trainer.fit(TinyClassifier(), TinyDataModule(n=512))
    steps = _load(tmp_path, "rank", 4)
    rounds = _load(tmp_path, "rounds", 4)
    by_step = [{s: f for s, f in steps[r]["steps"]} for r in range(4)]
    for s in (2, 6):  # local rounds only: equal inside each group, different across groups
        assert torch.equal(by_step[0][s], by_step[1][s]) and torch.equal(by_step[2][s], by_step[3][s])
        assert not torch.equal(by_step[0][s], by_step[2][s])
    assert all(torch.equal(by_step[0][4], by_step[r][4]) for r in range(4))  # global round
    for s in (1, 3, 5):
        assert not torch.equal(by_step[0][s], by_step[1][s])
    local_leaders = [rounds[r][0]["local_leader"] for r in range(4)]
    assert local_leaders[0] == local_leaders[1] in (0, 1) and local_leaders[2] == local_leaders[3] in (2, 3)


def test_nan_loss_never_makes_a_leader_and_the_replica_recovers(tmp_path):
    strategy = RecordingLSGD(record_dir=str(tmp_path), period=3, pull_strength=1.0, window=2, start_method="spawn")
    trainer = _trainer(tmp_path, strategy, max_steps=6, callbacks=[FlatRecorder(str(tmp_path))])
    trainer.fit(NaNOnRank(nan_rank=0, nan_step=1), TinyDataModule())
    rounds = _load(tmp_path, "rounds", 2)
    steps = _load(tmp_path, "rank", 2)
    assert rounds[0][0]["leader"] == rounds[1][0]["leader"] == 1  # rank 0's window holds inf: never the leader
    assert rounds[0][0]["metric"] == float("inf")
    assert not torch.isfinite(rounds[0][0]["pre"]).all()  # rank 0 diverged ...
    assert torch.isfinite(steps[0]["final"]).all()  # ... and was pulled back by the leader
    assert steps[0]["state"]["nonfinite_events"] >= 1 and steps[1]["state"]["nonfinite_events"] == 0


def test_manual_optimization_reads_the_logged_loss(tmp_path):
    strategy = RecordingLSGD(record_dir=str(tmp_path), period=2, pull_strength=1.0, start_method="spawn")
    trainer = _trainer(tmp_path, strategy, max_steps=4, callbacks=[FlatRecorder(str(tmp_path))])
    trainer.fit(ManualTiny(), TinyDataModule())
    rounds = _load(tmp_path, "rounds", 2)
    steps = _load(tmp_path, "rank", 2)
    assert [r["step"] for r in rounds[0]] == [2, 4]
    assert [r["leader"] for r in rounds[0]] == [0, 0]  # rank 1's logged loss is doubled
    assert steps[0]["state"]["num_steps"] == 4
    assert torch.equal(steps[0]["final"], steps[1]["final"])  # lambda = 1 at the last step
