"""Local-update distributed strategies; importing this package registers their names with Lightning.

Registered (each also as ``<name>_spawn`` and ``<name>_fork``): ``lsgd``, ``easgd``, ``localsgd``.
New strategies subclass :class:`LocalUpdateStrategy` and call :func:`register_strategy` here.
"""

from lightning_autoopt.strategies.aldsgd import ALDSGDStrategy
from lightning_autoopt.strategies.diloco import DiLoCoStrategy
from lightning_autoopt.strategies.dpsgd import DPSGDStrategy
from lightning_autoopt.strategies.easgd import EASGDStrategy
from lightning_autoopt.strategies.grawa import GRAWAStrategy, LGRAWAStrategy
from lightning_autoopt.strategies.local_sgd import LocalSGDStrategy
from lightning_autoopt.strategies.local_update import (
    CHECKPOINT_KEY,
    LocalUpdateStrategy,
    check_period,
    check_strength,
    register_strategy,
    registered_strategies,
)
from lightning_autoopt.strategies.lsgd import LSGDStrategy

for _cls in (
    LSGDStrategy,
    EASGDStrategy,
    LocalSGDStrategy,
    GRAWAStrategy,
    LGRAWAStrategy,
    DPSGDStrategy,
    ALDSGDStrategy,
    DiLoCoStrategy,
):
    register_strategy(_cls)

__all__ = [
    "ALDSGDStrategy",
    "DiLoCoStrategy",
    "DPSGDStrategy",
    "GRAWAStrategy",
    "LGRAWAStrategy",
    "CHECKPOINT_KEY",
    "EASGDStrategy",
    "LSGDStrategy",
    "LocalSGDStrategy",
    "LocalUpdateStrategy",
    "check_period",
    "check_strength",
    "register_strategy",
    "registered_strategies",
]
