"""Fault injection for the restart tests (module-level, so configs can name them by class path)."""

from __future__ import annotations

import os
import signal

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
