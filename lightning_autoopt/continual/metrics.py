"""Continual-learning scores: detection delay / false detections, and accuracy per task (pure functions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


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


@torch.no_grad()
def predict_in_chunks(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """``model(x)`` in chunks of ``batch_size`` on the model's device, in eval mode, returned on the CPU.

    An ``nn.Module`` is put in eval mode for the call and back in its previous mode afterwards.
    """
    module = model if isinstance(model, nn.Module) else None
    params = list(module.parameters()) if module is not None else []
    device = params[0].device if params else x.device
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        outs = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        if module is not None:
            module.train(was_training)
    return torch.cat(outs) if outs else torch.zeros(0)


def evaluate_tasks(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    task_ids: torch.Tensor,
    task_classes: Sequence[Sequence[int]] | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Score ``model`` on the evaluation sets of all tasks: the one per-task evaluation of DCO, TAME and benchmarks.

    Args:
        model: Any callable returning logits over all classes (a LightningModule, TAME's routed forward, ...).
        x: Inputs of every task's evaluation set, concatenated (e.g. ``TaskStreamDataModule.eval_tensors()``).
        y: Labels (global class indices).
        task_ids: True task of each sample.
        task_classes: Classes of each task; when given, task-IL accuracy is reported too.
        batch_size: Samples per forward pass.

    Returns:
        ``class_il_acc`` (argmax over all classes), ``task_il_acc`` (argmax over the sample's task's classes; only
        with ``task_classes``) and ``acc_task{t}`` (class-IL accuracy on task ``t``'s samples).

    Example::

        scores = evaluate_tasks(model, *datamodule.eval_tensors(), task_classes=datamodule.task_classes)
        scores["class_il_acc"], scores["acc_task0"]
    """
    logits = predict_in_chunks(model, x, batch_size)
    predictions = logits.argmax(1)
    y, task_ids = y.cpu(), task_ids.cpu()
    out = {"class_il_acc": (predictions == y).float().mean().item()}
    if task_classes is not None:
        masked = task_mask_logits(logits, task_ids, task_classes)
        out["task_il_acc"] = (masked.argmax(1) == y).float().mean().item()
    out.update({f"acc_task{t}": v for t, v in accuracy_per_task(predictions, y, task_ids).items()})
    return out
