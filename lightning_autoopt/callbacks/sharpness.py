"""SharpnessProbe: log loss-landscape sharpness measures during training without changing training.

Lightning adapter around the pure functions of :mod:`lightning_autoopt.landscape`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt.landscape.loss import Batch, make_fixed_batches
from lightning_autoopt.landscape.registry import check_measure_kwargs, compute_measure, get_measure, list_measures

__all__ = ["SharpnessProbe"]


class SharpnessProbe(Callback):
    """Measure the sharpness of the current weights every few epochs or optimizer steps, and log it.

    At each probe every measure in ``measures`` (see :func:`lightning_autoopt.landscape.list_measures`) is computed
    on a fixed subset of ``max_batches × batch_size`` samples, drawn once from the *dataset* (not by iterating the
    trainer's loader, whose sampler RNG would advance) with a private generator seeded by ``seed``. The loss is the
    sample-weighted mean in eval mode, fp32, autocast off. The same ``seed`` is used at every probe (common random
    numbers), so changes over training reflect the model rather than Monte-Carlo noise.

    Training is not changed at all: weights, buffers, ``requires_grad``, ``.grad``, train/eval modes and the global
    RNG are snapshotted and restored bit for bit, and the probe runs only from training hooks
    (``on_train_epoch_end`` or ``on_train_batch_end``), never from validation, which runs under inference mode.

    Logged: ``sharpness/<measure>`` through ``pl_module.log`` (epoch-level with ``every_n_epochs``, step-level
    with ``every_n_steps``). A non-finite loss or weights give ``nan`` for that probe; training goes on.

    Distributed: rank 0 computes and broadcasts the values, so every rank logs and stores identical numbers (with
    local-update strategies, whose replicas differ between syncs, the values describe rank 0's replica).

    Resume: the history of all probes (and, for ``pac_bayes``, the initial weights) lives in :meth:`state_dict`.

    Args:
        measures: Registered measure names, e.g. ``["lpf", "hessian_top"]``.
        every_n_epochs: Probe after every n-th training epoch. Set to ``None`` when using ``every_n_steps``.
        every_n_steps: Probe after every n-th optimizer step (``trainer.global_step``) instead.
        data: ``"train"`` or ``"val"``: which dataset the probe subset comes from.
        max_batches: Number of probe batches.
        batch_size: Probe batch size (default: the source loader's batch size, else 64).
        seed: Seed of the private generator (subset choice and all measure randomness).
        measure_kwargs: Per-measure overrides of the registry defaults, e.g. ``{"lpf": {"num_samples": 20}}``.
        normalize: Measure a filter-normalised deep copy of the model (scale-invariant measures, as in the LPF-SGD
            reference); the model itself is never modified.
        loss_fn: ``"cross_entropy"`` or ``"mse"``, applied to ``pl_module(x)``.

    Raises:
        ValueError: On an unknown measure or measure argument, both or neither schedule given, a non-positive count,
            or an unknown ``data``/``loss_fn``.

    Example::

        probe = SharpnessProbe(measures=["lpf", "hessian_top"], measure_kwargs={"lpf": {"num_samples": 20}})
        trainer = Trainer(callbacks=[probe])
    """

    def __init__(
        self,
        measures: Sequence[str] = ("lpf",),
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        data: Literal["train", "val"] = "train",
        max_batches: int = 4,
        batch_size: int | None = None,
        seed: int = 0,
        measure_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        normalize: bool = False,
        loss_fn: Literal["cross_entropy", "mse"] = "cross_entropy",
    ) -> None:
        measures = list(measures) if not isinstance(measures, str) else [measures]
        if not measures:
            raise ValueError(f"`measures` must name at least one measure from {list_measures()}.")
        for name in measures:
            get_measure(name)
        if len(set(measures)) != len(measures):
            raise ValueError(f"`measures` has duplicates: {measures}.")
        if (every_n_epochs is None) == (every_n_steps is None):
            raise ValueError(
                "Give exactly one of `every_n_epochs` and `every_n_steps` "
                "(set `every_n_epochs=None` to probe by steps)."
            )
        for arg, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{arg}` must be a positive int or None, got {value!r}.")
        if data not in ("train", "val"):
            raise ValueError(f"`data` must be 'train' or 'val', got {data!r}.")
        if not isinstance(max_batches, int) or max_batches < 1:
            raise ValueError(f"`max_batches` must be a positive int, got {max_batches!r}.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}.")
        if loss_fn not in ("cross_entropy", "mse"):
            raise ValueError(f"`loss_fn` must be 'cross_entropy' or 'mse', got {loss_fn!r}.")
        kwargs = {k: dict(v) for k, v in (measure_kwargs or {}).items()}
        for name, options in kwargs.items():
            if name not in measures:
                raise ValueError(f"`measure_kwargs` has an entry for {name!r}, which is not in `measures` {measures}.")
            check_measure_kwargs(name, options)
            if "init_params" in options:
                raise ValueError("`measure_kwargs` must not set `init_params`; the probe saves them at fit start.")
        self.measures = measures
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.data = data
        self.max_batches = max_batches
        self.batch_size = batch_size
        self.seed = seed
        self.measure_kwargs = kwargs
        self.normalize = normalize
        self.loss_fn = loss_fn
        self.history: list[dict[str, float]] = []
        self._init_params: torch.Tensor | None = None
        self._last_step = -1
        self._batches: list[Batch] | None = None
        self._warned_nonfinite = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(measures=self.measures, data=self.data, seed=self.seed)

    # ---------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Runs before a checkpoint's weights are loaded, so these are the true initial weights; on resume
        # load_state_dict then replaces them with the ones saved by the first run.
        if "pac_bayes" in self.measures and self._init_params is None:
            self._init_params = _flat.flatten([p for p in pl_module.parameters() if p.requires_grad]).cpu()

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
            values = self.measure(pl_module, self._probe_batches(trainer, pl_module))
        # every rank takes part in the broadcast (never a collective behind a rank-dependent branch)
        values = trainer.strategy.broadcast(values, src=0)
        if not all(math.isfinite(v) for v in values.values()) and not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn("SharpnessProbe: a measure was not finite (NaN/inf loss or weights); logged as nan.")
        for name, value in values.items():
            pl_module.log(f"sharpness/{name}", value, on_step=on_step, on_epoch=not on_step, sync_dist=False)
        self.history.append({"epoch": float(trainer.current_epoch), "step": float(trainer.global_step), **values})

    def measure(self, model: torch.nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        """Compute every configured measure of ``model`` on ``batches`` (the model is left unchanged)."""
        out: dict[str, float] = {}
        for name in self.measures:
            options: dict[str, Any] = dict(self.measure_kwargs.get(name, {}))
            if get_measure(name).needs_init:
                options["init_params"] = self._init_params
            out[name] = compute_measure(
                name, model, batches, loss_fn=self.loss_fn, seed=self.seed, normalize=self.normalize, **options
            )
        return out

    def _probe_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Batch]:
        if self._batches is None:
            loader = self._source_loader(trainer, pl_module)
            dataset = getattr(loader, "dataset", None)
            if dataset is None:
                raise ValueError(
                    f"SharpnessProbe(data={self.data!r}) needs a DataLoader over a map-style dataset to draw its "
                    "fixed subset from."
                )
            batch_size = self.batch_size or getattr(loader, "batch_size", None) or 64
            collate = getattr(loader, "collate_fn", None)
            self._batches = make_fixed_batches(
                dataset, self.max_batches * batch_size, batch_size, seed=self.seed, collate_fn=collate
            )
        return self._batches

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
        if isinstance(loader, Mapping):
            loader = next(iter(loader.values()))
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
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
