import math

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_autoopt.callbacks import SharpnessProbe
from tests import helpers
from tests.helpers import TinyClassifier, TinyDataModule, flat_params

CHEAP = {
    "lpf": {"num_samples": 4},
    "eps_sharpness": {"max_iter": 20},
    "pac_bayes": {"mc_samples": 2, "max_iter": 6},
    "hessian_top": {"max_iter": 10},
    "hessian_trace": {"num_probes": 6},
    "hessian_fro": {"num_probes": 3},
    "local_entropy": {"num_steps": 2, "max_batches": 1},
}
ALL = ["lpf", "eps_sharpness", "pac_bayes", "hessian_top", "hessian_trace", "hessian_fro", "fisher_rao", "shannon",
       "local_entropy"]  # fmt: skip


def make_trainer(tmp_path, callbacks=(), **kwargs):
    return helpers.make_trainer(
        tmp_path, callbacks, **{"max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 2, **kwargs}
    )


class ShuffledDataModule(TinyDataModule):
    """Shuffled training loader: drawing from it would shift the sampler's RNG, which the probe must not do."""

    def train_dataloader(self):
        loader = super().train_dataloader()
        return torch.utils.data.DataLoader(loader.dataset, batch_size=self.batch_size, shuffle=True)


class DropoutClassifier(TinyClassifier):
    """Dropout and momentum make any use of the global RNG or optimizer state visible in the final weights."""

    def __init__(self, **kwargs):
        super().__init__(momentum=0.9, **kwargs)
        self.net.insert(2, torch.nn.Dropout(0.3))


def fit(tmp_path, probe=None, model=None, dm=None, **kwargs):
    torch.manual_seed(0)
    model = model or DropoutClassifier()
    trainer = make_trainer(tmp_path, [probe] if probe else [], **kwargs)
    trainer.fit(model, datamodule=dm or ShuffledDataModule())
    return model, trainer


def test_probe_leaves_training_bitwise_unchanged(tmp_path):
    plain, _ = fit(tmp_path)
    probe = SharpnessProbe(measures=ALL, every_n_epochs=None, every_n_steps=3, measure_kwargs=CHEAP, normalize=True)
    probed, trainer = fit(tmp_path, probe)
    assert torch.equal(flat_params(plain), flat_params(probed))
    assert len(probe.history) == 2  # steps 3 and 6 of 8
    for name in ALL:
        assert math.isfinite(probe.history[-1][name])
        assert f"sharpness/{name}" in trainer.callback_metrics


def test_epoch_probe_logs_and_uses_val_data(tmp_path):
    probe = SharpnessProbe(measures=["lpf", "shannon"], data="val", max_batches=2, measure_kwargs={"lpf": CHEAP["lpf"]})
    _, trainer = fit(tmp_path, probe, model=TinyClassifier(), max_epochs=3)
    assert [h["epoch"] for h in probe.history] == [0.0, 1.0, 2.0]
    assert float(trainer.callback_metrics["sharpness/lpf"]) == pytest.approx(probe.history[-1]["lpf"])
    assert probe.history[0]["shannon"] > probe.history[-1]["shannon"]  # predictions sharpen while training
    assert len(probe._batches) == 2 and probe._batches[0][0].shape[0] == 16


def test_nan_loss_reports_nan_and_training_goes_on(tmp_path):
    measures = ["lpf", "hessian_top"]
    kwargs = {k: CHEAP[k] for k in measures}
    probe = SharpnessProbe(measures=measures, every_n_epochs=None, every_n_steps=2, measure_kwargs=kwargs)
    model = TinyClassifier(nan_at_step=3)
    _, trainer = fit(tmp_path, probe, model=model)
    assert trainer.global_step == 8
    assert math.isfinite(probe.history[0]["lpf"])  # step 2
    assert math.isnan(probe.history[-1]["lpf"]) and math.isnan(probe.history[-1]["hessian_top"])


class CrashOnce(TinyClassifier):
    pass


def test_resume_keeps_history(tmp_path):
    measures = ["lpf", "pac_bayes"]
    kwargs = {k: CHEAP[k] for k in measures}
    full = SharpnessProbe(measures=measures, measure_kwargs=kwargs)
    fit(tmp_path / "a", full, model=TinyClassifier(), dm=TinyDataModule(), max_epochs=3)

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1, every_n_epochs=1)
    first = SharpnessProbe(measures=measures, measure_kwargs=kwargs)
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path / "b", [first, ckpt], max_epochs=3, enable_checkpointing=True)
    with pytest.raises(RuntimeError, match="CRASH"):
        trainer.fit(TinyClassifier(crash_at_step=9), datamodule=TinyDataModule())
    assert len(first.history) == 2

    resumed = SharpnessProbe(measures=measures, measure_kwargs=kwargs)
    torch.manual_seed(123)  # a different init: pac_bayes must use the saved initial weights
    trainer = make_trainer(tmp_path / "c", [resumed], max_epochs=3)
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0, 2.0]
    assert torch.equal(resumed._init_params, full._init_params)
    for a, b in zip(full.history, resumed.history):
        assert a == b


