"""Which sharpness measure predicts the generalization gap? A small MNIST-1D replica of the LPF-SGD study.

A grid of 1-D CNNs (lightning_autoopt.models.Classifier, arch="cnn") over learning rate x batch size x width x
weight decay is trained with SGD (momentum 0.9) on the first ``--train-samples`` MNIST-1D training samples
(default 1 000, scaled down from 3 500 to fit the machine) until the train cross-entropy is <= 0.01 (checked
every 5 epochs) or ``--max-epochs`` is reached. For each model every registered measure is computed with
:func:`lightning_autoopt.landscape.compute_measure` on a fixed 500-sample training subset (filter-normalised, as
in the reference); then Kendall's tau between each measure and the generalization gap (train accuracy - test
accuracy, 1 000 test samples) is reported, over all models and over the converged ones.

Measure settings are scaled down from the reference defaults to fit the machine (listed in MEASURE_KWARGS).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.sharpness_vs_generalization --max-epochs 60 --train-samples 1000
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import torch
from scipy.stats import kendalltau

from benchmarks._landscape_common import OUT, evaluate, machine, make_model, mnist1d_tensors, now, train_plain
from lightning_autoopt.landscape import compute_measure, list_measures

MEASURE_KWARGS = {
    "lpf": {"sigma": 0.01, "num_samples": 50},
    "eps_sharpness": {},
    "pac_bayes": {"mc_samples": 5, "max_iter": 20, "num_train_samples": None},
    "hessian_top": {"max_iter": 50, "tol": 1e-3},
    "hessian_trace": {"num_probes": 30, "backend": "autograd"},
    "hessian_fro": {"num_probes": 10, "backend": "autograd"},
    "fisher_rao": {},
    "shannon": {},
    "local_entropy": {"num_steps": 20, "max_batches": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 5e-4])
    parser.add_argument("--probe-samples", type=int, default=500)
    parser.add_argument("--train-samples", type=int, default=1000, help="first N of the 3 500 training samples")
    parser.add_argument("--analyze-only", action="store_true", help="print the table from the saved JSON")
    args = parser.parse_args()
    if args.analyze_only:
        analyze(json.loads((OUT / "sharpness_vs_generalization.json").read_text()))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    data = mnist1d_tensors()
    x_tr, y_tr = (t[: args.train_samples] for t in data["train"])
    MEASURE_KWARGS["pac_bayes"]["num_train_samples"] = len(x_tr)
    x_te, y_te = data["test"]
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x_tr), generator=g)[: args.probe_samples]
    batches = [(x_tr[idx[i : i + 250]], y_tr[idx[i : i + 250]]) for i in range(0, len(idx), 250)]
    print(f"# {now()} | {machine()}")
    print(f"# {vars(args)}")
    grid = list(itertools.product(args.lrs, args.batch_sizes, args.widths, args.weight_decays))
    rows = []
    for k, (lr, bs, width, wd) in enumerate(grid):
        t0 = time.perf_counter()
        model = make_model(width=width, seed=k)
        init = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        stats = train_plain(
            model, x_tr, y_tr, epochs=args.max_epochs, lr=lr, batch_size=bs, weight_decay=wd, seed=k, stop_loss=0.01
        )
        _, test_acc = evaluate(model, x_te, y_te)
        row = {"lr": lr, "batch_size": bs, "width": width, "weight_decay": wd, **stats, "test_acc": test_acc,
               "gap": stats["train_acc"] - test_acc}  # fmt: skip
        t1 = time.perf_counter()
        for name in list_measures():
            kwargs = dict(MEASURE_KWARGS[name])
            if name == "pac_bayes":
                kwargs["init_params"] = init
            row[name] = compute_measure(name, model, batches, normalize=True, seed=0, **kwargs)
        row["train_s"], row["measure_s"] = t1 - t0, time.perf_counter() - t1
        rows.append(row)
        print(f"#  {k + 1}/{len(grid)} lr={lr} bs={bs} w={width} wd={wd}: {stats['epochs']} ep, train CE "
              f"{stats['train_loss']:.4f}, gap {row['gap']:.3f}, train {row['train_s']:.0f}s, measures "
              f"{row['measure_s']:.0f}s", flush=True)  # fmt: skip
        (OUT / "sharpness_vs_generalization.json").write_text(json.dumps(rows, indent=1))

    analyze(rows)


def analyze(rows: list[dict]) -> None:
    converged = [r for r in rows if r["train_loss"] <= 0.01]
    print(f"# models: {len(rows)}, converged (train CE ≤ 0.01): {len(converged)}")
    print("| measure | Kendall τ vs gap (all models) | p | τ (converged only) |")
    print("|---|---|---|---|")
    taus = {}
    for name in list_measures():
        vals = [(r[name], r["gap"]) for r in rows if math.isfinite(r[name])]
        tau, p = kendalltau([v for v, _ in vals], [gp for _, gp in vals])
        conv = [(r[name], r["gap"]) for r in converged if math.isfinite(r[name])]
        tau_c = kendalltau([v for v, _ in conv], [gp for _, gp in conv])[0] if len(conv) >= 4 else float("nan")
        taus[name] = tau
        print(f"| {name} | {tau:+.3f} | {p:.3f} | {tau_c:+.3f} |")
    best = max(taus, key=lambda n: taus[n] if math.isfinite(taus[n]) else -2)
    print(f"# highest τ (all models): {best} ({taus[best]:+.3f}); LPF: {taus['lpf']:+.3f}")


if __name__ == "__main__":
    main()
