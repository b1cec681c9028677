"""The hand-written predicted-return gradient (``difftori.return_grad``) against autograd, and solves that use it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftori.rl.fast_return import ReturnGradient, compiled_return_gradient, supports
from tests.rl.test_difftori_agent import STEP, make_agent, random_obs


def _autograd(agent, z0, U):
    Ul = U.detach().requires_grad_()
    G = agent.predicted_return(z0, Ul)
    (g,) = torch.autograd.grad(G.sum(), Ul)
    return G.detach(), g


def _randomise_layernorms(agent) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for net in (agent.model._Q1, agent.model._Q2):
            net[1].weight.copy_(0.5 + torch.rand(net[1].weight.shape, generator=g))
            net[1].bias.copy_(0.2 * torch.randn(net[1].bias.shape, generator=g))


@pytest.mark.parametrize("B,H", [(1, 1), (1, 3), (4, 3)])
def test_value_and_gradient_match_autograd(B, H):
    agent = make_agent()
    _randomise_layernorms(agent)
    assert supports(agent.model)
    z0 = agent.model.encode(torch.randn(B, 5)).detach()
    U = torch.rand(B, H, 2) * 2 - 1
    G, g = ReturnGradient(agent.model, agent.cfg.discount)(z0, U)
    G_ref, g_ref = _autograd(agent, z0, U)
    torch.testing.assert_close(G, G_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    assert g.abs().max() > 1e-3  # a real gradient, not two zeros agreeing


def test_tied_critics_split_the_gradient_like_torch_minimum():
    agent = make_agent()  # twin critics with the same weights: every q1 == q2, torch.minimum gives each half
    agent.model._Q2.load_state_dict(agent.model._Q1.state_dict())
    z0 = agent.model.encode(torch.randn(2, 5)).detach()
    U = torch.rand(2, 3, 2) * 2 - 1
    G, g = ReturnGradient(agent.model, agent.cfg.discount)(z0, U)
    G_ref, g_ref = _autograd(agent, z0, U)
    torch.testing.assert_close(G, G_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_acting_and_pg_solves_match_autograd():
    """Same solves, same policy-gradient loss and gradient, with the manual gradient in the no-graph iterations."""
    obs = torch.as_tensor(random_obs(make_agent().spec, np.random.default_rng(0), 1))
    out = {}
    U0 = torch.rand(1, 3, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for mode in ("autograd", "manual"):
        torch.manual_seed(0)  # the same weights for both agents
        agent = make_agent(return_grad=mode, max_iters=30, plateau_window=0)
        U, info = agent.solve(obs, STEP, eval_mode=True, backward="none", U0=U0)
        loss, _, _ = agent.pg_loss(obs, STEP, U0=U0)
        grads = torch.autograd.grad(loss, agent.pg_parameters(), allow_unused=True)
        out[mode] = (U, info.iterations, loss.detach(), grads)
    (Ua, ita, la, ga), (Um, itm, lm, gm) = out["autograd"], out["manual"]
    assert torch.equal(ita, itm) and int(ita.max()) > 5
    torch.testing.assert_close(Um, Ua, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lm, la, rtol=1e-4, atol=1e-5)
    for a, m in zip(ga, gm):
        if a is not None:
            torch.testing.assert_close(m, a, rtol=1e-3, atol=1e-5)


def _cxx() -> str | None:
    import shutil

    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.mark.skipif(_cxx() is None, reason="torch.compile's CPU backend needs a C++ compiler (none on PATH)")
def test_compiled_matches_manual():
    agent = make_agent()
    z0 = agent.model.encode(torch.randn(1, 5)).detach()
    U = torch.rand(1, 3, 2) * 2 - 1
    prog = ReturnGradient(agent.model, agent.cfg.discount)
    G, g = compiled_return_gradient()(prog, z0, U)
    G_ref, g_ref = prog(z0, U)
    torch.testing.assert_close(G, G_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_second_order_method_with_manual_gradient_is_a_clear_error():
    with pytest.raises(ValueError, match="return_grad"):
        make_agent(return_grad="manual", solver_method="newton")


def test_compiled_falls_back_to_eager_when_compilation_fails(monkeypatch):
    import difftori.rl.fast_return as fr

    def broken(fn, **options):
        def call(*args):
            raise RuntimeError("no compiler")
        return call

    monkeypatch.setattr(fr, "_COMPILED", None)
    monkeypatch.setattr(fr.torch, "compile", broken)
    agent = make_agent()
    z0 = agent.model.encode(torch.randn(1, 5)).detach()
    U = torch.rand(1, 3, 2) * 2 - 1
    prog = ReturnGradient(agent.model, agent.cfg.discount)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        G, g = fr.compiled_return_gradient()(prog, z0, U)
    G_ref, g_ref = prog(z0, U)
    assert torch.equal(G, G_ref) and torch.equal(g, g_ref)


def test_weight_snapshot_is_reused_until_a_parameter_changes():
    """Evaluation solves reuse one snapshot; any in-place parameter update (optimizer step, load) refreshes it,
    so a solve never sees stale weights."""
    agent = make_agent(return_grad="manual")
    first = agent._return_gradient()
    assert agent._return_gradient() is first
    z0 = agent.model.encode(torch.randn(1, 5)).detach()
    U = torch.rand(1, 3, 2) * 2 - 1
    with torch.no_grad():
        agent.model._reward[-1].bias.add_(1.0)  # an in-place update, as an optimizer step does
    fresh = agent._return_gradient()
    assert fresh is not first
    torch.testing.assert_close(fresh(z0, U)[0], _autograd(agent, z0, U)[0], rtol=1e-5, atol=1e-6)
    agent.model.load_state_dict(agent.model.state_dict())
    assert agent._return_gradient() is not fresh
