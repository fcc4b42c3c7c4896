"""Every collective of the local-update strategies, plus the small update rules they share.

This is the only module under ``strategies/`` that talks to ``torch.distributed``: the method modules and their pure
maths (``_grawa_math``, ``_gossip``, ``graphs``) call these functions. Everything works on plain tensors (no
``Trainer``), so it can be unit-tested on a gloo process group and reused from plain PyTorch. Parameters always travel
as **one flat buffer per collective** (built with :mod:`lightning_autoopt._flat`), never one collective per tensor.

Byte accounting convention (used for ``dist/bytes_sent``): a collective over a buffer of ``n`` elements counts
``n * element_size`` bytes for every participating rank, whatever the algorithm underneath (ring, tree). This is the
same convention as "DDP sends ``4 * num_params`` bytes per step" (one all-reduce of the fp32 gradients), so the two are
directly comparable. :func:`wire_bytes` gives the other count, ``dist/wire_bytes_sent_total``: the payload bytes this
rank really puts on the network under gloo's algorithms (:mod:`lightning_autoopt.strategies._wire`: a ring all-reduce
sends ``2 (w - 1) / w`` of the buffer, a tree broadcast the buffer once per child), which the kernel's counters match.
"""

from __future__ import annotations

import atexit
import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_autoopt import _flat
from lightning_autoopt.strategies import _wire


def nbytes(tensor: Tensor) -> int:
    """Payload size of ``tensor`` in bytes (the unit of ``dist/bytes_sent``)."""
    return tensor.numel() * tensor.element_size()


def wire_bytes(op: str, payload_bytes: int, group: Any = None, src: int | None = None) -> float:
    """Payload bytes this rank puts on the wire for one collective of ``group``, under gloo's algorithms.

    Args:
        op: ``"all_reduce"``, ``"broadcast"``, ``"all_gather"`` (``payload_bytes`` = this rank's own chunk) or
            ``"isend_irecv"`` (one point-to-point send from this rank: the payload itself).
        payload_bytes: The buffer size, as the convention counts it (:func:`nbytes`).
        group: Process group (default: the world).
        src: Global rank of a broadcast's source.

    Returns:
        The bytes (TCP/IP headers excluded; see :func:`lightning_autoopt.strategies._wire.overhead_factor`); ``0.0``
        without a multi-process group.
    """
    if op == "isend_irecv":
        return float(payload_bytes)
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    root = 0
    if src is not None:
        parent = group if group is not None else dist.group.WORLD
        assert parent is not None
        root = dist.get_group_rank(parent, src)
    return _wire.rank_wire_bytes(op, payload_bytes, world, rank, root)


def require_process_group() -> None:
    """Raise a clear error when no default process group exists.

    Raises:
        RuntimeError: If ``torch.distributed`` is unavailable or not initialized.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "This strategy needs an initialized torch.distributed process group. Launch training through the "
            "Trainer (devices>=2, or torchrun/SLURM), or call torch.distributed.init_process_group first."
        )


def dist_ready() -> bool:
    """Whether a default process group with more than one rank exists (collectives would do something)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(flat: Tensor, group: Any = None) -> int:
    """Sum ``flat`` over the ranks of ``group`` in place with one all-reduce. Returns the bytes sent."""
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    return nbytes(flat)


def group_size(group: Any = None) -> int:
    """Number of ranks in ``group`` (default: the world)."""
    return dist.get_world_size(group)


def masked_all_reduce(
    flat: Tensor, include: bool, extra: Sequence[float] = (), group: Any = None
) -> tuple[Tensor, int, Tensor, int]:
    """Sum ``flat`` over the ranks of ``group`` that ``include`` it, with one all-reduce; count them on the way.

    An excluded rank contributes **zeros**, written into the buffer, never ``0 * flat``: a NaN replica times 0 is
    still NaN. One element (1 for an included rank) and the ``extra`` values (summed over every rank, included or
    not: counters that travel with the data) are appended to the same buffer, so the count costs no extra latency.
    Counts are exact while they stay below ``2 / eps`` of the buffer's dtype (256 for bfloat16, 2**24 for float32).

    Args:
        flat: This rank's 1-D buffer (not modified).
        include: Whether this rank's ``flat`` takes part in the sum.
        extra: Values summed over every rank of the group, in the buffer's dtype.
        group: Process group (default: the world).

    Returns:
        ``(sum, count, extra_sum, bytes)``: a new tensor with the sum of the included buffers, the number of included
        ranks, the summed ``extra`` values and the bytes this rank sent.

    Example::

        summed, count, _, sent = masked_all_reduce(flat, include=_flat.all_finite(flat))
        mean = summed / count if count else None  # the mean of the finite replicas
    """
    n = flat.numel()
    buf = _pack_masked(flat, include, extra)
    sent = all_reduce_sum_(buf, group=group)
    tail = buf[n:].to("cpu", torch.float64)
    return buf[:n], int(round(float(tail[0]))), tail[1:], sent


