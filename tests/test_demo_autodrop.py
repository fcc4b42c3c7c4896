"""The AutoDrop demo's explanation of each drop (the training part is the recipe, tested in test_recipes)."""

from __future__ import annotations

from lightning_autoopt.demo import explain_drops


def test_explain_drops_names_the_step_the_statistic_and_the_new_lr() -> None:
    history = {
        "step": [10.0, 20.0, 30.0, 40.0],
        "omega": [float("nan"), float("nan"), 80.0, 81.0],
        "statistic": [float("nan"), float("nan"), 1.25, 0.5],
        "threshold": [2.0] * 4,
        "lr": [0.1, 0.1, 0.1, 0.02],
        "drops": [0.0, 0.0, 0.0, 1.0],
        "detections": [30],
        "drop_steps": [40],
        "saturation": "trend",
        "interval": 10,
    }
    lines = explain_drops(history, budget=40)
    text = "\n".join(lines)
    assert "4, every 10 optimizer steps (trend test)" in text
    assert "step 40 (100 % of the run): lr -> 0.02; detected at step 30" in text
    assert "+1.25 (|z| < 2)" in text
    quiet = explain_drops({**history, "detections": [], "drop_steps": []}, budget=40)
    assert any("no drop" in line for line in quiet)
