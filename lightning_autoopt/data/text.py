"""Character-level language-model data from text that ships with Python (no download)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset
from typing_extensions import override

from lightning_autoopt.data._sampling import SplitLoadersMixin, check_loader_args


def python_docs_text() -> str:
    """The text of the Python language reference topics that every CPython ships (``pydoc_data.topics``).

    About 0.5 MB of English prose and code examples (the size depends on the Python version), joined in the sorted
    order of the topic names so the corpus is the same on every run.

    Raises:
        ImportError: If this Python build has no ``pydoc_data`` (some minimal distributions strip it).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # pragma: no cover - present in every CPython source build
        raise ImportError(
            "This Python has no `pydoc_data` package; pass your own text: CharTextDataModule(text=...)."
        ) from err
    return "\n\n".join(topics[name] for name in sorted(topics))


class CharTextDataModule(SplitLoadersMixin):
    """Next-character prediction on a text, cut into fixed-length windows; the default text is Python's docs.

    The text (``text``, or :func:`python_docs_text` when ``None``) is cut in order into train / val / test, so the
    three splits are disjoint stretches of text. Each split is cut into non-overlapping windows of
    ``context + 1`` characters; a sample is ``(x, y)`` with ``x = window[:-1]`` and ``y = window[1:]``, both int64 of
    shape ``(context,)``. The vocabulary is the set of characters of the *training* split that occur at least
    ``min_count`` times, sorted, plus one unknown symbol (index 0) for everything else. ``vocab_size`` and
    :meth:`decode` describe it.

    The training loader reshuffles the windows every epoch with a permutation that depends only on
    ``(seed, epoch)``, so a resumed run sees the same order as one that never stopped.

    Args:
        context: Characters per sample (the model's context length), >= 1.
        batch_size: Samples per batch for every loader.
        text: The corpus; ``None`` uses :func:`python_docs_text`.
        min_count: Characters seen fewer times than this in the training split map to the unknown symbol.
        seed: Seeds the training-loader shuffling.
        val_fraction: Fraction of the text used for validation, in ``(0, 1)``.
        test_fraction: Fraction of the text used for testing, in ``(0, 1)``; ``val_fraction + test_fraction < 1``.
        num_workers: ``DataLoader`` worker processes.

    Raises:
        ValueError: If an argument is out of range or the text is too short for one window per split.

    Example::

        dm = CharTextDataModule(context=64, batch_size=32)
        dm.setup("fit")
        x, y = next(iter(dm.train_dataloader()))  # (32, 64) each; y is x shifted by one character
    """

    def __init__(
        self,
        context: int = 64,
        batch_size: int = 64,
        text: str | None = None,
        min_count: int = 5,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_loader_args(batch_size, num_workers)
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ValueError(f"context must be an int >= 1 (characters per sample), got {context!r}.")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}.")
        if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
            raise ValueError(
                f"val_fraction and test_fraction must be in (0, 1) with a sum < 1, got {val_fraction} and "
                f"{test_fraction}."
            )
        self.save_hyperparameters(ignore=["text"])
        self.context, self.batch_size, self.min_count = context, batch_size, min_count
        self.seed, self.num_workers = seed, num_workers
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self._text = text
        self.chars: list[str] = []
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    @property
    def vocab_size(self) -> int:
        """Number of symbols (the characters kept plus the unknown symbol); known after :meth:`setup`."""
        if not self.chars:
            raise RuntimeError("CharTextDataModule: call setup() before reading vocab_size.")
        return len(self.chars) + 1

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Turn symbol indices back into text (the unknown symbol becomes ``"?"``)."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.chars[i - 1] if i > 0 else "?" for i in values)

    @override
    def setup(self, stage: str | None = None) -> None:
        """Build the vocabulary from the training split and cut the three splits into windows."""
        if self.train_set is not None:
            return
        text = self._text if self._text is not None else python_docs_text()
        n = len(text)
        n_test, n_val = int(self.test_fraction * n), int(self.val_fraction * n)
        train, val, test = text[: n - n_val - n_test], text[n - n_val - n_test : n - n_test], text[n - n_test :]
        if min(len(train), len(val), len(test)) < self.context + 1:
            raise ValueError(
                f"The text ({n} characters) is too short for one window of context + 1 = {self.context + 1} "
                "characters in every split; pass a longer text or a smaller context."
            )
        counts: dict[str, int] = {}
        for ch in train:
            counts[ch] = counts.get(ch, 0) + 1
        self.chars = sorted(ch for ch, c in counts.items() if c >= self.min_count)
        index = {ch: i + 1 for i, ch in enumerate(self.chars)}
        self.train_set, self.val_set, self.test_set = (self._windows(part, index) for part in (train, val, test))

    def _windows(self, part: str, index: dict[str, int]) -> TensorDataset:
        ids = torch.tensor([index.get(ch, 0) for ch in part], dtype=torch.int64)
        span = self.context + 1
        windows = ids[: (len(ids) // span) * span].view(-1, span)
        return TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())
