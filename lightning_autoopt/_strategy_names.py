"""Strategy names as users type them: registered names with arguments, short class names, and did-you-mean.

Lightning resolves ``Trainer(strategy="lsgd")`` through its ``StrategyRegistry``, but a Lightning CLI cannot give a
registered name arguments (``--trainer.strategy=lsgd --trainer.strategy.period=4`` fails with "Expected a dot import
path string: lsgd"): jsonargparse only knows classes. :func:`resolve_strategy_value` turns a registered name into its
class path plus the registry's arguments (``lsgd_spawn`` -> ``LSGDStrategy`` with ``start_method="spawn"``), which
the ``autoopt`` CLI does for the command line and for YAML files before jsonargparse parses.

An unknown name gets a suggestion that includes this package's names (:func:`unknown_strategy_message`), in the CLI
and, once :func:`install_did_you_mean` ran (importing :mod:`lightning_autoopt` does it), in the ``ValueError`` of a
plain ``Trainer(strategy="lsdg")``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.strategies import Strategy, StrategyRegistry

__all__ = ["install_did_you_mean", "resolve_strategy_value", "strategy_names", "unknown_strategy_message"]

_AUTO = "auto"
_NULLS = ("null", "none", "~", "")  # YAML / jsonargparse spellings of None: left to the parser
_LIGHTNING_MESSAGE = "You selected an invalid strategy name"


def _ours() -> dict[str, type]:
    from lightning_autoopt.strategies import registered_strategies

    return dict(registered_strategies())


def strategy_names() -> list[str]:
    """Every strategy name a ``Trainer`` accepts: ``"auto"`` and the registry's names (Lightning's and ours)."""
    return [_AUTO, *StrategyRegistry.available_strategies()]


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _short_class_names() -> set[str]:
    """Names of the Strategy subclasses imported so far (jsonargparse resolves these short names itself)."""
    seen: set[str] = set()
    stack = [Strategy]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub.__name__ not in seen:
                seen.add(sub.__name__)
                stack.append(sub)
    return seen


def unknown_strategy_message(name: str, lead: str | None = None) -> str:
    """One line for an unknown strategy name: close matches first (this package's names included), then all.

    Args:
        name: The unknown name.
        lead: The first sentence (default: ``Unknown strategy 'NAME'.``).

    Example::

        >>> "Did you mean 'lsgd'" in unknown_strategy_message("lsdg")
        True
    """
    names = strategy_names()
    ours = sorted(_ours())
    close = difflib.get_close_matches(name, names + sorted(_short_class_names()), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    lead = f"Unknown strategy {name!r}." if lead is None else lead
    return (
        f"{lead}{hint} lightning-autoopt strategies: {', '.join(ours)} (each also as "
        f"<name>_spawn and <name>_fork); Lightning's: {', '.join(n for n in names if n not in _our_variants())}. "
        "A class path (my_pkg.MyStrategy) or a class name (LSGDStrategy) works too."
    )


def _our_variants() -> set[str]:
    return {f"{n}{suffix}" for n in _ours() for suffix in ("", "_spawn", "_fork")}


def resolve_strategy_value(value: Any, with_arguments: bool = False) -> tuple[str, dict[str, Any]] | None:
    """The class path and registry arguments for a registered strategy name, or ``None`` to leave ``value`` alone.

    This package's names always resolve (a class with arguments is what a YAML file or ``--trainer.strategy.ARG``
    needs); Lightning's own names resolve only with ``with_arguments=True`` (else Lightning's string handling is
    kept). A dotted path, a short class name, ``"auto"`` and non-strings give ``None``.

    Args:
        value: The ``trainer.strategy`` value (or a ``class_path``).
        with_arguments: Whether arguments accompany it (then any registered name is resolved).

    Returns:
        ``(class_path, init_args)``, e.g. ``("lightning_autoopt.strategies.lsgd.LSGDStrategy",
        {"start_method": "spawn"})`` for ``"lsgd_spawn"``.

    Raises:
        ValueError: For a bare word that is no strategy name and no imported Strategy class name
            (:func:`unknown_strategy_message`).
    """
    if not isinstance(value, str) or "." in value or value == _AUTO or value.strip().lower() in _NULLS:
        return None
    if value in StrategyRegistry:
        entry = StrategyRegistry[value]
        cls = entry.get("strategy")
        ours = value in _our_variants()
        if not isinstance(cls, type) or not (ours or with_arguments):
            return None
        return _class_path(cls), dict(entry.get("init_params") or {})
    if value in _short_class_names():
        return None
    raise ValueError(unknown_strategy_message(value))


def resolve_strategy_config(strategy: Any, extra_arguments: bool = False) -> Any:
    """``trainer.strategy`` from a YAML file with registered names resolved (a new object; ``strategy`` is kept).

    Handles ``strategy: lsgd`` (also when ``extra_arguments`` says the command line adds ``--trainer.strategy.*``)
    and ``strategy: {class_path: lsgd, init_args: {...}}``; the registry's arguments (``start_method`` of a
    ``_spawn`` name) are defaults under the given ``init_args``.

    Raises:
        ValueError: For an unknown name.
    """
    if isinstance(strategy, str):
        resolved = resolve_strategy_value(strategy, with_arguments=extra_arguments)
        if resolved is None:
            return strategy
        class_path, defaults = resolved
        return {"class_path": class_path, "init_args": defaults} if defaults else {"class_path": class_path}
    if isinstance(strategy, Mapping) and "class_path" in strategy:
        init_args = dict(strategy.get("init_args") or {})
        resolved = resolve_strategy_value(strategy["class_path"], with_arguments=True)
        if resolved is None:
            return strategy
        class_path, defaults = resolved
        out = {**strategy, "class_path": class_path}
        merged = {**defaults, **init_args}
        if merged:
            out["init_args"] = merged
        return out
    return strategy


def install_did_you_mean() -> None:
    """Make ``Trainer(strategy="<typo>")`` suggest close names, this package's included. Idempotent.

    Wraps the check in Lightning's accelerator connector that raises "You selected an invalid strategy name": the
    ``ValueError`` keeps Lightning's text and gains :func:`unknown_strategy_message`. Nothing else changes; if a
    Lightning version lacks the method, nothing is installed.
    """
    try:
        from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector
    except ImportError:  # pragma: no cover - layout of another Lightning version
        return
    original = getattr(_AcceleratorConnector, "_check_config_and_set_final_flags", None)
    if original is None or getattr(original, "_autoopt_did_you_mean", False):
        return

    @functools.wraps(original)
    def checked(self: Any, strategy: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, strategy, *args, **kwargs)
        except ValueError as err:
            if isinstance(strategy, str) and str(err).startswith(_LIGHTNING_MESSAGE):
                lead = f"{_LIGHTNING_MESSAGE}: `strategy={strategy!r}`."
                raise ValueError(unknown_strategy_message(strategy, lead=lead)) from None
            raise

    checked._autoopt_did_you_mean = True  # type: ignore[attr-defined]
    _AcceleratorConnector._check_config_and_set_final_flags = checked  # type: ignore[method-assign]
