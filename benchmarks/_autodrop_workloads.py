"""The five AutoDrop benchmark workloads and a LightningModule that trains any of them under any LR method.

Shared by ``autodrop_traces.py`` (constant-LR ω traces for the offline design) and ``autodrop_vs_schedules.py``
(the benchmark). Every workload is small enough for one CPU core.

Workloads (one fixed budget each, chosen where a decay helps: cosine beats constant there):

* ``mnist1d_350``: MNIST-1D with 64 000 samples (44 800 train: 350 steps/epoch at batch 128), CNN width 32.
* ``mnist1d_28``:  MNIST-1D with the default 5 000 samples (28 steps/epoch), CNN width 32.
* ``digits``:      scikit-learn 8×8 digits as 64-step signals (20 steps/epoch at batch 64), CNN width 16.
* ``friedman``:    Friedman #1 regression (5 000 samples, noise 1), MLP 10-64-64-1, MSE on standardised targets.
* ``charlm``:      character-level LM on Python's own docs (``pydoc_data.topics``), 2-layer pre-LN causal
  Transformer (d 64, 4 heads), cross-entropy in nats per character. (Lightning's demo ``Transformer`` is not used:
  fed as in its ``LightningTransformer``, the decoder sees the very token it predicts, because its causal mask keeps
  the diagonal, and its positional encoding adds one position's vector to every position.)

Budgets, LR and weight decay per workload are in ``WORKLOADS`` (SGD, momentum 0.9; classifiers at weight decay 5e-3,
where a decay helps on these budgets; at 5e-4 a constant LR was as good as cosine).

Methods (``METHODS``): ``autodrop`` (defaults), ``autodrop_v1`` (the first default, before the sensitivity study:
x0.2 per drop, re-armed after each drop), ``autodrop_reference`` (the paper's ``|Δω| < θ`` rule with the
reference scripts' θ), ``constant``, ``cosine`` (per step, to 0 at the end of the budget), ``multistep`` (×0.2 at
50 % and 75 % of the budget: a hand-picked schedule), ``plateau`` (ReduceLROnPlateau on val_loss, ×0.2, patience
3 validations) and ``schedulefree`` (Schedule-Free SGD, Defazio et al. 2024, lr ×10 the workload's SGD lr, the low
end of the package README's "10x-50x" advice, ``optimizer.train()``/``.eval()`` around training/evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

from lightning_autoopt.data import DigitsDataModule, MNIST1DDataModule
from lightning_autoopt.data.regression import Friedman1DataModule
from lightning_autoopt.data.text import CharTextDataModule
from lightning_autoopt.models import Classifier

METHODS = (
    "autodrop",
    "autodrop_v1",
    "autodrop_reference",
    "constant",
    "cosine",
    "multistep",
    "plateau",
    "schedulefree",
)
VALIDATIONS_PER_RUN = 50  # validation every budget/50 optimizer steps, for every method (plateau, curves)


class TinyCausalLM(nn.Module):
    """Pre-LN causal Transformer over characters: embedding + learned positions, encoder layers, linear head."""

    def __init__(self, vocab_size: int, context: int, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        h = self.embed(ids) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    task: str  # "classify" | "regress" | "lm"
    make_data: Callable[[], pl.LightningDataModule]
    make_net: Callable[[pl.LightningDataModule], nn.Module]
    lr: float
    epochs: int
    weight_decay: float = 5e-4
    metric: str = "test_acc"  # test_acc (higher is better) or test_loss (lower is better)

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "test_acc"


def _mnist1d_net(dm: pl.LightningDataModule) -> nn.Module:
    return Classifier(arch="cnn", width=32).net


def _digits_net(dm: pl.LightningDataModule) -> nn.Module:
    return Classifier(arch="cnn", width=16, input_length=64).net


def _mlp(dm: pl.LightningDataModule) -> nn.Module:
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def _lm(dm: pl.LightningDataModule) -> nn.Module:
    assert isinstance(dm, CharTextDataModule)
    dm.setup("fit")
    return TinyCausalLM(dm.vocab_size, dm.context)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "mnist1d_350",
            "MNIST-1D 64k (350 steps/epoch), CNN w32",
            "classify",
            lambda: MNIST1DDataModule(batch_size=128, num_samples=64000, seed=0),
            _mnist1d_net,
            lr=0.05,
            epochs=10,
            weight_decay=5e-3,
        ),
        Workload(
            "mnist1d_28",
            "MNIST-1D 5k (28 steps/epoch), CNN w32",
            "classify",
            lambda: MNIST1DDataModule(batch_size=128, num_samples=5000, seed=0),
            _mnist1d_net,
            lr=0.05,
            epochs=80,
            weight_decay=5e-3,
        ),
        Workload(
            "digits",
            "sklearn digits (20 steps/epoch), CNN w16",
            "classify",
            lambda: DigitsDataModule(batch_size=64, seed=0),
            _digits_net,
            lr=0.1,
            epochs=60,
            weight_decay=5e-3,
        ),
        Workload(
            "friedman",
            "Friedman #1 regression (55 steps/epoch), MLP",
            "regress",
            lambda: Friedman1DataModule(num_samples=5000, batch_size=64, seed=0),
            _mlp,
            lr=0.05,
            epochs=120,
            weight_decay=0.0,
            metric="test_loss",
        ),
        Workload(
            "charlm",
            "char LM on Python docs (pre-LN Transformer)",
            "lm",
            lambda: CharTextDataModule(context=64, batch_size=32, seed=0, val_fraction=0.05, test_fraction=0.05),
            _lm,
            lr=1.0,
            epochs=6,
            weight_decay=0.0,
            metric="test_loss",
        ),
    )
}


class BenchModule(pl.LightningModule):
    """Trains ``net`` on a workload's task with SGD (momentum 0.9) under one LR ``method``.

    Schedules are stepped per optimizer step over ``total_steps``; ``plateau`` steps a ReduceLROnPlateau by hand
    after each validation (so it sees the fresh val_loss); ``schedulefree`` switches the optimizer between
    train and eval modes around training and evaluation.
    """

    def __init__(
        self, net: nn.Module, task: str, method: str, lr: float, weight_decay: float, total_steps: int
    ) -> None:
        super().__init__()
        self.net, self.task, self.method = net, task, method
        self.lr, self.weight_decay, self.total_steps = lr, weight_decay, total_steps
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss_and_acc(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = batch
        out = self(x)
        if self.task == "classify":
            return F.cross_entropy(out, y), (out.argmax(-1) == y).float().mean()
        if self.task == "regress":
            return F.mse_loss(out, y), None
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)), None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_and_acc(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch: Any, stage: str) -> None:
        loss, acc = self._loss_and_acc(batch)
        n = batch[0].shape[0]
        self.log(f"{stage}_loss", loss, on_epoch=True, batch_size=n)
        if acc is not None:
            self.log(f"{stage}_acc", acc, on_epoch=True, batch_size=n)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # ------------------------------------------------------------------ optimizers and schedules
    def configure_optimizers(self) -> Any:
        if self.method == "schedulefree":
            import schedulefree

            return schedulefree.SGDScheduleFree(
                self.parameters(), lr=10 * self.lr, momentum=0.9, weight_decay=self.weight_decay
            )
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        total = self.total_steps
        if self.method == "cosine":
            lam: Callable[[int], float] = _Cosine(total)
        elif self.method == "multistep":
            lam = _MultiStep(total)
        else:
            if self.method == "plateau":
                self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.2, patience=3)
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_validation_epoch_end(self) -> None:
        if self._plateau is not None and not self.trainer.sanity_checking:
            self._plateau.step(float(self.trainer.callback_metrics["val_loss"]))

    def _sf(self, mode: str) -> None:
        if self.method == "schedulefree" and self._trainer is not None:
            for opt in self.trainer.optimizers:
                getattr(opt, mode)()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._sf("train")  # idempotent: schedulefree swaps the weights only when the mode changes

    def on_validation_start(self) -> None:
        self._sf("eval")

    def on_test_start(self) -> None:
        self._sf("eval")

    def on_train_end(self) -> None:
        self._sf("eval")  # evaluate (test) at the averaged point x, as Schedule-Free prescribes


class _Cosine:
    def __init__(self, total: int) -> None:
        self.total = max(1, total)

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total) / self.total))


class _MultiStep:
    def __init__(self, total: int) -> None:
        self.milestones = (int(0.5 * total), int(0.75 * total))

    def __call__(self, step: int) -> float:
        return 0.2 ** sum(step >= m for m in self.milestones)


def total_steps(workload: Workload, datamodule: pl.LightningDataModule) -> int:
    datamodule.setup("fit")
    return workload.epochs * len(datamodule.train_dataloader())


def make_trainer(workload: Workload, steps: int, callbacks: list[pl.Callback], root: str, **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=max(1, steps // VALIDATIONS_PER_RUN),
        check_val_every_n_epoch=None,
        gradient_clip_val=1.0 if workload.task == "lm" else None,
        default_root_dir=root,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def run_method(
    workload: Workload,
    method: str,
    seed: int,
    datamodule: pl.LightningDataModule,
    callbacks: list[pl.Callback] | None = None,
    root: str = "benchmarks/out/lightning",
) -> dict[str, Any]:
    """Train one (workload, method, seed) and test the final weights; returns the test metrics and the trainer."""
    steps = total_steps(workload, datamodule)
    pl.seed_everything(seed, verbose=False)
    module = BenchModule(
        workload.make_net(datamodule), workload.task, method, workload.lr, workload.weight_decay, steps
    )
    trainer = make_trainer(workload, steps, list(callbacks or []), root)
    trainer.fit(module, datamodule=datamodule)
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    return {"test": {k: float(v) for k, v in test.items()}, "trainer": trainer, "module": module}
