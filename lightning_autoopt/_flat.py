"""Flat parameter vectors: one 1-D buffer standing for a list of tensors (parameters, gradients, buffers).

Every part of the package that moves, compares or averages whole models goes through these helpers: the
local-update strategies (one flat buffer per collective), the landscape measures (θ as one vector), SharpnessProbe,
DCO and AutoDrop. They work on plain tensors, never on a ``Trainer``.

* :func:`flatten` / :func:`unflatten_` / :func:`split_views`: to and from one buffer (the layout is the order of the
  tensors, each flattened row-major); :func:`copy_into_` fills an existing buffer slice by slice.
* :func:`add_weighted_`: ``running_sum += weight * x`` without materialising ``x`` as one buffer.
* :func:`all_finite` (chunked) and :func:`finite_or_inf` (NaN/inf never win a comparison): the one place where
  "is this finite" is decided.
* :func:`chunks`: aligned slices of parameter-sized vectors, for reductions with a bounded temporary.
* :func:`broadcast_`: rank ``src``'s buffer on every rank; works on NCCL for a CPU buffer (staged on ``device``).

Why not only :func:`torch.nn.utils.parameters_to_vector` / :func:`~torch.nn.utils.vector_to_parameters`: the first
uses ``view(-1)``, which fails on non-contiguous tensors (``channels_last`` weights), and keeps the autograd graph
(:func:`flatten` detaches unless told not to); the second *rebinds* every ``param.data`` to a view of the vector
instead of copying, so the vector and the weights would alias each other afterwards (and an optimizer's state or a
later write to the vector would silently change the model). :func:`flatten` and :func:`unflatten_` copy instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "CHUNK",
    "add_weighted_",
    "all_finite",
    "broadcast_",
    "chunks",
    "copy_into_",
    "finite_or_inf",
    "flatten",
    "split_views",
    "unflatten_",
]

#: Elements per chunk when reducing over parameter-sized vectors: bounds the temporary memory to a few MB.
CHUNK = 1 << 20


def chunks(*tensors: Tensor, chunk: int = CHUNK) -> Iterator[tuple[Tensor, ...]]:
    """Aligned 1-D slices of ``chunk`` elements of every tensor (all must have the same number of elements).

    Example::

        >>> [tuple(c.tolist() for c in pair) for pair in chunks(torch.arange(5.0), torch.ones(5), chunk=2)][-1]
        ([4.0], [1.0])
    """
    n = tensors[0].numel()
    flat = [t.reshape(-1) for t in tensors]
    for start in range(0, n, chunk):
        yield tuple(f[start : start + chunk] for f in flat)


def flatten(tensors: Iterable[Tensor | None], like: Sequence[Tensor] | None = None, detach: bool = True) -> Tensor:
    """Concatenate ``tensors`` into one new contiguous 1-D buffer.

    Args:
        tensors: The tensors, in layout order. ``None`` (a missing gradient) stands for zeros shaped like the
            tensor at the same position of ``like``.
        like: Reference tensors for ``None`` entries (e.g. the parameters when flattening their gradients).
        detach: Detach from the autograd graph (default). ``False`` keeps the graph (double backward).

    Returns:
        The buffer; an empty float tensor when there is nothing to flatten.

    Raises:
        ValueError: If an entry is ``None`` and ``like`` does not give its shape.

    Example::

        >>> flatten([torch.ones(2, 2), None], like=[torch.ones(2, 2), torch.ones(1)]).tolist()
        [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    parts = []
    for i, t in enumerate(tensors):
        if t is None:
            if like is None or i >= len(like):
                raise ValueError(f"flatten: entry {i} is None and `like` gives no tensor to take its shape from.")
            t = torch.zeros_like(like[i])
        parts.append((t.detach() if detach else t).reshape(-1))
    if not parts:
        return torch.zeros(0)
    return torch.cat(parts)


def _check_size(flat: Tensor, tensors: Sequence[Tensor], what: str) -> None:
    total = sum(t.numel() for t in tensors)
    if flat.numel() != total:
        raise ValueError(f"{what}: flat buffer has {flat.numel()} elements but the tensors hold {total}")


@torch.no_grad()
def unflatten_(flat: Tensor, tensors: Sequence[Tensor]) -> None:
    """Copy the 1-D buffer ``flat`` back into ``tensors`` in place (inverse of :func:`flatten`; dtypes are cast).

    Raises:
        ValueError: If the buffer size does not match the total number of elements.
    """
    _check_size(flat, tensors, "unflatten_")
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def split_views(flat: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    """Views of ``flat`` shaped like each of ``tensors`` (no copy; autograd flows through them).

    Raises:
        ValueError: If the buffer size does not match the total number of elements.
    """
    _check_size(flat, tensors, "split_views")
    return [c.view(t.shape) for c, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def copy_into_(buffer: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """Flatten ``tensors`` into the 1-D ``buffer`` slice by slice (no concatenated temporary); returns ``buffer``.

    Raises:
        ValueError: If the buffer size does not match the total number of elements.
    """
    _check_size(buffer, tensors, "copy_into_")
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            buffer[offset : offset + n].copy_(t.detach().reshape(-1))
            offset += n
    return buffer


def add_weighted_(running_sum: Tensor, tensors: Tensor | Sequence[Tensor], weight: float) -> Tensor:
    """``running_sum += weight * x`` in place, where ``x`` is a flat tensor or a sequence flattened in order.

    Each piece is cast to ``running_sum``'s dtype and device, so a float64 accumulator can sum float32 weights.
    With ``weight = k`` for the ``k``-th snapshot, one buffer holds a linearly weighted sum of ``K`` snapshots.

    Args:
        running_sum: 1-D accumulator (updated in place and returned).
        tensors: The term ``x``, flat or as a sequence of tensors (e.g. ``list(model.parameters())``).
        weight: Its weight.

    Returns:
        ``running_sum``.

    Raises:
        ValueError: If the sizes differ.
    """
    parts = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    _check_size(running_sum, parts, "add_weighted_")
    offset = 0
    with torch.no_grad():
        for t in parts:
            n = t.numel()
            running_sum[offset : offset + n].add_(t.detach().reshape(-1).to(running_sum), alpha=weight)
            offset += n
    return running_sum


def all_finite(tensors: Tensor | Iterable[Tensor]) -> bool:
    """Whether every element is finite, checked chunk by chunk (no parameter-sized boolean temporary).

    Example::

        >>> all_finite(torch.ones(3)), all_finite([torch.ones(2), torch.tensor([float("nan")])])
        (True, False)
    """
    parts = [tensors] if isinstance(tensors, Tensor) else tensors
    with torch.no_grad():
        return all(bool(torch.isfinite(c).all()) for t in parts for (c,) in chunks(t))


@overload
def finite_or_inf(value: float) -> float: ...


@overload
def finite_or_inf(value: Tensor) -> Tensor: ...


def finite_or_inf(value: float | Tensor) -> float | Tensor:
    """Map NaN and ±inf to ``+inf`` so a broken worker can never win an argmin (tensors: a float64 copy).

    Example::

        >>> finite_or_inf(float("nan")), finite_or_inf(torch.tensor([1.0, -float("inf")])).tolist()
        (inf, [1.0, inf])
    """
    if isinstance(value, Tensor):
        out = value.to(torch.float64).clone()
        out[~torch.isfinite(out)] = math.inf
        return out
    value = float(value)
    return value if math.isfinite(value) else math.inf


def broadcast_(tensor: Tensor, src: int = 0, group: Any = None, device: torch.device | str | None = None) -> Tensor:
    """Overwrite ``tensor`` in place with global rank ``src``'s copy; a no-op without a multi-process group.

    NCCL only moves CUDA tensors: a CPU ``tensor`` is staged on ``device`` (default: the current CUDA device, i.e.
    the strategy's root device), broadcast there and copied back. Gloo broadcasts it where it is.

    Args:
        tensor: The buffer (same shape and dtype on every rank).
        src: Global rank whose values win.
        group: Process group (default: the world).
        device: Where to stage a CPU tensor under NCCL.

    Returns:
        ``tensor``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) <= 1:
        return tensor
    if dist.get_backend(group) == "nccl" and tensor.device.type != "cuda":
        target = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        staged = tensor.to(target)
        dist.broadcast(staged, src=src, group=group)
        tensor.copy_(staged)
    else:
        dist.broadcast(tensor, src=src, group=group)
    return tensor
