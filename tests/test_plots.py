"""The plot functions: every method's signal from its own history, the strategy rounds, training curves."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from lightning_autoopt.callbacks import DCO, LPFSGD, SharpnessProbe, TaskShiftDetector
from tests.callbacks.test_task_shift import ShiftingBlobs
from tests.helpers import TinyClassifier, TinyDataModule, make_trainer

pytest.importorskip("matplotlib")

from lightning_autoopt import plots  # noqa: E402


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) in pixels of a PNG written by the plot functions."""
    from matplotlib.image import imread

    image = imread(path)
    return image.shape[0], image.shape[1]


def inches(path: Path) -> float:
    """Figure height in inches (the plots use dpi 110): tells how many panels were drawn."""
    return png_size(path)[0] / 110


def synthetic_round_history(
    ranks: int = 4,
    rounds: int = 40,
    period: int = 8,
    rank: int = 0,
    losses: bool = True,
    leader: bool = True,
    consensus: bool = True,
    seed: int = 0,
) -> dict[str, list[Any]]:
    """A history with the interface of ``LocalUpdateStrategy.history`` (one entry per round)."""
    rng = random.Random(seed)
    keys = ("step", "round", "bytes_sent_total", "consensus_distance", "leader", "losses", "healed", "nonfinite")
    hist: dict[str, list[Any]] = {k: [] for k in keys}
    sent = 0
    for r in range(1, rounds + 1):
        per_rank = [2.3 * math.exp(-r / 20) + 0.2 + 0.05 * rng.random() + 0.02 * k for k in range(ranks)]
        sent += 4 * 20_000
        hist["step"].append(r * period)
        hist["round"].append(r)
        hist["bytes_sent_total"].append(sent + 1000 * rank)
        hist["consensus_distance"].append(0.5 * math.exp(-r / 30) if consensus and r % 2 == 0 else float("nan"))
        hist["leader"].append(min(range(ranks), key=per_rank.__getitem__) if leader else -1)
        hist["losses"].append(per_rank if losses else [])
        hist["healed"].append(int(r >= 25))
        hist["nonfinite"].append(int(r >= 25))
    return hist


# ---------------------------------------------------------------------------------------------- strategy rounds
def test_plot_strategy_draws_only_the_panels_it_has_data_for(tmp_path):
    full = plots.plot_strategy([synthetic_round_history(rank=r) for r in range(4)], tmp_path / "full.png")
    bare = plots.plot_strategy(
        synthetic_round_history(losses=False, leader=False, consensus=False), tmp_path / "bare.png"
    )
    no_leader = plots.plot_strategy(synthetic_round_history(leader=False), tmp_path / "no_leader.png")
    # panel heights: loss 3.0, leader 1.6, consensus 2.2, bytes 2.2, plus 1.2 for the title
    assert inches(full) == pytest.approx(1.2 + 3.0 + 1.6 + 2.2 + 2.2, abs=0.05)
    assert inches(bare) == pytest.approx(1.2 + 2.2, abs=0.05)
    assert inches(no_leader) == pytest.approx(1.2 + 3.0 + 2.2 + 2.2, abs=0.05)


def test_plot_strategy_reads_every_form_of_the_history(tmp_path):
    hist = synthetic_round_history()

    class Strategy:
        history = hist

    entry = {  # what a checkpoint holds under CHECKPOINT_KEY
        "strategy": "LSGDStrategy",
        "ranks": [{"strategy": {"class": "LSGDStrategy", "history": synthetic_round_history(rank=r)}} for r in (0, 1)],
    }
    in_extra = {"class": "EASGDStrategy", "extra": {"history": hist}}
    assert plots.strategy_histories(entry)[1] == "LSGDStrategy" and len(plots.strategy_histories(entry)[0]) == 2
    assert plots.strategy_histories(in_extra) == ([hist], "EASGDStrategy")
    assert plots.strategy_histories(Strategy()) == ([hist], "Strategy")
    for i, source in enumerate((Strategy(), entry, in_extra, hist)):
        assert plots.plot_strategy(source, tmp_path / f"{i}.png").is_file()
    old = {"ranks": [{"strategy": {"class": "LSGDStrategy", "extra": {}}}]}  # written before histories existed
    assert plots.strategy_histories(old) == ([], "LSGDStrategy")
    with pytest.raises(ValueError, match="round history"):
        plots.plot_strategy(old, tmp_path / "old.png")
    empty = {k: [] for k in hist}
    with pytest.raises(ValueError, match="no round"):
        plots.plot_strategy(empty, tmp_path / "empty.png")


