"""Shared fixtures for IL tests: tiny synthetic datasets and a normalizer fitted on them."""

from __future__ import annotations

import pytest
import torch


def fitted_normalizer(windows, action_range: float | None = None):
    """The project's Normalizer fitted the way the trainer fits it (last frame of each window).

    ``action_range=r`` adds rows at -r and +r so the action scaling is exactly ``a / r``.
    """
    from difftori.il.train import fit_normalizer

    stats = {"action": windows["action"].reshape(-1, windows["action"].shape[-1])}
    stats.update({k: v[:, -1] for k, v in windows["obs"].items()})
    if action_range is not None:
        a = stats["action"]
        stats["action"] = torch.cat([a, torch.full_like(a[:1], -action_range), torch.full_like(a[:1], action_range)])
        stats.update({k: torch.cat([v, v[:2]]) for k, v in stats.items() if k != "action"})
    return fit_normalizer(stats)


def linear_state_data(n: int = 256, obs_dim: int = 39, obs_steps: int = 2, action_steps: int = 4, seed: int = 0):
    """Windows whose action window is a fixed smooth function of the last state frame."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, obs_steps, obs_dim, generator=g) * 2 - 1
    w = torch.randn(obs_dim, action_steps * 4, generator=g) / obs_dim**0.5
    action = torch.tanh(obs[:, -1] @ w).reshape(n, action_steps, 4)
    return {"obs": {"full_state": obs}, "action": action}


@pytest.fixture
def state_windows():
    return linear_state_data()
