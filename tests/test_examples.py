"""Every script in examples/ runs as a user runs it (a subprocess, ``--fast`` settings) and does what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="needs the source tree (examples/)")


def run_example(args: list[str], out: Path, timeout: float = 180) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout's package
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [*args, "--fast", "--out", str(out)], capture_output=True, text=True, timeout=timeout, env=env, cwd=out.parent
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_every_example_is_tested_and_documented():
    scripts = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    tested = {"autodrop_char_lm", "sharpness_custom_loss", "strategy_torchrun", "task_shift_dco", "lpf_sgd_flatness"}
    assert set(scripts) == tested
    for name in scripts:
        doc = (EXAMPLES / f"{name}.py").read_text().split('"""')[1]
        assert "What it shows" in doc and f"examples/{name}.py" in doc, name
    listing = (ROOT / "docs" / "examples.md").read_text()
    assert all(f"examples/{name}.py" in listing for name in scripts)


def test_autodrop_char_lm(tmp_path):
    out = run_example([sys.executable, str(EXAMPLES / "autodrop_char_lm.py")], tmp_path / "lm")
    assert "drop(s) in 40 steps" in out  # a 40-step smoke run: too short to expect a drop
    assert "bits per character" in out and (tmp_path / "lm" / "autodrop.png").is_file()


def test_sharpness_custom_loss(tmp_path):
    out = run_example([sys.executable, str(EXAMPLES / "sharpness_custom_loss.py")], tmp_path / "sh")
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [r[:2] for r in rows] == [["0", "4"], ["1", "8"]]  # one probe per epoch, 4 steps each
    assert all(float(v) > 0 for r in rows for v in r[2:])  # lpf, λ_max, trace of the Huber loss
    assert (tmp_path / "sh" / "sharpness.png").is_file()


def test_task_shift_dco(tmp_path):
    out = run_example([sys.executable, str(EXAMPLES / "task_shift_dco.py")], tmp_path / "ts")
    detected = next(line for line in out.splitlines() if line.startswith("shifts detected"))
    steps = [int(s) for s in detected.split("[")[1].split("]")[0].split(",") if s.strip()]
    assert len(steps) == 1 and 150 < steps[0] <= 160  # the true change is at step 150
    assert f"DCO consolidated tasks at  [{steps[0]}]" in out
    assert (tmp_path / "ts" / "task_shift.png").is_file() and (tmp_path / "ts" / "dco.png").is_file()


def test_lpf_sgd_flatness(tmp_path):
    out = run_example([sys.executable, str(EXAMPLES / "lpf_sgd_flatness.py")], tmp_path / "lpf")
    assert out.count("test acc") == 2 and "λ_max" in out
    assert {p.name for p in (tmp_path / "lpf").glob("*.png")} == {"sharpness_sgd_vs_lpf.png", "lpf_sgd.png"}


def test_strategy_under_torchrun(tmp_path):
    """The exact launch of the docstring: torchrun, 2 processes (gloo on CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = run_example([*cmd, str(EXAMPLES / "strategy_torchrun.py")], tmp_path / "st", timeout=120)
    assert "LSGDStrategy on 2 processes: 4 rounds in 16 steps" in out
    run = tmp_path / "st" / "lsgd_run"
    assert (run / "metrics.csv").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    from lightning_autoopt.plots import plot_run

    assert (run / "plots" / "training.png") in plot_run(run).paths  # `autoopt plot` on the example's run folder