# ---------------------------------------------------------------------------------------------- callbacks
def test_task_shift_and_dco_plots_from_the_callbacks_and_their_state(tmp_path):
    det, dco = TaskShiftDetector(verbose=False), DCO(ae_steps=20, num_directions=2)
    make_trainer(tmp_path, [det, dco]).fit(TinyClassifier(lr=0.1, momentum=0.9), datamodule=ShiftingBlobs())
    assert plots.plot_task_shift(det, tmp_path / "a.png", true_boundaries=[60]).is_file()
    assert plots.plot_task_shift(det.state_dict(), tmp_path / "b.png").is_file()
    assert plots.plot_dco(dco, tmp_path / "c.png").is_file()
    assert plots.plot_dco(dco.state_dict()["history"], tmp_path / "d.png").is_file()
    with pytest.raises(ValueError, match="plot_dco needs"):
        plots.plot_dco(det, tmp_path / "e.png")
    with pytest.raises(ValueError, match="plot_task_shift needs"):
        plots.plot_task_shift({"step": [1]}, tmp_path / "f.png")


def test_sharpness_plot_one_panel_per_measure_and_overlays(tmp_path):
    probes = [SharpnessProbe(measures=["lpf", "shannon"], every_n_steps=4, max_batches=1) for _ in range(2)]
    for lr, probe in zip((0.05, 0.2), probes):
        make_trainer(tmp_path, [probe]).fit(TinyClassifier(lr=lr), datamodule=TinyDataModule())
    assert [h["step"] for h in probes[0].history] == [4.0, 8.0, 12.0, 16.0]
    one = plots.plot_sharpness(probes[0], tmp_path / "one.png")
    both = plots.plot_sharpness(probes, tmp_path / "both.png", labels=["lr 0.05", "lr 0.2"], x="epoch")
    assert inches(one) == pytest.approx(1.0 + 2 * 2.1, abs=0.05) and both.is_file()
    assert plots.plot_sharpness({"history": probes[0].history}, tmp_path / "state.png").is_file()
    with pytest.raises(ValueError, match="no probe"):
        plots.plot_sharpness([], tmp_path / "none.png")
    with pytest.raises(ValueError, match="labels"):
        plots.plot_sharpness(probes, tmp_path / "x.png", labels=["one"])


def test_lpf_sgd_plot(tmp_path):
    lpf = LPFSGD(std=0.01)
    make_trainer(tmp_path, [lpf]).fit(TinyClassifier(), datamodule=TinyDataModule())
    assert plots.plot_lpf_sgd(lpf.state_dict(), tmp_path / "lpf.png").is_file()


def test_tame_plot_from_a_synthetic_history_with_spawns_and_reuses(tmp_path):
    batches = list(range(120))
    expert = [0] * 40 + [1] * 40 + [0] * 40
    hist = {
        "batch": batches,
        "expert": expert,
        "loss": [1.0 / (1 + b % 40) for b in batches],
        "loss_ema": [1.2 / (1 + b % 40) for b in batches],
        "threshold": [float("nan")] * 5 + [1.5] * 115,
        "shift_batches": [40, 80],
        "switch_experts": [1, 0],
        "spawn_batches": [40],
        "true_task_changes": [[0, 0], [40, 1], [80, 0]],
        "num_experts": 2,
    }
    assert plots.plot_tame({"history": hist}, tmp_path / "tame.png").is_file()


def test_plot_metrics_groups_curves_and_leaves_method_signals_out(tmp_path):
    csv = tmp_path / "metrics.csv"
    rows = ["epoch,step,train_loss,val_loss,val_acc,autodrop/lr"]
    rows += [f"0,{s},{1 / s},,,0.1" for s in range(1, 20)]
    rows += ["0,19,,0.5,0.8,", "1,39,,0.4,0.85,"]
    csv.write_text("\n".join(rows) + "\n")
    png = plots.plot_metrics(csv, tmp_path / "m.png")
    assert inches(png) == pytest.approx(1.0 + 2 * 2.2, abs=0.05)  # loss (train + val) and acc panels
    only = plots.plot_metrics(csv, tmp_path / "lr.png", keys=["autodrop/lr"])
    assert inches(only) == pytest.approx(1.0 + 2.2, abs=0.05)
    with pytest.raises(ValueError, match="not in"):
        plots.plot_metrics(csv, tmp_path / "x.png", keys=["nope"])


# ---------------------------------------------------------------------------------------------- autoopt plot RUN_DIR
RUN_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 2
  limit_train_batches: 6
  limit_val_batches: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_autoopt.callbacks.AutoDrop
    - class_path: lightning_autoopt.callbacks.SharpnessProbe
      init_args: {measures: [lpf, shannon], every_n_steps: 3, max_batches: 1, measure_kwargs: {lpf: {num_samples: 3}}}
    - class_path: lightning_autoopt.callbacks.TaskShiftDetector
      init_args: {verbose: false}
