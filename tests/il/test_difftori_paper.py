"""DiffTORI-IL in the paper's formulation (Eq. 7, Appendix D): the cost, gradients into every part, the implicit
gradient against finite differences, a learning check, the config and preset, and a checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from difftori.il.config import IL_PRESETS, DiffTORIConfig, ILConfig
from difftori.il.policies import load_policy
from difftori.utils.config import ConfigError, from_dict
from difftori.utils.io import save_checkpoint
from tests.il.conftest import linear_state_data
from tests.il.test_difftori import build
from tests.il.test_policies import fit
from tests.learning import check

# projected gd inside the box with the implicit gradient at its last iterate (as the paper-eq7 preset, fewer iterations)
GD_IMPLICIT = {"method": "gd", "max_iters": 20, "step_size": 0.1, "backward": "implicit", "tol": 1e-4}
TINY = {"formulation": "paper", "init": "zeros", "hidden": 16, "z_dim": 3, "action_loss_weight": 1.0, "kl_weight": 1.0, "solver": GD_IMPLICIT}


def paper_policy(data, action_steps: int = 2, **kw):
    return build("difftori", data, action_steps=action_steps, encoder_dim=6, difftori={**TINY, **kw})


def _batch(data, n: int):
    return {"obs": {k: v[:n] for k, v in data["obs"].items()}, "action": data["action"][:n]}


def test_paper_cost_is_the_discounted_latent_return():
    torch.manual_seed(0)
    data = linear_state_data(n=16, action_steps=3)
    pol = paper_policy(data, action_steps=3, gamma=0.8)
    feat = pol.encoder(pol.normalize_obs(_batch(data, 5)["obs"]))
    s0 = pol.latent(feat)
    assert s0.shape == (5, 6), "the latent state has encoder_dim entries"
    z, U = torch.randn(5, 3), torch.rand(5, 3, 4) * 2.4 - 1.2  # some entries outside the box: clamped inside the cost
    s, ret = s0, torch.zeros(5)
    for l in range(3):
        a = U[:, l].clamp(-1, 1)
        ret = ret + 0.8**l * pol.reward(torch.cat([s, a, z], -1)).squeeze(-1)
        s = pol.dynamics(torch.cat([s, a], -1))
    torch.testing.assert_close(pol.cost(pol.context(feat), z, U), -ret)
    # the last action moves the cost only through f (its successor state is not used); earlier ones also through d
    d_calls = []
    pol.dynamics.register_forward_hook(lambda *_: d_calls.append(1))
    pol.cost(s0, z, U)
    assert len(d_calls) == 2
    assert not hasattr(pol, "cost_net") and not hasattr(pol, "cvae_encoder")
    released = build("difftori", data, action_steps=3, difftori={"init": "zeros"})
    assert not hasattr(released, "dynamics") and released.context(feat) is feat


def test_every_part_gets_gradient_from_the_imitation_loss():
    torch.manual_seed(0)
    data = linear_state_data(n=32, action_steps=2)
    pol = paper_policy(data)
    loss, metrics = pol.compute_loss(_batch(data, 16))
    assert set(metrics) >= {"loss", "action_mse", "kl"}
    loss.backward()
    parts = {"obs encoder": pol.encoder, "latent": pol.latent, "dynamics": pol.dynamics, "reward": pol.reward,
             "h_o": pol.obs_cvae, "h_a": pol.act_cvae, "h_l": pol.fuse_cvae}
    for name, part in parts.items():
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, f"no gradient reached {name}"
    assert all(p.grad is not None for p in pol.dynamics.parameters())
    assert pol.reward[-1].bias.grad is None, "f's output bias does not move the argmax (nothing else is missing)"
    assert all(p.grad is not None for p in list(pol.reward.parameters())[:-1])
    # the action MSE alone (no KL) reaches the dynamics: it is trained through the solver
    pol.zero_grad()
    pol.cfg.kl_weight = 0.0
    pol.compute_loss(_batch(data, 16))[0].backward()
    assert sum(p.grad.abs().sum() for p in pol.dynamics.parameters()) > 0


def test_implicit_gradient_matches_finite_differences():
    torch.manual_seed(0)
    data = linear_state_data(n=8, obs_dim=5, action_steps=2)
    solver = {"method": "newton", "max_iters": 200, "step_size": 1.0, "backward": "implicit", "tol": 1e-11}
    pol = build("difftori", data, action_steps=2, encoder_dim=3, difftori={**TINY, "hidden": 8, "z_dim": 2, "solver": solver}).double()
    feat = pol.encoder.float()(pol.normalize_obs(_batch(data, 8)["obs"])).detach().double()  # encoders run in float32
    z, U0, R = torch.randn(8, 2, dtype=torch.float64), torch.zeros(8, 2, 4, dtype=torch.float64), torch.randn(8, 2, 4, dtype=torch.float64)
    params = [p for m in (pol.latent, pol.dynamics, pol.reward) for p in m.parameters()]

    def loss():
        U, info = pol.solve(pol.context(feat), z, U0, training=True)
        return (U * R).sum(), U, info

    value, U, info = loss()
    assert (info.status == 0).all(), "every sample must be solved to a stationary point"
    free = U.abs() < 1 - 1e-6
    assert free.any(), "some coordinates must be inside the box (active ones have zero gradient)"
    grads = torch.autograd.grad(value, params, allow_unused=True)  # f's output bias does not move the argmax
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    gen, eps, errs = torch.Generator().manual_seed(1), 1e-6, []
    for _ in range(3):
        v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        analytic = sum((g * d).sum() for g, d in zip(grads, v)).item()
        fd = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(params, v):
                    p.add_(sign * eps * d)
            fd.append(loss()[0].item())
            with torch.no_grad():
                for p, d in zip(params, v):
                    p.sub_(sign * eps * d)
        numeric = (fd[0] - fd[1]) / (2 * eps)
        assert abs(numeric) > 0.1, "a direction with a non-trivial derivative"
        errs.append(abs(analytic - numeric) / abs(numeric))
    assert max(errs) < 1e-3, errs  # measured 6.3e-8 - 1.2e-6 (11% of the coordinates free)


def paper_stats(seed: int) -> dict[str, float]:
    """Paper formulation from U0 = 0 on ``linear_state_data`` (2-action windows, gd + implicit gradient, lr 3e-3).

    ``recon_ratio``: training action MSE (posterior z, last 20 of 200 steps) over the best constant's;
    ``fresh_ratio``: the same for the first 5 steps (an untrained model's argmax is no better than a constant).
    """
    torch.manual_seed(seed)
    data = linear_state_data(n=256, action_steps=2, seed=seed)
    pol = build("difftori", data, action_steps=2, encoder_dim=16, difftori={**TINY, "hidden": 64, "z_dim": 4})
    opt = torch.optim.Adam(pol.trainable_parameters(), lr=3e-3)
    a = data["action"]
    const = (a - a.mean(0)).pow(2).mean().item()
    mse = []
    for _ in range(200):
        idx = torch.randint(0, 256, (64,))
        loss, m = pol.compute_loss({"obs": {k: v[idx] for k, v in data["obs"].items()}, "action": a[idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        mse.append(m["action_mse"].item())
    return {"recon_ratio": sum(mse[-20:]) / 20 / const, "fresh_ratio": sum(mse[:5]) / 5 / const}


PAPER_LIMITS = {
    # ranges: benchmarks/results/learning_margins.md (seeds 0-2 x CPU capabilities default/avx2/avx512)
    "recon_ratio": ("<", 0.9),  # measured 0.355-0.850; seed 0 (this test) 0.355-0.391; seed 1 learns slowly (0.73-0.85)
    "fresh_ratio": (">", 0.9),  # measured 1.03-1.06
}


@pytest.mark.learning
def test_paper_formulation_learns():
    check(paper_stats(0), PAPER_LIMITS)


def test_config_and_preset():
    with pytest.raises(ConfigError, match="formulation must be released or paper"):
        DiffTORIConfig(formulation="bogus")
    with pytest.raises(ConfigError, match="gamma"):
        DiffTORIConfig(gamma=0.0)
    with pytest.raises(ConfigError, match="needs residuals"):
        from_dict(DiffTORIConfig, {"solver": {"method": "lm", "packed": False}})
    with pytest.raises(ConfigError, match="action_steps >= 2"):
        from_dict(ILConfig, {"policy": "difftori", "action_steps": 1, "difftori": {"formulation": "paper", "init": "zeros"}})
    assert DiffTORIConfig().formulation == "released"
    cfg = from_dict(ILConfig, {**IL_PRESETS["paper-eq7"], "policy": "difftori", "base_policy": "x"})
    d, s = cfg.difftori, cfg.difftori.solver
    assert (d.formulation, d.kl_weight, d.action_loss_weight, d.z_dim, d.draws) == ("paper", 1.0, 1.0, 64, 1)
    assert (cfg.lr, cfg.lr_min, cfg.encoder_dim, cfg.batch_size, cfg.action_steps) == (3e-4, 3e-4, 50, 128, 2)
    assert (s.backward, s.packed, s.method) == ("implicit", False, "gd")


def test_paper_preset_in_the_cli():
    import argparse

    from difftori.il.train import register_cli, train_config

    p = argparse.ArgumentParser()
    register_cli(p.add_subparsers())
    cfg = train_config(p.parse_args(["train", "--preset", "paper-eq7", "--policy", "difftori", "--base-policy", "x", "--difftori.gamma", "1"]))
    assert cfg.difftori.formulation == "paper" and cfg.difftori.gamma == 1.0 and cfg.encoder_dim == 50
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--difftori.formulation", "bogus"])


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    torch.manual_seed(0)
    data = linear_state_data(n=64, action_steps=2)
    pol = paper_policy(data, inference_samples=3, inference_select="lowest_cost")
    fit(pol, data, 3)
    pol.eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"policy_info": pol.build_info(), "policy": pol.state_dict()})
    loaded = load_policy(path)
    assert loaded.build_info()["cfg"]["formulation"] == "paper" and loaded.build_info() == pol.build_info()
    obs = {k: v[:5] for k, v in data["obs"].items()}
    torch.manual_seed(7)
    a = pol.predict_action(obs)
    torch.manual_seed(7)
    b = loaded.predict_action(obs)
    assert a.shape == (5, 2, 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_base_init_packed_solve_and_base_pool_work_in_paper_mode():
    data = linear_state_data(n=64, action_steps=2)
    base = build("diffusion", data, action_steps=2, diffusion={"down_dims": (16, 32), "step_embed_dim": 16})
    fit(base, data, 2)
    obs = {k: v[:3] for k, v in data["obs"].items()}
    for extra, draws in (({"solver": {"max_iters": 5}}, 128), ({"base_pool": 2, "solver": {"method": "newton", "max_iters": 3, "backward": "implicit"}}, 1)):
        pol = build("difftori", data, base=base, action_steps=2, difftori={"formulation": "paper", **extra})
        pol.on_train_start(data)
        fit(pol, data, 2)
        assert pol.cfg.draws == draws and pol.eval().predict_action(obs).shape == (3, 2, 4)
