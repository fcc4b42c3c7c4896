"""The console script: help text shows our arguments with their docstrings; strategy names resolve."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "lightning_autoopt", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_callback_help_shows_autodrop_arguments_with_docstrings():
    proc = _run("fit", "--trainer.callbacks.help", "lightning_autoopt.callbacks.AutoDrop")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for arg in ("drop_factor", "patience", "interval", "min_lr", "theta"):
        assert f"--trainer.callbacks.{arg}" in out, f"{arg} missing from help:\n{out}"
    # the docstring's Args: text reaches the help (not just the bare names)
    assert "(type: float" in out and "default:" in out
    assert "Set ``trainer.should_stop``" in out


def test_version_and_top_level_import():
    import lightning_autoopt

    assert lightning_autoopt.__version__


@pytest.mark.parametrize("name", ["lsgd", "lsgd_spawn", "easgd", "localsgd"])
def test_strategy_names_registered_on_import(name: str):
    from lightning.pytorch.strategies import StrategyRegistry

    import lightning_autoopt  # noqa: F401

    assert name in StrategyRegistry.available_strategies()
