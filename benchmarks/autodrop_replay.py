"""Replay AutoDrop saturation tests offline on recorded constant-LR ω traces (``autodrop_traces.py``).

For every trace (workload × seed × interval length × phase of the snapshot grid) and every candidate test, finds
the first decision at which the test says "saturated" and compares it with the budget (must not be in the first
10 %) and with the validation-loss plateau of the same constant-LR run. Prints one summary row per candidate and
one detail table for the chosen default. Takes about a minute.

The shipped default (``DEFAULT``) replays the package's own ``SaturationDetector`` (window 10, threshold 2: the
Mann-Kendall z of the last 10 angles must first exceed 2, the test fires when it falls back below 2); the other
rows are the candidates it was chosen from (least-squares slope / SE as in the issue, fixed or growing windows,
one- or two-sided, confirmations, arming, the paper's rule).

Plateau (precise definition, on the constant-LR run's validation curve, evaluated 100 times per run): smooth the
validation loss with a centred moving average over 9 evaluations (``s``); ``plateau_step`` is the first evaluation
step at which ``s`` has made all but 5 % of its total improvement: ``s(t) <= min(s) + 0.05 * (s(first) - min(s))``.

    python -m benchmarks.autodrop_replay                    # all candidates, summary
    python -m benchmarks.autodrop_replay --detail           # + per-trace table of the default
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from lightning_autoopt.callbacks._saturation import SaturationDetector, mann_kendall_z, trend_statistic

TRACES = Path(__file__).resolve().parent / "out" / "autodrop_traces"
PLATEAU_FRAC = 0.05
SMOOTH_HALF = 4
EARLY = 0.10  # a detection before this fraction of the budget is a failure
LATE = 0.75  # a first detection after this fraction leaves too little budget for the drop to pay off


def smoothed(values: list[float], half: int = SMOOTH_HALF) -> list[float]:
    """Centred moving average over ``2 * half + 1`` points (truncated at the ends)."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half) : i + half + 1]
        out.append(sum(part) / len(part))
    return out


def plateau_step(val: list[list[float]], frac: float = PLATEAU_FRAC) -> int:
    """First evaluation step at which the smoothed val loss has made all but ``frac`` of its total improvement.

    ``s`` is the validation loss smoothed by a centred moving average over ``2 * SMOOTH_HALF + 1`` evaluations;
    the plateau is the first step ``t`` with ``s(t) <= min(s) + frac * (s(first) - min(s))``.
    """
    s = smoothed([v[1] for v in val])
    low, first = min(s), s[0]
    for (step, _loss, _acc), value in zip(val, s):
        if value <= low + frac * (first - low):
            return int(step)
    return int(val[-1][0])


@dataclass(frozen=True)
class Candidate:
    name: str
    window: int = 10  # minimum (and, with span 0, fixed) number of ω values in the test
    span: float = 0.0  # use the last max(window, span * n) values of the n since the reset
    z: float = 2.0
    one_sided: bool = False
    confirm: int = 1  # consecutive saturated decisions needed
    reference_theta: float | None = None  # the paper's |Δω| < θ instead of the trend test
    arm: float | None = None  # the test may fire only after some t > arm (a significant rise) since the reset
    package: bool = False  # replay the package's own SaturationDetector (the shipped default) instead
    kendall: bool = False  # Mann-Kendall z instead of the least-squares t

    def first_detection(self, omegas: list[float]) -> int | None:
        """Index (into ``omegas``) of the decision at which the test first fires, or None."""
        if self.package:
            det = SaturationDetector(window=self.window, threshold=self.z, patience=0)
            return next((i for i, w in enumerate(omegas) if det.update(w)[0] == "drop"), None)
        return self._first_detection(omegas)

    def _first_detection(self, omegas: list[float]) -> int | None:
        streak = 0
        armed = self.arm is None
        values: list[float] = []
        for i, w in enumerate(omegas):
            if not math.isfinite(w):
                continue
            values.append(w)
            if self.reference_theta is not None:
                fired = len(values) >= 2 and abs(values[-1] - values[-2]) < self.reference_theta
            else:
                n = len(values)
                if n < self.window:
                    continue
                use = max(self.window, math.ceil(self.span * n))
                t = mann_kendall_z(values[-use:]) if self.kendall else trend_statistic(values[-use:])
                if not armed:
                    armed = t > self.arm  # type: ignore[operator]
                    continue
                fired = t < self.z if self.one_sided else abs(t) < self.z
            streak = streak + 1 if fired else 0
            if streak >= self.confirm:
                return i
        return None


