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
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.accelerators import Accelerator
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt._history import BoundedHistory
from lightning_autoopt.strategies import _comm
from lightning_autoopt.strategies._checks import check_choice, check_count, check_no_ddp_options
from lightning_autoopt.strategies._elastic import setup_restarted_process_group, torchrun_restart_attempt
from lightning_autoopt.strategies._policy import PolicyWeightsMixin, to_cpu

_BUFFER_POLICIES = ("local", "average")
_HEALTH_EXTRA = 2  # counters that travel with a round's world collective: non-finite events, heals
#: Columns of :attr:`LocalUpdateStrategy.history` (one row per round).
HISTORY_KEYS = ("step", "round", "bytes_sent_total", "consensus_distance", "leader", "losses", "healed", "nonfinite")


class NonFiniteReplicasError(RuntimeError):
    """Every replica is non-finite: nothing is left to heal from. Raised on every rank in the same round."""


class LocalUpdateStrategy(PolicyWeightsMixin, DDPStrategy):
    """Base for strategies whose workers train locally and communicate in periodic rounds.

    * The model is **not** wrapped in ``DistributedDataParallel``: no gradient all-reduce. Rank 0's initial
      parameters and buffers are broadcast once at the start of fitting (not on resume, where each rank reloads its
      own replica). DDP's own options (``find_unused_parameters``, ``bucket_cap_mb``, ``ddp_comm_hook``, ...) would
      have no effect and are refused.
    * Rounds are counted in optimizer steps. :meth:`optimizer_step` runs the local step, then
      :meth:`on_local_step`, then :meth:`run_round` (which calls :meth:`on_round`) when :meth:`round_due` says so.
      Lightning calls it once per real optimizer step under both automatic and manual optimization (not on
      accumulation micro-batches).
    * The training loss of the step is read from the optimizer closure's return value (automatic optimization:
      the closure returns ``training_step``'s loss, divided by ``accumulate_grad_batches``, which is undone here);
      under manual optimization the closure returns nothing, so :meth:`step_loss` falls back to
      ``trainer.callback_metrics[loss_key]`` (log the loss with ``self.log(loss_key, loss)`` *before*
      ``opt.step()``). :meth:`record_step_loss` keeps the last few losses in :attr:`recent_losses`.
    * **Non-finite isolation**: a NaN/inf loss or gradient never drives a decision and is counted in
      ``nonfinite_events``. At every round a replica whose parameters, floating buffers or round-step loss are not
      finite (:attr:`replica_finite` is ``False``) contributes nothing to any average, centre, pull or gossip (its
      contribution is replaced by zeros, never multiplied by 0: NaN x 0 is NaN), is never the leader, and is
      **healed** (:meth:`heal_`) from what the finite replicas produced (the mean, the centre, the leader, the
      neighbours' average, DiLoCo's global weights), with its optimizer state cleared. The count of finite
      replicas and the counters travel in the round's own world collective (:meth:`masked_mean`,
      :meth:`health_tail`), so every rank takes the same decision; when no replica is finite every rank raises
      :class:`NonFiniteReplicasError` in the same round. Checkpoints and the end of fit heal first
      (:meth:`heal_now`), so a saved replica is never NaN, and the evaluation policies ignore non-finite replicas.
      ``dist/nonfinite_events`` and ``dist/healed`` are world totals, logged identically by every rank.
    * Worker groups (:meth:`setup_groups`): contiguous blocks of ranks, by default one per node, for methods with
      group rounds (LSGD's local leaders, hierarchical local SGD).
    * Evaluation policy and checkpoints: see :class:`~lightning_autoopt.strategies._policy.PolicyWeightsMixin`
      (``eval_policy``, :meth:`policy_weights`, every rank's replica in the checkpoint under ``CHECKPOINT_KEY``).
    * Impossible configurations (world size 1, a ``group_size`` or graph that does not fit) fail when the
      ``Trainer`` is built, in the launching process, before any worker starts (:meth:`validate_world_size`).
    * Shutdown: the process groups the strategy creates are destroyed again: its subgroups at every ``teardown``;
      the default group at ``teardown`` under the ``spawn``/``fork`` launchers (after a barrier bounded by
      :attr:`shutdown_timeout_s`; without one after an exception), otherwise (``popen``, ``torchrun``: a ``test``
      may follow ``fit`` in the same process) at interpreter exit.

    Logged signals (per round, through ``pl_module.log``): ``dist/bytes_sent`` (bytes this rank sent in the round,
    see :mod:`lightning_autoopt.strategies._comm` for the convention), ``dist/bytes_sent_total``,
    ``dist/wire_bytes_sent_total`` (what this rank really put on the network under gloo's algorithms: a ring
    all-reduce sends ``2 (w - 1) / w`` of its buffer; the kernel's counters match it), ``dist/rounds``,
    ``dist/consensus_distance`` (when computed), ``dist/nonfinite_events``, ``dist/healed``, plus the subclass's own
    (``dist/leader``, ...).

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
        bn_recompute_batches: Re-estimate the BatchNorm statistics of the evaluated / saved policy weights on this
            many training batches per rank (``0``: off; see :class:`~lightning_autoopt.strategies._policy.
            PolicyWeightsMixin`). Useful with ``eval_policy="average"``/``"center"`` on models with BatchNorm.
        accelerator: See :class:`~lightning.pytorch.strategies.DDPStrategy` (normally set by the ``Trainer``).
        parallel_devices: See ``DDPStrategy`` (normally set by the ``Trainer``).
        cluster_environment: See ``DDPStrategy`` (e.g. a ``SLURMEnvironment``; detected by default).
        checkpoint_io: See ``DDPStrategy``.
        precision_plugin: See ``DDPStrategy`` (normally set by the ``Trainer``).
        process_group_backend: ``"gloo"`` or ``"nccl"``; default: by device.
        timeout: Timeout of every collective (``torch.distributed`` default: 30 minutes).
        start_method: ``"popen"`` (default), ``"spawn"``, ``"fork"`` or ``"forkserver"``.
        **ddp_options: Refused: every other ``DDPStrategy`` / ``DistributedDataParallel`` option configures the
            gradient all-reduce these strategies do not use.

    Raises:
        ValueError: On an unknown policy, a negative ``consensus_every``, a DDP-only or unknown option or (when the
            Trainer is built) a world size below 2 or a layout the method cannot run on.
    """

    strategy_name: ClassVar[str] = ""
    shutdown_timeout_s: ClassVar[float] = 30.0
    """Longest wait for the other ranks before the default process group is destroyed after a clean stage."""

    def __init__(
        self,
        buffer_policy: str = "local",
        eval_policy: str = "average",
        consensus_every: int = 1,
        loss_key: str = "train_loss",
        bn_recompute_batches: int = 0,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        **ddp_options: Any,
    ) -> None:
        check_no_ddp_options(type(self).__name__, ddp_options)
        check_choice("buffer_policy", buffer_policy, _BUFFER_POLICIES)
        check_count("consensus_every", consensus_every, 0, "0 disables")
        super().__init__(  # PolicyWeightsMixin checks eval_policy
            eval_policy=eval_policy,
            bn_recompute_batches=bn_recompute_batches,
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
        )
        self.buffer_policy = buffer_policy
        self.consensus_every = consensus_every
        self.loss_key = loss_key
        # counters persisted in checkpoints
        self.num_steps = 0
        self.num_rounds = 0
        self.bytes_sent_total = 0
        self.wire_bytes_total = 0.0
        self.diagnostic_bytes_total = 0
        self.nonfinite_events = 0
        self.skipped_rounds = 0
        self.healed = 0
        self.world_nonfinite_events = 0
        self.world_healed = 0
        self._events_reported = 0
        self._healed_reported = 0
        self.recent_losses: deque[float] = deque(maxlen=1)
        self._history = BoundedHistory(HISTORY_KEYS)
        # worker groups (setup_groups)
        self.group: Any = None
        self.group_ranks: list[int] = []
        # transient
        self.replica_finite = True
        self._round_bytes = 0
        self._round_wire_bytes = 0.0
        self._pending_logs: dict[str, float] = {}
        self.round_losses: list[float] | None = None  # every rank's loss (leader metric) gathered this round
        self._pending_mean = _comm.PendingMaskedSum()  # overlapped rounds: the average in flight
        self._overlap_group: Any = None
        self._round_consensus = math.nan
        self._closure_output: Any = None
        self._loss_recorded = False
        self._pending_nonfinite: Tensor | None = None
        self._heal_scopes: list[Any] = []
        self._failed = False

    # ------------------------------------------------------------------ subclass API
    def round_due(self, step: int) -> bool:
        """Whether a communication round runs after optimizer step ``step`` (1-based). Must be rank-independent."""
        return False

    def on_round(self, step: int) -> None:
        """Run one round after optimizer step ``step``: collectives on flat buffers, then write the new weights.

        Mask with :attr:`replica_finite`: a non-finite replica contributes nothing and is healed with :meth:`heal_`
        (:meth:`masked_mean` does the first part for an average).
        """

    def on_before_local_step(self, step: int) -> None:
        """Called before optimizer step ``step`` runs (e.g. to keep a copy of the parameters)."""

    def on_local_step(self, step: int) -> None:
        """Called after every local optimizer step, before any round (metrics, proximal pulls)."""

    def setup_round_state(self) -> None:
        """Called once at the start of fitting after the initial broadcast: create subgroups and stored copies."""

    def validate_world_size(self, world_size: int) -> None:
        """Raise a ``ValueError`` naming the argument when this configuration cannot run on ``world_size`` processes.

        Called when the ``Trainer`` is built, in the launching process, before any worker starts (world sizes below
        2 are refused before this is called). Must not communicate.
        """

    def reset_after_heal(self) -> None:
        """Forget this rank's method state that described the replica :meth:`heal_` just replaced (e.g. an EMA)."""

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

    def count_bytes(self, n: int, op: str = "all_reduce", group: Any = None, src: int | None = None) -> None:
        """Add one collective's ``n`` bytes to this round's ``dist/bytes_sent`` (and its wire bytes).

        Args:
            n: The payload under the ``dist/bytes_sent`` convention (the buffer's bytes; an all-gather: this rank's
                chunk; point-to-point: everything this rank sent).
            op: The collective, for ``dist/wire_bytes_sent_total`` (:func:`~lightning_autoopt.strategies._comm.
                wire_bytes`): ``"all_reduce"``, ``"broadcast"``, ``"all_gather"`` or ``"isend_irecv"``.
            group: The collective's process group (default: the world).
            src: Global rank of a broadcast's source.
        """
        self._round_bytes += int(n)
        self._round_wire_bytes += _comm.wire_bytes(op, int(n), group=group, src=src)

    def gather_scalar(self, value: float, group: Any = None) -> Tensor:
        """All-gather one float per rank of ``group`` (counted in the round's bytes)."""
        out = _comm.all_gather_scalar(value, group=group, device=self.root_device)
        self.count_bytes(8, op="all_gather", group=group)
        return out

    def average_buffers(self, group: Any = None) -> None:
        """Average floating buffers within ``group`` when ``buffer_policy="average"`` (one all-reduce).

        Only finite buffers enter the mean; every rank (a healed one included) takes it.
        """
        if self.buffer_policy != "average":
            return
        self._mean_buffers_into(group, only_nonfinite=False)

    def consensus_due(self) -> bool:
        """Whether this round should compute ``dist/consensus_distance``."""
        return self.consensus_every > 0 and self.num_rounds % self.consensus_every == 0

    def log_consensus(self, flat: Tensor, mean: Tensor | None = None) -> None:
        """Log ``dist/consensus_distance`` of ``flat`` over the world; ``mean`` avoids a diagnostic all-reduce.

        Non-finite replicas (:attr:`replica_finite` is ``False``) are left out; ``mean`` must then be the mean of
        the finite ones (as :meth:`masked_mean` returns it).
        """
        include = self.replica_finite
        if mean is None:
            summed, count, _, sent = _comm.masked_all_reduce(flat, include)
            self.diagnostic_bytes_total += sent
            if count == 0:  # the same count on every rank: all skip the second collective
                return
            mean = summed.div_(count)
        distance, n = _comm.consensus_distance(flat, mean, include=include)
        self.diagnostic_bytes_total += n
        self._round_consensus = float(distance)
        self.log_value("dist/consensus_distance", distance)

    def log_value(self, name: str, value: float) -> None:
        """Queue a scalar for ``pl_module.log`` at the end of this optimizer step."""
        self._pending_logs[name] = float(value)

    def note_nonfinite(self) -> None:
        """Count one NaN/inf loss or gradient in ``nonfinite_events`` (summed over the ranks at the next round)."""
        self.nonfinite_events += 1

    def finish_rounds(self) -> None:
        """Apply what is still in flight when training ends (overlapped rounds); called by ``on_train_end``."""

    # ------------------------------------------------------------------ overlapped averages
    def setup_overlap_group(self) -> None:
        """Create the process group overlapped averages run on (a collective: from :meth:`setup_round_state`).

        A second group over every rank, so the blocking collectives issued while an average is in flight (loss
        gathers, health checks, the evaluation policy, Lightning's own) do not queue behind it. Destroyed at
        ``teardown``.
        """
        self._destroy_overlap_group()
        self._overlap_group = _comm.new_world_group()

    def _destroy_overlap_group(self) -> None:
        if self._overlap_group is not None:
            _comm.destroy_group(self._overlap_group)
        self._overlap_group = None

    def launch_overlapped_mean(self, flat: Tensor) -> None:
        """Start the world's masked sum of ``flat`` (this replica now) on the overlap group without waiting.

        The bytes are counted in this round; the health tail travels with the data (masked as in
        :meth:`masked_mean`). Heals happen when the result is read, so none is counted in advance.
        """
        tail = self.health_tail(True, dtype=flat.dtype, heal_follows=False)
        group = self._overlap_group
        self.count_bytes(self._pending_mean.launch(flat, self.replica_finite, tail[1:].tolist(), group), group=group)

    def take_overlapped_mean(self) -> tuple[Tensor, Tensor] | None:
        """Wait for the last :meth:`launch_overlapped_mean`: ``(snapshot, mean of the finite snapshots)``.

        Returns:
            ``None`` when nothing is in flight (the first round).

        Raises:
            NonFiniteReplicasError: When no snapshot was finite at launch (on every rank alike).
        """
        if not self._pending_mean.pending:
            return None
        snapshot, summed, count, extra = self._pending_mean.take()
        self.read_health(torch.cat([torch.tensor([float(count)], dtype=torch.float64), extra]))
        device = self.root_device
        return snapshot.to(device), summed.div_(count).to(device)

    def apply_overlapped(self, snapshot: Tensor, target: Tensor) -> None:
        """``x <- x + (target - snapshot)``: the round's update, moved onto the steps taken since its launch.

        A replica that is non-finite now, or was at launch, is healed to ``target`` instead.
        """
        if self.replica_finite and _flat.all_finite(snapshot):
            flat = self.flat_params()
            flat.add_(target - snapshot)
            self.write_params(flat)
        else:
            self.heal_(target)
            self.replica_finite = True

    # ------------------------------------------------------------------ non-finite isolation
    def check_replica(self) -> bool:
        """Whether this replica can take part in a round: finite parameters, floating buffers and round-step loss."""
        return self._step_loss_finite() and _flat.all_finite(self.params) and _flat.all_finite(self.float_buffers)

    def health_tail(
        self, world: bool, dtype: torch.dtype = torch.float64, device: Any = "cpu", heal_follows: bool = True
    ) -> Tensor:
        """``[finite, events, heals]`` for a round's collective: whether this replica takes part, and counters.

        Append it to the data a round already sends (an all-reduce buffer, an all-gathered row) and pass the sum of
        the tails over the group to :meth:`read_health`. In a world-wide collective (``world=True``) it carries this
        rank's non-finite events and heals not yet reported, so every rank learns the world totals without an extra
        collective; group rounds send zeros there. With ``heal_follows`` (a round that heals every non-finite replica
        once the collective shows a finite one) the heal of this non-finite replica is counted in advance; pass
        ``False`` when the round's heals already happened. Counters are capped per round so their sum stays exact
        in ``dtype`` (the rest follows in later rounds).
        """
        tail = torch.zeros(1 + _HEALTH_EXTRA, dtype=dtype, device=device)
        tail[0] = 1.0 if self.replica_finite else 0.0
        if world:
            precount = heal_follows and not self.replica_finite
            tail[1:] = torch.tensor(self._take_counters(dtype, precount=precount), dtype=dtype)
        return tail

    def read_health(self, summed: Tensor, group: Any = None) -> int:
        """Read the summed :meth:`health_tail` of a round's collective over ``group``; returns the finite replicas.

        A world-wide round (``group`` is ``None``) updates and logs the world totals ``dist/nonfinite_events`` and
        ``dist/healed``.

        Raises:
            NonFiniteReplicasError: In a world-wide round where no replica is finite (on every rank alike).
        """
        values = [int(round(float(v))) for v in summed.reshape(-1).tolist()]
        n_finite = values[0]
        if group is None:
            self._add_world_counters(values[1:])
            if n_finite == 0:
                raise NonFiniteReplicasError(self._all_nonfinite_message())
        if n_finite < _comm.group_size(group) or (group is None and values[2] > 0):
            self._heal_scopes.append(group)  # someone is or was non-finite here: heal its floating buffers too
        return n_finite

    def masked_mean(self, flat: Tensor, group: Any = None) -> Tensor | None:
        """The mean of the finite replicas' ``flat`` over ``group`` in one all-reduce (bytes counted).

        This rank contributes zeros when :attr:`replica_finite` is ``False``; the count of finite replicas and the
        counters (:meth:`health_tail`) travel in the same buffer.

        Returns:
            The mean (a new tensor), or ``None`` in a group round where no replica of the group is finite.

        Raises:
            NonFiniteReplicasError: In a world-wide round where no replica is finite.
        """
        tail = self.health_tail(group is None, dtype=flat.dtype)
        summed, count, extra, sent = _comm.masked_all_reduce(flat, self.replica_finite, tail[1:].tolist(), group)
        self.count_bytes(sent, group=group)
        self.read_health(torch.cat([torch.tensor([float(count)], dtype=torch.float64), extra]), group)
        return summed.div_(count) if count > 0 else None

    def exchange_health(self) -> int:
        """A world all-reduce of :meth:`health_tail` alone (3 float64, counted): for rounds without a world collective.

        Call it after the round's heals (gossip: a replica heals only when it has a usable neighbour); the finite
        flag is then the replica's state after the round, which is non-finite everywhere only when it was before.

        Returns:
            The number of finite replicas.

        Raises:
            NonFiniteReplicasError: When no replica is finite.
        """
        tail = self.health_tail(True, device=self.root_device, heal_follows=False)
        self.count_bytes(_comm.all_reduce_sum_(tail))
        return self.read_health(tail.cpu())

    @torch.no_grad()
    def heal_(self, flat: Tensor, tensors: Sequence[Tensor] | None = None) -> None:
        """Replace this non-finite replica by ``flat`` (built from the finite replicas) and reset its local state.

        ``flat`` is written into ``tensors`` (default: the parameters). The optimizer state of every parameter is
        **cleared**, not zeroed: each ``torch.optim`` optimizer re-creates it lazily at the next step, exactly as for
        a fresh optimizer (SGD's momentum starts at the next gradient, Adam's moments at zero with its step count and
        bias correction restarted), whereas zeroing would keep Adam's step count and leave buffers that describe the
        diverged replica. The loss window and :meth:`reset_after_heal` state are forgotten too.
        """
        _flat.unflatten_(flat, self.params if tensors is None else tensors)
        self._reset_local_state()
        self.healed += 1
        self.replica_finite = True

    def heal_now(self) -> int:
        """Heal every non-finite replica now from the finite ones (a collective; a no-op outside ``fit``).

        Runs before a checkpoint is written and at the end of ``fit``, so no NaN replica is ever saved or handed
        back. The source is the evaluation policy's weights over the finite replicas (``"average"`` for
        ``eval_policy="local"``); parameters and floating buffers are replaced and the optimizer state cleared.
        Costs one all-reduce of :meth:`health_tail` (3 float64, counted in ``diagnostic_bytes_total``; it also
        brings the world fault totals up to date), plus the policy's collective when a replica is healed.

        Returns:
            The number of replicas healed (the same on every rank).

        Raises:
            NonFiniteReplicasError: When no replica is finite.
        """
        if not (self._groups_ready and _comm.dist_ready()):
            return 0
        swapped = self._swapped_local  # inside validation the replica waits there, the module holds the policy
        replica = swapped if swapped is not None else self.flat_state()
        finite = _flat.all_finite(replica)
        self.replica_finite = finite
        tail = self.health_tail(True, device=self.root_device)  # counts this rank's heal below in advance
        self.diagnostic_bytes_total += _comm.all_reduce_sum_(tail)
        n_finite = self.read_health(tail.cpu())  # raises on every rank when no replica is finite
        self._heal_scopes = []  # buffers are part of the policy weights written below
        world = _comm.group_size()
        if n_finite == world:
            return 0
        source = self.policy_flat("average" if self.eval_policy == "local" else self.eval_policy)
        if not finite:
            if swapped is not None:
                swapped.copy_(source)
            else:
                self.write_state(source)
            self._reset_local_state()
            self.healed += 1
            self.replica_finite = True
        return world - n_finite

    def _reset_local_state(self) -> None:
        params = set(self.params)
        for optimizer in self.optimizers:
            for p in list(optimizer.state):
                if p in params:
                    del optimizer.state[p]
        self.recent_losses.clear()
        self.reset_after_heal()

    def _take_counters(self, dtype: torch.dtype, precount: bool) -> list[float]:
        self._fold_nonfinite()
        cap = max(1, int(2.0 / torch.finfo(dtype).eps) // max(1, _comm.group_size() if _comm.dist_ready() else 1))
        events = min(self.nonfinite_events - self._events_reported, cap)
        heals = min(self.healed - self._healed_reported + (1 if precount else 0), cap)
        self._events_reported += events
        self._healed_reported += heals
        return [float(events), float(heals)]

    def _add_world_counters(self, values: Sequence[int]) -> None:
        self.world_nonfinite_events += values[0]
        self.world_healed += values[1]
        self.log_value("dist/nonfinite_events", self.world_nonfinite_events)
        self.log_value("dist/healed", self.world_healed)

    def _all_nonfinite_message(self) -> str:
        return (
            f"{type(self).__name__}: every replica is non-finite (NaN/inf weights, buffers or training loss) at "
            f"optimizer step {self.num_steps}; nothing finite is left to heal from, so training stops rather than "
            "save NaN. Lower the learning rate or clip gradients, then resume from the last checkpoint."
        )

    def _mean_buffers_into(self, group: Any, only_nonfinite: bool) -> None:
        """Masked mean of the floating buffers over ``group``; written where ``only_nonfinite`` allows."""
        buffers = self.float_buffers
        if not buffers:
            return
        flat = _flat.flatten(buffers)
        finite = _flat.all_finite(flat)
        summed, count, _, sent = _comm.masked_all_reduce(flat, finite, group=group)
        self.count_bytes(sent, group=group)
        if count > 0 and not (only_nonfinite and finite):
            _flat.unflatten_(summed.div_(count), buffers)

    def _heal_buffers(self) -> None:
        """After a round that saw a non-finite replica: give non-finite floating buffers the finite ranks' mean."""
        scopes, self._heal_scopes = self._heal_scopes, []
        if self.buffer_policy == "average":  # average_buffers already gave every rank the finite mean
            return
        for group in scopes:  # identical on every rank of each group
            self._mean_buffers_into(group, only_nonfinite=True)

    # ------------------------------------------------------------------ evaluation policies over finite replicas
    @override
    def policy_flat(self, policy: str) -> Tensor:
        """Like :meth:`PolicyWeightsMixin.policy_flat`, over the finite replicas only.

        ``"average"`` is the mean of the finite replicas; ``"leader"`` falls back to the lowest finite rank when the
        leader's replica is not finite.

        Raises:
            NonFiniteReplicasError: When no replica is finite.
        """
        if policy not in ("average", "leader"):
            return super().policy_flat(policy)
        flat = self.flat_state()
        finite = _flat.all_finite(flat)
        if policy == "average":
            summed, count, _, _ = _comm.masked_all_reduce(flat, finite)
            if count == 0:
                raise NonFiniteReplicasError(self._all_nonfinite_message())
            return summed.div_(count)
        flags = _comm.all_gather_scalar(1.0 if finite else 0.0, device=self.root_device)
        src = self.leader if self.leader is not None else 0
        if flags[src] < 0.5:
            ok = torch.nonzero(flags > 0.5).reshape(-1)
            if ok.numel() == 0:
                raise NonFiniteReplicasError(self._all_nonfinite_message())
            src = int(ok[0])
        _comm.broadcast_(flat, src=src)
        return flat

    def finite_buffer_mean(self) -> Tensor:
        """The mean of the finite replicas' floating buffers (a collective; for policies such as a centre).

        Raises:
            NonFiniteReplicasError: When no replica has finite buffers.
        """
        flat = _flat.flatten(self.float_buffers)
        if not flat.numel():
            return flat
        summed, count, _, _ = _comm.masked_all_reduce(flat, _flat.all_finite(flat))
        if count == 0:
            raise NonFiniteReplicasError(self._all_nonfinite_message())
        return summed.div_(count)

    # ------------------------------------------------------------------ worker groups
    def setup_groups(self, group_size: int | None) -> None:
        """Create the worker groups (all of them, identically on every rank): sets :attr:`group`, :attr:`group_ranks`.

        ``group_size=None`` groups by node (``devices`` per node; one group on a single node). Call it from
        :meth:`setup_round_state` (a collective). The groups are destroyed at ``teardown``.

        Raises:
            ValueError: If the group size does not divide the world size or differs between ranks.
        """
        world = self.world_size
        size = self.group_layout_size(group_size, world)
        _comm.contiguous_groups(world, size)  # validates
        sizes = _comm.all_gather_scalar(float(size), device=self.root_device)
        if not bool((sizes == sizes[0]).all()):
            raise ValueError(f"inconsistent group sizes across ranks: {sizes.tolist()}; pass the same group_size.")
        self._destroy_subgroups()
        self.group, self.group_ranks = _comm.new_groups(world, size)

    def group_layout_size(self, group_size: int | None, world_size: int) -> int:
        """Workers per group for ``group_size`` (``None``: ``devices`` per node, or the whole world on one node)."""
        if group_size is not None:
            return group_size
        return self.num_processes if self.num_nodes > 1 else world_size

    def validate_group_size(self, group_size: int | None, world_size: int) -> None:
        """For :meth:`validate_world_size`: ``group_size`` must divide ``world_size``.

        Raises:
            ValueError: Naming ``group_size`` and the divisors that would work.
        """
        size = self.group_layout_size(group_size, world_size)
        if size < 1 or world_size % size:
            divisors = [d for d in range(1, world_size + 1) if world_size % d == 0]
            raise ValueError(
                f"`group_size={group_size}` does not divide the world size devices*num_nodes={world_size}: use one "
                f"of {divisors} (or None for one group per node)."
            )

    def _destroy_subgroups(self) -> None:
        if self.group is not None:
            _comm.destroy_group(self.group)
        self.group, self.group_ranks = None, []

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
        self._loss_recorded = True
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
        value = self._logged_loss()
        if value is not None:
            return float(value)
        raise RuntimeError(
            f"{type(self).__name__} could not read the training loss: return the loss from `training_step` "
            f"(automatic optimization) or log it with `self.log({self.loss_key!r}, loss)` before `opt.step()` "
            "(manual optimization), or set `loss_key`."
        )

    def _logged_loss(self) -> Any:
        lm = self.lightning_module
        if lm is not None and lm._trainer is not None:
            return lm.trainer.callback_metrics.get(self.loss_key)
        return None

    def _loss_tensor(self) -> Tensor | None:
        """This step's loss as a tensor without a device sync, or ``None`` when there is none."""
        out = self._closure_output
        if isinstance(out, Mapping):
            out = out.get("loss")
        if out is None:
            out = self._logged_loss()
        if isinstance(out, Tensor):
            return out.detach()
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            return torch.tensor(float(out))
        return None

    def _count_step_loss(self) -> None:
        """Count a non-finite loss of this step (``record_step_loss`` already did, if it ran); no device sync."""
        if self._loss_recorded:
            return
        loss = self._loss_tensor()
        if loss is None:
            return
        bad = (~torch.isfinite(loss)).any().long()
        self._pending_nonfinite = bad if self._pending_nonfinite is None else self._pending_nonfinite + bad

    def _fold_nonfinite(self) -> None:
        if self._pending_nonfinite is not None:
            self.nonfinite_events += int(self._pending_nonfinite.item())
            self._pending_nonfinite = None

    def _step_loss_finite(self) -> bool:
        if self._loss_recorded and self.recent_losses:
            return math.isfinite(self.recent_losses[-1])
        loss = self._loss_tensor()
        return loss is None or bool(torch.isfinite(loss).all())

    # ------------------------------------------------------------------ Lightning overrides
    @override
    def _configure_launcher(self) -> None:
        world = self.num_nodes * self.num_processes
        if world < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 processes (got devices*num_nodes={world}): use "
                "`devices>=2` (or several nodes), or plain single-device training without this strategy."
            )
        self.validate_world_size(world)
        super()._configure_launcher()

    @override
    def setup_distributed(self) -> None:
        """Like DDP's, but a ``torchrun`` restart gets a process group on a fresh, attempt-prefixed store.

        See :mod:`lightning_autoopt.strategies._elastic` for why; outside TorchElastic restarts this is exactly
        ``DDPStrategy.setup_distributed``. A default group created here is destroyed again (class docstring).
        """
        creates = not (dist.is_available() and dist.is_initialized())
        attempt = torchrun_restart_attempt()
        if attempt is None:
            super().setup_distributed()
        else:
            setup_restarted_process_group(self, attempt)
        if creates and dist.is_available() and dist.is_initialized():
            _comm.own_default_group(self.shutdown_timeout_s)
        _comm.starting_stage()
        self._failed = False

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
        self._loss_recorded = False
        self.num_steps = step
        self.on_local_step(step)
        self._count_step_loss()
        if self.round_due(step):
            self.run_round(step)
        self._closure_output = None
        self._flush_logs()
        return output

    def run_round(self, step: int) -> None:
        """One round after optimizer step ``step``: the health check, :meth:`on_round`, buffer healing, counters."""
        _comm.require_process_group()
        self._round_bytes = 0
        self._round_wire_bytes = 0.0
        self._heal_scopes = []
        self.round_losses = None
        self._round_consensus = math.nan
        self.replica_finite = self.check_replica()
        self.on_round(step)
        self._heal_buffers()
        self.num_rounds += 1
        self.bytes_sent_total += self._round_bytes
        self.wire_bytes_total += self._round_wire_bytes
        self.log_value("dist/bytes_sent", self._round_bytes)
        self.log_value("dist/bytes_sent_total", self.bytes_sent_total)
        self.log_value("dist/wire_bytes_sent_total", self.wire_bytes_total)
        self.log_value("dist/rounds", self.num_rounds)
        self._history.append(
            step=step,
            round=self.num_rounds,
            bytes_sent_total=self.bytes_sent_total,
            consensus_distance=self._round_consensus,
            leader=-1 if self.leader is None else int(self.leader),
            losses=list(self.round_losses or []),
            healed=self.world_healed,
            nonfinite=self.world_nonfinite_events,
        )

    @property
    def history(self) -> dict[str, Any]:
        """This rank's record of the rounds, for :func:`lightning_autoopt.plots.plot_strategy`.

        One row per round (thinned by halving the resolution past 2048 rows, see
        :class:`~lightning_autoopt._history.BoundedHistory`): ``step``, ``round``, ``bytes_sent_total`` (this rank),
        ``consensus_distance`` (NaN in rounds that did not measure it), ``leader`` (-1 without one), ``losses`` (every
        rank's leader metric where the method gathers it, e.g. LSGD's global rounds; else empty), ``healed`` and
        ``nonfinite`` (world totals). Saved in the checkpoint (``strategy_state_dict()["history"]``).
        """
        return self._history.as_dict()

    def _flush_logs(self) -> None:
        if not self._pending_logs:
            return
        lm = self.lightning_module
        if lm is not None and lm._trainer is not None:
            for name, value in self._pending_logs.items():
                lm.log(name, value, on_step=True, on_epoch=False, sync_dist=False, batch_size=1)
        self._pending_logs = {}

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        """Heal non-finite replicas (:meth:`heal_now`), then the policy's weights: nothing NaN is ever saved."""
        self.heal_now()
        return super().lightning_module_state_dict()

    @override
    def on_train_end(self) -> None:
        """Apply rounds in flight, heal non-finite replicas (:meth:`heal_now`), then leave the policy weights."""
        if self._groups_ready and _comm.dist_ready():
            self.finish_rounds()
        self.heal_now()
        super().on_train_end()

    @override
    def on_exception(self, exception: BaseException) -> None:
        self._failed = True
        super().on_exception(exception)

    @override
    def teardown(self) -> None:
        """Lightning's teardown, then destroy the process groups this strategy created (class docstring)."""
        failed, self._failed = self._failed, False
        try:
            super().teardown()
        finally:
            self._pending_mean.abandon()
            self._destroy_overlap_group()
            self._destroy_subgroups()
            if failed:  # the others may never arrive: no barrier; closing our connections releases them
                _comm.release_default_group(barrier=False)
            elif isinstance(self._launcher, _MultiProcessingLauncher):  # a spawned worker: it ends after this
                _comm.release_default_group(barrier=True)
            else:  # popen / torchrun: a test() may follow in this process; the exit hook destroys it
                _comm.stage_finished()

    # ------------------------------------------------------------------ checkpoints
    @override
    def strategy_state_dict(self) -> dict[str, Any]:
        """This rank's full strategy state: counters, the loss window, plus :meth:`extra_state_dict`."""
        self._fold_nonfinite()
        return to_cpu(
            {
                "class": type(self).__name__,
                "num_steps": self.num_steps,
                "num_rounds": self.num_rounds,
                "bytes_sent_total": self.bytes_sent_total,
                "wire_bytes_total": self.wire_bytes_total,
                "diagnostic_bytes_total": self.diagnostic_bytes_total,
                "nonfinite_events": self.nonfinite_events,
                "skipped_rounds": self.skipped_rounds,
                "healed": self.healed,
                "world_nonfinite_events": self.world_nonfinite_events,
                "world_healed": self.world_healed,
                "events_reported": self._events_reported,
                "healed_reported": self._healed_reported,
                "leader": self.leader,
                "recent_losses": list(self.recent_losses),
                # values taken but not yet logged (a checkpoint's heal check takes the fault totals): the resumed
                # run logs them at the same step as an uninterrupted one
                "pending_logs": dict(self._pending_logs),
                "history": self._history.as_dict(),
                "pending_mean": self._pending_mean.state_dict(),  # an overlapped average in flight (waits for it)
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
        self.wire_bytes_total = float(state.get("wire_bytes_total", 0.0))
        self.diagnostic_bytes_total = int(state.get("diagnostic_bytes_total", 0))
        self.nonfinite_events = int(state["nonfinite_events"])
        self.skipped_rounds = int(state["skipped_rounds"])
        self.healed = int(state.get("healed", 0))
        self.world_nonfinite_events = int(state.get("world_nonfinite_events", 0))
        self.world_healed = int(state.get("world_healed", 0))
        self._events_reported = int(state.get("events_reported", self.nonfinite_events))
        self._healed_reported = int(state.get("healed_reported", self.healed))
        self._pending_nonfinite = None
        self._pending_logs = {str(k): float(v) for k, v in state.get("pending_logs", {}).items()}
        self._history = BoundedHistory(HISTORY_KEYS)
        self._history.load(state.get("history", {}))
        self._pending_mean.load_state_dict(state.get("pending_mean", {}))
        self.leader = state["leader"]
        extra = state.get("extra", {})
        # checkpoints written before the window moved into the base kept it in the method's extra state
        losses = state.get("recent_losses", extra.get("losses", []))
        self.recent_losses = deque((float(v) for v in losses), maxlen=self.recent_losses.maxlen)
        self.load_extra_state_dict(extra)
