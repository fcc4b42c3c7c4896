import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_autoopt.callbacks import LPFSGD
from lightning_autoopt.callbacks.lpf_sgd import filter_noise
from tests import helpers
from tests.helpers import TinyClassifier, TinyDataModule, flat_params


def make_trainer(tmp_path, callbacks=(), **kwargs):
    return helpers.make_trainer(
        tmp_path, callbacks, **{"max_epochs": 2, "limit_train_batches": 4, "limit_val_batches": 0, **kwargs}
    )


def fit(tmp_path, callbacks=(), model=None, **kwargs):
    torch.manual_seed(0)
    model = model or TinyClassifier(momentum=0.9)
    trainer = make_trainer(tmp_path, callbacks, **kwargs)
    trainer.fit(model, datamodule=TinyDataModule())
    return model, trainer


class AdamClassifier(TinyClassifier):
    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class Recorder(Callback):
    """Placed before LPFSGD: sees the clean weights at batch start, the noisy ones at backward, clean before step."""

    def __init__(self):
        self.start, self.backward, self.step = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start.append(flat_params(pl_module))

    def on_before_backward(self, trainer, pl_module, loss):
        self.backward.append(flat_params(pl_module))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.step.append(flat_params(pl_module))


@pytest.mark.parametrize("model_cls", [TinyClassifier, AdamClassifier])
def test_noise_is_applied_for_the_pass_and_removed_exactly(tmp_path, model_cls):
    rec = Recorder()
    cb = LPFSGD(std=0.01)
    fit(tmp_path, [rec, cb], model=model_cls())
    assert len(rec.start) == len(rec.backward) == len(rec.step) == 8
    for start, noisy, step in zip(rec.start, rec.backward, rec.step):
        assert torch.equal(start, step)  # bitwise: the optimizer steps from the clean weights
        rel = float((noisy - start).norm() / start.norm())
        assert 1e-4 < rel < 0.1
    assert cb.draws == 8


def test_zero_std_is_plain_training_and_seeded_runs_repeat(tmp_path):
    plain, _ = fit(tmp_path)
    zero, _ = fit(tmp_path, [LPFSGD(std=0.0)])
    assert torch.equal(flat_params(plain), flat_params(zero))
    a, _ = fit(tmp_path, [LPFSGD(std=0.01, seed=1)])
    b, _ = fit(tmp_path, [LPFSGD(std=0.01, seed=1)])
    c, _ = fit(tmp_path, [LPFSGD(std=0.01, seed=2)])
    assert torch.equal(flat_params(a), flat_params(b))
    assert not torch.equal(flat_params(a), flat_params(c))
    assert not torch.equal(flat_params(a), flat_params(plain))


def test_global_rng_is_not_used(tmp_path):
    class RngProbe(Callback):
        def __init__(self):
            self.states = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.states.append(torch.get_rng_state())

    a, b = RngProbe(), RngProbe()
    fit(tmp_path, [a])
    fit(tmp_path, [LPFSGD(std=0.01), b])
    assert all(torch.equal(x, y) for x, y in zip(a.states, b.states))


def test_filter_noise_scales():
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(3, 400)
    w[0] = 1.0
    w[1] = 10.0
    n = filter_noise(w, 0.1, "row_norm", g)
    assert float(n[0].std()) == pytest.approx(0.1 * 20.0, rel=0.15)  # ‖W_0‖ = 20
    assert float(n[1].std()) == pytest.approx(0.1 * 200.0, rel=0.15)
    assert torch.equal(n[2], torch.zeros(400))  # a dead row stays unperturbed
    rms = filter_noise(w, 0.1, "row_rms", g)
    assert float(rms[0].std()) == pytest.approx(0.1 * 1.0, rel=0.15)  # ‖W_0‖/√400 = 1
    bias = filter_noise(torch.full((100,), 2.0), 0.1, "row_norm", g)
    assert float(bias.std()) == pytest.approx(0.1 * 20.0, rel=0.2)


