import inspect
import math

import pytest
import torch

from lightning_autoopt.landscape import (
    LossFunctional,
    MeasureInfo,
    compute_measure,
    get_measure,
    list_measures,
)
from tests.landscape._models import Quadratic, dummy_batches, mean_loss, mlp_batches, spd_matrix, tiny_mlp

CHEAP = {
    "lpf": {"num_samples": 5},
    "eps_sharpness": {"max_iter": 30},
    "pac_bayes": {"mc_samples": 2, "max_iter": 8},
    "hessian_top": {"max_iter": 20},
    "hessian_trace": {"num_probes": 10},
    "hessian_fro": {"num_probes": 5},
    "fisher_rao": {},
    "shannon": {},
    "local_entropy": {"num_steps": 3, "max_batches": 2},
}
EXPECTED = ["lpf", "eps_sharpness", "pac_bayes", "hessian_top", "hessian_trace", "hessian_fro", "fisher_rao",
            "shannon", "local_entropy"]  # fmt: skip


def quadratic(dim=30, offset=0.3, seed=0):
    a = spd_matrix(dim, seed)
    g = torch.Generator().manual_seed(seed + 1)
    centre = torch.randn(dim, generator=g, dtype=torch.float64)
    theta = centre + offset * torch.randn(dim, generator=g, dtype=torch.float64)
    return Quadratic(a, theta, centre), a


def kwargs_for(name, model):
    extra = dict(CHEAP[name])
    if get_measure(name).needs_init:
        extra["init_params"] = torch.zeros(sum(p.numel() for p in model.parameters()))
    return extra


def test_registry_lists_every_measure_with_frozen_records():
    assert list_measures() == EXPECTED
    for name in EXPECTED:
        info = get_measure(name)
        assert isinstance(info, MeasureInfo) and info.name == name and info.description
        assert set(CHEAP[name]) <= set(info.defaults)
        with pytest.raises((AttributeError, TypeError)):
            info.defaults["x"] = 1  # type: ignore[index]
    # defaults are the functions' own: stated once, in measures.py
    for name in EXPECTED:
        info = get_measure(name)
        params = inspect.signature(info.fn).parameters.values()
        kw = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
        kw.pop("init_params", None)
        assert dict(info.defaults) == kw, name
        assert info.needs_init == ("init_params" in inspect.signature(info.fn).parameters)
    assert get_measure("lpf").defaults == {"sigma": 0.01, "num_samples": 100}


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("lpf", {"num_samples": 0}, "num_samples"),
        ("lpf", {"sigma": -1.0}, "sigma"),
        ("local_entropy", {"max_batches": 0}, "max_batches"),
        ("local_entropy", {"ema": 1.0}, "ema"),
        ("pac_bayes", {"mc_samples": 0}, "mc_samples"),
        ("pac_bayes", {"target": "error"}, "target"),
        ("pac_bayes", {"sigma_min": 10.0, "sigma_max": 1.0}, "sigma_min"),
        ("hessian_top", {"method": "hutchinson"}, "method"),
        ("hessian_trace", {"method": "lanczos"}, "method"),
        ("hessian_trace", {"backend": "jax"}, "backend"),
        ("hessian_fro", {"block_size": 0}, "block_size"),
        ("eps_sharpness", {"eps": 0.0}, "eps"),
    ],
)
def test_bad_values_fail_before_any_loss_pass(name, kwargs, match):
    model, batches = tiny_mlp(), mlp_batches()
    with pytest.raises(ValueError, match=match):
        compute_measure(name, model, batches, **kwargs)
    with pytest.raises(ValueError, match=match):  # the pure function itself checks too
        get_measure(name).fn(LossFunctional(model, batches), generator=torch.Generator(), **kwargs)


@pytest.mark.parametrize("backend", ["autograd", "func"])
def test_hessian_measures_exact_on_quadratic(backend):
    model, a = quadratic()
    batches = dummy_batches()
    top = compute_measure("hessian_top", model, batches, loss_fn=mean_loss, backend=backend, tol=1e-10)
    assert top == pytest.approx(float(torch.linalg.eigvalsh(a)[-1]), rel=1e-6)
    power = compute_measure(
        "hessian_top", model, batches, loss_fn=mean_loss, backend=backend, method="power", max_iter=300, tol=1e-9
    )
    assert power == pytest.approx(10.0, rel=1e-3)
    trace = compute_measure("hessian_trace", model, batches, loss_fn=mean_loss, backend=backend, num_probes=100)
    sd = math.sqrt(2 * float((a * a).sum() - (a.diagonal() ** 2).sum()) / 100)  # Rademacher Hutchinson std error
    assert abs(trace - float(a.trace())) < 4 * sd
    fro = compute_measure("hessian_fro", model, batches, loss_fn=mean_loss, backend=backend, num_probes=200)
    assert fro == pytest.approx(float(a.norm()), rel=0.15)
    frn = compute_measure("fisher_rao", model, batches, loss_fn=mean_loss, backend=backend)
    theta = model.theta.detach()
    assert frn == pytest.approx(float(theta @ a @ theta), rel=1e-10)


