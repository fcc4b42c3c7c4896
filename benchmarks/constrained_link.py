"""Time to accuracy on a constrained network: every named strategy, DDP and no-communication, on emulated links.

One command, one table per link setting (issue 13, section 3). For every setting an emulated cluster is built
(:mod:`lightning_autoopt.cluster`: network namespaces, ``tc tbf`` rate limits) and ONE ``torchrun`` job runs in it
(``--nnodes`` = the setting's hosts); its workers train every method x seed one after the other in the same processes,
side by side, so the methods of one setting share the machine's conditions and the start-up is paid once.

Settings (``--links``, ``NODESxPER_NODE@RATE``): ``1x4@1gbit`` and ``1x4@100mbit`` = one host whose four workers share
a shaped loopback (every byte between workers crosses it); ``2x2@200mbit`` = two hosts x two workers, a shaped veth
link between the hosts and fast loopback inside each (``torchrun --nnodes=2`` through ``EmulatedCluster``).

Every run: the same model (default the 1-D CNN ``Classifier(arch="cnn", width=192)``, 0.59 M parameters), MNIST-1D
(5 000 samples: 3 500 train / 1 000 test), per-worker batch 32, SGD lr 0.05 momentum 0.9 wd 5e-4, a cosine schedule
over the epoch budget, the same seeds (model init and data order) and epochs. Per epoch the worker records

* wall time: seconds of the epoch's training on the slowest rank (a barrier starts every epoch; evaluation excluded);
* accuracy: the full test split on the strategy's policy weights (``strategy.policy_weights()``; DDP: its model),
  each rank scoring a quarter of it;
* self-counted bytes: ``strategy.bytes_sent_total`` summed over ranks (the ``dist/bytes_sent`` convention: a
  collective over ``n`` fp32 values counts ``4 n`` bytes per rank; DDP: one all-reduce of ``4 x params`` per step);
* kernel-counted bytes: ``read_link_bytes()`` of the cluster (``tc -s qdisc``; one host: every loopback byte; two
  hosts: both directions of the inter-host link) over the timed epochs only; on several hosts also every interface
  (the link plus each host's loopback, ``read_loopback_bytes()``);
* wire bytes: the strategies' ``wire_bytes_total`` (``dist/wire_bytes_sent_total``: what gloo's algorithms put on
  the network; DDP: a ring all-reduce of ``4 x params`` per step, ``2 (w - 1) / w`` of it per rank) summed over ranks.

The links are shaped only while an epoch is timed: between epochs (evaluation, the start and end of every ``fit``)
rank 0 raises the rate to ``--eval-rate`` (``tc qdisc change``, counters kept) so the untimed collectives do not
cost hours; ``--eval-rate same`` keeps the link shaped throughout.

Methods (``--methods``; period ``P`` = ``--period``, consensus diagnostic off everywhere): ``ddp``; ``no-comm``
(local SGD with period 10**9: the no-communication limit; evaluated on the average of the replicas); ``localsgd``,
``easgd`` (β 0.43), ``lsgd`` (λ 0.5), ``lsgd-ml`` (multi-leader: one group per host, local period P/4; multi-host
settings only), ``mgrawa``/``lgrawa`` (λ 0.5), ``dpsgd`` (ring), ``aldsgd`` (ring <-> random ring), ``diloco``
(Nesterov outer lr 0.7, μ 0.9), all at period P; ``localsgd-overlap`` and ``diloco-overlap`` (``overlap=True``: the
round's average runs asynchronously and is applied one period later). Opt-in: ``dpsgd-defaults``/``aldsgd-defaults``
(constructor defaults: period 4, diagnostic off).

Output (``--out-dir``, default ``benchmarks/out/constrained_link``): ``<setting>.jsonl`` (one line per run, written as
it finishes; ``--resume`` skips the runs already there), ``constrained_link.json`` (runs + summary),
``constrained_link.md`` (the tables), and ``constrained_link_<setting>.png`` (accuracy vs wall time; full runs write
them to ``docs/img``). Time to target = first epoch at which the seed-mean accuracy reaches DDP's final accuracy
(seed mean) − 0.5 points, at the seed-mean cumulative wall time (see ``benchmarks/_time_to_accuracy.py``).

Needs root (network namespaces, tc); refuses with the reason otherwise. From the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.constrained_link               # everything (see estimates)
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.constrained_link --smoke       # ~1-2 min pipeline check
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.constrained_link --links 1x4@1gbit --seeds 0 --epochs 4 \\
        --methods ddp no-comm localsgd lsgd diloco
    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.constrained_link --plan        # print the plan and estimates
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import _time_to_accuracy as T

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "out" / "constrained_link"
DOCS_IMG = ROOT / "docs" / "img"
DEFAULT_LINKS = ["1x4@1gbit", "1x4@100mbit", "2x2@200mbit"]
_SPEC = re.compile(r"^(\d+)x(\d+)@(\S+)$")


# --------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """One emulated network: ``nodes`` hosts x ``per_node`` workers, every shaped link at ``link``."""

    nodes: int
    per_node: int
    link: str

    @property
    def spec(self) -> str:
        return f"{self.nodes}x{self.per_node}@{self.link}"

    @property
    def tag(self) -> str:
        """File-name form of :attr:`spec`."""
        return f"{self.nodes}x{self.per_node}-{self.link}"

    @property
    def world(self) -> int:
        return self.nodes * self.per_node

    @property
    def title(self) -> str:
        if self.nodes == 1:
            return f"one host, {self.per_node} workers sharing a {self.link} loopback"
        return f"{self.nodes} hosts x {self.per_node} workers, {self.link} between hosts"


def parse_setting(spec: str) -> Setting:
    """``"2x2@200mbit"`` -> ``Setting(2, 2, "200mbit")``.

    Raises:
        ValueError: If ``spec`` is not ``NODESxPER_NODE@RATE`` with a tc rate and at least 2 workers.
    """
    from lightning_autoopt.cluster import parse_rate

    match = _SPEC.match(spec)
    if match is None:
        raise ValueError(f"--links: expected NODESxPER_NODE@RATE such as 1x4@100mbit or 2x2@200mbit, got {spec!r}.")
    nodes, per_node, link = int(match.group(1)), int(match.group(2)), match.group(3).lower()
    parse_rate(link)
    if nodes < 1 or per_node < 1 or nodes * per_node < 2:
        raise ValueError(f"--links: {spec!r} needs at least 2 workers in all.")
    return Setting(nodes, per_node, link)


# --------------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """A benchmarked configuration: a strategy class of :mod:`lightning_autoopt.strategies` (or ``"ddp"``)."""

    cls_name: str
    kwargs: dict[str, Any]
    label: str
    multi_node_only: bool = False
    opt_in: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the benchmark's ``Classifier`` arguments (an ablation's schedule or architecture)."""
    autodrop: bool = False
    """Train with :class:`~lightning_autoopt.callbacks.AutoDrop` at its defaults (constant LR otherwise)."""


