"""Spectral estimates of a symmetric operator given only products: top eigenvalues, trace, SLQ density, ‖H‖_F.

Every function takes an *operator*: any object with ``dim``, ``device``, ``dtype`` and ``matmat(V)`` (rows of ``V``
are vectors), e.g. :class:`~lightning_autoopt.landscape.hvp.HVPOperator` or
:class:`~lightning_autoopt.landscape.hvp.DenseOperator`. Randomness comes only from the ``generator`` argument (a
private :class:`torch.Generator`; vectors are drawn on the CPU and moved), so results are reproducible and the global
RNG is never touched. Small dense algebra (Lanczos bases, tridiagonal eigenproblems) runs in float64.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, Protocol

import torch
from torch import Tensor


class Operator(Protocol):
    dim: int
    device: torch.device
    dtype: torch.dtype

    def matmat(self, vectors: Tensor) -> Tensor: ...


class TraceEstimate(NamedTuple):
    """A Monte-Carlo trace estimate: the value, its standard error, and the number of operator products used."""

    value: float
    std_error: float
    num_matvecs: int


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def rademacher(num: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """``num`` Rademacher (±1) vectors of length ``dim`` as a float64 CPU tensor."""
    bits = torch.randint(0, 2, (num, dim), generator=_generator(generator), dtype=torch.int8)
    return bits.to(torch.float64) * 2.0 - 1.0


def _apply(op: Operator, vectors: Tensor) -> Tensor:
    """Operator on float64 CPU rows, computed in the operator's dtype/device, returned as float64 CPU."""
    out = op.matmat(vectors.to(device=op.device, dtype=op.dtype))
    return out.detach().to(device="cpu", dtype=torch.float64)


