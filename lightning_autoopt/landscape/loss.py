"""The loss functional every landscape measure is defined on: a fixed set of batches, eval mode, fp32, no autocast."""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import Dataset, IterableDataset, default_collate

from lightning_autoopt import _flat
from lightning_autoopt.landscape.batch_loss import (
    BatchLoss,
    LossSpec,
    batch_size,
    cast_batch,
    describe_loss,
    predictions,
    resolve_loss,
)

Batch = Any
"""A batch of any structure: a tensor, a tuple/list of any length, or a dict (see :mod:`.batch_loss`)."""


def make_fixed_batches(
    dataset: Dataset,
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> list[Batch]:
    """Draw a fixed, seeded subset of ``dataset`` and collate it into batches (of whatever structure it collates to).

    The subset is chosen with a private :class:`torch.Generator`, so neither the global RNG nor any dataloader's
    sampler state is touched (iterating the trainer's loader would advance its RNG and change training). An
    iterable-style dataset contributes its first ``num_samples`` items, read from a fresh iterator with the global
    torch, ``random`` and NumPy RNG states saved and restored.

    Args:
        dataset: A map-style dataset (``len`` and ``[i]``) or an iterable-style one.
        num_samples: How many samples to take (capped at the dataset's size).
        batch_size: Samples per batch.
        seed: Seed of the private generator that picks the samples (map-style datasets).
        collate_fn: Collation function (default :func:`torch.utils.data.default_collate`); pass the training
            loader's ``collate_fn`` so probe batches look exactly like training batches.

    Returns:
        A list of collated batches (tensors, tuples/lists or dicts).

    Raises:
        ValueError: If ``num_samples`` or ``batch_size`` is not positive, or the dataset is empty.
    """
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        items = _first_items(dataset, num_samples)
    else:
        n = len(dataset)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(int(seed))
        indices = torch.randperm(n, generator=generator)[: min(num_samples, n)].tolist()
        items = [dataset[i] for i in indices]
    if not items:
        raise ValueError("The dataset is empty; cannot build landscape batches from it.")
    collate = collate_fn or default_collate
    return [collate(items[start : start + batch_size]) for start in range(0, len(items), batch_size)]


def single_loader(loaders: Any) -> Any:
    """The first loader of what a ``Trainer`` holds (a loader, a list/tuple or a mapping of loaders), or ``None``."""
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return loaders


def to_training_device(strategy: Any, module: Any, batch: Batch) -> Batch:
    """Move a drawn batch the way a training batch travels.

    The module's ``on_before_batch_transfer``, then the strategy's ``batch_to_device`` (``transfer_batch_to_device``
    and ``on_after_batch_transfer``).
    """
    before = getattr(module, "_on_before_batch_transfer", None)
    if callable(before):
        batch = before(batch, dataloader_idx=0)
    return strategy.batch_to_device(batch, dataloader_idx=0)


def _first_items(dataset: Any, num_samples: int) -> list[Any]:
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            return list(itertools.islice(iter(dataset), num_samples))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm running stats, no dropout), autocast off, math attention; restores the modes after.

    The math SDPA backend is forced because fused attention kernels have no double backward / forward-mode AD.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autocast("cpu", enabled=False))
            if torch.cuda.is_available():
                stack.enter_context(torch.autocast("cuda", enabled=False))
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            yield
    finally:
        for m, mode in modes:
            m.training = mode


class _BoundLoss(nn.Module):
    """``batch -> loss_fn(model, batch)`` as a module.

    So :func:`torch.func.functional_call` can swap ``model``'s parameters for any loss of the contract, not only for
    ``model.forward``.
    """

    def __init__(self, model: nn.Module, loss_fn: BatchLoss) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