CANDIDATES = [
    Candidate("DEFAULT: AutoDrop() test", package=True),
    Candidate("reference theta=0.01", reference_theta=0.01),
    Candidate("reference theta=1", reference_theta=1.0),
    Candidate("W10 abs(t)<2 (issue)", window=10, z=2.0),
    Candidate("W10 t<2 one-sided", window=10, z=2.0, one_sided=True),
    Candidate("W10 abs(t)<1", window=10, z=1.0),
    Candidate("W20 abs(t)<2", window=20, z=2.0),
    Candidate("W10 abs(t)<2 x3", window=10, z=2.0, confirm=3),
    Candidate("half>=10 abs(t)<2", window=10, span=0.5, z=2.0),
    Candidate("half>=10 t<2 one-sided", window=10, span=0.5, z=2.0, one_sided=True),
    Candidate("half>=10 abs(t)<1", window=10, span=0.5, z=1.0),
    Candidate("half>=10 abs(t)<2 x2", window=10, span=0.5, z=2.0, confirm=2),
    Candidate("third>=10 abs(t)<2", window=10, span=1 / 3, z=2.0),
    Candidate("third>=10 t<2 one-sided", window=10, span=1 / 3, z=2.0, one_sided=True),
    Candidate("armed2 W10 t<2", window=10, z=2.0, one_sided=True, arm=2.0),
    Candidate("MK W10 abs(z)<2", window=10, z=2.0, kendall=True),
    Candidate("MK armed2 W10 abs(z)<2", window=10, z=2.0, arm=2.0, kendall=True),
    Candidate("MK armed2 W12 abs(z)<2", window=12, z=2.0, arm=2.0, kendall=True),
    Candidate("MK armed2 W15 abs(z)<2", window=15, z=2.0, arm=2.0, kendall=True),
    Candidate("MK armed2 W10 abs(z)<1.5", window=10, z=1.5, arm=1.5, kendall=True),
    Candidate("armed2 W10 abs(t)<2", window=10, z=2.0, arm=2.0),
    Candidate("armed3 W10 t<2", window=10, z=2.0, one_sided=True, arm=3.0),
    Candidate("armed2 W20 t<2", window=20, z=2.0, one_sided=True, arm=2.0),
    Candidate("armed2 half>=10 t<2", window=10, span=0.5, z=2.0, one_sided=True, arm=2.0),
    Candidate("armed2 half>=10 abs(t)<2", window=10, span=0.5, z=2.0, arm=2.0),
    Candidate("armed3 half>=10 t<2", window=10, span=0.5, z=2.0, one_sided=True, arm=3.0),
    Candidate("armed2 half>=10 t<1", window=10, span=0.5, z=1.0, one_sided=True, arm=2.0),
    Candidate("armed2 third>=10 t<2", window=10, span=1 / 3, z=2.0, one_sided=True, arm=2.0),
]


def load_traces() -> list[dict]:
    paths = sorted(TRACES.glob("*.json"))
    if not paths:
        raise SystemExit(f"No traces in {TRACES}; run benchmarks/autodrop_traces.py first.")
    return [json.loads(p.read_text()) for p in paths]


def evaluate(candidate: Candidate, traces: list[dict], intervals: list[str] | None = None) -> list[dict]:
    rows = []
    for tr in traces:
        steps, plateau = tr["steps"], plateau_step(tr["val"])
        for key, L in tr["intervals"].items():
            if intervals is not None and key not in intervals:
                continue
            for phase, omegas in tr["omega"][key].items():
                # ω index i is computed from the positions after steps phase + L*(i+1), ..+L*(i+2), ..+L*(i+3)
                # (the first snapshot is after `snapshot_every` steps; phase is in steps).
                first = candidate.first_detection(omegas)
                step = None if first is None else int(phase) + tr["snapshot_every"] + L * (first + 2)
                rows.append(
                    {
                        "workload": tr["workload"],
                        "seed": tr["seed"],
                        "interval": key,
                        "L": L,
                        "decisions": steps // L,
                        "phase": int(phase),
                        "steps": steps,
                        "plateau": plateau,
                        "detect": step,
                    }
                )
    return rows


