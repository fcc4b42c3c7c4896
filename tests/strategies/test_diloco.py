"""DiLoCo: the outer step in closed form (pure and on 2 gloo ranks), resume of the outer state, bad arguments."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_autoopt  # noqa: F401  (registers the names)
from lightning_autoopt.strategies import CHECKPOINT_KEY, DiLoCoStrategy, LocalSGDStrategy, registered_strategies
from lightning_autoopt.strategies.diloco import outer_nesterov_step_
from tests.helpers import TinyClassifier, TinyDataModule

try:
    from ._gloo_pool import run_on_pool, shared_pool
    from ._local_update_helpers import FlatRecorder, detached
except ImportError:
    from _gloo_pool import run_on_pool, shared_pool  # type: ignore[no-redef]
    from _local_update_helpers import FlatRecorder, detached  # type: ignore[no-redef]

WORLD = 2
N_PARAMS = 8  # Linear(3, 2) in the helpers


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"period": 0}, "period"),
        ({"outer_lr": 0.0}, "outer_lr"),
        ({"outer_lr": -0.7}, "outer_lr"),
        ({"outer_lr": float("nan")}, "outer_lr"),
        ({"outer_lr": True}, "outer_lr"),
        ({"outer_momentum": 1.0}, "outer_momentum"),
        ({"outer_momentum": -0.1}, "outer_momentum"),
        ({"nesterov": "yes"}, "nesterov"),
        ({"eval_policy": "center"}, "eval_policy"),
        ({"buffer_policy": "sync"}, "buffer_policy"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiLoCoStrategy(**kwargs)


def test_registered_under_its_name():
    assert registered_strategies()["diloco"] is DiLoCoStrategy
    s = DiLoCoStrategy()
    assert (s.period, s.outer_lr, s.outer_momentum, s.nesterov, s.eval_policy) == (16, 0.7, 0.9, True, "global")


@pytest.mark.parametrize("nesterov", [True, False])
def test_outer_step_is_torch_sgd_on_the_pseudo_gradient(nesterov):
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(5, generator=g)
    deltas = [torch.randn(5, generator=g) for _ in range(3)]
    ref = theta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=0.7, momentum=0.9, nesterov=nesterov)
    theta, buf = theta0.clone(), torch.zeros(5)
    for delta in deltas:
        ref.grad = delta.clone()
        opt.step()
        before = theta.clone()
        step = outer_nesterov_step_(theta, buf, delta, lr=0.7, momentum=0.9, nesterov=nesterov)
        torch.testing.assert_close(theta, ref.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(before - theta, step, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- 2 gloo ranks
def _two_rounds(lr, momentum, nesterov):
    rank = dist.get_rank()
    s = detached(
        DiLoCoStrategy, values=torch.ones(N_PARAMS), period=1, outer_lr=lr, outer_momentum=momentum, nesterov=nesterov
    )
    out = []
    for step in (1, 2):
        with torch.no_grad():
            for p in s.params:
                p.add_(float(rank + 1))  # inner progress: rank 0 moves by +1, rank 1 by +2
        s._round_bytes = 0
        s.on_round(step)
        out.append(
            {
                "params": s.flat_params(),
                "global": s.global_params.clone(),
                "momentum": s.momentum_buffer.clone(),
                "bytes": s._round_bytes,
                "logs": dict(s._pending_logs),
            }
        )
    return rank, out


def test_one_and_two_outer_steps_closed_form_on_two_ranks():
    lr, mu = 0.7, 0.9
    res = run_on_pool(shared_pool(WORLD), WORLD, _two_rounds, lr, mu, True)
    # round 1: theta = 1, replicas 2 and 3, mean 2.5 -> delta = -1.5, buf = -1.5, step = delta + mu * buf
    delta = -1.5
    buf1 = delta
    theta1 = 1.0 - lr * (delta + mu * buf1)
    # round 2: both replicas restart from theta1 and move by +1 / +2 again -> the same delta
    buf2 = mu * buf1 + delta
    theta2 = theta1 - lr * (delta + mu * buf2)
    for rank_out in res:
        r1, r2 = rank_out
        torch.testing.assert_close(r1["global"], torch.full((N_PARAMS,), theta1))
        torch.testing.assert_close(r1["momentum"], torch.full((N_PARAMS,), buf1))
        torch.testing.assert_close(r2["global"], torch.full((N_PARAMS,), theta2))
        torch.testing.assert_close(r2["momentum"], torch.full((N_PARAMS,), buf2))
        assert torch.equal(r2["params"], r2["global"])  # every worker restarts from the global weights
        assert r1["bytes"] == 4 * (N_PARAMS + 3)  # one flat fp32 all-reduce, with the health tail
        assert r1["logs"]["diloco/pseudo_grad_norm"] == pytest.approx(1.5 * N_PARAMS**0.5, rel=1e-6)
        assert r1["logs"]["diloco/outer_step_norm"] == pytest.approx(abs(theta1 - 1.0) * N_PARAMS**0.5, rel=1e-6)
    for key in ("global", "momentum", "params"):  # identical on both ranks, bitwise, without a broadcast
        assert torch.equal(res[0][1][key], res[1][1][key])


def _diloco_vs_localsgd():
    rank = dist.get_rank()
    values = torch.arange(N_PARAMS, dtype=torch.float32) * 0.1
    d = detached(DiLoCoStrategy, values=values, period=1, outer_lr=1.0, outer_momentum=0.0)
    ls = detached(LocalSGDStrategy, values=values, period=1)
    for s in (d, ls):
        with torch.no_grad():
            for p in s.params:
                p.mul_(1.0 + rank).add_(0.25 * rank)
        s.on_round(1)
    return rank, (d.flat_params(), ls.flat_params())


def test_outer_lr_one_without_momentum_is_local_sgd():
    for d, ls in run_on_pool(shared_pool(WORLD), WORLD, _diloco_vs_localsgd):
        torch.testing.assert_close(d, ls, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- Trainer: policy and resume
def _fit(tmp_path, out, ckpt_path=None):
    os.makedirs(out, exist_ok=True)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DiLoCoStrategy(start_method="spawn", period=3, outer_lr=0.7, outer_momentum=0.9),
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=tmp_path,
        callbacks=[FlatRecorder(str(out)), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)],
    )
    trainer.fit(TinyClassifier(momentum=0.9), TinyDataModule(), ckpt_path=ckpt_path)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
def test_global_policy_checkpoint_and_bitwise_resume(tmp_path):
    full = _fit(tmp_path, tmp_path / "full")
    extra = [f["state"]["extra"] for f in full]
    assert full[0]["state"]["num_rounds"] == 2  # outer steps after inner steps 3 and 6
    assert torch.equal(extra[0]["global_params"], extra[1]["global_params"])
    assert torch.equal(extra[0]["momentum_buffer"], extra[1]["momentum_buffer"])
    assert extra[0]["momentum_buffer"].abs().sum() > 0
    assert "diloco/outer_step_norm" in full[0]["metrics"] and full[0]["metrics"]["diloco/outer_step_norm"] > 0

    data = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt", weights_only=False)
    stored = data[CHECKPOINT_KEY]["ranks"][0]["strategy"]["extra"]
    flat_sd = torch.cat([v.reshape(-1) for v in data["state_dict"].values()])
    assert torch.equal(flat_sd, stored["global_params"])  # the checkpoint's weights are the global weights

    resumed = _fit(tmp_path, tmp_path / "resumed", ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
    for r in range(2):
        assert torch.equal(resumed[r]["final"], full[r]["final"]), f"rank {r} differs after resume"
        for key in ("global_params", "momentum_buffer"):
            assert torch.equal(resumed[r]["state"]["extra"][key], full[r]["state"]["extra"][key]), key
        assert resumed[r]["state"]["bytes_sent_total"] == full[r]["state"]["bytes_sent_total"]
