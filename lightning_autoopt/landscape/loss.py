"""The loss functional every landscape measure is defined on: a fixed set of batches, eval mode, fp32, no autocast."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import Dataset, default_collate

from lightning_autoopt import _flat

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def make_fixed_batches(
    dataset: Dataset,
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> list[Batch]:
    """Draw a fixed, seeded subset of ``dataset`` and collate it into ``(x, y)`` batches.

    The subset is chosen with a private :class:`torch.Generator`, so neither the global RNG nor any dataloader's
    sampler state is touched (iterating the trainer's loader would advance its RNG and change training).

    Args:
        dataset: A map-style dataset whose items collate to ``(x, y)``.
        num_samples: How many samples to take (capped at ``len(dataset)``).
        batch_size: Samples per batch.
        seed: Seed of the private generator that picks the samples.
        collate_fn: Collation function (default :func:`torch.utils.data.default_collate`).

    Returns:
        A list of ``(x, y)`` tensor pairs.

    Raises:
        ValueError: If ``num_samples`` or ``batch_size`` is not positive, or the dataset is empty.
    """
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("The dataset is empty; cannot build landscape batches from it.")
    generator = torch.Generator().manual_seed(int(seed))
    indices = torch.randperm(n, generator=generator)[: min(num_samples, n)].tolist()
    collate = collate_fn or default_collate
    batches: list[Batch] = []
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        batch = collate(items)
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("Landscape measures need datasets whose batches are `(x, y)` pairs.")
        batches.append((batch[0], batch[1]))
    return batches


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


def _resolve_loss(loss_fn: str | LossFn) -> LossFn:
    if callable(loss_fn):
        return loss_fn
    if loss_fn == "cross_entropy":
        return F.cross_entropy
    if loss_fn == "mse":
        return F.mse_loss
    raise ValueError(f"`loss_fn` must be 'cross_entropy', 'mse' or a callable, got {loss_fn!r}.")


class LossFunctional:
    """L(θ): the sample-weighted mean loss of ``model`` over a fixed list of batches, as a function of its weights.

    The parameters θ are the model's parameters that require grad, seen as one flat vector (``dim`` entries).
    Every evaluation runs in eval mode (BatchNorm uses running statistics, dropout is off), in the parameters'
    floating dtype (fp32 for ordinary models; inputs are cast to it), with autocast disabled. Each batch's mean loss is
    weighted by its number of samples, so uneven last batches count correctly (the LPF-SGD reference divides by the
    number of batches instead).

    Args:
        model: The network; ``model(x)`` must return logits (or predictions for ``"mse"``).
        batches: Fixed ``(x, y)`` batches, e.g. from :func:`make_fixed_batches`. Moved to the model's device.
        loss_fn: ``"cross_entropy"`` (default), ``"mse"``, or a callable ``loss_fn(output, target)`` (mean
            reduction).

    Raises:
        ValueError: If ``batches`` is empty or the model has no trainable parameters.

    Example::

        f = LossFunctional(model, make_fixed_batches(train_set, 512, 128))
        theta = f.get_flat()
        print(f.loss(), f.dim)
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], loss_fn: str | LossFn = "cross_entropy") -> None:
        if len(batches) == 0:
            raise ValueError("`batches` is empty; give at least one (x, y) batch.")
        self.model = model
        self.loss_fn = _resolve_loss(loss_fn)
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named_params:
            raise ValueError("The model has no parameters with requires_grad=True to measure.")
        self.params = [p for _, p in self.named_params]
        first = self.params[0]
        self.device = first.device
        self.dtype = first.dtype if first.is_floating_point() else torch.float32
        self.batches: list[Batch] = []
        for x, y in batches:
            x = x.to(self.device)
            if x.is_floating_point():
                x = x.to(self.dtype)
            y = y.to(self.device)
            if y.is_floating_point():
                y = y.to(self.dtype)
            self.batches.append((x, y))
        self.num_samples = sum(int(y.shape[0]) for _, y in self.batches)
        self.weights = [int(y.shape[0]) / self.num_samples for _, y in self.batches]
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)

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
    def loss(self) -> float:
        """L at the current weights."""
        total = 0.0
        with self.context(), torch.no_grad():
            for (x, y), w in zip(self.batches, self.weights):
                total += w * float(self.loss_fn(self.model(x), y))
        return total

    def accuracy(self) -> float:
        """Top-1 accuracy at the current weights (classification outputs)."""
        correct = 0
        with self.context(), torch.no_grad():
            for x, y in self.batches:
                correct += int((self.model(x).argmax(dim=-1) == y).sum())
        return correct / self.num_samples

    def predictive_entropy(self) -> float:
        """Mean Shannon entropy (nats) of the softmax predictions."""
        total = 0.0
        with self.context(), torch.no_grad():
            for (x, _), w in zip(self.batches, self.weights):
                logp = torch.log_softmax(self.model(x).float(), dim=-1)
                total += w * float(-(logp.exp() * logp).sum(dim=-1).mean())
        return total

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """L and the flat gradient ∇L at the current weights (``.grad`` is not touched)."""
        total = 0.0
        grad = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        with self.context(), torch.enable_grad():
            for (x, y), w in zip(self.batches, self.weights):
                loss = self.loss_fn(self.model(x), y) * w
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                grad += self.flatten(grads)
                total += float(loss.detach())
        return total, grad

    def batch_loss_and_grad(self, index: int) -> tuple[float, Tensor]:
        """Mean loss and flat gradient on the single batch ``index`` (used by the local-entropy measure)."""
        x, y = self.batches[index]
        with self.context(), torch.enable_grad():
            loss = self.loss_fn(self.model(x), y)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return float(loss.detach()), self.flatten(grads)
