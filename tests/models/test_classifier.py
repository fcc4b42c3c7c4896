"""Classifier: networks, optimizers, schedulers, logging, argument checks, YAML-friendliness, resume."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_autoopt.data import MNIST1DDataModule
from lightning_autoopt.models import Classifier
from tests.helpers import make_trainer


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    return make_trainer(tmp_path, **{"max_epochs": 2, "limit_train_batches": 2, "limit_val_batches": 1, **kwargs})


@pytest.fixture
def datamodule(tmp_path: Path) -> MNIST1DDataModule:
    return MNIST1DDataModule(num_samples=200, batch_size=16, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("arch", ["cnn", "mlp", "resnet"])
@pytest.mark.parametrize(("dims", "in_channels", "length"), [(1, 1, 40), (1, 1, 64), (2, 3, 32), (2, 1, 8)])
def test_forward_shapes(arch: str, dims: int, in_channels: int, length: int) -> None:
    model = Classifier(arch=arch, dims=dims, in_channels=in_channels, input_length=length, num_classes=7, width=8)
    x = torch.randn(5, in_channels, *([length] * dims))
    logits = model(x)
    assert logits.shape == (5, 7)
    logits.sum().backward()  # every parameter takes part in the forward pass
    assert all(p.grad is not None for p in model.parameters())


def test_wrong_input_shape_names_the_arguments() -> None:
    with pytest.raises(ValueError, match="input_length"):
        Classifier()(torch.randn(2, 1, 41))


def test_documented_parameter_counts() -> None:
    # The Classifier docstring quotes these numbers; keep them true.
    assert Classifier(arch="cnn", width=32).num_parameters == 22_058
    assert Classifier(arch="cnn", width=256).num_parameters == 1_036_554
    assert Classifier(arch="mlp", width=32).num_parameters == 23_050
    assert Classifier(arch="resnet", width=16).num_parameters == 44_922
    resnet20 = Classifier(arch="resnet", dims=2, in_channels=3, input_length=32, width=16, depth=3)
    assert resnet20.num_parameters == 272_474


@pytest.mark.parametrize(
    ("kwargs", "expected_lr"),
    [
        ({"optimizer": "sgd", "scheduler": None, "nesterov": True}, 0.1),
        ({"optimizer": "adamw", "scheduler": "cosine"}, 0.0),  # T_max = trainer.max_epochs = 2: ends at eta_min
        ({"optimizer": "sgd", "scheduler": "step", "step_size": 1, "gamma": 0.5}, 0.025),
        ({"optimizer": "sgd", "scheduler": "multistep", "milestones": [1], "gamma": 0.5}, 0.05),
        ({"optimizer": "adamw", "scheduler": "plateau", "gamma": 0.5, "plateau_patience": 0}, None),
        ({"optimizer": "sgd", "scheduler": "cosine", "max_epochs_for_cosine": 4}, 0.05),
    ],
)
def test_quick_fit_for_each_optimizer_and_scheduler(
    tmp_path: Path, datamodule: MNIST1DDataModule, kwargs: dict, expected_lr: float | None
) -> None:
    model = Classifier(lr=0.1, width=4, **kwargs)
    trainer = _trainer(tmp_path)
    trainer.fit(model, datamodule=datamodule)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW if kwargs["optimizer"] == "adamw" else torch.optim.SGD)
    lr = optimizer.param_groups[0]["lr"]
    if expected_lr is None:  # plateau: the LR can only have gone down, by factors of gamma
        assert lr in (0.1, 0.05, 0.025)
    else:
        assert lr == pytest.approx(expected_lr, abs=1e-9)
    metrics = trainer.callback_metrics
    for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert name in metrics and torch.isfinite(metrics[name]), name


def test_logs_metrics_and_learns(tmp_path: Path, datamodule: MNIST1DDataModule) -> None:
    from lightning.pytorch.loggers import CSVLogger

    model = Classifier(width=16, lr=0.05)
    trainer = _trainer(
        tmp_path,
        max_epochs=8,
        limit_train_batches=None,
        limit_val_batches=None,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=datamodule)
    results = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    assert set(results) == {"test_loss", "test_acc"}
    assert 0.0 <= results["test_acc"] <= 1.0
    header = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(header)
    # Accuracy is plain top-1 accuracy (micro average), checked against a manual count on the validation set.
    model.eval()
    x, y = datamodule.val_set.tensors
    with torch.no_grad():
        manual = (model(x).argmax(1) == y).float().mean().item()
    val = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    assert val["val_acc"] == pytest.approx(manual, abs=1e-6)
    print("val accuracy", manual)
    assert manual > 0.2  # better than chance (0.1) after a few epochs on 140 samples


def test_cosine_without_schedule_length_fails(tmp_path: Path, datamodule: MNIST1DDataModule) -> None:
    trainer = _trainer(tmp_path, max_epochs=-1, max_steps=2)
    with pytest.raises(ValueError, match="max_epochs_for_cosine"):
        trainer.fit(Classifier(width=4, scheduler="cosine"), datamodule=datamodule)


def test_predict_returns_logits(tmp_path: Path, datamodule: MNIST1DDataModule) -> None:
    predictions = _trainer(tmp_path, limit_predict_batches=2).predict(Classifier(width=4), datamodule=datamodule)
    assert len(predictions) == 2 and predictions[0].shape == (16, 10)


def test_resume_from_epoch_checkpoint_is_bitwise_identical(tmp_path: Path, datamodule: MNIST1DDataModule) -> None:
    # The training order depends only on (seed, epoch), so an interrupted run sees the same batches.
    kwargs = dict(limit_train_batches=None, limit_val_batches=0, enable_checkpointing=True)
    pl.seed_everything(0)
    straight = Classifier(width=4, scheduler="step", step_size=1, gamma=0.5)
    _trainer(tmp_path / "a", max_epochs=2, **kwargs).fit(straight, datamodule=datamodule)

    pl.seed_everything(0)
    first = Classifier(width=4, scheduler="step", step_size=1, gamma=0.5)
    trainer = _trainer(tmp_path / "b", max_epochs=1, **kwargs)
    trainer.fit(first, datamodule=datamodule)
    ckpt = tmp_path / "b.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = Classifier(width=4, scheduler="step", step_size=1, gamma=0.5)
    _trainer(tmp_path / "c", max_epochs=2, **kwargs).fit(resumed, datamodule=datamodule, ckpt_path=str(ckpt))
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_arguments_are_yaml_friendly() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(Classifier, "model")
    cfg = parser.parse_string(
        "model:\n  arch: resnet\n  optimizer: adamw\n  scheduler: multistep\n  milestones: [2, 4]\n  width: 8\n"
    )
    model = parser.instantiate_classes(cfg).model
    assert isinstance(model, Classifier)
    assert model.hparams.milestones == [2, 4] and model.hparams.arch == "resnet"


def test_hyperparameters_round_trip_through_checkpoint(tmp_path: Path, datamodule: MNIST1DDataModule) -> None:
    model = Classifier(arch="mlp", width=4, optimizer="adamw", scheduler="cosine", max_epochs_for_cosine=3)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=1)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = Classifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.hparams == model.hparams
    for p, q in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"arch": "vgg"}, "arch"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"scheduler": "linear"}, "scheduler"),
        ({"dims": 3}, "dims"),
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"input_length": 0}, "input_length"),
        ({"width": 0}, "width"),
        ({"depth": 0}, "depth"),
        ({"lr": 0.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov"),
        ({"nesterov": True, "optimizer": "adamw"}, "nesterov"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"gamma": 0.0}, "gamma"),
        ({"step_size": 0}, "step_size"),
        ({"plateau_patience": -1}, "plateau_patience"),
        ({"max_epochs_for_cosine": 0}, "max_epochs_for_cosine"),
        ({"scheduler": "multistep"}, "milestones"),
        ({"scheduler": "multistep", "milestones": [5, 3]}, "milestones"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Classifier(**kwargs)
