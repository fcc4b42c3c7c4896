"""lightning-autoopt: published optimization methods as drop-in PyTorch Lightning parts.

Importing the package registers the strategy names (``"lsgd"``, ``"easgd"``, ...) with Lightning's
``StrategyRegistry`` so ``Trainer(strategy="lsgd")`` works afterwards, and makes an unknown name
(``Trainer(strategy="lsdg")``) suggest close names, this package's included.

Only ``lightning.pytorch`` (the unified ``lightning`` package) is supported, not the standalone
``pytorch_lightning`` distribution: the two have separate class hierarchies and registries.
"""

from lightning_autoopt import callbacks, continual, data, landscape, models, recipes, strategies
from lightning_autoopt.__about__ import __version__
from lightning_autoopt._strategy_names import install_did_you_mean

install_did_you_mean()

__all__ = ["__version__", "callbacks", "continual", "data", "landscape", "models", "recipes", "strategies"]
