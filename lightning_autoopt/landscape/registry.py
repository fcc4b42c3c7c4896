"""Registry of sharpness measures by name, with descriptive records (timm-style).

Each record's defaults are read from its function's signature in :mod:`~lightning_autoopt.landscape.measures`, so
they are stated once; argument values are checked by one function for every entry point.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from lightning_autoopt import _flat
from lightning_autoopt.landscape import measures as _m
from lightning_autoopt.landscape.batch_loss import LossSpec
from lightning_autoopt.landscape.loss import Batch, LossFunctional
from lightning_autoopt.landscape.normalize import filter_normalized_copy, to_normalized_coordinates
from lightning_autoopt.landscape.snapshot import ParamSnapshot


@dataclass(frozen=True)
class MeasureInfo:
    """What a registered measure is and how it is computed.

    Attributes:
        name: Registry key, e.g. ``"lpf"``.
        fn: The pure function ``fn(functional, *, generator, **defaults) -> float``.
        defaults: Keyword arguments and their default values, read from ``fn``'s signature (read-only).
        description: One line: what the number means.
        cost: Rough cost in loss passes over the probe batches.
        needs_init: Whether the measure needs the initial weights (``init_params``).
        needs_class_scores: Whether the measure always needs class scores and labels from the loss (``predict``;
            ``pac_bayes`` needs them only with ``target="accuracy"``, see :func:`needs_class_scores`).
        larger_is_sharper: Orientation: ``True`` when a larger value means a sharper minimum.
    """

    name: str
    fn: Callable[..., float]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    cost: str = ""
    needs_init: bool = False
    needs_class_scores: bool = False
    larger_is_sharper: bool = True


def _info(name: str, fn: Callable[..., float], **kwargs: Any) -> MeasureInfo:
    defaults = MappingProxyType(_m.measure_defaults(fn))
    needs_init = "init_params" in inspect.signature(fn).parameters
    return MeasureInfo(name=name, fn=fn, defaults=defaults, needs_init=needs_init, **kwargs)


_REGISTRY: dict[str, MeasureInfo] = {
    info.name: info
    for info in (
        _info(
            "lpf",
            _m.lpf,
            description="Gaussian-smoothed loss E[L(θ+u)], u~N(0,σ²I) (Bisla et al. 2022)",
            cost="num_samples loss passes",
        ),
        _info(
            "eps_sharpness",
            _m.eps_sharpness,
            description="1/‖Δθ‖ of the gradient-direction step that raises the loss by eps",
            cost="1 gradient pass + ~20-60 loss passes",
        ),
        _info(
            "pac_bayes",
            _m.pac_bayes,
            description="‖θ−θ₀‖²/(4σ²)+log(2N/δ), σ the noise level raising the loss (or error) by eps",
            cost="max_iter × mc_samples loss passes",
        ),
        _info(
            "hessian_top",
            _m.hessian_top,
            description="largest Hessian eigenvalue λ_max",
            cost="≤ max_iter HVP passes (Lanczos usually stops after 10-30)",
        ),
        _info(
            "hessian_trace",
            _m.hessian_trace,
            description="Hessian trace by Hutchinson (Rademacher) or Hutch++",
            cost="num_probes HVPs in blocks",
        ),
        _info(
            "hessian_fro",
            _m.hessian_fro,
            description="Hessian Frobenius norm sqrt(E‖Hv‖²)",
            cost="num_probes HVPs",
        ),
        _info(
            "fisher_rao",
            _m.fisher_rao,
            description="θᵀHθ (the reference's 'Fisher-Rao norm', computed with the Hessian)",
            cost="1 HVP pass",
        ),
        _info(
            "shannon",
            _m.shannon,
            description="mean predictive entropy (nats)",
            cost="1 loss pass",
            needs_class_scores=True,
            larger_is_sharper=False,
        ),
        _info(
            "local_entropy",
            _m.local_entropy,
            description="μ_LE: mean ‖θ−μ_b‖ of Entropy-SGD's Langevin inner loop",
            cost="num_steps gradient passes per batch",
        ),
    )
}


def list_measures() -> list[str]:
    """Names of all registered measures, in registration order."""
    return list(_REGISTRY)


def get_measure(name: str) -> MeasureInfo:
    """The :class:`MeasureInfo` record of ``name``.

    Raises:
        ValueError: If ``name`` is not registered (the message lists the valid names).
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown sharpness measure {name!r}; choose from {list_measures()}.")
    return _REGISTRY[name]


