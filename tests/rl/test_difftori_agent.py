"""DiffTORI agent: acting through the optimizer, policy-gradient paths, Q_s, checkpoints, trainer smoke run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from difftori.envs.spec import EnvSpec
from difftori.rl.buffer import ReplayBuffer
from difftori.rl.config import DiffTORIConfig, RLConfig
from difftori.rl.difftori import DiffTORI
from difftori.utils.io import load_checkpoint, save_checkpoint

STEP = 10_000  # an agent step after pg_start_step and with the full planning horizon


def tiny_cfg(obs_type: str = "state", **difftori) -> RLConfig:
    d = dict(pg_start_step=0, max_iters=15, pg_batch=4)
    d.update(difftori)
    return RLConfig(
        task="cartpole-swingup", agent="difftori", obs_type=obs_type, device="cpu", seed_steps=0,
        latent_dim=8, mlp_dim=32, enc_dim=32, num_channels=4, horizon=3, batch_size=8, schedule_steps=100,
        num_samples=16, num_elites=4, iterations=2, difftori=DiffTORIConfig(**d),
    )


def tiny_spec(obs_type: str = "state") -> EnvSpec:
    shape = (5,) if obs_type == "state" else (9, 64, 64)
    return EnvSpec(task="cartpole-swingup", suite="dmc", obs_type=obs_type, obs_shapes={"obs": shape},
                   action_dim=2, episode_length=20, action_repeat=8)


def make_agent(obs_type: str = "state", **difftori) -> DiffTORI:
    """A tiny agent whose zero-initialised reward / critic output layers are randomised (nonzero gradients)."""
    agent = DiffTORI(tiny_cfg(obs_type, **difftori), tiny_spec(obs_type))
    m = agent.model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for net in (m._reward, m._Q1, m._Q2, m._Qs1, m._Qs2):
            net[-1].weight.copy_(torch.randn(net[-1].weight.shape, generator=g) * 0.5)
            net[-1].bias.copy_(torch.randn(net[-1].bias.shape, generator=g) * 0.5)
    agent.model_target.load_state_dict(m.state_dict())
    return agent


def random_obs(spec: EnvSpec, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    shape = spec.obs_shape if n is None else (n, *spec.obs_shape)
    if spec.obs_type == "pixels":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


def filled_buffer(agent: DiffTORI, episodes: int = 2, length: int = 12) -> ReplayBuffer:
    spec = agent.spec
    buf = ReplayBuffer(spec.obs_shape, spec.action_dim, 1000, agent.cfg.horizon, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        buf.add_episode(random_obs(spec, rng, length + 1), rng.uniform(-1, 1, (length, spec.action_dim)).astype(np.float32),
                        rng.random(length).astype(np.float32))
    return buf


def params_of(modules) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def changed(before: list[torch.Tensor], modules) -> bool:
    after = [p.detach() for m in modules for p in m.parameters()]
    return any(not torch.equal(a, b) for a, b in zip(before, after))


def pg_modules(agent: DiffTORI):
    m = agent.model
    return [m._encoder, m._dynamics, m._reward, m._Q1, m._Q2]


def frozen_modules(agent: DiffTORI):
    return [agent.model._pi, *agent.model.obs_critic_modules()]


# -- acting ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_act_in_bounds_and_executes_best_solution(obs_type):
    agent = make_agent(obs_type, init="pi")  # deterministic init (planner init samples MPPI; tested below)
    rng = np.random.default_rng(1)
    obs = random_obs(agent.spec, rng)
    for eval_mode in (False, True):
        a = agent.act(obs, t0=True, eval_mode=eval_mode, step=STEP)
        assert a.shape == (2,) and a.dtype == np.float32
        assert np.all(np.abs(a) <= 1.0) and np.all(np.isfinite(a))
    assert len(agent._stats["solver_iters"]) == 1  # only training solves are logged
    # With init=pi, eval mode is deterministic and executes the best iterate of the solve, which beats pi's rollout.
    x = agent.obs_tensor(obs)
    with torch.no_grad():
        U, info = agent.solve(x, STEP, eval_mode=True, backward="none")
        U0 = agent.initial_plan(agent.model.encode(x), agent.plan_horizon(STEP), eval_mode=True)
        g0 = agent.predicted_return(agent.model.encode(x), U0)
    assert U.shape == (1, agent.cfg.horizon, 2)
    a_eval = agent.act(obs, t0=True, eval_mode=True, step=STEP)
    np.testing.assert_allclose(a_eval, info.best_U[0, 0].numpy(), rtol=0, atol=1e-6)
    assert float(-info.best_cost[0]) >= float(g0[0]) - 1e-6
    # Before pg_start_step the TD-MPC planner acts (no solver statistics recorded).
    late = make_agent(obs_type, pg_start_step=STEP + 1)
    a = late.act(obs, t0=True, eval_mode=False, step=STEP)
    assert a.shape == (2,) and np.all(np.abs(a) <= 1.0) and set(late._stats) == {"explore_std"}  # MPPI's noise only


def test_observation_shape_is_checked():
    agent = make_agent()
    with pytest.raises(ValueError, match="observation shape"):
        agent.act(np.zeros(4, np.float32), t0=True, eval_mode=True, step=STEP)


# -- policy-gradient loss ---------------------------------------------------------------------------
@pytest.mark.parametrize("obs_type,backward", [("state", "truncated"), ("state", "implicit"), ("pixels", "truncated")])
def test_pg_loss_gradients_reach_world_model_not_pi_or_qs(obs_type, backward):
    agent = make_agent(obs_type, backward=backward)
    x = torch.as_tensor(random_obs(agent.spec, np.random.default_rng(2), 3))
    loss, U, info = agent.pg_loss(x, STEP)
    assert U.shape == (3, agent.cfg.horizon, 2) and U.requires_grad
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert info.best_U.shape == (3, agent.cfg.horizon, 2)
    loss.backward()
    m = agent.model
    for name, mod in [("encoder", m._encoder), ("dynamics", m._dynamics), ("reward", m._reward), ("Q", m._Q1)]:
        # (None is allowed: e.g. a last-layer bias shifts the cost by a constant, so the implicit gradient is 0.)
        grads = [p.grad for p in mod.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"no gradient reached the {name}"
    for mod in frozen_modules(agent):
        for p in mod.parameters():
            assert p.grad is None or not p.grad.any()
            assert p.requires_grad  # unfrozen again after the loss was built


def test_residual_method_solves():
    agent = make_agent(solver_method="lm", max_iters=5)
    a = agent.act(random_obs(agent.spec, np.random.default_rng(3)), t0=True, eval_mode=True, step=STEP)
    assert a.shape == (2,) and np.all(np.abs(a) <= 1.0)


# -- episode mode -----------------------------------------------------------------------------------
def test_episode_mode_accumulates_and_steps_only_at_episode_end():
    agent = make_agent(pg_mode="episode")
    rng = np.random.default_rng(4)
    before_pg, before_frozen = params_of(pg_modules(agent)), params_of(frozen_modules(agent))
    agent.act(random_obs(agent.spec, rng), t0=True, eval_mode=False, step=STEP)
    first = [g.clone() for g in agent._pg_grads]
    agent.act(random_obs(agent.spec, rng), t0=False, eval_mode=False, step=STEP)
    assert agent._pg_count == 2
    assert any(not torch.equal(a, b) for a, b in zip(first, agent._pg_grads))  # accumulated, not replaced
    assert not changed(before_pg, pg_modules(agent))  # nothing applied while acting
    # A TD-MPC update in between zeroes .grad but leaves the PG accumulation alone.
    acc = [g.clone() for g in agent._pg_grads]
    agent.update(filled_buffer(agent), STEP)
    assert all(torch.equal(a, b) for a, b in zip(acc, agent._pg_grads))
    before_pg, before_frozen = params_of(pg_modules(agent)), params_of(frozen_modules(agent))
    eval_a = agent.act(random_obs(agent.spec, rng), t0=True, eval_mode=True, step=STEP)  # eval adds nothing
    assert eval_a.shape == (2,) and agent._pg_count == 2
    metrics = agent.on_episode_end(STEP)
    assert changed(before_pg, pg_modules(agent))
    assert not changed(before_frozen, frozen_modules(agent))
    assert agent._pg_grads is None and agent._pg_count == 0 and agent.pg_steps == 1
    assert metrics["pg_stepped"].item() == 1.0 and math.isfinite(metrics["pg_grad_norm"].item())
    for k in ("pg_loss", "pg_saturated", "solver_iters", "solver_converged", "solver_max_iters", "solver_ok"):
        assert k in metrics and metrics[k].ndim == 0 and not metrics[k].requires_grad
    # Nothing accumulated -> no step.
    before_pg = params_of(pg_modules(agent))
    assert "pg_stepped" not in agent.on_episode_end(STEP)
    assert not changed(before_pg, pg_modules(agent))


def test_non_finite_pg_is_skipped_and_counted():
    agent = make_agent(pg_mode="episode")
    with torch.no_grad():
        agent.model._Qs1[-1].bias.fill_(float("nan"))
    before = params_of(pg_modules(agent))
    a = agent.act(random_obs(agent.spec, np.random.default_rng(5)), t0=True, eval_mode=False, step=STEP)
    assert np.all(np.isfinite(a))
    metrics = agent.on_episode_end(STEP)
    assert agent.pg_skipped == 1 and metrics["pg_skipped"].item() == 1.0 and "pg_stepped" not in metrics
    assert not changed(before, pg_modules(agent))
    # Replay mode: same guard.
    agent = make_agent(pg_mode="replay")
    with torch.no_grad():
        agent.model._Qs1[-1].bias.fill_(float("nan"))
    before = params_of(pg_modules(agent))
    out = agent.replay_pg_step(filled_buffer(agent), STEP)
    assert out["pg_stepped"].item() == 0.0 and agent.pg_skipped == 1
    assert not changed(before, pg_modules(agent))


# -- replay mode and Q_s ------------------------------------------------------------------------------
def test_replay_mode_steps_in_update_and_qs_is_trained():
    agent = make_agent(pg_mode="replay", pg_start_step=STEP)
    buf = filled_buffer(agent)
    # Acting accumulates nothing in replay mode.
    agent.act(random_obs(agent.spec, np.random.default_rng(6)), t0=True, eval_mode=False, step=STEP)
    assert agent._pg_grads is None
    before_pg, before_pi = params_of(pg_modules(agent)), params_of([agent.model._pi])
    out = agent.replay_pg_step(buf, STEP)
    assert out["pg_stepped"].item() == 1.0 and math.isfinite(out["pg_grad_norm"].item())
    assert "pg_solver_iters" in out and "pg_solver_converged" in out
    assert changed(before_pg, pg_modules(agent)) and not changed(before_pi, [agent.model._pi])
    # update(): TD-MPC + Q_s TD loss, plus the PG step only from pg_start_step on.
    early = agent.update(buf, STEP - 1)
    assert "value_s_loss" in early and "pg_loss" not in early
    qs_before = params_of(agent.model.obs_critic_modules())
    qs_target_before = [p.detach().clone() for p in agent.model_target._Qs1.parameters()]
    late = agent.update(buf, STEP)
    assert "pg_loss" in late and late["value_s_loss"].item() > 0 and agent.pg_steps == 2
    assert changed(qs_before, agent.model.obs_critic_modules())
    assert any(not torch.equal(a, b) for a, b in zip(qs_target_before, agent.model_target._Qs1.parameters()))


# -- checkpoints ---------------------------------------------------------------------------------------
def test_state_dict_round_trip_resumes_identically(tmp_path):
    rng = np.random.default_rng(7)
    a = make_agent(pg_mode="episode")
    obs = [random_obs(a.spec, rng) for _ in range(3)]
    a.act(obs[0], t0=True, eval_mode=False, step=STEP)
    a.on_episode_end(STEP)  # Adam state exists
    a.act(obs[1], t0=True, eval_mode=False, step=STEP)  # an accumulation in flight
    save_checkpoint(tmp_path / "agent.pt", {"agent": a.state_dict()})
    b = DiffTORI(tiny_cfg(pg_mode="episode"), tiny_spec())
    b.load_state_dict(load_checkpoint(tmp_path / "agent.pt")["agent"])
    assert b._pg_count == 1 and b.pg_steps == 1
    for pa, pb in zip(a.model_target.parameters(), b.model_target.parameters()):
        assert torch.equal(pa, pb)
    a.on_episode_end(STEP)
    b.on_episode_end(STEP)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    x = a.obs_tensor(obs[2])
    assert torch.equal(torch.min(*a.model.Qs(x, torch.zeros(1, 2))), torch.min(*b.model.Qs(x, torch.zeros(1, 2))))
    with pytest.raises(KeyError, match="difftori"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "difftori"})


# -- initial plans and bound handling ---------------------------------------------------------------
@pytest.mark.parametrize("init", ["shift", "planner"])
def test_warm_start_init_is_no_worse_than_pi_rollout(init):
    agent = make_agent(init=init, bound_mode="project")
    assert agent.solver.bound_mode == "project"
    rng = np.random.default_rng(7)
    obs = random_obs(agent.spec, rng)
    agent.act(obs, t0=True, eval_mode=True, step=STEP)
    assert agent._prev_U is not None and agent._prev_U.shape == (1, agent.cfg.horizon, 2)
    prev = agent._prev_U.clone()
    x = agent.obs_tensor(random_obs(agent.spec, rng))
    with torch.no_grad():
        z0 = agent.model.encode(x)
        U_pi = agent.initial_plan(z0, agent.plan_horizon(STEP), eval_mode=True)
        U0 = agent.acting_plan(x, z0, t0=False, eval_mode=True, step=STEP)
        g_pi, g0 = agent.predicted_return(z0, U_pi), agent.predicted_return(z0, U0)
        U, info = agent.solve(x, STEP, eval_mode=True, backward="none", U0=U0)
    assert U0.shape == U_pi.shape and float(g0) >= float(g_pi) - 1e-6
    if init == "shift":  # the candidate is the previous solution shifted by one step
        cand = U_pi.clone()
        cand[:, :-1] = prev[:, 1:]
        assert torch.equal(U0, cand) or torch.equal(U0, U_pi)
    assert float(-info.best_cost[0]) >= float(g0[0]) - 1e-5
    assert U.abs().max() <= 1.0
    agent.reset()
    assert agent._prev_U is None


def test_projected_bounds_keep_pg_gradient_on_free_coordinates():
    agent = make_agent(bound_mode="project", backward="implicit")
    x = torch.as_tensor(random_obs(agent.spec, np.random.default_rng(8), 4))
    loss, U, _ = agent.pg_loss(x, STEP)
    assert U.abs().max() <= 1.0
    free = U[:, 0].detach().abs() < 1.0
    loss.backward()
    total = sum(float(p.grad.abs().sum()) for p in agent.model._dynamics.parameters() if p.grad is not None)
    assert bool(free.any()) == (total > 0)


def test_bad_init_or_bound_mode_is_rejected():
    from difftori.utils.config import ConfigError

    with pytest.raises(ConfigError, match="difftori.init"):
        DiffTORIConfig(init="mppi")
    with pytest.raises(ConfigError, match="difftori.bound_mode"):
        DiffTORIConfig(bound_mode="clip")


def test_act_planner_executes_mppi_and_accumulates_pg_from_its_plan():
    """act=planner: the executed action is TD-MPC's (same RNG -> same action); the PG solve still accumulates."""
    from difftori.rl.tdmpc import TDMPC

    agent = make_agent(act="planner")
    obs = random_obs(agent.spec, np.random.default_rng(9))
    x = agent.obs_tensor(obs)
    torch.manual_seed(5)
    expect = TDMPC.plan(agent, x, t0=True, eval_mode=False, step=STEP)
    plan = agent._prev_mean.clone()
    agent.reset()
    torch.manual_seed(5)
    a = agent.plan(x, t0=True, eval_mode=False, step=STEP)
    torch.testing.assert_close(a, expect)
    torch.testing.assert_close(agent._prev_mean, plan)
    assert agent._pg_count == 1 and agent._pg_grads is not None
    assert agent.on_episode_end(STEP)["pg_stepped"].item() == 1.0
    # evaluation: the planner only, no solve, nothing accumulated
    agent.plan(x, t0=True, eval_mode=True, step=STEP)
    assert agent._pg_count == 0
    with pytest.raises(Exception, match="difftori.act"):
        DiffTORIConfig(act="mppi")


