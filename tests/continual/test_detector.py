import dataclasses
import math
import random

import pytest
import torch

from lightning_autoopt.continual.detector import DETECTOR_DEFAULTS, DetectorConfig, LossShiftDetector
from lightning_autoopt.continual.metrics import boundaries_from_task_ids, evaluate_tasks, forgetting, match_detections


def _noisy(rng: random.Random, level: float, sigma: float, n: int) -> list[float]:
    return [level + rng.gauss(0.0, sigma) for _ in range(n)]


def test_fires_within_a_few_batches_of_a_step_change():
    rng = random.Random(0)
    det = LossShiftDetector()
    stream = _noisy(rng, 0.3, 0.03, 300) + _noisy(rng, 1.5, 0.03, 100)
    fired = [i for i, v in enumerate(stream) if det.update(v)]
    assert fired and fired[0] >= 300
    assert fired[0] - 300 <= 3
    assert len(fired) == 1  # the statistics restart on the new task: no repeated alarms
    assert det.num_shifts == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_never_fires_on_a_stationary_noisy_stream(seed):
    rng = random.Random(seed)
    det = LossShiftDetector()
    assert not any(det.update(v) for v in _noisy(rng, 0.5, 0.1, 5000))
    # A slowly decreasing training loss with noise does not fire either.
    det = LossShiftDetector()
    losses = [2.3 * math.exp(-i / 300) + 0.1 + rng.gauss(0, 0.05) for i in range(5000)]
    assert not any(det.update(v) for v in losses)


def test_lag_catches_a_moderate_jump_that_the_reference_rule_misses():
    rng = random.Random(0)
    stream = _noisy(rng, 1.3, 0.1, 300) + _noisy(rng, 1.8, 0.1, 100)  # jump of 5 sigma
    fired = {
        lag: [i for i, v in enumerate(stream) if d.update(v)]
        for lag, d in ((lag, LossShiftDetector(lag=lag)) for lag in (0, 10))
    }
    assert fired[0] == []  # the new losses raise the threshold faster than the EMA climbs
    assert len(fired[10]) == 1 and 300 <= fired[10][0] <= 310


def test_nan_and_inf_are_ignored_and_counted():
    det = LossShiftDetector(min_history=2)
    for v in [0.5] * 20:
        det.update(v)
    state = det.state_dict()
    assert det.update(float("nan")) is False
    assert det.update(float("inf")) is False
    assert det.num_nonfinite == 2
    assert det.smoothed == state["smoothed"] and list(det.window) == state["window"]
    assert det.update(5.0)  # a real jump still fires


def test_threshold_is_mean_plus_k_max_std_floor():
    det = LossShiftDetector(window=4, k_sigma=3.0, std_floor=0.005, min_history=1, lag=0)
    for v in [1.0, 1.0, 1.0, 1.0]:
        det.update(v)
    assert det.threshold == pytest.approx(1.0 + 3 * 0.005)
    for v in [1.0, 2.0, 1.0, 2.0]:
        det.record(v)
    assert det.threshold == pytest.approx(1.5 + 3 * 0.5)


def test_reuse_test_and_state_roundtrip():
    det = LossShiftDetector(initial_loss=math.log(10), min_history=1)
    assert det.window[0] == pytest.approx(math.log(10))
    for _ in range(50):
        det.observe(0.2)
        det.record(0.2)
    assert det.fits(0.21) and not det.fits(0.25) and not det.fits(3.0)  # raw loss must fit too
    det.reactivate(0.21)
    assert det.smoothed == pytest.approx(0.2 * 0.21 + 0.8 * det.active_smoothed)
    clone = LossShiftDetector(initial_loss=1.0)
    clone.load_state_dict(det.state_dict())
    assert clone.state_dict() == det.state_dict()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 1},
        {"ema_alpha": 0.0},
        {"ema_alpha": 1.5},
        {"k_sigma": 0},
        {"std_floor": -1},
        {"min_history": 0},
        {"min_history": 100},
        {"initial_loss": float("nan")},
    ],
)
def test_bad_args_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LossShiftDetector(**kwargs)


def test_match_detections_and_forgetting():
    assert boundaries_from_task_ids([0, 0, 1, 1, 2]) == [2, 4]
    out = match_detections([3, 10, 21], [2, 20], max_delay=5)
    assert out["delays"] == [1, 1] and out["false_detections"] == 1 and out["missed"] == 0
    out = match_detections([], [5], max_delay=5)
    assert out["missed"] == 1 and out["mean_delay"] is None
    assert forgetting([[1.0, 0.0], [0.5, 0.9]]) == pytest.approx(0.5)


def test_one_detector_config_for_the_core_the_callback_and_tame():
    import inspect

    from lightning_autoopt.callbacks import TaskShiftDetector
    from lightning_autoopt.continual import TAME

    fields = [f.name for f in dataclasses.fields(DetectorConfig)]
    for cls in (TaskShiftDetector, TAME):
        params = inspect.signature(cls).parameters
        for name in fields:
            if name in params:  # TAME seeds initial_loss itself
                assert params[name].default == getattr(DETECTOR_DEFAULTS, name), (cls, name)
    assert TaskShiftDetector(window=4, min_history=2, lag=0).config == DetectorConfig(window=4, min_history=2, lag=0)
    assert TaskShiftDetector().detector.config == DETECTOR_DEFAULTS
    tame = TAME(num_classes=10, window=6, min_history=2)
    assert tame.detector_config == DetectorConfig(window=6, min_history=2, initial_loss=math.log(10))
    det = LossShiftDetector(DetectorConfig(window=4, min_history=1), lag=0)
    assert (det.window_size, det.lag, det.config.window) == (4, 0, 4)
    for cls in (TaskShiftDetector, TAME):
        with pytest.raises(ValueError, match="ema_alpha"):
            cls(ema_alpha=2.0)
    with pytest.raises(TypeError):
        LossShiftDetector(windw=3)


class _Lookup(torch.nn.Module):
    """Logits = a fixed table row per sample index stored in x."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.long()]


def test_evaluate_tasks_class_il_task_il_and_per_task():
    # 4 samples, 4 classes; tasks: {0, 1} and {2, 3}
    table = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0, 0.1, 0.2, 0.8], [0.1, 0.2, 0.9, 0.0], [0.0, 0.3, 0.0, 0.1]])
    x, y, t = torch.arange(4.0), torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1])
    model = _Lookup(table).train()
    out = evaluate_tasks(model, x, y, t, task_classes=[[0, 1], [2, 3]], batch_size=3)
    assert out["class_il_acc"] == 0.5  # samples 0 and 2
    assert out["task_il_acc"] == 1.0  # masking to the task's classes fixes samples 1 and 3
    assert (out["acc_task0"], out["acc_task1"]) == (0.5, 0.5)
    assert model.training  # mode restored
    assert "task_il_acc" not in evaluate_tasks(model, x, y, t)


def test_default_warmup_fits_any_window():
    assert DetectorConfig(window=3).resolved_min_history == 3
    assert DetectorConfig().resolved_min_history == 5
    from lightning_autoopt.continual import TAME

    assert TAME(num_classes=10, window=2).detector_config.resolved_min_history == 2