def needs_class_scores(name: str, kwargs: Mapping[str, Any] | None = None) -> bool:
    """Whether measure ``name`` with arguments ``kwargs`` needs class scores and labels from the loss.

    ``shannon`` always does; ``pac_bayes`` with ``target="accuracy"``. Losses other than the classification
    convention have none unless they define ``predict`` (see :func:`~lightning_autoopt.landscape.batch_loss.
    predictions`).
    """
    info = get_measure(name)
    options = {**info.defaults, **(kwargs or {})}
    return info.needs_class_scores or options.get("target") == "accuracy"


def check_measure_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Validate keyword arguments for measure ``name``: names it accepts and values in range.

    Called by :func:`compute_measure` and by ``SharpnessProbe.__init__`` (so a bad value fails at construction,
    not mid-fit); the value rules are :func:`~lightning_autoopt.landscape.measures.check_measure_arguments`.

    Raises:
        ValueError: Naming any keyword the measure does not accept, or any value out of range.
    """
    info = get_measure(name)
    unknown = sorted(set(kwargs) - set(info.defaults) - {"init_params"})
    if unknown:
        raise ValueError(
            f"Measure {name!r} got unknown argument(s) {unknown}; its arguments are {sorted(info.defaults)}."
        )
    _m.check_measure_arguments(info.fn, kwargs)


def compute_measure(
    name: str,
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    loss_fn: LossSpec = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    normalize: bool = False,
    **kwargs: Any,
) -> float:
    """Compute measure ``name`` of ``model`` on the fixed ``batches``; the model is left exactly as it was.

    Weights, buffers, ``requires_grad``, ``.grad``, train/eval modes and the global RNG are snapshotted and restored.
    A non-finite loss or non-finite weights give ``nan`` instead of an exception.

    Args:
        name: A registered measure (see :func:`list_measures`).
        model: The network.
        batches: Fixed batches of any structure (e.g. from :func:`make_fixed_batches`).
        loss_fn: The loss contract of :mod:`~lightning_autoopt.landscape.batch_loss`: ``None`` (pick from the
            module and the batch), ``"cross_entropy"``, ``"mse"``, ``"training_step"``, an import path, or a
            callable ``loss_fn(model, batch) -> scalar``. A resolved loss (e.g. from ``SharpnessProbe``) is used as
            is.
        seed: Seed of the private generator (ignored when ``generator`` is given).
        generator: Private RNG to use instead of a fresh ``torch.Generator().manual_seed(seed)``.
        normalize: Measure a filter-normalised deep copy (:func:`filter_normalized_copy`) instead of the model.
        **kwargs: Overrides of the measure's defaults (``get_measure(name).defaults``); ``pac_bayes`` also takes
            ``init_params`` (flat initial weights in the layout of the trainable parameters).

    Returns:
        The measure as a Python float (``nan`` when the loss or the weights are not finite).

    Raises:
        ValueError: On an unknown measure or argument, an argument value out of range (e.g. ``num_samples=0``), a
            loss that does not fit the model, or a measure that needs class scores with a loss that has none.

    Example::

        batches = make_fixed_batches(train_set, num_samples=512, batch_size=128, seed=0)
        print(compute_measure("lpf", model, batches, sigma=0.01, num_samples=20))
    """
    info = get_measure(name)
    check_measure_kwargs(name, kwargs)
    options = {**info.defaults, **kwargs}
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    with ParamSnapshot(model):
        target = model
        if normalize:
            if options.get("init_params") is not None:
                options["init_params"] = to_normalized_coordinates(model, options["init_params"])
            target = filter_normalized_copy(model)
        functional = LossFunctional(target, batches, loss_fn)
        if not _flat.all_finite(functional.get_flat()) or not math.isfinite(functional.loss()):
            return float("nan")
        if not info.needs_init:
            options.pop("init_params", None)
        return float(info.fn(functional, generator=gen, **options))
