"""A CSV logger whose record survives restarts: one folder per run, every step exactly once.

Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` starts a new ``version_N`` folder for every run and, when
it is pointed at a folder that already holds logs, deletes the previous ``metrics.csv``. A run that ``torchrun
--max-restarts`` restarts, or that you re-launch after a crash, therefore either splits its record over two folders
or loses the first attempt's rows. :class:`ResumableCSVLogger` keeps one record per run instead:

* it writes to a fixed folder, ``save_dir/name/`` (no ``version_N``), so a restarted run finds its own logs and
  its checkpoints (``ModelCheckpoint`` puts them in ``save_dir/name/checkpoints/``);
* it never deletes rows: the new attempt appends to the existing ``metrics.csv``;
* rows the interrupted attempt logged *after* its last checkpoint are logged again when training replays those
  steps, so at the first row a resumed ``fit`` logs (step ``S``), rows with ``step >= S`` are moved from
  ``metrics.csv`` to ``metrics.replayed.csv`` (kept for inspection, not used by the plots).

``metrics.csv`` thus holds every logged step exactly once and is what :func:`lightning_autoopt.plots.read_metrics_csv`
reads. The row format is Lightning's (one row per logging call, ``epoch`` and ``step`` columns).

The logger tells a ``fit`` from a ``validate``/``test`` run through :meth:`ResumableCSVLogger.log_graph`, which the
Trainer calls at the start of every run with the module; rows of ``validate``/``test`` are appended and never
replace training rows. It relies on training being a replay after a resume (the same metrics at the same steps);
rows an interrupted attempt logged after its checkpoint at steps the resumed one does not reach stay in the record.

The ``autoopt`` CLI uses this logger by default (named after the config file) and resumes from
``save_dir/name/checkpoints/last.ckpt`` when it exists; see :mod:`lightning_autoopt.cli`.

Example::

    from lightning_autoopt.loggers import ResumableCSVLogger

    logger = ResumableCSVLogger("runs", name="my_run")    # runs/my_run/metrics.csv, runs/my_run/checkpoints/
    trainer = pl.Trainer(logger=logger, callbacks=[ModelCheckpoint(save_last=True)])
    last = Path("runs/my_run/checkpoints/last.ckpt")
    trainer.fit(model, datamodule, ckpt_path=last if last.exists() else None)
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

__all__ = ["REPLAYED_FILE", "ResumableCSVLogger", "read_csv_rows"]

#: Rows a resumed ``fit`` replaced (logged by an interrupted attempt after its last checkpoint) are moved here.
REPLAYED_FILE = "metrics.replayed.csv"


def read_csv_rows(path: str | os.PathLike[str], fs: Any = None) -> tuple[list[str], list[dict[str, str]], int]:
    """Read a ``metrics.csv``: its header, its well-formed rows, and how many torn rows were skipped.

    A process killed while writing leaves at most a partial last line: a last line without its line end, a row
    whose field count differs from the header or whose ``step`` is not an integer is skipped (and counted) rather
    than read as a wrong number.

    Args:
        path: The CSV file.
        fs: An fsspec filesystem (default: the local one).

    Returns:
        ``(header, rows, skipped)``; ``([], [], 0)`` when the file does not exist.
    """
    opener = fs.open if fs is not None else open
    exists = fs.isfile(path) if fs is not None else os.path.isfile(path)
    if not exists:
        return [], [], 0
    with opener(path, "r", newline="") as fh:
        text = fh.read()
    records = list(csv.reader(text.splitlines()))
    header = records[0] if records else []
    body = records[1:]
    skipped = 0
    if records and not text.endswith(("\n", "\r")):  # the last line was cut off mid-write
        if body:
            body, skipped = body[:-1], 1
        else:  # even the header is incomplete
            header, skipped = [], 1
    rows = []
    for values in body:
        row = dict(zip(header, values))
        if len(values) != len(header) or ("step" in row and not _is_int(row["step"])):
            skipped += 1
            continue
        rows.append(row)
    return header, rows, skipped


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer that appends to an existing ``metrics.csv`` and drops rows a resumed fit replays."""

    def __init__(self, log_dir: str) -> None:
        self._header: list[str] = []
        self._rows: list[dict[str, str]] = []
        self._torn = 0
        self.pending_fit = False  # set by the logger at the start of a fit: the next row decides what is replayed
        super().__init__(log_dir=log_dir)
        self.metrics_keys = [k for k in self._header if k]
        if self._torn:  # a partial last line (killed while writing): rewrite before anything is appended to it
            self._write_rows(self.metrics_file_path, self._rows)
            rank_zero_info(f"ResumableCSVLogger: skipped {self._torn} torn row(s) in {self.metrics_file_path}.")
            self._torn = 0

    @override
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes the previous metrics.csv here; keep it and remember its rows instead.
        self._header, self._rows, self._torn = read_csv_rows(self.metrics_file_path, self._fs)

    @override
    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if self.pending_fit:
            self.pending_fit = False
            first = step if step is not None else len(self.metrics)
            self._drop_replayed(int(first))
        super().log_metrics(metrics_dict, step)

    def _drop_replayed(self, first_step: int) -> None:
        """Move rows with ``step >= first_step`` (logged after the checkpoint this fit resumed from) aside."""
        keep = [r for r in self._rows if int(r.get("step") or -1) < first_step]
        replayed = [r for r in self._rows if int(r.get("step") or -1) >= first_step]
        if not replayed:
            return
        self._append_rows(os.path.join(self.log_dir, REPLAYED_FILE), replayed)
        self._write_rows(self.metrics_file_path, keep)
        steps = sorted({int(r["step"]) for r in replayed})
        rank_zero_info(
            f"ResumableCSVLogger: this fit logs from step {first_step}; moved {len(replayed)} row(s) (steps "
            f"{steps[0]}..{steps[-1]}) that an earlier attempt logged after its checkpoint to {REPLAYED_FILE}; "
            f"{self.metrics_file_path} keeps every step once."
        )
        self._rows = keep

    def _write_rows(self, path: str, rows: list[dict[str, str]]) -> None:
        tmp = path + ".tmp"
        with self._fs.open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.metrics_keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self._fs.mv(tmp, path)

    def _append_rows(self, path: str, rows: list[dict[str, str]]) -> None:
        header, old, _ = read_csv_rows(path, self._fs)
        keys = sorted(set(header) | {k for r in rows for k in r})
        with self._fs.open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys, restval="")
            writer.writeheader()
            writer.writerows(old + rows)

    @override
    def save(self) -> None:
        # Keep the in-memory copy of the file in step with what is appended (a later resume in this process).
        pending = [{k: "" if v is None else str(v) for k, v in row.items()} for row in self.metrics]
        super().save()
        self._rows.extend(pending)