def test_explore_planner_uses_the_mppi_elite_std():
    """explore=planner: the training noise on the solver's action has the std of the MPPI plan's first action (never
    below the schedule, which clamps the elites' std); explore=schedule: the schedule's std. Evaluation adds none."""
    from difftori.utils.config import ConfigError

    obs = random_obs(make_agent().spec, np.random.default_rng(3))
    evals = []
    for explore in ("schedule", "planner"):
        torch.manual_seed(0)
        agent = make_agent(explore=explore)
        x = agent.obs_tensor(obs)
        agent.plan(x, t0=True, eval_mode=False, step=STEP)
        std = agent._explore_std(STEP)
        if explore == "planner":
            torch.testing.assert_close(std, agent._prev_std[0])
            assert std.shape == (agent.spec.action_dim,) and bool((std >= agent.std(STEP) - 1e-7).all())
            assert bool((std > agent.std(STEP) + 1e-4).any())  # early in training the elites spread wider
        else:
            assert std == agent.std(STEP)
        agent.reset()
        torch.manual_seed(11)
        evals.append(agent.plan(x, t0=True, eval_mode=True, step=STEP))
        # the episode's metrics report the mean std of the noise actually added (training steps only)
        logged = agent.on_episode_end(STEP)["explore_std"]
        torch.testing.assert_close(logged, torch.as_tensor(std).float().mean())
    torch.testing.assert_close(evals[0], evals[1])  # same weights and RNG: evaluation adds no noise in either mode
    with pytest.raises(ConfigError, match="needs difftori.init=planner"):
        DiffTORIConfig(explore="planner", init="pi")
    with pytest.raises(ConfigError, match="difftori.explore"):
        DiffTORIConfig(explore="wide")