def summarize(rows: list[dict]) -> dict[str, float]:
    n = len(rows)
    fired = [r for r in rows if r["detect"] is not None]
    early = [r for r in fired if r["detect"] < EARLY * r["steps"]]
    late = [r for r in rows if r["detect"] is None or r["detect"] > LATE * r["steps"]]
    before_plateau = [r for r in fired if r["detect"] < r["plateau"]]
    rel = [(r["detect"] - r["plateau"]) / r["steps"] for r in fired]
    return {
        "traces": n,
        "fired": len(fired) / n,
        "early": len(early) / n,
        "late_or_never": len(late) / n,
        "before_plateau": len(before_plateau) / n,
        "median_lag": statistics.median(rel) if rel else math.nan,
        "min_frac": min((r["detect"] / r["steps"] for r in fired), default=math.nan),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detail", action="store_true", help="per-trace table of the chosen default")
    parser.add_argument("--default", default="DEFAULT: AutoDrop() test", help="candidate shown in the detail table")
    args = parser.parse_args()
    traces = load_traces()
    print("Plateau steps (constant LR, smoothed val loss within 5 % / 2 % / 10 % of its total improvement):")
    for tr in traces:
        fr = [plateau_step(tr["val"], f) / tr["steps"] for f in (PLATEAU_FRAC, 0.02, 0.10)]
        print(
            f"  {tr['workload']:12s} seed {tr['seed']}: plateau {plateau_step(tr['val']):6d} of {tr['steps']} "
            f"({fr[0]:.0%}; 2 %: {fr[1]:.0%}, 10 %: {fr[2]:.0%})"
        )
    keys = ["D25", "D35", "D50", "D70", "D100", "D140", "D200", "D400", "epoch"]
    print(
        f"\nAll traces (every interval and phase): fired / fired before {EARLY:.0%} of the budget / fired after "
        f"{LATE:.0%} or never / fired before the plateau; then the median first-detection step as a fraction of "
        "the budget for each interval length (D = decisions per run), and its spread across D25-D400"
    )
    print(
        f"| {'candidate':24s} | fired | early | late/never | <plateau | "
        + " | ".join(f"{k:5s}" for k in keys)
        + " | D-spread |"
    )
    print(f"|{'-' * 26}|-------|-------|------------|----------|" + "|".join("-" * 7 for _ in keys) + "|----------|")
    for cand in CANDIDATES:
        rows = evaluate(cand, traces)
        s_all = summarize(rows)
        med = {}
        for k in keys:
            fr = [r["detect"] / r["steps"] if r["detect"] is not None else math.inf for r in rows if r["interval"] == k]
            med[k] = statistics.median(fr) if fr else math.nan
        finite = [med[k] for k in keys[:-1] if math.isfinite(med[k])]
        spread = max(finite) - min(finite) if len(finite) == len(keys) - 1 else math.inf
        cells = " | ".join(f"{med[k]:5.2f}" if math.isfinite(med[k]) else "never" for k in keys)
        print(
            f"| {cand.name:24s} | {s_all['fired']:5.0%} | {s_all['early']:5.0%} | {s_all['late_or_never']:10.0%} | "
            f"{s_all['before_plateau']:8.0%} | {cells} | {spread:8.2f} |"
        )
    if args.detail:
        cand = next(c for c in CANDIDATES if c.name == args.default)
        print(f"\nDetail for {cand.name}: first detection step (fraction of budget) per interval, phase 0")
        for row in evaluate(cand, traces):
            if row["phase"] != 0:
                continue
            det = row["detect"]
            where = "never" if det is None else f"{det:6d} ({det / row['steps']:.0%})"
            print(
                f"  {row['workload']:12s} s{row['seed']} {row['interval']:6s} L={row['L']:5d} "
                f"plateau {row['plateau']:6d} ({row['plateau'] / row['steps']:.0%}) detect {where}"
            )


if __name__ == "__main__":
    main()
