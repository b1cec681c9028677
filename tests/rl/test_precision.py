"""``precision=bf16``: one update close to fp32, MPPI actions fp32 in bounds, difftori.optim solves kept in fp32,
validation and the train option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftori.envs.spec import EnvSpec
from difftori.rl.buffer import ReplayBuffer
from difftori.rl.config import DiffTORIConfig, RLConfig
from difftori.rl.difftori import DiffTORI
from difftori.rl.tdmpc import TDMPC
from difftori.utils.config import ConfigError

SPEC = EnvSpec(task="walker-walk", suite="dmc", obs_type="state", obs_shapes={"obs": (24,)}, action_dim=6,
               episode_length=50, action_repeat=2)
STEP = 10_000  # after the schedules: full planning horizon
AGENTS = {"tdmpc": TDMPC, "difftori": DiffTORI}

# Relative |bf16 - fp32| / |fp32| of every metric of one update, measured over seeds 0-7 of this setup:
# tdmpc max 0.50% (value_loss; others <= 0.20%), difftori max 0.25% (pi_loss; others <= 0.21%).
UPDATE_RTOL = 0.02


def tiny_cfg(agent: str, precision: str, **difftori) -> RLConfig:
    return RLConfig(
        task="walker-walk", agent=agent, device="cpu", precision=precision, latent_dim=16, mlp_dim=64, enc_dim=32,
        batch_size=64, horizon=3, num_samples=32, num_elites=4, iterations=2, seed_steps=0, schedule_steps=100,
        difftori=DiffTORIConfig(pg_start_step=0, max_iters=10, **difftori),
    )


def make_agent(agent: str, precision: str, seed: int = 0, **difftori) -> TDMPC:
    """A tiny agent whose zero-initialised reward / critic output layers are randomised (nonzero losses)."""
    torch.manual_seed(seed)
    a = AGENTS[agent](tiny_cfg(agent, precision, **difftori), SPEC)
    m = a.model
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in [m._reward, m._Q1, m._Q2] + ([m._Qs1, m._Qs2] if m.obs_critic else []):
            net[-1].weight.copy_(torch.randn(net[-1].weight.shape, generator=g) * 0.5)
    a.model_target.load_state_dict(m.state_dict())
    return a


def random_buffer(seed: int) -> ReplayBuffer:
    buf = ReplayBuffer(SPEC.obs_shape, SPEC.action_dim, 1000, 3, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        buf.add_episode(rng.standard_normal((41, *SPEC.obs_shape)).astype(np.float32),
                        rng.uniform(-1, 1, (40, SPEC.action_dim)).astype(np.float32), rng.random(40).astype(np.float32))
    return buf


def output_dtypes(module: torch.nn.Module, fn) -> set[torch.dtype]:
    """dtypes of ``module``'s outputs during ``fn()``."""
    seen: set[torch.dtype] = set()
    handle = module.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    try:
        fn()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("agent", ["tdmpc", "difftori"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_update_matches_fp32(agent, seed):
    fp32 = make_agent(agent, "fp32", seed)
    bf16 = make_agent(agent, "bf16", seed)
    bf16.load_state_dict(fp32.state_dict())
    metrics, dtypes = {}, {}
    for a in (fp32, bf16):
        buf = random_buffer(seed)
        torch.manual_seed(seed + 100)  # same pi noise in both
        dtypes[a.cfg.precision] = output_dtypes(a.model._dynamics, lambda: metrics.__setitem__(a.cfg.precision, a.update(buf, 0)))
        assert all(p.dtype == torch.float32 for p in a.model.parameters())
        assert all(s.dtype == torch.float32 for st in a.optim.state.values() for s in st.values() if s.dim() > 0)
        assert np.isfinite(buf._prio).all() and buf._prio.dtype == np.float64
    assert dtypes == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}  # autocast is on exactly when asked for
    ref, got = metrics["fp32"], metrics["bf16"]
    assert set(ref) == set(got) and ("value_s_loss" in got) == (agent == "difftori")
    for k, v in got.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), k
        assert float(v) == pytest.approx(float(ref[k]), rel=UPDATE_RTOL), k
    # the updates really differ (bf16 rounding), i.e. the comparison above is not vacuous
    assert any(float(got[k]) != float(ref[k]) for k in ("consistency_loss", "value_loss", "grad_norm"))


