"""A fixed-size reservoir buffer, class-balanced (one reservoir per class) or label-free (one reservoir)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ReservoirBuffer:
    """Keeps a uniform random subset of a stream of samples, with an integer label per sample (e.g. the expert).

    With ``num_strata > 1`` every stratum (e.g. the true class, as in TAME's code) gets its own reservoir of
    ``capacity // num_strata`` slots, so the buffer stays class-balanced; with ``num_strata=1`` it is one plain
    reservoir over the whole stream (no label information used). Reservoir sampling keeps each of the ``n`` samples
    seen in a stratum with probability ``quota / n`` -- the same distribution as TAME's random-priority heaps.
    Insertion is vectorised per batch; random draws come from a private NumPy generator (global RNGs untouched).

    Args:
        capacity: Total number of slots.
        num_strata: Number of reservoirs (``num_classes`` for class-balanced, 1 for label-free).
        seed: Seed of the private generator.

    Raises:
        ValueError: If ``capacity < num_strata`` or an argument is not positive.
    """

    def __init__(self, capacity: int, num_strata: int = 1, seed: int = 0) -> None:
        if num_strata < 1:
            raise ValueError(f"`num_strata` must be >= 1, got {num_strata}.")
        if capacity < num_strata:
            raise ValueError(f"`capacity` must be >= num_strata={num_strata} (one slot per stratum), got {capacity}.")
        self.capacity, self.num_strata = int(capacity), int(num_strata)
        self.quota = self.capacity // self.num_strata
        self.rng = np.random.Generator(np.random.PCG64(int(seed)))
        self.seen = np.zeros(self.num_strata, dtype=np.int64)
        self.x: torch.Tensor | None = None
        self.y = torch.zeros(self.num_strata * self.quota, dtype=torch.int64)
        self.label = torch.zeros_like(self.y)
        self.filled = torch.zeros(self.num_strata * self.quota, dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.filled.sum())

    def add(self, x: torch.Tensor, y: torch.Tensor, label: torch.Tensor | int, strata: torch.Tensor | None) -> None:
        """Offer a batch: samples ``x``, their class ``y``, their ``label`` and stratum (``None`` = stratum 0)."""
        n = len(x)
        if n == 0:
            return
        # The bookkeeping runs in NumPy (microseconds per call) so a training step pays little for the buffer.
        s = np.zeros(n, dtype=np.int64) if strata is None else strata.detach().cpu().numpy().astype(np.int64)
        if s.min() < 0 or s.max() >= self.num_strata:
            raise ValueError(f"strata must lie in [0, {self.num_strata}), got values in [{s.min()}, {s.max()}].")
        order = np.argsort(s, kind="stable")
        sorted_s = s[order]
        earlier = np.empty(n, dtype=np.int64)  # same-stratum samples before this one in the batch
        earlier[order] = np.arange(n) - np.searchsorted(sorted_s, sorted_s, side="left")
        position = self.seen[s] + earlier  # 0-based index of the sample in its stratum's stream
        self.seen += np.bincount(s, minlength=self.num_strata)
        candidate = np.floor(self.rng.random(n) * (position + 1)).astype(np.int64)
        slot = np.where(position < self.quota, position, candidate)
        keep = np.nonzero(slot < self.quota)[0]
        if len(keep) == 0:
            return
        global_slot = s[keep] * self.quota + slot[keep]
        # Several samples of one batch may land on the same slot: the last one wins, as in sequential insertion.
        unique, first_in_reversed = np.unique(global_slot[::-1], return_index=True)
        last = keep[::-1][first_in_reversed]
        if self.x is None:
            self.x = torch.zeros((len(self.y), *x.shape[1:]), dtype=x.dtype)
        # Writes go through NumPy views of the (CPU) storage tensors.
        self.x.numpy()[unique] = x.detach().cpu().numpy()[last]
        self.y.numpy()[unique] = y.detach().cpu().numpy()[last]
        self.label.numpy()[unique] = label if isinstance(label, int) else label.detach().cpu().numpy()[last]
        self.filled.numpy()[unique] = True

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stored ``(x, y, label)``."""
        if self.x is None:
            raise RuntimeError("The buffer is empty.")
        idx = torch.nonzero(self.filled).flatten()
        return self.x[idx], self.y[idx], self.label[idx]

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen.tolist(),
            "x": None if self.x is None else self.x.clone(),
            "y": self.y.clone(),
            "label": self.label.clone(),
            "filled": self.filled.clone(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = np.asarray(state["seen"], dtype=np.int64)
        self.x = None if state["x"] is None else state["x"].clone()
        self.y, self.label, self.filled = state["y"].clone(), state["label"].clone(), state["filled"].clone()
        self.rng.bit_generator.state = state["rng"]