def _pack_masked(flat: Tensor, include: bool, extra: Sequence[float]) -> Tensor:
    """``[flat or zeros, 1 or 0, *extra]`` in one new buffer: what :func:`masked_all_reduce` sums."""
    n = flat.numel()
    buf = torch.zeros(n + 1 + len(extra), dtype=flat.dtype, device=flat.device)
    if include:
        buf[:n].copy_(flat)
        buf[n] = 1.0
    if extra:
        buf[n + 1 :] = torch.tensor([float(v) for v in extra], dtype=flat.dtype)
    return buf


def all_reduce_mean_(flat: Tensor, group: Any = None) -> int:
    """Average ``flat`` over the ranks of ``group`` in place with one all-reduce. Returns the bytes sent."""
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat.div_(dist.get_world_size(group))
    return nbytes(flat)


def broadcast_(flat: Tensor, src: int, group: Any = None) -> int:
    """Broadcast ``flat`` from global rank ``src`` to ``group`` in place. Returns the bytes sent.

    NCCL-safe: a CPU buffer is staged on the current CUDA device (see :func:`lightning_autoopt._flat.broadcast_`).
    """
    _flat.broadcast_(flat, src=src, group=group)
    return nbytes(flat)


def all_gather_(mine: Tensor, group: Any = None) -> tuple[Tensor, int]:
    """Gather ``mine`` (same shape on every rank) from every rank of ``group``.

    Returns:
        ``(stacked, bytes)``: a CPU tensor of shape ``(group_size, *mine.shape)`` ordered by group rank, and the
        bytes this rank sent (``nbytes(mine)``).
    """
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    return torch.stack(out).cpu(), nbytes(mine)