def _check_positive(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if int(value) < 1:
            raise ValueError(f"`{name}` must be >= 1, got {value}.")


def power_iteration(
    op: Operator,
    top_k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> tuple[list[float], list[Tensor]]:
    """Top-``top_k`` eigenvalues (largest magnitude) by power iteration with deflation, PyHessian-style.

    Each new vector is orthogonalised against the eigenvectors found so far; iteration stops when the Rayleigh quotient
    changes by less than ``tol`` in relative terms.

    Args:
        op: The symmetric operator.
        top_k: How many eigenpairs.
        max_iter: Iterations per eigenpair.
        tol: Relative-change stopping tolerance.
        generator: Private RNG for the start vectors.

    Returns:
        ``(eigenvalues, eigenvectors)``, eigenvectors as float64 CPU unit vectors.
    """
    _check_positive(top_k=top_k, max_iter=max_iter)
    gen = _generator(generator)
    values: list[float] = []
    vectors: list[Tensor] = []
    for _ in range(top_k):
        v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
        eigenvalue: float | None = None
        for _ in range(max_iter):
            for u in vectors:
                v = v - (v @ u) * u
            v = v / v.norm().clamp_min(1e-300)
            hv = _apply(op, v[None])[0]
            for u in vectors:  # deflation keeps the iterate in the complement of the found eigenvectors
                hv = hv - (hv @ u) * u
            new = float(hv @ v)
            if not math.isfinite(new):
                eigenvalue = float("nan")
                break
            v = hv
            if eigenvalue is not None and abs(new - eigenvalue) / (abs(eigenvalue) + 1e-6) < tol:
                eigenvalue = new
                break
            eigenvalue = new
        values.append(float("nan") if eigenvalue is None else eigenvalue)
        vectors.append(v / v.norm().clamp_min(1e-300))
    return values, vectors


def lanczos(
    op: Operator,
    num_iter: int = 100,
    generator: torch.Generator | None = None,
    start: Tensor | None = None,
    tol: float | None = None,
    top_k: int = 1,
) -> tuple[Tensor, Tensor]:
    """Lanczos tridiagonalisation with full re-orthogonalisation (float64).

    Args:
        op: The symmetric operator.
        num_iter: Maximum Krylov dimension (capped at ``op.dim``).
        generator: Private RNG for the Rademacher start vector.
        start: Optional start vector (normalised internally).
        tol: If given, stop once the top-``top_k`` Ritz values change by less than ``tol`` (relative) between
            iterations — the early stop that makes Lanczos much cheaper than power iteration for λ_max.
        top_k: Number of Ritz values watched by ``tol``.

    Returns:
        ``(alpha, beta)``: the diagonal (length m) and off-diagonal (length m-1) of the tridiagonal matrix T.
        Iteration stops early on an invariant subspace (β ≈ 0) or a non-finite product.
    """
    _check_positive(num_iter=num_iter, top_k=top_k)
    num_iter = min(num_iter, op.dim)
    v = rademacher(1, op.dim, generator)[0] if start is None else start.detach().to("cpu", torch.float64).clone()
    v = v / v.norm()
    basis: list[Tensor] = []  # grown one vector at a time: no num_iter x dim buffer when Lanczos stops early
    alphas: list[float] = []
    betas: list[float] = []
    previous: Tensor | None = None
    for j in range(num_iter):
        basis.append(v)
        w = _apply(op, v[None])[0]
        alpha = float(w @ v)
        if not math.isfinite(alpha):
            alphas.append(float("nan"))
            break
        alphas.append(alpha)
        # full re-orthogonalisation (modified Gram-Schmidt, twice) keeps the Ritz values free of spurious copies
        for _ in range(2):
            for q in basis:
                w = w - (q @ w) * q
        beta = float(w.norm())
        if tol is not None and j >= top_k:
            ritz = tridiagonal_eigenvalues(torch.tensor(alphas), torch.tensor(betas))[-top_k:]
            if previous is not None and bool(((ritz - previous).abs() <= tol * previous.abs().clamp_min(1e-12)).all()):
                break
            previous = ritz
        if j + 1 == num_iter or beta < 1e-10 * max(1.0, abs(alpha)) or not math.isfinite(beta):
            break
        betas.append(beta)
        v = w / beta
    alpha_t = torch.tensor(alphas, dtype=torch.float64)
    beta_t = torch.tensor(betas[: max(len(alphas) - 1, 0)], dtype=torch.float64)
    return alpha_t, beta_t


def _tridiagonal(alpha: Tensor, beta: Tensor) -> Tensor:
    t = torch.diag(alpha.to(torch.float64))
    if beta.numel():
        off = beta.to(torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return t


def tridiagonal_eigenvalues(alpha: Tensor, beta: Tensor) -> Tensor:
    """Ascending eigenvalues (Ritz values) of the tridiagonal matrix with diagonal ``alpha``, off-diagonal ``beta``."""
    if not bool(torch.isfinite(alpha).all()):
        return torch.full_like(alpha.to(torch.float64), float("nan"))
    return torch.linalg.eigvalsh(_tridiagonal(alpha, beta[: alpha.numel() - 1]))


def top_eigenvalues(
    op: Operator,
    top_k: int = 1,
    method: Literal["lanczos", "power"] = "lanczos",
    max_iter: int = 100,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> list[float]:
    """The ``top_k`` largest eigenvalues (descending).

    ``"lanczos"`` (default) watches the top Ritz values and stops when they settle to ``tol``; it needs far fewer
    products than ``"power"`` (PyHessian's power iteration with deflation), whose convergence rate is λ₂/λ₁.
    Note that power iteration finds the largest-*magnitude* eigenvalues, Lanczos the largest algebraic ones.
    """
    if method == "power":
        values, _ = power_iteration(op, top_k=top_k, max_iter=max_iter, tol=tol, generator=generator)
        return values
    if method != "lanczos":
        raise ValueError(f"`method` must be 'lanczos' or 'power', got {method!r}.")
    alpha, beta = lanczos(op, num_iter=max_iter, generator=generator, tol=tol, top_k=top_k)
    ritz = tridiagonal_eigenvalues(alpha, beta)
    return [float(x) for x in ritz.flip(0)[:top_k]]


def hutchinson_trace(
    op: Operator,
    num_probes: int = 100,
    block_size: int = 10,
    method: Literal["hutchinson", "hutch++"] = "hutchinson",
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate tr(H) ≈ mean vᵀHv over Rademacher probes, pushed through the operator in blocks.

    ``"hutch++"`` (Meyer et al. 2021) spends a third of the products on a sketch Q of the dominant range, takes
    tr(QᵀHQ) exactly and runs Hutchinson on the deflated remainder; same number of products, much lower variance
    when the spectrum decays fast.

    Args:
        op: The symmetric operator.
        num_probes: Number of operator products in total.
        block_size: Probes per batched ``matmat`` call.
        method: ``"hutchinson"`` or ``"hutch++"``.
        generator: Private RNG.

    Returns:
        A :class:`TraceEstimate` (``std_error`` is the Monte-Carlo standard error of the mean of the residual part).
    """
    _check_positive(num_probes=num_probes, block_size=block_size)
    gen = _generator(generator)

    def samples(vectors: Tensor) -> Tensor:
        out = [(_apply(op, chunk) * chunk).sum(dim=1) for chunk in vectors.split(block_size)]
        return torch.cat(out)

    if method == "hutchinson":
        # draw the probes block by block so only one block of vectors is alive at a time
        sizes = [min(block_size, num_probes - i) for i in range(0, num_probes, block_size)]
        s = torch.cat([samples(rademacher(n, op.dim, gen)) for n in sizes])
        err = float(s.std(unbiased=True) / math.sqrt(num_probes)) if num_probes > 1 else float("nan")
        return TraceEstimate(float(s.mean()), err, num_probes)
    if method != "hutch++":
        raise ValueError(f"`method` must be 'hutchinson' or 'hutch++', got {method!r}.")
    if num_probes < 3:
        raise ValueError(f"`num_probes` must be >= 3 for hutch++, got {num_probes}.")
    k = num_probes // 3
    sketch = torch.cat([_apply(op, c) for c in rademacher(k, op.dim, gen).split(block_size)])
    q, _ = torch.linalg.qr(sketch.T)  # (dim, k) orthonormal basis of the sketched range
    hq = torch.cat([_apply(op, c) for c in q.T.contiguous().split(block_size)])
    exact = float((hq * q.T).sum())
    rest = num_probes - 2 * k
    g = rademacher(rest, op.dim, gen)
    g = g - (g @ q) @ q.T
    s = samples(g)
    err = float(s.std(unbiased=True) / math.sqrt(rest)) if rest > 1 else float("nan")
    return TraceEstimate(exact + float(s.mean()), err, num_probes)


def frobenius_norm(
    op: Operator,
    num_probes: int = 10,
    block_size: int = 10,
    distribution: Literal["gaussian", "rademacher"] = "gaussian",
    generator: torch.Generator | None = None,
) -> float:
    """‖H‖_F ≈ sqrt(mean ‖Hv‖²) over random probes (E‖Hv‖² = tr(HᵀH) for v with identity covariance)."""
    _check_positive(num_probes=num_probes, block_size=block_size)
    gen = _generator(generator)
    if distribution == "gaussian":
        probes = torch.randn(num_probes, op.dim, generator=gen, dtype=torch.float64)
    elif distribution == "rademacher":
        probes = rademacher(num_probes, op.dim, gen)
    else:
        raise ValueError(f"`distribution` must be 'gaussian' or 'rademacher', got {distribution!r}.")
    sq = torch.cat([_apply(op, chunk).pow(2).sum(dim=1) for chunk in probes.split(block_size)])
    return float(sq.mean().sqrt())


def slq_density(
    op: Operator,
    num_iter: int = 100,
    num_draws: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Stochastic Lanczos quadrature: per draw, the Ritz values (nodes) and weights (first eigenvector entry²).

    Returns:
        ``(nodes, weights)``: one float64 tensor of each per draw. Feed them to :func:`density_on_grid`.
    """
    _check_positive(num_iter=num_iter, num_draws=num_draws)
    gen = _generator(generator)
    nodes, weights = [], []
    for _ in range(num_draws):
        alpha, beta = lanczos(op, num_iter=num_iter, generator=gen)
        if not bool(torch.isfinite(alpha).all()):
            nodes.append(torch.full((1,), float("nan"), dtype=torch.float64))
            weights.append(torch.ones(1, dtype=torch.float64))
            continue
        evals, evecs = torch.linalg.eigh(_tridiagonal(alpha, beta))
        nodes.append(evals)
        weights.append(evecs[0].pow(2))
    return nodes, weights


def density_on_grid(
    nodes: list[Tensor], weights: list[Tensor], num_bins: int = 10000, sigma_squared: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Smooth SLQ nodes/weights into a spectral density on a grid (Gaussian kernels, averaged over draws).

    The kernel variance is ``sigma_squared · max(1, λ_max − λ_min)``, PyHessian's choice.

    Returns:
        ``(grid, density)`` float64 tensors of length ``num_bins``; the density integrates to ≈ 1.
    """
    all_nodes = torch.cat(nodes)
    lo, hi = float(all_nodes.min()), float(all_nodes.max())
    var = sigma_squared * max(1.0, hi - lo)
    pad = 1.0 * math.sqrt(var) * 10 + 1e-2
    grid = torch.linspace(lo - pad, hi + pad, num_bins, dtype=torch.float64)
    density = torch.zeros_like(grid)
    for n, w in zip(nodes, weights):
        kern = torch.exp(-((grid[:, None] - n[None]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        density += kern @ w
    density /= len(nodes)
    return grid, density
