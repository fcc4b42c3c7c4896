"""torchft's DiLoCo on the same small workload, as an external anchor for ``DiLoCoStrategy`` (issue 13).

torchft (PyTorch's fault-tolerance library, ``pip install torchft``; measured with 0.2.0 on torch 2.14.1) runs
DiLoCo between *replica groups* coordinated by its Rust "lighthouse" quorum service. Here every replica group is one
CPU process (gloo), the lighthouse runs inside this driver process bound to 127.0.0.1 (no service to deploy, no
traffic leaves the machine; it also works inside an emulated-cluster namespace), and every replica trains
``Classifier(arch="cnn")`` on its own shard of MNIST-1D with SGD (lr 0.05, momentum 0.9, wd 5e-4), an outer
Nesterov SGD every ``--period`` inner steps. Training stops right after an outer step (the inner-step budget is
rounded down to a multiple of the period), so every replica holds the global weights, whose test accuracy is
reported (the checksums must agree between replicas). Data: replica ``r`` takes every ``R``-th training sample,
shuffled by its own generator (not Lightning's DistributedSampler, so the batches differ from ``DiLoCoStrategy``'s:
compare accuracies over seeds, not bitwise).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/_torchft_anchor.py --replicas 4 --epochs 15 --seed 0

Writes ``benchmarks/out/torchft_anchor.json``. Needs the optional ``torchft`` package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def _replica(replica: int, lighthouse: str, args: argparse.Namespace, queue: object) -> None:
    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist
    from torchft.local_sgd import DiLoCo
    from torchft.manager import Manager
    from torchft.process_group import ProcessGroupGloo

    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier

    torch.set_num_threads(1)
    pl.seed_everything(args.seed, verbose=False)  # identical initial weights in every replica
    model = Classifier(arch="cnn", lr=0.05, momentum=0.9, weight_decay=5e-4)
    net = model.net
    inner = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    outer = torch.optim.SGD(net.parameters(), lr=args.outer_lr, momentum=args.outer_momentum, nesterov=True)

    dm = MNIST1DDataModule(batch_size=args.batch_size, num_samples=5000, seed=0, cache_dir=str(OUT / "cache"))
    dm.setup("fit")
    dm.setup("test")
    train = dm.train_dataloader().dataset
    shard = torch.utils.data.Subset(train, list(range(replica, len(train), args.replicas)))
    gen = torch.Generator().manual_seed(args.seed * 100 + replica)
    loader = torch.utils.data.DataLoader(shard, batch_size=args.batch_size, shuffle=True, generator=gen)

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)

    def state_dict() -> dict:
        return {"model": net.state_dict(), "inner": inner.state_dict()}

    def load_state_dict(sd: dict) -> None:
        net.load_state_dict(sd["model"])
        inner.load_state_dict(sd["inner"])

    manager = Manager(
        pg=ProcessGroupGloo(timeout=timedelta(seconds=60)),
        min_replica_size=args.replicas,
        use_async_quorum=False,
        load_state_dict=load_state_dict,
        state_dict=state_dict,
        replica_id=f"replica{replica}",
        store_addr="127.0.0.1",
        store_port=store.port,
        rank=0,
        world_size=1,
        lighthouse_addr=lighthouse,
        hostname="127.0.0.1",
        port=0,
        timeout=timedelta(seconds=60),
        quorum_timeout=timedelta(seconds=60),
        connect_timeout=timedelta(seconds=60),
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = 0
    budget = (args.epochs * len(loader)) // args.period * args.period  # end right after an outer step
    start = time.perf_counter()
    try:
        with DiLoCo(manager, [net], inner, outer, sync_every=args.period, backup_device=torch.device("cpu"),
                    pin_memory=False):  # fmt: skip
            while steps < budget:
                for x, y in loader:
                    inner.zero_grad()
                    loss_fn(net(x), y).backward()
                    inner.step()  # DiLoCo's post-step hook runs the outer step every `period` steps
                    steps += 1
                    if steps == budget:
                        break
        wall = time.perf_counter() - start
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in dm.test_dataloader():
                correct += int((net(x).argmax(1) == y).sum())
                total += len(y)
        flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        queue.put(  # type: ignore[attr-defined]
            {"replica": replica, "acc": correct / total, "steps": steps, "manager_step": manager.current_step(),
             "wall_s": wall, "checksum": float(flat.double().sum())}
        )  # fmt: skip
    finally:
        manager.shutdown(wait=False)


def main() -> None:
    os.environ.setdefault("RUST_LOG", "warn")  # torchft's Rust side logs every quorum at INFO
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--period", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32, help="per replica")
    parser.add_argument("--outer-lr", type=float, default=0.7)
    parser.add_argument("--outer-momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        from torchft._torchft import LighthouseServer
    except ImportError as err:
        sys.exit(f"torchft is not installed ({err}); `pip install torchft` (it keeps torch as is).")
    import torch.multiprocessing as mp

    lighthouse = LighthouseServer(bind="127.0.0.1:0", min_replicas=args.replicas)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_replica, args=(r, lighthouse.address(), args, queue)) for r in range(args.replicas)]
    for p in procs:
        p.start()
    try:
        rows = [queue.get(timeout=3600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        lighthouse.shutdown()
    rows.sort(key=lambda r: r["replica"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "torchft_anchor.json").write_text(json.dumps({"args": vars(args), "replicas": rows}, indent=1))
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
