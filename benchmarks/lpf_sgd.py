"""LPF-SGD vs SGD vs SAM on MNIST-1D: test accuracy and the top Hessian eigenvalue of the solution, 3 seeds.

All three train lightning_autoopt.models.Classifier (1-D CNN, width 32) on MNIST1DDataModule (3 500 train samples)
with SGD (lr 0.05, momentum 0.9, weight decay 5e-4, cosine LR over the run, batch 128), through Lightning:

* SGD: plain;
* LPF-SGD: the same plus the ``LPFSGD`` callback (filter-relative noise, see --lpf-std / --lpf-schedule);
* SAM: a manual-optimization subclass doing SAM's two passes (ρ = 0.05, e = ρ g/‖g‖), same base optimizer.

A ``SharpnessProbe(measures=["hessian_top"])`` on a fixed 512-sample training subset records λ_max every
``--probe-every`` epochs (plotted to benchmarks/out/lpf_sgd_sharpness.png). At the end: test accuracy on the
1 000 test samples and λ_max on a fixed 1 000-sample training subset (Lanczos, tol 1e-4).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.lpf_sgd --epochs 30 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks._landscape_common import OUT, evaluate, machine, now
from lightning_autoopt.callbacks import LPFSGD, SharpnessProbe
from lightning_autoopt.data import MNIST1DDataModule
from lightning_autoopt.landscape import compute_measure, make_fixed_batches
from lightning_autoopt.models import Classifier


class SAMClassifier(Classifier):
    """SAM (Foret et al. 2021), manual optimization: ascend to θ + ρ g/‖g‖, take its gradient, step at θ."""

    def __init__(self, rho: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rho = rho
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = self.loss_fn(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        params = [p for p in self.parameters() if p.grad is not None]
        with torch.no_grad():
            norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
            scale = self.rho / (norm + 1e-12)
            eps = [p.grad * scale for p in params]
            for p, e in zip(params, eps):
                p.add_(e)
        opt.zero_grad()
        self.manual_backward(self.loss_fn(self(x), y))
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        opt.step()
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self) -> None:
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()


def run(method: str, seed: int, args: argparse.Namespace, dm: MNIST1DDataModule) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    hp = dict(arch="cnn", width=32, lr=0.05, momentum=0.9, weight_decay=5e-4, scheduler="cosine")
    model = SAMClassifier(rho=args.sam_rho, **hp) if method == "sam" else Classifier(**hp)
    probe = SharpnessProbe(
        measures=["hessian_top"], every_n_epochs=args.probe_every, max_batches=4, batch_size=128, seed=0,
        measure_kwargs={"hessian_top": {"max_iter": 50, "tol": 1e-3}},
    )  # fmt: skip
    callbacks: list[pl.Callback] = [probe]
    if method == "lpf":
        callbacks.insert(
            0, LPFSGD(std=args.lpf_std, schedule=args.lpf_schedule, increase_factor=args.lpf_inc, seed=seed)
        )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=args.epochs, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=str(OUT / "lpf_runs"),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    x_test, y_test = dm.test_set.tensors
    x_train, y_train = dm.train_set.tensors
    _, test_acc = evaluate(model, x_test, y_test)
    train_loss, train_acc = evaluate(model, x_train, y_train)
    batches = make_fixed_batches(dm.train_set, 1000, 250, seed=1)
    lam = compute_measure("hessian_top", model, batches, max_iter=100, tol=1e-4)
    return {
        "method": method, "seed": seed, "test_acc": test_acc, "train_acc": train_acc, "train_loss": train_loss,
        "lambda_max": lam, "seconds": seconds, "history": probe.history,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["sgd", "lpf", "sam"])
    parser.add_argument("--lpf-std", type=float, default=0.001)
    parser.add_argument("--lpf-schedule", default="cosine_increase")
    parser.add_argument("--lpf-inc", type=float, default=5.0)
    parser.add_argument("--sam-rho", type=float, default=0.05)
    parser.add_argument("--probe-every", type=int, default=5)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    dm = MNIST1DDataModule(batch_size=128, num_samples=5000, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    print(f"# {now()} | {machine()}")
    print(f"# {vars(args)}")
    results = []
    for seed in args.seeds:
        for method in args.methods:
            res = run(method, seed, args, dm)
            results.append(res)
            print(f"#   {method} seed {seed}: test acc {res['test_acc']:.4f}, λ_max {res['lambda_max']:.3f}, "
                  f"train loss {res['train_loss']:.4f}, {res['seconds']:.0f} s", flush=True)  # fmt: skip
    (OUT / "lpf_sgd.json").write_text(json.dumps(results, indent=1))

    def stat(method: str, key: str) -> tuple[float, float]:
        vals = [r[key] for r in results if r["method"] == method]
        return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0

    print("| method | test acc (mean ± sd) | λ_max of solution | train loss | time / run (s) |")
    print("|---|---|---|---|---|")
    for m in args.methods:
        acc, lam, tl, sec = stat(m, "test_acc"), stat(m, "lambda_max"), stat(m, "train_loss"), stat(m, "seconds")
        print(f"| {m} | {100 * acc[0]:.2f} ± {100 * acc[1]:.2f} % | {lam[0]:.2f} ± {lam[1]:.2f} | {tl[0]:.4f} | "
              f"{sec[0]:.0f} |")  # fmt: skip
    sgd_lam = stat("sgd", "lambda_max")[0] if "sgd" in args.methods else float("nan")
    for m in args.methods:
        if m != "sgd":
            print(f"# {m}: λ_max ratio to SGD {stat(m, 'lambda_max')[0] / sgd_lam:.2f}, test-acc difference "
                  f"{100 * (stat(m, 'test_acc')[0] - stat('sgd', 'test_acc')[0]):+.2f} points")  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        colors = {"sgd": "tab:blue", "lpf": "tab:green", "sam": "tab:red"}
        for r in results:
            hist = r["history"]
            ax.plot([h["epoch"] + 1 for h in hist], [h["hessian_top"] for h in hist], color=colors.get(r["method"]),
                    alpha=0.7, label=r["method"] if r["seed"] == args.seeds[0] else None)  # fmt: skip
        ax.set_xlabel("epoch")
        ax.set_ylabel("top Hessian eigenvalue (512 train samples)")
        ax.set_title("MNIST-1D CNN: sharpness over training")
        ax.legend()
        fig.tight_layout()
        fig.savefig(OUT / "lpf_sgd_sharpness.png", dpi=120)
        print(f"# plot: {OUT / 'lpf_sgd_sharpness.png'}")
    except ImportError:
        print("# matplotlib missing: no plot")


if __name__ == "__main__":
    main()
