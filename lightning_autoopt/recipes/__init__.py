"""Lightning CLI recipes shipped inside the package: one YAML file per method, each runs on a CPU in minutes.

The files live in this package's folder and are installed with the wheel, so they work without a clone of the
repository. Find them by name rather than by path:

- on the command line, ``autoopt recipes`` lists them and ``autoopt fit --config recipe:NAME`` runs one (the
  ``recipe:`` prefix works wherever a ``--config`` file does: ``fit``, ``validate``, ``test``, ``predict``);
- from Python, :func:`list_recipes` gives the names and :func:`recipe_path` the file.

Every recipe starts with a comment block; its first line (up to the first ``": "``) is the recipe's one-line
description shown by ``autoopt recipes``.

Example::

    from lightning_autoopt.cli import AutoOptCLI
    from lightning_autoopt.recipes import list_recipes, recipe_path

    print(list_recipes())  # ['aldsgd_mnist1d', 'autodrop_mnist1d', ...]
    cli = AutoOptCLI(args=["--config", str(recipe_path("autodrop_mnist1d"))], run=False)
"""

from __future__ import annotations

import difflib
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["RECIPE_PREFIX", "list_recipes", "recipe_description", "recipe_path"]

#: Prefix that makes ``--config recipe:NAME`` load a recipe shipped with the package.
RECIPE_PREFIX = "recipe:"
_SUFFIX = ".yaml"


def _files() -> list[Traversable]:
    return [f for f in resources.files(__name__).iterdir() if f.is_file() and f.name.endswith(_SUFFIX)]


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package (file names without ``.yaml``), sorted.

    Returns:
        The names, e.g. ``["aldsgd_mnist1d", "autodrop_mnist1d", ...]``; each is accepted by :func:`recipe_path`.

    Example::

        >>> "autodrop_mnist1d" in list_recipes()
        True
    """
    return sorted(f.name[: -len(_SUFFIX)] for f in _files())


def _resolve(name: str) -> Traversable:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Recipe name must be a non-empty string, got {name!r}; available: {list_recipes()}.")
    stem = name.strip()
    if stem.startswith(RECIPE_PREFIX):
        stem = stem[len(RECIPE_PREFIX) :]
    if stem.endswith(_SUFFIX):
        stem = stem[: -len(_SUFFIX)]
    available = list_recipes()
    if stem not in available:
        # A name that starts a recipe's name ("lsgd") or a typo ("autodrp_mnist1d") gets a suggestion.
        close = [n for n in available if n.startswith(stem)][:3] or difflib.get_close_matches(stem, available, n=1)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown recipe {stem!r}.{hint} Available recipes: {', '.join(available)} "
            "(`autoopt recipes` lists them with descriptions)."
        )
    return resources.files(__name__) / f"{stem}{_SUFFIX}"


def recipe_path(name: str) -> Path:
    """Path of the recipe ``name`` on disk, ready for ``--config``.

    Args:
        name: A name from :func:`list_recipes`; a trailing ``.yaml`` and a leading ``recipe:`` are accepted.

    Returns:
        The YAML file's path. For a normal install this is the file inside the installed package; if the package is
        imported from a zip archive the text is copied to a temporary file first.

    Raises:
        ValueError: If no recipe has that name; the message lists the available names and close matches.

    Example::

        >>> recipe_path("autodrop_mnist1d").name
        'autodrop_mnist1d.yaml'
    """
    resource = _resolve(name)
    if isinstance(resource, Path):
        return resource
    # Imported from a zip (no real file): materialise a copy so jsonargparse can read it like any config file.
    target = Path(tempfile.gettempdir()) / "lightning_autoopt_recipes" / resource.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(resource.read_text(encoding="utf-8"), encoding="utf-8")
    return target


def recipe_description(name: str) -> str:
    """One-line description of a recipe: the first line of its leading comment, up to the first ``": "``.

    Args:
        name: A name from :func:`list_recipes`.

    Returns:
        The description, or ``""`` if the file does not start with a comment.

    Raises:
        ValueError: If no recipe has that name.

    Example::

        >>> recipe_description("lpfsgd_mnist1d")
        'LPF-SGD on MNIST-1D'
    """
    for line in _resolve(name).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text:
            continue
        if not text.startswith("#"):
            return ""
        text = text.lstrip("#").strip()
        if text:
            return text.split(": ", 1)[0].rstrip(".:").strip()
    return ""