model:
  class_path: tests.helpers.TinyClassifier
data:
  class_path: tests.helpers.TinyDataModule
"""


def test_autoopt_plot_draws_every_signal_of_a_cli_run(tmp_path, monkeypatch, capsys):
    import sys

    import torch

    from lightning_autoopt.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["autoopt"])
    (tmp_path / "tiny_run.yaml").write_text(RUN_CONFIG)
    main(["fit", "--config", str(tmp_path / "tiny_run.yaml")])
    run = tmp_path / "lightning_logs" / "tiny_run"
    assert (run / "metrics.csv").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    main(["plot", str(run)])
    out = capsys.readouterr().out
    names = {"training.png", "autodrop.png", "sharpness.png", "task_shift.png"}
    printed = {Path(line.strip()).name for line in out.splitlines() if line.startswith("  ")}
    assert printed == names, out
    assert all((run / "plots" / n).is_file() for n in names)
    assert "note:" not in out  # a safe (weights_only) load, every signal found
    # the plots read the checkpoint's histories: the same steps the callbacks recorded
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    states = {key.split("{")[0]: state for key, state in ckpt["callbacks"].items()}
    assert states["TaskShiftDetector"]["history"]["step"] == [float(s) for s in range(1, 13)]
    assert [h["step"] for h in states["SharpnessProbe"]["history"]] == [3.0, 6.0, 9.0, 12.0]
    # --out elsewhere; the .ckpt itself works too
    main(["plot", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "elsewhere")])
    assert {p.name for p in (tmp_path / "elsewhere").glob("*.png")} == names


def test_autoopt_plot_errors_name_the_folder_and_the_runs_below_it(tmp_path, capsys):
    from lightning_autoopt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path / "missing")])
    assert exit_info.value.code == 1 and "does not exist" in capsys.readouterr().err
    run = tmp_path / "lightning_logs" / "exp"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,step,train_loss\n0,1,0.5\n")
    with pytest.raises(SystemExit):
        main(["plot", str(run)])
    err = capsys.readouterr().err
    assert err.startswith("autoopt: error: No checkpoint in") and len(err.strip().splitlines()) == 1
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut off")
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "lightning_logs")])  # the parent: says where the runs are
    assert f"Run folders below it: {run}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plot", str(run)])  # a damaged checkpoint: one line naming it
    err = capsys.readouterr().err
    assert "last.ckpt" in err and "truncated" in err and len(err.strip().splitlines()) == 1


def test_plot_run_finds_the_newest_checkpoint_and_the_strategy_history(tmp_path):
    import os

    import torch

    from lightning_autoopt.checkpoint import CHECKPOINT_KEY

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    hist = synthetic_round_history(ranks=2)
    with_history = {
        "callbacks": {},
        CHECKPOINT_KEY: {"strategy": "LSGDStrategy", "ranks": [{"strategy": {"history": hist}} for _ in range(2)]},
    }
    without = {"callbacks": {}, CHECKPOINT_KEY: {"strategy": "LSGDStrategy", "ranks": [{"strategy": {"extra": {}}}]}}
    torch.save(without, run / "checkpoints" / "epoch=0-step=4.ckpt")
    torch.save(with_history, run / "checkpoints" / "epoch=1-step=8.ckpt")
    os.utime(run / "checkpoints" / "epoch=0-step=4.ckpt", (1, 1))  # older
    assert plots.find_run_checkpoint(run).name == "epoch=1-step=8.ckpt"  # interrupted: no last.ckpt
    result = plots.plot_run(run)
    assert [p.name for p in result.paths] == ["strategy.png"]
    assert any("no training curves" in n for n in result.notes)
    torch.save(without, run / "checkpoints" / "last.ckpt")
    result = plots.plot_run(run)
    assert result.paths == [] and any("holds no round history" in n for n in result.notes)


MAKE_PLOTS = Path(__file__).resolve().parents[1] / "docs" / "make_plots.py"


@pytest.mark.skipif(not MAKE_PLOTS.is_file(), reason="needs the source tree (docs/make_plots.py)")
def test_docs_figure_script_runs(tmp_path):
    """docs/make_plots.py (the docs' method-signal figures) keeps working; its quickest run: TAME."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("autoopt_make_plots", MAKE_PLOTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.RUNS) == {"sharpness", "task_shift", "tame", "lpf_sgd", "strategy"}
    written = module.main(["--only", "tame", "--out", str(tmp_path)])
    assert written == [tmp_path / "tame_experts.png"] and written[0].is_file()
