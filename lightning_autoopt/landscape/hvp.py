"""Hessian-vector products of a :class:`~lightning_autoopt.landscape.loss.LossFunctional`, two backends."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from lightning_autoopt.landscape.loss import LossFunctional

HVPBackend = Literal["autograd", "func"]


class HVPOperator:
    """The Hessian H = ∇²L(θ) of a loss functional as a linear operator: ``matvec(v)`` and ``matmat(V)``.

    Backends:

    * ``"autograd"`` (double backward): per batch, one backward with ``create_graph=True`` builds the gradient graph;
      with ``cache_graph`` it is kept and reused for every later product while the weights are unchanged
      (PyHessian's trick, for all batches); on GPUs a block of vectors goes through one batched double backward
      (``is_grads_batched``; falls back to a loop for ops without batching rules), on CPU a loop. Works for every
      op with a double-backward formula.
    * ``"func"`` (forward-over-reverse): ``jvp(grad(L), (θ,), (v,))`` through :func:`torch.func.functional_call`,
      ``vmap``-ed over a block of probe vectors so a whole block costs one batched pass. Needs forward-mode AD rules
      (all standard layers have them).

    Both average the per-batch HVPs weighted by sample count and run in eval mode with the math attention backend
    (fused SDPA kernels have neither double backward nor JVP). Both take any loss of the contract
    (:mod:`~lightning_autoopt.landscape.batch_loss`); when ``"func"`` cannot trace a loss (``.item()`` or
    data-dependent branches in it), the operator warns once and continues with ``"autograd"``. ``num_matvecs``
    counts Hessian-vector products.

    Args:
        functional: The loss functional whose Hessian is wanted.
        backend: ``"autograd"`` or ``"func"``.
        block_size: Largest number of vectors pushed through one batched call of ``matmat``.
        cache_graph: ``"autograd"`` only: keep the per-batch gradient graphs between calls (faster; holds the
            activations of all batches in memory until :meth:`release` or a weight change).

    Raises:
        ValueError: On an unknown backend or a non-positive ``block_size``.
        RuntimeError: If called under ``torch.inference_mode`` (e.g. from a validation hook).

    Example::

        op = HVPOperator(LossFunctional(model, batches), backend="func")
        hv = op.matvec(torch.randn(op.dim))
    """

    def __init__(
        self,
        functional: LossFunctional,
        backend: HVPBackend = "autograd",
        block_size: int = 10,
        cache_graph: bool = True,
    ) -> None:
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
        self.cache_graph = cache_graph
        self._graphs: list[Tensor] | None = None
        self._versions: list[int] = []
        # The batched double backward (vmap over grad_outputs) pays off on GPUs; on CPU a plain loop over the
        # block measured faster (benchmarks/hessian_vs_pyhessian.py), so it is used there.
        self._batched_ok = self.device.type != "cpu"

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
        if self.backend == "func":
            try:
                return self._block_func(vectors)
            except (RuntimeError, NotImplementedError) as err:
                # e.g. a loss that calls .item() or branches on data: vmap/jvp cannot trace it, double backward can
                warnings.warn(
                    f"HVPOperator: the 'func' backend cannot trace this loss ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:200]}); falling back to the 'autograd' backend.",
                    stacklevel=2,
                )
                self.backend = "autograd"
        return self._block_autograd(vectors)

    def _gradient_graphs(self) -> list[Tensor]:
        """Per-batch flat gradients with their graphs (``create_graph=True``), cached while the weights are unchanged.

        Building the gradient graph is most of an HVP's cost; PyHessian's single-batch mode reuses it for every
        product, and so do we (for every batch), as long as no parameter was modified in place since (checked with
        the tensors' version counters). Memory: the activations of all batches stay alive until :meth:`release`.
        """
        f = self.f
        versions = [p._version for p in f.params]
        if self._graphs is not None and versions == self._versions:
            return self._graphs
        self._graphs = None
        graphs = []
        with f.context(), torch.enable_grad():
            for batch, w in zip(f.batches, f.weights):
                loss = f.batch_loss(batch) * w
                grads = torch.autograd.grad(loss, f.params, create_graph=True, allow_unused=True)
                flat = f.flatten(grads)
                graphs.append(flat)
        self._graphs, self._versions = graphs, versions
        return graphs

    def release(self) -> None:
        """Drop the cached gradient graphs (frees the activation memory they hold)."""
        self._graphs = None

    def _block_autograd(self, vectors: Tensor) -> Tensor:
        f = self.f
        graphs = self._gradient_graphs() if self.cache_graph else None
        result = torch.zeros_like(vectors)
        with f.context(), torch.enable_grad():
            for b, (batch, w) in enumerate(zip(f.batches, f.weights)):
                if graphs is not None:
                    flat = graphs[b]
                else:
                    loss = f.batch_loss(batch) * w
                    flat = f.flatten(torch.autograd.grad(loss, f.params, create_graph=True, allow_unused=True))
                if not flat.requires_grad:  # the loss is linear in every parameter: H = 0 on this batch
                    continue
                keep = graphs is not None
                if self._batched_ok:
                    try:
                        # one batched double backward for the whole block (vmap over grad_outputs)
                        hv = torch.autograd.grad(
                            flat, f.params, grad_outputs=vectors, retain_graph=True, is_grads_batched=True,
                            allow_unused=True,
                        )  # fmt: skip
                        result += torch.cat(
                            [
                                (torch.zeros(len(vectors), p.numel(), device=p.device, dtype=p.dtype) if h is None
                                 else h.reshape(len(vectors), -1))
                                for p, h in zip(f.params, hv)
                            ],
                            dim=1,
                        ).detach()  # fmt: skip
                        continue
                    except RuntimeError:
                        self._batched_ok = False  # an op without a batching rule: fall back to a loop
                for i, v in enumerate(vectors):
                    hv = torch.autograd.grad(
                        flat, f.params, grad_outputs=v, retain_graph=keep or i + 1 < len(vectors), allow_unused=True
                    )
                    result[i] += f.flatten(hv).detach()
        return result

    def _block_func(self, vectors: Tensor) -> Tensor:
        f = self.f
        theta = f.get_flat()
        result = torch.zeros_like(vectors)
        with f.context(), torch.enable_grad():
            for batch, w in zip(f.batches, f.weights):

                def batch_loss(flat: Tensor, batch: Any = batch, w: float = w) -> Tensor:
                    return f.batch_loss(batch, flat) * w

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
