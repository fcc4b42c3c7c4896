"""Groundwork for issue 13's benchmark: one DDP step vs one no-communication step on a shaped link.

For every link rate (one shaped host: every worker shares the rate-limited loopback, see
``lightning_autoopt.cluster``) one torchrun job with ``--workers`` gloo CPU processes times, for MLPs of several
sizes on MNIST-1D-shaped inputs (40 features; ``Classifier(arch="mlp", width=w)``: 40 -> 4w -> 4w -> 10):

* ``compute``: forward + backward + SGD step of the bare model (no communication),
* ``ddp``: the same step under ``torch.nn.parallel.DistributedDataParallel`` (gradient all-reduce in backward),

each step between barriers, the slowest rank's time per step, median over ``--steps`` steps after one warm-up step.
The ratio ``ddp / compute`` says how much the per-step all-reduce costs against a step's compute; the kernel bytes of
the DDP steps are read from the shaped device and compared with the ring all-reduce model.

    python benchmarks/step_cost.py                                   # 1gbit and 100mbit, 4 sizes, ~3 min (root)
    python benchmarks/step_cost.py --links 1gbit --widths 256,432 --steps 5
    python benchmarks/step_cost.py --arch cnn --widths 128,192,256           # the 1-D CNN (3 conv layers)

Writes ``benchmarks/out/step_cost.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lightning_autoopt.cluster import read_link_bytes
    from lightning_autoopt.models import Classifier

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch_size, 1, 40, generator=gen)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)
    rows = []
    loss_fn = torch.nn.CrossEntropyLoss()

    def timed(step_fn, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
        out = []
        for _ in range(steps):
            dist.barrier()
            t0 = time.perf_counter()
            step_fn()
            dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # the slowest rank decides
            out.append(float(dt))
        return out

    for width in args.widths:
        torch.manual_seed(0)
        model = Classifier(arch=args.arch, width=width).net
        n_params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def step(m: torch.nn.Module = model, o: torch.optim.Optimizer = opt) -> None:
            o.zero_grad()
            loss_fn(m(x), y).backward()
            o.step()

        compute = timed(step, args.steps + 1)[1:]
        ddp_model = DistributedDataParallel(model)
        ddp_step = lambda m=ddp_model, o=opt: step(m, o)  # noqa: E731
        timed(ddp_step, 1)  # warm-up (DDP's first step also builds its buckets)
        before = sum(v.sent for v in read_link_bytes().values()) if rank == 0 else 0
        ddp = timed(ddp_step, args.steps)
        after = sum(v.sent for v in read_link_bytes().values()) if rank == 0 else 0
        if rank == 0:
            rows.append(
                {
                    "width": width,
                    "params": n_params,
                    "compute_s": statistics.median(compute),
                    "ddp_s": statistics.median(ddp),
                    "kernel_bytes_per_ddp_step": (after - before) / args.steps,
                }
            )
        del ddp_model
    if rank == 0:
        Path(args.out).write_text(json.dumps({"world": world, "rows": rows}))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", default="1gbit,100mbit", help="link rates of the shaped loopback")
    parser.add_argument("--widths", default="64,128,256,432", help="Classifier(arch='mlp') widths (hidden = 4w)")
    parser.add_argument("--arch", default="mlp", choices=["mlp", "cnn"], help="Classifier arch (default mlp)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.widths = [int(w) for w in str(args.widths).split(",")]
    if args.worker:
        _worker(args)
        return
    from lightning_autoopt.cluster import EmulatedCluster
    from lightning_autoopt.strategies._wire import predicted_link_bytes

    out_dir = HERE / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for link in args.links.split(","):
        out = out_dir / f"step_cost_{link}.json"
        cmd = [
            str(Path(__file__).resolve()),
            "--worker",
            "--out",
            str(out),
            "--widths",
            ",".join(map(str, args.widths)),
        ]
        cmd += ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--arch", args.arch]
        with EmulatedCluster(nodes=1, link=link) as cluster:
            run = cluster.torchrun(cmd, args.workers, timeout=1800, log_dir=out_dir / f"step_cost_{link}_logs")
        if not run.ok:
            raise SystemExit(f"{link}: exit codes {run.returncodes}; logs in {run.logs}")
        results.append({"link": link, **json.loads(out.read_text())})
    (out_dir / "step_cost.json").write_text(json.dumps(results, indent=1))
    print("| link | params | compute step (ms) | DDP step (ms) | DDP / compute | kernel MB per DDP step | model MB |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        for r in res["rows"]:
            model = predicted_link_bytes("all_reduce", 4 * r["params"], nodes=1, per_node=res["world"])
            print(
                f"| {res['link']} | {r['params'] / 1e6:.2f} M | {1e3 * r['compute_s']:.1f} | {1e3 * r['ddp_s']:.1f} | "
                f"{r['ddp_s'] / r['compute_s']:.1f} | {r['kernel_bytes_per_ddp_step'] / 1e6:.2f} | {model / 1e6:.2f} |"
            )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
