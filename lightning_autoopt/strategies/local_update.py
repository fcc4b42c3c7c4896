"""Shared base of the local-update strategies (LSGD, EASGD, local SGD, and the ones built on them).

Workers train their own replica with no per-step gradient all-reduce and meet only every few optimizer steps in a
*round* (a leader pull, an elastic update, an average, ...). The base owns everything a new method should not have to
re-implement: no DDP wrapping, the initial broadcast, step counting, flat-buffer collectives, byte accounting,
logging, subgroups, the evaluation/checkpoint weight policy and resume of every rank's own replica.

Writing a new method is a subclass with ``strategy_name``, its ``__init__`` arguments, :meth:`round_due` and
:meth:`on_round` (plus :meth:`extra_state_dict` / :meth:`load_extra_state_dict` for any state it keeps), e.g.::

    class MyAveraging(LocalUpdateStrategy):
        strategy_name = "myavg"

        def __init__(self, period: int = 8, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.period = check_period("period", period)

        def round_due(self, step: int) -> bool:
            return step % self.period == 0

        def on_round(self, step: int) -> None:
            flat = self.flat_params()
            mean = flat.clone()
            self.count_bytes(all_reduce_mean_(mean))
            self.write_params(mean)

    register_strategy(MyAveraging)  # "myavg", "myavg_spawn", "myavg_fork"
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, ClassVar, Literal, overload

import torch.distributed as dist
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_autoopt.strategies import _comm

CHECKPOINT_KEY = "local_update_strategy"
"""Checkpoint key holding every rank's replica, optimizer states and strategy state (gathered to rank 0)."""

_BUFFER_POLICIES = ("local", "average")
_REGISTERED: dict[str, type[LocalUpdateStrategy]] = {}


@overload
def check_period(name: str, value: int, allow_none: Literal[False] = False) -> int: ...


@overload
def check_period(name: str, value: int | None, allow_none: bool) -> int | None: ...


def check_period(name: str, value: int | None, allow_none: bool = False) -> int | None:
    """Validate a communication period (in optimizer steps).

    Raises:
        ValueError: If the period is not an integer >= 1.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1 (optimizer steps between rounds), got {value!r}.")
    return value


def check_strength(name: str, value: float) -> float:
    """Validate a pull strength.

    Raises:
        ValueError: If the strength is not a finite number in [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"`{name}` must be a number in [0, 1] (0 = no pull, 1 = copy the target), got {value!r}.")
    return float(value)


def register_strategy(cls: type[LocalUpdateStrategy], registry: Any = None) -> list[str]:
    """Register ``cls`` under ``cls.strategy_name`` (popen) plus ``_spawn`` and ``_fork`` variants, idempotently.

    Re-registering (a re-import, a reloaded module) overrides the previous entry instead of raising.

    Returns:
        The registered names.

    Raises:
        ValueError: If the class has no lower-case ``strategy_name``.
    """
    name = getattr(cls, "strategy_name", "")
    if not name or name != name.lower():
        raise ValueError(f"{cls.__name__}.strategy_name must be a non-empty lower-case string, got {name!r}.")
    registry = StrategyRegistry if registry is None else registry
    names = []
    for suffix, start_method in (("", "popen"), ("_spawn", "spawn"), ("_fork", "fork")):
        registry.register(
            name + suffix,
            cls,
            description=f"{cls.__name__} with start_method={start_method!r} (lightning-autoopt)",
            override=True,
            start_method=start_method,
        )
        names.append(name + suffix)
    _REGISTERED[name] = cls
    return names