class LossFunctional:
    """L(θ): the sample-weighted mean loss of ``model`` over a fixed list of batches, as a function of its weights.

    The parameters θ are the model's parameters that require grad, seen as one flat vector (``dim`` entries).
    Every evaluation runs in eval mode (BatchNorm uses running statistics, dropout is off), in the parameters'
    floating dtype (fp32 for ordinary models; floating batch tensors are cast to it), with autocast disabled. Each
    batch's mean loss is weighted by its number of samples (the leading size of its first tensor), so uneven last
    batches count correctly (the LPF-SGD reference divides by the number of batches instead).

    The loss follows the contract of :mod:`lightning_autoopt.landscape.batch_loss`: ``loss_fn(model, batch) ->
    scalar``, picked by :func:`~lightning_autoopt.landscape.batch_loss.resolve_loss` from ``loss_fn`` and checked on
    the first batch, so a loss that does not fit the model fails here, before any measure runs.

    Args:
        model: The network.
        batches: Fixed batches of any structure, e.g. from :func:`make_fixed_batches`. Moved to the model's device.
        loss_fn: ``None``/``"auto"`` (the module's ``landscape_loss``, a loss returned by ``forward``, the
            ``(x, y)`` convention with cross-entropy or MSE picked from the output and target, or a
            LightningModule's ``training_step``), ``"cross_entropy"``, ``"mse"``, ``"training_step"``, a dotted
            import path, or a callable ``loss_fn(model, batch) -> scalar`` (mean over the batch).

    Raises:
        ValueError: If ``batches`` is empty, the model has no trainable parameters, or no loss fits the model.

    Example::

        f = LossFunctional(model, make_fixed_batches(train_set, 512, 128))
        theta = f.get_flat()
        print(f.loss(), f.dim)
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], loss_fn: LossSpec = None) -> None:
        if len(batches) == 0:
            raise ValueError("`batches` is empty; give at least one batch.")
        self.model = model
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named_params:
            raise ValueError("The model has no parameters with requires_grad=True to measure.")
        self.params = [p for _, p in self.named_params]
        first = self.params[0]
        self.device = first.device
        self.dtype = first.dtype if first.is_floating_point() else torch.float32
        self.batches: list[Batch] = [cast_batch(b, self.device, self.dtype) for b in batches]
        with self.context():
            self.loss_fn: BatchLoss = resolve_loss(loss_fn, model, self.batches[0])
        sizes = [batch_size(b) for b in self.batches]
        self.num_samples = sum(sizes)
        self.weights = [n / self.num_samples for n in sizes]
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self._bound = _BoundLoss(model, self.loss_fn)

    def __repr__(self) -> str:
        return (
            f"LossFunctional({type(self.model).__name__}, {len(self.batches)} batches, {describe_loss(self.loss_fn)})"
        )

    # ---------------------------------------------------------------- flat vector views
    def get_flat(self) -> Tensor:
        """A detached copy of θ as one flat vector."""
        return _flat.flatten(self.params)

    def set_flat(self, theta: Tensor) -> None:
        """Write the flat vector ``theta`` into the parameters in place."""
        _flat.unflatten_(theta, self.params)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into a ``{name: tensor}`` dict of views for :func:`torch.func.functional_call`."""
        return {n: v for (n, _), v in zip(self.named_params, _flat.split_views(theta, self.params))}

    def flatten(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """Concatenate per-parameter tensors (``None`` counts as zeros) into a flat vector, keeping their graph."""
        return _flat.flatten(tensors, like=self.params, detach=False)

    def context(self) -> contextlib.AbstractContextManager[None]:
        """The evaluation context (eval mode, autocast off, math attention) every computation runs in."""
        return evaluation_mode(self.model)

    # ---------------------------------------------------------------- evaluations
    def batch_loss(self, batch: Batch, theta: Tensor | None = None) -> Tensor:
        """The mean loss of one batch at the current weights, or at the flat weights ``theta``.

        With ``theta`` the evaluation is functional (for :mod:`torch.func` transforms); the parameters themselves
        are not touched.
        """
        if theta is None:
            return self.loss_fn(self.model, batch)
        params = {f"model.{n}": v for n, v in self.unflatten(theta).items()}
        return functional_call(self._bound, params, (batch,))

    def loss(self) -> float:
        """L at the current weights."""
        total = 0.0
        with self.context(), torch.no_grad():
            for batch, w in zip(self.batches, self.weights):
                total += w * float(self.batch_loss(batch))
        return total

    def accuracy(self) -> float:
        """Top-1 accuracy at the current weights (needs a loss with class scores, see :func:`.predictions`)."""
        correct, total = 0, 0
        with self.context(), torch.no_grad():
            for batch in self.batches:
                scores, labels = predictions(self.loss_fn, self.model, batch)
                correct += int((scores.argmax(dim=-1) == labels).sum())
                total += int(labels.numel())
        return correct / max(total, 1)

    def predictive_entropy(self) -> float:
        """Mean Shannon entropy (nats) of the softmax predictions (needs a loss with class scores)."""
        total = 0.0
        with self.context(), torch.no_grad():
            for batch, w in zip(self.batches, self.weights):
                scores, _ = predictions(self.loss_fn, self.model, batch)
                logp = torch.log_softmax(scores.float(), dim=-1)
                total += w * float(-(logp.exp() * logp).sum(dim=-1).mean())
        return total

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """L and the flat gradient ∇L at the current weights (``.grad`` is not touched)."""
        total = 0.0
        grad = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        with self.context(), torch.enable_grad():
            for batch, w in zip(self.batches, self.weights):
                loss = self.batch_loss(batch) * w
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                grad += self.flatten(grads)
                total += float(loss.detach())
        return total, grad

    def batch_loss_and_grad(self, index: int) -> tuple[float, Tensor]:
        """Mean loss and flat gradient on the single batch ``index`` (used by the local-entropy measure)."""
        with self.context(), torch.enable_grad():
            loss = self.batch_loss(self.batches[index])
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return float(loss.detach()), self.flatten(grads)
