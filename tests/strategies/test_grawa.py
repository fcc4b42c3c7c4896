"""GRAWA: inverse-gradient-norm weights, model- and layer-level centres, pulls (core + strategy)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lightning_autoopt.strategies._grawa_math import (
    grawa_weights,
    layer_norms,
    model_norm,
    pull_toward_,
    weighted_center,
)

try:  # tests/strategies may or may not be a package
    from ._gloo_pool import run_on_pool, shared_pool
except ImportError:
    from _gloo_pool import run_on_pool, shared_pool  # type: ignore[no-redef]

WORLD = 4


def test_equal_norms_give_exactly_uniform_weights():
    for m in (2, 3, 4, 7):
        w = grawa_weights(torch.full((m,), 0.37))
        assert torch.equal(w, torch.full((m,), 1.0 / m, dtype=torch.float64))


def test_weights_inverse_to_norm_power():
    n = torch.tensor([1.0, 2.0, 4.0])
    w1 = grawa_weights(n, exponent=1.0, eps=0.0)
    torch.testing.assert_close(w1, torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64) / 7)
    w2 = grawa_weights(n, exponent=2.0, eps=0.0)
    torch.testing.assert_close(w2, torch.tensor([16.0, 4.0, 1.0], dtype=torch.float64) / 21)
    # flatter (smaller gradient) worker gets the larger weight; q = 0 is plain averaging
    assert w1[0] > w1[1] > w1[2]
    torch.testing.assert_close(grawa_weights(n, exponent=0.0), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_eps_guard_and_nonfinite_norms():
    w = grawa_weights(torch.tensor([0.0, 1.0]), eps=1e-8)
    assert torch.isfinite(w).all() and w[0] > 0.999
    w = grawa_weights(torch.tensor([float("nan"), 1.0, float("inf"), 1.0]))
    assert w.tolist() == [0.0, 0.5, 0.0, 0.5]
    w = grawa_weights(torch.tensor([float("nan"), float("inf")]))
    assert w.tolist() == [0.5, 0.5]


def test_layer_level_weights_are_per_column():
    norms = torch.tensor([[1.0, 3.0], [3.0, 1.0]])
    w = grawa_weights(norms, eps=0.0)
    torch.testing.assert_close(w, torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64))
    torch.testing.assert_close(w.sum(0), torch.ones(2, dtype=torch.float64))


def test_norm_helpers_and_pull():
    g = [torch.tensor([3.0, 4.0]), None, torch.tensor([[12.0]])]
    per = layer_norms(g)
    assert per.tolist() == [5.0, 0.0, 12.0]
    assert model_norm(per).item() == pytest.approx(13.0)
    x, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    assert pull_toward_(x.clone(), c, 0.25).tolist() == [1.5, 3.0]
    assert torch.equal(pull_toward_(x.clone(), c, 1.0), c)


# ----------------------------------------------------------------------------------------- gloo pool (4 ranks)
@pytest.fixture(scope="module")
def pool():
    return shared_pool(WORLD)


def _center_round(level, norms_by_rank):
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [3, 2]
    x = torch.arange(5, dtype=torch.float64) + 10 * rank
    mine = torch.tensor(norms_by_rank[rank], dtype=torch.float64)
    if level == "model":
        mine = model_norm(mine)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    w = grawa_weights(torch.stack(gathered))
    c = weighted_center(x, w[rank], sizes=sizes)
    return rank, (x, c, w)


@pytest.mark.parametrize("level", ["model", "layer"])
def test_weighted_center_matches_dense(pool, level):
    norms = [[1.0, 2.0], [2.0, 2.0], [4.0, 0.5], [1.0, 1.0]]
    res = run_on_pool(pool, WORLD, _center_round, level, norms)
    X = torch.stack([x for x, _, _ in res])
    w = res[0][2]
    for _, c, wr in res:
        assert torch.equal(c, res[0][1])  # identical on every rank
        assert torch.equal(wr, w)
    if level == "model":
        ref = (w.reshape(-1, 1) * X).sum(0)
    else:
        cols = torch.cat([w[:, :1].expand(-1, 3), w[:, 1:].expand(-1, 2)], dim=1)
        ref = (cols * X).sum(0)
    torch.testing.assert_close(res[0][1], ref)


def test_equal_norms_reduce_to_plain_average(pool):
    norms = [[2.0, 1.0]] * WORLD
    for level in ("model", "layer"):
        res = run_on_pool(pool, WORLD, _center_round, level, norms)
        X = torch.stack([x for x, _, _ in res])
        assert torch.equal(res[0][2], torch.full_like(res[0][2], 0.25))
        assert torch.equal(res[0][1], X.mean(0))
