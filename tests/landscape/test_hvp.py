import pytest
import torch
from torch.func import hessian

from lightning_autoopt.landscape import HVPOperator, LossFunctional
from tests.landscape._models import ConvBNNet, mlp_batches, tiny_mlp


def exact_hessian(f: LossFunctional) -> torch.Tensor:
    theta = f.get_flat()

    def loss(flat):
        out = 0.0
        for batch, w in zip(f.batches, f.weights):
            out = out + w * f.batch_loss(batch, flat)
        return out

    with f.context():
        return hessian(loss)(theta)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["autograd", "func"])
def test_backends_match_torch_func_hessian(backend, dtype):
    f = LossFunctional(tiny_mlp(dtype), mlp_batches(dtype))
    h = exact_hessian(f)
    vectors = torch.randn(5, f.dim, dtype=dtype, generator=torch.Generator().manual_seed(0))
    got = HVPOperator(f, backend=backend, block_size=2).matmat(vectors)
    want = vectors @ h
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert float((got - want).norm() / want.norm()) < tol


def test_backends_agree_with_each_other_on_conv_bn():
    model = ConvBNNet()
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.randn(8, 1, 8))
    batches = [(torch.randn(5, 1, 8), torch.randint(0, 3, (5,))) for _ in range(2)]
    f = LossFunctional(model, batches)
    v = torch.randn(3, f.dim, generator=torch.Generator().manual_seed(1))
    a = HVPOperator(f, backend="autograd").matmat(v)
    b = HVPOperator(f, backend="func").matmat(v)
    assert float((a - b).norm() / a.norm()) < 1e-5
    assert model.training  # the train/eval mode is restored


def test_matvec_counts_and_matches_matmat():
    f = LossFunctional(tiny_mlp(torch.float64), mlp_batches(torch.float64))
    op = HVPOperator(f, backend="func", block_size=3)
    v = torch.randn(7, f.dim, dtype=torch.float64)
    block = op.matmat(v)
    assert op.num_matvecs == 7
    assert torch.allclose(op.matvec(v[2]), block[2], atol=1e-12)


def test_inference_mode_is_refused_with_advice():
    f = LossFunctional(tiny_mlp(), mlp_batches())
    with torch.inference_mode(), pytest.raises(RuntimeError, match="training hooks"):
        HVPOperator(f).matvec(torch.ones(f.dim))


def test_loss_is_sample_weighted_mean():
    model, batches = tiny_mlp(torch.float64), mlp_batches(torch.float64)
    f = LossFunctional(model, batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    full = float(torch.nn.functional.cross_entropy(model(x), y).detach())
    assert f.loss() == pytest.approx(full, rel=1e-12)
    loss, grad = f.loss_and_grad()
    assert loss == pytest.approx(full, rel=1e-12)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    want = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(grad, want, atol=1e-12)


def test_bad_arguments_raise():
    f = LossFunctional(tiny_mlp(), mlp_batches())
    with pytest.raises(ValueError, match="backend"):
        HVPOperator(f, backend="jax")
    with pytest.raises(ValueError, match="block_size"):
        HVPOperator(f, block_size=0)
    with pytest.raises(ValueError, match="batches"):
        LossFunctional(tiny_mlp(), [])
    with pytest.raises(ValueError, match="loss_fn"):
        LossFunctional(tiny_mlp(), mlp_batches(), loss_fn="hinge")


@pytest.mark.parametrize("cache_graph", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_autograd_paths_agree(cache_graph, batched):
    f = LossFunctional(tiny_mlp(torch.float64), mlp_batches(torch.float64))
    h = exact_hessian(f)
    op = HVPOperator(f, backend="autograd", block_size=4, cache_graph=cache_graph)
    op._batched_ok = batched  # the batched double backward is the GPU default; test it on CPU too
    v = torch.randn(6, f.dim, dtype=torch.float64)
    assert torch.allclose(op.matmat(v), v @ h, atol=1e-10)
    f.set_flat(f.get_flat() * 1.5)  # a weight change must invalidate the cached gradient graphs
    assert torch.allclose(op.matmat(v), v @ exact_hessian(f), atol=1e-10)


class TinyAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv = torch.nn.Linear(4, 12)
        self.out = torch.nn.Linear(4, 3)

    def forward(self, x):  # x: (B, T, 4)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(torch.nn.functional.scaled_dot_product_attention(q, k, v).mean(dim=1))


@pytest.mark.parametrize("backend", ["autograd", "func"])
def test_attention_models_work_through_the_math_backend(backend):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(3, 5, 4, generator=g), torch.randint(0, 3, (3,), generator=g))]
    f = LossFunctional(TinyAttention(), batches)
    v = torch.randn(2, f.dim, generator=g)
    got = HVPOperator(f, backend=backend).matmat(v)
    want = v @ exact_hessian(f)
    assert float((got - want).norm() / want.norm()) < 1e-5
