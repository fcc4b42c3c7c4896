"""The sharpness / flatness measures, each a pure function of a :class:`LossFunctional`.

Every function perturbs the parameters in place and leaves them as it found them only through the caller's
:class:`~lightning_autoopt.landscape.snapshot.ParamSnapshot` (``compute_measure`` always wraps one). Randomness comes
only from the ``generator`` argument. Definitions follow the LPF-SGD reference's ``flat_meas`` (Bisla et al. 2022);
the deviations are listed in ``docs/methods/sharpness.md``.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from lightning_autoopt.landscape.hvp import HVPBackend, HVPOperator
from lightning_autoopt.landscape.loss import LossFunctional
from lightning_autoopt.landscape.spectrum import frobenius_norm, hutchinson_trace, top_eigenvalues

_NAN = float("nan")
_F = TypeVar("_F", bound=Callable[..., float])

# What each argument name means wherever it appears: (check, what it must be). Choices (``method``, ``backend``,
# ``target``) are read from each measure's ``Literal`` annotations instead, as they differ between measures.
_COUNT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1")
_OPTIONAL_COUNT = (lambda v: v is None or _COUNT[0](v), "an integer >= 1 or None")
_POSITIVE = (lambda v: _real(v) and v > 0, "a finite number > 0")
_NONNEGATIVE = (lambda v: _real(v) and v >= 0, "a finite number >= 0")
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_samples": _COUNT,
    "mc_samples": _COUNT,
    "max_iter": _COUNT,
    "num_probes": _COUNT,
    "block_size": _COUNT,
    "num_steps": _COUNT,
    "max_batches": _OPTIONAL_COUNT,
    "num_train_samples": _OPTIONAL_COUNT,
    "sigma": _NONNEGATIVE,
    "noise": _NONNEGATIVE,
    "gamma": _NONNEGATIVE,
    "eps": _POSITIVE,
    "tol": _POSITIVE,
    "lr": _POSITIVE,
    "sigma_min": _POSITIVE,
    "sigma_max": _POSITIVE,
    "delta": (lambda v: _real(v) and 0 < v < 1, "a number in (0, 1)"),
    "ema": (lambda v: _real(v) and 0 <= v < 1, "a number in [0, 1)"),
}


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_measure_arguments(fn: Callable[..., float], values: Mapping[str, Any]) -> None:
    """Validate argument values of the measure ``fn`` (the one check behind every entry point).

    ``compute_measure``, ``SharpnessProbe(measure_kwargs=...)`` (at construction) and direct calls of the measure
    functions all go through it, so a bad value fails before any loss pass, with a message naming the argument.

    Args:
        fn: A measure function of this module.
        values: Argument name -> value (only the names given are checked; unknown names are ignored here).

    Raises:
        ValueError: If a value is out of range or not one of the choices of its ``Literal`` annotation.
    """
    hints = _hints(fn)
    for name, value in values.items():
        choices = typing.get_args(hints[name]) if typing.get_origin(hints.get(name)) is Literal else None
        if choices is not None and value not in choices:
            raise ValueError(f"`{name}` of {fn.__name__} must be one of {choices}, got {value!r}.")
        rule = _RULES.get(name)
        if rule is not None and not rule[0](value):
            raise ValueError(f"`{name}` of {fn.__name__} must be {rule[1]}, got {value!r}.")
    low = values.get("sigma_min", _defaults(fn).get("sigma_min"))
    high = values.get("sigma_max", _defaults(fn).get("sigma_max"))
    if low is not None and high is not None and not low < high:
        raise ValueError(f"`sigma_min` of {fn.__name__} must be below `sigma_max`, got {low!r} and {high!r}.")


@functools.cache
def _hints(fn: Callable[..., float]) -> dict[str, Any]:
    return typing.get_type_hints(getattr(fn, "__wrapped__", fn))


@functools.cache
def _defaults(fn: Callable[..., float]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def measure_defaults(fn: Callable[..., float]) -> dict[str, Any]:
    """The tunable arguments of a measure and their defaults, read from its signature.

    Keyword-only arguments with a default, except ``init_params`` (data, not a setting).
    """
    return {k: v for k, v in _defaults(fn).items() if k != "init_params"}


def _checked(fn: _F) -> _F:
    """Validate every call's keyword arguments with :func:`check_measure_arguments`."""

    @functools.wraps(fn)
    def wrapper(f: LossFunctional, **kwargs: Any) -> float:
        check_measure_arguments(wrapper, kwargs)
        return fn(f, **kwargs)

    return typing.cast(_F, wrapper)


