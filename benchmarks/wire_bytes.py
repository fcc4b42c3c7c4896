"""What gloo really puts on the wire per collective, measured by the kernel (tc) on an emulated cluster.

For each layout (one shaped host with 2 and 4 workers; two hosts with 1 and 2 workers each) one torchrun job runs
``all_reduce``, ``broadcast``, ``all_gather`` and ``isend/irecv`` on fp32 buffers of 1, 4 and 10 MB. Rank 0 reads
the kernel's byte counters of the shaped devices (``lightning_autoopt.cluster.read_link_bytes``) around each
collective, repeated ``--repeats`` times between barriers; the bytes of the barriers alone are measured the same way
and subtracted. The table compares the kernel count with

* the project's self-counting convention (``strategies/_comm.py``): a collective over ``n`` elements counts
  ``n * element_size`` bytes for every participating rank, and
* the wire model of :mod:`lightning_autoopt.strategies._wire` (algorithm payload x TCP/IP/Ethernet overhead).

One shaped host: the loopback carries every byte between workers, so the kernel count is the total over all ranks.
Two hosts: only the bytes between nodes cross the shaped veth pair (sum of both directions).

    python benchmarks/wire_bytes.py                 # all layouts, ~2-3 minutes on 2 cores (needs root)
    python benchmarks/wire_bytes.py --layouts 2x2   # one layout

Writes ``benchmarks/out/wire_bytes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

OPS = ("all_reduce", "broadcast", "all_gather", "isend_irecv")
LAYOUTS = {"1x2": (1, 2), "1x4": (1, 4), "2x1": (2, 1), "2x2": (2, 2)}


def _worker(sizes_mb: list[float], repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from lightning_autoopt.cluster import read_link_bytes

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def total() -> int:
        return sum(link.sent for link in read_link_bytes().values()) if rank == 0 else 0

    def measure(fn) -> float:  # type: ignore[no-untyped-def]
        dist.barrier()
        before = total()
        dist.barrier()
        for _ in range(repeats):
            fn()
            dist.barrier()
        after = total()
        dist.barrier()
        return (after - before) / repeats

    barrier_bytes = measure(lambda: None)  # one barrier per repeat is inside every measurement
    rows = []
    for size_mb in sizes_mb:
        n = int(size_mb * 1e6 / 4)
        buf = torch.ones(n)
        chunk = torch.ones(n // world)
        gathered = [torch.zeros(n // world) for _ in range(world)]

        def p2p(buf: torch.Tensor = buf) -> None:
            if rank == 0:
                dist.isend(buf, dst=world - 1).wait()  # to the last rank: on another node when there are two
            elif rank == world - 1:
                dist.irecv(buf, src=0).wait()

        ops = {
            "all_reduce": (lambda buf=buf: dist.all_reduce(buf), n),
            "broadcast": (lambda buf=buf: dist.broadcast(buf, src=0), n),
            "all_gather": (lambda g=gathered, c=chunk: dist.all_gather(g, c), n // world),
            "isend_irecv": (p2p, n),
        }
        for op, (fn, elements) in ops.items():
            kernel = measure(fn) - barrier_bytes
            rows.append({"op": op, "elements": elements, "payload_bytes": 4 * elements, "kernel_bytes": kernel})
    if rank == 0:
        Path(out).write_text(json.dumps({"world": world, "barrier_bytes": barrier_bytes, "rows": rows}))
    dist.barrier()
    dist.destroy_process_group()


def _run_layout(name: str, args: argparse.Namespace) -> dict:
    from lightning_autoopt.cluster import EmulatedCluster

    nodes, per_node = LAYOUTS[name]
    out = HERE / "out" / f"wire_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = ",".join(str(s) for s in args.sizes_mb)
    command = [str(Path(__file__).resolve()), "--worker", "--sizes-mb", sizes, "--repeats", str(args.repeats)]
    with EmulatedCluster(nodes=nodes, link=args.link) as cluster:
        run = cluster.torchrun(
            [*command, "--out", str(out)], per_node, timeout=600, log_dir=HERE / "out" / f"wire_{name}_logs"
        )
    if not run.ok:
        raise RuntimeError(f"layout {name} failed: exit codes {run.returncodes}, logs in {run.logs}")
    data = json.loads(out.read_text())
    data.update(layout=name, nodes=nodes, per_node=per_node, link=args.link)
    return data


def table(results: list[dict]) -> str:
    from lightning_autoopt.strategies._wire import convention_bytes, predicted_link_bytes

    lines = [
        "| layout | op | payload MB | convention MB (all ranks) | kernel MB | kernel / convention | model MB | "
        "kernel / model |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        world = res["world"]
        for row in res["rows"]:
            conv = convention_bytes(row["op"], row["payload_bytes"], world)
            dst = world - 1 if row["op"] == "isend_irecv" else None
            model = predicted_link_bytes(row["op"], row["payload_bytes"], res["nodes"], res["per_node"], dst=dst)
            k = row["kernel_bytes"]
            lines.append(
                f"| {res['layout']} | {row['op']} | {row['payload_bytes'] / 1e6:.2f} | {conv / 1e6:.2f} | "
                f"{k / 1e6:.3f} | {k / conv:.3f} | {model / 1e6:.3f} | {k / model:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--layouts", default="1x2,1x4,2x1,2x2", help="nodes x workers per node, comma-separated")
    parser.add_argument("--sizes-mb", default="1,4,10", help="buffer sizes in MB (fp32), comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per collective (averaged)")
    parser.add_argument("--link", default="1gbit", help="rate of the shaped links")
    parser.add_argument("--table-only", action="store_true", help="re-print the table of the last run's JSON")
    args = parser.parse_args()
    args.sizes_mb = [float(s) for s in args.sizes_mb.split(",")]
    if args.worker:
        _worker(args.sizes_mb, args.repeats, args.out)
        return
    if args.table_only:
        print(table(json.loads((HERE / "out" / "wire_bytes.json").read_text())))
        return
    results = [_run_layout(name.strip(), args) for name in args.layouts.split(",")]
    (HERE / "out" / "wire_bytes.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
