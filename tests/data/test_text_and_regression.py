"""CharTextDataModule (Python's own docs, no download) and Friedman1DataModule (scikit-learn generator)."""

from __future__ import annotations

import pytest
import torch

from lightning_autoopt.data.regression import Friedman1DataModule
from lightning_autoopt.data.text import CharTextDataModule, python_docs_text


def test_char_text_windows_vocabulary_and_shift() -> None:
    text = "abcabcabc" * 25 + "dd" + "abcabcabc" * 25 + "zz"  # "d" is rare in the training split, "z" absent
    dm = CharTextDataModule(context=8, batch_size=4, text=text, min_count=5, val_fraction=0.1, test_fraction=0.1)
    dm.setup("fit")
    assert dm.chars == ["a", "b", "c"] and dm.vocab_size == 4
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 8) and x.dtype == torch.int64
    torch.testing.assert_close(x[:, 1:], y[:, :-1])  # the target is the input shifted by one character
    assert dm.decode([1, 2, 3, 0]) == "abc?"
    n_train = len(text) - int(0.1 * len(text)) * 2
    assert len(dm.train_set) == n_train // 9  # non-overlapping windows of context + 1


def test_char_text_default_corpus_and_bad_arguments() -> None:
    assert len(python_docs_text()) > 100_000
    dm = CharTextDataModule(context=64, batch_size=8)
    dm.setup("fit")
    assert 60 < dm.vocab_size < 200 and len(dm.train_set) > 1000
    with pytest.raises(ValueError, match="context"):
        CharTextDataModule(context=0)
    with pytest.raises(ValueError, match="too short"):
        CharTextDataModule(context=50, text="short text").setup("fit")


def test_friedman_splits_standardisation_and_seed() -> None:
    dm = Friedman1DataModule(num_samples=1000, batch_size=32, seed=3)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (700, 100, 200)
    x, y = dm.train_set.tensors
    assert x.shape == (700, 10) and y.shape == (700, 1)
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1.0) < 1e-4
    assert dm.target_std > 1.0
    again = Friedman1DataModule(num_samples=1000, seed=3)
    again.setup("fit")
    torch.testing.assert_close(again.test_set.tensors[1], dm.test_set.tensors[1])
    with pytest.raises(ValueError, match="num_features"):
        Friedman1DataModule(num_features=4)
