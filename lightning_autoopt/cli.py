"""The ``autoopt`` console script: a :class:`~lightning.pytorch.cli.LightningCLI` that knows this package.

Importing :mod:`lightning_autoopt` before the CLI parses anything registers the strategy names, so a YAML file
may say ``trainer.strategy: lsgd`` as well as give a ``class_path`` of this package.

The recipes shipped with the package (:mod:`lightning_autoopt.recipes`) run without a clone of the repository:
``--config recipe:NAME`` loads the recipe ``NAME`` (with ``fit``, ``validate``, ``test`` and ``predict``), and
``autoopt recipes`` lists them. A path to your own YAML file works as in any LightningCLI.

Compared with a plain LightningCLI the output is quieter: Lightning's promotional tips (the "Tip: ... try
installing litlogger / litmodels" lines) and a known deprecation warning raised inside Lightning itself (not by
your code) are dropped; every other message and warning is kept.

Example::

    autoopt recipes                                         # the recipes, with one-line descriptions
    autoopt recipes autodrop_mnist1d > my_autodrop.yaml     # a recipe's YAML, to copy and edit
    autoopt fit --config recipe:autodrop_mnist1d
    autoopt fit --config recipe:lsgd_mnist1d --trainer.max_epochs=3
    autoopt fit --config my_autodrop.yaml
    python -m lightning_autoopt fit --config recipe:autodrop_mnist1d   # same as autoopt
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_autoopt  # noqa: F401  (registers strategy names before the Trainer is built)
from lightning_autoopt.recipes import RECIPE_PREFIX, list_recipes, recipe_description, recipe_path

__all__ = ["AutoOptCLI", "main", "resolve_recipe_args", "silence_lightning_noise"]

PROG = "autoopt"
_DESCRIPTION = (
    "lightning-autoopt: a LightningCLI for any LightningModule/LightningDataModule with this package's callbacks, "
    "strategies, models and data modules available by name."
)
_EPILOG = (
    f"More: `{PROG} recipes` lists the recipes shipped with the package; `{PROG} fit --config recipe:NAME` runs one; "
    f"`{PROG} recipes NAME` prints its YAML. `{PROG} fit --help` shows every option with its documentation."
)
_CONFIG_FLAGS = ("-c", "--config")
# Lightning logs these through rank_zero_info; there is no switch for them (Lightning issue #21294).
_TIP_PREFIX = "💡 Tip:"


class _DropLightningTips(logging.Filter):
    """Logging filter that drops Lightning's promotional "Tip: ..." messages and keeps everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith(_TIP_PREFIX)


_TIPS_FILTER = _DropLightningTips()