def all_gather_scalar(value: float, group: Any = None, device: torch.device | str = "cpu") -> Tensor:
    """Gather one float from every rank of ``group``; returns a float64 tensor ordered by group rank."""
    stacked, _ = all_gather_(torch.tensor([float(value)], dtype=torch.float64, device=device), group=group)
    return stacked.reshape(-1)


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Gather one picklable object per rank to global rank ``dst`` (its list, ordered by rank); ``None`` elsewhere."""
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, gathered, dst=dst)
    return gathered


def argmin_lowest_index(values: Tensor) -> int | None:
    """Index of the smallest finite value, ties broken by the lowest index; ``None`` when none is finite.

    Example::

        >>> argmin_lowest_index(torch.tensor([2.0, float("nan"), 1.0, 1.0]))
        2
    """
    clean = _flat.finite_or_inf(values)
    if not torch.isfinite(clean).any():
        return None
    best = clean.min()
    return int(torch.nonzero(clean == best)[0].item())


@torch.no_grad()
def leader_pull_(flat: Tensor, leader: Tensor, strength: float) -> Tensor:
    """Pull ``x <- x - strength * (x - leader)`` in place (``strength=1`` copies the leader exactly).

    The one pull of the package: LSGD toward its leader, GRAWA toward its weighted centre, the guide's example
    toward the mean.
    """
    if strength == 1.0:  # x + (leader - x) is not bitwise leader in floating point
        return flat.copy_(leader)
    flat.add_(leader - flat, alpha=strength)
    return flat


@torch.no_grad()
def elastic_update_(flat: Tensor, center: Tensor, mean: Tensor, alpha: float, beta: float) -> None:
    """One synchronous EASGD round, in place.

    Workers move towards the *old* center, ``x <- (1 - alpha) x + alpha * center``; then the center moves towards
    the worker mean taken *before* the pull, ``center <- (1 - beta) center + beta * mean``.
    """
    flat.mul_(1.0 - alpha).add_(center, alpha=alpha)
    center.mul_(1.0 - beta).add_(mean, alpha=beta)


def consensus_distance(flat: Tensor, mean: Tensor, group: Any = None, include: bool = True) -> tuple[float, int]:
    """Root-mean-square distance of the replicas to their mean, ``sqrt(mean_i ||x_i - mean||^2)``.

    ``mean`` must already be the mean of the included replicas of the group. Ranks with ``include=False`` (a
    non-finite replica) are left out of the sum and the count; NaN when no rank is included. Costs one all-reduce of
    two float64 values; returns ``(distance, bytes)``.
    """
    buf = torch.zeros(2, dtype=torch.float64, device=flat.device)
    if include:
        buf[0] = torch.sum((flat.double() - mean.double()) ** 2)
        buf[1] = 1.0
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    sq, count = (float(v) for v in buf.tolist())
    return (math.sqrt(sq / count) if count > 0 else math.nan), nbytes(buf)


def contiguous_groups(world_size: int, group_size: int) -> list[list[int]]:
    """Split ranks ``0..world_size-1`` into consecutive groups of ``group_size`` (the node layout).

    Raises:
        ValueError: If ``group_size`` is < 1 or does not divide ``world_size``.
    """
    if group_size < 1 or world_size % group_size != 0:
        raise ValueError(
            f"group_size={group_size} must be >= 1 and divide the world size {world_size}; "
            "choose a divisor of devices * num_nodes (or leave it None to group by node)."
        )
    return [list(range(start, start + group_size)) for start in range(0, world_size, group_size)]


def new_groups(world_size: int, group_size: int) -> tuple[Any, list[int]]:
    """Create every subgroup on every rank, in the same order (the rule ``new_group`` requires).

    Returns ``(my_group, my_ranks)``; when one group spans the world the default group (``None``) is returned.
    """
    layout = contiguous_groups(world_size, group_size)
    rank = dist.get_rank()
    if len(layout) == 1:
        return None, layout[0]  # nothing to destroy later: the default group is not the caller's
    mine: Any = None
    my_ranks: list[int] = []
    for ranks in layout:  # every rank calls new_group for every group, in the same order
        handle = dist.new_group(ranks=ranks)
        if rank in ranks:
            mine, my_ranks = handle, ranks
    return mine, my_ranks


def exchange_with_neighbours(buffer: Tensor, neighbours: Sequence[int], group: Any = None) -> list[Tensor]:
    """Send ``buffer`` to every neighbour and receive each neighbour's buffer (same shape and dtype).

    Uses ``torch.distributed.batch_isend_irecv``: every worker posts one send and one receive per active neighbour.
    Because the active edges of a gossip round form a union of matchings and both endpoints of an edge post the
    matching pair of operations, the exchange cannot deadlock.

    Args:
        buffer: this worker's flat buffer.
        neighbours: global ranks of the active neighbours (all distinct, never this rank).
        group: process group (default: the world).

    Returns:
        The received buffers, in the order of ``neighbours``.

    Raises:
        ValueError: if a neighbour is listed twice or is this rank.
    """
    if not neighbours:
        return []
    me = dist.get_rank()
    if len(set(neighbours)) != len(neighbours) or me in neighbours:
        raise ValueError(f"Neighbours must be distinct and exclude this rank ({me}); got {list(neighbours)}.")
    received = [torch.empty_like(buffer) for _ in neighbours]
    ops = []
    for peer, recv in zip(neighbours, received):
        ops.append(dist.P2POp(dist.isend, buffer, peer, group=group))
        ops.append(dist.P2POp(dist.irecv, recv, peer, group=group))
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return received


def destroy_group(group: Any) -> None:
    """Destroy a subgroup made by :func:`new_groups` (a local operation); already-destroyed groups are ignored."""
    if group is None or not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.destroy_process_group(group)
    except ValueError:  # destroyed with the world group already
        pass


def bounded_barrier(timeout_s: float) -> bool:
    """A barrier that gives up after ``timeout_s`` seconds (or when a peer has closed its connections).

    Returns:
        ``True`` when every rank arrived in time, ``False`` otherwise (never raises).
    """
    try:
        work = dist.barrier(async_op=True)
        assert work is not None
        work.wait(timeout=timedelta(seconds=timeout_s))
    except Exception:  # noqa: BLE001  (timeout, closed connection, aborted group: all mean "do not wait")
        return False
    return True


# The default process group of this process, when a local-update strategy created it (see `own_default_group`).
_OWNED: dict[str, Any] = {"owned": False, "clean": False, "timeout_s": 30.0, "hooked": False}


def own_default_group(barrier_timeout_s: float) -> None:
    """Record that the caller created the default process group of this process and must destroy it.

    Registers (once per process) an exit hook that destroys the group if it is still open when the interpreter
    exits: with the ``popen`` launcher or ``torchrun`` the group is kept after ``fit`` (a ``test`` in the same process
    reuses it), and a spawned worker that dies on an exception never reaches ``teardown``. An open gloo group at
    interpreter exit is what aborts a process with "terminate called without an active exception".
    """
    _OWNED.update(owned=True, clean=False, timeout_s=float(barrier_timeout_s))
    if not _OWNED["hooked"]:
        atexit.register(_release_at_exit)
        _OWNED["hooked"] = True


def starting_stage() -> None:
    """A fit/validate/test is running on the owned group: an exit before :func:`stage_finished` is not clean."""
    _OWNED["clean"] = False


def stage_finished() -> None:
    """The stage ended without an exception: an exit hook may wait for the other ranks before destroying."""
    _OWNED["clean"] = True


def owns_default_group() -> bool:
    """Whether a local-update strategy created the default group of this process and has not destroyed it."""
    return bool(_OWNED["owned"]) and dist.is_available() and dist.is_initialized()


def release_default_group(barrier: bool) -> bool:
    """Destroy the default group (and with it every subgroup) if a local-update strategy created it.

    Args:
        barrier: Wait first (at most the recorded timeout) for every rank to arrive, so no peer is still inside a
            collective with this rank. Pass ``False`` after an exception: the other ranks may never arrive, and
            closing the connections makes their pending collectives fail at once instead of hanging.

    Returns:
        Whether a group was destroyed.
    """
    if not owns_default_group():
        _OWNED["owned"] = False
        return False
    _OWNED["owned"] = False
    if barrier:
        bounded_barrier(_OWNED["timeout_s"])
    dist.destroy_process_group()
    return True


def _release_at_exit() -> None:
    release_default_group(barrier=bool(_OWNED["clean"]))


class PendingMaskedSum:
    """A :func:`masked_all_reduce` launched asynchronously (``async_op=True``) and read one round later.

    ``launch`` packs the buffer exactly as :func:`masked_all_reduce` does and starts the all-reduce on ``group``
    (give overlapped rounds their own process group, so that the small blocking collectives issued while it is in
    flight do not queue behind it); ``take`` waits for it and returns what :func:`masked_all_reduce` returns, plus
    the snapshot it was launched with. ``state_dict`` waits too and keeps the snapshot and the summed buffer, so a
    checkpoint written while a sum is in flight resumes to the same numbers.

    Example::

        pending = PendingMaskedSum()
        sent = pending.launch(flat, include=True, extra=[0.0], group=round_group)
        ...  # local steps
        snapshot, summed, count, extra = pending.take()
    """

    def __init__(self) -> None:
        self.snapshot: Tensor | None = None
        self.buffer: Tensor | None = None
        self._work: Any = None

    @property
    def pending(self) -> bool:
        """Whether a sum was launched (or restored) and not taken yet."""
        return self.snapshot is not None

    def launch(self, flat: Tensor, include: bool, extra: Sequence[float] = (), group: Any = None) -> int:
        """Start the masked sum of ``flat`` (kept as the snapshot; not modified). Returns the bytes sent."""
        if self.pending:
            raise RuntimeError("a masked sum is already in flight; take() it first.")
        buf = _pack_masked(flat, include, extra)
        self._work = dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group, async_op=True)
        self.snapshot, self.buffer = flat, buf
        return nbytes(buf)

    def wait(self) -> None:
        """Block until the in-flight sum (if any) is done."""
        if self._work is not None:
            work, self._work = self._work, None
            work.wait()

    def take(self) -> tuple[Tensor, Tensor, int, Tensor]:
        """Wait, then ``(snapshot, sum, count, extra_sum)``; the helper is empty afterwards.

        Raises:
            RuntimeError: If nothing is pending.
        """
        if self.snapshot is None or self.buffer is None:
            raise RuntimeError("no masked sum is pending.")
        self.wait()
        snapshot, buf = self.snapshot, self.buffer
        self.snapshot = self.buffer = None
        n = snapshot.numel()
        tail = buf[n:].to("cpu", torch.float64)
        return snapshot, buf[:n], int(round(float(tail[0]))), tail[1:]

    def abandon(self) -> None:
        """Forget the pending sum without waiting (after a failure; the group is destroyed next)."""
        self.snapshot = self.buffer = self._work = None

    def state_dict(self) -> dict[str, Any]:
        """``{}`` when nothing is pending, else the snapshot and the summed buffer (waits for the sum)."""
        if not self.pending:
            return {}
        self.wait()
        return {"snapshot": self.snapshot, "buffer": self.buffer}

    def load_state_dict(self, state: Mapping[str, Any], device: Any = None) -> None:
        """Restore :meth:`state_dict` (tensors moved to ``device``)."""
        self.abandon()
        if state.get("snapshot") is not None and state.get("buffer") is not None:
            self.snapshot = state["snapshot"].to(device) if device is not None else state["snapshot"]
            self.buffer = state["buffer"].to(device) if device is not None else state["buffer"]


def new_world_group() -> Any:
    """A second process group over every rank (a collective: call it on every rank, in the same order)."""
    return dist.new_group(ranks=list(range(dist.get_world_size())))
