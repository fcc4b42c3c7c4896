"""Checkpoints that fail loudly: integrity checks before anything is loaded, and clear words about what is re-used.

``torch.load`` does not check the CRC-32 that every record of a checkpoint (a zip archive) carries: bytes changed
inside a tensor record load silently as wrong (often NaN) weights, a truncated file fails deep inside a worker with
``OSError: [Errno 22] Invalid argument`` or a miniz message, and a file that is not a checkpoint at all with an
advice to retry with ``weights_only=False``. :func:`verify_checkpoint` checks a file before anything loads it:

1. it exists and is not empty;
2. it is a zip archive whose central directory is intact (a cut-off write leaves none);
3. every record matches its CRC-32 (:meth:`zipfile.ZipFile.testzip`);
4. when ``load=True``: it unpickles (memory-mapped, so tensors are not read twice), and the local-update strategies'
   payload (:data:`CHECKPOINT_KEY`: every rank's replica, optimizer states and strategy state) matches the checksum
   written next to it (:func:`payload_checksum`).

Any failure raises :class:`CheckpointError`, one message that names the file, says what is wrong and what to do.

Where it runs: the ``autoopt`` CLI verifies every ``ckpt_path`` (given or found by auto-resume) in the launching
process, before any worker starts; the local-update strategies verify a ``ckpt_path`` in the launching process
(``popen``/``spawn`` launchers) and again when a worker loads it (``torchrun``: every rank), through
:class:`VerifiedCheckpointIO`, their default checkpoint IO. A plain Lightning strategy runs none of this package's
code when it loads a checkpoint: pass ``plugins=[VerifiedCheckpointIO()]`` to the ``Trainer`` to get the same checks
(and a warning when a local-update checkpoint's per-rank replicas are dropped), or call :func:`verify_checkpoint`
yourself. Results are cached per file (path, size, modification time) within a process, so a file is read once.

Example::

    from lightning_autoopt.checkpoint import CheckpointError, VerifiedCheckpointIO, verify_checkpoint

    info = verify_checkpoint("runs/lsgd_mnist1d/checkpoints/last.ckpt")  # raises CheckpointError when damaged
    print(info.global_step, info.local_update_world_size)
    trainer = pl.Trainer(strategy="ddp", plugins=[VerifiedCheckpointIO()])  # the same checks for a plain strategy
"""

from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

__all__ = [
    "CHECKPOINT_KEY",
    "CheckpointError",
    "CheckpointInfo",
    "VerifiedCheckpointIO",
    "find_last_checkpoint",
    "payload_checksum",
    "plain_strategy_resume_message",
    "verify_checkpoint",
]

