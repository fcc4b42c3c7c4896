"""Shared base of the local-update strategies (LSGD, EASGD, local SGD, GRAWA, D-PSGD, AL-DSGD).

Workers train their own replica with no per-step gradient all-reduce and meet only every few optimizer steps in a
*round* (a leader pull, an elastic update, an average, ...). The base owns what every method needs: no DDP wrapping,
the initial broadcast, step counting, byte accounting, logging, worker groups, the training-loss window, non-finite
counting and resume of every rank's counters. The pieces around it live next to it:

* :mod:`~lightning_autoopt.strategies._policy`: which weights are evaluated, saved and handed back
  (:meth:`~lightning_autoopt.strategies._policy.PolicyWeightsMixin.policy_weights`), per-rank checkpoints;
* :mod:`~lightning_autoopt.strategies._comm`: every collective (flat buffers built with :mod:`lightning_autoopt._flat`);
* :mod:`~lightning_autoopt.strategies._checks`: argument checks; :mod:`~lightning_autoopt.strategies._registry`:
  :func:`register_strategy`; :mod:`~lightning_autoopt.strategies._elastic`: ``torchrun`` restarts.

Writing a new method is a subclass with ``strategy_name``, its ``__init__`` arguments, :meth:`round_due` and
:meth:`on_round` (plus :meth:`extra_state_dict` / :meth:`load_extra_state_dict` for any state it keeps), e.g.::

    class MyAveraging(LocalUpdateStrategy):
        strategy_name = "myavg"

        def __init__(self, period: int = 8, **kwargs: Any) -> None:
            self.period = check_period("period", period)
            super().__init__(**kwargs)

        def round_due(self, step: int) -> bool:
            return step % self.period == 0

        def on_round(self, step: int) -> None:
            flat = self.flat_params()
            mean = flat.clone()
            self.count_bytes(_comm.all_reduce_mean_(mean))
            self.write_params(mean)

    register_strategy(MyAveraging)  # "myavg", "myavg_spawn", "myavg_fork"

The full guide, with a tested example, is ``docs/methods/local_update.md``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt.strategies import _comm
from lightning_autoopt.strategies._checks import check_choice, check_count
from lightning_autoopt.strategies._elastic import setup_restarted_process_group, torchrun_restart_attempt
from lightning_autoopt.strategies._policy import PolicyWeightsMixin, to_cpu

_BUFFER_POLICIES = ("local", "average")
_DDP_ONLY = ("ddp_comm_hook", "ddp_comm_state", "model_averaging_period")


class LocalUpdateStrategy(PolicyWeightsMixin, DDPStrategy):
    """Base for strategies whose workers train locally and communicate in periodic rounds.

    * The model is **not** wrapped in ``DistributedDataParallel``: no gradient all-reduce. Rank 0's initial
      parameters and buffers are broadcast once at the start of fitting (not on resume, where each rank reloads its
      own replica).
    * Rounds are counted in optimizer steps. :meth:`optimizer_step` runs the local step, then
      :meth:`on_local_step`, then :meth:`on_round` when :meth:`round_due` says so. Lightning calls it once per real
      optimizer step under both automatic and manual optimization (not on accumulation micro-batches).
    * The training loss of the step is read from the optimizer closure's return value (automatic optimization:
      the closure returns ``training_step``'s loss, divided by ``accumulate_grad_batches``, which is undone here);
      under manual optimization the closure returns nothing, so :meth:`step_loss` falls back to
      ``trainer.callback_metrics[loss_key]`` (log the loss with ``self.log(loss_key, loss)`` *before*
      ``opt.step()``). :meth:`record_step_loss` keeps the last few losses in :attr:`recent_losses`.
    * A NaN/inf loss or gradient never drives a decision; :meth:`note_nonfinite` counts it
      (``nonfinite_events``, logged as ``dist/nonfinite_events``).
    * Worker groups (:meth:`setup_groups`): contiguous blocks of ranks, by default one per node, for methods with
      group rounds (LSGD's local leaders, hierarchical local SGD).
    * Evaluation policy and checkpoints: see :class:`~lightning_autoopt.strategies._policy.PolicyWeightsMixin`
      (``eval_policy``, :meth:`policy_weights`, every rank's replica in the checkpoint under ``CHECKPOINT_KEY``).

    Logged signals (per round, through ``pl_module.log``): ``dist/bytes_sent`` (bytes this rank sent in the round,
    see :mod:`lightning_autoopt.strategies._comm` for the convention), ``dist/bytes_sent_total``, ``dist/rounds``,
    ``dist/consensus_distance`` (when computed), plus the subclass's own (``dist/leader``, ...).

    Args:
        buffer_policy: ``"local"`` keeps each rank's buffers (BatchNorm statistics) as they are; ``"average"``
            averages floating-point buffers within the round's group at every round (one extra all-reduce).
        eval_policy: Which weights are validated during fit and saved as the checkpoint's ``"state_dict"``:
            ``"local"``, ``"average"``, ``"leader"`` (subclasses may add more).
        consensus_every: Compute and log ``dist/consensus_distance`` every this many rounds (``0`` disables). Where a
            method does not already compute the replica mean this costs one extra flat all-reduce; those bytes are
            counted in ``dist/diagnostic_bytes_total``, not in ``dist/bytes_sent``.
        loss_key: Metric name read from ``trainer.callback_metrics`` when the closure returns no loss (manual
            optimization).
        **kwargs: Forwarded to :class:`~lightning.pytorch.strategies.DDPStrategy` (``start_method``,
            ``process_group_backend``, ``timeout``, ...).

    Raises:
        ValueError: On an unknown policy, a negative ``consensus_every``, a DDP-only option or (when the Trainer is
            built) a world size below 2.
    """

    strategy_name: ClassVar[str] = ""

    def __init__(
        self,
        buffer_policy: str = "local",
        eval_policy: str = "average",
        consensus_every: int = 1,
        loss_key: str = "train_loss",
        **kwargs: Any,
    ) -> None:
        check_choice("buffer_policy", buffer_policy, _BUFFER_POLICIES)
        check_count("consensus_every", consensus_every, 0, "0 disables")
        for bad in _DDP_ONLY:
            if kwargs.get(bad) is not None:
                raise ValueError(f"`{bad}` is a DDP option and has no effect here; remove it.")
        super().__init__(eval_policy=eval_policy, **kwargs)  # PolicyWeightsMixin checks eval_policy
        self.buffer_policy = buffer_policy
        self.consensus_every = consensus_every
        self.loss_key = loss_key
        # counters persisted in checkpoints
        self.num_steps = 0
        self.num_rounds = 0
        self.bytes_sent_total = 0
        self.diagnostic_bytes_total = 0
        self.nonfinite_events = 0
        self.skipped_rounds = 0
        self.recent_losses: deque[float] = deque(maxlen=1)
        # worker groups (setup_groups)
        self.group: Any = None
        self.group_ranks: list[int] = []
        # transient
        self._round_bytes = 0
        self._pending_logs: dict[str, float] = {}
        self._closure_output: Any = None

    # ------------------------------------------------------------------ subclass API
    def round_due(self, step: int) -> bool:
        """Whether a communication round runs after optimizer step ``step`` (1-based). Must be rank-independent."""
        return False

    def on_round(self, step: int) -> None:
        """Run one round after optimizer step ``step``: collectives on flat buffers, then write the new weights."""

    def on_before_local_step(self, step: int) -> None:
        """Called before optimizer step ``step`` runs (e.g. to keep a copy of the parameters)."""

    def on_local_step(self, step: int) -> None:
        """Called after every local optimizer step, before any round (metrics, proximal pulls)."""

    def setup_round_state(self) -> None:
        """Called once at the start of fitting after the initial broadcast: create subgroups and stored copies."""

    def extra_state_dict(self) -> dict[str, Any]:
        """This rank's method-specific state for checkpoints (tensors are moved to CPU by the base)."""
        return {}

    def load_extra_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state_dict` returned."""

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def resumed(self) -> bool:
        """``True`` while fitting resumed this rank's own replica and state from a checkpoint."""
        return self._restored_replica

    def flat_params(self) -> Tensor:
        """A new flat copy of the parameters."""
        return _flat.flatten(self.params)

    def write_params(self, flat: Tensor) -> None:
        """Write a flat parameter buffer back into the module."""
        _flat.unflatten_(flat, self.params)

    def count_bytes(self, n: int) -> None:
        """Add ``n`` bytes to this round's ``dist/bytes_sent``."""
        self._round_bytes += int(n)

    def gather_scalar(self, value: float, group: Any = None) -> Tensor:
        """All-gather one float per rank of ``group`` (counted in the round's bytes)."""
        out = _comm.all_gather_scalar(value, group=group, device=self.root_device)
        self.count_bytes(8)
        return out

    def average_buffers(self, group: Any = None) -> None:
        """Average floating buffers within ``group`` when ``buffer_policy="average"`` (one all-reduce)."""
        if self.buffer_policy != "average":
            return
        buffers = self.float_buffers
        if not buffers:
            return
        flat = _flat.flatten(buffers)
        self.count_bytes(_comm.all_reduce_mean_(flat, group=group))
        _flat.unflatten_(flat, buffers)

    def consensus_due(self) -> bool:
        """Whether this round should compute ``dist/consensus_distance``."""
        return self.consensus_every > 0 and self.num_rounds % self.consensus_every == 0

    def log_consensus(self, flat: Tensor, mean: Tensor | None = None) -> None:
        """Log ``dist/consensus_distance`` of ``flat`` over the world; ``mean`` avoids a diagnostic all-reduce."""
        if mean is None:
            mean = flat.clone()
            self.diagnostic_bytes_total += _comm.all_reduce_mean_(mean)
        distance, n = _comm.consensus_distance(flat, mean)
        self.diagnostic_bytes_total += n
        self.log_value("dist/consensus_distance", distance)

    def log_value(self, name: str, value: float) -> None:
        """Queue a scalar for ``pl_module.log`` at the end of this optimizer step."""
        self._pending_logs[name] = float(value)

    def note_nonfinite(self) -> None:
        """Count one NaN/inf loss or gradient (``nonfinite_events``, logged as ``dist/nonfinite_events``)."""
        self.nonfinite_events += 1
        self.log_value("dist/nonfinite_events", self.nonfinite_events)

    # ------------------------------------------------------------------ worker groups
    def setup_groups(self, group_size: int | None) -> None:
        """Create the worker groups (all of them, identically on every rank): sets :attr:`group`, :attr:`group_ranks`.

        ``group_size=None`` groups by node (``devices`` per node; one group on a single node). Call it from
        :meth:`setup_round_state` (a collective).

        Raises:
            ValueError: If the group size does not divide the world size or differs between ranks.
        """
        world = self.world_size
        size = group_size if group_size is not None else (self.num_processes if self.num_nodes > 1 else world)
        _comm.contiguous_groups(world, size)  # validates
        sizes = _comm.all_gather_scalar(float(size), device=self.root_device)
        if not bool((sizes == sizes[0]).all()):
            raise ValueError(f"inconsistent group sizes across ranks: {sizes.tolist()}; pass the same group_size.")
        self.group, self.group_ranks = _comm.new_groups(world, size)

    @property
    def has_subgroups(self) -> bool:
        """Whether the workers form more than one group (so group rounds differ from world rounds)."""
        return 0 < len(self.group_ranks) < self.world_size

    def group_round_due(self, step: int, group_period: int | None) -> bool:
        """Whether a group round runs at ``step``: a ``group_period`` is set, there are subgroups, and it divides."""
        return group_period is not None and self.has_subgroups and step % group_period == 0

    # ------------------------------------------------------------------ training loss
    def keep_losses(self, size: int) -> None:
        """Keep the last ``size`` losses in :attr:`recent_losses` (a window for leader choices)."""
        self.recent_losses = deque(self.recent_losses, maxlen=size)

    def record_step_loss(self) -> float:
        """Append this step's training loss to :attr:`recent_losses` (NaN/inf included, and counted); return it."""
        loss = self.step_loss()
        if not math.isfinite(loss):
            self.note_nonfinite()
        self.recent_losses.append(loss)
        return loss

    def step_loss(self) -> float:
        """The training loss of the step just taken (see the class docstring for where it comes from).

        Raises:
            RuntimeError: If no loss is available (closure returned nothing and ``loss_key`` was not logged).
        """
        out = self._closure_output
        if isinstance(out, Mapping):
            out = out.get("loss")
        if isinstance(out, Tensor) and out.numel() == 1:
            scale = 1
            lm = self.lightning_module
            if lm is not None and lm._trainer is not None and lm.automatic_optimization:
                scale = lm.trainer.accumulate_grad_batches
            return float(out.detach().float().item()) * scale
        if isinstance(out, (int, float)):
            return float(out)
        lm = self.lightning_module
        if lm is not None and lm._trainer is not None:
            value = lm.trainer.callback_metrics.get(self.loss_key)
            if value is not None:
                return float(value)
        raise RuntimeError(
            f"{type(self).__name__} could not read the training loss: return the loss from `training_step` "
            f"(automatic optimization) or log it with `self.log({self.loss_key!r}, loss)` before `opt.step()` "
            "(manual optimization), or set `loss_key`."
        )

    # ------------------------------------------------------------------ Lightning overrides
    @override
    def _configure_launcher(self) -> None:
        world = self.num_nodes * self.num_processes
        if world < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 processes (got devices*num_nodes={world}): use "
                "`devices>=2` (or several nodes), or plain single-device training without this strategy."
            )
        super()._configure_launcher()

    @override
    def setup_distributed(self) -> None:
        """Like DDP's, but a ``torchrun`` restart gets a process group on a fresh, attempt-prefixed store.

        See :mod:`lightning_autoopt.strategies._elastic` for why; outside TorchElastic restarts this is exactly
        ``DDPStrategy.setup_distributed``.
        """
        attempt = torchrun_restart_attempt()
        if attempt is None:
            super().setup_distributed()
        else:
            setup_restarted_process_group(self, attempt)

    @override
    def configure_ddp(self) -> None:
        """Do not wrap in DDP (no gradient all-reduce); broadcast rank 0's start point unless resuming."""
        _comm.require_process_group()
        if not self._restored_replica:
            flat = self.flat_state()
            _comm.broadcast_(flat, src=0)
            self.write_state(flat)
        self.setup_round_state()
        self._groups_ready = True

    @override
    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: Any = None,
        **kwargs: Any,
    ) -> Any:
        captured: list[Any] = []

        def recording_closure(*args: Any, **kw: Any) -> Any:
            out = closure(*args, **kw)
            if not captured:
                captured.append(out)
            return out

        step = self.num_steps + 1
        self.on_before_local_step(step)
        output = super().optimizer_step(optimizer, recording_closure, model, **kwargs)
        self._closure_output = captured[0] if captured else output
        self.num_steps = step
        self.on_local_step(step)
        if self.round_due(step):
            _comm.require_process_group()
            self._round_bytes = 0
            self.on_round(step)
            self.num_rounds += 1
            self.bytes_sent_total += self._round_bytes
            self.log_value("dist/bytes_sent", self._round_bytes)
            self.log_value("dist/bytes_sent_total", self.bytes_sent_total)
            self.log_value("dist/rounds", self.num_rounds)
        self._closure_output = None
        self._flush_logs()
        return output

    def _flush_logs(self) -> None:
        if not self._pending_logs:
            return
        lm = self.lightning_module
        if lm is not None and lm._trainer is not None:
            for name, value in self._pending_logs.items():
                lm.log(name, value, on_step=True, on_epoch=False, sync_dist=False, batch_size=1)
        self._pending_logs = {}

    # ------------------------------------------------------------------ checkpoints
    @override
    def strategy_state_dict(self) -> dict[str, Any]:
        """This rank's full strategy state: counters, the loss window, plus :meth:`extra_state_dict`."""
        return to_cpu(
            {
                "class": type(self).__name__,
                "num_steps": self.num_steps,
                "num_rounds": self.num_rounds,
                "bytes_sent_total": self.bytes_sent_total,
                "diagnostic_bytes_total": self.diagnostic_bytes_total,
                "nonfinite_events": self.nonfinite_events,
                "skipped_rounds": self.skipped_rounds,
                "leader": self.leader,
                "recent_losses": list(self.recent_losses),
                "extra": self.extra_state_dict(),
            }
        )

    @override
    def load_strategy_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`strategy_state_dict`.

        Raises:
            ValueError: If another strategy class wrote the state.
        """
        if state.get("class") not in (None, type(self).__name__):
            raise ValueError(
                f"checkpoint was written by {state.get('class')}, not {type(self).__name__}; resume with the "
                "same strategy or load the weights only."
            )
        self.num_steps = int(state["num_steps"])
        self.num_rounds = int(state["num_rounds"])
        self.bytes_sent_total = int(state["bytes_sent_total"])
        self.diagnostic_bytes_total = int(state.get("diagnostic_bytes_total", 0))
        self.nonfinite_events = int(state["nonfinite_events"])
        self.skipped_rounds = int(state["skipped_rounds"])
        self.leader = state["leader"]
        extra = state.get("extra", {})
        # checkpoints written before the window moved into the base kept it in the method's extra state
        losses = state.get("recent_losses", extra.get("losses", []))
        self.recent_losses = deque((float(v) for v in losses), maxlen=self.recent_losses.maxlen)
        self.load_extra_state_dict(extra)
