"""Process-group setup after a ``torchrun --max-restarts`` restart, on a fresh, attempt-prefixed store.

Under TorchElastic the workers share the elastic agent's TCP store across restart attempts; with the torch 2.14 gloo
backend a restarted group can read the previous attempt's peer addresses from it and fail with "Gloo connectFullMesh
failed ... Connection refused". Prefixing the store with the restart count avoids the stale keys. Everything else is
what ``DDPStrategy.setup_distributed`` does (it reads the same Lightning internals), so outside a restart the
strategy simply calls it.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy


def torchrun_restart_attempt() -> str | None:
    """The restart count when this process is a TorchElastic restart sharing the agent's store, else ``None``."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return None
    return restart


def setup_restarted_process_group(strategy: DDPStrategy, attempt: str) -> None:
    """``DDPStrategy.setup_distributed`` for restart ``attempt``, on a store prefixed with the attempt."""
    reset_seed()
    strategy.set_world_ranks()
    strategy._process_group_backend = strategy._get_process_group_backend()
    assert strategy.cluster_environment is not None
    timeout = strategy._timeout if strategy._timeout is not None else timedelta(minutes=30)
    store = dist.TCPStore(
        strategy.cluster_environment.main_address,
        strategy.cluster_environment.main_port,
        strategy.world_size,
        is_master=False,
        timeout=timeout,
    )
    prefixed = dist.PrefixStore(f"/lightning_autoopt/attempt_{attempt}", store)
    device_id = strategy.root_device if strategy.root_device.type != "cpu" else None
    dist.init_process_group(
        strategy._process_group_backend,
        store=prefixed,
        rank=strategy.global_rank,
        world_size=strategy.world_size,
        timeout=timeout,
        device_id=device_id,
    )
