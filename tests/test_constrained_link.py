"""benchmarks/constrained_link.py: time-to-accuracy arithmetic and options (anywhere), the --smoke run (root only)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _time_to_accuracy as T
from benchmarks import constrained_link as C
from lightning_autoopt import cluster as cl
from lightning_autoopt.strategies import _wire

ROOT = Path(__file__).resolve().parents[1]


def _run(method: str, seed: int, accs: list[float], seconds: list[float], kernel: float = 0.0) -> T.Run:
    curve = [
        {"epoch": i + 1, "steps": 10 * (i + 1), "rounds": i + 1, "seconds": s, "acc": a,
         "self_bytes_sum": 100.0 * (i + 1), "kernel_bytes": kernel * (i + 1)}
        for i, (a, s) in enumerate(zip(accs, seconds))
    ]  # fmt: skip
    return {"method": method, "label": method.upper(), "seed": seed, "curve": curve}


# ----------------------------------------------------------------------------- time to accuracy (pure)
def test_time_to_target_uses_the_seed_mean_curve_and_ddp_final_minus_half_a_point():
    runs = [
        _run("ddp", 0, [0.50, 0.80, 0.90], [10, 10, 10]),
        _run("ddp", 1, [0.50, 0.84, 0.92], [12, 12, 12]),  # DDP final mean 0.91 -> target 0.905
        _run("fast", 0, [0.85, 0.90, 0.91], [1, 1, 1], kernel=150.0),
        _run("fast", 1, [0.87, 0.92, 0.93], [3, 3, 3], kernel=150.0),  # mean 0.86, 0.91 (reached at epoch 2)
        _run("slow", 0, [0.60, 0.70, 0.89], [1, 1, 1]),
        _run("slow", 1, [0.60, 0.70, 0.95], [1, 1, 1]),  # mean 0.92 at epoch 3; one seed alone misses
        _run("never", 0, [0.1, 0.2, 0.3], [1, 1, 1]),
    ]
    target, rows = T.summarize_setting(runs)
    assert target == pytest.approx(0.905)
    by = {r.method: r for r in rows}
    assert [r.method for r in rows] == ["ddp", "fast", "slow", "never"]
    assert (by["ddp"].target_epoch, by["ddp"].target_time) == (3, pytest.approx(33.0))  # mean 0.91 at epoch 3
    assert (by["fast"].target_epoch, by["fast"].target_time) == (2, pytest.approx(4.0))  # mean of 2 and 6 s
    assert (by["slow"].target_epoch, by["slow"].seeds_reaching) == (3, 1)
    assert by["never"].target_time is None and by["never"].seeds_reaching == 0
    assert by["fast"].final_acc == pytest.approx(92.0) and by["fast"].final_acc_sd == pytest.approx(math.sqrt(2))
    assert by["fast"].total_time == pytest.approx(6.0)
    assert by["fast"].kernel_over_self == pytest.approx(1.5)
    table = T.markdown_table("1x4@1gbit", target, rows)
    assert "90.50 %" in table and "not reached" in table and "| FAST | 92.00 ± 1.41 | 4.0 (ep 2) | 0.121 |" in table


def test_no_ddp_means_no_target_and_curves_cut_to_the_shortest_run():
    target, rows = T.summarize_setting([_run("x", 0, [0.1, 0.2, 0.3], [1, 1, 1]), _run("x", 1, [0.3, 0.4], [2, 2])])
    assert target is None and rows[0].target_time is None
    assert [
        p["acc"] for p in T.mean_curve([_run("x", 0, [0.1, 0.2, 0.3], [1, 1, 1]), _run("x", 1, [0.3, 0.4], [2, 2])])
    ] == pytest.approx([0.2, 0.3])
    assert "n/a" in T.markdown_table("s", target, rows)
    with pytest.raises(ValueError, match="at least one run"):
        T.mean_curve([])


def test_kernel_over_wire_uses_only_the_runs_that_hold_wire_counts():
    old = _run("x", 0, [0.5, 0.6], [1, 1], kernel=150.0)  # recorded before wire counts existed
    new = _run("x", 1, [0.5, 0.6], [1, 1], kernel=150.0)
    new["curve"][-1].update(wire_bytes_sum=200.0, kernel_all_bytes=202.0)
    (row,) = T.summarize_setting([old])[1]
    assert math.isnan(row.kernel_over_wire) and "| – |" in T.markdown_table("s", None, [row])
    (row,) = T.summarize_setting([old, new])[1]
    assert row.kernel_over_wire == pytest.approx(1.01) and row.seeds == 2
    assert "| 1.010 |" in T.markdown_table("s", None, [row])


def test_ablation_rows_are_opt_in_and_carry_their_model_and_callbacks():
    table = C.methods(16)
    chosen = C.select_methods(None, 16, C.parse_setting("1x4@1gbit"))
    ablations = [n for n in table if n.endswith(("-const", "-autodrop", "-bn", "-bn-re", "-b0.9", "-p4"))]
    assert len(ablations) == 15 and not set(ablations) & set(chosen)
    assert table["lsgd-autodrop"].autodrop and table["lsgd-autodrop"].model == {"scheduler": None}
    assert table["easgd-bn-re"].kwargs["bn_recompute_batches"] == 8 and table["easgd-bn-re"].model["arch"] == "resnet"
    assert not table["lsgd"].autodrop and table["lsgd"].model == {}


def test_ablation_table_compares_with_the_matching_ddp_reference():
    runs = [_run("ddp", 0, [0.5, 0.90], [1, 1]), _run("ddp-bn", 0, [0.5, 0.80], [1, 1])]
    runs += [_run("x-const", s, [0.5, a], [1, 1]) for s, a in ((0, 0.88), (1, 0.86))]
    runs += [_run("x-bn-re", 0, [0.5, 0.81], [1, 1])]
    for r in runs:
        r["curve"][-1]["lr"] = 0.05
        r["curve"][-1]["self_bytes_sum"] = 400.0 if r["method"].startswith("ddp") else 50.0
    table = T.ablation_table(runs, ["ddp", "x-const", "x-bn-re", "missing"])
    assert "| X-CONST | 2 | 87.00 ± 1.41 | -3.00 | 0.125 | 0.05 |" in table
    assert "| X-BN-RE | 1 | 81.00 ± 0.00 | +1.00 |" in table and "MISSING" not in table


def test_ddp_curves_identical_compares_per_seed():
    a, b, c = (_run("ddp", 0, [0.1, 0.2], [1, 1]), _run("ddp", 0, [0.1, 0.2], [5, 5]), _run("ddp", 1, [0.1], [1]))
    assert T.ddp_curves_identical([a, b, c]) == {0: True}  # seed 1 appears once: nothing to compare
    assert T.ddp_curves_identical([a, _run("ddp", 0, [0.1, 0.25], [1, 1])]) == {0: False}


def test_plot_is_written(tmp_path):
    runs = [
        _run("ddp", 0, [0.5, 0.9], [10, 10]),
        _run("no-comm", 0, [0.4, 0.6], [1, 1]),
        _run("x", 0, [0.7, 0.95], [2, 2]),
    ]
    path = tmp_path / "p.png"
    T.plot_setting("1x4@1gbit", runs, 0.895, path, title="t")
    assert path.stat().st_size > 10_000


# ----------------------------------------------------------------------------- options and plan
def test_settings_and_methods():
    assert C.parse_setting("2x2@200mbit") == C.Setting(2, 2, "200mbit")
    assert C.parse_setting("1x4@1GBIT").tag == "1x4-1gbit"
    for bad in ("2x2", "1x1@1gbit", "2x2@fast", "x@1gbit"):
        with pytest.raises(ValueError):
            C.parse_setting(bad)
    one, two = C.parse_setting("1x4@100mbit"), C.parse_setting("2x2@200mbit")
    assert "lsgd-ml" not in C.select_methods(None, 16, one) and "lsgd-ml" in C.select_methods(None, 16, two)
    assert not any(name.endswith("-defaults") for name in C.select_methods(None, 16, two))  # opt-in
    assert list(C.select_methods(["dpsgd-defaults", "ddp"], 16, one)) == ["ddp", "dpsgd-defaults"]
    with pytest.raises(ValueError, match="unknown"):
        C.select_methods(["lsgdd"], 16, one)
    every = C.methods(16)
    assert all(m.kwargs.get("consensus_every") == 0 for n, m in every.items() if n != "ddp" and not m.opt_in)
    assert all(m.kwargs.get("period") == 16 for n, m in every.items() if n not in ("ddp", "no-comm") and not m.opt_in)


def test_estimates_follow_the_link_and_the_options(capsys):
    args = C.parse_args([])
    n = C.count_parameters(args)
    names = list(C.select_methods(None, 16, C.parse_setting("1x4@1gbit")))
    fast = C.estimate_seconds(C.parse_setting("1x4@1gbit"), names, args, n)
    slow = C.estimate_seconds(C.parse_setting("1x4@100mbit"), names, args, n)
    assert slow > 1.5 * fast > 0
    assert C.estimate_seconds(C.parse_setting("1x4@1gbit"), ["no-comm"], args, n) < fast / 5
    text, total = C.plan_text(args)
    assert all(spec in text for spec in C.DEFAULT_LINKS) and total > 0
    with pytest.raises(SystemExit):
        C.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "estimated wall time per setting" in help_text and "--smoke: ~" in help_text
    assert all(spec in help_text for spec in C.DEFAULT_LINKS)


def test_smoke_defaults_yield_to_explicit_options(capsys):
    args = C.parse_args(["--smoke", "--epochs", "3"])
    assert (args.epochs, args.width, args.links, args.plot_dir) == (3, 64, C._SMOKE["links"], args.out_dir)
    full = C.parse_args([])
    assert full.plot_dir == str(C.DOCS_IMG) and full.links == C.DEFAULT_LINKS
    for argv, match in ((["--links", "4@1gbit"], "NODESxPER_NODE"), (["--methods", "x"], "unknown"),
                        (["--period", "0"], "--period"), (["--eval-rate", "fast"], "link")):  # fmt: skip
        with pytest.raises(SystemExit):
            C.parse_args(argv)
        assert match in capsys.readouterr().err


# ----------------------------------------------------------------------------- the smoke run (root)
def _support_reason() -> str | None:
    try:
        cl.check_support(probe=True)
    except cl.ClusterUnavailable as err:
        return str(err)
    return None


_REASON = _support_reason()


@pytest.mark.skipif(_REASON is not None, reason=f"no emulated cluster here: {_REASON}")
@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    """Both layouts, 5 methods, 2 epochs: every run recorded, bytes as the wire model says, DDP deterministic."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.constrained_link", "--smoke", "--out-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "constrained_link.json").read_text())
    runs = data["runs"]
    got = {(r["setting"], r["method"]) for r in runs}
    assert got == {(s, m) for s in ("1x4@1gbit", "2x2@200mbit") for m in ("ddp", "no-comm", "localsgd", "diloco")} | {
        ("2x2@200mbit", "lsgd-ml")
    }
    for r in runs:
        assert [p["epoch"] for p in r["curve"]] == [1, 2]
        assert all(p["seconds"] > 0 and 0 <= p["acc"] <= 1 for p in r["curve"])
        assert r["curve"][-1]["steps"] == 12  # 700 training samples / 4 workers / batch 32 = 6 steps per epoch
    by = {(r["setting"], r["method"]): r["curve"][-1] for r in runs}
    for spec, nodes, per_node in (("1x4@1gbit", 1, 4), ("2x2@200mbit", 2, 2)):
        ddp = by[(spec, "ddp")]
        expected = _wire.predicted_link_bytes("all_reduce", 1000, nodes, per_node) / (4 * 1000)  # kernel per self byte
        assert ddp["kernel_bytes"] / ddp["self_bytes_sum"] == pytest.approx(expected, rel=0.05)
        assert by[(spec, "localsgd")]["rounds"] == 6
        assert by[(spec, "no-comm")]["kernel_bytes"] < 0.01 * ddp["kernel_bytes"]  # barriers only
        assert by[(spec, "no-comm")]["self_bytes_sum"] == 0
    assert T.ddp_curves_identical(runs) == {0: True}  # the link changes DDP's wall time, never its trajectory
    assert "time to target" in (out / "constrained_link.md").read_text()
    assert (out / "constrained_link_2x2-200mbit.png").stat().st_size > 10_000
    assert "total wall time" in done.stdout
