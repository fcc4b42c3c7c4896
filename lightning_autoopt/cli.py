"""The ``autoopt`` console script: a :class:`~lightning.pytorch.cli.LightningCLI` that knows this package.

Importing :mod:`lightning_autoopt` before the CLI parses anything registers the strategy names. A registered name
takes arguments like a class (``--trainer.strategy=lsgd --trainer.strategy.period=4``, or YAML ``class_path: lsgd``
with ``init_args``): :func:`resolve_strategy_args` turns names into class paths before jsonargparse parses; an
unknown name gets a did-you-mean.

Runs are restart-ready (see :class:`AutoOptCLI`): one folder per run with
:class:`~lightning_autoopt.loggers.ResumableCSVLogger`, ``last.ckpt`` checkpoints, and ``fit`` resumes from the last
checkpoint when there is one, after :func:`~lightning_autoopt.checkpoint.verify_checkpoint` checked it. Errors in a
checkpoint, a name or a value end the command with one line on stderr (``AUTOOPT_TRACEBACK=1`` for a traceback).

``autoopt plot RUN_DIR`` draws a finished (or interrupted) run's plots into ``RUN_DIR/plots/``: the training curves
from ``metrics.csv`` and one PNG per method signal, from the histories the callbacks and strategies keep in the
run's last checkpoint (:func:`lightning_autoopt.plots.plot_run`).

The recipes shipped with the package (:mod:`lightning_autoopt.recipes`) run without a clone of the repository:
``--config recipe:NAME`` loads the recipe ``NAME`` (with ``fit``, ``validate``, ``test`` and ``predict``), and
``autoopt recipes`` lists them. A path to your own YAML file works as in any LightningCLI.

Compared with a plain LightningCLI the output is quieter: Lightning's promotional tips (the "Tip: ... try
installing litlogger / litmodels" lines) and a known deprecation warning raised inside Lightning itself (not by
your code) are dropped; every other message and warning is kept.

Example::

    autoopt recipes                                         # the recipes, with one-line descriptions
    autoopt plot runs/autodrop_mnist1d                      # every method's plot of a finished run
    autoopt recipes autodrop_mnist1d > my_autodrop.yaml     # a recipe's YAML, to copy and edit
    autoopt fit --config recipe:autodrop_mnist1d
    autoopt fit --config recipe:lsgd_mnist1d --trainer.max_epochs=3
    autoopt fit --config recipe:lsgd_mnist1d --trainer.strategy=lsgd_spawn --trainer.strategy.period=4
    torchrun --standalone --nproc-per-node=2 --max-restarts=3 -m lightning_autoopt fit --config my_lsgd.yaml
    autoopt fit --config my_autodrop.yaml
    python -m lightning_autoopt fit --config recipe:autodrop_mnist1d   # same as autoopt
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

import lightning_autoopt  # noqa: F401  (registers strategy names before the Trainer is built)
from lightning_autoopt._strategy_names import resolve_strategy_config, resolve_strategy_value
from lightning_autoopt.checkpoint import (
    CheckpointError,
    find_last_checkpoint,
    plain_strategy_resume_message,
    verify_checkpoint,
)
from lightning_autoopt.loggers import ResumableCSVLogger
from lightning_autoopt.recipes import RECIPE_PREFIX, list_recipes, recipe_description, recipe_path
from lightning_autoopt.strategies import LocalUpdateStrategy

__all__ = [
    "AutoOptCLI",
    "CLIError",
    "main",
    "resolve_recipe_args",
    "one_line_error",
    "resolve_strategy_args",
    "silence_lightning_noise",
]

PROG = "autoopt"
_DESCRIPTION = (
    "lightning-autoopt: a LightningCLI for any LightningModule/LightningDataModule with this package's callbacks, "
    "strategies, models and data modules available by name."
)
_EPILOG = (
    f"More: `{PROG} recipes` lists the recipes shipped with the package; `{PROG} fit --config recipe:NAME` runs one; "
    f"`{PROG} recipes NAME` prints its YAML. `{PROG} plot RUN_DIR` draws a run's plots. `{PROG} fit --help` shows "
    "every option with its documentation."
)
_CONFIG_FLAGS = ("-c", "--config")
# Lightning logs these through rank_zero_info; there is no switch for them (Lightning issue #21294).
_TIP_PREFIX = "💡 Tip:"
# ckpt_path values Lightning resolves itself (no file to verify before the run)
_SPECIAL_CKPT = ("last", "best", "hpc")
_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class CLIError(SystemExit):
    """An error the ``autoopt`` command reports in one line on stderr (rank 0 only), then exits.

    A :class:`SystemExit`, so it ends the program without a traceback; ``message`` holds the text, ``code`` the exit
    status (1 for a failed check such as a damaged checkpoint, 2 for a usage error such as an unknown name).
    """

    def __init__(self, message: str, code: int = 1) -> None:
        self.message = message
        if getattr(rank_zero_only, "rank", 0) == 0:
            sys.stderr.write(f"{PROG}: error: {message}\n")
        super().__init__(code)


def _fail(message: str, code: int = 1) -> NoReturn:
    raise CLIError(message, code)


_TRACEBACK_ENV = "AUTOOPT_TRACEBACK"


def one_line_error(err: BaseException) -> str:
    r"""The informative part of an error raised while the CLI builds the classes, on one line.

    jsonargparse reports a failed class as "Does not validate against any of the Union subtypes ... Errors: - Expected
    a <class 'str'> - `period` must be an integer >= 1 ..."; this keeps the errors that are not about the other members
    of the union (``Expected a <class 'str'>``), e.g. "`period` must be an integer >= 1 ..., got 0.".

    Example::

        >>> text = "Does not validate\n  Errors:\n    - Expected a <class 'str'>\n    - bad x"
        >>> one_line_error(ValueError(text))
        'bad x'
    """
    text = str(err)
    items: list[list[str]] = []
    for line in text.splitlines():
        bullet = re.match(r"^(\s*)- (.*)$", line)
        if bullet:
            items.append([bullet.group(2).strip()])
        elif items and line.strip() and not line.lstrip().startswith(("Given value", "Subtypes:")):
            items[-1].append(line.strip())
    useful = [" ".join(item) for item in items if not item[0].startswith("Expected a ")]
    if useful:
        return "; ".join(useful)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return first if first != type(err).__name__ else f"{type(err).__name__}: {text}"


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


_STRATEGY_FLAG = "--trainer.strategy"
_STRATEGY_VALUE_FLAGS = (_STRATEGY_FLAG, f"{_STRATEGY_FLAG}.class_path", f"{_STRATEGY_FLAG}.help")
_TEMP_DIRS: list[str] = []


def _remove_temp_dirs() -> None:
    for folder in _TEMP_DIRS:
        shutil.rmtree(folder, ignore_errors=True)


def _strategy_value(flag: str, value: str, with_arguments: bool) -> tuple[str, list[str]]:
    """The new value for ``flag`` and the arguments to insert after it (the registry's ``start_method``)."""
    if value.lstrip().startswith("{"):  # a whole class dict given inline (JSON / YAML flow style)
        import yaml

        resolved = resolve_strategy_config(yaml.safe_load(value), extra_arguments=True)
        return json.dumps(resolved), []
    found = resolve_strategy_value(value, with_arguments=with_arguments or flag != _STRATEGY_FLAG)
    if found is None:
        return value, []
    class_path, defaults = found
    if flag.endswith(".help"):
        return class_path, []
    return class_path, [f"{_STRATEGY_FLAG}.{k}={v}" for k, v in defaults.items()]


def _rewrite_config_file(path: str, with_arguments: bool) -> str:
    """``path``, or a temporary copy (same file name) whose ``trainer.strategy`` names are resolved."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        return path
    changed = False
    sections = [data, *(data[k] for k in _SUBCOMMANDS if isinstance(data.get(k), dict))]
    for section in sections:
        trainer = section.get("trainer")
        if isinstance(trainer, dict) and "strategy" in trainer:
            new = resolve_strategy_config(trainer["strategy"], extra_arguments=with_arguments)
            if new != trainer["strategy"]:
                trainer["strategy"], changed = new, True
    if not changed:
        return path
    if not _TEMP_DIRS:
        atexit.register(_remove_temp_dirs)
    folder = tempfile.mkdtemp(prefix="autoopt_config_")
    _TEMP_DIRS.append(folder)
    target = Path(folder) / Path(path).name  # same name: the run folder is named after it
    target.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(target)


def resolve_strategy_args(args: Sequence[str]) -> list[str]:
    """Resolve registered strategy names (``lsgd``, ``lsgd_spawn``, ...) to class paths so they take arguments.

    Applies to the command line and to ``--config`` files.

    ``--trainer.strategy=lsgd_spawn --trainer.strategy.period=4`` becomes ``--trainer.strategy=<LSGDStrategy's
    path> --trainer.strategy.start_method=spawn --trainer.strategy.period=4``; a YAML ``strategy: lsgd`` or
    ``strategy: {class_path: lsgd, init_args: {...}}`` is resolved in a temporary copy of the file (same name).
    Lightning's own names (``ddp``, ...) are resolved when arguments accompany them. Class paths, short class
    names (``LSGDStrategy``) and ``auto`` are left alone.

    Args:
        args: Command-line arguments (after :func:`resolve_recipe_args`).

    Returns:
        A new list.

    Raises:
        ValueError: For an unknown strategy name (the message suggests close names, this package's included).

    Example::

        >>> resolve_strategy_args(["fit", "--trainer.strategy=lsgd_spawn"])[1:]
        ['--trainer.strategy=lightning_autoopt.strategies.lsgd.LSGDStrategy', '--trainer.strategy.start_method=spawn']
    """
    argv = [str(a) for a in args]
    with_arguments = any(
        a.startswith(f"{_STRATEGY_FLAG}.") and a.split("=", 1)[0] not in _STRATEGY_VALUE_FLAGS for a in argv
    )
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag in _STRATEGY_VALUE_FLAGS and (eq or i + 1 < len(argv)):
            value = inline if eq else argv[i + 1]
            new, extra = _strategy_value(flag, value, with_arguments)
            out.append(f"{flag}={new}")
            out.extend(extra)
            i += 1 if eq else 2
            continue
        if flag in _CONFIG_FLAGS and (eq or i + 1 < len(argv)):
            value = inline if eq else argv[i + 1]
            new = _rewrite_config_file(value, with_arguments) if Path(value).is_file() else value
            out.extend([f"{flag}={new}"] if eq else [flag, new])
            i += 1 if eq else 2
            continue
        out.append(arg)
        i += 1
    return out


class AutoOptCLI(LightningCLI):
    """LightningCLI in subclass mode for any LightningModule/LightningDataModule, with this package imported.

    Adds to :class:`~lightning.pytorch.cli.LightningCLI`:

    * ``--config recipe:NAME`` for the recipes shipped with the package (resolved before jsonargparse parses, so it
      works for every subcommand);
    * **restart-ready runs**: without a ``trainer.logger`` the run logs with
      :class:`~lightning_autoopt.loggers.ResumableCSVLogger` in ``<default_root_dir>/lightning_logs/<config name>/``
      (no ``version_N``), every ``ModelCheckpoint`` with ``save_last`` unset writes ``last.ckpt``, and ``fit``
      without ``--ckpt_path`` resumes from the newest ``last*.ckpt`` in the checkpoint folder when there is one
      (``--auto_resume=false`` starts over; an explicit ``--ckpt_path`` always wins). The log says so, with the
      step. A ``torchrun --max-restarts`` restart therefore continues where the last checkpoint left off, with a
      metrics record that holds every step once;
    * **checkpoints verified first**: every ``ckpt_path`` (given or found) is checked with
      :func:`~lightning_autoopt.checkpoint.verify_checkpoint` before any worker starts; a damaged file ends the
      command with one line naming it. Resuming a local-update checkpoint with another kind of strategy warns once
      with what is dropped;
    * the program name ``autoopt`` in the usage line (also under ``python -m lightning_autoopt``), and quieter
      output (:func:`silence_lightning_noise`).

    Args:
        args: Command-line arguments (``None`` reads ``sys.argv``); handy in tests with ``run=False``.
        run: Whether to run the subcommand (``fit``, ``validate``, ...) after parsing.
        **kwargs: Forwarded to :class:`~lightning.pytorch.cli.LightningCLI`.

    Raises:
        CLIError: (a ``SystemExit``) after printing one line, for a damaged checkpoint.

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
        self._warned_plain_resume = False
        super().__init__(
            model_class=None,
            datamodule_class=None,
            args=None if args is None else list(args),
            run=run,
            parser_kwargs=parser_kwargs,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--auto_resume`` (used by ``fit``)."""
        parser.add_argument(
            "--auto_resume",
            type=bool,
            default=True,
            help=(
                "fit: without --ckpt_path, resume from the newest last*.ckpt in the checkpoint folder when one exists "
                "(restart-ready runs); false starts over."
            ),
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Resolve ``recipe:NAME`` configs, parse as LightningCLI does, then verify a given ``ckpt_path``.

        ``args=None`` reads ``sys.argv``. The checkpoint is verified before LightningCLI reads its hyperparameters.
        """
        if isinstance(args, dict) or (args is not None and not isinstance(args, (list, tuple))):
            super().parse_arguments(parser, args)  # a dict / Namespace: nothing to resolve
        else:
            from_argv = args is None
            argv: list[str] = sys.argv[1:] if args is None else [str(a) for a in args]
            try:
                resolved = resolve_recipe_args(argv)
            except ValueError as err:
                parser.error(str(err))
            try:
                resolved = resolve_strategy_args(resolved)
            except ValueError as err:
                _fail(str(err), code=2)
            if from_argv:
                self.config = parser.parse_args(resolved)
            else:
                super().parse_arguments(parser, resolved)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._verify(self.config[subcommand].get("ckpt_path"))

    @staticmethod
    def _verify(ckpt_path: Any) -> Any:
        """Verify a ``ckpt_path`` that names a file (not ``last``/``best``/...); exit with one line if damaged."""
        if ckpt_path is None or str(ckpt_path) in _SPECIAL_CKPT or str(ckpt_path).startswith(("registry", "http")):
            return None
        try:
            return verify_checkpoint(str(ckpt_path))
        except CheckpointError as err:
            _fail(str(err))

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does; a bad value or impossible configuration ends with one line.

        ``ValueError``/``TypeError``/Lightning's ``MisconfigurationException`` raised while the model, data module,
        strategy, callbacks or Trainer are built exit with status 2 and :func:`one_line_error`'s text instead of a
        traceback; set ``AUTOOPT_TRACEBACK=1`` to see the traceback.
        """
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as err:
            if os.environ.get(_TRACEBACK_ENV, "") not in ("", "0"):
                raise
            _fail(f"{one_line_error(err)} ({_TRACEBACK_ENV}=1 shows the traceback)", code=2)

    def _config_name(self) -> str:
        """The run's default name: the stem of the last ``--config`` file, else ``"autoopt"``."""
        configs: list[Any] = []
        for section in (self.config, self.config.get(str(self.subcommand)) if self.subcommand else None):
            if section is not None and section.get("config"):
                configs = list(section.get("config"))
        for cfg in reversed(configs):
            path = getattr(cfg, "absolute", None) or getattr(cfg, "relative", None) or str(cfg)
            stem = Path(str(path)).stem
            if stem:
                return stem
        return "autoopt"

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer with a restart-ready default logger and ``save_last`` checkpoints (see the class)."""
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        if trainer_config.get("logger") is None and "logger" not in kwargs:
            root = trainer_config.get("default_root_dir") or "."
            kwargs["logger"] = ResumableCSVLogger(Path(root) / "lightning_logs", name=self._config_name())
        trainer = super().instantiate_trainer(**kwargs)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last is None:
                callback.save_last = True  # a last.ckpt to resume from; `save_last: false` is respected
        return trainer

    def before_fit(self) -> None:
        """Resolve auto-resume (``ckpt_path`` from the checkpoint folder) and verify the checkpoint to be loaded."""
        config = self.config_init["fit"]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None and config.get("auto_resume", True):
            found = find_last_checkpoint(self.trainer)
            if found is not None:
                info = self._verify(found)
                config["ckpt_path"] = found
                # Lightning warns that the checkpoint folder is not empty: expected when resuming, so not shown
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
                where = f"epoch {info.epoch}, global step {info.global_step}" if info.loaded else "step unknown"
                rank_zero_info(
                    f"Resuming from {found} ({where}): auto-resume found this run's last checkpoint. Pass "
                    "--auto_resume=false to start over, or --ckpt_path to choose another checkpoint."
                )
                ckpt_path = found
        self._warn_plain_strategy(ckpt_path)

    def _warn_plain_strategy(self, ckpt_path: Any) -> None:
        if ckpt_path is None or self._warned_plain_resume or isinstance(self.trainer.strategy, LocalUpdateStrategy):
            return
        info = self._verify(ckpt_path)
        message = None if info is None else plain_strategy_resume_message(info, type(self.trainer.strategy).__name__)
        if message is not None:
            self._warned_plain_resume = True
            rank_zero_warn(message)


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


def _plot_command(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} plot",
        description=(
            "Draw a run's plots: the training curves from RUN_DIR/metrics.csv and one PNG per method signal "
            "(AutoDrop, SharpnessProbe, TaskShiftDetector, LPFSGD, DCO, TAME, local-update strategies), read from "
            "the histories kept in the run's last checkpoint, so any logger works and interrupted runs too."
        ),
        epilog=f"Example: {PROG} plot lightning_logs/autodrop_mnist1d   (the folder with metrics.csv and checkpoints/)",
    )
    parser.add_argument(
        "run_dir", type=Path, help="the run folder (metrics.csv, checkpoints/last.ckpt), or a .ckpt file"
    )
    parser.add_argument("--out", type=Path, default=None, help="where the PNGs go (default: RUN_DIR/plots)")
    ns = parser.parse_args(list(argv))
    from lightning_autoopt.plots import plot_run

    try:
        result = plot_run(ns.run_dir, ns.out)
    except (FileNotFoundError, CheckpointError, ImportError) as err:
        _fail(str(err))
    lines = [f"Plots of {result.checkpoint}:"] + [f"  {path}" for path in result.paths]
    lines += [f"note: {note}" for note in result.notes]
    sys.stdout.write("\n".join(lines) + "\n")  # a CLI listing: stdout is its output, not a log message


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``autoopt`` console script (``args=None`` reads ``sys.argv``).

    Raises:
        SystemExit: On a usage error (status 2) or a :class:`CLIError` (status 1, one line on stderr).
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "recipes":
        _recipes_command(argv[1:])
        return
    if argv and argv[0] == "plot":
        _plot_command(argv[1:])
        return
    AutoOptCLI(args=args)


if __name__ == "__main__":  # pragma: no cover
    main()
