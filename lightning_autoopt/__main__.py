"""``python -m lightning_autoopt ...`` is the ``autoopt`` command, e.g. ``fit --config recipe:autodrop_mnist1d``."""

from lightning_autoopt.cli import main

if __name__ == "__main__":
    main()
