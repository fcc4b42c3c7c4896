"""The flat-vector helpers every part of the package shares (``lightning_autoopt._flat``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from lightning_autoopt import _flat
from tests.strategies._gloo_pool import run_on_pool, shared_pool


def test_flatten_roundtrip_views_and_size_checks():
    ts = [torch.randn(2, 3), torch.randn(4)]
    flat = _flat.flatten(ts)
    assert flat.shape == (10,) and flat.data_ptr() not in {t.data_ptr() for t in ts}
    out = [torch.zeros(2, 3), torch.zeros(4)]
    _flat.unflatten_(flat, out)
    assert all(torch.equal(a, b) for a, b in zip(ts, out))
    views = _flat.split_views(flat, ts)
    assert [v.shape for v in views] == [t.shape for t in ts] and views[0].data_ptr() == flat.data_ptr()
    for fn in (_flat.unflatten_, _flat.split_views):
        with pytest.raises(ValueError, match="elements"):
            fn(flat[:-1], out)
    assert _flat.flatten([]).numel() == 0


def test_flatten_fills_missing_gradients_and_keeps_the_graph_on_request():
    w = torch.ones(2, requires_grad=True)
    assert _flat.flatten([w * 2, None], like=[w, torch.ones(3)]).tolist() == [2.0, 2.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="None"):
        _flat.flatten([None])
    assert not _flat.flatten([w * 2]).requires_grad
    kept = _flat.flatten([w * 2], detach=False)
    kept.sum().backward()
    assert w.grad.tolist() == [2.0, 2.0]


def test_non_contiguous_tensors_flatten_like_contiguous_ones():
    t = torch.arange(6.0).reshape(2, 3).t()  # parameters_to_vector's view(-1) would fail here
    assert _flat.flatten([t]).tolist() == t.reshape(-1).tolist()
    buf = torch.zeros(6)
    assert torch.equal(_flat.copy_into_(buf, [t]), _flat.flatten([t]))
    with pytest.raises(ValueError, match="copy_into_"):
        _flat.copy_into_(torch.zeros(5), [t])


def test_weighted_running_sum_casts_and_checks_size():
    acc = torch.zeros(3, dtype=torch.float64)
    _flat.add_weighted_(acc, [torch.ones(1), torch.full((2,), 2.0)], 1.0)
    _flat.add_weighted_(acc, torch.ones(3), 2.0)
    assert acc.tolist() == [3.0, 4.0, 4.0] and acc.dtype == torch.float64
    with pytest.raises(ValueError, match="add_weighted_"):
        _flat.add_weighted_(acc, torch.ones(2), 1.0)


def test_finite_checks_are_chunked_and_map_bad_values_to_inf():
    big = torch.ones(2 * _flat.CHUNK + 3)
    assert _flat.all_finite(big) and _flat.all_finite([big, torch.zeros(2)])
    big[-1] = float("nan")
    assert not _flat.all_finite(big) and not _flat.all_finite([torch.ones(1), torch.tensor([math.inf])])
    assert _flat.finite_or_inf(float("nan")) == math.inf and _flat.finite_or_inf(-math.inf) == math.inf
    assert _flat.finite_or_inf(2.5) == 2.5
    mapped = _flat.finite_or_inf(torch.tensor([1.0, float("nan"), -math.inf]))
    assert mapped.dtype == torch.float64 and mapped.tolist() == [1.0, math.inf, math.inf]


def test_chunks_are_aligned():
    a, b = torch.arange(5.0), torch.arange(5.0) * 10
    pieces = list(_flat.chunks(a, b, chunk=2))
    assert [len(x) for x, _ in pieces] == [2, 2, 1] and all(torch.equal(x * 10, y) for x, y in pieces)


def test_broadcast_without_a_process_group_is_a_no_op():
    t = torch.arange(3.0)
    assert _flat.broadcast_(t) is t and t.tolist() == [0.0, 1.0, 2.0]


def _broadcast_from(src):
    rank = dist.get_rank()
    t = torch.full((4,), float(rank))
    _flat.broadcast_(t, src=src)
    return rank, t


def test_broadcast_copies_the_source_rank_on_gloo():
    res = run_on_pool(shared_pool(4), 4, _broadcast_from, 2)
    assert all(t.tolist() == [2.0] * 4 for t in res)