CHECKPOINT_KEY = "local_update_strategy"
"""Checkpoint key holding every rank's replica, optimizer states and strategy state (gathered to rank 0)."""

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80"  # the legacy (pre-1.6, non-zip) torch.save format starts with a pickle protocol opcode
_FIX = (
    "Resume from another checkpoint (e.g. an `epoch=...` file next to it, or a backup), or delete it to start over; "
    "the file is left as it is."
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, empty, truncated, corrupted or not a checkpoint.

    The message names the file, what is wrong with it and what to do; ``path`` holds the file.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str = _FIX) -> None:
        self.path = str(path)
        super().__init__(f"Checkpoint {self.path} {problem}. {fix}")


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`verify_checkpoint` found out about a file that passed its checks.

    Attributes:
        path: The file.
        size: Its size in bytes.
        crc_checked: Whether every record's CRC-32 was checked (``False`` for the legacy non-zip format).
        loaded: Whether it was unpickled (``load=True``) and the fields below are known.
        epoch: ``checkpoint["epoch"]`` (``None`` when absent or not loaded).
        global_step: ``checkpoint["global_step"]`` (``None`` when absent or not loaded).
        local_update_world_size: The number of per-rank replicas under :data:`CHECKPOINT_KEY` (``None`` without).
        local_update_strategy: The strategy class that wrote them (``None`` when unknown).
        eval_policy: The policy whose weights the checkpoint's ``"state_dict"`` holds (``None`` when unknown).
        payload_checked: Whether the local-update payload's checksum was verified.
    """

    path: str
    size: int
    crc_checked: bool
    loaded: bool = False
    epoch: int | None = None
    global_step: int | None = None
    local_update_world_size: int | None = None
    local_update_strategy: str | None = None
    eval_policy: str | None = None
    payload_checked: bool = False


# ---------------------------------------------------------------------------------------------- payload checksum
def _feed(crc: int, obj: Any) -> int:
    """Fold ``obj`` into a running CRC-32, in an order that does not depend on dict insertion order."""
    if isinstance(obj, Tensor):
        t = obj.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.to("cpu").contiguous().reshape(-1)
        crc = zlib.crc32(f"T{t.dtype}{tuple(obj.shape)}".encode(), crc)
        return zlib.crc32(t.view(torch.uint8).numpy().data, crc) if t.numel() else crc
    if isinstance(obj, Mapping):
        crc = zlib.crc32(b"{", crc)
        for key in sorted(obj, key=repr):
            crc = _feed(zlib.crc32(repr(key).encode(), crc), obj[key])
        return zlib.crc32(b"}", crc)
    if isinstance(obj, (list, tuple)):
        crc = zlib.crc32(b"[", crc)
        for value in obj:
            crc = _feed(crc, value)
        return zlib.crc32(b"]", crc)
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return zlib.crc32(repr(obj).encode(), crc)
    # Other objects: their type only (a repr may hold a memory address and differ after a round trip).
    return zlib.crc32(type(obj).__qualname__.encode(), crc)


def payload_checksum(payload: Any) -> str:
    """CRC-32 (8 hex digits) of a nested payload of tensors, mappings, sequences and plain values.

    Tensors contribute their dtype, shape and bytes; mappings are walked in sorted-key order, so the value survives a
    save/load round trip. The local-update strategies store it next to their per-rank payload and verify it on load.

    Args:
        payload: The object to checksum (e.g. the list of every rank's replica, optimizer state and strategy state).

    Returns:
        The checksum as 8 lower-case hex digits.

    Example::

        >>> payload_checksum({"w": torch.zeros(2)}) == payload_checksum({"w": torch.zeros(2)})
        True
    """
    return f"{_feed(0, payload) & 0xFFFFFFFF:08x}"


def check_payload(stored: Mapping[str, Any], path: str | os.PathLike[str] | None) -> bool:
    """Verify the checksum of a :data:`CHECKPOINT_KEY` entry; ``False`` when it carries none (older checkpoints).

    Raises:
        CheckpointError: When the checksum does not match.
    """
    expected = stored.get("checksum")
    if expected is None:
        return False
    actual = payload_checksum(stored.get("ranks"))
    if actual != expected:
        raise CheckpointError(
            path if path is not None else "<in memory>",
            f"has a local-update payload ({CHECKPOINT_KEY!r}: per-rank replicas, optimizer and strategy states) whose "
            f"checksum {actual} does not match the stored {expected}: the file was modified or corrupted after it was "
            "written",
        )
    return True


# ---------------------------------------------------------------------------------------------- file checks
_CACHE: dict[tuple[str, int, int], CheckpointInfo] = {}


def _zip_problem(path: Path, size: int) -> str | None:
    """``None`` when every record's CRC-32 matches; else what is wrong (raises nothing)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as err:
        return f"is not a readable zip archive ({err}; {size} bytes)"
    except (OSError, EOFError, zlib.error, RuntimeError, ValueError) as err:
        return f"could not be read as a zip archive ({type(err).__name__}: {err}; {size} bytes)"
    if bad is not None:
        return (
            f"is corrupted: its record {bad!r} fails its CRC-32 check (bytes changed on disk or in transfer; "
            "loading it would give wrong weights)"
        )
    return None


def verify_checkpoint(path: str | os.PathLike[str], load: bool = True) -> CheckpointInfo:
    """Check that ``path`` is an intact PyTorch / Lightning checkpoint; raise :class:`CheckpointError` if not.

    Args:
        path: The ``.ckpt`` file.
        load: Also unpickle it (memory-mapped) to read the epoch, step and local-update metadata and verify the
            local-update payload's checksum. The CRC-32 check alone (``load=False``) already covers every byte.

    Returns:
        What was found (:class:`CheckpointInfo`).

    Raises:
        CheckpointError: When the file is missing, empty, truncated, fails a CRC-32 or payload check, or cannot be
            unpickled for another reason than ``weights_only`` restrictions (those are left to the loader, which
            reports them with torch's own advice).

    Example::

        info = verify_checkpoint("last.ckpt")
        print(f"epoch {info.epoch}, step {info.global_step}")
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise CheckpointError(p, "does not exist", "Check the path (`ckpt_path`), or drop it to start a new run.")
    if not p.is_file():
        raise CheckpointError(p, "is not a file", "Pass the `.ckpt` file itself, not its folder.")
    stat = p.stat()
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _CACHE.get(key)
    if cached is not None and (cached.loaded or not load):
        return cached
    if stat.st_size == 0:
        raise CheckpointError(p, "is empty (0 bytes): the save that wrote it was interrupted")
    with p.open("rb") as fh:
        head = fh.read(4)
    if head == _ZIP_MAGIC:
        problem = _zip_problem(p, stat.st_size)
        if problem is not None:
            if "readable zip" in problem:
                problem = (
                    "is truncated: it starts like a checkpoint but its zip directory is missing "
                    f"({stat.st_size} bytes; the write was cut off or the copy is incomplete)"
                )
            raise CheckpointError(p, problem)
        crc_checked = True
    elif head[:1] == _LEGACY_MAGIC:
        crc_checked = False  # legacy non-zip format: no CRCs to check; unpickling below is the only check
    else:
        raise CheckpointError(
            p,
            f"is not a PyTorch checkpoint (it starts with bytes {head!r}, not a zip archive; {stat.st_size} bytes)",
            "Check that `ckpt_path` points to a `.ckpt` written by Lightning / torch.save.",
        )
    info = cached or CheckpointInfo(path=str(p), size=stat.st_size, crc_checked=crc_checked)
    if load:
        info = _load_info(p, info)
    _CACHE[key] = info
    return info


def payload_verified(path: str | os.PathLike[str] | None) -> bool:
    """Whether this process already verified the local-update payload checksum of the file at ``path`` as it is now.

    Lets a strategy skip checking the payload again right after the CLI or its launcher checked the same file.
    """
    if path is None or "://" in str(path):
        return False
    p = Path(os.fspath(path))
    try:
        stat = p.stat()
    except OSError:
        return False
    cached = _CACHE.get((str(p.resolve()), stat.st_size, stat.st_mtime_ns))
    return cached is not None and cached.payload_checked


def _load_info(p: Path, info: CheckpointInfo) -> CheckpointInfo:
    try:
        ckpt = torch.load(p, map_location="cpu", mmap=info.crc_checked)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) and info.crc_checked:
            return info  # intact but holds objects torch's safe loader refuses: the loader will say so
        raise CheckpointError(p, f"cannot be unpickled ({err})") from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(p, f"cannot be loaded ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, Mapping):
        return info
    stored = ckpt.get(CHECKPOINT_KEY)
    checked = False
    world = strategy = policy = None
    if isinstance(stored, Mapping):
        checked = check_payload(stored, p)
        world = stored.get("world_size")
        strategy = stored.get("strategy")
        policy = stored.get("eval_policy")
    return CheckpointInfo(
        path=info.path,
        size=info.size,
        crc_checked=info.crc_checked,
        loaded=True,
        epoch=ckpt.get("epoch"),
        global_step=ckpt.get("global_step"),
        local_update_world_size=world,
        local_update_strategy=strategy,
        eval_policy=policy,
        payload_checked=checked,
    )


def plain_strategy_resume_message(info: CheckpointInfo, strategy_name: str) -> str | None:
    """The warning for resuming a local-update checkpoint with a strategy that is not a local-update one.

    Returns:
        ``None`` when the checkpoint holds no local-update payload, else the message: what the plain strategy
        re-uses (the ``"state_dict"``, i.e. the ``eval_policy`` weights, and the single ``"optimizer_states"``,
        rank 0's) and what it drops (every rank's replica, the other ranks' optimizer states, the strategy state).
    """
    if info.local_update_world_size is None:
        return None
    writer = info.local_update_strategy or "a local-update strategy"
    policy = f"the {info.eval_policy!r} weights" if info.eval_policy else "the eval-policy weights"
    return (
        f"Checkpoint {info.path} was written by {writer} with {info.local_update_world_size} per-rank replicas; "
        f"{strategy_name} restores only its 'state_dict' ({policy}) and rank 0's optimizer state on every rank. "
        "Dropped: the per-rank replicas, the other ranks' optimizer states and the strategy state (rounds, leader, "
        "byte counters). Resume with the same local-update strategy to continue exactly."
    )


class VerifiedCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that runs :func:`verify_checkpoint` before loading a file.

    The local-update strategies use it by default. With a plain strategy, pass it as a plugin to get the integrity
    checks and a warning (rank 0, once per file) when a local-update checkpoint's per-rank state is dropped.

    Args:
        local_update: Set by the local-update strategies (they verify their payload themselves and handle a world
            size change); leave ``False`` for any other strategy.

    Example::

        trainer = pl.Trainer(strategy="ddp", devices=2, plugins=[VerifiedCheckpointIO()])
        trainer.fit(model, ckpt_path="runs/lsgd/checkpoints/last.ckpt")  # warns: replicas dropped
    """

    def __init__(self, local_update: bool = False) -> None:
        super().__init__()
        self.local_update = local_update
        self._warned: set[str] = set()

    @override
    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Verify the file's records, load it, and (plain strategies) verify and describe the local-update payload.

        Raises:
            CheckpointError: When the file fails a check.
        """
        is_local = not str(path).startswith(("http://", "https://")) and "://" not in str(path)
        if is_local:
            verify_checkpoint(path, load=False)
        kwargs: dict[str, Any] = {"map_location": map_location}
        if weights_only is not None:
            kwargs["weights_only"] = weights_only
        checkpoint = super().load_checkpoint(path, **kwargs)
        stored = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, Mapping) else None
        if isinstance(stored, Mapping) and not self.local_update:
            check_payload(stored, path)
            info = CheckpointInfo(
                path=str(path),
                size=0,
                crc_checked=is_local,
                loaded=True,
                local_update_world_size=stored.get("world_size"),
                local_update_strategy=stored.get("strategy"),
                eval_policy=stored.get("eval_policy"),
            )
            message = plain_strategy_resume_message(info, "this (not local-update) strategy")
            if message is not None and str(path) not in self._warned:
                self._warned.add(str(path))
                rank_zero_warn(message)
        return checkpoint


def find_last_checkpoint(trainer: Any) -> str | None:
    """The newest ``last*.ckpt`` the Trainer's ``ModelCheckpoint`` callbacks would write, or ``None``.

    Looks where each ``ModelCheckpoint`` saves (its ``dirpath``, else the first logger's folder, else
    ``default_root_dir``), exactly as Lightning's ``ckpt_path="last"`` does, but returns ``None`` instead of warning
    when there is none, so a script can pass the result straight to ``fit`` and resume only when there is something
    to resume. The folder is stable across launches with :class:`~lightning_autoopt.loggers.ResumableCSVLogger`, a
    logger with a fixed version, no logger, or a ``ModelCheckpoint(dirpath=...)``; with an auto-incremented
    ``version_N`` every launch looks in a new, empty folder.

    Args:
        trainer: A ``lightning.pytorch.Trainer``.

    Returns:
        The path of the newest last checkpoint, or ``None``.

    Example::

        trainer = pl.Trainer(logger=ResumableCSVLogger("runs", "exp"), callbacks=[ModelCheckpoint(save_last=True)])
        trainer.fit(model, datamodule, ckpt_path=find_last_checkpoint(trainer))
    """
    candidates: set[str] = set()
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        finder = getattr(callback, "_find_last_checkpoints", None)
        if finder is not None:
            candidates |= set(finder(trainer))
    existing = [c for c in candidates if os.path.isfile(c)]
    if not existing:
        return None
    return max(existing, key=os.path.getmtime)
