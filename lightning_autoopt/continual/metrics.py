"""Continual-learning scores: detection delay / false detections, and accuracy per task (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def boundaries_from_task_ids(task_ids: Sequence[int], steps: Sequence[int] | None = None) -> list[int]:
    """Steps at which the true task id changes (the first step of each new task, the stream start excluded).

    Args:
        task_ids: The true task id of each batch, in stream order.
        steps: The step of each batch (defaults to ``0, 1, 2, ...``).
    """
    steps = list(range(len(task_ids))) if steps is None else list(steps)
    return [steps[i] for i in range(1, len(task_ids)) if task_ids[i] != task_ids[i - 1]]


def match_detections(
    detected: Sequence[int], boundaries: Sequence[int], max_delay: int = 50, stream_end: int | None = None
) -> dict[str, Any]:
    """Match detected shift steps to true task boundaries.

    A boundary ``b`` is detected by the first detection ``d`` with ``b <= d < b + max_delay`` that is also before the
    next boundary; its delay is ``d - b`` (0 = detected on the first batch of the new task). Every other detection
    is false.

    Args:
        detected: Steps at which a shift was declared.
        boundaries: Steps at which a new task starts.
        max_delay: A detection later than this many steps after the boundary counts as false, the boundary as missed.
        stream_end: Last step + 1 (bounds the window of the last boundary); ``None`` = unbounded.

    Returns:
        ``{"delays": [...], "missed": int, "false_detections": int, "mean_delay": float | None}``.
    """
    detected = sorted(int(d) for d in detected)
    boundaries = sorted(int(b) for b in boundaries)
    used: set[int] = set()
    delays: list[int] = []
    missed = 0
    for i, b in enumerate(boundaries):
        end = b + max_delay
        if i + 1 < len(boundaries):
            end = min(end, boundaries[i + 1])
        if stream_end is not None:
            end = min(end, stream_end)
        hit = next((j for j, d in enumerate(detected) if j not in used and b <= d < end), None)
        if hit is None:
            missed += 1
        else:
            used.add(hit)
            delays.append(detected[hit] - b)
    false = len(detected) - len(used)
    return {
        "delays": delays,
        "missed": missed,
        "false_detections": false,
        "mean_delay": (sum(delays) / len(delays)) if delays else None,
    }


def accuracy_per_task(predictions: torch.Tensor, targets: torch.Tensor, task_ids: torch.Tensor) -> dict[int, float]:
    """Accuracy of ``predictions`` against ``targets``, per true task id (tasks absent from ``task_ids`` omitted)."""
    out: dict[int, float] = {}
    for t in torch.unique(task_ids).tolist():
        mask = task_ids == t
        out[int(t)] = (predictions[mask] == targets[mask]).float().mean().item()
    return out


def task_mask_logits(
    logits: torch.Tensor, task_ids: torch.Tensor, task_classes: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Logits with every class outside the sample's true task set to ``-inf`` (task-incremental evaluation)."""
    mask = torch.zeros(len(task_classes), logits.shape[1], dtype=torch.bool, device=logits.device)
    for t, classes in enumerate(task_classes):
        mask[t, list(classes)] = True
    return logits.masked_fill(~mask[task_ids], float("-inf"))


def forgetting(accuracy_matrix: Sequence[Sequence[float]]) -> float:
    """Average forgetting: mean over all tasks but the last of (best earlier accuracy - final accuracy).

    ``accuracy_matrix[i][j]`` is the accuracy on task ``j`` after training on task ``i`` (a square matrix).
    """
    n = len(accuracy_matrix)
    if n < 2:
        return 0.0
    drops = []
    for j in range(n - 1):
        best = max(accuracy_matrix[i][j] for i in range(j, n - 1))
        drops.append(best - accuracy_matrix[n - 1][j])
    return sum(drops) / len(drops)
