"""Core math and point-to-point exchange for decentralized gossip (D-PSGD) and AL-DSGD.

Everything here works on flat 1-D tensors (one buffer per worker) and plain Python lists, so it is testable
without a ``Trainer``. The exchange uses ``torch.distributed.batch_isend_irecv``: within one round every worker
posts one send and one receive per active neighbour. Because the active edges form a union of matchings and both
endpoints of an edge post the matching pair of operations, the exchange cannot deadlock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist


def exchange_with_neighbours(
    buffer: torch.Tensor, neighbours: Sequence[int], group: dist.ProcessGroup | None = None
) -> list[torch.Tensor]:
    """Send ``buffer`` to every neighbour and receive each neighbour's buffer (same shape and dtype).

    Args:
        buffer: this worker's flat buffer.
        neighbours: global ranks of the active neighbours (all distinct, never this rank).
        group: process group (default: the world).

    Returns:
        The received buffers, in the order of ``neighbours``.

    Raises:
        ValueError: if a neighbour is listed twice or is this rank.
    """
    if not neighbours:
        return []
    me = dist.get_rank()
    if len(set(neighbours)) != len(neighbours) or me in neighbours:
        raise ValueError(f"Neighbours must be distinct and exclude this rank ({me}); got {list(neighbours)}.")
    received = [torch.empty_like(buffer) for _ in neighbours]
    ops = []
    for peer, recv in zip(neighbours, received):
        ops.append(dist.P2POp(dist.isend, buffer, peer, group=group))
        ops.append(dist.P2POp(dist.irecv, recv, peer, group=group))
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return received


def gossip_mix(own: torch.Tensor, rank: int, received: dict[int, torch.Tensor], alpha: float) -> torch.Tensor:
    """One gossip step ``x_i <- (1 - d * alpha) * x_i + alpha * sum_j x_j`` over the ``d`` active neighbours.

    Terms are accumulated in increasing rank order with the same operation as a row of the dense product
    ``W @ X`` (``W = I - alpha * L``) computed term by term, so the result is reproducible bit for bit.

    Args:
        own: this worker's flat parameters.
        rank: this worker's rank.
        received: neighbour rank -> that neighbour's flat parameters (pre-gossip).
        alpha: edge weight.

    Returns:
        A new tensor with the mixed parameters.
    """
    weights = {rank: 1.0 - alpha * len(received)}
    weights.update({j: alpha for j in received})
    out = torch.zeros_like(own)
    for k in sorted(weights):
        out.add_(own if k == rank else received[k], alpha=weights[k])
    return out


def _finite_or_inf(x: float) -> float:
    return x if math.isfinite(x) else math.inf


def select_adjacent_leaders(
    rank: int, neighbours: Sequence[int], losses: dict[int, float], degrees: Sequence[int]
) -> tuple[int, int]:
    """Pick the best-loss and the max-degree member of ``{rank} ∪ neighbours``.

    The candidates are ordered self first, then the neighbours by increasing rank; ties go to the first
    candidate. A NaN or infinite loss counts as ``+inf``, so such a worker is never chosen as best unless every
    candidate's loss is non-finite (then this worker is "best", i.e. no pull direction is taken from the loss).

    Args:
        rank: this worker.
        neighbours: its active neighbours.
        losses: rank -> leader signal (lower is better) for this worker and every neighbour.
        degrees: active degree of every worker in this round.

    Returns:
        ``(best_rank, max_degree_rank)``.
    """
    candidates = [rank, *sorted(neighbours)]
    best = min(candidates, key=lambda r: (_finite_or_inf(float(losses[r])), candidates.index(r)))
    max_deg = max(candidates, key=lambda r: (degrees[r], -candidates.index(r)))
    return best, max_deg


def adjacent_leader_update(
    mixed: torch.Tensor,
    best: torch.Tensor,
    max_degree: torch.Tensor,
    best_mix: float,
    degree_mix: float,
    best_pull: float,
    degree_pull: float,
) -> torch.Tensor:
    """AL-DSGD's correction after gossip (code semantics: ``c1, p1`` -> best loss; ``c2, p2`` -> max degree).

    ``y = (1 - best_mix - degree_mix) * mixed + best_mix * x_best + degree_mix * x_deg`` then
    ``x = (1 - best_pull - degree_pull) * y + best_pull * x_best + degree_pull * x_deg``, where ``x_best`` and
    ``x_deg`` are the *pre-gossip* parameters of the chosen members.
    """
    y = mixed * (1.0 - best_mix - degree_mix)
    y.add_(best, alpha=best_mix).add_(max_degree, alpha=degree_mix)
    out = y * (1.0 - best_pull - degree_pull)
    out.add_(best, alpha=best_pull).add_(max_degree, alpha=degree_pull)
    return out
