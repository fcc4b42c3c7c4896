"""AutoDrop: closed-form core tests, exact timing on synthetic trajectories, schedulers, DDP, resume, robustness."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoopt._flat import add_weighted_ as weighted_average_update_
from lightning_autoopt._flat import all_finite
from lightning_autoopt.callbacks import AutoDrop
from lightning_autoopt.callbacks._angles import angular_velocity, linear_weight_total
from lightning_autoopt.callbacks._saturation import SaturationDetector, is_saturated_reference, mann_kendall_z
from tests.helpers import TinyClassifier, TinyDataModule, flat_params

# ----------------------------------------------------------------------------------------------- helpers


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:  # type: ignore[no-untyped-def]
    defaults = dict(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def _directions(turns_deg: list[float]) -> list[list[float]]:
    """Unit displacements whose consecutive angles are exactly ``turns_deg`` (a planar path turning left)."""
    phi, out = 0.0, []
    for turn in turns_deg:
        phi += math.radians(turn)
        out.append([math.cos(phi), math.sin(phi)])
    return out


def _decay(step: int) -> float:
    return 1.0 / (1.0 + 0.1 * step)


class PathModule(pl.LightningModule):
    """A 2-D parameter and a linear loss ``<w, -u_t>``: plain SGD moves ``w`` by exactly ``lr * u_t`` at step t.

    ``units[t]`` is the direction of the optimizer step that produces ``global_step == t + 1``; the path (and so
    every angular velocity) is known in closed form. Under gradient accumulation Lightning averages the micro-batch
    losses, which all use the same ``global_step``, so the step is the same.
    """

    def __init__(
        self, units: list[list[float]], lr: float = 1.0, scheduler: str = "none", steps_per_epoch: int | None = None
    ) -> None:
        super().__init__()
        self.units = torch.tensor(units, dtype=torch.float64)
        self.steps_per_epoch = steps_per_epoch or len(units) * 4
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.lr, self.scheduler = lr, scheduler

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        return -(self.w * self.units[self.global_step]).sum()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(self.steps_per_epoch, 1)), batch_size=1)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        elif self.scheduler == "lambda":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _decay)
        elif self.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=1000)
        elif self.scheduler == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "loss"}}
        else:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Recorder(Callback):
    """Records, after AutoDrop has acted, the LR and the parameters at each optimizer step (keyed by step)."""

    def __init__(self) -> None:
        self.lr: dict[int, float] = {}
        self.params: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step == 0:  # a micro-batch before the first optimizer step (accumulation)
            return
        self.lr[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]
        self.params[trainer.global_step] = flat_params(pl_module)


# Turning angles (degrees) of the step directions; omega at step s (positions after steps s-2, s-1, s) is
# TURNS[s - 1]. With theta=1: omegas 10, 30, 50, 50.5 -> |Δω| = 0.5 < 1 at step 6 (detection); patience=2 -> drop
# at step 8; theta -> 2; omegas 80, 20, 100, 40, 41 -> |Δω| = 1 < 2 at step 11; drop at step 13; theta -> 4.
TURNS = [0.0, 0.0, 10.0, 30.0, 50.0, 50.5, 80.0, 20.0, 100.0, 40.0, 41.0, 120.0, 10.0, 150.0, 30.0, 170.0]


# Trend test with window 3 and threshold 1.5 on a path that repeats a 7-step cycle. After a reset, positions come
# from the cycle's steps 1, 2, 3, ..., so the cycle's angles are 10, 20, 30, 25, 28 at its steps 3..7: the test is
# armed at step 5 (Mann-Kendall S = 3 on 10, 20, 30: z = 3 / sqrt(11/3) = 1.57), detects at step 6 (S = 1 on 20,
# 30, 25: z = 0.52) and, with patience 1, drops at step 7, where the positions are cleared and the next cycle
# starts. Drops at steps 7, 14, 21, ...
CYCLE = [0.0, 0.0, 10.0, 20.0, 30.0, 25.0, 28.0]
TREND = dict(interval=1, window=3, trend_threshold=1.5, patience=1, drop_factor=0.5)


def _path_run(tmp_path: Path, accumulate: int = 1, **autodrop_kwargs) -> tuple[AutoDrop, Recorder]:  # type: ignore[no-untyped-def]
    kwargs = dict(
        interval=1, saturation="reference", theta=1.0, patience=2, drop_factor=0.5, min_lr=0.0, max_theta=None
    )
    kwargs.update(autodrop_kwargs)
    autodrop, recorder = AutoDrop(**kwargs), Recorder()
    trainer = _trainer(
        tmp_path, max_steps=len(TURNS), callbacks=[autodrop, recorder], accumulate_grad_batches=accumulate
    )
    trainer.fit(PathModule(_directions(TURNS)))
    return autodrop, recorder


# ----------------------------------------------------------------------------------------------- pure core


def test_angular_velocity_closed_forms() -> None:
    origin = torch.zeros(3, dtype=torch.float64)
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    e2 = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    assert angular_velocity(origin, e1, e1 + e2) == pytest.approx(90.0, abs=1e-6)
    # parallel / antiparallel: the reference formula's eps (1e-8 on |d1||d2| = 1) leaves acos(1 / (1 + 1e-8))
    floor = math.degrees(math.acos(1.0 / (1.0 + 1e-8)))
    assert angular_velocity(origin, e1, 2 * e1) == pytest.approx(floor, rel=1e-6)
    assert angular_velocity(origin, e1, origin) == pytest.approx(180.0 - floor, rel=1e-6)
    assert angular_velocity(origin, e1, 2 * e1, eps=0.0) == pytest.approx(math.degrees(math.acos(1 - 1e-16)))
    for deg in (1.0, 33.3, 120.0, 179.0):
        rad = math.radians(deg)
        p2 = e1 + 0.3 * (math.cos(rad) * e1 + math.sin(rad) * e2)
        expected = math.degrees(math.acos(math.cos(rad) * 0.3 / (0.3 + 1e-8)))  # eps on |d_new| |d_old| = 0.3
        assert angular_velocity(origin, e1, p2) == pytest.approx(expected, abs=1e-9)
        assert angular_velocity(origin, e1, p2) == pytest.approx(deg, abs=2e-4)
    # zero displacement: eps in the denominator gives 90 degrees, not NaN
    assert angular_velocity(origin, origin, e1) == pytest.approx(90.0)
    # non-finite positions never give a usable angle
    assert math.isnan(angular_velocity(origin, e1, torch.tensor([float("nan"), 0.0, 0.0])))
    assert not all_finite(torch.tensor([0.0, float("inf")])) and all_finite(torch.ones(5))
    # chunked float64 reduction on a long random vector equals the direct formula
    g = torch.Generator().manual_seed(0)
    p0, p1, p2 = (torch.randn(3_000_001, generator=g) for _ in range(3))
    d_new, d_old = (p2 - p1).double(), (p1 - p0).double()
    expected = math.degrees(math.acos(float(d_new @ d_old / (d_new.norm() * d_old.norm()))))
    assert angular_velocity(p0, p1, p2) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="same number of elements"):
        angular_velocity(origin, e1, torch.zeros(2))


def test_saturation_test_and_weighted_average_closed_form() -> None:
    assert is_saturated_reference(50.0, 50.4, 0.5) and is_saturated_reference(50.4, 50.0, 0.5)
    assert not is_saturated_reference(50.0, 50.5, 0.5) and not is_saturated_reference(50.0, float("nan"), 0.5)
    g = torch.Generator().manual_seed(1)
    snapshots = [torch.randn(7, generator=g, dtype=torch.float64) for _ in range(5)]
    running = torch.zeros(7, dtype=torch.float64)
    for k, x in enumerate(snapshots, start=1):
        weighted_average_update_(running, [x[:3], x[3:]], float(k))  # a sequence of tensors, flattened in order
    K = len(snapshots)
    expected = sum(k * x for k, x in enumerate(snapshots, start=1)) / (K * (K + 1) / 2)
    assert linear_weight_total(K) == 15
    torch.testing.assert_close(running / linear_weight_total(K), expected)


def test_detector_on_synthetic_trajectory_pins_intervals() -> None:
    units = torch.tensor(_directions(TURNS), dtype=torch.float64)
    positions = torch.cumsum(units, dim=0)  # position after each step
    det = SaturationDetector(saturation="reference", threshold=1.0, patience=2, drop_factor=0.5, max_theta=None)
    actions = {}
    for s in range(3, len(TURNS) + 1):  # positions after steps s-2, s-1, s
        omega = angular_velocity(positions[s - 3], positions[s - 2], positions[s - 1])
        assert omega == pytest.approx(TURNS[s - 1], abs=1e-4)  # eps=1e-8 on unit steps: ~1e-5 deg
        actions[s] = det.update(omega)
    assert actions[6] == ("snapshot", 1) and actions[7] == ("snapshot", 2) and actions[8] == ("drop", 3)
    assert actions[11] == ("snapshot", 1) and actions[13] == ("drop", 3)
    assert [s for s, (a, _) in actions.items() if a == "drop"] == [8, 13]
    assert det.drops == 2 and det.threshold == pytest.approx(4.0)
    # NaN never decides and changes nothing but the skip counter
    state = det.state_dict()
    assert det.update(float("nan")) == ("skip", 0)
    assert det.skipped == 1 and {**det.state_dict(), "skipped": 0} == state
    # max_drops stops detection; theta cap
    capped = SaturationDetector(
        saturation="reference", threshold=1.0, patience=0, drop_factor=0.2, max_theta=2.0, max_drops=1
    )
    outs = [capped.update(w)[0] for w in (10.0, 10.1, 10.2, 10.3, 10.4)]
    assert outs == ["none", "drop", "none", "none", "none"] and capped.threshold == 2.0


# ----------------------------------------------------------------------------------------------- Trainer timing


def test_detection_and_drop_after_exactly_patience_steps(tmp_path: Path) -> None:
    autodrop, rec = _path_run(tmp_path, average_on_drop=False)
    assert autodrop.omega_history == pytest.approx(TURNS[2:], abs=1e-4)
    expected_lr = {s: 1.0 if s < 8 else (0.5 if s < 13 else 0.25) for s in range(1, len(TURNS) + 1)}
    assert rec.lr == pytest.approx(expected_lr)
    assert autodrop.drops == 2 and autodrop.theta == pytest.approx(4.0)


def test_accumulate_grad_batches_gives_same_decisions(tmp_path: Path) -> None:
    one, rec1 = _path_run(tmp_path / "a", average_on_drop=False)
    two, rec2 = _path_run(tmp_path / "b", accumulate=2, average_on_drop=False)
    assert rec2.lr == rec1.lr and two.omega_history == pytest.approx(one.omega_history)
    assert two.drops == one.drops == 2


def test_weighted_average_loaded_at_drop_equals_closed_form(tmp_path: Path) -> None:
    _, plain = _path_run(tmp_path / "a", average_on_drop=False)
    _, avg = _path_run(tmp_path / "b", average_on_drop=True)
    # detection at step 6, drop at step 8: K=3 snapshots at steps 6, 7, 8 (identical paths before the drop)
    expected = (1 * plain.params[6] + 2 * plain.params[7] + 3 * plain.params[8]) / 6.0
    torch.testing.assert_close(avg.params[8], expected)
    torch.testing.assert_close(avg.params[7], plain.params[7])


def test_epoch_interval_positions_after_first_step_decision_after_second(tmp_path: Path) -> None:
    steps_per_epoch = 4
    window_turns = [0.0, 0.0, 10.0, 30.0, 30.2, 70.0, 20.0, 0.0]  # omega of epoch e is window_turns[e]
    window_dirs = _directions(window_turns)
    # position e is taken after step 4e+1, so the displacement into position e is made of steps 4(e-1)+2..4e+1
    units = [window_dirs[(s - 2) // steps_per_epoch + 1] if s >= 2 else [1.0, 0.0] for s in range(1, 30)]
    autodrop, rec = (
        AutoDrop(
            interval="epoch",
            saturation="reference",
            theta=1.0,
            patience=1,
            drop_factor=0.5,
            min_lr=0.0,
            average_on_drop=False,
        ),  # fmt: skip
        Recorder(),
    )
    module = PathModule(units)
    module.train_dataloader = lambda: DataLoader(TensorDataset(torch.zeros(steps_per_epoch, 1)), batch_size=1)
    trainer = _trainer(tmp_path, max_epochs=len(window_turns) - 1, callbacks=[autodrop, rec])
    trainer.fit(module)
    assert autodrop.omega_history == pytest.approx(window_turns[2:-1], abs=1e-4)
    # detection at epoch 4's decision (step 4*4+2 = 18), patience 1 -> drop at epoch 5's second step (22)
    assert [s for s in sorted(rec.lr) if rec.lr[s] != rec.lr.get(s - 1, 1.0)] == [22]


def test_stop_when_min_lr_and_max_drops(tmp_path: Path) -> None:
    # first drop (step 8) takes the LR from 1.0 to the floor 0.5; the second one is due at step 13 -> stop there
    autodrop, rec = _path_run(tmp_path / "a", average_on_drop=False, min_lr=0.5, stop_when_min_lr=True)
    assert max(rec.lr) == 13
    assert rec.lr[13] == 0.5 and autodrop.drops == 2
    # max_drops=1: the second saturation is ignored, training runs to the end at the dropped LR
    autodrop, rec = _path_run(tmp_path / "b", average_on_drop=False, max_drops=1)
    assert autodrop.drops == 1 and rec.lr[len(TURNS)] == 0.5


class TwoGroupClassifier(TinyClassifier):
    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        first, second = self.net[0], self.net[2]
        return torch.optim.SGD([{"params": first.parameters(), "lr": 0.1}, {"params": second.parameters(), "lr": 0.2}])


@pytest.mark.parametrize(("param_groups", "expected"), [("all", [0.05, 0.1]), ("first", [0.05, 0.2])])
def test_param_groups_option(tmp_path: Path, param_groups: str, expected: list[float]) -> None:
    autodrop = AutoDrop(
        interval=2, saturation="reference", theta=1e3, max_theta=None, patience=0, drop_factor=0.5, max_drops=1,
        param_groups=param_groups, buffer_device="cpu",
    )  # fmt: skip
    trainer = _trainer(tmp_path, max_steps=10, callbacks=[autodrop])
    trainer.fit(TwoGroupClassifier(), TinyDataModule())
    assert autodrop.drops == 1
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------- schedulers


@pytest.mark.parametrize("scheduler", ["step", "lambda"])
def test_scheduler_keeps_the_drop(tmp_path: Path, scheduler: str) -> None:
    autodrop, rec = (
        AutoDrop(
            interval=1,
            saturation="reference",
            theta=1.0,
            patience=2,
            drop_factor=0.5,
            max_theta=None,
            average_on_drop=False,
        ),  # fmt: skip
        Recorder(),
    )
    module = PathModule(_directions(TURNS), scheduler=scheduler)
    _trainer(tmp_path, max_steps=len(TURNS), callbacks=[autodrop, rec]).fit(module)
    assert autodrop.drops == 2
    for s, lr in rec.lr.items():  # LR after the scheduler's step-s update and after AutoDrop at step s
        sched = 0.5 ** (s // 3) if scheduler == "step" else _decay(s)
        drop = 1.0 if s < 8 else (0.5 if s < 13 else 0.25)
        assert lr == pytest.approx(sched * drop), s


@pytest.mark.parametrize("scheduler", ["onecycle", "plateau"])
def test_refuses_schedulers_that_set_the_lr(tmp_path: Path, scheduler: str) -> None:
    module = PathModule(_directions(TURNS), scheduler=scheduler)
    with pytest.raises(ValueError, match="OneCycleLR|ReduceLROnPlateau"):
        _trainer(tmp_path, max_steps=3, callbacks=[AutoDrop(interval=1)]).fit(module)


# ----------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"interval": 0}, "interval"),
        ({"interval": "batch"}, "interval"),
        ({"saturation": "slope"}, "saturation"),
        ({"window": 2}, "window"),
        ({"trend_threshold": 0.0}, "trend_threshold"),
        ({"trend_threshold": float("inf")}, "trend_threshold"),
        ({"decisions_per_run": 0}, "decisions_per_run"),
        ({"rearm_after_drop": "no"}, "rearm_after_drop"),
        ({"theta": 0.0}, "theta"),
        ({"theta": float("nan")}, "theta"),
        ({"patience": -1}, "patience"),
        ({"drop_factor": 1.0}, "drop_factor"),
        ({"min_lr": -1.0}, "min_lr"),
        ({"max_theta": 0.0}, "max_theta"),
        ({"max_drops": 0}, "max_drops"),
        ({"param_groups": "some"}, "param_groups"),
        ({"buffer_device": "gpu7"}, "buffer_device"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        AutoDrop(**kwargs)


def test_reference_theta_above_the_default_cap_is_accepted_and_stays_fixed() -> None:
    # the default max_theta=1.0 must not make theta=2.0 an error: the cap is raised to theta, so theta never grows
    drop = AutoDrop(saturation="reference", theta=2.0)
    assert drop.threshold == 2.0
    assert drop._detector.max_theta == 2.0


# ----------------------------------------------------------------------------------------------- robustness


def test_nan_parameters_never_trigger_a_drop(tmp_path: Path) -> None:
    # theta huge + patience 0: any two finite omegas would drop at once (the control run checks that).
    kwargs = dict(interval=2, saturation="reference", theta=1e3, max_theta=None, patience=0, drop_factor=0.5)
    control = AutoDrop(**kwargs)
    _trainer(tmp_path / "a", max_steps=16, callbacks=[control]).fit(TinyClassifier(), TinyDataModule())
    assert control.drops >= 1 and control.skipped == 0
    autodrop = AutoDrop(**kwargs)
    trainer = _trainer(tmp_path / "b", max_steps=16, callbacks=[autodrop])
    with pytest.warns(UserWarning, match="NaN/inf"):
        trainer.fit(TinyClassifier(nan_at_step=4), TinyDataModule())  # parameters NaN from step 5 on
    assert autodrop.drops == 0 and autodrop.skipped == 6  # positions at steps 6, 8, ..., 16
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.1
    assert trainer.callback_metrics["autodrop/skipped"] == 6


# ----------------------------------------------------------------------------------------------- logging


def test_logs_reach_callback_metrics_and_csv_and_history_plots(tmp_path: Path) -> None:
    autodrop = AutoDrop(**TREND, average_on_drop=False)
    logger = CSVLogger(tmp_path, name="log")
    trainer = _trainer(tmp_path, max_steps=16, callbacks=[autodrop], logger=logger, log_every_n_steps=1)
    trainer.fit(PathModule(_directions(CYCLE * 3)))
    keys = [
        "autodrop/angular_velocity", "autodrop/statistic", "autodrop/threshold", "autodrop/lr", "autodrop/drops",
        "autodrop/skipped",
    ]  # fmt: skip
    for key in keys:
        assert key in trainer.callback_metrics
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(keys) <= set(header)
    assert autodrop.drops == 2 and trainer.callback_metrics["autodrop/drops"] == 2
    # the callback's own history: one entry per decision (every step here), detections and drops by step
    hist = autodrop.history
    assert hist["step"] == [float(s) for s in range(1, 17)] and hist["interval"] == 1
    assert [math.isfinite(w) for w in hist["omega"][:8]] == [False, False, True, True, True, True, True, False]
    assert math.isnan(hist["statistic"][3]) and hist["statistic"][4] == pytest.approx(3 / math.sqrt(11 / 3))
    assert hist["statistic"][5] == pytest.approx(1 / math.sqrt(11 / 3))  # 20, 30, 25
    assert hist["threshold"] == [1.5] * 16 and hist["detections"] == [6, 13] and hist["drop_steps"] == [7, 14]
    assert hist["lr"][5] == 1.0 and hist["lr"][6] == 0.5 and hist["drops"][6] == 1.0
    json.dumps(hist)  # plain lists: serializable as is
    pytest.importorskip("matplotlib")
    from lightning_autoopt.plots import plot_autodrop

    png = plot_autodrop(autodrop, tmp_path / "plot.png", metrics_csv=Path(logger.log_dir) / "metrics.csv")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = plot_autodrop(hist, tmp_path / "plot2.png")  # from the plain history (e.g. read from a checkpoint)
    assert png.stat().st_size > 10_000


# ----------------------------------------------------------------------------------------------- resume


def _resume_trainer(tmp_path: Path, autodrop: AutoDrop, every: int = 16, **kwargs) -> pl.Trainer:  # type: ignore[no-untyped-def]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=every, save_top_k=-1)
    kwargs = {"max_epochs": 6, **kwargs}
    return _trainer(tmp_path, callbacks=[autodrop, ckpt], enable_checkpointing=True, **kwargs)


def _resume_autodrop(mode: str) -> AutoDrop:
    if mode == "reference-epoch":  # decisions once per epoch: huge theta and no patience so drops happen in 6 epochs
        return AutoDrop(
            interval="epoch", saturation="reference", theta=1e3, patience=0, drop_factor=0.5, max_theta=None
        )
    return AutoDrop(interval=3, saturation="reference", theta=20.0, patience=2, drop_factor=0.5, max_theta=None)


@pytest.mark.parametrize(("mode", "crash_at"), [("reference-3", 57), ("reference-epoch", 73)])
def test_crash_and_resume_equals_uninterrupted_run(tmp_path: Path, mode: str, crash_at: int) -> None:
    # Checkpoints every 16 steps = at the end of each epoch (Lightning itself is not bitwise-resumable from a
    # mid-epoch checkpoint with a plain DataLoader); with interval=3 the crash falls inside an averaging window.
    full = _resume_autodrop(mode)
    trainer = _resume_trainer(tmp_path / "full", full)
    torch.manual_seed(0)
    model_full = TinyClassifier(momentum=0.9)
    trainer.fit(model_full, TinyDataModule())
    assert full.drops >= 2, "the run must contain drops before and after the crash to test anything"

    first = _resume_autodrop(mode)
    crashed = _resume_trainer(tmp_path / "crash", first)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="CRASH"):
        crashed.fit(TinyClassifier(momentum=0.9, crash_at_step=crash_at), TinyDataModule())
    assert 1 <= first.drops < full.drops
    second = _resume_autodrop(mode)
    resumed = _resume_trainer(tmp_path / "crash", second)
    model_resumed = TinyClassifier(momentum=0.9)
    resumed.fit(model_resumed, TinyDataModule(), ckpt_path=str(tmp_path / "crash" / "ckpt" / "last.ckpt"))

    assert torch.equal(flat_params(model_full), flat_params(model_resumed))
    assert resumed.optimizers[0].param_groups[0]["lr"] == trainer.optimizers[0].param_groups[0]["lr"]
    assert second.drops == full.drops and second.threshold == full.threshold
    assert second.omega_history == full.omega_history
    assert json.dumps(second.history) == json.dumps(full.history)  # NaN-aware: the same history, entry for entry


class CrashingPath(PathModule):
    def __init__(self, units: list[list[float]], crash_at: int, steps_per_epoch: int) -> None:
        super().__init__(units, steps_per_epoch=steps_per_epoch)
        self.crash_at = crash_at

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.global_step == self.crash_at:
            raise RuntimeError("CRASH")
        return super().training_step(batch, batch_idx)


def test_trend_mode_resume_mid_window_equals_uninterrupted_run(tmp_path: Path) -> None:
    # Cycles of 7 steps (drops at 7, 14, ..., 63), epochs of 10 steps with a checkpoint at each epoch end. The crash
    # at step 45 resumes from step 40, the 5th step of the cycle 36..42: the test is armed, the window holds
    # three angles and the next decision detects; the averaging buffer is empty but the positions are full.
    units = _directions(CYCLE * 10)

    def run(folder: str, crash_at: int = -1, ckpt_path: str | None = None) -> tuple[AutoDrop, PathModule]:
        autodrop = AutoDrop(**TREND)
        trainer = _resume_trainer(tmp_path / folder, autodrop, every=10, max_epochs=-1, max_steps=66)
        module = CrashingPath(units, crash_at, steps_per_epoch=10)
        trainer.fit(module, ckpt_path=ckpt_path)
        return autodrop, module

    full, module_full = run("full")
    assert full.history["drop_steps"] == [7, 14, 21, 28, 35, 42, 49, 56, 63]
    with pytest.raises(RuntimeError, match="CRASH"):
        run("crash", crash_at=45)
    last = tmp_path / "crash" / "ckpt" / "last.ckpt"
    state = torch.load(last, weights_only=False)["callbacks"][full.state_key]
    assert state["history"]["step"][-1] == 40.0 and state["detector"]["armed"]
    assert state["detector"]["values"] == pytest.approx([10.0, 20.0, 30.0], abs=0.01)  # eps on short steps
    resumed, module_resumed = run("crash", ckpt_path=str(last))
    assert torch.equal(module_full.w, module_resumed.w)
    assert json.dumps(resumed.history) == json.dumps(full.history)
    assert resumed.drops == full.drops == 9


# ----------------------------------------------------------------------------------------------- DDP


class PerturbRank1(Callback):
    """Makes the replicas differ (as a local-update strategy would): nudges rank 1's weights after every step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_rank == 1:
            g = torch.Generator().manual_seed(trainer.global_step)
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))


