"""Which weights a local-update run evaluates and saves, and how every rank's replica goes into a checkpoint.

:class:`PolicyWeightsMixin` is the half of :class:`~lightning_autoopt.strategies.LocalUpdateStrategy` that is not
about rounds: the evaluation policy (validate / test / save / hand back the ``"average"``, ``"leader"``, ... weights
instead of rank 0's replica), the public :meth:`~PolicyWeightsMixin.policy_weights` context manager, and checkpoints
that hold every rank's replica, optimizer states and strategy state so that a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_autoopt import _flat
from lightning_autoopt.checkpoint import (
    CHECKPOINT_KEY,
    VerifiedCheckpointIO,
    check_payload,
    payload_checksum,
    payload_verified,
    verify_checkpoint,
)
from lightning_autoopt.landscape.batch_loss import infer_layout
from lightning_autoopt.landscape.loss import make_fixed_batches, single_loader, to_training_device
from lightning_autoopt.strategies import _comm
from lightning_autoopt.strategies._batchnorm import batchnorm_layers, recompute_batchnorm_, running_stats
from lightning_autoopt.strategies._checks import check_choice, check_count

if TYPE_CHECKING:
    from lightning.pytorch.strategies import DDPStrategy

    _Base = DDPStrategy
else:
    _Base = object

__all__ = ["CHECKPOINT_KEY", "PolicyWeightsMixin", "to_cpu"]
_SPECIAL_CKPT = ("last", "best", "hpc")


def _verify_launch_checkpoint(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Verify the ``ckpt_path`` a Trainer entry point (``_fit_impl``, ...) is about to be launched with.

    Runs in the launching process before any worker starts, so a damaged file is reported once, with its path
    (:class:`~lightning_autoopt.checkpoint.CheckpointError`), instead of from inside every worker.
    """
    try:
        bound = inspect.signature(function).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return
    ckpt_path = bound.arguments.get("ckpt_path")
    if ckpt_path is None or str(ckpt_path) in _SPECIAL_CKPT or "://" in str(ckpt_path):
        return
    if str(ckpt_path).startswith("registry"):
        return
    verify_checkpoint(ckpt_path)


