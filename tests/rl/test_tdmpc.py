"""TD-MPC agent: planner bounds and warm start, update metrics, learning signal, state round trip."""

import numpy as np
import pytest
import torch

from difftori.envs import dmc
from difftori.rl.buffer import ReplayBuffer
from difftori.rl.config import RLConfig, resolve
from difftori.rl.tdmpc import TDMPC, linear_schedule
from tests.learning import check

TINY = dict(agent="tdmpc", mlp_dim=32, enc_dim=16, latent_dim=8, batch_size=32, num_samples=32, num_elites=4,
            iterations=2, seed_steps=0, horizon=3, schedule_steps=100, device="cpu")


def _agent(task="reacher-easy", **kw):
    env = dmc.make(task, episode_length=80)
    return TDMPC(RLConfig(task=task, **{**TINY, **kw}), env.task_spec), env


def _fill(agent, env, episodes=3, seed=0):
    buf = ReplayBuffer(env.task_spec.obs_shape, env.task_spec.action_dim, 10_000, agent.cfg.horizon, seed=seed)
    rng = np.random.default_rng(seed)
    for e in range(episodes):
        obs, _ = env.reset(seed=seed * 100 + e)
        o, a, r = [obs], [], []
        done = False
        while not done:
            act = rng.uniform(-1, 1, env.task_spec.action_dim).astype(np.float32)
            obs, rew, term, trunc, _ = env.step(act)
            o.append(obs), a.append(act), r.append(rew)
            done = term or trunc
        buf.add_episode(np.stack(o), np.stack(a), np.array(r, np.float32))
    return buf


def test_schedules():
    assert linear_schedule(0.5, 0.05, 100, 0) == 0.5
    assert linear_schedule(0.5, 0.05, 100, 50) == pytest.approx(0.275)
    assert linear_schedule(0.5, 0.05, 100, 10**6) == pytest.approx(0.05)
    agent, _ = _agent()
    assert agent.plan_horizon(0) == 1 and agent.plan_horizon(100) == 3


def test_act_in_bounds_and_warm_start():
    agent, env = _agent(horizon=5, schedule_steps=1)
    obs, _ = env.reset(seed=0)
    for t in range(4):
        a = agent.act(obs, t0=t == 0, eval_mode=False, step=1000)
        assert a.shape == (2,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
        assert agent._prev_mean.shape == (5, 2)
    logged = agent.on_episode_end(1000)["explore_std"]  # mean std of the noise on the 4 training actions
    assert agent.std(1000) - 1e-6 <= logged.item() <= agent.cfg.max_std + 1e-6
    a_eval = agent.act(obs, t0=True, eval_mode=True, step=1000)
    assert np.all(np.abs(a_eval) <= 1)
    assert agent.on_episode_end(1000) == {}  # evaluation adds no noise and logs none
    seed_agent, _ = _agent(seed_steps=50)
    assert np.all(np.abs(seed_agent.act(obs, t0=True, eval_mode=False, step=0)) <= 1)
    with pytest.raises(ValueError, match="observation shape"):
        agent.act(np.zeros(3, np.float32), t0=True, eval_mode=True, step=0)


def update_stats(seed: int) -> dict[str, float]:
    """Reward loss (mean of 5 updates) after 60 updates on random-action data, relative to before.

    (reacher-easy was used before: its sparse reward is 0 on most random-action seeds, giving 0/0.)"""
    torch.manual_seed(seed)
    agent, env = _agent("cartpole-swingup", lr=3e-3, seed=seed)  # dense rewards: random actions earn some
    buf = _fill(agent, env, seed=seed)
    first = agent.update(buf, 0)
    assert {"consistency_loss", "reward_loss", "value_loss", "pi_loss", "grad_norm"} <= set(first)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in first.values())
    before = torch.stack([agent.update(buf, i)["reward_loss"] for i in range(5)]).mean()
    for i in range(60):
        agent.update(buf, i)
    after = torch.stack([agent.update(buf, i)["reward_loss"] for i in range(5)]).mean()
    assert agent.num_updates == 71
    # Priorities moved away from the initial constant.
    return {"reward_loss_ratio": (after / before).item(), "distinct_priorities": float(np.unique(buf._prio[buf._prio > 0]).size)}


UPDATE_LIMITS = {
    "reward_loss_ratio": ("<", 0.5),  # measured 0.068-0.283 (seeds 0-5 x 3 CPU capabilities)
    "distinct_priorities": (">", 10),  # measured 24
}


@pytest.mark.learning
def test_update_returns_detached_metrics_and_reduces_model_loss():
    check(update_stats(0), UPDATE_LIMITS)


def test_state_dict_round_trip():
    agent, env = _agent()
    buf = _fill(agent, env, episodes=1)
    agent.update(buf, 0)
    other, _ = _agent()
    other.load_state_dict(agent.state_dict())
    obs = torch.randn(3, env.task_spec.obs_shape[0])
    torch.testing.assert_close(other.model.encode(obs), agent.model.encode(obs))
    torch.testing.assert_close(other.model_target.encode(obs), agent.model_target.encode(obs))
    assert other.num_updates == 1 and other.optim.state_dict()["state"]


def test_resolve_presets_without_touching_config():
    cfg = RLConfig(task="walker-run", obs_type="pixels")
    spec = dmc.make("walker-run").task_spec
    res = resolve(cfg, spec)
    assert (res.batch_size, res.lr, res.action_repeat) == (256, 3e-4, 2)
    assert (res.solver_max_iters, res.solver_step_size, res.solver_damping) == (200, 3e-5, 1e-3)
    assert cfg.batch_size is None and cfg.difftori.max_iters is None and cfg.action_repeat is None
