"""Exact snapshot and restore of everything a landscape probe could disturb."""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn


class ParamSnapshot:
    """Remember a model's weights, buffers, ``requires_grad`` flags, ``.grad`` tensors, train/eval modes and RNG.

    :meth:`restore` puts every one of them back bit for bit: parameters and buffers are copied back in place (so the
    optimizer still holds the same tensor objects), the original ``.grad`` tensor objects are re-attached, and the
    global CPU (and, when initialised, CUDA) random number generator states are reset. Landscape measures perturb
    weights and run extra forward/backward passes; wrapping them in a snapshot guarantees that training continues as
    if nothing had happened.

    Args:
        model: The module to protect.
        restore_rng: Also save and restore the global RNG states (cheap; on by default).

    Example::

        with ParamSnapshot(model):
            perturb_and_measure(model)
        # model, its gradients and torch's RNG are exactly as before
    """

    def __init__(self, model: nn.Module, restore_rng: bool = True) -> None:
        self.model = model
        with torch.no_grad():
            self._params = [
                (p, p.detach().clone(), p.requires_grad, p.grad, None if p.grad is None else p.grad.detach().clone())
                for p in model.parameters()
            ]
            self._buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self._modes = [(m, m.training) for m in model.modules()]
        self._cpu_rng = torch.get_rng_state() if restore_rng else None
        self._cuda_rng = (
            torch.cuda.get_rng_state_all()
            if restore_rng and torch.cuda.is_available() and torch.cuda.is_initialized()
            else None
        )

    def restore(self) -> None:
        """Write the saved state back into the model and the global RNG."""
        with torch.no_grad():
            for p, saved, requires_grad, grad, grad_value in self._params:
                p.copy_(saved)
                p.requires_grad_(requires_grad)
                if grad is not None and grad_value is not None:
                    grad.copy_(grad_value)  # the same tensor object, with its values, even if a probe accumulated
                p.grad = grad
            for b, saved in self._buffers:
                b.copy_(saved)
        for m, mode in self._modes:
            m.training = mode
        if self._cpu_rng is not None:
            torch.set_rng_state(self._cpu_rng)
        if self._cuda_rng is not None:
            torch.cuda.set_rng_state_all(self._cuda_rng)

    def __enter__(self) -> ParamSnapshot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()