def registered_strategies() -> dict[str, type[LocalUpdateStrategy]]:
    """The local-update strategies registered so far, by base name (test batteries iterate over this)."""
    return dict(_REGISTERED)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class LocalUpdateStrategy(DDPStrategy):
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
      ``opt.step()``).
    * Evaluation policy (``eval_policy``) decides which weights are validated during ``fit`` and saved under
      ``"state_dict"`` in checkpoints: ``"local"`` (each rank its own replica; the file holds rank 0's),
      ``"average"`` (the mean of all replicas), ``"leader"`` (the current leader's replica; rank 0 before any
      leader exists). Subclasses may add policies (EASGD: ``"center"``). Validation swaps the policy weights in and
      restores each rank's own replica afterwards; ``validate``/``test`` outside ``fit`` evaluate the policy weights;
      at the end of ``fit`` (``on_train_end``, after the callbacks' hooks) every rank's module is left holding the
      policy weights, so the model ``fit`` hands back (also under ``spawn``) is the policy's.
    * Checkpoints additionally hold, under ``"local_update_strategy"``, every rank's replica, optimizer states and
      strategy state, gathered to rank 0 (who writes the file). On resume with the same world size each rank
      reloads its own; with a different world size every rank starts from the policy weights (with a warning).

    Logged signals (per round, through ``pl_module.log``): ``dist/bytes_sent`` (bytes this rank sent in the round,
    see :mod:`lightning_autoopt.strategies._comm` for the convention), ``dist/bytes_sent_total``, ``dist/rounds``,
    ``dist/consensus_distance`` (when computed), plus the subclass's own (``dist/leader``, ...).

    Args:
        buffer_policy: ``"local"`` keeps each rank's buffers (BatchNorm statistics) as they are; ``"average"``
            averages floating-point buffers within the round's group at every round (one extra all-reduce).
        eval_policy: Which weights are validated during fit and saved as the checkpoint's ``"state_dict"``.
        consensus_every: Compute and log ``dist/consensus_distance`` every this many rounds (``0`` disables). Where a
            method does not already compute the replica mean this costs one extra flat all-reduce; those bytes are
            counted in ``dist/diagnostic_bytes_total``, not in ``dist/bytes_sent``.
        loss_key: Metric name read from ``trainer.callback_metrics`` when the closure returns no loss (manual
            optimization).
        **kwargs: Forwarded to :class:`~lightning.pytorch.strategies.DDPStrategy` (``start_method``,
            ``process_group_backend``, ``timeout``, ...).

    Raises:
        ValueError: On an unknown policy, a negative ``consensus_every`` or (when the Trainer is built) a world size
            below 2.
    """

    strategy_name: ClassVar[str] = ""
    eval_policies: ClassVar[tuple[str, ...]] = ("local", "average", "leader")

    def __init__(
        self,
        buffer_policy: str = "local",
        eval_policy: str = "average",
        consensus_every: int = 1,
        loss_key: str = "train_loss",
        **kwargs: Any,
    ) -> None:
        if buffer_policy not in _BUFFER_POLICIES:
            raise ValueError(f"`buffer_policy` must be one of {_BUFFER_POLICIES}, got {buffer_policy!r}.")
        if eval_policy not in self.eval_policies:
            raise ValueError(f"`eval_policy` must be one of {self.eval_policies}, got {eval_policy!r}.")
        if isinstance(consensus_every, bool) or not isinstance(consensus_every, int) or consensus_every < 0:
            raise ValueError(f"`consensus_every` must be an integer >= 0 (0 disables), got {consensus_every!r}.")
        for bad in ("ddp_comm_hook", "ddp_comm_state", "model_averaging_period"):
            if kwargs.get(bad) is not None:
                raise ValueError(f"`{bad}` is a DDP option and has no effect here; remove it.")
        super().__init__(**kwargs)
        self.buffer_policy = buffer_policy
        self.eval_policy = eval_policy
        self.consensus_every = consensus_every
        self.loss_key = loss_key
        # counters persisted in checkpoints
        self.num_steps = 0
        self.num_rounds = 0
        self.bytes_sent_total = 0
        self.diagnostic_bytes_total = 0
        self.nonfinite_events = 0
        self.skipped_rounds = 0
        self.leader: int | None = None
        # transient
        self._round_bytes = 0
        self._pending_logs: dict[str, float] = {}
        self._closure_output: Any = None
        self._restored_replica = False
        self._swapped_local: Tensor | None = None
        self._groups_ready = False

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

    def policy_flat(self, policy: str) -> Tensor:
        """Flat parameters + floating buffers for ``policy`` (collective for every policy but ``"local"``)."""
        flat = self.flat_state()
        if policy == "local":
            return flat
        if policy == "average":
            _comm.all_reduce_mean_(flat)
            return flat
        if policy == "leader":
            _comm.broadcast_(flat, src=self.leader if self.leader is not None else 0)
            return flat
        raise ValueError(f"unknown eval policy {policy!r}")

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        """Register this class's names (called explicitly on import; Lightning only walks its own classes)."""
        if cls.strategy_name:
            register_strategy(cls, strategy_registry)

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def resumed(self) -> bool:
        """``True`` while fitting resumed this rank's own replica and state from a checkpoint."""
        return self._restored_replica

    @property
    def params(self) -> list[Tensor]:
        """All parameters of the LightningModule, in a fixed order."""
        assert self.lightning_module is not None
        return list(self.lightning_module.parameters())

    @property
    def float_buffers(self) -> list[Tensor]:
        """Floating-point buffers (BatchNorm running statistics); integer counters are left alone."""
        assert self.lightning_module is not None
        return [b for b in self.lightning_module.buffers() if b.is_floating_point()]

    def flat_params(self) -> Tensor:
        """A new flat copy of the parameters."""
        return _comm.flatten(self.params)

    def write_params(self, flat: Tensor) -> None:
        """Write a flat parameter buffer back into the module."""
        _comm.unflatten_(flat, self.params)

    def flat_state(self) -> Tensor:
        """A new flat copy of parameters followed by floating buffers (the unit of evaluation policies)."""
        return _comm.flatten(self.params + self.float_buffers)

    def write_state(self, flat: Tensor) -> None:
        _comm.unflatten_(flat, self.params + self.float_buffers)

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
        flat = _comm.flatten(buffers)
        self.count_bytes(_comm.all_reduce_mean_(flat, group=group))
        _comm.unflatten_(flat, buffers)

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

    def make_groups(self, group_size: int | None) -> tuple[Any, list[int]]:
        """Create the worker groups (all of them, identically on every rank) and return ``(my_group, my_ranks)``.

        ``group_size=None`` groups by node (``devices`` per node; one group on a single node).

        Raises:
            ValueError: If the group size does not divide the world size or differs between ranks.
        """
        world = self.world_size
        size = group_size if group_size is not None else (self.num_processes if self.num_nodes > 1 else world)
        _comm.contiguous_groups(world, size)  # validates
        sizes = _comm.all_gather_scalar(float(size), device=self.root_device)
        if not bool((sizes == sizes[0]).all()):
            raise ValueError(f"inconsistent group sizes across ranks: {sizes.tolist()}; pass the same group_size.")
        return _comm.new_groups(world, size)

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
        """Like DDP's, but a torchrun restart gets a process group on a fresh, attempt-prefixed store.

        Under ``torchrun --max-restarts`` the workers share the elastic agent's TCP store across attempts; with the
        torch 2.14 gloo backend a restarted group can read the previous attempt's peer addresses from it and fail
        with "Gloo connectFullMesh failed ... Connection refused". Prefixing the store with the restart count
        avoids the stale keys. Outside TorchElastic restarts this is exactly ``DDPStrategy.setup_distributed``.
        """
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
            super().setup_distributed()
            return
        reset_seed()
        self.set_world_ranks()
        self._process_group_backend = self._get_process_group_backend()
        assert self.cluster_environment is not None
        timeout = self._timeout if self._timeout is not None else timedelta(minutes=30)
        store = dist.TCPStore(
            self.cluster_environment.main_address,
            self.cluster_environment.main_port,
            self.world_size,
            is_master=False,
            timeout=timeout,
        )
        prefixed = dist.PrefixStore(f"/lightning_autoopt/attempt_{restart}", store)
        device_id = self.root_device if self.root_device.type != "cpu" else None
        dist.init_process_group(
            self._process_group_backend,
            store=prefixed,
            rank=self.global_rank,
            world_size=self.world_size,
            timeout=timeout,
            device_id=device_id,
        )

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
    def setup(self, trainer: Any) -> None:
        if trainer.state.fn != TrainerFn.FITTING and _dist_ready() and self.eval_policy != "local":
            # validate/test/predict outside fit: evaluate the policy weights on every rank
            self.model_to_device()
            self.write_state(self.policy_flat(self.eval_policy))
        super().setup(trainer)

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

    # ------------------------------------------------------------------ evaluation policy
    def _swap_in_policy(self) -> None:
        if self._swapped_local is not None or self.eval_policy == "local" or not _dist_ready():
            return
        local = self.flat_state()
        self.write_state(self.policy_flat(self.eval_policy))
        self._swapped_local = local

    def _swap_out_policy(self) -> None:
        if self._swapped_local is not None:
            self.write_state(self._swapped_local)
            self._swapped_local = None

    def _fitting(self) -> bool:
        lm = self.lightning_module
        return lm is not None and lm._trainer is not None and lm.trainer.state.fn == TrainerFn.FITTING

    @override
    def on_validation_start(self) -> None:
        super().on_validation_start()
        if self._fitting() and self._groups_ready:
            self._swap_in_policy()

    @override
    def on_validation_end(self) -> None:
        self._swap_out_policy()
        super().on_validation_end()

    @override
    def on_train_end(self) -> None:
        """Leave the policy weights in every rank's module, so the model returned by ``fit`` is the policy's."""
        super().on_train_end()
        if self.eval_policy != "local" and self._groups_ready and _dist_ready():
            self._swap_out_policy()
            self.write_state(self.policy_flat(self.eval_policy))

    @override
    def on_exception(self, exception: BaseException) -> None:
        self._swap_out_policy()
        super().on_exception(exception)

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The policy's weights (collective: ``dump_checkpoint`` runs on every rank)."""
        assert self.lightning_module is not None
        if self.eval_policy == "local" or not _dist_ready() or self._swapped_local is not None:
            return _to_cpu(self.lightning_module.state_dict())
        self._swap_in_policy()
        try:
            return _to_cpu(self.lightning_module.state_dict())
        finally:
            self._swap_out_policy()

    # ------------------------------------------------------------------ checkpoints
    def strategy_state_dict(self) -> dict[str, Any]:
        """This rank's full strategy state: counters plus :meth:`extra_state_dict`."""
        return _to_cpu(
            {
                "class": type(self).__name__,
                "num_steps": self.num_steps,
                "num_rounds": self.num_rounds,
                "bytes_sent_total": self.bytes_sent_total,
                "diagnostic_bytes_total": self.diagnostic_bytes_total,
                "nonfinite_events": self.nonfinite_events,
                "skipped_rounds": self.skipped_rounds,
                "leader": self.leader,
                "extra": self.extra_state_dict(),
            }
        )

    def load_strategy_state_dict(self, state: Mapping[str, Any]) -> None:
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
        self.load_extra_state_dict(state.get("extra", {}))

    def _rank_payload(self, with_optimizers: bool) -> dict[str, Any]:
        assert self.lightning_module is not None
        swapped = self._swapped_local
        if swapped is not None:  # saving from inside validation: store the replica, not the policy weights
            policy = self.flat_state()
            self.write_state(swapped)
        payload = {
            "model": _to_cpu(self.lightning_module.state_dict()),
            "strategy": self.strategy_state_dict(),
        }
        if swapped is not None:
            self.write_state(policy)
        if with_optimizers:
            payload["optimizers"] = [_to_cpu(self.optimizer_state(o)) for o in self.optimizers]
        return payload

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Gather every rank's replica, optimizer states and strategy state into the file rank 0 writes."""
        if _dist_ready() and self.lightning_module is not None:
            payload = self._rank_payload(with_optimizers="optimizer_states" in checkpoint)
            gathered: list[Any] | None = [None] * self.world_size if self.global_rank == 0 else None
            dist.gather_object(payload, gathered, dst=0)
            if self.global_rank == 0:
                checkpoint[CHECKPOINT_KEY] = {"world_size": self.world_size, "ranks": gathered}
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def _own_entry(self, checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
        stored = checkpoint.get(CHECKPOINT_KEY)
        if stored is None:
            return None
        if stored["world_size"] != self.world_size:
            rank_zero_warn(
                f"checkpoint holds {stored['world_size']} replicas but the world size is {self.world_size}; "
                "every rank resumes from the checkpoint's policy weights and rank 0's strategy state."
            )
            self.load_strategy_state_dict(stored["ranks"][0]["strategy"])
            return None
        return stored["ranks"][self.global_rank]

    @override
    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        entry = self._own_entry(checkpoint) if self._fitting() else None
        if entry is None:
            super().load_model_state_dict(checkpoint, strict=strict)
            return
        assert self.lightning_module is not None
        self.lightning_module.load_state_dict(entry["model"], strict=strict)
        self.load_strategy_state_dict(entry["strategy"])
        self._restored_replica = True

    @override
    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        stored = checkpoint.get(CHECKPOINT_KEY)
        if self._restored_replica and stored is not None:
            entry = stored["ranks"][self.global_rank]
            if "optimizers" in entry:
                checkpoint = {**checkpoint, "optimizer_states": entry["optimizers"]}
        super().load_optimizer_state_dict(checkpoint)

    @override
    def teardown(self) -> None:
        self._swap_out_policy()
        self._restored_replica = False
        self._groups_ready = False
        super().teardown()


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def finite(value: float) -> bool:
    """``True`` for a finite float (NaN/inf never drive a decision)."""
    return math.isfinite(value)
