"""Every YAML in recipes/ parses with the CLI (run=False) and runs end to end with fast_dev_run via `autoopt`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert "autodrop_mnist1d" in names, names


@pytest.mark.parametrize("recipe", RECIPES, ids=_ids(RECIPES))
def test_recipe_parses(recipe: Path, monkeypatch: pytest.MonkeyPatch):
    from lightning_autoopt.cli import AutoOptCLI

    monkeypatch.setattr(sys, "argv", ["autoopt"])  # keep pytest's own arguments away from the CLI

    cli = AutoOptCLI(
        args=["--config", str(recipe), "--trainer.fast_dev_run=1", "--trainer.logger=false"],
        run=False,
    )
    assert cli.trainer is not None
    assert cli.model is not None


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=_ids(RECIPES))
def test_recipe_runs_fast_dev_run(recipe: Path, tmp_path: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", WANDB_MODE="offline")
    cmd = [
        sys.executable,
        "-m",
        "lightning_autoopt",
        "fit",
        "--config",
        str(recipe),
        "--trainer.fast_dev_run=1",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
