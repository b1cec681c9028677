"""DiffTORI-IL, faithful mode: the packed solve in training and inference, draw selection, base pool."""

from __future__ import annotations

import pytest
import torch

from difftori.il.config import DiffTORIConfig, SolverConfig
from difftori.optim import TrajOptimizer
from difftori.utils.config import ConfigError
from tests.il.conftest import linear_state_data
from tests.il.test_difftori import build

SMALL_DIFFUSION = {"down_dims": (16, 32), "step_embed_dim": 16}


def packed_policy(data, **difftori):
    return build("difftori", data, difftori={"init": "noise", "solver": {"packed": True, "max_iters": 5, "step_size": 1e-3}, **difftori})


def test_packed_training_solve_couples_the_batch_and_per_sample_does_not():
    data = linear_state_data(n=64)
    for packed in (True, False):
        pol = build("difftori", data, difftori={"init": "noise", "solver": {"packed": packed, "max_iters": 5, "step_size": 1e-3}})
        assert pol.solver(training=True).packed is packed and pol.solver(training=False).packed is packed
        with torch.no_grad():
            feat = pol.encoder(pol.normalize_obs({k: v[:8] for k, v in data["obs"].items()}))
        z, U0 = torch.randn(8, pol.cfg.z_dim), torch.rand(8, 4, 4) * 0.4 - 0.2
        Ua, _ = pol.solve(feat, z, U0, training=False)
        feat2 = feat.clone()
        feat2[5] += 1.0  # another observation for sample 5 only
        Ub, _ = pol.solve(feat2, z, U0, training=False)
        assert not torch.equal(Ua[5], Ub[5])
        if packed:
            assert not torch.equal(Ua[0], Ub[0]), "packed: one problem, sample 0 sees sample 5 through r and the denominator"
        else:
            torch.testing.assert_close(Ua[0], Ub[0], rtol=0, atol=0)


def test_packed_inference_solves_each_observations_draws_as_one_problem(monkeypatch):
    data = linear_state_data(n=64)
    pol = packed_policy(data).eval()
    assert pol.cfg.draws == 128  # the original's 128 draws per observation
    calls = []
    real = TrajOptimizer.solve

    def spy(self, cost_fn, U0, *a, **k):
        out = real(self, cost_fn, U0, *a, **k)
        calls.append((self.packed, k.get("packed_groups", 1), U0.clone(), out[0].clone(), out[1]))
        return out

    monkeypatch.setattr(TrajOptimizer, "solve", spy)
    obs = {k: v[:3] for k, v in data["obs"].items()}
    a = pol.predict_action(obs)
    assert a.shape == (3, 4, 4)
    assert len(calls) == 1, "one batched call"
    packed, groups, U0, U, info = calls[0]
    assert packed and groups == 3 and U0.shape == (3 * 128, 4, 4), "one packed problem per observation, never several in one"
    for j in range(3):
        blk = slice(128 * j, 128 * (j + 1))
        assert (U0[blk] == U0[blk][:1]).all(), "the draws of one observation start from the same initial window"
        assert not torch.equal(U[blk][0], U[blk][1]), "different draws z give different solutions"
        # the executed window is draw 0's last iterate (what the original executes)
        torch.testing.assert_close(a[j], pol.unnormalize_action(U[blk][:1])[0])

    calls.clear()
    pol.cfg.inference_select = "lowest_cost"
    a = pol.predict_action(obs)
    _, _, _, U, info = calls[0]
    for j in range(3):
        blk = slice(128 * j, 128 * (j + 1))
        torch.testing.assert_close(a[j], pol.unnormalize_action(U[blk][info.cost[blk].argmin()][None])[0])


def test_per_sample_inference_defaults_to_one_draw_and_can_take_the_lowest_cost_of_many(monkeypatch):
    data = linear_state_data(n=64)
    pol = build("difftori", data, difftori={"init": "noise", "solver": {"max_iters": 5, "packed": False}}).eval()
    assert pol.cfg.draws == 1
    pol.cfg.inference_samples, pol.cfg.inference_select = 16, "lowest_cost"
    seen = []
    real = TrajOptimizer.solve

    def spy(self, cost_fn, U0, *a, **k):
        out = real(self, cost_fn, U0, *a, **k)
        seen.append(out[1])
        return out

    monkeypatch.setattr(TrajOptimizer, "solve", spy)
    obs = {k: v[:2] for k, v in data["obs"].items()}
    a = pol.predict_action(obs)
    assert len(seen) == 1 and seen[0].best_U.shape == (32, 4, 4)  # per-sample: every draw of every observation at once
    cost = seen[0].best_cost.reshape(2, 16)
    for j in range(2):
        torch.testing.assert_close(a[j], pol.unnormalize_action(seen[0].best_U[16 * j + cost[j].argmin()][None])[0])


