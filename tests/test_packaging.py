"""The built wheel and sdist carry the recipes, ``py.typed`` and the license (``make wheel-check`` also installs it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests._dist_contents import ROOT, check_dist, expected_package_data


def _needs_source_tree() -> None:
    if not (ROOT / "lightning_autoopt" / "recipes").is_dir():
        pytest.skip("needs the source tree (this run tests an installed copy of the package)")


def test_expected_package_data_lists_every_recipe():
    from lightning_autoopt.recipes import list_recipes

    _needs_source_tree()

    listed = {Path(p).stem for p in expected_package_data() if p.endswith(".yaml")}
    assert listed == set(list_recipes())


@pytest.mark.slow
def test_wheel_and_sdist_ship_recipes_py_typed_and_license(tmp_path: Path):
    _needs_source_tree()
    pytest.importorskip("build", reason="`build` is in the dev extra: pip install -e '.[dev]'")
    if int(version("setuptools").split(".")[0]) < 77:
        pytest.skip("building without isolation needs setuptools>=77 (dev extra)")
    # Build from a clean copy: a stale *.egg-info/SOURCES.txt in the checkout would hide missing package-data config.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "*.egg-info", "build", "dist", "site", "runs", "__pycache__", "lightning_logs")
    shutil.copytree(ROOT, src, ignore=skip)
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    found = check_dist(out)
    assert "lightning_autoopt/recipes/autodrop_mnist1d.yaml" in found["wheel"]
    # The wheel carries no tests, benchmarks or docs: only the package and its metadata.
    assert all(n.startswith(("lightning_autoopt/", "lightning_autoopt-")) for n in found["wheel"]), found["wheel"]
