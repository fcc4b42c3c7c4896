"""Argument checks shared by the local-update strategies: each raises a ``ValueError`` naming the argument and the fix.

Strategies validate eagerly in ``__init__`` (a bad YAML value fails before any process starts). ``bool`` is rejected
wherever a number is expected (``True`` is an ``int`` in Python, and ``period: true`` in YAML is a mistake).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, overload


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@overload
def check_period(name: str, value: int, allow_none: Literal[False] = False) -> int: ...


@overload
def check_period(name: str, value: int | None, allow_none: bool) -> int | None: ...


def check_period(name: str, value: int | None, allow_none: bool = False) -> int | None:
    """Validate a communication period (in optimizer steps) or another count that must be >= 1.

    Raises:
        ValueError: If the period is not an integer >= 1 (or ``None`` when ``allow_none``).
    """
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"`{name}` must be an integer >= 1 (optimizer steps between rounds), got {value!r}.")
    return value


def check_strength(name: str, value: float) -> float:
    """Validate a pull strength (or a mixing weight).

    Raises:
        ValueError: If the strength is not a number in [0, 1].
    """
    if not _is_number(value) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"`{name}` must be a number in [0, 1] (0 = no pull, 1 = copy the target), got {value!r}.")
    return float(value)


def check_group_size(value: int | None) -> int | None:
    """Validate ``group_size`` (workers per group; ``None`` = one group per node).

    Raises:
        ValueError: If it is neither ``None`` nor an integer >= 1.
    """
    if value is not None and (not _is_int(value) or value < 1):
        raise ValueError(
            f"`group_size` must be an integer >= 1 (workers per group) or None (one per node), got {value!r}."
        )
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any], meaning: str = "") -> Any:
    """Validate that ``value`` is one of ``choices`` (``meaning`` explains them in the message).

    Raises:
        ValueError: If it is not.
    """
    if value not in choices:
        hint = f" ({meaning})" if meaning else ""
        raise ValueError(f"`{name}` must be one of {tuple(choices)}{hint}, got {value!r}.")
    return value


def check_count(name: str, value: int, minimum: int = 0, meaning: str = "") -> int:
    """Validate an integer ``>= minimum`` (e.g. ``consensus_every``, where 0 disables).

    Raises:
        ValueError: If it is not.
    """
    if not _is_int(value) or value < minimum:
        hint = f" ({meaning})" if meaning else ""
        raise ValueError(f"`{name}` must be an integer >= {minimum}{hint}, got {value!r}.")
    return value


def check_number(
    name: str, value: float, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> float:
    """Validate a number in an interval (``low_open``/``high_open`` exclude the ends; ``inf`` is always excluded).

    Raises:
        ValueError: If it is not a number in the interval.
    """
    ok = _is_number(value) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
        raise ValueError(f"`{name}` must be a finite number in {left}{low}, {high}{right}, got {value!r}.")
    return float(value)


_DDP_STRATEGY_ONLY = ("ddp_comm_state", "ddp_comm_hook", "ddp_comm_wrapper", "model_averaging_period")


def _ddp_option_names() -> set[str]:
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    names = set(inspect.signature(DistributedDataParallel.__init__).parameters) - {"self", "module"}
    return names | set(_DDP_STRATEGY_ONLY)


def check_no_ddp_options(owner: str, options: dict[str, Any]) -> None:
    """Refuse keyword arguments a local-update strategy would silently ignore.

    ``DDPStrategy`` forwards unknown keywords to ``DistributedDataParallel``; a local-update strategy never wraps the
    model in DDP, so ``find_unused_parameters``, ``static_graph``, ``bucket_cap_mb``, ``ddp_comm_hook``, ... would have
    no effect.

    Args:
        owner: The strategy's class name, for the message.
        options: The extra keyword arguments it received.

    Raises:
        ValueError: Naming every such option (DDP options and unknown names are told apart).
    """
    if not options:
        return
    ddp = _ddp_option_names()
    known = sorted(k for k in options if k in ddp)
    unknown = sorted(k for k in options if k not in ddp)
    parts = []
    if known:
        listed = ", ".join(f"`{k}`" for k in known)
        parts.append(
            f"{listed} configure{'s' if len(known) == 1 else ''} DDP's gradient all-reduce, which {owner} does not use "
            "(the model is not wrapped in DistributedDataParallel): remove "
            f"{'it' if len(known) == 1 else 'them'}"
        )
    if unknown:
        listed = ", ".join(f"`{k}`" for k in unknown)
        parts.append(f"{owner} has no argument {listed}: check the spelling against its documented arguments")
    raise ValueError("; ".join(parts) + ".")


def check_overlap(overlap: Any, local_period: Any = None) -> bool:
    """Validate ``overlap`` (a bool; overlapped rounds are world rounds only, so no ``local_period``).

    Raises:
        ValueError: If ``overlap`` is not a bool, or is ``True`` together with a ``local_period``.
    """
    if not isinstance(overlap, bool):
        raise ValueError(f"`overlap` must be True or False, got {overlap!r}.")
    if overlap and local_period is not None:
        raise ValueError(
            "`overlap=True` overlaps the global rounds only; drop `local_period` (group rounds stay synchronous "
            "and would reorder with the average in flight)."
        )
    return overlap
