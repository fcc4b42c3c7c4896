"""The recipes shipped in the package: found by name, listed with descriptions, parsed and run via ``recipe:NAME``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_autoopt.recipes import list_recipes, recipe_description, recipe_path

RECIPES = list_recipes()
PACKAGE_RECIPE_DIR = Path(__file__).resolve().parents[1] / "lightning_autoopt" / "recipes"


def test_recipes_are_the_yaml_files_inside_the_package():
    assert "autodrop_mnist1d" in RECIPES
    # every recipe is a file of the package itself (shipped in the wheel), not of a checkout's top-level folder
    for name in RECIPES:
        path = recipe_path(name)
        assert path.is_file() and path.suffix == ".yaml", path
        assert path.parent.name == "recipes" and path.parent.parent.name == "lightning_autoopt", path
    if PACKAGE_RECIPE_DIR.is_dir():  # running from a source tree: the listing is exactly the folder's YAML files
        assert RECIPES == sorted(p.stem for p in PACKAGE_RECIPE_DIR.glob("*.yaml"))


def test_recipe_path_accepts_suffix_and_prefix():
    expected = recipe_path("autodrop_mnist1d")
    assert recipe_path("autodrop_mnist1d.yaml") == expected
    assert recipe_path("recipe:autodrop_mnist1d") == expected


@pytest.mark.parametrize(
    ("typo", "suggestion"), [("autodrp_mnist1d", "autodrop_mnist1d"), ("lsgd", "lsgd_mnist1d"), ("tame", "tame_split")]
)
def test_recipe_typo_names_the_close_match_and_lists_all(typo: str, suggestion: str):
    with pytest.raises(ValueError) as info:
        recipe_path(typo)
    msg = str(info.value)
    assert f"Unknown recipe '{typo}'" in msg and "Did you mean" in msg and suggestion in msg, msg
    for name in RECIPES:
        assert name in msg, f"{name} missing from: {msg}"


def test_recipe_name_without_any_close_match_still_lists_all():
    with pytest.raises(ValueError, match="Available recipes: ") as info:
        recipe_path("zzzz")
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_has_a_one_line_description(name: str):
    text = recipe_description(name)
    assert 10 <= len(text) <= 140 and "\n" not in text, text
    assert not text.startswith("#") and not text.endswith((":", ".")), text


def test_recipe_description_is_first_comment_line_up_to_colon():
    first = recipe_path("autodrop_mnist1d").read_text().splitlines()[0]
    assert first.startswith("# AutoDrop on MNIST-1D")
    assert recipe_description("autodrop_mnist1d") == first.lstrip("# ").split(": ")[0]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_keeps_the_progress_bar_on(name: str):
    # A 40-epoch run that prints nothing for minutes looks hung: recipes leave Lightning's progress bar on.
    assert "enable_progress_bar" not in recipe_path(name).read_text()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_by_name(name: str, monkeypatch: pytest.MonkeyPatch):
    from lightning_autoopt.cli import AutoOptCLI

    monkeypatch.setattr(sys, "argv", ["autoopt"])  # keep pytest's own arguments away from the CLI
    cli = AutoOptCLI(
        args=["--config", f"recipe:{name}", "--trainer.fast_dev_run=1", "--trainer.logger=false"],
        run=False,
    )
    assert cli.trainer is not None
    assert cli.model is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_fast_dev_run(name: str, tmp_path: Path):
    # From an empty working directory: the recipe is found by name, no checkout needed.
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", WANDB_MODE="offline")
    cmd = [
        sys.executable,
        "-m",
        "lightning_autoopt",
        "fit",
        "--config",
        f"recipe:{name}",
        "--trainer.fast_dev_run=1",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    # quiet output: no promotional tips, no deprecation warning from inside Lightning; the progress bar is on
    assert "💡 Tip" not in output and "litlogger" not in output and "litmodels" not in output, output[-3000:]
    assert "LeafSpec" not in output, output[-3000:]
    assert "Epoch 0" in output, output[-3000:]
