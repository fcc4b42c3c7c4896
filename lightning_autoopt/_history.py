"""A bounded, resumable record of a callback's signal, for plots that work with any logger (or none).

Callbacks record one row per decision (a step, a probe, a batch of a stream) in a :class:`BoundedHistory` and keep
it in their ``state_dict``, so :mod:`lightning_autoopt.plots` can draw the signal from the callback, from its
``history`` or from a checkpoint, and the record survives a resume. A long run must not grow the checkpoint without
bound: when the record holds ``2 * capacity`` rows, every second row is dropped and from then on only every second
row offered is kept (the resolution halves, the whole run stays covered). Which rows are kept depends only on how
many rows were offered, so a resumed run keeps exactly the rows an uninterrupted run keeps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["HISTORY_CAPACITY", "BoundedHistory"]

HISTORY_CAPACITY = 1024
"""Rows a history keeps at least (at most twice that): ~16 kB per float column in a checkpoint."""


def _plain(value: Any) -> Any:
    """A float for the record (``None`` becomes NaN, e.g. an EMA before the first loss); a sequence, a list of them."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float("nan") if value is None else float(value)


class BoundedHistory:
    """Equal-length float columns, one row per :meth:`append`, thinned by halving the resolution when full.

    Rows are kept when ``offered % every == 0``; ``every`` doubles (and every second kept row is dropped) each time
    the record reaches ``2 * capacity`` rows. So the record holds between ``capacity`` and ``2 * capacity`` rows
    (once that many were offered), evenly spread over the whole run, with the first row always kept.

    Args:
        keys: Column names.
        capacity: Rows kept at least once that many were offered (the record never exceeds ``2 * capacity``).

    Raises:
        ValueError: If ``keys`` is empty or ``capacity < 1``.

    Example::

        history = BoundedHistory(("step", "loss"))
        history.append(step=1, loss=0.7)
        history.as_dict()  # {"step": [1.0], "loss": [0.7], "every": 1, "offered": 1}
    """

    def __init__(self, keys: Sequence[str], capacity: int = HISTORY_CAPACITY) -> None:
        if not keys:
            raise ValueError("`keys` must name at least one column.")
        if int(capacity) < 1:
            raise ValueError(f"`capacity` must be >= 1, got {capacity!r}.")
        self.keys = tuple(keys)
        self.capacity = int(capacity)
        self.columns: dict[str, list[Any]] = {key: [] for key in self.keys}
        self.every = 1
        self.offered = 0

    def __len__(self) -> int:
        return len(self.columns[self.keys[0]])

    def append(self, **row: Any) -> bool:
        """Offer one row (every column, as numbers, ``None`` for NaN, or a list of them); returns whether it was kept.

        Raises:
            KeyError: If ``row`` does not have exactly the columns of the record.
        """
        if set(row) != set(self.keys):
            raise KeyError(f"a row needs exactly the columns {self.keys}, got {sorted(row)}.")
        kept = self.offered % self.every == 0
        self.offered += 1
        if kept:
            for key in self.keys:
                self.columns[key].append(_plain(row[key]))
            if len(self) >= 2 * self.capacity:
                for key in self.keys:
                    self.columns[key] = self.columns[key][::2]
                self.every *= 2
        return kept

    def last(self, key: str) -> Any:
        """The newest kept value of ``key`` (NaN when empty)."""
        values = self.columns[key]
        return values[-1] if values else math.nan

    def as_dict(self) -> dict[str, Any]:
        """The columns (copies), plus ``every`` (rows offered per row kept) and ``offered`` (rows offered)."""
        out: dict[str, Any] = {key: list(values) for key, values in self.columns.items()}
        out["every"] = self.every
        out["offered"] = self.offered
        return out

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`as_dict` returned.

        A column missing from ``state`` (a checkpoint written before it was recorded) is filled with NaN; an empty
        ``state`` gives an empty record.

        Raises:
            ValueError: If the restored columns have different lengths.
        """
        present = {key: [_plain(v) for v in state[key]] for key in self.keys if key in state}
        lengths = {len(v) for v in present.values()}
        if len(lengths) > 1:
            raise ValueError(f"history columns have different lengths {sorted(lengths)}; the state is damaged.")
        rows = lengths.pop() if lengths else 0
        self.columns = {key: present.get(key, [math.nan] * rows) for key in self.keys}
        self.every = int(state.get("every", 1))
        self.offered = int(state.get("offered", len(self)))