class RankDump(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.lr: dict[int, float] = {}
        self.drop_params: dict[int, list[float]] = {}
        self.last_drops = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        autodrop = next(cb for cb in trainer.callbacks if isinstance(cb, AutoDrop))
        self.lr[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]
        if autodrop.drops != self.last_drops:  # parameters right after a drop (the weighted average)
            self.last_drops = autodrop.drops
            self.drop_params[trainer.global_step] = flat_params(pl_module).tolist()

    def on_train_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        autodrop = next(cb for cb in trainer.callbacks if isinstance(cb, AutoDrop))
        history = json.dumps(autodrop.history)  # a string: NaN entries compare equal as text
        out = {"lr": self.lr, "drop_params": self.drop_params, "drops": autodrop.drops, "history": history}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(out))


@pytest.mark.slow
def test_ddp_spawn_identical_decisions_on_all_ranks(tmp_path: Path) -> None:
    # The default trend test on the known path; rank 1's nudged weights give it different angles, so without the
    # broadcast of rank 0's angle its test (window 3) would not fire at the same steps.
    autodrop = AutoDrop(**TREND)
    trainer = _trainer(
        tmp_path,
        devices=2,
        strategy="ddp_spawn",
        max_steps=20,
        callbacks=[PerturbRank1(), autodrop, RankDump(str(tmp_path))],
    )
    trainer.fit(PathModule(_directions(CYCLE * 3), steps_per_epoch=40))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["drops"] == 2 and json.loads(r0["history"])["drop_steps"] == [7, 14]
    assert r0["lr"] == r1["lr"] and r0["drops"] == r1["drops"] and r0["history"] == r1["history"]
    assert r0["drop_params"] == r1["drop_params"]  # averaged weights broadcast from rank 0 at each drop