_CONSTANT = {"scheduler": None}
_BN_MODEL = {"arch": "resnet", "width": 32, "depth": 1}


def ablations(period: int) -> dict[str, Method]:
    """Section 4's ablation rows (opt-in): the LR schedule, AutoDrop driving the drop, pull/period, BatchNorm.

    * ``*-const``: no LR decay (the base LR throughout) instead of the shared cosine schedule;
    * ``*-autodrop``: constant LR with :class:`~lightning_autoopt.callbacks.AutoDrop` (defaults) driving the drops;
    * ``easgd-b0.9`` / ``easgd-p4``: EASGD with a stronger pull (β 0.9) or a shorter period (4);
    * ``*-bn``: a ResNet with BatchNorm (``arch="resnet"``, width 32, one block per stage) instead of the CNN;
      ``*-bn-re``: the same with ``bn_recompute_batches=8`` (the evaluated average's statistics re-estimated).
    """
    core, p = _core_methods(period), period
    out: dict[str, Method] = {}
    for name in ("ddp", "localsgd", "lsgd", "easgd"):
        m = core[name]
        out[f"{name}-const"] = replace(m, label=f"{m.label}, constant LR", opt_in=True, model=_CONSTANT)
        out[f"{name}-autodrop"] = replace(m, label=f"{m.label}, AutoDrop", opt_in=True, model=_CONSTANT, autodrop=True)
    easgd = core["easgd"]
    out["easgd-b0.9"] = replace(
        easgd, kwargs={**easgd.kwargs, "elastic_strength": 0.9}, label=f"EASGD p={p} β=0.9", opt_in=True
    )
    out["easgd-p4"] = replace(easgd, kwargs={**easgd.kwargs, "period": 4}, label="EASGD p=4 β=0.43", opt_in=True)
    for name in ("ddp", "localsgd", "easgd"):
        m = replace(core[name], label=f"{core[name].label}, ResNet-BN", opt_in=True, model=_BN_MODEL)
        out[f"{name}-bn"] = m
        if name != "ddp":
            kwargs = {**m.kwargs, "bn_recompute_batches": 8}
            out[f"{name}-bn-re"] = replace(m, kwargs=kwargs, label=f"{m.label}, BN re-estimated")
    return out