def test_base_pool_replaces_the_per_step_base_call():
    data = linear_state_data(n=64)
    base = build("diffusion", data, diffusion=SMALL_DIFFUSION).eval()
    pol = build("difftori", data, base=base, difftori={"base_pool": 3, "solver": {"max_iters": 3}})

    def fake_base(obs, samples=1):  # identifiable per observation, stochastic per call
        x = obs["full_state"][:, -1, :16].reshape(-1, 4, 4).repeat_interleave(samples, 0)
        return 0.5 * x + 0.01 * torch.randn_like(x)

    pol.base.predict_action = fake_base
    pol.on_train_start({"obs": data["obs"], "action": data["action"]})
    assert pol._pool.shape == (64, 3, 4, 4)
    own = 0.5 * data["obs"]["full_state"][:, -1, :16].reshape(64, 1, 4, 4)
    assert (pol._pool - own).abs().max() < 0.05, "each window's pool holds predictions for its own observation"
    assert not torch.equal(pol._pool[:, 0], pol._pool[:, 1]), "K stochastic predictions per window"

    def no_base(*a, **k):
        raise AssertionError("the base must not be called during a training step with a pool")

    pol.base.predict_action = no_base
    idx = torch.tensor([3, 7, 7, 60])
    torch.manual_seed(0)
    U0 = pol.initial_actions({k: v[idx] for k, v in data["obs"].items()}, 4, training=True, index=idx)
    assert all(any(torch.equal(U0[i], pol._pool[j, k]) for k in range(3)) for i, j in enumerate(idx.tolist()))
    loss, _ = pol.compute_loss({"obs": {k: v[idx] for k, v in data["obs"].items()}, "action": data["action"][idx], "index": idx})
    loss.backward()


def test_diffusion_draws_per_observation_equal_repeated_observations():
    """The pool's K draws per window encode each window once: the same draws as K copies of the observation."""
    data = linear_state_data(n=8)
    base = build("diffusion", data, diffusion=SMALL_DIFFUSION).eval()
    obs = {k: v[:5] for k, v in data["obs"].items()}
    torch.manual_seed(3)
    many = base.predict_action(obs, samples=4)
    torch.manual_seed(3)
    repeated = base.predict_action({k: v.repeat_interleave(4, 0) for k, v in obs.items()})
    assert many.shape == (20, 4, 4)
    torch.testing.assert_close(many, repeated)
    assert not torch.allclose(many[0], many[1]), "different draws for one observation"


def test_config_validation():
    with pytest.raises(ConfigError, match="solver.packed needs solver.method lm_scalar"):
        SolverConfig(method="newton", packed=True)
    with pytest.raises(ConfigError, match="inference_samples"):
        DiffTORIConfig(init="zeros", inference_samples=0)
    with pytest.raises(ConfigError, match="base_pool"):
        DiffTORIConfig(base_pool=-1)
    assert DiffTORIConfig(solver=SolverConfig(packed=True)).draws == 128
    assert DiffTORIConfig(inference_samples=7, solver=SolverConfig(packed=True)).draws == 7


@pytest.mark.parametrize("packed", [True, False])
def test_manual_cost_gradient_gives_the_same_solves_and_loss(packed):
    """difftori.cost_grad=manual: the no-graph iterations use the hand-written gradient; solves, the loss and its
    gradient equal autograd's to float rounding (windows start partly outside the box: clamp's zero gradient)."""
    data = linear_state_data(n=64)
    batch = {"obs": {k: v[:8] for k, v in data["obs"].items()}, "action": data["action"][:8]}
    out = {}
    for mode in ("autograd", "manual"):
        torch.manual_seed(0)
        pol = build("difftori", data, difftori={"init": "noise", "cost_grad": mode,
                                                "solver": {"packed": packed, "max_iters": 20, "step_size": 1e-3}})
        with torch.no_grad():
            feat = pol.encoder(pol.normalize_obs(batch["obs"]))
        g = torch.Generator().manual_seed(1)
        z, U0 = torch.randn(8, pol.cfg.z_dim, generator=g), torch.rand(8, 4, 4, generator=g) * 2.4 - 1.2
        U, info = pol.solve(feat, z, U0, training=False)
        torch.manual_seed(2)
        loss, _ = pol.compute_loss(batch)
        grads = torch.autograd.grad(loss, [p for p in pol.parameters() if p.requires_grad])
        out[mode] = (U, info.iterations, loss.detach(), grads)
    (Ua, ia, la, ga), (Um, im, lm, gm) = out["autograd"], out["manual"]
    assert torch.equal(ia, im)
    torch.testing.assert_close(Um, Ua, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lm, la, rtol=1e-4, atol=1e-5)
    for a, m in zip(ga, gm):  # float rounding, amplified by the 3000x action loss weight: compare as vectors
        assert torch.linalg.vector_norm(m - a) <= 1e-4 * torch.linalg.vector_norm(a) + 1e-7


def test_manual_cost_gradient_needs_a_first_order_method():
    with pytest.raises(ValueError, match="cost_grad"):
        DiffTORIConfig(cost_grad="manual", solver=SolverConfig(method="newton"))


def test_encoder_init_base_copies_the_bases_acting_encoder_and_trains_its_own_copy():
    data = linear_state_data(n=64)
    base = build("diffusion", data, diffusion=SMALL_DIFFUSION).eval()
    with torch.no_grad():  # make the EMA encoder (the one the base acts with) differ from the raw one
        for p in base.ema_nets["encoder"].parameters():
            p.add_(0.1)
    pol = build("difftori", data, base=base, difftori={"encoder_init": "base", "solver": {"max_iters": 2}})
    for (k, a), b in zip(pol.encoder.state_dict().items(), base.ema_nets["encoder"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert all(p.requires_grad for p in pol.encoder.parameters()), "a trainable copy, not the frozen base's encoder"
    assert not any(p is q for p in pol.encoder.parameters() for q in base.parameters())
    fresh = build("difftori", data, base=base, difftori={"solver": {"max_iters": 2}})
    assert not torch.equal(next(iter(fresh.encoder.state_dict().values())), next(iter(pol.encoder.state_dict().values())))
    with pytest.raises(ConfigError, match="encoder_init=base needs difftori.init=base"):
        DiffTORIConfig(init="zeros", encoder_init="base")
    with pytest.raises(ValueError, match="encoder does not match"):
        build("difftori", data, base=base, encoder_dim=32, difftori={"encoder_init": "base"})