class ResumableCSVLogger(CSVLogger):
    """A :class:`~lightning.pytorch.loggers.CSVLogger` for runs that restart: fixed folder, appends, no duplicates.

    Args:
        save_dir: Folder that holds the run folder.
        name: The run's folder name: logs go to ``save_dir/name/metrics.csv``, ``ModelCheckpoint`` without a
            ``dirpath`` writes to ``save_dir/name/checkpoints/``. One name is one run: launching the same name
            again continues its record (and the ``autoopt`` CLI its training).
        version: ``""`` (default) for no version sub-folder. A string or int puts the run in
            ``save_dir/name/<version>`` (an int as ``version_<int>``); ``None`` picks the next free
            ``version_N`` as Lightning's logger does, which makes every launch a new folder (not restart-ready).
        prefix: Prefix for every metric name.
        flush_logs_every_n_steps: As in Lightning's ``CSVLogger`` (the Trainer also flushes after every logging
            call, so rows reach the disk as they are logged).

    Raises:
        ValueError: If ``name`` is empty.

    Example::

        logger = ResumableCSVLogger("runs", name="lsgd_mnist1d")
        trainer = pl.Trainer(logger=logger, callbacks=[ModelCheckpoint(save_last=True)])
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str] = ".",
        name: str = "lightning_logs",
        version: int | str | None = "",
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        if not name:
            raise ValueError("`name` must be a non-empty folder name (the run's folder under `save_dir`).")
        super().__init__(
            save_dir=os.fspath(save_dir),
            name=name,
            version=version,
            prefix=prefix,
            flush_logs_every_n_steps=flush_logs_every_n_steps,
        )

    @property
    @override
    def log_dir(self) -> str:
        """``save_dir/name`` (or ``save_dir/name/<version>`` when a version is set)."""
        version = self.version
        if version == "":
            return self.root_dir
        return os.path.join(self.root_dir, version if isinstance(version, str) else f"version_{version}")

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> _ResumableWriter:  # type: ignore[override]
        """The CSV writer (a no-op stand-in on ranks other than 0, as for Lightning's logger)."""
        if self._experiment is not None:
            return self._experiment  # type: ignore[return-value]
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment  # type: ignore[return-value]

    @override
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Called by the Trainer at the start of every run: marks a ``fit``, whose first row decides the replay."""
        trainer = getattr(model, "_trainer", None)  # not `model.trainer`: that raises when detached
        if getattr(rank_zero_only, "rank", 0) == 0 and trainer is not None and trainer.state.fn == "fit":
            self.experiment.pending_fit = True
