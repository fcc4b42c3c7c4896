"""``python -m lightning_autoopt fit --config recipes/<recipe>.yaml``."""

from lightning_autoopt.cli import main

if __name__ == "__main__":
    main()
