"""The ``autoopt`` console script: a :class:`~lightning.pytorch.cli.LightningCLI` that knows this package.

Importing :mod:`lightning_autoopt` before the CLI parses anything registers the strategy names, so a YAML file
may say ``trainer.strategy: lsgd`` as well as give a ``class_path`` of this package.

Example::

    autoopt fit --config recipes/autodrop_mnist1d.yaml
    python -m lightning_autoopt fit --config recipes/autodrop_mnist1d.yaml --trainer.max_epochs=3
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningCLI

import lightning_autoopt  # noqa: F401  (registers strategy names before the Trainer is built)


class AutoOptCLI(LightningCLI):
    """LightningCLI in subclass mode for any LightningModule/LightningDataModule, with this package imported.

    Args:
        args: Command-line arguments (``None`` reads ``sys.argv``); handy in tests with ``run=False``.
        run: Whether to run the subcommand (``fit``, ``validate``, ...) after parsing.
        **kwargs: Forwarded to :class:`~lightning.pytorch.cli.LightningCLI`.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        argv = None if args is None else list(args)  # LightningCLI wants a list (or a dict / Namespace)
        super().__init__(model_class=None, datamodule_class=None, args=argv, run=run, **kwargs)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``autoopt`` console script."""
    AutoOptCLI(args=args)


if __name__ == "__main__":  # pragma: no cover
    main()
