"""The one way a local-update strategy gets its names: :func:`register_strategy`, called right after the class.

Lightning only walks its own strategy classes for ``register_strategies`` classmethods, so this package's classes
(and users' subclasses) register explicitly: each method module ends with ``register_strategy(TheClass)``, exactly as
the developer guide's example does. Importing :mod:`lightning_autoopt` imports every method module, so the names are
known before any ``Trainer`` is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.strategies import StrategyRegistry

if TYPE_CHECKING:
    from lightning_autoopt.strategies.local_update import LocalUpdateStrategy

_START_METHODS = (("", "popen"), ("_spawn", "spawn"), ("_fork", "fork"))
_REGISTERED: dict[str, type[LocalUpdateStrategy]] = {}


def register_strategy(cls: type[LocalUpdateStrategy], registry: Any = None) -> list[str]:
    """Register ``cls`` under ``cls.strategy_name`` (popen) plus ``_spawn`` and ``_fork`` variants, idempotently.

    Re-registering (a re-import, a reloaded module) overrides the previous entry instead of raising.

    Args:
        cls: A :class:`~lightning_autoopt.strategies.LocalUpdateStrategy` subclass with a ``strategy_name``.
        registry: The registry to add to (default: Lightning's ``StrategyRegistry``).

    Returns:
        The registered names.

    Raises:
        ValueError: If the class has no lower-case ``strategy_name``.

    Example::

        register_strategy(MyAveraging)  # "myavg", "myavg_spawn", "myavg_fork"
    """
    name = getattr(cls, "strategy_name", "")
    if not name or name != name.lower():
        raise ValueError(f"{cls.__name__}.strategy_name must be a non-empty lower-case string, got {name!r}.")
    registry = StrategyRegistry if registry is None else registry
    names = []
    for suffix, start_method in _START_METHODS:
        registry.register(
            name + suffix,
            cls,
            description=f"{cls.__name__} with start_method={start_method!r} (lightning-autoopt)",
            override=True,
            start_method=start_method,
        )
        names.append(name + suffix)
    _REGISTERED[name] = cls
    return names


def registered_strategies() -> dict[str, type[LocalUpdateStrategy]]:
    """The local-update strategies registered so far, by base name (test batteries iterate over this)."""
    return dict(_REGISTERED)
