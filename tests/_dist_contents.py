"""Check a built wheel and sdist: the package data (every recipe, ``py.typed``) and the license are inside.

Used by ``make wheel-check`` (``python tests/_dist_contents.py dist``) and by ``tests/test_packaging.py``.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def expected_package_data() -> list[str]:
    """Package-relative paths that must ship: every recipe YAML of the source tree and ``py.typed``."""
    recipes = sorted(p.name for p in (ROOT / "lightning_autoopt" / "recipes").glob("*.yaml"))
    assert recipes, "no recipes found in the source tree"
    return [f"lightning_autoopt/recipes/{name}" for name in recipes] + [
        "lightning_autoopt/recipes/__init__.py",
        "lightning_autoopt/py.typed",
        "lightning_autoopt/cli.py",
    ]


def check_dist(dist_dir: str | Path) -> dict[str, list[str]]:
    """Assert that the one wheel and the one sdist in ``dist_dir`` contain the package data and the license.

    Returns:
        ``{"wheel": names, "sdist": names}`` of the checked archive members.
    """
    dist = Path(dist_dir)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {dist}: {wheels} {sdists}"
    wanted = expected_package_data()

    wheel_names = zipfile.ZipFile(wheels[0]).namelist()
    missing = [w for w in wanted if w not in wheel_names]
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names):
        missing.append("*.dist-info/licenses/LICENSE")
    assert not missing, f"{wheels[0].name} lacks {missing}"

    with tarfile.open(sdists[0]) as tar:
        # members are "<name>-<version>/<path>"; drop the top folder
        sdist_names = [m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name]
    missing = [w for w in [*wanted, "LICENSE", "README.md", "pyproject.toml"] if w not in sdist_names]
    assert not missing, f"{sdists[0].name} lacks {missing}"
    return {"wheel": wheel_names, "sdist": sdist_names}


if __name__ == "__main__":
    found = check_dist(sys.argv[1] if len(sys.argv) > 1 else "dist")
    n = len(expected_package_data())
    print(
        f"dist OK: wheel ({len(found['wheel'])} files) and sdist ({len(found['sdist'])} files) hold the {n} "
        "package-data files checked and the license"
    )