def methods(period: int) -> dict[str, Method]:
    """Every benchmarked method at period ``period`` (name -> :class:`Method`), in table order."""
    return {**_core_methods(period), **ablations(period)}


def _core_methods(period: int) -> dict[str, Method]:
    """The strategies, DDP and no-comm, without the ablation rows."""
    p, off = period, {"consensus_every": 0}
    return {
        "ddp": Method("ddp", {}, "DDP"),
        "no-comm": Method("LocalSGDStrategy", {"period": 10**9, **off}, "no-comm (limit)"),
        "localsgd": Method("LocalSGDStrategy", {"period": p, **off}, f"LocalSGD p={p}"),
        "easgd": Method("EASGDStrategy", {"period": p, "elastic_strength": 0.43, **off}, f"EASGD p={p} β=0.43"),
        "lsgd": Method("LSGDStrategy", {"period": p, "pull_strength": 0.5, **off}, f"LSGD p={p} λ=0.5"),
        "lsgd-ml": Method(
            "LSGDStrategy",
            {"period": p, "pull_strength": 0.5, "local_period": max(p // 4, 1), "local_pull_strength": 0.5, **off},
            f"LSGD multi-leader p={p}/{max(p // 4, 1)} λ=0.5",
            multi_node_only=True,
        ),
        "mgrawa": Method(
            "GRAWAStrategy", {"level": "model", "period": p, "pull_strength": 0.5, **off}, f"MGRAWA p={p} λ=0.5"
        ),
        "lgrawa": Method(
            "GRAWAStrategy", {"level": "layer", "period": p, "pull_strength": 0.5, **off}, f"LGRAWA p={p} λ=0.5"
        ),
        "dpsgd": Method("DPSGDStrategy", {"graph": "ring", "period": p, **off}, f"D-PSGD ring p={p}"),
        "aldsgd": Method("ALDSGDStrategy", {"graph": "ring", "period": p, **off}, f"AL-DSGD ring↔random ring p={p}"),
        "diloco": Method("DiLoCoStrategy", {"period": p, **off}, f"DiLoCo p={p}"),
        "localsgd-overlap": Method(
            "LocalSGDStrategy", {"period": p, "overlap": True, **off}, f"LocalSGD p={p}, overlapped"
        ),
        "diloco-overlap": Method("DiLoCoStrategy", {"period": p, "overlap": True, **off}, f"DiLoCo p={p}, overlapped"),
        "dpsgd-defaults": Method("DPSGDStrategy", {}, "D-PSGD (defaults)", opt_in=True),
        "aldsgd-defaults": Method("ALDSGDStrategy", {}, "AL-DSGD (defaults)", opt_in=True),
    }


def select_methods(names: list[str] | None, period: int, setting: Setting) -> dict[str, Method]:
    """The methods ``names`` selects (``None``: every method that is not opt-in) that apply to ``setting``.

    Raises:
        ValueError: On an unknown method name.
    """
    table = methods(period)
    unknown = [n for n in names or [] if n not in table]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {list(table)}.")
    chosen = {n: m for n, m in table.items() if (n in names if names else not m.opt_in)}
    return {n: m for n, m in chosen.items() if setting.nodes > 1 or not m.multi_node_only}


# --------------------------------------------------------------------------------------------------- estimates
# Measured on dev-2c (2 cores shared with other jobs, 4 gloo workers; benchmarks/step_cost.py and the validation run
# recorded in RESULTS.md): compute step = forward + backward + SGD of one worker while 4 share 2 cores.
_STEP_S = {"cnn": 0.085 / (192**2 * 32), "mlp": 0.0194 / (256**2 * 32)}  # seconds per (width^2 x batch)
_STEP_OVERHEAD_S = 0.015  # Lightning's per-step hooks and logging (validation run: 100 ms per no-comm step)
_EPOCH_OVERHEAD_S = 0.4  # barriers, rate changes, sharded evaluation (link fast), stats
_FIT_OVERHEAD_S = 1.5  # Trainer, setup, initial broadcast, teardown (link fast)
_JOB_OVERHEAD_S = 30.0  # namespaces, torchrun start-up, imports, warm-up fits


def _round_factor(name: str, setting: Setting) -> float:
    """Bottleneck-link time of one round relative to one all-reduce of the model (gloo wire model)."""
    from lightning_autoopt.strategies import _wire

    w, s = setting.world, 1_000_000
    ring = _wire.link_payload_bytes("all_reduce", s, setting.nodes, setting.per_node)
    if name in ("no-comm",):
        return 0.0
    if name.endswith("-overlap"):  # hidden behind the next period's compute while it fits there
        return 0.2
    if name.startswith("lsgd"):  # leader broadcast (tree); on several hosts it goes one way
        tree = _wire.link_payload_bytes("broadcast", s, setting.nodes, setting.per_node)
        return tree / ring if setting.nodes == 1 else 2 * tree / ring
    if name.startswith(("dpsgd", "aldsgd")):  # ring gossip: every rank sends the model to both neighbours
        return w / (w - 1) if w > 2 else 0.5
    return 1.0


def estimate_seconds(setting: Setting, names: list[str], args: argparse.Namespace, n_params: int) -> float:
    """Rough wall time of one setting: compute + link time per step, per-round traffic, overheads."""
    from lightning_autoopt.cluster import parse_rate
    from lightning_autoopt.strategies import _wire

    train = round(0.7 * args.num_samples)
    steps = math.ceil(math.ceil(train / setting.world) / args.batch_size)
    compute = _STEP_S[args.arch] * args.width**2 * args.batch_size + _STEP_OVERHEAD_S
    directions = 1 if setting.nodes == 1 else 2
    link_bytes = _wire.predicted_link_bytes("all_reduce", 4 * n_params, setting.nodes, setting.per_node)
    allreduce = link_bytes / directions * 8 / parse_rate(setting.link)
    table = methods(args.period)
    per_seed = 0.0
    for name in names:
        kwargs = table[name].kwargs
        if name == "ddp":
            step = compute + allreduce
        else:
            period = kwargs.get("period", 1)
            step = compute + _round_factor(name, setting) * allreduce / period
        per_seed += args.epochs * (steps * step + _EPOCH_OVERHEAD_S) + _FIT_OVERHEAD_S
    return len(args.seeds) * per_seed + _JOB_OVERHEAD_S


def count_parameters(args: argparse.Namespace) -> int:
    """Parameters of the benchmarked model."""
    from lightning_autoopt.models import Classifier

    return sum(p.numel() for p in Classifier(arch=args.arch, width=args.width).parameters())


def plan_text(args: argparse.Namespace) -> tuple[str, float]:
    """The settings, their methods and estimated wall times; and the total in seconds."""
    n_params = count_parameters(args)
    lines, total = [], 0.0
    for spec in args.links:
        setting = parse_setting(spec)
        names = list(select_methods(args.methods, args.period, setting))
        est = estimate_seconds(setting, names, args, n_params)
        total += est
        lines.append(f"  {setting.spec:<14} ~{est / 60:5.0f} min  ({len(names)} methods x {len(args.seeds)} seeds): "
                     f"{' '.join(names)}")  # fmt: skip
    head = (f"model {args.arch} width {args.width} ({n_params / 1e6:.2f} M parameters), per-worker batch "
            f"{args.batch_size}, {args.epochs} epochs, period {args.period}, seeds {args.seeds}")  # fmt: skip
    return head + "\n" + "\n".join(lines) + f"\n  total ~{total / 3600:.1f} h (estimate)", total


# --------------------------------------------------------------------------------------------------- worker
def _worker(config_path: str, spec: str) -> None:  # noqa: C901 (one linear procedure)
    import logging
    import warnings

    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist

    from benchmarks import _harness as H
    from lightning_autoopt.callbacks import AutoDrop
    from lightning_autoopt.cluster import read_link_bytes, read_loopback_bytes, set_link_rate
    from lightning_autoopt.data import MNIST1DDataModule
    from lightning_autoopt.models import Classifier
    from lightning_autoopt.strategies import LocalUpdateStrategy, _wire

    warnings.filterwarnings(
        "ignore", message=r".*(number of training batches|does not have many workers|treespec, LeafSpec).*"
    )
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    args = argparse.Namespace(**json.loads(Path(config_path).read_text()))
    setting = parse_setting(spec)
    dist.init_process_group("gloo")  # ours, before any Trainer: the strategies never own (or destroy) it
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == setting.world, (world, setting)
    out = Path(args.out_dir) / f"{setting.tag}.jsonl"
    done = set()
    if out.exists():
        done = {(r["method"], r["seed"]) for r in map(json.loads, out.read_text().splitlines()) if r}
    dist.barrier()  # every rank has read the file before rank 0 appends to it
    shaped = args.eval_rate == "same"

    def fast() -> None:
        if not shaped and rank == 0:
            set_link_rate(args.eval_rate)

    def kernel_sent() -> tuple[int, int]:
        """(shaped links, every interface the workers use: the links plus, on several hosts, each loopback)."""
        links = sum(v.sent for v in read_link_bytes().values())
        return links, links + (sum(read_loopback_bytes().values()) if setting.nodes > 1 else 0)

    class EpochProbe(pl.Callback):
        """Times each epoch between barriers with the link shaped; then (link fast) evaluates and gathers stats."""

        def __init__(self, test_x: torch.Tensor, test_y: torch.Tensor, n_params: int) -> None:
            self.x, self.y, self.n_params = test_x, test_y, n_params
            self.rows: list[dict[str, Any]] = []
            self.kernel = 0
            self.kernel_all = 0
            self.k0 = (0, 0)
            self.t0 = 0.0

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            dist.barrier()
            if rank == 0:
                if not shaped:
                    set_link_rate(None)  # the cluster's rate
                self.k0 = kernel_sent()
            dist.barrier()
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seconds = time.perf_counter() - self.t0
            dist.barrier()
            if rank == 0:
                k1 = kernel_sent()
                self.kernel += k1[0] - self.k0[0]
                self.kernel_all += k1[1] - self.k0[1]
            fast()
            dist.barrier()
            strategy = trainer.strategy
            if isinstance(strategy, LocalUpdateStrategy):
                assert strategy.eval_policy != "local", "sharded evaluation needs identical weights on every rank"
                with strategy.policy_weights():  # a collective: every rank
                    acc = H.sharded_accuracy(pl_module, self.x, self.y, rank, world)
                mine = [
                    strategy.bytes_sent_total,
                    strategy.diagnostic_bytes_total,
                    strategy.num_rounds,
                    strategy.wire_bytes_total,
                ]
            else:  # DDP: one all-reduce of the fp32 gradients per step (the dist/bytes_sent convention)
                acc = H.sharded_accuracy(pl_module, self.x, self.y, rank, world)
                payload = 4 * self.n_params * trainer.global_step
                wire = _wire.rank_wire_bytes("all_reduce", payload, world, rank)  # gloo's ring
                mine = [payload, 0, trainer.global_step, wire]
            gathered = [torch.zeros(5, dtype=torch.float64) for _ in range(world)]
            dist.all_gather(gathered, torch.tensor([seconds, *mine], dtype=torch.float64))
            table = torch.stack(gathered)
            self.rows.append(
                {
                    "epoch": trainer.current_epoch + 1,
                    "steps": trainer.global_step,
                    "rounds": int(table[0, 3]),
                    "seconds": float(table[:, 0].max()),
                    "seconds_per_rank": table[:, 0].tolist(),
                    "acc": acc,
                    "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
                    "self_bytes_rank0": int(table[0, 1]),
                    "self_bytes_sum": int(table[:, 1].sum()),
                    "diag_bytes_sum": int(table[:, 2].sum()),
                    "wire_bytes_sum": float(table[:, 4].sum()),
                    "kernel_bytes": self.kernel,
                    "kernel_all_bytes": self.kernel_all,
                }
            )

    def data() -> MNIST1DDataModule:
        return MNIST1DDataModule(
            batch_size=args.batch_size, num_samples=args.num_samples, seed=0, cache_dir=args.cache_dir
        )

    def model(**overrides: Any) -> Classifier:
        options: dict[str, Any] = dict(arch=args.arch, width=args.width, lr=args.lr, momentum=0.9, weight_decay=5e-4,
                                       scheduler=None if args.scheduler == "none" else args.scheduler)  # fmt: skip
        return Classifier(**{**options, **overrides})

    fast()
    # warm-up (untimed, not recorded): the first fit of a process pays for lazy imports, gloo pairs and allocators
    for strategy in ("ddp", H.build_strategy("LocalSGDStrategy", {"period": 2, "consensus_every": 0})):
        pl.seed_everything(0, verbose=False)
        trainer = H.make_trainer(setting.per_node, strategy, 1, [], Path(args.out_dir) / "runs",
                                 num_nodes=setting.nodes, limit_train_batches=4)  # fmt: skip
        trainer.fit(model(), datamodule=data())
    fast()
    for seed in args.seeds:
        for name, method in select_methods(args.methods, args.period, setting).items():
            if (name, seed) in done:
                continue
            pl.seed_everything(seed, workers=True, verbose=False)
            dm = data()
            dm.setup("test")
            assert dm.test_set is not None
            test_x, test_y = dm.test_set.tensors
            module = model(**method.model)
            n_params = sum(p.numel() for p in module.parameters())
            probe = EpochProbe(test_x, test_y, n_params)
            strategy = H.build_strategy(method.cls_name, method.kwargs)
            callbacks: list[Any] = [probe] + ([AutoDrop()] if method.autodrop else [])
            trainer = H.make_trainer(setting.per_node, strategy, args.epochs, callbacks, Path(args.out_dir) / "runs",
                                     num_nodes=setting.nodes)  # fmt: skip
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=dm)  # the last epoch's end left the link fast: it stays so between fits
            if rank == 0:
                row = {
                    "setting": setting.spec, "method": name, "label": method.label, "seed": seed,
                    "class": method.cls_name, "kwargs": method.kwargs, "n_params": n_params,
                    "model": method.model, "autodrop": method.autodrop,
                    "nodes": setting.nodes, "per_node": setting.per_node, "link": setting.link,
                    "arch": args.arch, "width": args.width, "batch_size": args.batch_size, "period": args.period,
                    "epochs": args.epochs, "fit_seconds": time.perf_counter() - t0, "curve": probe.rows,
                }  # fmt: skip
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                last = probe.rows[-1]
                train_s = sum(r["seconds"] for r in probe.rows)
                print(f"[{setting.spec}] {name} seed {seed}: acc {100 * last['acc']:.2f} %, train {train_s:.1f} s "
                      f"(fit {row['fit_seconds']:.1f} s), kernel {last['kernel_bytes'] / 1e6:.1f} MB, self "
                      f"{last['self_bytes_sum'] / 1e6:.1f} MB", flush=True)  # fmt: skip
            dist.barrier()
    if rank == 0 and not shaped:
        set_link_rate(None)
    dist.barrier()
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------- summary
def load_runs(out_dir: Path, specs: list[str]) -> list[T.Run]:
    """Every run recorded for ``specs`` under ``out_dir`` (settings in the order given)."""
    runs = []
    for spec in specs:
        path = out_dir / f"{parse_setting(spec).tag}.jsonl"
        if path.exists():
            runs += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return runs


def summarize(args: argparse.Namespace) -> str:
    """Tables (printed and written), the summary JSON and one plot per setting."""
    out_dir = Path(args.out_dir)
    runs = load_runs(out_dir, args.links)
    order = list(methods(args.period))
    parts, summary = [], {}
    for spec in args.links:
        setting = parse_setting(spec)
        mine = sorted((r for r in runs if r["setting"] == setting.spec),
                      key=lambda r: (order.index(r["method"]) if r["method"] in order else 99, r["seed"]))  # fmt: skip
        if not mine:
            parts.append(f"**{setting.spec}**: no runs recorded in {out_dir}.")
            continue
        extra = ablations(int(mine[0]["period"]))
        ablated = [r for r in mine if r["method"] in extra]
        mine = [r for r in mine if r["method"] not in extra]  # the time-to-accuracy table and plot: the methods
        if not mine:
            parts.append(f"**{setting.spec}**: only ablation runs recorded.")
            continue
        target, rows = T.summarize_setting(mine)
        parts.append(T.markdown_table(f"{setting.spec} ({setting.title})", target, rows))
        parts.append(T.step_costs(rows, int(mine[0]["period"])))
        if ablated:
            names = ["ddp", "localsgd", "lsgd", "easgd", *[n for n in extra if any(r["method"] == n for r in ablated)]]
            parts.append(f"**{setting.spec} ablations** (section 4: final accuracy at equal epochs)\n\n"
                         + T.ablation_table(mine + ablated, names))  # fmt: skip
        summary[setting.spec] = {"target": target, "rows": [vars(r) for r in rows]}
        first, seeds = mine[0], sorted({r["seed"] for r in mine})
        title = (f"{setting.title}\nMNIST-1D, {first['arch']} width {first['width']} ({first['n_params'] / 1e6:.2f} M "
                 f"params), per-worker batch {first['batch_size']}, {len(first['curve'])} epochs, period "
                 f"{first['period']}, mean of {len(seeds)} seed(s)")  # fmt: skip
        T.plot_setting(setting.spec, mine, target, Path(args.plot_dir) / f"constrained_link_{setting.tag}.png", title)
    same = T.ddp_curves_identical(runs)
    if same:
        parts.append("DDP accuracy curves identical across settings (per seed): "
                     + ", ".join(f"seed {s}: {'yes' if v else 'NO'}" for s, v in sorted(same.items())))  # fmt: skip
    text = "\n\n".join(parts)
    (out_dir / "constrained_link.md").write_text(text + "\n")
    (out_dir / "constrained_link.json").write_text(json.dumps({"args": vars(args), "summary": summary, "runs": runs}))
    return text


# --------------------------------------------------------------------------------------------------- command line
_SMOKE = {
    "links": ["1x4@1gbit", "2x2@200mbit"],
    "methods": ["ddp", "no-comm", "localsgd", "lsgd-ml", "diloco"],
    "seeds": [0],
    "epochs": 2,
    "width": 64,
    "num_samples": 1000,
    "period": 2,
    "out_dir": str(HERE / "out" / "constrained_link_smoke"),
}


def build_parser(epilog: str = "") -> argparse.ArgumentParser:
    """The command-line options (``epilog``: the per-setting estimates shown by ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.constrained_link",
        description=__doc__,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--links", nargs="+", default=DEFAULT_LINKS, help="settings NODESxPER_NODE@RATE")
    parser.add_argument("--methods", nargs="+", default=None, help="method names (default: all but the opt-in ones)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="epoch budget of every method (default 20)")
    parser.add_argument("--arch", choices=["cnn", "mlp"], default="cnn", help="Classifier arch (default cnn)")
    parser.add_argument("--width", type=int, default=192, help="model width (default 192: CNN, 0.59 M params)")
    parser.add_argument("--batch-size", type=int, default=32, help="per worker (default 32)")
    parser.add_argument("--period", type=int, default=16, help="period of every periodic method (default 16)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--scheduler", choices=["cosine", "none"], default="cosine", help="LR schedule (per epoch)")
    parser.add_argument("--num-samples", type=int, default=5000, help="MNIST-1D samples (70 %% train, 20 %% test)")
    parser.add_argument("--eval-rate", default="20gbit", help="link rate between timed epochs ('same': keep shaped)")
    parser.add_argument("--out-dir", default=str(DEFAULT_OUT))
    parser.add_argument("--plot-dir", default=None, help="where the PNGs go (default docs/img; --smoke: --out-dir)")
    parser.add_argument("--smoke", action="store_true", help="tiny pipeline check (~1-2 min; see below)")
    parser.add_argument("--resume", action="store_true", help="keep recorded runs and skip them")
    parser.add_argument("--plan", action="store_true", help="print the plan and estimated wall times, then exit")
    parser.add_argument("--summarize-only", action="store_true", help="tables and plots from the recorded runs")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "SETTING"), help=argparse.SUPPRESS)
    return parser


def _help_epilog() -> str:
    defaults = build_parser().parse_args([])
    text, _ = plan_text(defaults)
    smoke = build_parser().parse_args(["--smoke"])
    for key, value in _SMOKE.items():
        setattr(smoke, key, value)
    smoke_text, smoke_total = plan_text(smoke)
    return (
        "estimated wall time per setting, default options (dev-2c: 2 cores, measured per-step costs; a busy machine "
        "is slower):\n" + text + f"\n--smoke: ~{smoke_total / 60:.0f} min (" + ", ".join(_SMOKE["links"]) + ")"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; ``--smoke`` supplies its own defaults, options given explicitly still win.

    Raises:
        SystemExit: On a bad option (with the usage line and the reason).
    """
    wants_help = any(a in ("-h", "--help") for a in argv)
    parser = build_parser(_help_epilog() if wants_help else "")
    if "--smoke" in argv:
        parser.set_defaults(**_SMOKE)
    args = parser.parse_args(argv)
    if args.plot_dir is None:
        args.plot_dir = args.out_dir if args.smoke else str(DOCS_IMG)
    try:
        for spec in args.links:
            select_methods(args.methods, args.period, parse_setting(spec))
        for name, low in (("epochs", 1), ("width", 1), ("batch_size", 1), ("period", 1)):
            if getattr(args, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}.")
        if args.eval_rate != "same":
            from lightning_autoopt.cluster import parse_rate

            parse_rate(args.eval_rate)
    except ValueError as err:
        parser.error(str(err))
    args.cache_dir = str(HERE / "out" / "cache")
    return args


def run_setting(setting: Setting, args: argparse.Namespace, estimate: float) -> None:
    """Build the emulated cluster and run the worker job of ``setting`` in it."""
    from lightning_autoopt.cluster import EmulatedCluster

    out_dir = Path(args.out_dir)
    jsonl = out_dir / f"{setting.tag}.jsonl"
    if not args.resume and jsonl.exists():
        jsonl.unlink()
    config = out_dir / f"{setting.tag}.config.json"
    keep = {k: v for k, v in vars(args).items() if k != "worker"}
    config.write_text(json.dumps(keep))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env["OMP_NUM_THREADS"] = "1"
    t0 = time.time()
    print(f"[{setting.spec}] {setting.title}: starting (estimate ~{estimate / 60:.0f} min)", flush=True)
    with EmulatedCluster(nodes=setting.nodes, link=setting.link) as cluster:
        run = cluster.torchrun(
            ["-m", "benchmarks.constrained_link", "--worker", str(config), setting.spec],
            nproc_per_node=setting.per_node,
            timeout=3 * estimate + 900,
            env=env,
            log_dir=out_dir / f"{setting.tag}_logs",
        )
    if not run.ok:
        tails = "\n".join(f"--- {p}\n{p.read_text()[-4000:]}" for p in run.logs)
        raise SystemExit(f"[{setting.spec}] failed: exit codes {run.returncodes}\n{tails}")
    print(f"[{setting.spec}] done in {time.time() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    text, total = plan_text(args)
    print(text, flush=True)
    if args.plan:
        return 0
    if not args.summarize_only:
        from lightning_autoopt.cluster import ClusterUnavailable, check_support
        from lightning_autoopt.data import MNIST1DDataModule

        try:
            check_support()
        except ClusterUnavailable as err:
            sys.stderr.write(f"constrained_link: no emulated cluster on this machine: {err}\n")
            return 2
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        MNIST1DDataModule(num_samples=args.num_samples, seed=0, cache_dir=args.cache_dir).prepare_data()
        t0 = time.time()
        n_params = count_parameters(args)
        for spec in args.links:
            setting = parse_setting(spec)
            names = list(select_methods(args.methods, args.period, setting))
            run_setting(setting, args, estimate_seconds(setting, names, args, n_params))
        print(f"total wall time {time.time() - t0:.0f} s (estimate {total:.0f} s)", flush=True)
    print(summarize(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