# ----------------------------------------------------------------------------------------------- trend test


def _saturating(n: int, knee: float, rise: float = 40.0, noise: float = 3.0, seed: int = 0) -> list[float]:
    """ω that rises linearly by ``rise`` degrees until decision ``knee``, then stays flat, plus Gaussian jitter."""
    g = torch.Generator().manual_seed(seed)
    jitter = (noise * torch.randn(n, generator=g, dtype=torch.float64)).tolist()
    return [50.0 + rise * min(i, knee) / knee + jitter[i] for i in range(n)]


def test_trend_statistic_matches_least_squares_and_is_scale_free() -> None:
    from lightning_autoopt.callbacks._saturation import trend_statistic

    g = torch.Generator().manual_seed(3)
    y = (torch.randn(15, generator=g, dtype=torch.float64) + 0.2 * torch.arange(15)).tolist()
    # reference: slope and its standard error from the normal equations of the design [1, i]
    x = torch.stack([torch.ones(15, dtype=torch.float64), torch.arange(15, dtype=torch.float64)], dim=1)
    yt = torch.tensor(y, dtype=torch.float64)
    beta = torch.linalg.solve(x.T @ x, x.T @ yt)
    resid = yt - x @ beta
    cov = torch.linalg.inv(x.T @ x) * float(resid @ resid) / (15 - 2)
    expected = float(beta[1] / cov[1, 1].sqrt())
    assert trend_statistic(y) == pytest.approx(expected, rel=1e-10)
    # no unit: scaling and shifting ω (a different level or jitter) leave it unchanged
    assert trend_statistic([3.0 * v + 40.0 for v in y]) == pytest.approx(expected, rel=1e-10)
    assert trend_statistic([-v for v in y]) == pytest.approx(-expected, rel=1e-10)
    assert trend_statistic([2.0, 2.0, 2.0, 2.0]) == 0.0
    assert trend_statistic([1.0, 2.0, 3.0]) == math.inf and trend_statistic([3.0, 2.0, 1.0]) == -math.inf
    with pytest.raises(ValueError, match="at least 3"):
        trend_statistic([1.0, 2.0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("knee", "rise"), [(15, 45.0), (20, 40.0), (40, 80.0)])
def test_trend_detector_fires_after_the_knee_not_before(seed: int, knee: int, rise: float) -> None:
    # ω rises by 2-3 degrees per decision with 3 degrees of jitter, then stays flat: what the benchmark's
    # constant-LR traces look like at the default 70 decisions per run.
    omegas = _saturating(120, knee, rise=rise, seed=seed)
    det = SaturationDetector(window=10, patience=0)
    actions = [det.update(w)[0] for w in omegas]
    first = actions.index("drop")
    assert knee <= first <= knee + 20, f"fired at decision {first}, the rise ended at {knee}"
    # the same series in other units (a 10x jitter and level, as with another interval length) decides the same
    scaled = SaturationDetector(window=10, patience=0)
    assert [scaled.update(10.0 * w - 300.0)[0] for w in omegas] == actions


def test_trend_detector_needs_a_rise_first_and_resets_after_a_drop() -> None:
    det = SaturationDetector(window=10, patience=2)
    rising = _saturating(200, knee=200, rise=600.0, seed=7)  # 3 degrees per decision (3 of jitter) all along
    assert all(det.update(w)[0] == "none" for w in rising) and det.drops == 0 and det.armed
    falling = _saturating(100, knee=100, rise=-200.0, seed=8)  # ω that only falls never arms the test
    det = SaturationDetector(window=10, patience=2)
    assert all(det.update(w)[0] == "none" for w in falling) and not det.armed
    # rise then flat, twice: with rearm_after_drop the window and the arming are cleared at the drop, and the second
    # cycle starts afresh (the default clears the window only: test_rearm_after_drop_...)
    det = SaturationDetector(window=10, patience=2, rearm_after_drop=True)
    cycle = _saturating(40, knee=15, noise=1.0, seed=9)
    first = []
    for w in cycle:
        first.append(det.update(w)[0])
        if first[-1] == "drop":
            break
    assert first[-3:] == ["snapshot", "snapshot", "drop"] and "drop" not in first[:-1]
    assert det.values == [] and not det.armed and det.drops == 1  # cleared by the drop
    second = [det.update(w)[0] for w in cycle[: len(first)]]
    assert second == first and det.drops == 2  # the same series after the reset: the same decisions
    # reference mode keeps its window across a drop, as the paper's code does
    ref = SaturationDetector(saturation="reference", threshold=100.0, patience=0)
    assert [ref.update(w)[0] for w in (10.0, 11.0, 12.0)] == ["none", "drop", "drop"]


def test_rearm_after_drop_decides_whether_a_level_omega_after_a_drop_can_fire() -> None:
    cycle = _saturating(40, knee=15, noise=1.0, seed=9)
    level = _saturating(60, knee=1, rise=0.0, noise=3.0, seed=11)  # flat from the start: no rise to arm on
    assert abs(mann_kendall_z(level[:10])) < 2.0  # saturated at the first test after the reset
    actions = {}
    for rearm in (True, False):
        det = SaturationDetector(window=10, patience=2, rearm_after_drop=rearm)
        for w in cycle:
            if det.update(w)[0] == "drop":
                break
        assert det.drops == 1 and det.values == []  # the window is cleared either way
        assert det.armed is (not rearm)
        actions[rearm] = [det.update(w)[0] for w in level]
    # re-armed: a level ω shows no rise, so the test waits until the jitter happens to look like one
    assert actions[True][:20] == ["none"] * 20
    # armed once: the first test after the reset (10 angles) fires, the drop follows after patience 2
    assert actions[False][:12] == ["none"] * 9 + ["snapshot", "snapshot", "drop"]
    # a rise after the drop still holds the test back until it levels off, armed or not
    det = SaturationDetector(window=10, patience=0, rearm_after_drop=False)
    for w in cycle:
        if det.update(w)[0] == "drop":
            break
    rising = _saturating(60, knee=40, rise=120.0, noise=1.0, seed=12)
    first = [det.update(w)[0] for w in rising].index("drop")
    assert first >= 30  # not before the rise (3 degrees per decision, jitter 1) has flattened


def test_trend_mode_resets_positions_after_a_drop(tmp_path: Path) -> None:
    autodrop, rec = AutoDrop(**TREND, average_on_drop=False), Recorder()
    _trainer(tmp_path, max_steps=16, callbacks=[autodrop, rec]).fit(PathModule(_directions(CYCLE * 3)))
    hist = autodrop.history
    finite = [int(s) for s, w in zip(hist["step"], hist["omega"]) if math.isfinite(w)]
    # the drop at step 7 clears the positions: no angle at steps 8 and 9 (positions 8, 9, 10 make the next one)
    assert finite == [3, 4, 5, 6, 7, 10, 11, 12, 13, 14]
    assert autodrop.omega_history == pytest.approx([10.0, 20.0, 30.0, 25.0, 28.0] * 2, abs=1e-4)
    assert hist["detections"] == [6, 13] and hist["drop_steps"] == [7, 14]
    assert rec.lr[6] == 1.0 and rec.lr[7] == 0.5 and rec.lr[14] == 0.25


# ----------------------------------------------------------------------------------------------- auto interval


class StopAfter(Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


@pytest.mark.parametrize(
    ("trainer_kwargs", "expected"),
    [
        ({"max_steps": 40}, 4),  # 40 steps / 10 decisions
        ({"max_epochs": 5}, 8),  # 16 steps per epoch x 5 = 80 steps / 10
        ({"max_epochs": 5, "accumulate_grad_batches": 2}, 4),  # optimizer steps, not batches
        ({"max_epochs": 2, "max_steps": 12}, 1),  # the smaller budget wins; at least 1 step
        ({"max_epochs": -1, "callbacks": [StopAfter(8)]}, 100),  # unknown budget: the documented fallback
    ],
)
def test_auto_interval_from_the_training_budget(tmp_path: Path, trainer_kwargs: dict, expected: int) -> None:
    autodrop = AutoDrop(decisions_per_run=10, window=3)
    kwargs = dict(trainer_kwargs)
    callbacks = [autodrop, *kwargs.pop("callbacks", [])]
    trainer = _trainer(tmp_path, callbacks=callbacks, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "loading train_dataloader to estimate ..." and the too-short warning
        trainer.fit(TinyClassifier(), TinyDataModule())
    assert autodrop.interval_steps == expected
    assert autodrop.history["interval"] == expected
    decisions = [int(s) for s in autodrop.history["step"]]
    assert decisions == list(range(expected, trainer.global_step + 1, expected))


def test_auto_interval_warns_when_the_run_is_too_short_to_drop(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="cannot drop"):
        _trainer(tmp_path, max_steps=10, callbacks=[AutoDrop(decisions_per_run=10)]).fit(
            TinyClassifier(), TinyDataModule()
        )