class _VerifyingSubprocessScriptLauncher(_SubprocessScriptLauncher):
    """Lightning's ``popen`` launcher, verifying ``ckpt_path`` before it starts the other ranks' scripts."""

    @override
    def launch(self, function: Callable[..., Any], *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        if not self.cluster_environment.creates_processes_externally:  # this process starts the others
            _verify_launch_checkpoint(function, args, kwargs)
        return super().launch(function, *args, trainer=trainer, **kwargs)


class _VerifyingMultiProcessingLauncher(_MultiProcessingLauncher):
    """Lightning's ``spawn``/``fork`` launcher, verifying ``ckpt_path`` before it starts the workers."""

    @override
    def launch(self, function: Callable[..., Any], *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        _verify_launch_checkpoint(function, args, kwargs)
        return super().launch(function, *args, trainer=trainer, **kwargs)


_VERIFYING_LAUNCHERS: dict[type, type] = {
    _SubprocessScriptLauncher: _VerifyingSubprocessScriptLauncher,
    _MultiProcessingLauncher: _VerifyingMultiProcessingLauncher,
}


def to_cpu(obj: Any) -> Any:
    """A CPU copy of every tensor in a (nested) mapping / list / tuple; other values are returned as they are."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class PolicyWeightsMixin(_Base):
    """Evaluation-policy weights and per-rank checkpoints for a ``DDPStrategy`` subclass (mixed in before it).

    * ``eval_policy`` decides which weights are validated during ``fit`` and saved under ``"state_dict"`` in
      checkpoints: ``"local"`` (each rank its own replica; the file holds rank 0's), ``"average"`` (the mean of all
      replicas), ``"leader"`` (the current leader's replica; rank 0 before any leader exists). Subclasses add
      policies by extending ``eval_policies`` and :meth:`policy_flat` (EASGD: ``"center"``).
    * Validation during ``fit`` swaps the policy weights in and restores each rank's own replica afterwards;
      ``validate``/``test`` outside ``fit`` evaluate the policy weights; at the end of ``fit`` every rank's module is
      left holding the policy weights, so the model ``fit`` hands back (also under ``spawn``) is the policy's.
    * Checkpoints additionally hold, under :data:`CHECKPOINT_KEY`, every rank's replica, optimizer states and
      strategy state (:meth:`strategy_state_dict`), gathered to rank 0, who writes the file, with a checksum that is
      verified on load. On resume with the same world size each rank reloads its own; with a different world size
      every rank starts from the policy weights (a warning says what is dropped and what is re-used).
    * ``bn_recompute_batches > 0``: whenever the policy weights are put in the module (validation, the checkpoint's
      ``"state_dict"``, :meth:`~PolicyWeightsMixin.policy_weights`, the model ``fit`` hands back), the running
      statistics of its BatchNorm layers are re-estimated on that many training batches per rank (a fixed, seeded
      draw from the training set, made once) and averaged over the ranks, as the reference implementations do before
      they evaluate an average: replicas' statistics do not describe the averaged weights' activations. Costs the
      forward passes and one all-reduce of the statistics each time; the replicas' own statistics are untouched.
    * A checkpoint is verified before it is loaded (:mod:`lightning_autoopt.checkpoint`): in the launching process
      for the ``popen``/``spawn``/``fork`` launchers, before any worker starts, and by the default checkpoint IO
      (:class:`~lightning_autoopt.checkpoint.VerifiedCheckpointIO`) in each worker (``torchrun``).

    The class using it provides :meth:`strategy_state_dict` / :meth:`load_strategy_state_dict` and sets
    ``_groups_ready`` once its round state exists.

    Args:
        eval_policy: One of ``eval_policies``.
        bn_recompute_batches: Training batches per rank on which the policy weights' BatchNorm statistics are
            re-estimated (``0``: keep the averaged / leader's statistics).
        **kwargs: Forwarded to the strategy class it is mixed into.

    Raises:
        ValueError: On an unknown policy or a negative ``bn_recompute_batches``.
    """

    eval_policies: ClassVar[tuple[str, ...]] = ("local", "average", "leader")

    def __init__(self, eval_policy: str = "average", bn_recompute_batches: int = 0, **kwargs: Any) -> None:
        check_choice("eval_policy", eval_policy, self.eval_policies)
        check_count("bn_recompute_batches", bn_recompute_batches, 0, "0 keeps the averaged statistics")
        super().__init__(**kwargs)
        self.eval_policy = eval_policy
        self.bn_recompute_batches = bn_recompute_batches
        self._bn_batches: list[Any] | None = None
        self.leader: int | None = None
        self._swapped_local: Tensor | None = None
        self._restored_replica = False
        self._groups_ready = False

    # ------------------------------------------------------------------ the module as flat state
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

    def flat_state(self) -> Tensor:
        """A new flat copy of parameters followed by floating buffers (the unit of evaluation policies)."""
        return _flat.flatten(self.params + self.float_buffers)

    def write_state(self, flat: Tensor) -> None:
        """Write a :meth:`flat_state` buffer back into the module."""
        _flat.unflatten_(flat, self.params + self.float_buffers)

    # ------------------------------------------------------------------ policies
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

    @contextlib.contextmanager
    def policy_weights(self, policy: str | None = None) -> Iterator[None]:
        """Hold ``policy``'s weights (default: ``eval_policy``) in every rank's module inside the block.

        On exit each rank gets its own replica back, also on an exception. A collective for every policy but
        ``"local"``: every rank must enter the block. A no-op without a multi-process group. Inside validation
        during ``fit`` the module already holds the ``eval_policy`` weights; entering again with that policy
        changes nothing.

        Args:
            policy: One of ``eval_policies``; ``None`` = ``eval_policy``.

        Raises:
            ValueError: On an unknown policy.
            RuntimeError: When asked for another policy while the module already holds swapped-in weights.

        Example::

            with trainer.strategy.policy_weights():        # the weights the checkpoint would save
                accuracy = evaluate(pl_module)
            with trainer.strategy.policy_weights("leader"):  # the same replicas, another policy
                leader_accuracy = evaluate(pl_module)
        """
        policy = self.eval_policy if policy is None else check_choice("policy", policy, self.eval_policies)
        if self._swapped_local is not None:
            if policy != self.eval_policy:
                raise RuntimeError(
                    f"the module already holds the {self.eval_policy!r} policy weights; leave that block (or "
                    f"validation) before asking for {policy!r}."
                )
            yield
            return
        swapped = self._swap_in(policy)
        try:
            yield
        finally:
            if swapped:
                self._swap_out()

    def _swap_in(self, policy: str) -> bool:
        if self._swapped_local is not None or policy == "local" or not _comm.dist_ready():
            return False
        local = self.flat_state()
        self.write_state(self.policy_flat(policy))
        self._swapped_local = local
        self.recompute_batchnorm()
        return True

    def _swap_out(self) -> None:
        if self._swapped_local is not None:
            self.write_state(self._swapped_local)
            self._swapped_local = None

    # ------------------------------------------------------------------ BatchNorm statistics of the policy weights
    def recompute_batchnorm(self) -> bool:
        """Re-estimate the module's BatchNorm statistics on ``bn_recompute_batches`` training batches per rank.

        A collective (the statistics are averaged over the ranks): every rank calls it. Does nothing when the option
        is off, the module has no BatchNorm layer with running statistics, or no training data is at hand (outside
        ``fit``: the checkpoint's ``"state_dict"`` already holds re-estimated statistics).

        Returns:
            Whether the statistics were re-estimated.
        """
        lm = self.lightning_module
        if self.bn_recompute_batches == 0 or lm is None or not _comm.dist_ready():
            return False
        layers = batchnorm_layers(lm)
        batches = self._batchnorm_batches() if layers else None
        if not batches:
            return False
        layout = infer_layout(lm, batches[0])
        recompute_batchnorm_(lm, batches, layout.forward, layers)
        stats = running_stats(layers)
        flat = _flat.flatten(stats)
        _comm.all_reduce_mean_(flat)  # every rank estimated on its own draw: the mean uses all of them
        _flat.unflatten_(flat, stats)
        return True

    def _batchnorm_batches(self) -> list[Any] | None:
        if self._bn_batches is not None:
            return self._bn_batches
        lm = self.lightning_module
        trainer = None if lm is None else lm._trainer
        loader = single_loader(None if trainer is None else trainer.train_dataloader)
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            return None
        batch_size = getattr(loader, "batch_size", None) or 64
        drawn = make_fixed_batches(
            dataset,
            self.bn_recompute_batches * batch_size,
            batch_size,
            seed=0x5EED + self.global_rank,  # a private generator: the training sampler's RNG is untouched
            collate_fn=getattr(loader, "collate_fn", None),
        )
        self._bn_batches = [to_training_device(self, lm, b) for b in drawn]
        return self._bn_batches

    def _fitting(self) -> bool:
        lm = self.lightning_module
        return lm is not None and lm._trainer is not None and lm.trainer.state.fn == TrainerFn.FITTING

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: Any) -> None:
        if trainer.state.fn != TrainerFn.FITTING and _comm.dist_ready() and self.eval_policy != "local":
            # validate/test/predict outside fit: evaluate the policy weights on every rank
            self.model_to_device()
            self.write_state(self.policy_flat(self.eval_policy))
        super().setup(trainer)

    @override
    def on_validation_start(self) -> None:
        super().on_validation_start()
        if self._fitting() and self._groups_ready:
            self._swap_in(self.eval_policy)

    @override
    def on_validation_end(self) -> None:
        self._swap_out()
        super().on_validation_end()

    @override
    def on_train_end(self) -> None:
        """Leave the policy weights in every rank's module, so the model returned by ``fit`` is the policy's."""
        super().on_train_end()
        if self.eval_policy != "local" and self._groups_ready and _comm.dist_ready():
            self._swap_out()
            self.write_state(self.policy_flat(self.eval_policy))
            self.recompute_batchnorm()

    @override
    def on_exception(self, exception: BaseException) -> None:
        self._swap_out()
        super().on_exception(exception)

    @override
    def teardown(self) -> None:
        self._swap_out()
        self._restored_replica = False
        self._groups_ready = False
        self._bn_batches = None
        super().teardown()

    # ------------------------------------------------------------------ checkpoints
    @property
    @override
    def checkpoint_io(self) -> CheckpointIO:
        """The checkpoint IO; by default a :class:`~lightning_autoopt.checkpoint.VerifiedCheckpointIO`."""
        if self._checkpoint_io is None:
            self._checkpoint_io = VerifiedCheckpointIO(local_update=True)
        io = super().checkpoint_io
        if isinstance(io, VerifiedCheckpointIO):
            io.local_update = True  # also one passed as a plugin: this strategy handles its own payload
        return io

    @checkpoint_io.setter
    def checkpoint_io(self, io: CheckpointIO | None) -> None:
        self._checkpoint_io = io

    @override
    def _configure_launcher(self) -> None:
        """Lightning's launcher, made to verify ``ckpt_path`` in the launching process before workers start."""
        super()._configure_launcher()
        verifying = _VERIFYING_LAUNCHERS.get(type(self._launcher))
        if verifying is not None:
            self._launcher.__class__ = verifying  # same state, one extra check in `launch`; picklable (module level)

    def strategy_state_dict(self) -> dict[str, Any]:
        """This rank's strategy state (counters and method state); provided by the strategy class."""
        raise NotImplementedError

    def load_strategy_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`strategy_state_dict`; provided by the strategy class."""
        raise NotImplementedError

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The policy's weights (collective: ``dump_checkpoint`` runs on every rank)."""
        assert self.lightning_module is not None
        if self.eval_policy == "local" or not _comm.dist_ready() or self._swapped_local is not None:
            return to_cpu(self.lightning_module.state_dict())
        with self.policy_weights():
            return to_cpu(self.lightning_module.state_dict())

    def _rank_payload(self, with_optimizers: bool) -> dict[str, Any]:
        assert self.lightning_module is not None
        swapped = self._swapped_local
        if swapped is not None:  # saving from inside validation: store the replica, not the policy weights
            policy = self.flat_state()
            self.write_state(swapped)
        payload = {
            "model": to_cpu(self.lightning_module.state_dict()),
            "strategy": self.strategy_state_dict(),
        }
        if swapped is not None:
            self.write_state(policy)
        if with_optimizers:
            payload["optimizers"] = [to_cpu(self.optimizer_state(o)) for o in self.optimizers]
        return payload

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Gather every rank's replica, optimizer states and strategy state into the file rank 0 writes.

        The entry under :data:`CHECKPOINT_KEY` also records the world size, the strategy class, the ``eval_policy``
        (whose weights ``"state_dict"`` holds) and a checksum of the per-rank payload, verified on load.
        """
        if _comm.dist_ready() and self.lightning_module is not None:
            payload = self._rank_payload(with_optimizers="optimizer_states" in checkpoint)
            gathered = _comm.gather_objects(payload, dst=0)
            if self.global_rank == 0:
                checkpoint[CHECKPOINT_KEY] = {
                    "world_size": self.world_size,
                    "strategy": type(self).__name__,
                    "eval_policy": self.eval_policy,
                    "ranks": gathered,
                    "checksum": payload_checksum(gathered),
                }
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def _ckpt_path(self) -> str | None:
        lm = self.lightning_module
        if lm is None or lm._trainer is None:
            return None
        path = lm.trainer.ckpt_path
        return None if path is None else str(path)

    def _own_entry(self, checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
        stored = checkpoint.get(CHECKPOINT_KEY)
        if stored is None:
            return None
        path = self._ckpt_path()
        if not payload_verified(path):  # the CLI / launcher may have checked this very file already
            check_payload(stored, path)  # raises CheckpointError naming the file on a mismatch
        if stored["world_size"] != self.world_size:
            policy = stored.get("eval_policy", "eval-policy")
            rank_zero_warn(
                f"Checkpoint {path or ''} holds {stored['world_size']} per-rank replicas but this run has world size "
                f"{self.world_size}: every rank resumes from the checkpoint's 'state_dict' (the {policy!r} weights), "
                "rank 0's optimizer state and rank 0's strategy state (step and round counters, leader). Dropped: the "
                "per-rank replicas and the other ranks' optimizer and strategy states."
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
