"""SharpnessProbe: log loss-landscape sharpness measures during training without changing training.

Lightning adapter around the pure functions of :mod:`lightning_autoopt.landscape`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt.landscape.batch_loss import (
    BatchLoss,
    LossSpec,
    TrainingStepLoss,
    check_loss_spec,
    describe_loss,
    has_class_scores,
    resolve_loss,
)
from lightning_autoopt.landscape.loss import (
    Batch,
    evaluation_mode,
    make_fixed_batches,
    single_loader,
    to_training_device,
)
from lightning_autoopt.landscape.registry import (
    check_measure_kwargs,
    compute_measure,
    get_measure,
    list_measures,
    needs_class_scores,
)
from lightning_autoopt.landscape.snapshot import ParamSnapshot

__all__ = ["SharpnessProbe"]


class SharpnessProbe(Callback):
    """Measure the sharpness of the current weights every few epochs or optimizer steps, and log it.

    At each probe every measure in ``measures`` (see :func:`lightning_autoopt.landscape.list_measures`) is computed
    on a fixed subset of ``max_batches × batch_size`` samples, drawn once from the *dataset* of the train (or val)
    dataloader (not by iterating the trainer's loader, whose sampler RNG would advance) with a private generator
    seeded by ``seed``, collated with that loader's ``collate_fn`` and moved to the module's device through
    Lightning's own batch-transfer hooks (``on_before_batch_transfer``, ``transfer_batch_to_device``,
    ``on_after_batch_transfer``), so probe batches look exactly like training batches: tensors, tuples/lists of
    any length, or dicts. The loss is the sample-weighted mean in eval mode, fp32, autocast off. The same ``seed``
    is used at every probe (common random numbers), so changes over training reflect the model rather than
    Monte-Carlo noise.

    The loss follows one contract, ``loss_fn(module, batch) -> scalar`` (:mod:`lightning_autoopt.landscape.
    batch_loss`), chosen when training starts (``on_train_start``, before the first step) and checked on a probe
    batch, so a loss that does not fit the model stops ``fit`` with a message naming the options instead of
    logging a wrong number:

    * ``loss_fn=None`` (default): the module's ``landscape_loss(batch)`` if it defines one; else a loss that
      ``forward`` returns; else cross-entropy (integer targets, >= 2 class scores) or MSE (float targets) on the
      module's output, with the inputs/target read from the batch and ``forward``'s signature (``(x, y, ...)``
      tuples, ``forward(inputs, target)``, dicts with a ``y``/``target``/``label(s)`` key); else the loss returned
      by ``training_step`` (automatic optimization only; ``self.log`` is muted during the call);
    * ``"cross_entropy"``, ``"mse"``, ``"training_step"``: that choice, checked against the model;
    * a callable ``loss_fn(module, batch) -> scalar`` or its import path (``"mypkg.losses.my_loss"``, for YAML).

    Training is not changed at all: weights, buffers, ``requires_grad``, ``.grad``, train/eval modes and the global
    RNG are snapshotted and restored bit for bit, and the probe runs only from training hooks
    (``on_train_epoch_end`` or ``on_train_batch_end``), never from validation, which runs under inference mode.

    Logged: ``sharpness/<measure>`` through ``pl_module.log`` (epoch-level with ``every_n_epochs``, step-level
    with ``every_n_steps``). A non-finite loss or weights give ``nan`` for that probe; training goes on.

    Distributed: rank 0 computes and broadcasts the values, so every rank logs and stores identical numbers (with
    local-update strategies, whose replicas differ between syncs, the values describe rank 0's replica). Every rank
    resolves the loss at ``on_train_start``, so a misfit fails on all ranks alike.

    Resume: the history of all probes (and, for ``pac_bayes``, the initial weights) lives in :meth:`state_dict`.

    Args:
        measures: Registered measure names, e.g. ``["lpf", "hessian_top"]``.
        every_n_epochs: Probe after every n-th training epoch (the default is every epoch when neither schedule is
            given).
        every_n_steps: Probe after every n-th optimizer step (``trainer.global_step``) instead.
        data: ``"train"`` or ``"val"``: which dataset the probe subset comes from.
        max_batches: Number of probe batches.
        batch_size: Probe batch size (default: the source loader's batch size, else 64).
        seed: Seed of the private generator (subset choice and all measure randomness).
        measure_kwargs: Per-measure overrides of the registry defaults, e.g. ``{"lpf": {"num_samples": 20}}``.
        normalize: Measure a filter-normalised deep copy of the model (scale-invariant measures, as in the LPF-SGD
            reference); the model itself is never modified.
        loss_fn: ``None`` (pick from the module and the batch), ``"cross_entropy"``, ``"mse"``,
            ``"training_step"``, a callable ``loss_fn(module, batch) -> scalar`` or its dotted import path.

    Raises:
        ValueError: On an unknown measure or measure argument, both schedules given, a non-positive count, an
            unknown ``data``, or a ``loss_fn`` that is neither a known name, an importable path nor a callable. When
            training starts: a loss that does not fit the model, or ``shannon`` / ``pac_bayes(target="accuracy")``
            with a loss that has no class scores.

    Example::

        probe = SharpnessProbe(measures=["lpf", "hessian_top"], measure_kwargs={"lpf": {"num_samples": 20}})
        trainer = Trainer(callbacks=[probe])
        # a model trained on its own objective: SharpnessProbe(loss_fn="mypkg.losses.my_loss")
    """

    def __init__(
        self,
        measures: Sequence[str] = ("lpf",),
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        data: Literal["train", "val"] = "train",
        max_batches: int = 4,
        batch_size: int | None = None,
        seed: int = 0,
        measure_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        normalize: bool = False,
        loss_fn: str | Callable[..., Any] | None = None,
    ) -> None:
        measures = list(measures) if not isinstance(measures, str) else [measures]
        if not measures:
            raise ValueError(f"`measures` must name at least one measure from {list_measures()}.")
        for name in measures:
            get_measure(name)
        if len(set(measures)) != len(measures):
            raise ValueError(f"`measures` has duplicates: {measures}.")
        if every_n_epochs is not None and every_n_steps is not None:
            raise ValueError(
                "Give at most one of `every_n_epochs` and `every_n_steps` (neither = every epoch), got "
                f"every_n_epochs={every_n_epochs!r} and every_n_steps={every_n_steps!r}."
            )
        if every_n_epochs is None and every_n_steps is None:
            every_n_epochs = 1
        for arg, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{arg}` must be a positive int or None, got {value!r}.")
        if data not in ("train", "val"):
            raise ValueError(f"`data` must be 'train' or 'val', got {data!r}.")
        if not isinstance(max_batches, int) or max_batches < 1:
            raise ValueError(f"`max_batches` must be a positive int, got {max_batches!r}.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
        check_loss_spec(loss_fn)
        kwargs = {k: dict(v) for k, v in (measure_kwargs or {}).items()}
        for name, options in kwargs.items():
            if name not in measures:
                raise ValueError(f"`measure_kwargs` has an entry for {name!r}, which is not in `measures` {measures}.")
            check_measure_kwargs(name, options)
            if "init_params" in options:
                raise ValueError("`measure_kwargs` must not set `init_params`; the probe saves them at fit start.")
        scored = [n for n in measures if needs_class_scores(n, kwargs.get(n))]
        if scored and loss_fn in ("mse", "training_step"):
            raise ValueError(
                f"Measures {scored} need class scores and labels, which loss_fn={loss_fn!r} does not give; use "
                "loss_fn=None/'cross_entropy' with (x, y) classification batches, or drop them."
            )
        self.measures = measures
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.data = data
        self.max_batches = max_batches
        self.batch_size = batch_size
        self.seed = seed
        self.measure_kwargs = kwargs
        self.normalize = normalize
        self.loss_fn: LossSpec = loss_fn
        self.history: list[dict[str, float]] = []
        self._init_params: torch.Tensor | None = None
        self._last_step = -1
        self._batches: list[Batch] | None = None
        self._loss: BatchLoss | None = None
        self._warned_nonfinite = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(measures=self.measures, data=self.data, seed=self.seed)

    @property
    def loss(self) -> BatchLoss | None:
        """The loss the probe measures (resolved from ``loss_fn`` when training starts; ``None`` before)."""
        return self._loss

    @property
    def batches(self) -> list[Batch] | None:
        """The fixed probe batches, on the module's device, as the loss sees them (``None`` before training)."""
        return self._batches

    # ---------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.loss_fn == "training_step":
            reason = TrainingStepLoss.why_not(pl_module)
            if reason is not None:
                raise ValueError(f"SharpnessProbe(loss_fn='training_step'): {reason}; give another `loss_fn`.")
        # Runs before a checkpoint's weights are loaded, so these are the true initial weights; on resume
        # load_state_dict then replaces them with the ones saved by the first run.
        if "pac_bayes" in self.measures and self._init_params is None:
            self._init_params = _flat.flatten([p for p in pl_module.parameters() if p.requires_grad]).cpu()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank draws the (deterministic) subset and resolves the loss, so a misfit stops all ranks alike
        # before the first training step instead of mid-run on rank 0 only.
        self._prepare(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._probe(trainer, pl_module, on_step=False)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # on_train_batch_end fires per micro-batch; act once per optimizer step
        if self.every_n_steps is None or step == self._last_step or step == 0 or step % self.every_n_steps:
            return
        self._last_step = step
        self._probe(trainer, pl_module, on_step=True)

    # ---------------------------------------------------------------- probing
    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, on_step: bool) -> None:
        values: dict[str, float] = {}
        if trainer.is_global_zero:
            batches = self._prepare(trainer, pl_module)
            values = self.measure(pl_module, batches)
        # every rank takes part in the broadcast (never a collective behind a rank-dependent branch)
        values = trainer.strategy.broadcast(values, src=0)
        if not all(math.isfinite(v) for v in values.values()) and not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn("SharpnessProbe: a measure was not finite (NaN/inf loss or weights); logged as nan.")
        for name, value in values.items():
            pl_module.log(f"sharpness/{name}", value, on_step=on_step, on_epoch=not on_step, sync_dist=False)
        self.history.append({"epoch": float(trainer.current_epoch), "step": float(trainer.global_step), **values})

    def measure(self, model: torch.nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        """Compute every configured measure of ``model`` on ``batches`` (the model is left unchanged).

        Uses the loss resolved at the start of training, else ``loss_fn`` (resolved on ``batches``).
        """
        loss: LossSpec = self._loss if self._loss is not None else self.loss_fn
        out: dict[str, float] = {}
        for name in self.measures:
            options: dict[str, Any] = dict(self.measure_kwargs.get(name, {}))
            if get_measure(name).needs_init:
                options["init_params"] = self._init_params
            out[name] = compute_measure(
                name, model, batches, loss_fn=loss, seed=self.seed, normalize=self.normalize, **options
            )
        return out

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Batch]:
        """Draw the probe subset and resolve the loss once (idempotent)."""
        if self._batches is None:
            self._batches = [to_training_device(trainer.strategy, pl_module, b) for b in self._draw(trainer, pl_module)]
        if self._loss is None:
            with ParamSnapshot(pl_module), evaluation_mode(pl_module):
                try:
                    self._loss = resolve_loss(self.loss_fn, pl_module, self._batches[0])
                except ValueError as err:
                    raise ValueError(f"SharpnessProbe: {err}") from err
            scored = [n for n in self.measures if needs_class_scores(n, self.measure_kwargs.get(n))]
            if scored and not has_class_scores(self._loss):
                raise ValueError(
                    f"SharpnessProbe: measures {scored} need class scores and labels, but the loss "
                    f"{describe_loss(self._loss)} has none. Use (x, y) classification batches with loss_fn=None or "
                    "'cross_entropy', give a `loss_fn` object with a `predict(module, batch) -> (scores, labels)` "
                    "method, or drop those measures."
                )
            rank_zero_info(f"SharpnessProbe: measuring the loss {describe_loss(self._loss)}.")
        return self._batches

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Batch]:
        loader = self._source_loader(trainer, pl_module)
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise ValueError(
                f"SharpnessProbe(data={self.data!r}) needs a DataLoader with a `dataset` to draw its fixed subset from."
            )
        batch_size = self.batch_size or getattr(loader, "batch_size", None) or 64
        collate = getattr(loader, "collate_fn", None)
        return make_fixed_batches(
            dataset, self.max_batches * batch_size, batch_size, seed=self.seed, collate_fn=collate
        )

    def _source_loader(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        if self.data == "train":
            loader: Any = trainer.train_dataloader
        else:
            loader = trainer.val_dataloaders
            if loader is None:
                # Building a DataLoader does not draw from any RNG (its sampler only does so when iterated).
                datamodule = getattr(trainer, "datamodule", None)
                source = datamodule if datamodule is not None else pl_module
                loader = source.val_dataloader()
        loader = single_loader(loader)
        if loader is None or not isinstance(loader, DataLoader) and not hasattr(loader, "dataset"):
            raise ValueError(f"SharpnessProbe(data={self.data!r}) found no {self.data} dataloader to probe.")
        return loader

    # ---------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(h) for h in self.history],
            "init_params": self._init_params,
            "last_step": self._last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        if state_dict.get("init_params") is not None:
            self._init_params = state_dict["init_params"]
        self._last_step = int(state_dict.get("last_step", -1))
