"""BatchNorm statistics of the policy weights re-estimated on training batches (``bn_recompute_batches``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lightning_autoopt  # noqa: F401
from lightning_autoopt.landscape.loss import make_fixed_batches
from lightning_autoopt.strategies import LocalSGDStrategy
from lightning_autoopt.strategies._batchnorm import batchnorm_layers, recompute_batchnorm_
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer


class BNClassifier(TinyClassifier):
    """TinyClassifier with a BatchNorm (and a Dropout) between its layers."""

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        hidden = self.hparams.hidden
        self.net = nn.Sequential(
            nn.Linear(self.hparams.dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, self.hparams.classes),
        )


def _forward(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return module(batch)


def test_recompute_is_the_plain_average_over_the_batches_and_leaves_everything_else_alone():
    torch.manual_seed(0)
    model = BNClassifier()
    bn = model.net[1]
    with torch.no_grad():
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(9.0)
    bn.num_batches_tracked.fill_(123)
    batches = [torch.randn(16, 8) * 3 + i for i in range(3)]
    model.train()
    rng = torch.get_rng_state()
    recompute_batchnorm_(model, batches, _forward, batchnorm_layers(model))
    with torch.no_grad():
        hidden = [model.net[0](x) for x in batches]
    expected_mean = torch.stack([h.mean(0) for h in hidden]).mean(0)
    expected_var = torch.stack([h.var(0, unbiased=True) for h in hidden]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-4)
    # the rest untouched: modes, momentum, the counter, and no random number drawn (dropout stayed in eval)
    assert model.training and bn.training and model.net[3].training
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 123
    assert torch.equal(torch.get_rng_state(), rng)


def test_recompute_restores_the_modes_on_an_exception():
    model = BNClassifier()
    model.eval()

    def boom(module: nn.Module, batch: torch.Tensor) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        recompute_batchnorm_(model, [torch.zeros(2, 8)], boom, batchnorm_layers(model))
    assert not any(m.training for m in model.modules()) and model.net[1].momentum == 0.1


def test_negative_batches_are_refused_in_the_constructor():
    with pytest.raises(ValueError, match="bn_recompute_batches"):
        LocalSGDStrategy(bn_recompute_batches=-1)


@pytest.mark.slow
def test_fit_hands_back_the_average_with_statistics_re_estimated_on_every_rank(tmp_path):
    batches, batch_size = 2, 16
    strategy = LocalSGDStrategy(period=2, bn_recompute_batches=batches, start_method="spawn")
    trainer = make_trainer(tmp_path, strategy=strategy, devices=2, max_steps=6, limit_val_batches=0)
    torch.manual_seed(0)
    model = BNClassifier()
    data = TinyDataModule(batch_size=batch_size)
    trainer.fit(model, data)

    # what the strategy should have done to the returned (averaged) weights: each rank re-estimates on its own
    # seeded draw from the training set, then the ranks average
    data.setup("fit")
    dataset = data.train_dataloader().dataset
    stats = []
    for rank in range(2):
        replica = copy.deepcopy(model)
        drawn = make_fixed_batches(dataset, batches * batch_size, batch_size, seed=0x5EED + rank)
        recompute_batchnorm_(replica, drawn, lambda m, b: m(b[0]), batchnorm_layers(replica))
        stats.append((replica.net[1].running_mean.clone(), replica.net[1].running_var.clone()))
    bn = model.net[1]
    assert torch.allclose(bn.running_mean, (stats[0][0] + stats[1][0]) / 2, atol=1e-5)
    assert torch.allclose(bn.running_var, (stats[0][1] + stats[1][1]) / 2, atol=1e-4)
    assert int(bn.num_batches_tracked) == 6  # the replicas' own counter, not the re-estimation's


@pytest.mark.slow
def test_re_estimating_at_every_validation_leaves_training_untouched(tmp_path):
    """Validation swaps the re-estimated average in and out each epoch: the trained weights do not move a bit."""
    flats = []
    for batches in (0, 2):
        strategy = LocalSGDStrategy(period=2, bn_recompute_batches=batches, start_method="spawn")
        trainer = make_trainer(
            tmp_path / str(batches), strategy=strategy, devices=2, max_epochs=3, limit_train_batches=4,
            limit_val_batches=1,
        )  # fmt: skip
        torch.manual_seed(0)
        model = BNClassifier()
        trainer.fit(model, TinyDataModule(batch_size=16))
        flats.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        assert trainer.strategy.bn_recompute_batches == batches
    assert torch.equal(flats[0], flats[1])
