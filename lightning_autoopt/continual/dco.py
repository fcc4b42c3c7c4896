"""DCO's pure core (Direction-Constrained Optimization): the direction autoencoder and the closed-form penalty.

Nothing here knows about a ``Trainer``. The Lightning adapter is :class:`lightning_autoopt.callbacks.DCO`.
"""

from __future__ import annotations

import math

import torch


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """A weight of shape ``(out, ...)`` as an ``(out, rest)`` matrix (Linear: itself; Conv: kernels flattened)."""
    return t.reshape(t.shape[0], -1)


def fit_direction_autoencoder(
    samples: list[torch.Tensor], num_directions: int, steps: int, lr: float, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fit DCO's tied linear autoencoder on per-layer matrices; returns ``[(U_l (k, r), V_l (k, c))]``.

    ``samples[l]`` has shape ``(n, r_l, c_l)``: ``n`` input vectors (e.g. gradients), split per layer. Latent ``i``
    reads ``z_i = sum_l u_{l,i}^T M_l v_{l,i}`` (a rank-one direction per layer, summed over layers) and the tied
    decoder writes ``M_l ~ sum_i z_i u_{l,i} v_{l,i}^T``. Trained with Adam on ``100 * mean squared error`` of the
    inputs scaled to unit RMS, as in the DCO code. The learned directions span the inputs' top principal subspace
    (under the rank-one-per-layer constraint).
    """
    g = torch.Generator().manual_seed(int(seed))
    n = samples[0].shape[0]
    rms = math.sqrt(sum(float(s.pow(2).sum()) for s in samples) / max(n * sum(s[0].numel() for s in samples), 1))
    scaled = [s / max(rms, 1e-12) for s in samples]
    params: list[torch.Tensor] = []
    for s in scaled:
        r, c = s.shape[1], s.shape[2]
        params.append((torch.randn(num_directions, r, generator=g) / math.sqrt(r)).requires_grad_())
        params.append((torch.randn(num_directions, c, generator=g) / math.sqrt(c)).requires_grad_())
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        us, vs = params[0::2], params[1::2]
        z = torch.stack([torch.einsum("kr,nrc,kc->nk", u, m, v) for u, m, v in zip(us, scaled, vs)]).sum(0)
        errors = [(torch.einsum("nk,kr,kc->nrc", z, u, v) - m).pow(2).sum() for u, m, v in zip(us, scaled, vs)]
        loss = torch.stack(errors).sum() * (100.0 / n)
        loss.backward()
        opt.step()
    return [(u.detach(), v.detach()) for u, v in zip(params[0::2], params[1::2])]


def direction_penalty(
    current: list[torch.Tensor], tasks: list[dict[str, list[torch.Tensor]]], strength: float
) -> tuple[float, list[torch.Tensor]]:
    """DCO's penalty ``strength * sum_t ||E_t(theta - theta*_t)||^2`` and its gradient per layer, in closed form.

    Args:
        current: The constrained weights as ``(out, rest)`` matrices (:func:`as_matrix`).
        tasks: One dict per consolidated task: ``"centre"`` (the matrices ``theta*_t``), ``"u"`` and ``"v"`` (the
            directions of :func:`fit_direction_autoencoder`, per layer).
        strength: The penalty weight.

    Returns:
        ``(penalty, gradients)``, the gradients shaped like ``current``.
    """
    grads = [torch.zeros_like(w) for w in current]
    penalty = 0.0
    for task in tasks:
        deltas = [w - c for w, c in zip(current, task["centre"])]
        z = torch.stack([torch.einsum("kr,rc,kc->k", u, d, v) for u, d, v in zip(task["u"], deltas, task["v"])]).sum(0)
        penalty += strength * float(z.pow(2).sum())
        for i, (u, v) in enumerate(zip(task["u"], task["v"])):
            grads[i] += 2.0 * strength * torch.einsum("k,kr,kc->rc", z, u, v)
    return penalty, grads
