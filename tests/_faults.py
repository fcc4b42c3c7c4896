"""Fault injection for the restart tests (module-level, so configs can name them by class path)."""

from __future__ import annotations

import os
import signal
import sys

import lightning.pytorch as pl


class SigkillAt(pl.Callback):
    """SIGKILL this process (no cleanup, no ``atexit``) before optimizer step ``step + 1`` on ``rank``.

    Only on the first attempt (``TORCHELASTIC_RESTART_COUNT`` unset or ``0``), so a ``torchrun --max-restarts``
    restart runs through.
    """

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


class LinkDownAt(pl.Callback):
    """Take this node's link of the emulated cluster down for ``seconds`` before optimizer step ``step + 1``.

    Runs on global rank ``rank`` on the first attempt only. The ``ip link set DEV down; sleep; ip link set DEV up``
    shell runs in its own session inside the node's network namespace, so it outlives the worker when the worker
    fails; :class:`lightning_autoopt.cluster.EmulatedCluster` ends it (and everything else in the namespace) when it
    closes. The device comes from the topology the cluster puts in the environment (``LIGHTNING_AUTOOPT_CLUSTER``)
    and the node index from torchrun's ``GROUP_RANK``.
    """

    def __init__(self, step: int, seconds: float, rank: int = 1) -> None:
        self.step = step
        self.seconds = seconds
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        import json
        import subprocess
        import time

        from lightning_autoopt.cluster import TOPOLOGY_ENV

        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if not (first_attempt and trainer.global_step == self.step and trainer.global_rank == self.rank):
            return
        device = json.loads(os.environ[TOPOLOGY_ENV])["devices"][int(os.environ["GROUP_RANK"])]
        script = f"ip link set {device} down; sleep {self.seconds}; ip link set {device} up"
        subprocess.Popen(["sh", "-c", script], start_new_session=True)  # noqa: S603,S607
        time.sleep(0.5)  # the link is down before this step's collectives
        stamp = time.strftime("%H:%M:%S")
        sys.stderr.write(f"LinkDownAt: {device} down at {stamp} for {self.seconds} s (step {self.step})\n")