def _noise_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def _gaussian(dim: int, seed_gen: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(dim, generator=seed_gen, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


@_checked
def lpf(f: LossFunctional, *, generator: torch.Generator, sigma: float = 0.01, num_samples: int = 100) -> float:
    """μ_LPF: Monte-Carlo estimate of E_u[L(θ + u)], u ~ N(0, σ² I) over all trainable parameters.

    Args:
        f: The loss functional at θ.
        generator: Private RNG.
        sigma: Isotropic noise std (in normalised coordinates when the model is filter-normalised).
        num_samples: Monte-Carlo samples (one loss pass each).
    """
    theta = f.get_flat()
    total = 0.0
    for _ in range(num_samples):
        f.set_flat(theta + sigma * _gaussian(f.dim, generator, theta))
        total += f.loss()
    f.set_flat(theta)
    return total / num_samples


@_checked
def eps_sharpness(
    f: LossFunctional, *, generator: torch.Generator, eps: float = 0.1, tol: float = 1e-6, max_iter: int = 60
) -> float:
    """ε-sharpness: 1/‖θ(η) − θ‖ where θ(η) = θ + η∇L and η is where the loss has risen by exactly ``eps``.

    The step is bracketed by growing η ×5 from 1 (or shrinking ÷5 when already too large), then bisected until the
    rise is within ``tol`` of ``eps`` or the bracket is narrower than ``tol`` relative to η.

    Returns:
        1 / (η ‖∇L‖); ``inf`` if the gradient is zero, ``nan`` if no step reaches the target.
    """
    base, g = f.loss_and_grad()
    gnorm = float(g.norm())
    if not math.isfinite(base) or not math.isfinite(gnorm):
        return _NAN
    if gnorm == 0.0:
        return math.inf
    theta = f.get_flat()

    def rise(eta: float) -> float:
        f.set_flat(theta + eta * g)
        return f.loss() - base

    lo, hi = 0.0, 1.0
    d = rise(hi)
    for _ in range(max_iter):  # bracket: rise(lo) < eps <= rise(hi)
        if not math.isfinite(d) or d >= eps:
            break
        lo, hi = hi, hi * 5.0
        d = rise(hi)
    else:
        f.set_flat(theta)
        return _NAN
    eta = hi
    for _ in range(max_iter):
        eta = 0.5 * (lo + hi)
        d = rise(eta)
        if math.isfinite(d) and abs(d - eps) <= tol:
            break
        if math.isfinite(d) and d < eps:
            lo = eta
        else:
            hi = eta
        if hi - lo <= tol * hi:
            break
    f.set_flat(theta)
    return 1.0 / (eta * gnorm)


@_checked
def pac_bayes(
    f: LossFunctional,
    *,
    generator: torch.Generator,
    init_params: Tensor | None = None,
    target: Literal["loss", "accuracy"] = "loss",
    eps: float = 0.1,
    mc_samples: int = 10,
    tol: float = 1e-3,
    delta: float = 1e-6,
    sigma_min: float = 1e-6,
    sigma_max: float = 100.0,
    max_iter: int = 30,
    num_train_samples: int | None = None,
) -> float:
    """μ_PAC-Bayes: find σ with E_u[L(θ + u)] − L(θ) = ε (or an accuracy drop of ε), then ‖θ − θ₀‖²/(4σ²) + log(2N/δ).

    The distance is from the *initial* weights ``init_params`` (the reference silently used zeros, see the method
    card). The search is a bisection on log σ over ``[sigma_min, sigma_max]``; the noise directions are common random
    numbers (the same ``mc_samples`` draws for every σ), so the expected rise is a smooth function of σ and the
    bisection is well defined.

    Args:
        f: The loss functional at θ.
        generator: Private RNG.
        init_params: Flat initial weights θ₀ (same layout as ``f.get_flat()``). Required.
        target: ``"loss"`` (LPF-SGD reference) or ``"accuracy"`` (Fantastic / Dziugaite et al.).
        eps: Target rise of the loss, or drop of the accuracy.
        mc_samples: Noise draws per σ.
        tol: Stop when the rise is within ``tol`` of ``eps``.
        delta: PAC-Bayes confidence.
        sigma_min: Lower end of the σ search.
        sigma_max: Upper end of the σ search.
        max_iter: Bisection steps.
        num_train_samples: N in the bound (default: the number of samples in the batches).

    Raises:
        ValueError: If ``init_params`` is missing or has the wrong length, or an argument is out of range.
    """
    if init_params is None:
        raise ValueError(
            "pac_bayes needs `init_params` (the flat initial weights θ₀); SharpnessProbe saves them at fit start."
        )
    theta = f.get_flat()
    init = init_params.detach().to(device=theta.device, dtype=theta.dtype).reshape(-1)
    if init.numel() != theta.numel():
        raise ValueError(f"`init_params` has {init.numel()} entries but the model has {theta.numel()} to measure.")
    metric = f.loss if target == "loss" else f.accuracy
    base = metric()
    if not math.isfinite(base):
        return _NAN
    seed = _noise_seed(generator)

    def rise(sigma: float) -> float:
        gen = torch.Generator().manual_seed(seed)
        total = 0.0
        for _ in range(mc_samples):
            f.set_flat(theta + sigma * _gaussian(f.dim, gen, theta))
            total += metric()
        f.set_flat(theta)
        mean = total / mc_samples
        return mean - base if target == "loss" else base - mean

    lo, hi = math.log(sigma_min), math.log(sigma_max)
    sigma = sigma_max
    for _ in range(max_iter):
        sigma = math.exp(0.5 * (lo + hi))
        d = rise(sigma)
        if math.isfinite(d) and abs(d - eps) <= tol:
            break
        if math.isfinite(d) and d < eps:
            lo = math.log(sigma)
        else:
            hi = math.log(sigma)
    n = num_train_samples if num_train_samples is not None else f.num_samples
    distance_sq = float((theta - init).pow(2).sum())
    return distance_sq / (4.0 * sigma**2) + math.log(2.0 * n / delta)


@_checked
def hessian_top(
    f: LossFunctional,
    *,
    generator: torch.Generator,
    backend: HVPBackend = "autograd",
    method: Literal["lanczos", "power"] = "lanczos",
    max_iter: int = 100,
    tol: float = 1e-3,
) -> float:
    """λ_max(H): the largest Hessian eigenvalue (Lanczos with early stop, or PyHessian-style power iteration)."""
    op = HVPOperator(f, backend=backend)
    return top_eigenvalues(op, top_k=1, method=method, max_iter=max_iter, tol=tol, generator=generator)[0]


@_checked
def hessian_trace(
    f: LossFunctional,
    *,
    generator: torch.Generator,
    backend: HVPBackend = "func",
    num_probes: int = 100,
    block_size: int = 10,
    method: Literal["hutchinson", "hutch++"] = "hutchinson",
) -> float:
    """tr(H) by Hutchinson (Rademacher probes in batched blocks) or Hutch++."""
    op = HVPOperator(f, backend=backend, block_size=block_size)
    return hutchinson_trace(op, num_probes=num_probes, block_size=block_size, method=method, generator=generator).value


@_checked
def hessian_fro(
    f: LossFunctional,
    *,
    generator: torch.Generator,
    backend: HVPBackend = "func",
    num_probes: int = 10,
    block_size: int = 10,
) -> float:
    """‖H‖_F ≈ sqrt(mean ‖Hv‖²), v ~ N(0, I) (the reference's K = 10)."""
    op = HVPOperator(f, backend=backend, block_size=block_size)
    return frobenius_norm(op, num_probes=num_probes, block_size=block_size, generator=generator)


@_checked
def fisher_rao(f: LossFunctional, *, generator: torch.Generator, backend: HVPBackend = "autograd") -> float:
    """The reference's "Fisher-Rao norm": θᵀ H θ, with the *Hessian* (as coded in LPF-SGD), not the Fisher."""
    theta = f.get_flat()
    hv = HVPOperator(f, backend=backend).matvec(theta)
    return float(theta @ hv)


@_checked
def shannon(f: LossFunctional, *, generator: torch.Generator) -> float:
    """Mean Shannon entropy (nats) of the model's softmax predictions on the batches."""
    return f.predictive_entropy()


@_checked
def local_entropy(
    f: LossFunctional,
    *,
    generator: torch.Generator,
    num_steps: int = 20,
    lr: float = 0.1,
    ema: float = 0.75,
    noise: float = 1e-4,
    gamma: float = 1e-4,
    max_batches: int | None = None,
) -> float:
    """μ_LE: mean over batches of ‖θ − μ_b‖, μ_b the EMA of a Langevin chain started at θ on batch b.

    The chain is the inner loop of Entropy-SGD: θ' ← θ' − lr (∇L_b(θ') + γ (θ' − θ)) + sqrt(lr) · noise · ξ, and
    μ ← ema · μ + (1 − ema) · θ'. (θ − μ_b)·γ is the local-entropy gradient; the weights themselves are not updated.
    """
    theta = f.get_flat()
    indices = range(len(f.batches) if max_batches is None else min(max_batches, len(f.batches)))
    total = 0.0
    for b in indices:
        current = theta.clone()
        mean = theta.clone()
        for _ in range(num_steps):
            f.set_flat(current)
            loss, g = f.batch_loss_and_grad(b)
            if not math.isfinite(loss):
                f.set_flat(theta)
                return _NAN
            xi = _gaussian(f.dim, generator, theta)
            current = current - lr * (g + gamma * (current - theta)) + math.sqrt(lr) * noise * xi
            mean = ema * mean + (1.0 - ema) * current
        total += float((theta - mean).norm())
    f.set_flat(theta)
    return total / len(indices)
