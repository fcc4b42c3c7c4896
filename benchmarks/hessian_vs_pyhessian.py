"""Top Hessian eigenvalue and Hutchinson trace: PyHessian vs lightning_autoopt.landscape, same model and batch.

A 1-D CNN (lightning_autoopt.models.Classifier, arch="cnn", width 32, 22 k parameters) is trained for a few epochs
on MNIST-1D; then, on one fixed "Hessian batch" of 1000 training samples, every method runs in its own fresh
subprocess (so peak-memory numbers are clean), ``--repeats`` times, alternating, taking the fastest time:

* PyHessian 0.1 (``pip install pyhessian``): ``eigenvalues(maxIter=100, tol=1e-3)`` (power iteration, its
  defaults) and, for an equal-accuracy comparison, ``tol=1e-5`` ("pyhessian-tight"); ``trace(maxIter=P, tol=0)``
  (Rademacher Hutchinson with exactly P probes: its default early stop, tol=1e-3, stops after a random 6-50
  probes, which makes equal-probe comparisons impossible);
* ours: ``top_eigenvalues`` by Lanczos (tol 1e-3) and ``hutchinson_trace`` (and Hutch++) with the same P probes,
  with the double-backward ("autograd", cached gradient graph like PyHessian) and the forward-over-reverse + vmap
  ("func", blocks of 10 probes) HVP backends.

Accuracy is judged against a tight reference λ_max (Lanczos, 100 iterations, float64 dense algebra). Peak memory is
the growth of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) during the measurement.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.hessian_vs_pyhessian
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

from benchmarks._landscape_common import OUT, Timer, machine, make_model, mnist1d_tensors, now, train_plain
from lightning_autoopt.landscape import HVPOperator, LossFunctional, hutchinson_trace, top_eigenvalues

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
    # one-time library loading (LAPACK for the small tridiagonal/QR problems) is not algorithm memory: load it first
    torch.linalg.eigvalsh(torch.eye(2, dtype=torch.float64))
    torch.linalg.qr(torch.eye(2, dtype=torch.float64))
    base = _reset_peak()
    if method.startswith("pyhessian"):
        from pyhessian import hessian

        module = sys.modules[hessian.__module__]
        original, calls = module.hessian_vector_product, []

        def counted(*a, **k):  # count PyHessian's HVPs without changing them
            calls.append(1)
            return original(*a, **k)

        module.hessian_vector_product = counted
        with Timer() as t_setup:
            h = hessian(model, F.cross_entropy, data=(x, y), cuda=False)
        eig_tol = 1e-5 if method == "pyhessian-tight" else 1e-3
        with Timer() as t_eig:
            eig, _ = h.eigenvalues(maxIter=100, tol=eig_tol, top_n=1)
        out["eig_matvecs"] = len(calls)
        with Timer() as t_tr:
            # tol=0 turns off PyHessian's early stop so both sides use exactly `probes` Rademacher probes
            samples = h.trace(maxIter=probes, tol=0.0)
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
        out["peak_mb"] = (_rss_kb("VmHWM") - base) / 1024  # λ + trace only, like PyHessian's two calls
        with Timer() as t_pp:
            pp = hutchinson_trace(op, num_probes=probes, block_size=10, method="hutch++", generator=gen)
        out.update(trace_pp=pp.value, trace_pp_se=pp.std_error, trace_pp_s=t_pp.seconds)
        out["peak_mb_with_hutchpp"] = (_rss_kb("VmHWM") - base) / 1024
        return out
    out["peak_mb"] = (_rss_kb("VmHWM") - base) / 1024
    return out


def reference_eigenvalue() -> float:
    saved = torch.load(MODEL_FILE)
    model = make_model()
    model.load_state_dict(saved["state"])
    op = HVPOperator(LossFunctional(model, [(saved["x"], saved["y"])]), backend="autograd")
    return top_eigenvalues(op, method="lanczos", max_iter=100, tol=1e-10)[0]


def run_worker(method: str, probes: int, seed: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.hessian_vs_pyhessian", "--worker", method, "--probes", str(probes)]
    cmd += ["--seed", str(seed)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", default=None)
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
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

    methods = ["pyhessian", "pyhessian-tight", "ours-autograd", "ours-func"]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(args.repeats):
        for m in methods:
            runs[m].append(run_worker(m, args.probes, seed=r))
            print(f"#   round {r} {m}: {json.dumps(runs[m][-1])}", flush=True)

    best = {m: min(rs, key=lambda d: d["eig_s"]) for m, rs in runs.items()}
    best_tr = {m: min(rs, key=lambda d: d["trace_s"]) for m, rs in runs.items()}
    print("| method | λ_max (mean over runs) | max rel. err vs ref | HVPs for λ | λ time (s, best) | "
          "trace ± s.e. (run 0) | trace time (s, best) | peak RSS growth (MB, max) |")  # fmt: skip
    print("|" + "---|" * 8)
    for m in methods:
        rs = runs[m]
        err = max(abs(d["eig"] - ref) / abs(ref) for d in rs)
        eig = sum(d["eig"] for d in rs) / len(rs)
        hv = "/".join(str(d["eig_matvecs"]) for d in rs)
        peak = max(d["peak_mb"] for d in rs)
        print(f"| {m} | {eig:.4f} | {err:.3%} | {hv} | {best[m]['eig_s']:.2f} | {rs[0]['trace']:.2f} ± "
              f"{rs[0]['trace_se']:.2f} | {best_tr[m]['trace_s']:.2f} | {peak:.1f} |")  # fmt: skip
    for m in ("ours-autograd", "ours-func"):
        rs = runs[m]
        print(f"| {m} hutch++ | | | | | {rs[0]['trace_pp']:.2f} ± {rs[0]['trace_pp_se']:.2f} | "
              f"{min(d['trace_pp_s'] for d in rs):.2f} | |")  # fmt: skip
    py, tight = best["pyhessian"], best["pyhessian-tight"]
    for m in ("ours-autograd", "ours-func"):
        b = best[m]
        zs = [abs(o["trace"] - p["trace"]) / math.sqrt(o["trace_se"] ** 2 + p["trace_se"] ** 2)
              for o, p in zip(runs[m], runs["pyhessian"])]  # fmt: skip
        print(f"# {m}: λ {abs(b['eig'] - py['eig']) / abs(py['eig']):.2%} from PyHessian (≤ 1% wanted); "
              f"λ speed-up vs PyHessian tol 1e-3: {py['eig_s'] / b['eig_s']:.2f}x, vs PyHessian tol 1e-5 (equal "
              f"accuracy): {tight['eig_s'] / b['eig_s']:.2f}x; trace speed-up at {args.probes} probes: "
              f"{best_tr['pyhessian']['trace_s'] / best_tr[m]['trace_s']:.2f}x; trace gap in combined s.e. per run: "
              f"{', '.join(f'{z:.2f}' for z in zs)}")  # fmt: skip
    (OUT / "hessian_vs_pyhessian.json").write_text(json.dumps({"ref": ref, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