def silence_lightning_noise() -> None:
    """Drop Lightning's promotional tips and the deprecation warnings Lightning raises from its own code.

    Installs a :class:`logging.Filter` on the loggers Lightning's ``rank_zero_info`` writes to (the supported way
    to shape Lightning's console output is the standard :mod:`logging` configuration of its loggers) and a
    :mod:`warnings` filter for the ``LeafSpec`` deprecation that newer torch raises inside
    ``lightning.pytorch.utilities._pytree`` (nothing a user can act on). Every other message and warning is kept.
    Idempotent; called by :class:`AutoOptCLI`. Library users who want the same can call it themselves.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_module

    loggers = {
        logging.getLogger("lightning.pytorch.utilities.rank_zero"),
        logging.getLogger("lightning.fabric.utilities.rank_zero"),
        rank_zero_module.log,
    }
    for logger in loggers:
        if _TIPS_FILTER not in logger.filters:
            logger.addFilter(_TIPS_FILTER)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.",
    )


def resolve_recipe_args(args: Sequence[str]) -> list[str]:
    """Replace ``--config recipe:NAME`` (also ``-c``, ``--config=``) by the path of the packaged recipe ``NAME``.

    Args:
        args: Command-line arguments, without the program name.

    Returns:
        A new list; arguments without the ``recipe:`` prefix are unchanged.

    Raises:
        ValueError: If a ``recipe:`` name is not a shipped recipe (the message lists the names).

    Example::

        >>> resolve_recipe_args(["fit", "--config", "recipe:autodrop_mnist1d"])[2].endswith("autodrop_mnist1d.yaml")
        True
    """
    out = [str(a) for a in args]
    for i, arg in enumerate(out):
        if arg in _CONFIG_FLAGS and i + 1 < len(out) and out[i + 1].startswith(RECIPE_PREFIX):
            out[i + 1] = str(recipe_path(out[i + 1]))
            continue
        for flag in _CONFIG_FLAGS:
            prefix = f"{flag}={RECIPE_PREFIX}"
            if arg.startswith(prefix):
                out[i] = f"{flag}={recipe_path(arg[len(flag) + 1 :])}"
    return out


class AutoOptCLI(LightningCLI):
    """LightningCLI in subclass mode for any LightningModule/LightningDataModule, with this package imported.

    Adds to :class:`~lightning.pytorch.cli.LightningCLI`: ``--config recipe:NAME`` for the recipes shipped with the
    package (resolved before jsonargparse parses, so it works for every subcommand), the program name ``autoopt``
    in the usage line (also under ``python -m lightning_autoopt``), and quieter output
    (:func:`silence_lightning_noise`).

    Args:
        args: Command-line arguments (``None`` reads ``sys.argv``); handy in tests with ``run=False``.
        run: Whether to run the subcommand (``fit``, ``validate``, ...) after parsing.
        **kwargs: Forwarded to :class:`~lightning.pytorch.cli.LightningCLI`.

    Example::

        cli = AutoOptCLI(args=["--config", "recipe:autodrop_mnist1d", "--trainer.max_epochs=1"], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        silence_lightning_noise()
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        parser_kwargs = dict(kwargs.pop("parser_kwargs", None) or {})
        parser_kwargs.setdefault("prog", PROG)
        parser_kwargs.setdefault("description", _DESCRIPTION)
        parser_kwargs.setdefault("epilog", _EPILOG)
        super().__init__(
            model_class=None,
            datamodule_class=None,
            args=None if args is None else list(args),
            run=run,
            parser_kwargs=parser_kwargs,
            **kwargs,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Resolve ``recipe:NAME`` configs, then parse as LightningCLI does (``args=None`` reads ``sys.argv``)."""
        if isinstance(args, dict) or (args is not None and not isinstance(args, (list, tuple))):
            super().parse_arguments(parser, args)  # a dict / Namespace: nothing to resolve
            return
        from_argv = args is None
        argv: list[str] = sys.argv[1:] if args is None else [str(a) for a in args]
        try:
            resolved = resolve_recipe_args(argv)
        except ValueError as err:
            parser.error(str(err))
        if from_argv:
            self.config = parser.parse_args(resolved)
        else:
            super().parse_arguments(parser, resolved)


def _recipes_command(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} recipes",
        description="List the recipes shipped with lightning-autoopt, or print one (its YAML or its path).",
        epilog=f"Run one with: {PROG} fit --config recipe:NAME",
    )
    parser.add_argument("name", nargs="?", help="a recipe name: print its YAML (redirect it to a file to edit it)")
    parser.add_argument("--path", action="store_true", help="print the recipe's file path instead of its YAML")
    ns = parser.parse_args(list(argv))
    if ns.name is None:
        if ns.path:
            parser.error("--path needs a recipe NAME")
        names = list_recipes()
        width = max(len(n) for n in names)
        lines = [f"Recipes shipped with lightning-autoopt (run one: {PROG} fit --config recipe:NAME):"]
        lines += [f"  {name:<{width}}  {recipe_description(name)}" for name in names]
        sys.stdout.write("\n".join(lines) + "\n")  # a CLI listing: stdout is its output, not a log message
        return
    try:
        path = recipe_path(ns.name)
    except ValueError as err:
        parser.error(str(err))
    sys.stdout.write(f"{path}\n" if ns.path else path.read_text(encoding="utf-8"))


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``autoopt`` console script (``args=None`` reads ``sys.argv``)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "recipes":
        _recipes_command(argv[1:])
        return
    AutoOptCLI(args=args)


if __name__ == "__main__":  # pragma: no cover
    main()
