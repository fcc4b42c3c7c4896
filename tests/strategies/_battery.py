"""The one list every registered local-update strategy must appear in (the parametrized battery reads it).

To add a strategy: register it in ``lightning_autoopt/strategies/__init__.py`` and add an entry here with small
``init_args`` (period 3 so rounds do not line up with the 4-step epochs of the battery), and, in
``POLICY_CHECKS``, how its checkpoint ``"state_dict"`` follows from the gathered replicas. Leader-based methods
also go in ``LEADER_BASED`` (NaN-loss test).
"""

from __future__ import annotations

from typing import Any

import torch

CASES: dict[str, dict[str, Any]] = {
    "lsgd": {"period": 3, "pull_strength": 0.5, "eval_policy": "leader"},  # the non-average policy path
    "easgd": {"period": 3, "elastic_strength": 0.43},
    "localsgd": {"period": 3},
    "mgrawa": {"period": 3, "pull_strength": 0.5},
    "lgrawa": {"period": 3, "pull_strength": 0.5},
    "dpsgd": {"period": 3},
    "aldsgd": {"period": 3},
    "diloco": {"period": 3, "eval_policy": "average"},  # "global" is checked in test_diloco.py
}

LEADER_BASED = ["lsgd"]


def _params_only(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if v.is_floating_point()}


def _policy_average(stored: dict[str, Any]) -> dict[str, torch.Tensor]:
    models = [r["model"] for r in stored["ranks"]]
    return {k: sum(m[k] for m in models) / len(models) for k in _params_only(models[0])}


def _policy_leader(stored: dict[str, Any]) -> dict[str, torch.Tensor]:
    leader = stored["ranks"][0]["strategy"]["leader"]
    return _params_only(stored["ranks"][leader if leader is not None else 0]["model"])


def _policy_center(stored: dict[str, Any]) -> dict[str, torch.Tensor]:
    center = stored["ranks"][0]["strategy"]["extra"]["center"]
    model = stored["ranks"][0]["model"]
    out, n = {}, 0
    for k, v in _params_only(model).items():  # TinyClassifier: parameters only, in state_dict order
        out[k] = center[n : n + v.numel()].view_as(v)
        n += v.numel()
    return out


POLICY_CHECKS = {"lsgd": _policy_leader, "easgd": _policy_center, "localsgd": _policy_average}
POLICY_CHECKS.update(dict.fromkeys(["mgrawa", "lgrawa", "dpsgd", "aldsgd"], _policy_average))  # strategies II
POLICY_CHECKS["diloco"] = _policy_average  # issue 13; its default "global" policy: tests/strategies/test_diloco.py
