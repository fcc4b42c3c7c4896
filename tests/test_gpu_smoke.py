"""benchmarks/gpu_smoke.py without a GPU: argument checks, the case plan, the clear refusal, one CPU dry run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import lightning_autoopt  # noqa: F401  (registers the names)

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_smoke", None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategies", "nope"], "--strategies"),
        (["--cases", "w3"], "--cases"),
        (["--timeout", "0"], "--timeout"),
    ],
)
def test_bad_arguments_exit_2_with_the_argument_named(smoke, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        smoke.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_registered_strategy_has_smoke_arguments(smoke):
    _, strategies, kinds = smoke.parse_args([])
    assert set(strategies) <= set(smoke.STRATEGY_ARGS) and "diloco" in strategies
    assert kinds == list(smoke.CASE_KINDS)


def test_plan_one_gpu_shares_it_and_adds_the_gloo_fallback(smoke):
    one = smoke.plan(["lsgd", "diloco"], list(smoke.CASE_KINDS), gpus=1, cpu=False)
    names = [c.name for c in one]
    assert names[0] == "ddp-1gpu"
    assert {"lsgd-w1", "lsgd-w2-nccl", "lsgd-w2-gloo", "amp-bf16-diloco", "resume-diloco"} <= set(names)
    assert all(c.shared_gpu for c in one if c.world == 2)
    assert all(c.expect_refusal for c in one if c.kind == "w1")
    two = smoke.plan(["lsgd"], ["w2"], gpus=2, cpu=False)
    assert [(c.name, c.backend, c.shared_gpu) for c in two] == [("lsgd-w2-nccl", "nccl", False)]
    cpu = smoke.plan(["localsgd"], ["w2", "amp"], gpus=0, cpu=True)
    assert [(c.name, c.backend, c.precision) for c in cpu] == [
        ("localsgd-w2-gloo", "gloo", "32-true"),
        ("amp-bf16-localsgd", "gloo", "bf16-mixed"),
    ]


def test_without_cuda_fails_fast_and_says_why(smoke, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert smoke.main(["--strategies", "localsgd"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--cpu" in err


@pytest.mark.slow
def test_cpu_dry_run_of_one_strategy(smoke, capsys):
    assert smoke.main(["--cpu", "--strategies", "localsgd", "--cases", "w1,w2", "--timeout", "240"]) == 0
    out = capsys.readouterr().out
    assert "PASS  localsgd-w1" in out and "PASS  localsgd-w2-gloo" in out


def test_the_reported_error_keeps_nccls_reason_after_last_error(smoke):
    log = "start\nRuntimeError: NCCL error in: init.cc, unhandled cuda error, Last error:\nDuplicate GPU detected\nexit"
    assert smoke._last_error(log).endswith("Last error: Duplicate GPU detected exit")
    assert smoke._last_error("a\nValueError: bad thing\nb") == "ValueError: bad thing"
