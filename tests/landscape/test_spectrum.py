import math

import pytest
import torch

from lightning_autoopt.landscape import (
    DenseOperator,
    density_on_grid,
    frobenius_norm,
    hutchinson_trace,
    lanczos,
    power_iteration,
    slq_density,
    top_eigenvalues,
    tridiagonal_eigenvalues,
)
from tests.landscape._models import spd_matrix


@pytest.fixture
def matrix():
    return spd_matrix(30)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalue_exact(matrix, method):
    op = DenseOperator(matrix)
    value = top_eigenvalues(op, method=method, max_iter=200, tol=1e-8, generator=torch.Generator().manual_seed(0))[0]
    assert value == pytest.approx(10.0, rel=1e-5)


def test_top_k_with_deflation(matrix):
    exact = torch.linalg.eigvalsh(matrix).flip(0)[:3]
    values, vectors = power_iteration(DenseOperator(matrix), top_k=3, max_iter=500, tol=1e-10)
    assert torch.allclose(torch.tensor(values, dtype=torch.float64), exact, rtol=1e-3)
    lz = top_eigenvalues(DenseOperator(matrix), top_k=3, max_iter=30, tol=1e-10)
    assert torch.allclose(torch.tensor(lz, dtype=torch.float64), exact, rtol=1e-8)
    assert abs(float(vectors[0] @ vectors[1])) < 1e-6


def test_lanczos_full_basis_recovers_spectrum(matrix):
    alpha, beta = lanczos(DenseOperator(matrix), num_iter=30)
    assert torch.allclose(tridiagonal_eigenvalues(alpha, beta), torch.linalg.eigvalsh(matrix), atol=1e-8)


def test_lanczos_early_stop_uses_fewer_products(matrix):
    op = DenseOperator(matrix)
    top_eigenvalues(op, method="lanczos", max_iter=100, tol=1e-3)
    assert op.num_matvecs < 30


def test_hutchinson_trace_within_mc_error(matrix):
    est = hutchinson_trace(
        DenseOperator(matrix), num_probes=400, block_size=7, generator=torch.Generator().manual_seed(3)
    )
    exact = float(matrix.trace())
    assert est.num_matvecs == 400
    assert abs(est.value - exact) < 4 * est.std_error
    assert est.std_error < 0.1 * exact


def test_hutchpp_exact_on_low_rank():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(40, 3, generator=g, dtype=torch.float64)
    low_rank = u @ u.T
    est = hutchinson_trace(DenseOperator(low_rank), num_probes=12, method="hutch++", generator=g)
    assert est.value == pytest.approx(float(low_rank.trace()), rel=1e-8)


def test_frobenius_norm(matrix):
    value = frobenius_norm(DenseOperator(matrix), num_probes=2000, block_size=100)
    assert value == pytest.approx(float(matrix.norm()), rel=0.05)
    value = frobenius_norm(DenseOperator(matrix), num_probes=500, distribution="rademacher")
    assert value == pytest.approx(float(matrix.norm()), rel=0.05)


def test_slq_density(matrix):
    nodes, weights = slq_density(DenseOperator(matrix), num_iter=30, num_draws=2)
    assert len(nodes) == 2
    for n, w in zip(nodes, weights):
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-8)
        assert float(n.max()) == pytest.approx(10.0, rel=1e-6)
    grid, density = density_on_grid(nodes, weights, num_bins=4000)
    integral = float(torch.trapezoid(density, grid))
    assert integral == pytest.approx(1.0, abs=1e-2)


def test_nan_operator_gives_nan_not_exception():
    op = DenseOperator(torch.full((5, 5), float("nan"), dtype=torch.float64))
    assert math.isnan(top_eigenvalues(op)[0])
    assert math.isnan(top_eigenvalues(op, method="power")[0])
    nodes, _ = slq_density(op, num_iter=5)
    assert math.isnan(float(nodes[0][0]))


def test_bad_arguments_raise(matrix):
    op = DenseOperator(matrix)
    with pytest.raises(ValueError, match="method"):
        top_eigenvalues(op, method="qr")
    with pytest.raises(ValueError, match="num_probes"):
        hutchinson_trace(op, num_probes=0)
    with pytest.raises(ValueError, match="method"):
        hutchinson_trace(op, method="exact")
    with pytest.raises(ValueError, match="distribution"):
        frobenius_norm(op, distribution="uniform")
    with pytest.raises(ValueError, match="square"):
        DenseOperator(torch.zeros(2, 3))
