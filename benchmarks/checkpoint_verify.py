"""What checking a checkpoint before loading it costs: ``torch.load`` vs ``verify_checkpoint`` on one file.

Saves a checkpoint of ``--tensors`` float32 tensors of 4096 x 1024 (16 MiB each) plus a local-update payload that
shares their storages (as a strategy's replicas share nothing, this is the cheap case for the file size but the same
bytes for the checks), then times, each ``--repeats`` times (best of), in this order:

* ``torch.load(path, weights_only=True)``: what resuming reads anyway;
* ``verify_checkpoint(path, load=False)``: the zip directory and the CRC-32 of every record (``zipfile.testzip``);
* ``verify_checkpoint(path)``: plus a memory-mapped unpickle and the payload checksum.

The file is read from the page cache after the first pass (it was just written): the numbers are CPU cost, not disk
speed. The in-process cache of ``verify_checkpoint`` is cleared before each call.

    python -m benchmarks.checkpoint_verify                # 50 tensors = 800 MiB, about 15 s
    python -m benchmarks.checkpoint_verify --tensors 10   # 160 MiB
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_autoopt import checkpoint as ck


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        ck._CACHE.clear()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint_verify", description=__doc__.split("\n")[0])
    parser.add_argument("--tensors", type=int, default=50, help="16 MiB tensors in the state dict")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.ckpt"
        state = {f"layer{i}.weight": torch.randn(4096, 1024) for i in range(args.tensors)}
        ranks = [{"model": state, "strategy": {"num_steps": 1}}]
        payload = {"world_size": 1, "strategy": "LSGDStrategy", "ranks": ranks, "checksum": ck.payload_checksum(ranks)}
        torch.save({"state_dict": state, "global_step": 1, "epoch": 0, ck.CHECKPOINT_KEY: payload}, path)
        mib = os.path.getsize(path) / 2**20
        rows = [
            ("torch.load(weights_only=True)", _best(lambda: torch.load(path, weights_only=True), args.repeats)),
            ("verify_checkpoint(load=False)", _best(lambda: ck.verify_checkpoint(path, load=False), args.repeats)),
            ("verify_checkpoint()", _best(lambda: ck.verify_checkpoint(path), args.repeats)),
        ]
    base = rows[0][1]
    print(f"checkpoint of {mib:.0f} MiB, best of {args.repeats}")
    print("| call | seconds | vs torch.load |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| `{name}` | {seconds:.2f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
