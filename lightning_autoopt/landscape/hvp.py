"""Hessian-vector products of a :class:`~lightning_autoopt.landscape.loss.LossFunctional`, two backends."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.func import functional_call, grad, jvp, vmap

from lightning_autoopt.landscape.loss import LossFunctional

HVPBackend = Literal["autograd", "func"]


class HVPOperator:
    """The Hessian H = ∇²L(θ) of a loss functional as a linear operator: ``matvec(v)`` and ``matmat(V)``.

    Backends:

    * ``"autograd"`` (double backward): per batch, one backward with ``create_graph=True`` builds the gradient graph,
      which is then reused (``retain_graph=True``) for every probe vector of the block. Works for every op with a
      double-backward formula.
    * ``"func"`` (forward-over-reverse): ``jvp(grad(L), (θ,), (v,))`` through :func:`torch.func.functional_call`,
      ``vmap``-ed over a block of probe vectors so a whole block costs one batched pass. Needs forward-mode AD rules
      (all standard layers have them).

    Both average the per-batch HVPs weighted by sample count and run in eval mode with the math attention backend
    (fused SDPA kernels have neither double backward nor JVP). ``num_matvecs`` counts Hessian-vector products.

    Args:
        functional: The loss functional whose Hessian is wanted.
        backend: ``"autograd"`` or ``"func"``.
        block_size: Largest number of vectors pushed through one batched call of ``matmat``.

    Raises:
        ValueError: On an unknown backend or a non-positive ``block_size``.
        RuntimeError: If called under ``torch.inference_mode`` (e.g. from a validation hook).

    Example::

        op = HVPOperator(LossFunctional(model, batches), backend="func")
        hv = op.matvec(torch.randn(op.dim))
    """

    def __init__(self, functional: LossFunctional, backend: HVPBackend = "autograd", block_size: int = 10) -> None:
        if backend not in ("autograd", "func"):
            raise ValueError(f"`backend` must be 'autograd' or 'func', got {backend!r}.")
        if block_size < 1:
            raise ValueError(f"`block_size` must be >= 1, got {block_size}.")
        self.f = functional
        self.backend = backend
        self.block_size = block_size
        self.dim = functional.dim
        self.device = functional.device
        self.dtype = functional.dtype
        self.num_matvecs = 0

    def matvec(self, v: Tensor) -> Tensor:
        """H v for one flat vector ``v`` of length ``dim``."""
        return self.matmat(v.reshape(1, -1))[0]

    def matmat(self, vectors: Tensor) -> Tensor:
        """H V for a ``(k, dim)`` block of row vectors; returns ``(k, dim)``."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "Hessian-vector products need autograd, but inference mode is on. Run landscape probes from training "
                "hooks (e.g. on_train_epoch_end), never from validation hooks."
            )
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        out = [self._block(chunk) for chunk in vectors.split(self.block_size)]
        self.num_matvecs += int(vectors.shape[0])
        return torch.cat(out)

    def _block(self, vectors: Tensor) -> Tensor:
        if self.backend == "autograd":
            return self._block_autograd(vectors)
        return self._block_func(vectors)

    def _block_autograd(self, vectors: Tensor) -> Tensor:
        f = self.f
        result = torch.zeros_like(vectors)
        with f.context(), torch.enable_grad():
            for (x, y), w in zip(f.batches, f.weights):
                loss = f.loss_fn(f.model(x), y) * w
                grads = torch.autograd.grad(loss, f.params, create_graph=True, allow_unused=True)
                pairs = [(g, p) for g, p in zip(grads, f.params) if g is not None and g.requires_grad]
                if not pairs:
                    continue
                for i, v in enumerate(vectors):
                    chunks = dict(zip(map(id, f.params), v.split(f.numels)))
                    dot = sum((g * chunks[id(p)].view_as(p)).sum() for g, p in pairs)
                    hv = torch.autograd.grad(
                        dot,
                        f.params,
                        retain_graph=i + 1 < len(vectors),
                        allow_unused=True,  # type: ignore[arg-type]
                    )
                    result[i] += f.flatten(hv).detach()
        return result

    def _block_func(self, vectors: Tensor) -> Tensor:
        f = self.f
        theta = f.get_flat()
        result = torch.zeros_like(vectors)
        with f.context(), torch.enable_grad():
            for (x, y), w in zip(f.batches, f.weights):

                def batch_loss(flat: Tensor, x: Tensor = x, y: Tensor = y, w: float = w) -> Tensor:
                    return f.loss_fn(functional_call(f.model, f.unflatten(flat), (x,)), y) * w

                def hvp(v: Tensor, batch_loss=batch_loss) -> Tensor:  # type: ignore[no-untyped-def]
                    return jvp(grad(batch_loss), (theta,), (v,))[1]

                result += vmap(hvp)(vectors).detach()
        return result


class DenseOperator:
    """A symmetric matrix wrapped in the operator protocol (``dim``, ``matvec``, ``matmat``); handy for tests.

    Args:
        matrix: A square ``(d, d)`` tensor.
    """

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"`matrix` must be square, got shape {tuple(matrix.shape)}.")
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.device = matrix.device
        self.dtype = matrix.dtype
        self.num_matvecs = 0

    def matvec(self, v: Tensor) -> Tensor:
        return self.matmat(v.reshape(1, -1))[0]

    def matmat(self, vectors: Tensor) -> Tensor:
        self.num_matvecs += int(vectors.shape[0])
        return vectors.to(self.dtype) @ self.matrix.T
