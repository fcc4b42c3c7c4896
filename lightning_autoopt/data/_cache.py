"""Private helpers: where generated data sets are cached, and how to write them safely.

Several processes (DDP ranks, parallel test workers, two recipes started at once) may generate the same data set at
the same time. Each writes to its own temporary file in the cache directory and then renames it into place with
``os.replace``, which is atomic on POSIX and Windows, so a reader only ever sees a missing file or a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV_VAR = "LIGHTNING_AUTOOPT_CACHE"


def resolve_cache_dir(cache_dir: str | None) -> Path:
    """The cache directory: the argument, else ``$LIGHTNING_AUTOOPT_CACHE``, else ``~/.cache/lightning_autoopt``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lightning_autoopt"


def cache_key(params: dict[str, Any]) -> str:
    """A short, stable hash of the generation parameters (JSON with sorted keys)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as ``.npz`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            # Saving through a file handle keeps numpy from appending ".npz" to the temporary name.
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Load an ``.npz`` file into memory, or return ``None`` when it is missing or unreadable (then regenerate)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError):
        return None
