"""The env runner: episodes side by side in several envs give the same episodes as one env at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftori.il.base import Policy
from difftori.il.runner import evaluate, run_episodes


class RowwisePolicy(Policy):
    """Deterministic and row-wise (elementwise ops and per-row means only): its actions cannot depend on the batch
    size. Reads observation entry ``key`` (any per-frame shape); records the batch size of every call."""

    name = "rowwise"

    def __init__(self, key: str, shape, action_dim: int = 4, obs_steps: int = 2, action_steps: int = 3):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        super().__init__({key: shape}, action_dim, obs_steps, action_steps, 8, None)
        self.key = key
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[int] = []

    def predict_action(self, obs):
        x = torch.as_tensor(obs[self.key]).double().flatten(2)  # (B, To, D)
        self.batches.append(x.shape[0])
        a = torch.sin(3.0 * x[:, -1, : self.action_dim] + x[:, 0, : self.action_dim] + 5.0 * x[:, -1].mean(-1, keepdim=True))
        steps = torch.arange(1, self.action_steps + 1, dtype=a.dtype)[None, :, None]
        return (a[:, None, :] * 0.5 * steps / self.action_steps).float()


class CountdownEnv:
    """A fake env whose episode lasts ``3 + seed % 5`` steps and succeeds when the summed action is positive."""

    def reset(self, seed):
        self.t, self.left, self.total = 0, 3 + seed % 5, 0.0
        return {"x": np.array([float(seed), 0.0], dtype=np.float32)}, {}

    def step(self, action):
        self.t += 1
        self.total += float(action.sum())
        obs = {"x": np.array([float(self.t), self.total], dtype=np.float32)}
        return obs, 1.0, self.t >= self.left, False, {"success": self.total > 0}


def test_episodes_side_by_side_end_on_their_own_and_shrink_the_batch():
    pol = RowwisePolicy("x", 2, action_dim=2, action_steps=2)
    seeds = [10, 12, 14, 11]  # lengths 3, 5, 7, 4 with 2 actions per decision: batches 4, 4, 2, 1
    together = run_episodes(pol, [CountdownEnv() for _ in seeds], seeds, max_steps=100)
    assert [r["length"] for r in together] == [3 + s % 5 for s in seeds]
    assert pol.batches == [4, 4, 2, 1]
    for s, r in zip(seeds, together):
        alone = run_episodes(pol, [CountdownEnv()], [s], max_steps=100)[0]
        assert alone == r
    capped = run_episodes(pol, [CountdownEnv() for _ in seeds], seeds, max_steps=4)
    assert [r["length"] for r in capped] == [min(4, 3 + s % 5) for s in seeds]
    with pytest.raises(ValueError, match="one env per seed"):
        run_episodes(pol, [CountdownEnv()], [1, 2], max_steps=5)


@pytest.mark.parametrize("obs_type,key", [("state", "full_state"), ("pointcloud", "pointcloud")])
def test_evaluate_in_several_envs_equals_one_env_at_a_time_on_metaworld(obs_type, key):
    """Same env seeds, same episodes: a batch-independent policy gets identical records with 1 or 3 envs
    (4 episodes: a wave of 3, then 1); rendered observations come from each episode's own env."""
    from difftori.envs import make_env

    env = make_env("reach", obs_type=obs_type)
    shape = env.observation_space[key].shape
    env.close()
    pol = RowwisePolicy(key, shape)
    one = evaluate(pol, "reach", obs_type, episodes=4, seed=7, max_steps=30, num_envs=1)
    assert pol.batches == [1] * len(pol.batches)
    pol.batches.clear()
    three = evaluate(pol, "reach", obs_type, episodes=4, seed=7, max_steps=30, num_envs=3)
    assert max(pol.batches) == 3 and three["num_envs"] == 3
    assert one["episodes"] == three["episodes"]
    assert len({r["return"] for r in one["episodes"]}) == 4, "different seeds must give different episodes"
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        evaluate(pol, "reach", obs_type, episodes=1, num_envs=0)


class SucceedsAtEnv:
    """A fake env that never ends by itself and reports success from step ``seed`` on (never for seed 0)."""

    def reset(self, seed):
        self.t, self.at = 0, seed
        return {"x": np.zeros(2, dtype=np.float32)}, {}

    def step(self, action):
        self.t += 1
        return {"x": np.full(2, float(self.t), dtype=np.float32)}, 1.0, False, False, {"success": 0 < self.at <= self.t}


def test_stop_on_success_ends_an_episode_at_its_first_success_with_the_same_success():
    pol = RowwisePolicy("x", 2, action_dim=2, action_steps=3)
    seeds = [2, 5, 0, 9]  # success from step 2, 5, never, 9 (inside an action window of 3, and across windows)
    full = run_episodes(pol, [SucceedsAtEnv() for _ in seeds], seeds, max_steps=12)
    cut = run_episodes(pol, [SucceedsAtEnv() for _ in seeds], seeds, max_steps=12, stop_on_success=True)
    assert [r["success"] for r in full] == [r["success"] for r in cut] == [True, True, False, True]
    assert [r["length"] for r in full] == [12] * 4
    assert [r["length"] for r in cut] == [2, 5, 12, 9]
    assert [r["return"] for r in cut] == [2.0, 5.0, 12.0, 9.0]


class NoisyPolicy(RowwisePolicy):
    """RowwisePolicy plus N(0, noise^2) draws from torch's global RNG (as a sampling policy's)."""

    def __init__(self, noise: float, base=None):
        super().__init__("x", 2, action_dim=2, action_steps=3)
        self.noise, self.base = noise, base

    def predict_action(self, obs):
        a = super().predict_action(obs)
        return a + self.noise * torch.randn_like(a)


def test_demo_mse_measures_against_the_demos_in_its_own_rng():
    from difftori.il.runner import demo_mse

    g = torch.Generator().manual_seed(3)
    obs = {"x": torch.randn(100, 2, 2, generator=g)}
    exact = RowwisePolicy("x", 2, action_dim=2, action_steps=3)
    windows = {"obs": obs, "action": exact.predict_action(obs)}  # demos the deterministic policy reproduces
    assert demo_mse(exact, windows) == {"demo_mse": 0.0}
    refined = NoisyPolicy(0.1, base=NoisyPolicy(1.0))
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    fit = demo_mse(refined, windows, count=50)
    assert torch.equal(torch.rand(3), expected_next), "the caller's RNG stream must be untouched"
    assert fit == demo_mse(refined, windows, count=50)  # seeded: repeated calls agree
    assert set(fit) == {"demo_mse", "base_demo_mse"}
    assert fit["demo_mse"] == pytest.approx(0.01, rel=0.3) and fit["base_demo_mse"] == pytest.approx(1.0, rel=0.3)
    refined.train()  # the training mode is restored
    demo_mse(refined, windows)
    assert refined.training
