"""SharpnessProbe on Lightning's demo ``LightningTransformer``: λ_max and trace against a dense Hessian, and the cost.

Part 1, exactness (``--skip-exact`` to leave out): the demo module (its ``forward(inputs, target)``,
``training_step`` and SGD optimizer; ``prepare_data``/``train_dataloader`` replaced by a local token stream from a
random sparse Markov chain, so there is something to learn) in a small configuration is trained for a few epochs
with ``SharpnessProbe(measures=["hessian_top", "hessian_trace"])`` at its defaults (Lanczos λ_max, Hutchinson trace
with 100 Rademacher probes) and the default loss (picked by the probe: cross-entropy of the demo's log-probabilities
= its own ``nll_loss``). After training, the exact Hessian of the demo's own loss (``F.nll_loss`` of the
flattened output, written here independently of the package) on the probe's batches is computed densely in
float64 with :func:`torch.autograd.functional.hessian`; its eigenvalues give λ_max and tr(H), and
``2 (‖H‖_F² − Σ H_ii²) / probes`` the variance of the Hutchinson estimate.

Part 2, cost per probe (``--skip-cost`` to leave out): a larger configuration (``--cost-*`` arguments; the demo's
own defaults are vocab 33278, ninp 200, nhid 200, 2 layers) and one probe subset of ``--probe-batches`` batches of
``--probe-batch-size`` sequences of ``--block`` tokens. Each measure is timed as the probe computes it
(:meth:`SharpnessProbe.measure`, best of ``--repeats``), with the number of Hessian-vector products, against one
training step (forward + backward + SGD step) on one batch of the same size.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.transformer_sharpness
    python -m benchmarks.transformer_sharpness --device cuda --cost-vocab 33278 --cost-ninp 200 --cost-nhid 200

Writes ``benchmarks/out/transformer_sharpness.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.demos import LightningTransformer, Transformer
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset

from benchmarks._landscape_common import OUT, machine, now
from lightning_autoopt.callbacks import SharpnessProbe
from lightning_autoopt.landscape import HVPOperator
from lightning_autoopt.landscape.loss import make_fixed_batches


class MarkovTokens(Dataset):
    """``(inputs, target)`` blocks (target = next token) of a stream from a random sparse Markov chain."""

    def __init__(self, vocab: int, block: int, num_blocks: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        successors = torch.randint(0, vocab, (vocab, 3), generator=g)  # each token has 3 likely successors
        stream = torch.empty(num_blocks * block + 1, dtype=torch.long)
        token = 0
        for i in range(len(stream)):
            stream[i] = token
            noisy = torch.rand((), generator=g) < 0.1
            pick = int(torch.randint(0, 3, (), generator=g))
            token = int(torch.randint(0, vocab, (), generator=g)) if noisy else int(successors[token, pick])
        self.stream, self.block, self.num_blocks = stream, block, num_blocks

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.block
        return self.stream[start : start + self.block], self.stream[start + 1 : start + self.block + 1]


class DemoTransformer(LightningTransformer):
    """The demo module with chosen dimensions and the local token stream instead of the WikiText2 download."""

    def __init__(
        self, vocab: int, ninp: int, nhid: int, nlayers: int, block: int, batch_size: int, num_blocks: int
    ) -> None:
        super().__init__(vocab_size=vocab)
        self.model = Transformer(vocab_size=vocab, ninp=ninp, nhead=2, nhid=nhid, nlayers=nlayers)
        self.data = MarkovTokens(vocab, block, num_blocks)
        self.batch_size = batch_size

    def prepare_data(self) -> None:  # the demo downloads WikiText2 here
        pass

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------ part 1: exactness
def dense_hessian(module: DemoTransformer, batches: list[Any]) -> torch.Tensor:
    """The exact Hessian (float64) of the demo's own loss, sample-weighted over ``batches``, at the module's weights."""
    model = module.model.double().eval()  # the demo's nn.Module; its forward is (inputs, target) -> log-probs
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for _, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    sizes = [int(b[0].shape[0]) for b in batches]
    weights = [s / sum(sizes) for s in sizes]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            n = math.prod(shape)
            params[name] = flat[offset : offset + n].view(shape)
            offset += n
        total = flat.new_zeros(())
        for (inputs, target), w in zip(batches, weights):
            mask = model.generate_square_subsequent_mask(inputs.shape[1]).to(flat.dtype)  # the demo builds it fp32
            logp = functional_call(model, params, (inputs, target), {"mask": mask})
            total = total + w * F.nll_loss(logp, target.reshape(-1))
        return total

    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return torch.autograd.functional.hessian(loss, theta, vectorize=True)


def exactness(args: argparse.Namespace, accelerator: str) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    module = DemoTransformer(args.vocab, args.ninp, args.nhid, args.nlayers, args.block, args.batch_size, 64)
    probe = SharpnessProbe(measures=["hessian_top", "hessian_trace"], max_batches=args.probe_batches, seed=args.seed)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
    )
    trainer.fit(module)
    last = probe.history[-1]
    assert probe.batches is not None
    batches = [tuple(t.cpu() for t in b) for b in probe.batches]  # the probe's own subset
    with torch.no_grad():
        train_loss = float(module.training_step(next(iter(module.train_dataloader())), 0))
    start = time.perf_counter()
    h = dense_hessian(module.cpu(), batches)
    dense_s = time.perf_counter() - start
    eig = torch.linalg.eigvalsh(h)
    fro_sq, diag_sq = float((h * h).sum()), float(torch.diagonal(h).pow(2).sum())
    se = math.sqrt(max(2.0 * (fro_sq - diag_sq), 0.0) / 100)
    return {
        "config": {k: getattr(args, k) for k in ("vocab", "ninp", "nhid", "nlayers", "block", "batch_size", "epochs")},
        "params": h.shape[0],
        "probe_samples": sum(int(b[0].shape[0]) for b in batches),
        "loss": describe(probe),
        "train_loss_end": train_loss,
        "probe_lambda_max": last["hessian_top"],
        "dense_lambda_max": float(eig.max()),
        "dense_lambda_min": float(eig.min()),
        "lambda_rel_err": abs(last["hessian_top"] - float(eig.max())) / abs(float(eig.max())),
        "probe_trace": last["hessian_trace"],
        "dense_trace": float(eig.sum()),
        "trace_se_100_probes": se,
        "trace_z": (last["hessian_trace"] - float(eig.sum())) / se if se > 0 else float("nan"),
        "dense_seconds": dense_s,
    }


def describe(probe: SharpnessProbe) -> str:
    return repr(probe.loss)


# ------------------------------------------------------------------------------------------------ part 2: cost
class CountingHVP:
    """Counts Hessian-vector products of every HVPOperator (patched in for the timing runs)."""

    count = 0

    @classmethod
    def install(cls) -> None:
        original = HVPOperator.matmat

        def matmat(self: HVPOperator, vectors: torch.Tensor) -> torch.Tensor:
            cls.count += int(vectors.shape[0])
            return original(self, vectors)

        HVPOperator.matmat = matmat  # type: ignore[method-assign]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cost(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    module = DemoTransformer(
        args.cost_vocab, args.cost_ninp, args.cost_nhid, args.cost_nlayers, args.block, args.probe_batch_size, 256
    ).to(device)
    batches = make_fixed_batches(module.data, args.probe_batches * args.probe_batch_size, args.probe_batch_size)
    batches = [tuple(t.to(device) for t in b) for b in batches]
    opt = torch.optim.SGD(module.parameters(), lr=0.1)

    def train_step() -> None:
        module.train()
        opt.zero_grad(set_to_none=True)
        module.training_step(batches[0], 0).backward()
        opt.step()

    for _ in range(2):
        train_step()  # warm-up (and moves the weights off the initialisation)
    step_times = []
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        train_step()
        sync(device)
        step_times.append(time.perf_counter() - start)
    step_s = min(step_times)
    CountingHVP.install()
    settings = {
        "hessian_top (Lanczos, defaults)": ("hessian_top", {}),
        "hessian_trace (100 probes, defaults)": ("hessian_trace", {}),
        "hessian_trace (20 probes)": ("hessian_trace", {"num_probes": 20}),
        "lpf (100 samples, defaults)": ("lpf", {}),
        "lpf (20 samples)": ("lpf", {"num_samples": 20}),
    }
    rows = []
    for label, (name, kwargs) in settings.items():
        probe = SharpnessProbe(measures=[name], measure_kwargs={name: kwargs} if kwargs else None)
        times, value, hvps = [], float("nan"), 0
        for _ in range(args.repeats):
            CountingHVP.count = 0
            sync(device)
            start = time.perf_counter()
            value = probe.measure(module, batches)[name]
            sync(device)
            times.append(time.perf_counter() - start)
            hvps = CountingHVP.count
        best = min(times)
        rows.append({"measure": label, "value": value, "hvps": hvps, "seconds": best, "train_steps": best / step_s})
    return {
        "config": {
            "vocab": args.cost_vocab,
            "ninp": args.cost_ninp,
            "nhid": args.cost_nhid,
            "nlayers": args.cost_nlayers,
            "block": args.block,
            "probe": f"{args.probe_batches} x {args.probe_batch_size} sequences",
        },
        "params": num_params(module),
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "train_step_seconds": step_s,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--ninp", type=int, default=8)
    parser.add_argument("--nhid", type=int, default=16)
    parser.add_argument("--nlayers", type=int, default=1)
    parser.add_argument("--block", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--probe-batches", type=int, default=4)
    parser.add_argument("--probe-batch-size", type=int, default=16)
    parser.add_argument("--cost-vocab", type=int, default=1000)
    parser.add_argument("--cost-ninp", type=int, default=64)
    parser.add_argument("--cost-nhid", type=int, default=64)
    parser.add_argument("--cost-nlayers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    result: dict[str, Any] = {"date": now(), "machine": machine(), "args": vars(args)}
    print(f"# SharpnessProbe on the demo LightningTransformer ({result['date']}; {result['machine']})")
    if not args.skip_exact:
        ex = exactness(args, "gpu" if device.type == "cuda" else "cpu")
        result["exactness"] = ex
        print(f"\n## Exactness: {ex['params']} parameters, {ex['probe_samples']} probe sequences, loss {ex['loss']}")
        print(f"train loss at the end {ex['train_loss_end']:.4f}; dense Hessian in {ex['dense_seconds']:.1f} s")
        print("| quantity | probe (fp32) | dense Hessian (fp64) | difference |")
        print("|---|---|---|---|")
        print(
            f"| λ_max | {ex['probe_lambda_max']:.6g} | {ex['dense_lambda_max']:.6g} | rel. {ex['lambda_rel_err']:.2e} |"
        )
        print(
            f"| trace | {ex['probe_trace']:.6g} | {ex['dense_trace']:.6g} | "
            f"{ex['trace_z']:+.2f} s.e. (s.e. of 100 probes {ex['trace_se_100_probes']:.3g}) |"
        )
        print(f"| λ_min | | {ex['dense_lambda_min']:.6g} | |")
    if not args.skip_cost:
        co = cost(args, device)
        result["cost"] = co
        print(f"\n## Cost per probe: {co['params']} parameters on {co['device']}, probe {co['config']['probe']}")
        print(f"one training step (fwd+bwd+SGD, one batch): {co['train_step_seconds'] * 1e3:.1f} ms")
        print("| measure | value | HVPs | seconds per probe | in training steps |")
        print("|---|---|---|---|---|")
        for r in co["rows"]:
            print(f"| {r['measure']} | {r['value']:.5g} | {r['hvps']} | {r['seconds']:.3f} | {r['train_steps']:.0f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    name = "transformer_sharpness" + ("_cuda" if device.type == "cuda" else "") + ".json"
    (OUT / name).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