def test_cosine_increase_schedule_and_logging(tmp_path):
    cb = LPFSGD(std=0.001, schedule="cosine_increase", increase_factor=15.0)
    _, trainer = fit(tmp_path, [cb])
    assert cb._horizon == 8
    assert cb.current_std(0) == pytest.approx(0.001)
    assert cb.current_std(4) == pytest.approx(0.001 * 8.0)
    assert cb.current_std(8) == pytest.approx(0.015)
    assert cb.current_std(100) == pytest.approx(0.015)
    assert float(trainer.callback_metrics["lpf_sgd/std"]) == pytest.approx(cb.current_std(7))


def test_num_draws_uses_gradient_accumulation(tmp_path):
    rec = Recorder()
    cb = LPFSGD(std=0.01, num_draws=2)
    _, trainer = fit(tmp_path, [rec, cb], accumulate_grad_batches=2)
    assert trainer.global_step == 4 and cb.draws == 8
    assert len(rec.step) == 4
    assert not torch.equal(rec.backward[0], rec.backward[1])  # a new draw for every micro-batch
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        fit(tmp_path, [LPFSGD(num_draws=2)])


def test_resume_is_bitwise_identical(tmp_path):
    full, _ = fit(tmp_path / "a", [LPFSGD(std=0.01, schedule="cosine_increase")], max_epochs=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1, every_n_epochs=1)
    torch.manual_seed(0)
    crashing = TinyClassifier(momentum=0.9, crash_at_step=6)
    with pytest.raises(RuntimeError, match="CRASH"):
        fit(tmp_path / "b", [LPFSGD(std=0.01, schedule="cosine_increase"), ckpt], max_epochs=3, model=crashing,
            enable_checkpointing=True)  # fmt: skip
    torch.manual_seed(0)
    cb = LPFSGD(std=0.01, schedule="cosine_increase")
    resumed = TinyClassifier(momentum=0.9)
    trainer = make_trainer(tmp_path / "c", [cb], max_epochs=3)
    trainer.fit(resumed, datamodule=TinyDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert cb.draws == 12
    assert torch.equal(flat_params(full), flat_params(resumed))


def test_nan_weights_are_skipped_without_crash(tmp_path):
    cb = LPFSGD(std=0.01)
    model, trainer = fit(tmp_path, [cb], model=TinyClassifier(nan_at_step=2))
    assert trainer.global_step == 8
    assert cb.skipped == 5  # weights are NaN after step 2's update: batches 3..7 are skipped
    assert float(trainer.callback_metrics["lpf_sgd/skipped"]) == 5.0


def test_exception_mid_batch_restores_weights(tmp_path):
    class Boom(TinyClassifier):
        def training_step(self, batch, batch_idx):
            self.seen = flat_params(self)
            raise ValueError("boom")

    model = Boom()
    before = flat_params(model)
    with pytest.raises(ValueError, match="boom"):
        fit(tmp_path, [LPFSGD(std=0.05)], model=model)
    assert not torch.equal(model.seen, before)
    assert torch.equal(flat_params(model), before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"std": -1.0}, "std"),
        ({"std": float("nan")}, "std"),
        ({"schedule": "linear"}, "schedule"),
        ({"increase_factor": 0.5}, "increase_factor"),
        ({"scale": "global"}, "scale"),
        ({"num_draws": 0}, "num_draws"),
        ({"total_steps": 0}, "total_steps"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LPFSGD(**kwargs)


def test_cosine_needs_a_finite_horizon(tmp_path):
    with pytest.raises(ValueError, match="total_steps"):
        fit(tmp_path, [LPFSGD(schedule="cosine_increase")], max_epochs=-1, max_steps=-1, max_time="00:00:00:02")


def test_state_dict_roundtrip():
    a = LPFSGD()
    a.draws, a.skipped = 17, 2
    b = LPFSGD()
    b.load_state_dict(a.state_dict())
    assert (b.draws, b.skipped) == (17, 2)
    assert not math.isnan(b.current_std(3))


def test_default_num_draws_follows_gradient_accumulation(tmp_path):
    cb = LPFSGD(std=0.01)
    _, trainer = fit(tmp_path, [cb], accumulate_grad_batches=2)
    assert trainer.global_step == 4 and cb.draws == 8  # one draw per micro-batch, no argument to keep in sync
