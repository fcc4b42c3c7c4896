"""Pure maths of decentralized gossip (D-PSGD) and AL-DSGD: mixing, adjacent-leader choice and correction.

Everything here works on flat 1-D tensors (one buffer per worker) and plain Python lists, with no collective, so it
is testable without a process group. The neighbour exchange itself is
:func:`lightning_autoopt.strategies._comm.exchange_with_neighbours`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_autoopt._flat import finite_or_inf


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
    best = min(candidates, key=lambda r: (finite_or_inf(float(losses[r])), candidates.index(r)))
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
