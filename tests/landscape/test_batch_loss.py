"""The loss contract: resolution from modules and batches of any structure, refusals with options, the core's use."""

import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from lightning_autoopt.landscape import (
    ForwardLoss,
    HVPOperator,
    LossFunctional,
    MethodLoss,
    SupervisedLoss,
    TrainingStepLoss,
    batch_size,
    compute_measure,
    make_fixed_batches,
    resolve_loss,
)
from lightning_autoopt.landscape.batch_loss import BatchLayout, infer_layout, muted_logging
from tests.callbacks._foreign_modules import (
    DictBatchClassifier,
    RegressionDictModule,
    TinyTransformer,
    TwoOptimizerAutoencoder,
    reconstruction_loss,
)
from tests.landscape._models import mlp_batches, tiny_mlp

OPTIONS = ("loss_fn", "landscape_loss")


def regression_batch(n=8, dim=4, int_target=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    y = torch.randint(0, 3, (n,), generator=g) if int_target else torch.randn(n, 1, generator=g)
    return x, y


def test_auto_picks_cross_entropy_for_labels_and_mse_for_float_targets():
    model, batches = tiny_mlp(), mlp_batches()
    loss = resolve_loss(None, model, batches[0])
    assert isinstance(loss, SupervisedLoss) and loss.criterion == "cross_entropy"
    x, y = batches[0]
    assert torch.allclose(loss(model, batches[0]), F.cross_entropy(model(x), y))

    reg = nn.Linear(4, 1)
    batch = regression_batch()
    loss = resolve_loss(None, reg, batch)
    assert isinstance(loss, SupervisedLoss) and loss.criterion == "mse"
    assert torch.allclose(loss(reg, batch), F.mse_loss(reg(batch[0]), batch[1]))


def test_cross_entropy_on_one_output_is_an_error_not_zero():
    """The issue's regression MLP: cross-entropy on a 1-output model used to log 0.0."""
    reg = nn.Linear(4, 1)
    with pytest.raises(ValueError, match="one value per target.*loss_fn='mse'"):
        resolve_loss("cross_entropy", reg, regression_batch())
    with pytest.raises(ValueError, match=">= 2 class scores"):
        resolve_loss("cross_entropy", reg, regression_batch(int_target=True)[:1] + (torch.zeros(8, dtype=torch.long),))
    # auto with integer targets and one output: no loss fits a plain nn.Module -> refused with the options
    with pytest.raises(ValueError, match="Could not pick a loss") as err:
        resolve_loss(None, reg, (regression_batch()[0], torch.zeros(8, dtype=torch.long)))
    assert all(option in str(err.value) for option in OPTIONS)
    with pytest.raises(ValueError, match="MSE needs float targets"):
        resolve_loss("mse", tiny_mlp(), mlp_batches()[0])


def test_probabilities_are_not_fed_to_cross_entropy():
    model = nn.Sequential(nn.Linear(5, 3), nn.Softmax(dim=-1))
    with pytest.raises(ValueError, match="probabilities"):
        resolve_loss("cross_entropy", model, mlp_batches()[0])


def test_transformer_forward_takes_inputs_and_target_and_cross_entropy_equals_its_nll():
    module = TinyTransformer()
    inputs, target = next(iter(module.train_dataloader()))
    module.eval()
    layout = infer_layout(module, (inputs, target))
    assert layout == BatchLayout("positional", num_inputs=2, target=1)
    loss = resolve_loss(None, module, (inputs, target))
    assert isinstance(loss, SupervisedLoss) and loss.criterion == "cross_entropy"
    with torch.no_grad():
        want = module.training_step((inputs, target), 0)  # the demo's own nll_loss of log-probabilities
        assert float(loss(module, (inputs, target))) == pytest.approx(float(want), rel=1e-6)
        scores, labels = loss.predict(module, (inputs, target))
    assert scores.shape == (inputs.numel(), module.model.vocab_size) and labels.shape == (inputs.numel(),)


def test_dict_batches_call_forward_by_name_and_find_the_target():
    module = DictBatchClassifier()
    batch = next(iter(module.train_dataloader()))
    layout = infer_layout(module, batch)
    assert layout == BatchLayout("kwargs", keys=("features",), target="label")
    loss = resolve_loss(None, module, batch)
    assert torch.allclose(loss(module, batch), F.cross_entropy(module(batch["features"]), batch["label"]))


class LossReturningNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x, y):
        return {"loss": F.mse_loss(self.linear(x), y), "extra": torch.ones(2)}


def test_forward_that_returns_the_loss_is_used():
    net, batch = LossReturningNet(), regression_batch()
    loss = resolve_loss(None, net, batch)
    assert isinstance(loss, ForwardLoss)
    assert torch.allclose(loss(net, batch), F.mse_loss(net.linear(batch[0]), batch[1]))


def test_boring_model_uses_its_training_step_with_logging_muted():
    module = BoringModel()
    batch = torch.randn(3, 32)
    loss = resolve_loss(None, module, batch)
    assert isinstance(loss, TrainingStepLoss)
    assert torch.allclose(loss(module, batch), module.step(batch))
    assert "log" not in module.__dict__  # muting is undone
    calls = []
    module.__dict__["log"] = lambda *a, **k: calls.append(a)
    with muted_logging(module):
        module.log("x", 1.0)
    module.log("y", 2.0)
    assert calls == [("y", 2.0)]  # a user's own instance attribute is put back


