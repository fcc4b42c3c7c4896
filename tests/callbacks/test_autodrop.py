"""AutoDrop: closed-form core tests, exact timing on synthetic trajectories, schedulers, DDP, resume, robustness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoopt.callbacks import AutoDrop
from lightning_autoopt.callbacks._angles import (
    SaturationDetector,
    all_finite,
    angular_velocity,
    is_saturated,
    linear_weight_total,
    weighted_average_update_,
)
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

    def __init__(self, units: list[list[float]], lr: float = 1.0, scheduler: str = "none") -> None:
        super().__init__()
        self.units = torch.tensor(units, dtype=torch.float64)
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.lr, self.scheduler = lr, scheduler

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        return -(self.w * self.units[self.global_step]).sum()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(len(self.units) * 4, 1)), batch_size=1)

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


def _path_run(tmp_path: Path, accumulate: int = 1, **autodrop_kwargs) -> tuple[AutoDrop, Recorder]:  # type: ignore[no-untyped-def]
    kwargs = dict(interval=1, theta=1.0, patience=2, drop_factor=0.5, min_lr=0.0, max_theta=None)
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
    assert is_saturated(50.0, 50.4, 0.5) and is_saturated(50.4, 50.0, 0.5)
    assert not is_saturated(50.0, 50.5, 0.5) and not is_saturated(50.0, float("nan"), 0.5)
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
    det = SaturationDetector(theta=1.0, patience=2, drop_factor=0.5, max_theta=None)
    actions = {}
    for s in range(3, len(TURNS) + 1):  # positions after steps s-2, s-1, s
        omega = angular_velocity(positions[s - 3], positions[s - 2], positions[s - 1])
        assert omega == pytest.approx(TURNS[s - 1], abs=1e-4)  # eps=1e-8 on unit steps: ~1e-5 deg
        actions[s] = det.update(omega)
    assert actions[6] == ("snapshot", 1) and actions[7] == ("snapshot", 2) and actions[8] == ("drop", 3)
    assert actions[11] == ("snapshot", 1) and actions[13] == ("drop", 3)
    assert [s for s, (a, _) in actions.items() if a == "drop"] == [8, 13]
    assert det.drops == 2 and det.theta == pytest.approx(4.0)
    # NaN never decides and changes nothing but the skip counter
    state = det.state_dict()
    assert det.update(float("nan")) == ("skip", 0)
    assert det.skipped == 1 and {**det.state_dict(), "skipped": 0} == state
    # max_drops stops detection; theta cap
    capped = SaturationDetector(theta=1.0, patience=0, drop_factor=0.2, max_theta=2.0, max_drops=1)
    outs = [capped.update(w)[0] for w in (10.0, 10.1, 10.2, 10.3, 10.4)]
    assert outs == ["none", "drop", "none", "none", "none"] and capped.theta == 2.0


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
        AutoDrop(interval="epoch", theta=1.0, patience=1, drop_factor=0.5, min_lr=0.0, average_on_drop=False),
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
        interval=2, theta=1e3, max_theta=None, patience=0, drop_factor=0.5, min_lr=0.0, max_drops=1,
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
        AutoDrop(interval=1, theta=1.0, patience=2, drop_factor=0.5, min_lr=0.0, max_theta=None, average_on_drop=False),
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
        ({"theta": 0.0}, "theta"),
        ({"theta": float("nan")}, "theta"),
        ({"patience": -1}, "patience"),
        ({"drop_factor": 1.0}, "drop_factor"),
        ({"min_lr": -1.0}, "min_lr"),
        ({"theta": 2.0, "max_theta": 1.0}, "max_theta"),
        ({"max_drops": 0}, "max_drops"),
        ({"param_groups": "some"}, "param_groups"),
        ({"buffer_device": "gpu7"}, "buffer_device"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        AutoDrop(**kwargs)


# ----------------------------------------------------------------------------------------------- robustness


def test_nan_parameters_never_trigger_a_drop(tmp_path: Path) -> None:
    # theta huge + patience 0: any two finite omegas would drop at once (the control run checks that).
    control = AutoDrop(interval=2, theta=1e3, max_theta=None, patience=0, drop_factor=0.5, min_lr=0.0)
    _trainer(tmp_path / "a", max_steps=16, callbacks=[control]).fit(TinyClassifier(), TinyDataModule())
    assert control.drops >= 1 and control.skipped == 0
    autodrop = AutoDrop(interval=2, theta=1e3, max_theta=None, patience=0, drop_factor=0.5, min_lr=0.0)
    trainer = _trainer(tmp_path / "b", max_steps=16, callbacks=[autodrop])
    with pytest.warns(UserWarning, match="NaN/inf"):
        trainer.fit(TinyClassifier(nan_at_step=4), TinyDataModule())  # parameters NaN from step 5 on
    assert autodrop.drops == 0 and autodrop.skipped == 6  # positions at steps 6, 8, ..., 16
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.1
    assert trainer.callback_metrics["autodrop/skipped"] == 6


# ----------------------------------------------------------------------------------------------- logging


def test_logs_reach_callback_metrics_and_csv(tmp_path: Path) -> None:
    autodrop = AutoDrop(interval="epoch", theta=1e3, max_theta=None, patience=0, drop_factor=0.5, min_lr=0.0)
    trainer = _trainer(tmp_path, max_epochs=5, callbacks=[autodrop], logger=CSVLogger(tmp_path, name="log"))
    trainer.fit(TinyClassifier(), TinyDataModule())
    keys = ["autodrop/angular_velocity", "autodrop/theta", "autodrop/lr", "autodrop/drops", "autodrop/skipped"]
    for key in keys:
        assert key in trainer.callback_metrics
    header = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(keys) <= set(header)
    assert autodrop.drops >= 1 and trainer.callback_metrics["autodrop/drops"] == autodrop.drops
    # the plot helper reads the same file (Agg canvas, no display)
    pytest.importorskip("matplotlib")
    from lightning_autoopt.plots import plot_autodrop, read_metrics_csv

    metrics_csv = Path(trainer.logger.log_dir) / "metrics.csv"
    epochs, lrs = read_metrics_csv(metrics_csv)["autodrop/lr"]
    assert epochs == sorted(epochs) and min(lrs) < 0.09 and max(lrs) == pytest.approx(0.1)
    png = plot_autodrop(metrics_csv, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------- resume


def _resume_trainer(tmp_path: Path, autodrop: AutoDrop, **kwargs) -> pl.Trainer:  # type: ignore[no-untyped-def]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=16, save_top_k=-1)
    return _trainer(tmp_path, max_epochs=6, callbacks=[autodrop, ckpt], enable_checkpointing=True, **kwargs)


def _resume_autodrop(interval: int | str) -> AutoDrop:
    if interval == "epoch":  # decisions once per epoch: huge theta and no patience so drops happen in 6 epochs
        return AutoDrop(interval="epoch", theta=1e3, patience=0, drop_factor=0.5, min_lr=0.0, max_theta=None)
    return AutoDrop(interval=3, theta=20.0, patience=2, drop_factor=0.5, min_lr=0.0, max_theta=None)


@pytest.mark.parametrize(("interval", "crash_at"), [(3, 57), ("epoch", 73)])
def test_crash_and_resume_equals_uninterrupted_run(tmp_path: Path, interval: int | str, crash_at: int) -> None:
    # Checkpoints every 16 steps = at the end of each epoch (Lightning itself is not bitwise-resumable from a
    # mid-epoch checkpoint with a plain DataLoader); with interval=3 the crash falls inside an averaging window.
    full = _resume_autodrop(interval)
    trainer = _resume_trainer(tmp_path / "full", full)
    torch.manual_seed(0)
    model_full = TinyClassifier(momentum=0.9)
    trainer.fit(model_full, TinyDataModule())
    assert full.drops >= 2, "the run must contain drops before and after the crash to test anything"

    first = _resume_autodrop(interval)
    crashed = _resume_trainer(tmp_path / "crash", first)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="CRASH"):
        crashed.fit(TinyClassifier(momentum=0.9, crash_at_step=crash_at), TinyDataModule())
    assert 1 <= first.drops < full.drops
    second = _resume_autodrop(interval)
    resumed = _resume_trainer(tmp_path / "crash", second)
    model_resumed = TinyClassifier(momentum=0.9)
    resumed.fit(model_resumed, TinyDataModule(), ckpt_path=str(tmp_path / "crash" / "ckpt" / "last.ckpt"))

    assert torch.equal(flat_params(model_full), flat_params(model_resumed))
    assert resumed.optimizers[0].param_groups[0]["lr"] == trainer.optimizers[0].param_groups[0]["lr"]
    assert second.drops == full.drops and second.theta == full.theta
    assert second.omega_history == full.omega_history


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
        out = {"lr": self.lr, "drop_params": self.drop_params, "drops": autodrop.drops, "theta": autodrop.theta}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(out))


@pytest.mark.slow
def test_ddp_spawn_identical_decisions_on_all_ranks(tmp_path: Path) -> None:
    autodrop = AutoDrop(interval=2, theta=15.0, patience=1, drop_factor=0.5, min_lr=0.0, max_theta=None)
    trainer = _trainer(
        tmp_path,
        devices=2,
        strategy="ddp_spawn",
        max_epochs=4,
        callbacks=[PerturbRank1(), autodrop, RankDump(str(tmp_path))],
    )
    trainer.fit(TinyClassifier(), TinyDataModule())
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["drops"] >= 1
    assert r0["lr"] == r1["lr"] and r0["drops"] == r1["drops"] and r0["theta"] == r1["theta"]
    assert r0["drop_params"] == r1["drop_params"]  # averaged weights broadcast from rank 0 at each drop
