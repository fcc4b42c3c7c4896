"""Top Hessian eigenvalue and Hutchinson trace: PyHessian vs lightning_autoopt.landscape, same model and batch.

A 1-D CNN (lightning_autoopt.models.Classifier, arch="cnn", width 32, 22 k parameters) is trained for a few epochs
on MNIST-1D; then, on one fixed "Hessian batch" of 1000 training samples, every method runs in its own fresh
subprocess (so peak-memory numbers are clean), ``--repeats`` times, alternating, taking the fastest time:

* PyHessian 0.1 (``pip install pyhessian``): ``eigenvalues(maxIter=100, tol=1e-3)`` (power iteration) and
  ``trace(maxIter=100, tol=1e-3)`` (Rademacher Hutchinson with its early stop; P = the probes it used);
* ours: ``top_eigenvalues`` by Lanczos (tol 1e-3) and ``hutchinson_trace`` with the same P probes, with the
  double-backward ("autograd") and the forward-over-reverse + vmap ("func", blocks of 10 probes) HVP backends.

Accuracy is judged against a tight reference λ_max (Lanczos, 100 iterations, float64 dense algebra). Peak memory is
the growth of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) during the measurement.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hessian_vs_pyhessian.py
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._landscape_common import OUT, Timer, machine, make_model, mnist1d_tensors, now, train_plain  # noqa: E402
from lightning_autoopt.landscape import HVPOperator, LossFunctional, hutchinson_trace, top_eigenvalues  # noqa: E402

MODEL_FILE = OUT / "hvp_model.pt"


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _rss_kb("VmRSS")


def worker(method: str, probes: int, seed: int) -> dict:
    saved = torch.load(MODEL_FILE)
    model = make_model()
    model.load_state_dict(saved["state"])
    model.eval()
    x, y = saved["x"], saved["y"]
    torch.manual_seed(seed)
    out: dict = {"method": method}
    base = _reset_peak()
    if method == "pyhessian":
        from pyhessian import hessian

        module = sys.modules[hessian.__module__]
        original, calls = module.hessian_vector_product, []

        def counted(*a, **k):  # count PyHessian's HVPs without changing them
            calls.append(1)
            return original(*a, **k)

        module.hessian_vector_product = counted
        with Timer() as t_setup:
            h = hessian(model, F.cross_entropy, data=(x, y), cuda=False)
        with Timer() as t_eig:
            eig, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        out["eig_matvecs"] = len(calls)
        with Timer() as t_tr:
            samples = h.trace(maxIter=100, tol=1e-3)
        out.update(eig=float(eig[0]), eig_s=t_setup.seconds + t_eig.seconds, trace_s=t_tr.seconds)
        s = torch.tensor(samples, dtype=torch.float64)
        out.update(trace=float(s.mean()), trace_se=float(s.std() / math.sqrt(len(s))), probes=len(s))
    else:
        backend = method.split("-")[1]
        gen = torch.Generator().manual_seed(seed)
        f = LossFunctional(model, [(x, y)])
        op = HVPOperator(f, backend=backend, block_size=10)
        with Timer() as t_eig:
            eig = top_eigenvalues(op, method="lanczos", max_iter=100, tol=1e-3, generator=gen)[0]
        eig_matvecs = op.num_matvecs
        with Timer() as t_tr:
            est = hutchinson_trace(op, num_probes=probes, block_size=10, generator=gen)
        out.update(eig=eig, eig_s=t_eig.seconds, eig_matvecs=eig_matvecs, trace_s=t_tr.seconds)
        out.update(trace=est.value, trace_se=est.std_error, probes=probes)
    out["peak_mb"] = (_rss_kb("VmHWM") - base) / 1024
    return out


def reference_eigenvalue() -> float:
    saved = torch.load(MODEL_FILE)
    model = make_model()
    model.load_state_dict(saved["state"])
    op = HVPOperator(LossFunctional(model, [(saved["x"], saved["y"])]), backend="autograd")
    return top_eigenvalues(op, method="lanczos", max_iter=100, tol=1e-10)[0]


def run_worker(method: str, probes: int, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--probes", str(probes), "--seed", str(seed)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", default=None)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--hessian-batch", type=int, default=1000)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.probes, args.seed)))
        return

    OUT.mkdir(parents=True, exist_ok=True)
    data = mnist1d_tensors()
    x, y = data["train"]
    model = make_model()
    stats = train_plain(model, x, y, epochs=args.epochs, lr=0.05)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=g)[: args.hessian_batch]
    torch.save({"state": model.state_dict(), "x": x[idx].clone(), "y": y[idx].clone()}, MODEL_FILE)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# {now()} | {machine()}")
    print(f"# model: 1-D CNN, {n_params} params, trained {args.epochs} epochs (train CE {stats['train_loss']:.3f}); "
          f"Hessian batch {len(idx)} samples")  # fmt: skip
    ref = reference_eigenvalue()
    print(f"# reference lambda_max (Lanczos 100 it, tol 1e-10): {ref:.5f}")

    methods = ["pyhessian", "ours-autograd", "ours-func"]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    runs["pyhessian"].append(run_worker("pyhessian", 0, seed=0))
    probes = runs["pyhessian"][0]["probes"]  # ours uses PyHessian's probe count (its early stop decides it)
    for r in range(args.repeats):
        for m in methods:
            if m == "pyhessian" and r == 0:
                continue
            runs[m].append(run_worker(m, probes, seed=r))

    rows = []
    best = {m: min(rs, key=lambda d: d["eig_s"] + d["trace_s"]) for m, rs in runs.items()}
    py = best["pyhessian"]
    header = (f"| method | λ_max | rel. err vs ref | λ time (s) | trace (± s.e.) | probes | trace time (s) | "
              f"total (s) | speed-up vs PyHessian | peak RSS growth (MB) |")  # fmt: skip
    print(header)
    print("|" + "---|" * 10)
    for m in methods:
        b = best[m]
        total = b["eig_s"] + b["trace_s"]
        speedup = (py["eig_s"] + py["trace_s"]) / total
        peak = max(d["peak_mb"] for d in runs[m])
        row = (f"| {m} | {b['eig']:.4f} | {abs(b['eig'] - ref) / abs(ref):.2%} | {b['eig_s']:.2f} | "
               f"{b['trace']:.2f} ± {b['trace_se']:.2f} | {b['probes']} | {b['trace_s']:.2f} | {total:.2f} | "
               f"{speedup:.2f}x | {peak:.1f} |")  # fmt: skip
        rows.append(row)
        print(row)
    for m in methods[1:]:
        b = best[m]
        d_eig = abs(b["eig"] - py["eig"]) / abs(py["eig"])
        z = abs(b["trace"] - py["trace"]) / math.sqrt(b["trace_se"] ** 2 + py["trace_se"] ** 2)
        print(f"# {m}: λ within {d_eig:.2%} of PyHessian (target ≤ 1%); trace differs by {z:.2f} combined s.e. "
              f"(target ≤ 2); λ speed-up {py['eig_s'] / b['eig_s']:.2f}x, trace speed-up "
              f"{py['trace_s'] / b['trace_s']:.2f}x; Lanczos used {b['eig_matvecs']} HVPs")  # fmt: skip
    (OUT / "hessian_vs_pyhessian.json").write_text(json.dumps({"ref": ref, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
