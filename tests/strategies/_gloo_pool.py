"""A small persistent pool of gloo processes for unit-testing collectives without a Trainer.

Each worker joins one process group (FileStore) in its initializer; a task is sent to every worker with
``run_on_pool(pool, fn, *args)`` and ``fn`` reads its rank from ``torch.distributed``. Every task first waits in a
barrier: a worker blocked there cannot take a second task, so the ``world_size`` identical tasks land on distinct
ranks even when ``fn`` itself has ranks that finish without communicating (a point-to-point round in which a rank
is idle) and one worker is slow to pick up its task (a loaded machine).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import tempfile
from collections.abc import Callable
from datetime import timedelta
from typing import Any


def _init_worker(store_path: str, world_size: int, ranks: Any) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank = ranks.get()
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=60))


def make_pool(world_size: int = 4) -> mp.pool.Pool:
    ctx = mp.get_context("spawn")
    ranks = ctx.Queue()
    for r in range(world_size):
        ranks.put(r)
    fd, path = tempfile.mkstemp(prefix="gloo_store_")
    os.close(fd)
    os.remove(path)
    return ctx.Pool(world_size, initializer=_init_worker, initargs=(path, world_size, ranks))


def _after_barrier(fn: Callable[..., Any], *args: Any) -> Any:
    import torch.distributed as dist

    dist.barrier()
    return fn(*args)


def run_on_pool(pool: mp.pool.Pool, world_size: int, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """Run ``fn(*args)`` on every rank; return the results ordered by rank (``fn`` must return ``(rank, value)``)."""
    out = pool.starmap(_after_barrier, [(fn, *args)] * world_size, chunksize=1)
    return [v for _, v in sorted(out, key=lambda t: t[0])]


_POOLS: dict[int, mp.pool.Pool] = {}


def shared_pool(world_size: int = 4) -> mp.pool.Pool:
    """One pool per world size for the whole pytest session (starting 4 spawned ranks costs seconds)."""
    if world_size not in _POOLS:
        _POOLS[world_size] = make_pool(world_size)
        atexit.register(_POOLS[world_size].terminate)
    return _POOLS[world_size]
