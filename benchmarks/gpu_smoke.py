"""GPU smoke test: every registered strategy on CUDA with NCCL, one bf16-mixed run, one resume; a pass/fail table.

Meant for a machine with at least one NVIDIA GPU (no test requires one). Every case runs in fresh processes (a
crash or a hang in one case cannot take the table down; ``--timeout`` per case), on ``Classifier(arch="cnn")`` and
MNIST-1D (2 000 samples, 8 steps per epoch, 2 epochs):

* ``ddp-1gpu``: plain Lightning DDP on one GPU (the GPU path of the model and the data).
* ``<name>-w1``: each local-update strategy at world size 1 must *refuse* with its "devices>=2" message (PASS =
  refused with that message).
* ``<name>-w2-nccl``: world size 2 with NCCL. With 2+ GPUs: ``devices=2`` (one GPU per process). With 1 GPU: two
  processes launched as two "nodes" that share ``cuda:0`` — NCCL normally refuses two ranks on one device
  ("Duplicate GPU detected"); the row records what this NCCL does.
* ``<name>-w2-gloo`` (1 GPU only): the same two processes on ``cuda:0`` with the gloo backend on CUDA tensors, the
  documented fallback when NCCL cannot share a GPU. gloo supports all_reduce/broadcast/all_gather of CUDA tensors
  (staged through host memory) but not point-to-point ``isend/irecv`` of CUDA tensors, so D-PSGD/AL-DSGD may fail
  here; the table says so.
* ``amp-bf16``: ``localsgd`` and ``diloco`` with ``precision="bf16-mixed"`` at world size 2 (NCCL with 2+ GPUs, else
  gloo on the shared GPU).
* ``resume``: ``diloco`` (it has outer optimizer state) fit 2 epochs vs fit 1 epoch + resume from the checkpoint for
  the second; PASS when the final replicas agree to 1e-5 (GPU kernels need not be bitwise deterministic).

A strategy case PASSes when fit finishes on every rank with finite weights on the expected device and at least one
communication round. ``--cpu`` runs the same matrix on CPU/gloo (a dry run of this script's logic: the w1, w2 and
resume paths; it is what the test suite exercises, on one strategy).

    python benchmarks/gpu_smoke.py                          # full matrix on the GPU(s); ~1 min per case
    python benchmarks/gpu_smoke.py --strategies lsgd,diloco --timeout 300
    python benchmarks/gpu_smoke.py --list                   # print the cases, run nothing
    python benchmarks/gpu_smoke.py --cpu --strategies localsgd --cases w1,w2,resume

Exit code: 0 when every case passed, 1 when one failed, 2 when CUDA is missing (without ``--cpu``) or an argument
is bad. Writes ``benchmarks/out/gpu_smoke.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
CASE_KINDS = ("ddp", "w1", "w2", "amp", "resume")
# small arguments so every strategy has rounds within 8 steps
STRATEGY_ARGS: dict[str, dict[str, Any]] = {
    "lsgd": {"period": 3, "pull_strength": 0.5},
    "easgd": {"period": 3},
    "localsgd": {"period": 3},
    "mgrawa": {"period": 3, "pull_strength": 0.5},
    "lgrawa": {"period": 3, "pull_strength": 0.5},
    "dpsgd": {"period": 3},
    "aldsgd": {"period": 3},
    "diloco": {"period": 3},
}


@dataclass
class Case:
    """One row of the table: what to run and how."""

    name: str
    kind: str
    strategy: str | None = None
    world: int = 1
    backend: str | None = None
    shared_gpu: bool = False
    precision: str = "32-true"
    expect_refusal: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _registered() -> list[str]:
    from lightning_autoopt.strategies import registered_strategies

    return sorted(n for n, c in registered_strategies().items() if c.__module__.startswith("lightning_autoopt."))


def plan(strategies: list[str], kinds: list[str], gpus: int, cpu: bool) -> list[Case]:
    """The cases to run for ``gpus`` visible GPUs (``cpu``: the CPU/gloo dry run)."""
    cases: list[Case] = []
    shared = not cpu and gpus < 2
    backends = ["gloo"] if cpu else (["nccl"] if gpus >= 2 else ["nccl", "gloo"])
    amp_backend = "gloo" if cpu or gpus < 2 else "nccl"
    if "ddp" in kinds:
        cases.append(Case("ddp-1" + ("cpu" if cpu else "gpu"), "ddp", backend=None if cpu else "nccl"))
    for name in strategies:
        if "w1" in kinds:
            cases.append(Case(f"{name}-w1", "w1", name, world=1, expect_refusal=True))
        if "w2" in kinds:
            for backend in backends:
                cases.append(Case(f"{name}-w2-{backend}", "w2", name, world=2, backend=backend, shared_gpu=shared))
    if "amp" in kinds:
        for name in [s for s in ("localsgd", "diloco") if s in strategies]:
            cases.append(
                Case(f"amp-bf16-{name}", "amp", name, 2, amp_backend, shared_gpu=shared, precision="bf16-mixed")
            )
    if "resume" in kinds and "diloco" in strategies:
        cases.append(Case("resume-diloco", "resume", "diloco", 2, amp_backend, shared_gpu=shared))
    return cases


# ----------------------------------------------------------------------------------------------- one process
def _fit_one(case: Case, cpu: bool, out: Path, max_epochs: int, ckpt_path: str | None, tag: str) -> None:
    """Fit in this process (one rank); the environment says which rank (LOCAL_RANK/NODE_RANK set by the parent)."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier
    from lightning_autoopt.strategies import registered_strategies

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    accelerator = "cpu" if cpu else "gpu"
    kwargs: dict[str, Any] = {}
    if case.kind == "ddp":
        strategy: Any = "ddp" if not cpu else "auto"
        devices: Any = 1
        num_nodes = 1
    else:
        assert case.strategy is not None
        cls = registered_strategies()[case.strategy]
        strategy = cls(start_method="popen", process_group_backend=case.backend, **STRATEGY_ARGS[case.strategy])
        if case.world >= 2 and (case.shared_gpu or cpu):  # one process per "node", all on device 0
            devices, num_nodes = 1, case.world
        else:
            devices, num_nodes = case.world, 1
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=case.precision,  # type: ignore[arg-type]
        max_epochs=max_epochs,
        limit_train_batches=8,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=str(out),
        callbacks=[ModelCheckpoint(dirpath=out / "ckpt", save_top_k=-1, every_n_epochs=1)],
        **kwargs,
    )

    class TrainedOn(pl.Callback):
        """The device the weights trained on (DDP-style teardown moves the module back to the CPU after fit)."""

        device = "unknown"

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            TrainedOn.device = str(next(pl_module.parameters()).device)

    trainer.callbacks.append(TrainedOn())
    model = Classifier(arch="cnn", lr=0.05, momentum=0.9)
    dm = MNIST1DDataModule(batch_size=32, num_samples=2000, seed=0, cache_dir=str(OUT / "cache"))
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    s = trainer.strategy
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])
    device = TrainedOn.device
    state = s.strategy_state_dict() if hasattr(s, "strategy_state_dict") else {}
    rank = trainer.global_rank
    torch.save(
        {
            "flat": flat,
            "device": device,
            "finite": bool(torch.isfinite(flat).all()),
            "rounds": int(state.get("num_rounds", 0)),
            "steps": trainer.global_step,
        },
        out / f"{tag}_rank{rank}.pt",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(case: Case, cpu: bool, out: Path, timeout: float, max_epochs: int, ckpt: str | None, tag: str) -> str:
    """Run one fit with ``case.world`` processes; returns '' on success, else the error text."""
    base = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(asdict(case)), "--out", str(out)]
    base += ["--max-epochs", str(max_epochs), "--tag", tag] + (["--cpu"] if cpu else [])
    base += ["--ckpt", ckpt] if ckpt else []
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keep the caller's
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pythonpath)
    external = case.world >= 2 and (case.shared_gpu or cpu)
    procs = []
    if external:  # we start every rank ourselves: one "node" per process
        port = str(_free_port())
        for rank in range(case.world):
            rank_env = dict(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank), LOCAL_RANK="0",
                            WORLD_SIZE=str(case.world), GLOO_SOCKET_IFNAME="lo")  # fmt: skip
            procs.append(subprocess.Popen(base, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    else:  # Lightning launches its own ranks (or the case is single-process)
        procs.append(subprocess.Popen(base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    logs = []
    failed = False
    for proc in procs:
        try:
            text, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            return f"timed out after {timeout:.0f} s"
        logs.append(text.decode(errors="replace"))
        failed |= proc.returncode != 0
    if failed:
        return _last_error("\n".join(logs))
    return ""


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i]
        if "Error" in ln or "error" in ln or "Exception" in ln:
            # NCCL's message ends in "Last error:" with the reason on the next line: keep both
            more = " ".join(lines[i + 1 : i + 3]) if ln.rstrip().endswith(":") else ""
            return f"{ln} {more}".strip()[:400]
    return (lines[-1] if lines else "failed without output")[:300]


def _check(case: Case, cpu: bool, out: Path, tag: str) -> str:
    import torch

    files = sorted(out.glob(f"{tag}_rank*.pt"))
    world = case.world if case.kind != "ddp" else 1
    if len(files) != world:
        return f"{len(files)} of {world} ranks wrote a result"
    results = [torch.load(f, weights_only=False) for f in files]
    want = "cpu" if cpu else "cuda"
    for r in results:
        if not r["finite"]:
            return "non-finite weights"
        if not r["device"].startswith(want):
            return f"weights on {r['device']}, expected {want}"
        if case.kind != "ddp" and r["rounds"] < 1:
            return "no communication round ran"
    return ""


def run_case(case: Case, cpu: bool, timeout: float) -> tuple[bool, str, float]:
    """Run one case; returns (passed, detail, seconds)."""
    out = OUT / "gpu_smoke" / case.name
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    if case.expect_refusal:
        err = _launch(case, cpu, out, timeout, 1, None, "w1")
        ok = "devices>=2" in err
        detail = ("refused: " + err) if ok else f"expected a 'devices>=2' refusal, got: {err or 'success'}"
        return ok, detail, time.perf_counter() - start
    if case.kind == "resume":
        err = _launch(case, cpu, out / "full", timeout, 2, None, "full")
        err = err or _launch(case, cpu, out / "part", timeout, 1, None, "part")
        ckpt = next(iter(sorted((out / "part" / "ckpt").glob("epoch=0-*.ckpt"))), None)
        if not err and ckpt is None:
            err = "no checkpoint after epoch 1"
        err = err or _launch(case, cpu, out / "resumed", timeout, 2, str(ckpt), "resumed")
        if not err:
            import torch

            full = [torch.load(f, weights_only=False) for f in sorted((out / "full").glob("full_rank*.pt"))]
            res = [torch.load(f, weights_only=False) for f in sorted((out / "resumed").glob("resumed_rank*.pt"))]
            if len(full) != len(res) or not full:
                err = "missing results"
            else:
                gap = max(float((a["flat"] - b["flat"]).abs().max()) for a, b in zip(full, res))
                err = "" if gap <= 1e-5 else f"resumed replicas differ by {gap:.2e}"
        return not err, err or "resumed == uninterrupted", time.perf_counter() - start
    err = _launch(case, cpu, out, timeout, 2, None, "fit")
    err = err or _check(case, cpu, out, "fit")
    return not err, err or "fit ok", time.perf_counter() - start


# ----------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_smoke.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", default="all", help="comma-separated registered names (default: all)")
    parser.add_argument("--cases", default=",".join(CASE_KINDS), help=f"kinds to run, from {','.join(CASE_KINDS)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case (default 300)")
    parser.add_argument("--cpu", action="store_true", help="dry run of the same cases on CPU/gloo")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one rank of one case
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-epochs", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="fit", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
    """Parse and validate; returns ``(args, strategies, kinds)`` (exits with code 2 on a bad argument)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.one is not None:
        return args, [], []
    known = _registered()
    strategies = known if args.strategies == "all" else [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in known]
    if unknown or not strategies:
        parser.error(f"--strategies: unknown {unknown or strategies}; registered: {','.join(known)}")
    missing_args = [s for s in strategies if s not in STRATEGY_ARGS]
    if missing_args:
        parser.error(f"--strategies: no smoke arguments for {missing_args}; add them to STRATEGY_ARGS")
    kinds = [k.strip() for k in args.cases.split(",") if k.strip()]
    bad = [k for k in kinds if k not in CASE_KINDS]
    if bad or not kinds:
        parser.error(f"--cases: unknown {bad or kinds}; choose from {','.join(CASE_KINDS)}")
    if not args.timeout > 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    return args, strategies, kinds


def main(argv: list[str] | None = None) -> int:
    args, strategies, kinds = parse_args(sys.argv[1:] if argv is None else argv)
    if args.one is not None:
        _fit_one(Case(**json.loads(args.one)), args.cpu, Path(args.out), args.max_epochs, args.ckpt, args.tag)
        return 0
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0 and not args.cpu and not args.list:
        sys.stderr.write(
            "gpu_smoke: CUDA is not available (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}); this script checks the GPU path. Run it on a GPU machine, or use --cpu for a "
            "dry run of the same cases on CPU/gloo.\n"
        )
        return 2
    cases = plan(strategies, kinds, gpus, args.cpu)
    if args.list:
        for c in cases:
            print(f"{c.name:<28} world={c.world} backend={c.backend or '-'} precision={c.precision}")
        return 0
    where = "CPU (dry run)" if args.cpu else f"{gpus} GPU(s): {torch.cuda.get_device_name(0)}"
    print(f"gpu_smoke on {where}, torch {torch.__version__}, {len(cases)} cases", flush=True)
    rows = []
    for case in cases:
        ok, detail, seconds = run_case(case, args.cpu, args.timeout)
        rows.append({"case": case.name, "pass": ok, "detail": detail, "seconds": round(seconds, 1)})
        print(f"{'PASS' if ok else 'FAIL'}  {case.name:<28} {seconds:6.1f}s  {detail}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_smoke.json").write_text(json.dumps({"where": where, "rows": rows}, indent=1))
    print("\n| case | result | seconds | detail |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {'PASS' if r['pass'] else 'FAIL'} | {r['seconds']} | {r['detail']} |")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