def test_hutchpp_trace_measure_on_quadratic():
    model, a = quadratic()
    value = compute_measure("hessian_trace", model, dummy_batches(), loss_fn=mean_loss, num_probes=90, method="hutch++")
    assert value == pytest.approx(float(a.trace()), rel=0.05)


def test_lpf_matches_second_order_expectation():
    model, a = quadratic()
    sigma, m = 0.1, 1000
    value = compute_measure("lpf", model, dummy_batches(1), loss_fn=mean_loss, sigma=sigma, num_samples=m, seed=5)
    d = (model.theta - model.centre).detach()
    base = float(0.5 * d @ a @ d)
    expected = base + 0.5 * sigma**2 * float(a.trace())  # exact for a quadratic
    var = sigma**2 * float(d @ a @ a @ d) + 0.5 * sigma**4 * float((a @ a).trace())
    assert abs(value - expected) < 4 * math.sqrt(var / m)
    assert value > base


def test_eps_sharpness_closed_form():
    model, a = quadratic()
    eps = 0.1
    value = compute_measure("eps_sharpness", model, dummy_batches(), loss_fn=mean_loss, eps=eps, tol=1e-12)
    d = (model.theta - model.centre).detach()
    g = a @ d
    qa, qb = 0.5 * float(g @ a @ g), float(g @ g)  # rise(η) = qb η + qa η²
    eta = (-qb + math.sqrt(qb * qb + 4 * qa * eps)) / (2 * qa)
    assert value == pytest.approx(1.0 / (eta * float(g.norm())), rel=1e-4)


def test_pac_bayes_uses_distance_from_init():
    model, a = quadratic(offset=0.0)  # at the minimum: the expected rise is σ²/2 · tr(A)
    init = torch.zeros(30, dtype=torch.float64)
    eps, n = 0.1, 1000
    value = compute_measure(
        "pac_bayes", model, dummy_batches(), loss_fn=mean_loss, init_params=init, eps=eps, mc_samples=100,
        sigma_min=0.01, sigma_max=1.0, tol=1e-4, max_iter=40, num_train_samples=n,
    )  # fmt: skip
    sigma_sq = 2 * eps / float(a.trace())
    expected = float(model.theta.detach().pow(2).sum()) / (4 * sigma_sq) + math.log(2 * n / 1e-6)
    assert value == pytest.approx(expected, rel=0.1)
    at_init = compute_measure(
        "pac_bayes", model, dummy_batches(), loss_fn=mean_loss, init_params=model.theta.detach().clone(), eps=eps
    )
    assert at_init == pytest.approx(math.log(2 * 8 / 1e-6))  # zero distance: only the log term is left
    with pytest.raises(ValueError, match="init_params"):
        compute_measure("pac_bayes", model, dummy_batches(), loss_fn=mean_loss)


def test_pac_bayes_accuracy_target_runs():
    model, batches = tiny_mlp(), mlp_batches()
    init = torch.zeros(sum(p.numel() for p in model.parameters()))
    value = compute_measure("pac_bayes", model, batches, init_params=init, target="accuracy", mc_samples=2, max_iter=6)
    assert math.isfinite(value)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_measure_leaves_the_model_and_rng_untouched(name):
    model, batches = tiny_mlp(), mlp_batches()
    model(batches[0][0]).sum().backward()
    before = [(p.detach().clone(), p.grad.clone()) for p in model.parameters()]
    grads = [p.grad for p in model.parameters()]
    rng = torch.get_rng_state()
    value = compute_measure(name, model, batches, **kwargs_for(name, model))
    assert isinstance(value, float) and math.isfinite(value)
    assert torch.equal(torch.get_rng_state(), rng)
    for p, g, (w0, g0) in zip(model.parameters(), grads, before):
        assert torch.equal(p, w0) and p.grad is g and torch.equal(p.grad, g0)
    assert model.training
    again = compute_measure(name, model, batches, **kwargs_for(name, model))
    assert again == value  # seeded: reproducible


@pytest.mark.parametrize("name", EXPECTED)
def test_every_measure_on_normalized_copy_and_nan_weights(name):
    model, batches = tiny_mlp(), mlp_batches()
    assert math.isfinite(compute_measure(name, model, batches, normalize=True, **kwargs_for(name, model)))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    assert math.isnan(compute_measure(name, model, batches, **kwargs_for(name, model)))


def test_functional_param_layout_matches_init_params():
    model = tiny_mlp()
    f = LossFunctional(model, mlp_batches())
    assert f.dim == sum(p.numel() for p in model.parameters())


def test_bad_arguments_raise():
    model, batches = tiny_mlp(), mlp_batches()
    with pytest.raises(ValueError, match="Unknown sharpness measure"):
        compute_measure("sharpest", model, batches)
    with pytest.raises(ValueError, match="unknown argument"):
        compute_measure("lpf", model, batches, sigmaa=0.1)
    with pytest.raises(ValueError, match="target"):
        compute_measure("pac_bayes", model, batches, init_params=torch.zeros(62), target="margin")
    with pytest.raises(ValueError, match="entries"):
        compute_measure("pac_bayes", model, batches, init_params=torch.zeros(3))