def test_bf16_plan_returns_fp32_action_in_bounds():
    agent = make_agent("tdmpc", "bf16")
    obs = agent.obs_tensor(np.random.default_rng(0).standard_normal(SPEC.obs_shape).astype(np.float32))
    seen = output_dtypes(agent.model._reward, lambda: agent.plan(obs, t0=True, eval_mode=True, step=STEP))
    assert seen == {torch.bfloat16}
    for eval_mode in (True, False):
        a = agent.plan(obs, t0=False, eval_mode=eval_mode, step=STEP)
        assert a.shape == (SPEC.action_dim,) and a.dtype == torch.float32 and torch.isfinite(a).all()
        assert agent._prev_mean.dtype == torch.float32
        if eval_mode:  # an elite sequence's action (training adds unclamped exploration noise; act() clamps)
            assert a.abs().max() <= 1.0
    act = agent.act(obs[0].numpy(), t0=True, eval_mode=False, step=STEP)
    assert act.dtype == np.float32 and np.all(np.abs(act) <= 1.0) and np.all(np.isfinite(act))


def solver_spy(agent: DiffTORI, monkeypatch) -> list[tuple[torch.dtype, torch.dtype, bool]]:
    """Record, for every solve, the dtype of U0, of the cost at U0 and whether autocast was on."""
    calls = []
    inner = agent.solver.solve

    def spy(cost_fn, U0, residual_fn=None, **kw):
        fn = cost_fn if cost_fn is not None else residual_fn
        with torch.no_grad():
            calls.append((U0.dtype, fn(U0).dtype, torch.is_autocast_enabled("cpu")))
        return inner(cost_fn, U0, residual_fn=residual_fn, **kw)

    monkeypatch.setattr(agent.solver, "solve", spy)
    return calls


@pytest.mark.parametrize("init", ["pi", "planner"])
def test_difftori_solves_stay_fp32_under_bf16(init, monkeypatch):
    agent = make_agent("difftori", "bf16", init=init)
    calls = solver_spy(agent, monkeypatch)
    obs = np.random.default_rng(1).standard_normal(SPEC.obs_shape).astype(np.float32)
    # An enclosing bf16 region (as in update) must not reach the solver either.
    with agent.autocast():
        a_eval = agent.act(obs, t0=True, eval_mode=True, step=STEP)
        a_train = agent.act(obs, t0=False, eval_mode=False, step=STEP)  # episode mode: the PG solve
    assert calls == [(torch.float32, torch.float32, False)] * 2
    for a in (a_eval, a_train):
        assert a.dtype == np.float32 and np.all(np.abs(a) <= 1.0) and np.all(np.isfinite(a))
    assert agent._pg_count == 1 and all(g.dtype == torch.float32 for g in agent._pg_grads)
    # the spy itself would notice a leak: the same cost under bf16 autocast is bf16
    x = agent.obs_tensor(obs)
    with torch.no_grad(), agent.autocast():
        leaked = agent.predicted_return(agent.model.encode(x), torch.zeros(1, 3, SPEC.action_dim))
    assert leaked.dtype == torch.bfloat16


def test_replay_pg_step_solves_in_fp32(monkeypatch):
    agent = make_agent("difftori", "bf16", pg_mode="replay", pg_batch=4)
    calls = solver_spy(agent, monkeypatch)
    metrics = agent.update(random_buffer(0), STEP)
    assert calls == [(torch.float32, torch.float32, False)]
    assert metrics["pg_stepped"] == 1.0 and torch.isfinite(metrics["pg_loss"])


def test_precision_is_validated():
    with pytest.raises(ConfigError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        RLConfig(precision="fp16")
    assert RLConfig().precision == "fp32"


def test_precision_is_a_train_option(capsys):
    from difftori.cli import build_parser
    from difftori.rl.cli import train_config

    parser = build_parser()
    cfg = train_config(parser.parse_args(["rl", "train", "--precision", "bf16", "--preset", "small", "--steps", "1000"]))
    assert cfg.precision == "bf16" and cfg.mlp_dim == 64  # the preset does not touch it
    assert train_config(parser.parse_args(["rl", "train"])).precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["rl", "train", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
