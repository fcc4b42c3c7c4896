"""GRAWA: inverse-gradient-norm weights, model- and layer-level centres, pulls (core + strategy)."""

from __future__ import annotations

import types

import pytest
import torch
import torch.distributed as dist

from lightning_autoopt.strategies import LocalSGDStrategy, _comm
from lightning_autoopt.strategies._grawa_math import grawa_weights, layer_norms, model_norm, weighted_term
from lightning_autoopt.strategies.grawa import GRAWAStrategy, LGRAWAStrategy
from tests.strategies._gloo_pool import run_on_pool, shared_pool
from tests.strategies._local_update_helpers import detached

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
    assert _comm.leader_pull_(x.clone(), c, 0.25).tolist() == [1.5, 3.0]  # GRAWA's pull is LSGD's
    assert torch.equal(_comm.leader_pull_(x.clone(), c, 1.0), c)
    torch.testing.assert_close(weighted_term(x, torch.tensor([0.5])), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(weighted_term(x, torch.tensor([2.0, 3.0]), sizes=[1, 1]), torch.tensor([2.0, 6.0]))
    with pytest.raises(ValueError, match="sizes"):
        weighted_term(x, torch.tensor([2.0, 3.0]))


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
    gathered, _ = _comm.all_gather_(mine)
    assert gathered.shape[0] == world
    w = grawa_weights(gathered)
    c = weighted_term(x, w[rank], sizes=sizes)
    _comm.all_reduce_sum_(c)
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


# ------------------------------------------------------------------------------------ the strategy (detached)
def _set_grads(s, scale):
    for p in s.params:
        p.grad = torch.full_like(p, scale)


def _grawa_strategy_round(kwargs, grad_scale_by_rank):
    rank = dist.get_rank()
    s = detached(GRAWAStrategy, **kwargs)
    _set_grads(s, grad_scale_by_rank[rank])
    s.record_gradient_norms()
    pre = s.flat_params()
    s.on_round(1)
    out = {"pre": pre, "post": s.flat_params(), "logs": dict(s._pending_logs), "bytes": s._round_bytes}
    return rank, {**out, "wire": s._round_wire_bytes}


def _localsgd_round():
    rank = dist.get_rank()
    s = detached(LocalSGDStrategy, period=1)
    s.on_round(1)
    return rank, s.flat_params()


@pytest.mark.parametrize("level", ["model", "layer"])
def test_strategy_round_matches_formula(pool, level):
    scales = [1.0, 2.0, 0.5, 4.0]
    kwargs = {"level": level, "period": 1, "pull_strength": 0.3, "exponent": 1.0, "eps": 1e-12}
    res = run_on_pool(pool, WORLD, _grawa_strategy_round, kwargs, scales)
    X = torch.stack([r["pre"] for r in res]).double()
    # every gradient entry equals the rank's scale, so every norm is proportional to it: w ∝ 1 / scale
    w = torch.tensor([1 / s for s in scales], dtype=torch.float64)
    w = w / w.sum()
    center = (w.reshape(-1, 1) * X).sum(0)
    for i, r in enumerate(res):
        torch.testing.assert_close(r["post"].double(), 0.7 * X[i] + 0.3 * center, rtol=1e-6, atol=1e-5)
        assert r["logs"]["dist/grawa_weight"] == pytest.approx(float(w[i]))
        n_norms = 1 if level == "model" else 2  # Linear(3, 2): weight and bias
        assert r["bytes"] == 8 * 4 + 8 * (n_norms + 3)  # norms + health tail (flag, counters)
        # on the wire: the centre's ring all-reduce sends 2 (w - 1) / w of it, the all-gather w - 1 chunks
        assert r["wire"] == 8 * 4 * 2 * (WORLD - 1) / WORLD + (WORLD - 1) * 8 * (n_norms + 3)


def test_exponent_zero_and_full_pull_is_local_sgd_bitwise(pool):
    kwargs = {"period": 1, "pull_strength": 1.0, "exponent": 0.0}
    res = run_on_pool(pool, WORLD, _grawa_strategy_round, kwargs, [1.0, 2.0, 3.0, 4.0])
    ref = run_on_pool(pool, WORLD, _localsgd_round)
    for r, flat in zip(res, ref):
        assert torch.equal(r["post"], flat)


def _module_strategy(**kwargs):
    s = GRAWAStrategy(**kwargs)
    module = torch.nn.Linear(3, 2)
    s._lightning_module = module
    return s


def test_period_statistics_nonfinite_steps_and_state():
    mean = _module_strategy(statistic="mean_over_period")
    last = _module_strategy(statistic="last", level="layer")
    for s in (mean, last):
        for scale in (1.0, float("nan"), 3.0):
            _set_grads(s, scale)
            s.record_gradient_norms()
        assert s.nonfinite_events == 1 and s._count == 2
    # model norm of a full tensor set: |scale| * sqrt(8)
    assert mean.statistic_norms().item() == pytest.approx(2.0 * 8**0.5)
    torch.testing.assert_close(last.statistic_norms(), torch.tensor([3.0 * 6**0.5, 3.0 * 2**0.5], dtype=torch.float64))
    fresh = _module_strategy(statistic="mean_over_period")
    assert fresh.statistic_norms().item() == float("inf")  # no finite step yet: weight 0 in the round
    fresh.load_extra_state_dict(mean.extra_state_dict())
    assert torch.equal(fresh.statistic_norms(), mean.statistic_norms())


class _FakeScaler:
    def is_enabled(self):
        return True

    def get_scale(self):
        return 1024.0


def test_norms_are_unscaled_under_amp():
    s = _module_strategy()
    s._precision_plugin = types.SimpleNamespace(scaler=_FakeScaler())
    _set_grads(s, 1024.0)
    s.record_gradient_norms()
    assert s.statistic_norms().item() == pytest.approx(8**0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"level": "block"}, "level"), ({"statistic": "ema"}, "statistic"), ({"exponent": -1}, "exponent"),
     ({"eps": 0.0}, "eps"), ({"pull_strength": 1.5}, "pull_strength"), ({"period": 0}, "period")],
)  # fmt: skip
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRAWAStrategy(**kwargs)
    assert LGRAWAStrategy().level == "layer" and GRAWAStrategy().level == "model"
