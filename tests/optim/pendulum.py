"""Pendulum swing-up of Amos et al. 2018 for the optimizer tests: the model lives in :mod:`difftori.envs.pendulum`;
this module adds the mpc.pytorch reference solutions (written by benchmarks/pendulum_vs_mpc.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from difftori.envs.pendulum import (DT, DT_SIM, T, U_MAX, cost_weights, dynamics, initial_states,  # noqa: F401
                                    params, shooting_cost, stage_cost)

REFERENCE = Path(__file__).parent / "data" / "pendulum_mpc_reference.json"


def load_reference() -> dict[str, torch.Tensor]:
    """mpc.pytorch's solutions for ``initial_states(32, 0)`` (written by benchmarks/pendulum_vs_mpc.py)."""
    data = json.loads(REFERENCE.read_text())
    return {k: torch.tensor(v, dtype=DT) for k, v in data.items() if k in ("x0", "U", "cost")}
