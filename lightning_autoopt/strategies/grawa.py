"""GRAWA: gradient-based weighted averaging, at model level (MGRAWA) or layer level (LGRAWA).

Reference: Dimlioglu & Choromanska, "GRAWA: Gradient-based Weighted Averaging for Distributed Training of Deep
Learning Models", arXiv 2403.04206 (2024). No official code was found; the update is re-implemented from the
paper's abstract (see ``docs/methods/grawa.md`` for the open choices and their defaults).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt.strategies import _comm
from lightning_autoopt.strategies._checks import check_choice, check_number, check_period, check_strength
from lightning_autoopt.strategies._grawa_math import grawa_weights, layer_norms, model_norm, weighted_term
from lightning_autoopt.strategies._registry import register_strategy
from lightning_autoopt.strategies.local_update import LocalUpdateStrategy

_LEVELS = ("model", "layer")
_STATISTICS = ("mean_over_period", "last")


class GRAWAStrategy(LocalUpdateStrategy):
    """Every ``period`` optimizer steps, pull every worker toward a centre weighted by inverse gradient norms.

    ``w_m = (||g_m|| + eps)^-q / sum_k (||g_k|| + eps)^-q``, ``x_C = sum_m w_m x_m`` and
    ``x_m <- x_m - pull_strength * (x_m - x_C)``. Workers in flatter regions (small gradients) get more weight.
    With ``level="layer"`` (LGRAWA) the weights are computed separately for every parameter tensor from that
    tensor's gradient norm. With equal norms (or ``exponent=0``) the weights are exactly ``1/M`` and, with
    ``pull_strength=1``, a round is plain model averaging.

    Gradient norms are read inside the optimizer step, right after the closure ran backward: *before* gradient
    clipping and before weight decay is added by the optimizer; under AMP they are divided by the grad scaler's
    scale (i.e. measured on unscaled gradients). A step whose gradient norm is NaN/inf is not used (counted in
    ``dist/nonfinite_events``); a worker with no finite norm in a period gets weight 0 in that round.

    Communication per round: one all-gather of the tiny norm vector (1 float64 per rank for MGRAWA, one per
    parameter tensor for LGRAWA, plus 3 for the rank's health: finite flag and fault counters) and one flat
    all-reduce of the weighted parameters. Synchronous periodic rounds replace the paper's asynchronous variants.

    A non-finite replica (see :class:`LocalUpdateStrategy`) gets weight 0, contributes zeros to the centre (not
    ``0 * x``: NaN x 0 is NaN), and is replaced by the centre with its optimizer state cleared.

    Logged per round: ``dist/grad_norm`` (this rank's statistic, model level), ``dist/grawa_weight`` (this rank's
    weight; mean over layers for LGRAWA), ``dist/grawa_weight_max``, ``dist/consensus_distance`` and the base's
    byte counters.

    Args:
        level: ``"model"`` (MGRAWA) or ``"layer"`` (LGRAWA, one weight per parameter tensor); ``None`` takes the
            class default (``"model"`` here, ``"layer"`` for :class:`LGRAWAStrategy`).
        period: Optimizer steps between rounds (default 16, the LSGD/SDTL value; the paper's is not known here).
        pull_strength: ``lambda`` in [0, 1]; 1 replaces each replica by the centre (default 0.1, as LSGD).
        exponent: ``q`` in ``w ∝ ||g||^-q`` (1 follows "inversely proportional" in the abstract; 2 is the other
            reading found in third-party summaries; 0 is plain averaging).
        eps: Added to every norm so a zero gradient does not get an infinite weight.
        statistic: ``"mean_over_period"`` (mean of the per-step norms since the last round, default) or
            ``"last"`` (the norm of the last step before the round).
        buffer_policy: See :class:`LocalUpdateStrategy`.
        eval_policy: ``"average"`` (default), ``"leader"`` or ``"local"``.
        consensus_every: See :class:`LocalUpdateStrategy`. Off (``0``) by default: it costs one full-model
            diagnostic all-reduce per logged round here.
        **kwargs: Forwarded to :class:`LocalUpdateStrategy` / ``DDPStrategy``.

    Raises:
        ValueError: For an unknown level or statistic, a period < 1, a pull strength outside [0, 1], a negative
            exponent or a non-positive ``eps``.

    Example::

        trainer = Trainer(accelerator="cpu", devices=4, strategy=GRAWAStrategy(level="layer", period=8))
        trainer = Trainer(accelerator="cpu", devices=4, strategy="mgrawa")  # or "lgrawa", "mgrawa_spawn", ...
    """

    strategy_name = "mgrawa"
    default_level = "model"

    def __init__(
        self,
        level: str | None = None,
        period: int = 16,
        pull_strength: float = 0.1,
        exponent: float = 1.0,
        eps: float = 1e-8,
        statistic: str = "mean_over_period",
        buffer_policy: str = "local",
        eval_policy: str = "average",
        consensus_every: int = 0,
        **kwargs: Any,
    ) -> None:
        level = self.default_level if level is None else level
        self.level = check_choice("level", level, _LEVELS, "model = MGRAWA, layer = LGRAWA")
        self.statistic = check_choice("statistic", statistic, _STATISTICS)
        self.exponent = check_number("exponent", exponent, 0.0)
        self.eps = check_number("eps", eps, 0.0, low_open=True)
        self.period = check_period("period", period)
        self.pull_strength = check_strength("pull_strength", pull_strength)
        super().__init__(
            buffer_policy=buffer_policy, eval_policy=eval_policy, consensus_every=consensus_every, **kwargs
        )
        # per-period accumulators (persisted): sums of finite per-step norms, their count, and the last one
        self._layer_sum: Tensor | None = None
        self._model_sum = 0.0
        self._count = 0
        self._last_layer: Tensor | None = None

    # ------------------------------------------------------------------ norm recording
    def _grad_scale(self) -> float:
        scaler = getattr(self.precision_plugin, "scaler", None)
        if scaler is not None and hasattr(scaler, "get_scale") and scaler.is_enabled():
            return float(scaler.get_scale())
        return 1.0

    def record_gradient_norms(self) -> None:
        """Read this step's per-parameter gradient norms (unscaled, pre-clipping) into the period statistics."""
        per_layer = layer_norms([p.grad for p in self.params]) / self._grad_scale()
        if not _flat.all_finite(per_layer):
            self.note_nonfinite()
            return
        if self._layer_sum is None:
            self._layer_sum = torch.zeros_like(per_layer)
        self._layer_sum += per_layer
        self._model_sum += float(model_norm(per_layer))
        self._count += 1
        self._last_layer = per_layer

    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any = None, **kwargs: Any) -> Any:
        def closure_then_record(*args: Any, **kw: Any) -> Any:
            out = closure(*args, **kw)
            self.record_gradient_norms()
            return out

        return super().optimizer_step(optimizer, closure_then_record, model, **kwargs)

    def statistic_norms(self) -> Tensor:
        """This rank's norm statistic: shape ``(1,)`` for the model level, ``(num_params,)`` for the layer level.

        ``+inf`` when no finite norm was recorded in the period (the worker then gets weight 0).
        """
        n_layers = len(self.params)
        width = 1 if self.level == "model" else n_layers
        if self._count == 0 or self._layer_sum is None or self._last_layer is None:
            return torch.full((width,), math.inf, dtype=torch.float64)
        if self.statistic == "last":
            per_layer = self._last_layer
            return model_norm(per_layer) if self.level == "model" else per_layer.clone()
        if self.level == "model":
            return torch.tensor([self._model_sum / self._count], dtype=torch.float64)
        return self._layer_sum / self._count

    # ------------------------------------------------------------------ rounds
    @override
    def round_due(self, step: int) -> bool:
        return step % self.period == 0

    @override
    def on_round(self, step: int) -> None:
        mine = self.statistic_norms()
        width = mine.numel()
        # one all-gather: every rank's norm statistic plus its health (finite flag, fault counters)
        row = torch.cat([mine, self.health_tail(True)]).to(self.root_device)
        gathered, sent = _comm.all_gather_(row)
        self.count_bytes(sent, op="all_gather")
        self.read_health(gathered[:, width:].sum(dim=0))  # raises on every rank when no replica is finite
        included = gathered[:, width] > 0.5
        weights = grawa_weights(gathered[:, :width], exponent=self.exponent, eps=self.eps, include=included)
        my_weights = weights[self.global_rank]

        flat = self.flat_params()
        if self.replica_finite:
            sizes = [p.numel() for p in self.params]
            center = weighted_term(flat, my_weights, sizes=sizes if self.level == "layer" else None)
        else:  # contribute zeros: weight 0 times a NaN replica would still be NaN
            center = torch.zeros_like(flat)
        self.count_bytes(_comm.all_reduce_sum_(center))
        if self.consensus_due():
            self.log_consensus(flat)
        if self.replica_finite:
            self.write_params(_comm.leader_pull_(flat, center, self.pull_strength))
        else:
            self.heal_(center)
        self.average_buffers()

        model_stat = mine if self.level == "model" else model_norm(mine)
        self.log_value("dist/grad_norm", float(model_stat.reshape(-1)[0]))
        self.log_value("dist/grawa_weight", float(my_weights.mean()))
        self.log_value("dist/grawa_weight_max", float(weights.max()))
        self._layer_sum, self._model_sum, self._count, self._last_layer = None, 0.0, 0, None

    # ------------------------------------------------------------------ state
    @override
    def extra_state_dict(self) -> dict[str, Any]:
        return {
            "layer_sum": self._layer_sum,
            "model_sum": self._model_sum,
            "count": self._count,
            "last_layer": self._last_layer,
        }

    @override
    def load_extra_state_dict(self, state: Mapping[str, Any]) -> None:
        self._layer_sum = state.get("layer_sum")
        self._model_sum = float(state.get("model_sum", 0.0))
        self._count = int(state.get("count", 0))
        self._last_layer = state.get("last_layer")


class LGRAWAStrategy(GRAWAStrategy):
    """Layer-level GRAWA: :class:`GRAWAStrategy` whose ``level`` defaults to ``"layer"`` (registered as ``lgrawa``)."""

    strategy_name = "lgrawa"
    default_level = "layer"


register_strategy(GRAWAStrategy)
register_strategy(LGRAWAStrategy)
