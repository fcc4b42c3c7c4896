"""Every public callback × LightningModules this package did not write (``_foreign_modules.py``).

Each pair either runs (fit 2 short epochs; the callback's logged signals are finite; its own bookkeeping shows it
acted; measures match a closed form where there is one) or refuses before the first training step with a message
naming what is missing. The expected refusals are listed in ``REFUSALS``; every other pair must run. A completeness
check fails when a new public callback is not in ``CALLBACKS``.

TAME is a LightningModule, not a callback: its foreign axis is the expert network and the experts' loss (a user's
``nn.Module`` by class path, a custom ``loss_fn``), tested in ``tests/continual/test_tame.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import lightning_autoopt.callbacks as public
from lightning_autoopt.callbacks import DCO, LPFSGD, AutoDrop, SharpnessProbe, TaskShiftDetector
from tests.callbacks._foreign_modules import MODULES, AutoencoderWithLandscapeLoss, TwoOptimizerAutoencoder
from tests.helpers import make_trainer

EPOCHS, BATCHES = 2, 4
STEPS = EPOCHS * BATCHES  # batches seen; automatic modules take one optimizer step per batch

PROBE_KWARGS = {
    "lpf": {"num_samples": 3},
    "hessian_top": {"max_iter": 30, "tol": 1e-6},
    "hessian_trace": {"num_probes": 15, "method": "hutch++"},
}


def autodrop() -> Callback:
    return AutoDrop(interval=2, verbose=False)


def sharpness_probe() -> Callback:
    return SharpnessProbe(measures=list(PROBE_KWARGS), measure_kwargs=PROBE_KWARGS, max_batches=2)


def lpf_sgd() -> Callback:
    return LPFSGD(std=0.01)


def task_shift_detector() -> Callback:
    return TaskShiftDetector(verbose=False)


def dco() -> Callback:
    return DCO(boundaries=[2], num_gradients=4, ae_steps=5, num_directions=2, report=False)


#: public callback name -> factory of a cheap instance.
CALLBACKS: dict[str, Callable[[], Callback]] = {
    "AutoDrop": autodrop,
    "SharpnessProbe": sharpness_probe,
    "LPFSGD": lpf_sgd,
    "TaskShiftDetector": task_shift_detector,
    "DCO": dco,
}

#: (callback, module) -> the refusal's message (regex); every other pair must run.
REFUSALS: dict[tuple[str, str], str] = {
    ("LPFSGD", "manual"): "LPFSGD needs automatic optimization.*ManualClassifier",
    ("LPFSGD", "two_optimizers"): "LPFSGD needs automatic optimization.*TwoOptimizerAutoencoder",
    ("SharpnessProbe", "two_optimizers"): "Could not pick a loss.*manual optimization.*loss_fn.*landscape_loss",
    ("DCO", "two_optimizers"): "DCO needs a single optimizer.*got 2",
}

#: what each callback logs (all must be finite after a run).
SIGNALS: dict[str, list[str]] = {
    "AutoDrop": ["autodrop/angular_velocity", "autodrop/lr"],
    "SharpnessProbe": [f"sharpness/{name}" for name in PROBE_KWARGS],
    "LPFSGD": ["lpf_sgd/std"],
    "TaskShiftDetector": ["task_shift/loss_ema", "task_shift/threshold"],
    "DCO": ["dco/penalty"],
}


def acted(name: str, cb: Callback, trainer: pl.Trainer) -> None:
    """The callback's own record shows it did its job on this module (not just that nothing crashed)."""
    if name == "AutoDrop":
        assert isinstance(cb, AutoDrop) and len(cb.omega_history) >= 2
    elif name == "SharpnessProbe":
        assert isinstance(cb, SharpnessProbe) and [h["epoch"] for h in cb.history] == [0.0, 1.0]
    elif name == "LPFSGD":
        assert isinstance(cb, LPFSGD) and cb.draws == STEPS and cb.skipped == 0
    elif name == "TaskShiftDetector":
        assert isinstance(cb, TaskShiftDetector) and cb.detector.steps == STEPS  # one test per batch
    elif name == "DCO":
        assert isinstance(cb, DCO) and cb.consolidation_steps == [2] and cb.last_penalty >= 0.0
    else:  # pragma: no cover - the completeness test names the missing entry
        raise AssertionError(f"add a check for {name}")


def fit(tmp_path: Path, callbacks: list[Callback], module: pl.LightningModule, **kwargs) -> pl.Trainer:
    torch.manual_seed(0)
    settings = dict(max_epochs=EPOCHS, limit_train_batches=BATCHES, log_every_n_steps=1, num_sanity_val_steps=0)
    trainer = make_trainer(tmp_path, callbacks, **{**settings, **kwargs})
    trainer.fit(module)
    return trainer


