"""Wire-byte model of gloo's collectives: what really crosses the network, as counted by the kernel.

Measured with ``benchmarks/wire_bytes.py`` on the emulated cluster (:mod:`lightning_autoopt.cluster`; fp32 buffers
of 1-10 MB; one shaped host with 2 and 4 workers and two hosts with 1 and 2 workers each; torch 2.14.1 gloo):

* ``all_reduce`` is a **ring**: every rank sends ``2 (w - 1) / w * S`` bytes to the next rank (``S`` = buffer size).
* ``broadcast`` is a **binomial tree** from the root: in rounds ``d = 1, 2, 4, ...`` (relative rank) ``v < d``
  sends the whole buffer to ``v + d``; every non-root rank receives ``S`` once, ``(w - 1) S`` in total.
* ``all_gather`` is a **ring**: every rank sends ``(w - 1) * c`` bytes (``c`` = its own chunk).
* ``isend``/``irecv`` send exactly the buffer.

On top of the payload every TCP segment carries 66 bytes of headers the kernel counts (Ethernet 14 + IPv4 20 +
TCP with timestamps 32); a segment carries at most ``MTU - 52`` payload bytes, plus pure ACKs flow back. At MTU
9000 that is ``66 / 8948 = 0.74 %`` and ACKs measured another ``0.11 %``: kernel bytes = payload x 1.0085 (1.0084-1.0089
measured at 1-10 MB). At MTU 1500 it would be about 4.7 %.

The project's self-counting convention (:mod:`lightning_autoopt.strategies._comm`: a collective over ``n`` elements
counts ``n * element_size`` per participating rank) therefore differs from the wire by a factor that depends on the
collective and the world size (all-reduce: ``2 (w - 1) / w``, 1.5 at 4 ranks; broadcast: ``(w - 1) / w``). The
functions below give the wire bytes per rank (to count instead) and the bytes expected on the links of a cluster.
"""

from __future__ import annotations

OPS = ("all_reduce", "broadcast", "all_gather", "isend_irecv")
HEADER_BYTES = 14 + 20 + 32
"""Ethernet + IPv4 + TCP (with the timestamp option Linux uses by default) bytes per segment."""
ACK_OVERHEAD = 0.0011
"""Pure ACKs flowing back, as a fraction of the payload; measured at MTU 9000 on loopback and veth (Linux 6.18)."""


def _check(op: str, world: int) -> None:
    if op not in OPS:
        raise ValueError(f"`op` must be one of {OPS}, got {op!r}.")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"`world` must be an integer >= 1, got {world!r}.")


def overhead_factor(mtu: int = 9000) -> float:
    """Kernel-counted bytes per payload byte of a bulk TCP transfer at ``mtu`` (headers + ACKs).

    Raises:
        ValueError: If ``mtu`` cannot carry a TCP segment.

    Example::

        >>> round(overhead_factor(9000), 4)
        1.0085
    """
    if mtu <= HEADER_BYTES:
        raise ValueError(f"`mtu` must exceed the {HEADER_BYTES} header bytes, got {mtu}.")
    return 1.0 + HEADER_BYTES / (mtu - (HEADER_BYTES - 14)) + ACK_OVERHEAD


def convention_bytes(op: str, payload_bytes: int, world: int) -> int:
    """Total over all ranks under the ``_comm`` convention.

    ``payload_bytes`` per rank; for ``all_gather`` the payload is each rank's own chunk; a point-to-point transfer
    counts once, at the sender.
    """
    _check(op, world)
    return payload_bytes if op == "isend_irecv" else world * payload_bytes


def broadcast_edges(world: int, root: int = 0) -> list[tuple[int, int]]:
    """``(src, dst)`` transfers of gloo's binomial-tree broadcast (each moves the whole buffer)."""
    _check("broadcast", world)
    edges, d = [], 1
    while d < world:
        for v in range(d):
            if v + d < world:
                edges.append(((v + root) % world, (v + d + root) % world))
        d *= 2
    return edges


def rank_wire_bytes(op: str, payload_bytes: int, world: int, rank: int, root: int = 0) -> float:
    """Payload bytes ``rank`` itself puts on the wire (headers excluded): the proposed self-count.

    ``payload_bytes`` is the buffer size (all_reduce, broadcast, isend/irecv with ``root`` the sender and
    ``(root + 1) % world`` the receiver) or the rank's own chunk (all_gather).
    """
    _check(op, world)
    if world == 1:
        return 0.0
    if op == "all_reduce":
        return 2.0 * (world - 1) / world * payload_bytes
    if op == "all_gather":
        return float((world - 1) * payload_bytes)
    if op == "broadcast":
        return float(sum(payload_bytes for src, _ in broadcast_edges(world, root) if src == rank))
    return float(payload_bytes) if rank == root else 0.0


def _edges(op: str, world: int, root: int, dst: int | None) -> list[tuple[int, int, float]]:
    """(src, dst, fraction of the payload) for every transfer of ``op``."""
    if op == "all_reduce":
        return [(r, (r + 1) % world, 2.0 * (world - 1) / world) for r in range(world)]
    if op == "all_gather":
        return [(r, (r + 1) % world, float(world - 1)) for r in range(world)]
    if op == "broadcast":
        return [(s, d, 1.0) for s, d in broadcast_edges(world, root)]
    return [(root, (root + 1) % world if dst is None else dst, 1.0)]


def link_payload_bytes(
    op: str, payload_bytes: int, nodes: int, per_node: int, root: int = 0, dst: int | None = None
) -> float:
    """Payload bytes crossing the shaped links of an emulated cluster for one collective.

    One shaped host (``nodes=1``): every transfer between workers crosses the loopback, so this is the total over
    all ranks. Several hosts (ranks placed contiguously, ``per_node`` per node): the transfers between nodes, both
    directions summed.

    Raises:
        ValueError: On an unknown op or a non-positive layout.
    """
    if nodes < 1 or per_node < 1:
        raise ValueError(f"`nodes` and `per_node` must be >= 1, got {nodes} and {per_node}.")
    world = nodes * per_node
    _check(op, world)
    if world == 1:
        return 0.0
    total = 0.0
    for src, to, fraction in _edges(op, world, root, dst):
        if nodes == 1 or src // per_node != to // per_node:
            total += fraction * payload_bytes
    return total


def predicted_link_bytes(
    op: str, payload_bytes: int, nodes: int, per_node: int, root: int = 0, dst: int | None = None, mtu: int = 9000
) -> float:
    """:func:`link_payload_bytes` times :func:`overhead_factor`: what ``tc -s qdisc show`` should report."""
    return link_payload_bytes(op, payload_bytes, nodes, per_node, root, dst) * overhead_factor(mtu)
