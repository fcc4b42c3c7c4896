"""Local-update distributed strategies; importing this package registers their names with Lightning.

Registered (each also as ``<name>_spawn`` and ``<name>_fork``): ``lsgd``, ``easgd``, ``localsgd``, ``mgrawa``,
``lgrawa``, ``dpsgd``, ``aldsgd``, ``diloco``. Each method module registers its class right after defining it; a new
strategy subclasses :class:`LocalUpdateStrategy` and calls :func:`register_strategy` the same way (see
``docs/methods/local_update.md``).
"""

from lightning_autoopt.strategies import _comm as _comm  # the collectives, for subclasses (see the guide)
from lightning_autoopt.strategies._checks import check_group_size, check_period, check_strength
from lightning_autoopt.strategies._policy import CHECKPOINT_KEY, PolicyWeightsMixin
from lightning_autoopt.strategies._registry import register_strategy, registered_strategies
from lightning_autoopt.strategies.aldsgd import ALDSGDStrategy
from lightning_autoopt.strategies.diloco import DiLoCoStrategy
from lightning_autoopt.strategies.dpsgd import DPSGDStrategy
from lightning_autoopt.strategies.easgd import EASGDStrategy
from lightning_autoopt.strategies.grawa import GRAWAStrategy, LGRAWAStrategy
from lightning_autoopt.strategies.local_sgd import LocalSGDStrategy
from lightning_autoopt.strategies.local_update import LocalUpdateStrategy, NonFiniteReplicasError
from lightning_autoopt.strategies.lsgd import LSGDStrategy

__all__ = [
    "ALDSGDStrategy",
    "CHECKPOINT_KEY",
    "DiLoCoStrategy",
    "DPSGDStrategy",
    "EASGDStrategy",
    "GRAWAStrategy",
    "LGRAWAStrategy",
    "LSGDStrategy",
    "LocalSGDStrategy",
    "LocalUpdateStrategy",
    "NonFiniteReplicasError",
    "PolicyWeightsMixin",
    "check_group_size",
    "check_period",
    "check_strength",
    "register_strategy",
    "registered_strategies",
]
