"""Restart-ready runs: the ``autoopt`` CLI under ``torchrun --max-restarts`` survives a SIGKILLed worker.

The reference run and the killed run use the same YAML (a 2-rank LSGD run of the tests' tiny classifier); the killed
run loses rank 1 to SIGKILL mid-epoch on its first attempt, torchrun restarts both workers, the CLI finds the run's
``last.ckpt`` and resumes, and :class:`~lightning_autoopt.loggers.ResumableCSVLogger` drops the rows the first attempt
logged after that checkpoint. The final checkpoints must match bitwise and ``metrics.csv`` must hold the reference
run's cells, each once.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from lightning_autoopt.checkpoint import CHECKPOINT_KEY, verify_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KILL_STEP = 6  # epoch 1, batch 3 of 4: one epoch-end checkpoint (step 4) exists, rows 4..5 are logged after it

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 2
  max_epochs: 3
  limit_train_batches: 4
  limit_val_batches: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  strategy:
    class_path: lightning_autoopt.strategies.LSGDStrategy
    init_args: {{period: 3, pull_strength: 0.5, start_method: popen}}
{callbacks}
model:
  class_path: tests.helpers.TinyClassifier
  init_args: {{momentum: 0.9}}
data:
  class_path: tests.helpers.TinyDataModule
"""
KILL_CALLBACK = f"""  callbacks:
    - class_path: tests._faults.SigkillAt
      init_args: {{step: {KILL_STEP}, rank: 1}}"""


def _env() -> dict[str, str]:
    drop = ("TORCHELASTIC", "LOCAL_RANK", "RANK", "WORLD", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}\n{output[-6000:]}"
    return output


def _fit(tmp: Path, name: str, kill: bool, torchrun: bool) -> tuple[Path, str]:
    folder = tmp / name
    folder.mkdir()
    config = folder / "run.yaml"
    config.write_text(CONFIG.format(root=folder, callbacks=KILL_CALLBACK if kill else ""))
    cli = ["-m", "lightning_autoopt", "fit", "--config", str(config)]
    if torchrun:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1"]
        cmd = [sys.executable, *launcher, *cli]
    else:
        cmd = [sys.executable, *cli]
    output = _run(cmd, folder)
    return folder / "lightning_logs" / "run", output


def _cells(metrics_csv: Path) -> list[tuple[int, str, str]]:
    with metrics_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [(int(r["step"]), k, v) for r in rows for k, v in r.items() if k not in ("step", "epoch") and v != ""]


def test_sigkilled_worker_under_torchrun_resumes_exactly_with_a_complete_record(tmp_path: Path):
    reference, _ = _fit(tmp_path, "reference", kill=False, torchrun=False)
    killed, output = _fit(tmp_path, "killed", kill=True, torchrun=True)

    # the restart resumed from the epoch-end checkpoint and said so
    assert "Resuming from" in output and "global step 4" in output, output[-4000:]
    assert (killed / "metrics.replayed.csv").is_file(), "the killed attempt logged nothing after its checkpoint?"

    # final weights: policy weights and every rank's replica, optimizer state and strategy counters match bitwise
    info = verify_checkpoint(killed / "checkpoints" / "last.ckpt")  # CRCs and the per-rank payload's checksum
    assert info.payload_checked and info.local_update_world_size == 2 and info.global_step == 12
    ref = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=False)
    got = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)
    assert got["global_step"] == ref["global_step"] == 12
    for key, value in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    for rank, (r, g) in enumerate(zip(ref[CHECKPOINT_KEY]["ranks"], got[CHECKPOINT_KEY]["ranks"])):
        for key, value in r["model"].items():
            assert torch.equal(g["model"][key], value), f"rank {rank}: {key}"
        for key in ("num_steps", "num_rounds", "bytes_sent_total", "leader"):
            assert g["strategy"][key] == r["strategy"][key], f"rank {rank}: {key}"

    # the record: the reference run's cells, every (step, metric) exactly once
    ref_cells, got_cells = _cells(reference / "metrics.csv"), _cells(killed / "metrics.csv")
    duplicates = [k for k, n in Counter((s, m) for s, m, _ in got_cells).items() if n > 1]
    assert not duplicates, duplicates
    assert sorted(got_cells) == sorted(ref_cells)
    steps = sorted({s for s, m, _ in got_cells if m == "train_loss"})
    assert steps == list(range(12)), steps  # log_every_n_steps=1: every optimizer step's row is there


# ---------------------------------------------------------------------------------------------- emulated cluster
def _cluster_reason() -> str | None:
    from lightning_autoopt import cluster as cl

    try:
        cl.check_support(probe=True)
    except cl.ClusterUnavailable as err:
        return str(err)
    return None


CLUSTER_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 3
  limit_train_batches: 4
  limit_val_batches: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  strategy:
    class_path: lightning_autoopt.strategies.LocalSGDStrategy
    init_args: {{period: 2, start_method: popen, timeout: "0:00:{timeout:02d}"}}
  callbacks:
    - class_path: tests._faults.LinkDownAt
      init_args: {{step: {step}, seconds: {down}, rank: 1}}
model:
  class_path: tests.helpers.TinyClassifier
  init_args: {{momentum: 0.9}}
data:
  class_path: tests.helpers.TinyDataModule
"""


@pytest.mark.skipif(_cluster_reason() is not None, reason=f"no emulated cluster here: {_cluster_reason()}")
def test_inter_node_link_down_longer_than_the_timeout_then_restart_resumes_with_nothing_lost(tmp_path: Path):
    from lightning_autoopt.cluster import EmulatedCluster

    timeout, down = 10, 20
    (tmp_path / "run.yaml").write_text(CLUSTER_CONFIG.format(root=tmp_path, timeout=timeout, step=6, down=down))
    env = _env()
    with EmulatedCluster(nodes=2, link="1gbit") as cluster:
        run = cluster.torchrun(
            ["fit", "--config", str(tmp_path / "run.yaml")],
            nproc_per_node=1,
            timeout=240,
            env=env,
            log_dir=tmp_path / "logs",
            max_restarts=1,
        )
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in run.logs)
    assert run.ok, logs
    assert "Resuming from" in logs and "global step 4" in logs, logs

    record = tmp_path / "lightning_logs" / "run"
    info = verify_checkpoint(record / "checkpoints" / "last.ckpt")
    assert info.global_step == 12 and info.local_update_world_size == 2, info
    cells = _cells(record / "metrics.csv")
    duplicates = [k for k, n in Counter((s, m) for s, m, _ in cells).items() if n > 1]
    assert not duplicates, duplicates
    assert sorted({s for s, m, _ in cells if m == "train_loss"}) == list(range(12))
    assert sorted({s for s, m, _ in cells if m == "val_loss"}) == [3, 7, 11]
    assert (record / "metrics.replayed.csv").is_file()
