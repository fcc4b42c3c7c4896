"""A fixed-size reservoir buffer, class-balanced (one reservoir per class) or label-free (one reservoir)."""

from __future__ import annotations

from typing import Any

import torch


class ReservoirBuffer:
    """Keeps a uniform random subset of a stream of samples, with an integer label per sample (e.g. the expert).

    With ``num_strata > 1`` every stratum (e.g. the true class, as in TAME's code) gets its own reservoir of
    ``capacity // num_strata`` slots, so the buffer stays class-balanced; with ``num_strata=1`` it is one plain
    reservoir over the whole stream (no label information used). Reservoir sampling keeps each of the ``n`` samples
    seen in a stratum with probability ``quota / n`` -- the same distribution as TAME's random-priority heaps.
    Insertion is vectorised per batch; random draws come from a private generator (the global RNG is untouched).

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
        self.generator = torch.Generator().manual_seed(int(seed))
        self.seen = torch.zeros(self.num_strata, dtype=torch.int64)
        self.x: torch.Tensor | None = None
        self.y = torch.zeros(self.num_strata * self.quota, dtype=torch.int64)
        self.label = torch.zeros_like(self.y)
        self.filled = torch.zeros(self.num_strata * self.quota, dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.filled.sum())

    def add(self, x: torch.Tensor, y: torch.Tensor, label: torch.Tensor | int, strata: torch.Tensor | None) -> None:
        """Offer a batch: samples ``x``, their class ``y``, their ``label`` and stratum (``None`` = stratum 0)."""
        x, y = x.detach().cpu(), y.detach().cpu().long()
        n = len(x)
        if n == 0:
            return
        label_t = torch.full((n,), int(label)) if isinstance(label, int) else label.detach().cpu().long()
        s = torch.zeros(n, dtype=torch.int64) if strata is None else strata.detach().cpu().long()
        if int(s.min()) < 0 or int(s.max()) >= self.num_strata:
            raise ValueError(
                f"strata must lie in [0, {self.num_strata}), got values in [{int(s.min())}, {int(s.max())}]."
            )
        if self.x is None:
            self.x = torch.zeros((len(self.y), *x.shape[1:]), dtype=x.dtype)
        onehot = torch.nn.functional.one_hot(s, self.num_strata)
        earlier = (onehot.cumsum(0) - onehot)[torch.arange(n), s]  # same-stratum samples before this one
        position = self.seen[s] + earlier  # 0-based index of the sample in its stratum's stream
        self.seen += onehot.sum(0)
        u = torch.rand(n, generator=self.generator, dtype=torch.float64)
        candidate = torch.floor(u * (position + 1).double()).long()
        slot = torch.where(position < self.quota, position, candidate)
        keep = torch.nonzero(slot < self.quota).flatten()
        if len(keep) == 0:
            return
        global_slot = s[keep] * self.quota + slot[keep]
        # Several samples of one batch may land on the same slot: the last one wins, as in sequential insertion.
        unique, inverse = torch.unique(global_slot, return_inverse=True)
        last = torch.full((len(unique),), -1, dtype=torch.int64).scatter_reduce(0, inverse, keep, reduce="amax")
        self.x[unique] = x[last]
        self.y[unique] = y[last]
        self.label[unique] = label_t[last]
        self.filled[unique] = True

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stored ``(x, y, label)``."""
        if self.x is None:
            raise RuntimeError("The buffer is empty.")
        idx = torch.nonzero(self.filled).flatten()
        return self.x[idx], self.y[idx], self.label[idx]

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen.clone(),
            "x": None if self.x is None else self.x.clone(),
            "y": self.y.clone(),
            "label": self.label.clone(),
            "filled": self.filled.clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"].clone()
        self.x = None if state["x"] is None else state["x"].clone()
        self.y, self.label, self.filled = state["y"].clone(), state["label"].clone(), state["filled"].clone()
        self.generator.set_state(state["generator"])
