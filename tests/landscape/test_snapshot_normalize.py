import copy

import pytest
import torch

from lightning_autoopt.landscape import ParamSnapshot, filter_normalized_copy, filter_scales, make_fixed_batches
from tests.helpers import TinyClassifier, make_blobs
from tests.landscape._models import ConvBNNet, tiny_mlp


def test_snapshot_restores_everything_exactly():
    model = ConvBNNet()
    model(torch.randn(4, 1, 8)).sum().backward()
    model.fc.bias.requires_grad_(False)
    grads = [p.grad for p in model.parameters()]
    grad_values = [None if g is None else g.clone() for g in grads]
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    with ParamSnapshot(model):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model.fc.bias.requires_grad_(True)
        model(torch.randn(4, 1, 8)).sum().backward()  # accumulates into the saved .grad objects and moves BN stats
        model.eval()
        torch.rand(10)
    assert model.training
    assert not model.fc.bias.requires_grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, g, gv in zip(model.parameters(), grads, grad_values):
        assert p.grad is g
        assert (g is None and gv is None) or torch.equal(g, gv)
    assert torch.equal(torch.get_rng_state(), rng)


def test_fixed_batches_are_seeded_and_leave_global_rng():
    data = make_blobs(50)
    rng = torch.get_rng_state()
    a = make_fixed_batches(data, 20, 8, seed=3)
    b = make_fixed_batches(data, 20, 8, seed=3)
    c = make_fixed_batches(data, 20, 8, seed=4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [len(y) for _, y in a] == [8, 8, 4]
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    with pytest.raises(ValueError, match="num_samples"):
        make_fixed_batches(data, 0, 8)


@pytest.mark.parametrize("make", [ConvBNNet, tiny_mlp, TinyClassifier])
def test_filter_normalization_keeps_the_function(make):
    model = make()
    x = torch.randn(6, 1, 8) if make is ConvBNNet else torch.randn(6, 5 if make is tiny_mlp else 8)
    if make is ConvBNNet:
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 1, 8))
            model.bn.weight.mul_(3.0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    normed = filter_normalized_copy(model)
    torch.testing.assert_close(normed(x), model(x), rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])
    for module in normed.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
            w = module.weight.reshape(module.weight.shape[0], -1)
            unit = w.norm(dim=1) + module.bias.abs()
            assert torch.allclose(unit, torch.ones_like(unit), atol=1e-5)
    scales = filter_scales(model)
    for name, p in normed.named_parameters():
        torch.testing.assert_close(p * scales[name], dict(model.named_parameters())[name])


def test_filter_normalization_of_lightning_module_does_not_copy_trainer():
    model = TinyClassifier()
    sentinel = object()
    model._trainer = sentinel  # type: ignore[assignment]
    normed = filter_normalized_copy(model)
    assert normed._trainer is None or normed._trainer is sentinel  # dropped by __getstate__ or shared, never copied
    model._trainer = None
