"""``python -m lightning_autoopt ...`` is the ``autoopt`` command, e.g. ``fit --config recipe:autodrop_mnist1d``."""

import sys

from lightning_autoopt.cli import PROG, main

if __name__ == "__main__":
    # Help texts name the command rather than ``__main__.py``, also those of parsers jsonargparse builds on the fly
    # (``--trainer.callbacks.help CLASS``). Safe for the DDP re-launch: under ``-m`` Lightning re-runs the module by
    # name, not by sys.argv[0].
    sys.argv[0] = PROG
    main()