def test_manual_optimization_without_a_convention_is_refused_with_options():
    module = TwoOptimizerAutoencoder()
    batch = torch.randn(4, 6)
    with pytest.raises(ValueError, match="manual optimization") as err:
        resolve_loss(None, module, batch)
    assert all(option in str(err.value) for option in OPTIONS)
    with pytest.raises(ValueError, match="manual optimization"):
        resolve_loss("training_step", module, batch)


def test_landscape_loss_method_and_import_paths_and_callables():
    module = TwoOptimizerAutoencoder()
    batch = torch.randn(4, 6)
    module.landscape_loss = lambda b: F.mse_loss(module(b), b)  # type: ignore[method-assign]
    assert isinstance(resolve_loss(None, module, batch), MethodLoss)
    by_path = resolve_loss("tests.callbacks._foreign_modules.reconstruction_loss", TwoOptimizerAutoencoder(), batch)
    assert by_path is reconstruction_loss
    assert resolve_loss(reconstruction_loss, module, batch) is reconstruction_loss
    klass = resolve_loss("tests.landscape.test_batch_loss.MeanAbsLoss", module, batch)
    assert isinstance(klass, MeanAbsLoss)  # a class at the path is instantiated
    with pytest.raises(ValueError, match="not importable"):
        resolve_loss("tests.nowhere.loss", module, batch)
    with pytest.raises(ValueError, match="one of"):
        resolve_loss("hinge", module, batch)
    with pytest.raises(ValueError, match="scalar"):
        resolve_loss(lambda m, b: m(b), module, batch)  # per-sample values, not the mean loss


class MeanAbsLoss:
    def __call__(self, module, batch):
        return (module(batch) - batch).abs().mean()


def test_batch_size_of_any_structure():
    assert batch_size(torch.zeros(5, 2)) == 5
    assert batch_size((torch.zeros(3, 2), torch.zeros(3))) == 3
    assert batch_size({"a": [torch.zeros(7)], "b": torch.zeros(2)}) == 7
    assert batch_size(torch.tensor(1.0)) == 1


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(100):
            yield {"x": torch.full((2,), float(i)), "y": torch.tensor(i % 3)}


def test_fixed_batches_of_any_structure_leave_every_rng_alone():
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    single = make_fixed_batches(TensorDataset(torch.arange(10.0).unsqueeze(1)), 6, 4, seed=1)
    assert [tuple(b[0].shape) for b in single] == [(4, 1), (2, 1)]  # default_collate keeps the 1-tuple
    dicts = make_fixed_batches(Stream(), 5, 2)
    assert [b["x"][:, 0].tolist() for b in dicts] == [[0.0, 1.0], [2.0, 3.0], [4.0]]
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_loss_functional_on_a_foreign_module_has_the_closed_form_hessian():
    module = RegressionDictModule().double()
    batches = [tuple(t.double() for t in b) for b in list(module.train_dataloader())[:3]]
    f = LossFunctional(module, batches)  # auto -> MSE of forward(x) vs y
    x = torch.cat([b[0] for b in batches])
    z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    exact = 2.0 / len(x) * z.T @ z  # d²/dθ² of mean (w·x + b − y)²; θ = (w, b)
    for backend in ("autograd", "func"):
        got = HVPOperator(f, backend=backend).matmat(torch.eye(f.dim, dtype=torch.float64))
        torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-12)
    lam = compute_measure("hessian_top", module, batches, tol=1e-10)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(exact).max()), rel=1e-8)


class Square(torch.autograd.Function):
    """A custom autograd.Function without functorch support (like many custom kernels): double backward works,
    torch.func transforms refuse it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2.0 * x * grad


def custom_op_loss(module, batch):
    x, y = batch
    return Square.apply(module(x) - F.one_hot(y, 3).to(x.dtype)).mean()


def plain_square_loss(module, batch):
    x, y = batch
    return (module(x) - F.one_hot(y, 3).to(x.dtype)).pow(2).mean()


def test_func_backend_falls_back_to_autograd_for_untraceable_losses():
    model, batches = tiny_mlp(torch.float64), mlp_batches(torch.float64)
    f = LossFunctional(model, batches, loss_fn=custom_op_loss)
    v = torch.randn(3, f.dim, dtype=torch.float64)
    op = HVPOperator(f, backend="func")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = op.matmat(v)
    assert op.backend == "autograd" and any("falling back" in str(w.message) for w in caught)
    want = HVPOperator(LossFunctional(model, batches, loss_fn=plain_square_loss), backend="func").matmat(v)
    torch.testing.assert_close(got, want)


def test_measures_needing_class_scores_refuse_regression_losses():
    reg = nn.Linear(4, 1)
    with pytest.raises(ValueError, match="class scores"):
        compute_measure("shannon", reg, [regression_batch()])
    value = compute_measure("lpf", reg, [regression_batch()], num_samples=3)
    assert math.isfinite(value) and value > 0
