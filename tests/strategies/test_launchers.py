"""The default ``popen`` launcher and a ``torchrun`` restart after a killed worker (subprocess scripts, 2 CPU ranks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "train_local_update.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHELASTIC", "LOCAL_RANK", "RANK", "WORLD"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK"):
        env.pop(key, None)
    return env


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    )


def _results(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def popen_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("popen")
    _run([sys.executable, str(SCRIPT), "--strategy", "lsgd", "--out", str(out)])
    return out


def test_popen_launcher_trains_without_ddp_wrapping(popen_run):
    res = _results(popen_run)
    assert [r["global_step"] for r in res] == [12, 12]
    assert res[0]["state"]["num_rounds"] == 4 == res[1]["state"]["num_rounds"]
    assert res[0]["state"]["leader"] == res[1]["state"]["leader"]
    # the last round was at step 12 and pulled with strength 0.5: replicas are close but not equal
    assert not torch.equal(res[0]["final"], res[1]["final"])


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun not installed",
)
def test_torchrun_worker_killed_restarts_and_resumes_exactly(popen_run, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=1",
        str(SCRIPT),
        "--strategy",
        "lsgd",
        "--out",
        str(tmp_path),
        "--crash-step",
        "6",
    ]
    _run(cmd)
    markers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("attempt"))
    assert markers == [
        "attempt0_rank0_resumeFalse",
        "attempt0_rank1_resumeFalse",
        "attempt1_rank0_resumeTrue",
        "attempt1_rank1_resumeTrue",
    ], markers
    crashed, clean = _results(tmp_path), _results(popen_run)
    for r in range(2):
        assert crashed[r]["global_step"] == clean[r]["global_step"] == 12
        assert torch.equal(crashed[r]["final"], clean[r]["final"]), f"rank {r}: resumed weights differ"
        for key in ("num_steps", "num_rounds", "bytes_sent_total", "leader"):
            assert crashed[r]["state"][key] == clean[r]["state"][key], key
        assert crashed[r]["state"]["extra"]["leader_counts"] == clean[r]["state"]["extra"]["leader_counts"]
