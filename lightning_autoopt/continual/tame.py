"""TAME: task-agnostic continual learning with a pool of experts, a loss-shift detector and a selector network."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_autoopt._history import BoundedHistory
from lightning_autoopt.continual._experts import build_module, check_spec
from lightning_autoopt.continual.buffer import ReservoirBuffer
from lightning_autoopt.continual.detector import DETECTOR_DEFAULTS, DetectorConfig, LossShiftDetector
from lightning_autoopt.continual.metrics import evaluate_tasks, match_detections, predict_in_chunks, task_mask_logits
from lightning_autoopt.continual.pruning import global_magnitude_prune, make_pruning_permanent, sparsity
from lightning_autoopt.landscape.batch_loss import BatchLoss, check_loss_spec, resolve_loss
from lightning_autoopt.landscape.loss import evaluation_mode

_BUFFER_MODES = ("class_balanced", "reservoir")
_SELECTOR_INDEX = 100_000  # seed index of the selector (experts use 0, 1, 2, ...)
_HISTORY_KEYS = ("batch", "expert", "loss", "loss_ema", "threshold")


class TAME(pl.LightningModule):
    """TAME (Zhu et al.): one expert network per detected task, a shift test on the loss, and a selector.

    Training consumes a task-free stream of ``(x, y)`` or ``(x, y, task_id)`` batches (the task id, if present, is
    only recorded to score the detector afterwards; the learner never uses it):

    1. The current expert computes its loss on the batch. Its detector (a
       :class:`~lightning_autoopt.continual.LossShiftDetector` per expert) updates the EMA and tests it against
       ``mean(window) + k * max(std(window), floor)``.
    2. No shift: the current expert trains on the batch -- one forward and one backward, as in plain training.
    3. Shift: the other experts are evaluated on the batch (only now; TAME's code evaluates all experts on every
       batch) and the first, in index order, whose tentative EMA ``alpha * loss + (1 - alpha) * active_ema`` is
       below its frozen threshold is re-used; otherwise a new expert is spawned (up to ``max_experts``).
    4. Every sample is offered to a reservoir buffer labelled with the active expert.
    5. At the end of the stream (``on_train_end``) the selector is trained on the buffer to predict the expert,
       pruned (global L1 magnitude) and fine-tuned; optionally the experts too. Inference routes each sample
       through the selector to one expert, whose argmax over all classes is the class-incremental prediction.

    Experts are built from ``expert``: a :mod:`lightning_autoopt.models` architecture name (``"mlp"``, ``"cnn"``,
    ``"resnet"`` with ``width``/``depth``) or ``{"class_path": "pkg.Net", "init_args": {...}}`` (the number of
    outputs is passed as ``num_classes``, or as the key named by ``output_arg``). Every expert has ``num_classes``
    outputs (global labels). All experts share one SGD optimizer with **one parameter group per expert** (its own LR
    schedule, stepped by the expert's own step count); experts without gradients are not touched, so it behaves as
    one optimizer per expert while keeping Lightning's checkpointing of optimizer state. Single device only.

    History: :attr:`history` records, per batch of the stream, the active expert, its loss, EMA and threshold, plus
    every shift with the expert it chose (re-used or spawned) and the true task changes when batches carry task
    ids. It is saved in the checkpoint (bounded: past 2048 batches every second one is dropped), and
    :func:`lightning_autoopt.plots.plot_tame` draws the experts over the stream from it.

    Args:
        expert: Expert architecture name or class-path dict.
        num_classes: Outputs of every expert (all classes of the stream).
        input_shape: Shape of one input without the batch dim; ``None`` takes ``datamodule.input_shape`` in
            ``setup`` (then a datamodule with that attribute is required).
        width: Width of the named architectures.
        depth: Depth of ``"resnet"``.
        lr: Expert learning rate (TAME: 0.1).
        momentum: Expert SGD momentum (TAME: 0.9).
        weight_decay: Expert weight decay (TAME: 5e-4).
        lr_milestones: Expert step counts at which its LR is multiplied by ``lr_gamma`` (``None``: constant).
        lr_gamma: LR factor at each milestone (TAME: 0.2).
        window, ema_alpha, k_sigma, std_floor, min_history, lag: Settings of every expert's shift test, documented
            once in :class:`~lightning_autoopt.continual.DetectorConfig` (each expert's detector is seeded with
            ``initial_loss = ln(num_classes)``, the loss of a uniform guess).
        sigmoid_logits: Apply ``sigmoid`` to the logits before the cross-entropy, as TAME's code does (bounds the
            loss, which changes the detector's statistics).
        max_experts: Cap on the pool; at the cap a shift re-uses the expert with the lowest tentative EMA.
        buffer_size: Selector buffer capacity.
        buffer_mode: ``"class_balanced"`` (one reservoir per true class, as TAME's code) or ``"reservoir"``
            (label-free).
        selector: Selector architecture (name or class-path dict); ``None`` = same as ``expert``.
        selector_epochs: Epochs over the buffer to train the selector.
        selector_lr: Selector SGD learning rate (momentum 0.9, weight decay 5e-4).
        selector_batch_size: Selector mini-batch size.
        selector_prune_amount: Fraction of the selector's Linear/Conv weights pruned after training (TAME: 0.5).
        expert_prune_amount: Fraction of each expert's weights pruned at the end of the stream (0 = off).
        finetune_epochs: Fine-tuning epochs after each pruning (on the buffer).
        finetune_lr: Fine-tuning learning rate.
        seed: Seeds the buffer and the selector's shuffling (private generators).
        loss_fn: The experts' loss, with the package's loss contract ``loss_fn(expert, (x, y)) -> scalar`` (see
            :mod:`lightning_autoopt.landscape.batch_loss`): a callable or its dotted import path (YAML), or
            ``"cross_entropy"``. ``None`` = cross-entropy of the logits (after ``sigmoid`` with
            ``sigmoid_logits``). The same loss trains the experts, feeds their shift detectors, scores the old
            experts at a shift and fine-tunes pruned experts; it is checked on the first batch. The selector always
            uses cross-entropy over the expert labels.

    Raises:
        ValueError: If an argument is out of range or ``expert``/``selector`` cannot be built.

    Example::

        model = TAME(expert="mlp", num_classes=10, window=35, ema_alpha=0.2)
        Trainer(max_epochs=1).fit(model, datamodule=TaskStreamDataModule(dataset="mnist1d", kind="split"))
        model.final_metrics["class_il_acc"]
    """

    def __init__(
        self,
        expert: str | dict[str, Any] = "mlp",
        num_classes: int = 10,
        input_shape: list[int] | None = None,
        width: int = 32,
        depth: int = 1,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.2,
        window: int = DETECTOR_DEFAULTS.window,
        ema_alpha: float = DETECTOR_DEFAULTS.ema_alpha,
        k_sigma: float = DETECTOR_DEFAULTS.k_sigma,
        std_floor: float = DETECTOR_DEFAULTS.std_floor,
        min_history: int | None = DETECTOR_DEFAULTS.min_history,
        lag: int = DETECTOR_DEFAULTS.lag,
        sigmoid_logits: bool = False,
        max_experts: int = 20,
        buffer_size: int = 1000,
        buffer_mode: str = "class_balanced",
        selector: str | dict[str, Any] | None = None,
        selector_epochs: int = 30,
        selector_lr: float = 0.05,
        selector_batch_size: int = 64,
        selector_prune_amount: float = 0.5,
        expert_prune_amount: float = 0.0,
        finetune_epochs: int = 5,
        finetune_lr: float = 0.005,
        seed: int = 0,
        loss_fn: str | Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        check_spec(expert, "expert")
        check_loss_spec(loss_fn)
        if loss_fn in ("auto", "training_step", "mse"):
            raise ValueError(
                f"TAME `loss_fn` must be None, 'cross_entropy', a callable loss_fn(expert, (x, y)) or its import "
                f"path, got {loss_fn!r} (experts are classifiers over `num_classes` outputs)."
            )
        if selector is not None:
            check_spec(selector, "selector")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}.")
        if lr <= 0 or selector_lr <= 0 or finetune_lr <= 0:
            raise ValueError(f"`lr`, `selector_lr`, `finetune_lr` must be > 0, got {lr}, {selector_lr}, {finetune_lr}.")
        if max_experts < 1:
            raise ValueError(f"`max_experts` must be >= 1, got {max_experts}.")
        if buffer_mode not in _BUFFER_MODES:
            raise ValueError(f"`buffer_mode` must be one of {_BUFFER_MODES}, got {buffer_mode!r}.")
        if buffer_size < num_classes:
            raise ValueError(f"`buffer_size` must be >= num_classes={num_classes}, got {buffer_size}.")
        for name, amount in (
            ("selector_prune_amount", selector_prune_amount),
            ("expert_prune_amount", expert_prune_amount),
        ):
            if not 0.0 <= amount < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {amount}.")
        if selector_epochs < 0 or finetune_epochs < 0 or selector_batch_size < 1:
            raise ValueError("`selector_epochs` and `finetune_epochs` must be >= 0, `selector_batch_size` >= 1.")
        if input_shape is not None and (len(input_shape) < 1 or any(int(s) < 1 for s in input_shape)):
            raise ValueError(f"`input_shape` must be a list of positive sizes, e.g. [1, 40], got {input_shape}.")
        self.save_hyperparameters()
        # Validates the detector settings eagerly (the same settings build every expert's detector).
        self.detector_config = DetectorConfig.pick(locals(), initial_loss=math.log(num_classes))
        self.automatic_optimization = False
        self.input_shape = None if input_shape is None else [int(s) for s in input_shape]
        self.experts = nn.ModuleList()
        self.selector_net: nn.Module | None = None
        self.detectors: list[LossShiftDetector] = []
        self.expert_steps: list[int] = []
        self.current = 0
        self.buffer = ReservoirBuffer(buffer_size, num_classes if buffer_mode == "class_balanced" else 1, seed=seed)
        self.batches_seen = 0
        self.num_nonfinite = 0
        self.shift_batches: list[int] = []
        self.spawn_batches: list[int] = []
        self.true_task_changes: list[tuple[int, int]] = []  # (batch, task id) where the true task changes
        self.task_expert_counts: dict[tuple[int, int], int] = {}
        self.final_metrics: dict[str, float] = {}
        self._expert_loss_fn: BatchLoss | None = None
        self._history = BoundedHistory(_HISTORY_KEYS)
        self.switch_experts: list[int] = []  # the expert chosen at each shift (same order as shift_batches)

    @property
    def history(self) -> dict[str, Any]:
        """The experts over the stream (a copy; plain lists).

        Keys: ``batch`` (index in the stream), ``expert`` (active after the batch), ``loss`` (the active expert's
        loss on the batch before its update; NaN for a skipped batch), ``loss_ema`` and ``threshold`` (its
        detector's; the threshold is NaN while the test is silent), one entry per batch (thinned evenly on long
        streams: ``every`` batches per entry, ``offered`` in all); ``shift_batches`` with ``switch_experts`` (the
        expert chosen at each), ``spawn_batches``, ``true_task_changes`` (``[batch, task id]`` pairs) and
        ``num_experts``.
        """
        out = self._history.as_dict()
        out["shift_batches"] = list(self.shift_batches)
        out["switch_experts"] = list(self.switch_experts)
        out["spawn_batches"] = list(self.spawn_batches)
        out["true_task_changes"] = [list(c) for c in self.true_task_changes]
        out["num_experts"] = self.num_experts
        return out

    def _record(self, expert: int, loss: float) -> None:
        detector = self.detectors[expert]
        armed = len(detector.window) >= detector.min_history and math.isfinite(detector.threshold)
        self._history.append(
            batch=self.batches_seen,
            expert=expert,
            loss=loss,
            loss_ema=detector.smoothed,
            threshold=detector.threshold if armed else math.nan,
        )

    @property
    def _hp(self) -> Any:
        """The saved hyperparameters (typed ``Any`` so attribute access type-checks)."""
        return self.hparams

    # ------------------------------------------------------------------ experts
    def _make_detector(self) -> LossShiftDetector:
        return LossShiftDetector(self.detector_config)

    def _build(self, spec: str | dict[str, Any], outputs: int, index: int) -> nn.Module:
        if self.input_shape is None:
            raise RuntimeError("TAME needs `input_shape` (give it, or use a datamodule with `input_shape`).")
        # Initialise from a seed of its own (global RNG untouched), so a resumed run spawns identical experts.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([self._hp.seed, index]).generate_state(1)[0]))
            return build_module(spec, outputs, self.input_shape, self._hp.width, self._hp.depth)

    def _spawn(self) -> int:
        expert = self._build(self._hp.expert, self._hp.num_classes, self.num_experts).to(self.device)
        self.experts.append(expert)
        self.detectors.append(self._make_detector())
        self.expert_steps.append(0)
        if self._trainer is not None and self.trainer.optimizers:
            self.trainer.optimizers[0].add_param_group(self._param_group(len(self.experts) - 1))
        return len(self.experts) - 1

    def _param_group(self, index: int) -> dict[str, Any]:
        return {"params": list(self.experts[index].parameters()), "lr": self._expert_lr(index)}

    def _expert_lr(self, index: int) -> float:
        milestones = self._hp.lr_milestones or []
        passed = sum(1 for m in milestones if self.expert_steps[index] >= m)
        return self._hp.lr * self._hp.lr_gamma**passed

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._hp.sigmoid_logits:
            logits = torch.sigmoid(logits)
        return F.cross_entropy(logits, y)

    def _expert_loss(self, expert: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """An expert's mean loss on ``(x, y)``: ``loss_fn`` if given (checked once), else :meth:`_loss`."""
        spec = self._hp.loss_fn
        if spec is None:
            return self._loss(expert(x), y)
        if self._expert_loss_fn is None:
            # Checked on a real batch, in eval mode and on a forked RNG so the check never shifts training.
            with torch.random.fork_rng(devices=[]), evaluation_mode(expert):
                self._expert_loss_fn = resolve_loss(spec, expert, (x, y))
        return self._expert_loss_fn(expert, (x, y))

    # ------------------------------------------------------------------ Lightning
    @override
    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:
            raise ValueError(
                "TAME runs on a single device (its expert pool changes during training); use devices=1. "
                "TaskShiftDetector alone supports several devices."
            )
        if self.input_shape is None:
            shape = (
                getattr(getattr(self.trainer, "datamodule", None), "input_shape", None)
                if self._trainer is not None
                else None
            )
            if shape is not None:
                self.input_shape = [int(s) for s in shape]
        if not self.experts and self.input_shape is not None:
            self._spawn()

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if not self.experts:
            raise RuntimeError("TAME needs `input_shape` to build its first expert before training.")
        groups = [self._param_group(i) for i in range(self.num_experts)]
        h = self._hp
        return torch.optim.SGD(groups, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class-incremental logits: each sample goes through the expert the selector picks for it."""
        return self.predict_with_routing(x)[0]

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """The expert index the selector picks for each sample (all 0 with a single expert or no selector yet)."""
        if self.selector_net is None or self.num_experts == 1:
            return torch.zeros(len(x), dtype=torch.int64, device=x.device)
        return self.selector_net(x).argmax(dim=1)

    def predict_with_routing(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, expert_index)`` with each sample's logits from its routed expert."""
        chosen = self.route(x)
        logits = torch.empty(len(x), self._hp.num_classes, device=x.device)
        for e in torch.unique(chosen).tolist():
            mask = chosen == e
            logits[mask] = self.experts[e](x[mask]).to(logits.dtype)
        return logits, chosen

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        x, y = batch[0], batch[1]
        task_id = int(batch[2][0]) if len(batch) > 2 else None
        if task_id is not None and (not self.true_task_changes or self.true_task_changes[-1][1] != task_id):
            self.true_task_changes.append((self.batches_seen, task_id))
        optimizer = cast(LightningOptimizer, self.optimizers())
        current = self.current
        loss = self._expert_loss(self.experts[current], x, y)
        value = float(loss.detach())
        if not math.isfinite(value):
            # Skipped and counted: a bad batch never triggers a shift and never updates an expert.
            self.num_nonfinite += 1
            self._record(current, math.nan)
            self.batches_seen += 1
            self.log("tame/nonfinite", float(self.num_nonfinite))
            return None
        detector = self.detectors[current]
        detector.observe(value)
        switched = detector.exceeds()
        if switched:
            current, value, loss = self._switch(x, y, current)
        # Train the (possibly new) current expert; the other groups have no gradient, so SGD leaves them alone.
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        group = optimizer.param_groups[current]
        group["lr"] = self._expert_lr(current)
        optimizer.step()
        self.expert_steps[current] += 1
        self.detectors[current].record(value)
        strata = y if self._hp.buffer_mode == "class_balanced" else None
        self.buffer.add(x, y, current, strata)
        if task_id is not None:
            key = (task_id, current)
            self.task_expert_counts[key] = self.task_expert_counts.get(key, 0) + 1
        self._record(current, value)
        self.batches_seen += 1
        self.log("tame/loss", loss.detach(), prog_bar=True)
        # Lightning's log() costs about as much as a tiny model's step: the slow-moving signals are logged on the
        # logger's cadence and at shifts only, so a no-shift step stays close to plain training.
        if switched or self.batches_seen % max(getattr(self.trainer, "log_every_n_steps", 50), 1) == 0:
            self.log("tame/loss_ema", float(self.detectors[current].smoothed or 0.0))
            self.log("tame/num_experts", float(self.num_experts))
        return loss.detach()

    def _switch(self, x: torch.Tensor, y: torch.Tensor, old: int) -> tuple[int, float, torch.Tensor]:
        """Shift detected: re-use the first old expert that fits the batch, else spawn one. Returns the new one."""
        self.shift_batches.append(self.batches_seen)
        candidates: list[tuple[int, float]] = []
        with torch.no_grad():
            for e in range(self.num_experts):
                if e == old:
                    continue
                expert = self.experts[e]
                was_training = expert.training
                expert.eval()
                loss_e = float(self._expert_loss(expert, x, y))
                expert.train(was_training)
                candidates.append((e, loss_e))
        chosen = next((e for e, loss_e in candidates if self.detectors[e].fits(loss_e)), None)
        if chosen is None and self.num_experts >= self._hp.max_experts:
            rank_zero_warn(f"TAME: `max_experts`={self._hp.max_experts} reached; re-using the closest expert.")
            chosen = min(candidates, key=lambda c: self.detectors[c[0]].tentative(c[1]))[0] if candidates else old
        if chosen is not None:
            loss_old = dict(candidates).get(chosen)
            if loss_old is not None:
                self.detectors[chosen].reactivate(loss_old)
            rank_zero_info(f"[TAME] shift at batch {self.batches_seen}: re-using expert {chosen}")
        else:
            chosen = self._spawn()
            self.spawn_batches.append(self.batches_seen)
            rank_zero_info(f"[TAME] shift at batch {self.batches_seen}: spawned expert {chosen}")
        self.current = chosen
        self.switch_experts.append(chosen)
        loss = self._expert_loss(self.experts[chosen], x, y)
        value = float(loss.detach())
        if chosen == self.num_experts - 1 and self.expert_steps[chosen] == 0:
            self.detectors[chosen].observe(value)
        return chosen, value, loss

    # ------------------------------------------------------------------ end of stream: selector and pruning
    @override
    def on_train_end(self) -> None:
        with torch.enable_grad():
            self.fit_selector()
            if self._hp.expert_prune_amount > 0:
                self.prune_experts(self._hp.expert_prune_amount)
        self.final_metrics.update(self.detection_report())
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "eval_tensors") and hasattr(datamodule, "task_classes"):
            x, y, t = datamodule.eval_tensors()
            self.final_metrics.update(self.evaluate(x, y, t, datamodule.task_classes))
        rank_zero_info("[TAME] " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.final_metrics.items()))

    def _train_on(
        self,
        net: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        epochs: int,
        lr: float,
        seed: int,
        expert: bool = False,
    ) -> None:
        if epochs == 0 or len(x) == 0:
            return
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(int(seed))
        bs = self._hp.selector_batch_size
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), bs):
                idx = order[i : i + bs]
                opt.zero_grad(set_to_none=True)
                xb, tb = x[idx].to(self.device), target[idx].to(self.device)
                (self._expert_loss(net, xb, tb) if expert else self._loss(net(xb), tb)).backward()
                opt.step()
        net.eval()

    def fit_selector(self) -> None:
        """Train the selector on the buffer to predict the expert label, then prune it and fine-tune it."""
        if self.num_experts < 2 or len(self.buffer) == 0:
            self.selector_net = None
            return
        h = self._hp
        x, _, label = self.buffer.tensors()
        spec = h.selector if h.selector is not None else h.expert
        self.selector_net = self._build(spec, self.num_experts, _SELECTOR_INDEX).to(self.device)
        self._train_on(self.selector_net, x, label, h.selector_epochs, h.selector_lr, h.seed)
        if h.selector_prune_amount > 0:
            global_magnitude_prune([self.selector_net], h.selector_prune_amount)
            self._train_on(self.selector_net, x, label, h.finetune_epochs, h.finetune_lr, h.seed + 1)
            make_pruning_permanent([self.selector_net])
        self.selector_net.eval()

    def prune_experts(self, amount: float) -> None:
        """Globally prune all experts' weights by magnitude and fine-tune each on its buffer samples."""
        global_magnitude_prune(list(self.experts), amount)
        x, y, label = self.buffer.tensors()
        for e, expert in enumerate(self.experts):
            mask = label == e
            self._train_on(expert, x[mask], y[mask], self._hp.finetune_epochs, self._hp.finetune_lr, e, expert=True)
        make_pruning_permanent(list(self.experts))

    # ------------------------------------------------------------------ evaluation
    def expert_of_task(self) -> dict[int, int]:
        """The expert that was active for most of each true task's batches (for selector accuracy)."""
        best: dict[int, tuple[int, int]] = {}
        for (task, expert), count in sorted(self.task_expert_counts.items()):
            if task not in best or count > best[task][1]:
                best[task] = (expert, count)
        return {task: e for task, (e, _) in best.items()}

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor, task_classes: list[list[int]]
    ) -> dict[str, float]:
        """Class-IL and task-IL accuracy (routed through the selector), oracle task-IL and selector accuracy.

        The accuracies are :func:`~lightning_autoopt.continual.metrics.evaluate_tasks` of the routed forward
        (``acc_task{t}`` included); ``selector_acc`` compares the routing with the expert that was active for most
        of each task's batches, and ``oracle_task_il_acc`` uses that expert for every sample of the task.
        """
        out = evaluate_tasks(self, x, y, task_ids, task_classes)
        out["num_experts"] = float(self.num_experts)
        mapping = self.expert_of_task()
        if not mapping:
            return out
        was_training = self.training
        self.eval()
        x, y, task_ids = x.to(self.device), y.to(self.device), task_ids.to(self.device)
        chosen = predict_in_chunks(self.route, x).to(self.device)
        oracle_expert = torch.tensor([mapping.get(int(t), 0) for t in task_ids.tolist()], device=x.device)
        out["selector_acc"] = (chosen == oracle_expert).float().mean().item()
        oracle_logits = torch.empty(len(x), self._hp.num_classes, device=x.device)
        for e in torch.unique(oracle_expert).tolist():
            m = oracle_expert == e
            oracle_logits[m] = self.experts[e](x[m]).to(oracle_logits.dtype)
        masked = task_mask_logits(oracle_logits, task_ids, task_classes)
        out["oracle_task_il_acc"] = (masked.argmax(1) == y).float().mean().item()
        self.train(was_training)
        return out

    def detection_report(self, max_delay: int = 50) -> dict[str, float]:
        """Detection delay and false detections against the true task changes seen in the stream."""
        if not self.true_task_changes:
            return {"detected_shifts": float(len(self.shift_batches))}
        boundaries = [b for b, _ in self.true_task_changes[1:]]
        report = match_detections(self.shift_batches, boundaries, max_delay=max_delay, stream_end=self.batches_seen)
        return {
            "detected_shifts": float(len(self.shift_batches)),
            "true_boundaries": float(len(boundaries)),
            "missed_boundaries": float(report["missed"]),
            "false_detections": float(report["false_detections"]),
            "mean_detection_delay": float("nan") if report["mean_delay"] is None else float(report["mean_delay"]),
            "max_detection_delay": float(max(report["delays"])) if report["delays"] else float("nan"),
        }

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits, _ = self.predict_with_routing(x)
        self.log("test/class_il_acc", (logits.argmax(1) == y).float().mean(), on_epoch=True)
        classes = getattr(getattr(self.trainer, "datamodule", None), "task_classes", None)
        if len(batch) > 2 and classes is not None:
            masked = task_mask_logits(logits, batch[2], classes)
            self.log("test/task_il_acc", (masked.argmax(1) == y).float().mean(), on_epoch=True)

    # ------------------------------------------------------------------ checkpointing (the pool changes size)
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tame"] = {
            "input_shape": self.input_shape,
            "num_experts": self.num_experts,
            "selector_outputs": None if self.selector_net is None else self.num_experts,
            "current": self.current,
            "detectors": [d.state_dict() for d in self.detectors],
            "expert_steps": list(self.expert_steps),
            "buffer": self.buffer.state_dict(),
            "batches_seen": self.batches_seen,
            "num_nonfinite": self.num_nonfinite,
            "shift_batches": list(self.shift_batches),
            "spawn_batches": list(self.spawn_batches),
            "true_task_changes": list(self.true_task_changes),
            "task_expert_counts": dict(self.task_expert_counts),
            "history": self.history,
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before loading the state dict and before configure_optimizers, so the pool (and
        # the optimizer's parameter groups) get the saved size first.
        state = checkpoint["tame"]
        self.input_shape = state["input_shape"]
        while self.num_experts < state["num_experts"]:
            self.experts.append(self._build(self._hp.expert, self._hp.num_classes, self.num_experts).to(self.device))
        self.detectors = []
        for s in state["detectors"]:
            det = self._make_detector()
            det.load_state_dict(s)
            self.detectors.append(det)
        if state["selector_outputs"] is not None:
            spec = self._hp.selector if self._hp.selector is not None else self._hp.expert
            self.selector_net = self._build(spec, state["selector_outputs"], _SELECTOR_INDEX).to(self.device)
        self.current = int(state["current"])
        self.expert_steps = [int(s) for s in state["expert_steps"]]
        self.buffer.load_state_dict(state["buffer"])
        self.batches_seen = int(state["batches_seen"])
        self.num_nonfinite = int(state["num_nonfinite"])
        self.shift_batches = list(state["shift_batches"])
        self.spawn_batches = list(state["spawn_batches"])
        self.true_task_changes = [tuple(c) for c in state["true_task_changes"]]
        self.task_expert_counts = dict(state["task_expert_counts"])
        history = state.get("history", {})  # absent in checkpoints written before it was recorded
        self._history.load(history)
        self.switch_experts = [int(e) for e in history.get("switch_experts", [])]

    def summary(self) -> dict[str, Any]:
        """Experts, parameters, spawn/shift batches, and the selector's sparsity."""
        params = sum(p.numel() for p in self.experts.parameters())
        out: dict[str, Any] = {
            "num_experts": self.num_experts,
            "expert_parameters": params,
            "shift_batches": list(self.shift_batches),
            "spawn_batches": list(self.spawn_batches),
        }
        if self.selector_net is not None:
            out["selector_parameters"] = sum(p.numel() for p in self.selector_net.parameters())
            out["selector_sparsity"] = sparsity([self.selector_net])
        return out


def _fmt(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"