def test_every_public_callback_is_in_the_battery():
    callbacks = {
        name
        for name in public.__all__
        if isinstance(getattr(public, name), type) and issubclass(getattr(public, name), Callback)
    }
    assert callbacks == set(CALLBACKS), f"add {sorted(callbacks - set(CALLBACKS))} to CALLBACKS, SIGNALS and acted()"
    assert set(SIGNALS) == set(CALLBACKS)
    assert all(c in CALLBACKS and m in MODULES for c, m in REFUSALS)


@pytest.mark.parametrize("module_name", sorted(MODULES))
@pytest.mark.parametrize("callback_name", sorted(CALLBACKS))
def test_callback_runs_or_refuses_early(tmp_path, callback_name, module_name):
    cb = CALLBACKS[callback_name]()
    module = MODULES[module_name]()
    refusal = REFUSALS.get((callback_name, module_name))
    if refusal is not None:
        trainer = make_trainer(tmp_path, [cb], max_epochs=EPOCHS, limit_train_batches=BATCHES)
        with pytest.raises(ValueError, match=refusal):
            trainer.fit(module)
        assert trainer.global_step == 0  # refused before any training step
        return
    trainer = fit(tmp_path, [cb], module)
    assert trainer.current_epoch == EPOCHS
    for key in SIGNALS[callback_name]:
        assert key in trainer.callback_metrics, f"{key} not logged"
        assert math.isfinite(float(trainer.callback_metrics[key])), f"{key} = {trainer.callback_metrics[key]}"
    acted(callback_name, cb, trainer)


def test_probe_on_linear_regression_matches_the_closed_form_hessian(tmp_path):
    probe = sharpness_probe()
    module = MODULES["regression_dict"]()
    fit(tmp_path, [probe], module)
    x = torch.cat([b[0] for b in probe.batches]).double()
    z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    exact = 2.0 / len(x) * z.T @ z  # Hessian of mean (w·x + b − y)² in θ = (w, b), at any weights
    eig = torch.linalg.eigvalsh(exact)
    last = probe.history[-1]
    assert last["hessian_top"] == pytest.approx(float(eig.max()), rel=1e-4)
    assert last["hessian_trace"] == pytest.approx(float(eig.sum()), rel=1e-4)  # Hutch++ is exact for d=5 <= probes


def test_the_fixes_named_by_the_refusal_work(tmp_path):
    """SharpnessProbe refuses the two-optimizer autoencoder; both options its message names make it run."""
    by_method = sharpness_probe()
    torch.manual_seed(0)
    fit(tmp_path, [by_method], AutoencoderWithLandscapeLoss())
    by_path = SharpnessProbe(
        measures=["hessian_top"],
        measure_kwargs={"hessian_top": PROBE_KWARGS["hessian_top"]},
        loss_fn="tests.callbacks._foreign_modules.reconstruction_loss",
        max_batches=2,
    )
    torch.manual_seed(0)
    fit(tmp_path, [by_path], TwoOptimizerAutoencoder())  # the same weights at every step as the subclass
    assert by_method.history[-1]["hessian_top"] == pytest.approx(by_path.history[-1]["hessian_top"], rel=1e-5)


class MetricsToFile(Callback):
    """Saves each rank's logged metrics and callback state (what the parent process of ddp_spawn cannot see)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        history = next((c.history for c in trainer.callbacks if isinstance(c, SharpnessProbe)), None)
        torch.save({"metrics": metrics, "history": history}, f"{self.out_dir}/rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_transformer_with_every_callback_on_two_ddp_spawn_processes(tmp_path):
    """All callbacks at once (one spawn costs most of the time): they compose, and every rank logs the same."""
    callbacks = [factory() for factory in CALLBACKS.values()]
    fit(tmp_path, [*callbacks, MetricsToFile(str(tmp_path))], MODULES["transformer"](), devices=2, strategy="ddp_spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    keys = [key for name in CALLBACKS for key in SIGNALS[name]]
    for rank in ranks:
        for key in keys:
            assert key in rank["metrics"] and math.isfinite(rank["metrics"][key]), (key, rank["metrics"])
    # decisions and statistics are reduced or broadcast and DDP keeps the weights equal: every rank logs the same
    assert {k: ranks[0]["metrics"][k] for k in keys} == {k: ranks[1]["metrics"][k] for k in keys}
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == EPOCHS
