"""Which model for the constrained-link benchmark: single-process convergence of candidates at its global batch.

``benchmarks/constrained_link.py`` trains 4 workers x 32 samples per step; DDP on them follows (up to the data
order) the trajectory of one process at batch 128. This script trains that single process on MNIST-1D (5 000 samples,
3 500 train / 1 000 test; SGD momentum 0.9, wd 5e-4) for each candidate and prints the test accuracy after every epoch,
so the epoch budget can be chosen where DDP has converged. Plain PyTorch, one thread; a few minutes per candidate.

Candidates are ``arch,width,lr,epochs,num_samples,scheduler`` (scheduler ``none`` or ``cosine``)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.model_choice cnn,192,0.05,20,5000,cosine mlp,256,0.05,40,5000,none
"""

from __future__ import annotations

import argparse
import time

from benchmarks._harness import OUT


def run(arch: str, width: int, lr: float, epochs: int, num_samples: int, scheduler: str, batch: int, seed: int) -> None:
    """Train one candidate and print its per-epoch test accuracy (%)."""
    import torch

    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier

    dm = MNIST1DDataModule(batch_size=batch, num_samples=num_samples, seed=0, cache_dir=str(OUT / "cache"))
    dm.setup("fit")
    dm.setup("test")
    torch.manual_seed(seed)
    net = Classifier(arch=arch, width=width).net
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if scheduler == "cosine" else None
    accs, steps, t0 = [], 0, time.time()
    for _ in range(epochs):
        net.train()
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            steps += 1
        if sched is not None:
            sched.step()
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in dm.test_dataloader():
                correct += int((net(x).argmax(1) == y).sum())
                total += len(y)
        accs.append(round(100 * correct / total, 1))
    params = sum(p.numel() for p in net.parameters())
    print(f"{arch} width {width} ({params / 1e6:.2f} M) lr {lr} {scheduler} samples {num_samples}: {steps} steps, "
          f"{time.time() - t0:.0f} s, test acc per epoch {accs}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+", help="arch,width,lr,epochs,num_samples,scheduler")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (default 128 = 4 x 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    for spec in args.candidates:
        arch, width, lr, epochs, samples, sched = spec.split(",")
        run(arch, int(width), float(lr), int(epochs), int(samples), sched, args.batch_size, args.seed)


if __name__ == "__main__":
    main()