def test_state_key_and_state_dict_roundtrip():
    a = SharpnessProbe(measures=["lpf"], seed=0)
    b = SharpnessProbe(measures=["lpf"], seed=1)
    assert a.state_key != b.state_key
    a.history.append({"epoch": 0.0, "step": 4.0, "lpf": 1.5})
    b.load_state_dict(a.state_dict())
    assert b.history == a.history


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"measures": []}, "measures"),
        ({"measures": ["flatness"]}, "Unknown sharpness measure"),
        ({"measures": ["lpf", "lpf"]}, "duplicates"),
        ({"every_n_epochs": 2, "every_n_steps": 5}, "at most one"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"data": "test"}, "data"),
        ({"max_batches": 0}, "max_batches"),
        ({"batch_size": -1}, "batch_size"),
        ({"loss_fn": "hinge"}, "loss_fn"),
        ({"measure_kwargs": {"shannon": {}}}, "not in `measures`"),
        ({"measure_kwargs": {"lpf": {"sigmaa": 1.0}}}, "unknown argument"),
        ({"measure_kwargs": {"lpf": {"num_samples": 0}}}, "num_samples"),  # at construction, not mid-fit
        ({"measures": ["local_entropy"], "measure_kwargs": {"local_entropy": {"max_batches": 0}}}, "max_batches"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SharpnessProbe(**kwargs)


class RecordingProbe(SharpnessProbe):
    """Saves what each rank logged, so the test can compare ranks after ddp_spawn."""

    def __init__(self, out_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("sharpness/")}
        torch.save({"history": self.history, "metrics": metrics}, f"{self.out_dir}/rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_spawn_gives_identical_values_on_both_ranks(tmp_path):
    probe = RecordingProbe(
        str(tmp_path), measures=["lpf", "hessian_top", "pac_bayes"], measure_kwargs={k: CHEAP[k] for k in
        ["lpf", "hessian_top", "pac_bayes"]},
    )  # fmt: skip
    trainer = make_trainer(tmp_path, [probe], devices=2, strategy="ddp_spawn", max_epochs=2, limit_val_batches=0)
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert len(r0["history"]) == 2
    assert r0 == r1
    assert set(r0["metrics"]) == {"sharpness/lpf", "sharpness/hessian_top", "sharpness/pac_bayes"}
    assert all(math.isfinite(v) for v in r0["metrics"].values())


def test_step_probe_fires_once_per_optimizer_step_under_accumulation(tmp_path):
    probe = SharpnessProbe(measures=["shannon"], every_n_epochs=None, every_n_steps=1)
    _, trainer = fit(tmp_path, probe, model=TinyClassifier(), max_epochs=1, accumulate_grad_batches=2)
    assert trainer.global_step == 2
    assert [h["step"] for h in probe.history] == [1.0, 2.0]


# ------------------------------------------------------------------ the loss contract and batches of any structure
class TransferHookClassifier(TinyClassifier):
    """Batches arrive as dicts from a custom collate; the module's own transfer hooks rescale and rename them."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return {"inputs": batch["x"] * 2.0, "y": batch["y"]}

    def forward(self, inputs):
        return self.net(inputs)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self(batch["inputs"]), batch["y"])


def dict_collate(items):
    x, y = torch.utils.data.default_collate(items)
    return {"x": x, "y": y}


class DictCollateDataModule(TinyDataModule):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(super().train_dataloader().dataset, batch_size=8, collate_fn=dict_collate)


def test_probe_batches_use_the_loaders_collate_and_the_modules_transfer_hooks(tmp_path):
    probe = SharpnessProbe(measures=["lpf", "shannon"], measure_kwargs={"lpf": {"num_samples": 2}}, max_batches=2)
    fit(tmp_path, probe, model=TransferHookClassifier(), dm=DictCollateDataModule(), max_epochs=1, limit_val_batches=0)
    batch = probe._batches[0]
    assert set(batch) == {"inputs", "y"} and batch["inputs"].shape == (8, 8)
    dataset = DictCollateDataModule().train_dataloader().dataset
    rows = [int(torch.nonzero((dataset.tensors[0] * 2.0 == r).all(dim=1))[0]) for r in batch["inputs"]]
    assert torch.equal(dataset.tensors[1][rows], batch["y"])  # the hook's output, sample by sample
    assert probe.loss.layout.keys == ("inputs",) and probe.loss.layout.target == "y"
    assert math.isfinite(probe.history[-1]["shannon"])


def test_a_loss_that_does_not_fit_stops_fit_before_the_first_step(tmp_path):
    from tests.callbacks._foreign_modules import RegressionDictModule

    model = RegressionDictModule()
    trainer = make_trainer(tmp_path, [SharpnessProbe(loss_fn="cross_entropy")])
    with pytest.raises(ValueError, match="one value per target.*'mse'"):
        trainer.fit(model)
    assert trainer.global_step == 0
    probe = SharpnessProbe(measures=["lpf"], measure_kwargs={"lpf": {"num_samples": 2}})
    make_trainer(tmp_path, [probe]).fit(RegressionDictModule())  # the default picks MSE for this model
    assert probe.loss.criterion == "mse" and probe.history[-1]["lpf"] > 0
    with pytest.raises(ValueError, match="class scores"):
        make_trainer(tmp_path, [SharpnessProbe(measures=["shannon"])]).fit(RegressionDictModule())
    with pytest.raises(ValueError, match="class scores"):
        SharpnessProbe(measures=["shannon"], loss_fn="mse")  # known at construction


def test_loss_fn_from_yaml_by_import_path(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    from tests.callbacks._foreign_modules import TwoOptimizerAutoencoder, reconstruction_loss

    config = {
        "trainer": {
            "logger": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {
                    "class_path": "lightning_autoopt.callbacks.SharpnessProbe",
                    "init_args": {
                        "measures": ["hessian_top"],
                        "loss_fn": "tests.callbacks._foreign_modules.reconstruction_loss",
                    },
                }
            ],
        }
    }
    cli = LightningCLI(TwoOptimizerAutoencoder, run=False, args=config, save_config_callback=None)
    probe = next(c for c in cli.trainer.callbacks if isinstance(c, SharpnessProbe))
    assert probe.loss_fn in ("tests.callbacks._foreign_modules.reconstruction_loss", reconstruction_loss)
    with pytest.raises(ValueError, match="not importable"):
        SharpnessProbe(loss_fn="tests.callbacks._foreign_modules.no_such_loss")
