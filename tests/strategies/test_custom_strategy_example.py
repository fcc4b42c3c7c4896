"""The worked example of ``docs/methods/local_update.md``: a custom local-update strategy, verified.

``PartialAveragingStrategy`` below is the exact subclass printed in the guide (docstring aside);
``test_the_guide_prints_this_example`` fails when the two drift apart.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import StrategyRegistry

from lightning_autoopt.strategies import LocalUpdateStrategy, _comm, check_period, check_strength, register_strategy
from tests.helpers import TinyClassifier, TinyDataModule, flat_params, make_trainer


# --- begin example (docs/methods/local_update.md) ---------------------------------------------------------------
class PartialAveragingStrategy(LocalUpdateStrategy):
    """Every ``period`` optimizer steps, move each replica a fraction ``strength`` toward the mean of all replicas.

    Args:
        period: Optimizer steps between rounds.
        strength: 0 = no communication effect, 1 = exact averaging (local SGD).
        **kwargs: Forwarded to :class:`LocalUpdateStrategy` (``buffer_policy``, ``eval_policy``, ``start_method``...).

    Raises:
        ValueError: If ``period`` < 1 or ``strength`` is outside [0, 1].
    """

    strategy_name = "partialavg"

    def __init__(self, period: int = 4, strength: float = 0.5, **kwargs: Any) -> None:
        self.period = check_period("period", period)
        self.strength = check_strength("strength", strength)
        super().__init__(**kwargs)
        self.last_round_step = 0  # method state that must survive a resume

    def round_due(self, step: int) -> bool:  # step is 1-based and identical on every rank
        return step % self.period == 0

    def on_round(self, step: int) -> None:
        flat = self.flat_params()
        mean = self.masked_mean(flat)  # the finite replicas' mean: one flat all-reduce, bytes counted
        assert mean is not None  # only a group round can find no finite replica (a world round raises)
        if self.consensus_due():
            self.log_consensus(flat, mean)  # free: the mean is already known
        if self.replica_finite:
            self.write_params(_comm.leader_pull_(flat, mean, self.strength))
        else:  # a NaN/inf replica contributed nothing; it restarts from the mean, optimizer state cleared
            self.heal_(mean)
        self.average_buffers()  # no-op unless buffer_policy="average"
        self.last_round_step = step
        self.log_value("partialavg/strength", self.strength)

    def extra_state_dict(self) -> dict[str, Any]:
        return {"last_round_step": self.last_round_step}

    def load_extra_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_round_step = int(state.get("last_round_step", 0))


register_strategy(PartialAveragingStrategy)  # "partialavg", "partialavg_spawn", "partialavg_fork"
# --- end example ------------------------------------------------------------------------------------------------


class _Recorder(pl.Callback):
    """Saves each rank's final parameters, strategy state and logged metrics (module level: picklable)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(
            {
                "final": flat_params(pl_module),
                "state": trainer.strategy.strategy_state_dict(),
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            },
            os.path.join(self.out_dir, f"custom_rank{trainer.global_rank}.pt"),
        )


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "methods" / "local_update.md"


def _without_docstrings(tree: ast.AST) -> str:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:]  # type: ignore[attr-defined]
    return ast.dump(tree)


def test_the_guide_prints_this_example():
    text = GUIDE.read_text()
    block = text.split("```python\n")[-1].split("```")[0]
    guide = {type(n).__name__ + getattr(n, "name", ""): n for n in ast.parse(block).body}
    here = {type(n).__name__ + getattr(n, "name", ""): n for n in ast.parse(Path(__file__).read_text()).body}
    name = "ClassDefPartialAveragingStrategy"
    assert _without_docstrings(guide[name]) == _without_docstrings(here[name]), "update docs/methods/local_update.md"
    register = [ast.dump(n) for n in ast.parse(block).body if isinstance(n, ast.Expr)]
    assert register == [ast.dump(ast.parse("register_strategy(PartialAveragingStrategy)").body[0])]


def test_pure_parts_validation_registration_and_schedule():
    with pytest.raises(ValueError, match="period"):
        PartialAveragingStrategy(period=0)
    with pytest.raises(ValueError, match="strength"):
        PartialAveragingStrategy(strength=1.5)
    for name in ("partialavg", "partialavg_spawn", "partialavg_fork"):
        assert name in StrategyRegistry
    s = PartialAveragingStrategy(period=3)
    assert [step for step in range(1, 10) if s.round_due(step)] == [3, 6, 9]
    assert s.extra_state_dict() == {"last_round_step": 0}
    s.load_extra_state_dict({"last_round_step": 6})
    assert s.last_round_step == 6
    trainer = Trainer(accelerator="cpu", devices=2, strategy="partialavg_spawn", logger=False)
    assert isinstance(trainer.strategy, PartialAveragingStrategy)
    assert trainer.strategy._start_method == "spawn"


@pytest.mark.timeout(120)
def test_tiny_fit_two_spawned_processes(tmp_path):
    strategy = PartialAveragingStrategy(period=2, strength=1.0, start_method="spawn")
    trainer = make_trainer(
        tmp_path, [_Recorder(str(tmp_path))], devices=2, strategy=strategy, max_steps=6, limit_val_batches=0
    )
    model = TinyClassifier()
    start = flat_params(model)
    trainer.fit(model, TinyDataModule())
    ranks = [torch.load(os.path.join(tmp_path, f"custom_rank{r}.pt"), weights_only=False) for r in range(2)]
    # strength 1 and a round after the last step (6 % 2 == 0): both replicas are the exact mean, and fit hands back
    # the eval_policy="average" weights, which equal them.
    assert torch.equal(ranks[0]["final"], ranks[1]["final"])
    assert not torch.equal(ranks[0]["final"], start)
    assert torch.allclose(flat_params(model), ranks[0]["final"], atol=1e-6)
    n = start.numel()
    for r in ranks:
        assert r["state"]["num_steps"] == 6 and r["state"]["num_rounds"] == 3
        assert r["state"]["extra"] == {"last_round_step": 6}
        m = r["metrics"]
        assert m["dist/rounds"] == 3.0
        assert m["dist/bytes_sent"] == 4 * (n + 3) and m["dist/bytes_sent_total"] == 3 * 4 * (n + 3)  # + health tail
        assert m["partialavg/strength"] == 1.0
        assert m["dist/consensus_distance"] >= 0.0
