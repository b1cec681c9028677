"""MPC's least-squares form: the causal forward-mode rollout Jacobian and the structured Gauss-Newton path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difftori.optim import MPC, TrajOptimizer
from difftori.optim.derivatives import Evaluator
from difftori.optim.mpc import rollout_jacobian

DT = torch.float64


class Dyn(nn.Module):
    """Small learned dynamics x' = x + MLP(x, u), the shape of a latent world model."""

    def __init__(self, nx: int = 4, nu: int = 2, hidden: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(nx + nu, hidden), nn.ELU(), nn.Linear(hidden, nx)).to(DT)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x + self.net(torch.cat([x, u], -1))


class _Identity(torch.autograd.Function):
    """Old-style autograd.Function (no setup_context / jvp): torch.func transforms refuse it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


class LegacyFnDyn(Dyn):
    """The same function through a legacy autograd.Function: not usable under torch.func."""

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return _Identity.apply(super().forward(x, u))


def problem(B: int = 3, T: int = 4, nx: int = 4, nu: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, nx, generator=g, dtype=DT)
    goal = torch.randn(B, nx, generator=g, dtype=DT)
    w = torch.rand(nx, generator=g, dtype=DT) + 0.5

    def residual(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        return torch.cat([((X[:, 1:] - goal[:, None]) * w).flatten(1), 0.3 * U.flatten(1)], -1)

    U0 = 0.2 * torch.randn(B, T, nu, generator=g, dtype=DT)
    return x0, residual, U0


@pytest.mark.parametrize("mode", ["forward", "per_step", "auto"])
def test_rollout_jacobian_matches_dense_forward_mode(mode):
    dyn = Dyn()
    x0, _, U = problem()

    def roll(U_):
        xs = [x0]
        for t in range(U_.shape[1]):
            xs.append(dyn(xs[-1], U_[:, t]))
        return torch.stack(xs, 1)

    X, dX = rollout_jacobian(dyn, x0, U, mode)
    B, T, nu = U.shape
    ref = torch.func.jacfwd(roll)(U)  # (B, T+1, nx, B, T, nu): block diagonal over the batch
    ref = torch.stack([ref[b, :, :, b] for b in range(B)]).flatten(-2)
    assert torch.allclose(X, roll(U), atol=1e-12)
    assert dX.shape == ref.shape
    assert torch.allclose(dX, ref, atol=1e-10)
    # causality is exact: x_t has no dependence on u_s for s >= t
    for t in range(T + 1):
        assert torch.all(dX[:, t, :, t * nu:] == 0)


@pytest.mark.parametrize("mode", ["forward", "per_step"])
@pytest.mark.parametrize("B", [1, 9])  # residual part: reverse mode (small batch) / forward mode
def test_residual_jacobian_matches_generic(mode, B):
    dyn = Dyn()
    x0, residual, U = problem(B=B)
    mpc = MPC(dyn, None, U.shape[1], U.shape[2], residual=residual,
              optimizer=TrajOptimizer(method="gauss_newton"), jacobian_mode=mode)
    r, J = mpc.residual_jacobian(x0, U)
    ev = Evaluator(None, lambda U_: mpc.residual_of(x0, U_), U.shape[0])
    r0, J0 = ev._rj_functorch(U, False)
    assert torch.allclose(r, r0, atol=1e-12) and torch.allclose(J, J0, atol=1e-10)


@pytest.mark.parametrize("method", ["gauss_newton", "lm"])
@pytest.mark.parametrize("bound_mode", ["project", "clamp_in_cost"])
def test_structured_solve_equals_generic(method, bound_mode):
    """Same iterates with the structured and the generic Jacobian (bounded, both bound modes), and the same
    implicit gradient (the differentiable step does not use the structured path)."""
    x0, residual, U0 = problem()
    out = {}
    for structured in (True, False):
        dyn = Dyn()
        opt = TrajOptimizer(method=method, max_iters=15, bounds=(-0.4, 0.4), bound_mode=bound_mode, backward="implicit")
        mpc = MPC(dyn, None, U0.shape[1], U0.shape[2], residual=residual, optimizer=opt, structured=structured)
        res = mpc(x0, U0.clone())
        (g,) = torch.autograd.grad((res.U * torch.linspace(-1, 1, res.U.numel(), dtype=DT).reshape(res.U.shape)).sum(),
                                   dyn.net[0].weight)
        out[structured] = (res.U.detach(), res.info.iterations.clone(), res.info.status.clone(), g)
    (U1, it1, st1, g1), (U2, it2, st2, g2) = out[True], out[False]
    assert torch.equal(it1, it2) and torch.equal(st1, st2)
    assert torch.allclose(U1, U2, atol=1e-9)
    assert torch.allclose(g1, g2, atol=1e-8)


def test_structured_batch_independence():
    """Sample i's result does not depend on the rest of the batch on the structured path either."""
    x0, residual, U0 = problem(B=4)
    dyn = Dyn()
    opt = TrajOptimizer(method="lm", max_iters=10, bounds=(-0.5, 0.5), backward="none")
    full = MPC(dyn, None, U0.shape[1], U0.shape[2], residual=residual, optimizer=opt)(x0, U0.clone())
    i = 2

    def residual_i(X, U):  # the same residual restricted to sample i
        return residual(torch.cat([X] * 4), torch.cat([U] * 4))[i : i + 1]

    one = MPC(dyn, None, U0.shape[1], U0.shape[2], residual=residual_i, optimizer=opt)(x0[i : i + 1], U0[i : i + 1].clone())
    assert torch.equal(full.info.iterations[i : i + 1], one.info.iterations)
    assert torch.allclose(full.U[i : i + 1], one.U, atol=1e-12)


def test_falls_back_with_one_warning_when_functorch_fails():
    x0, residual, U0 = problem()
    ref = MPC(Dyn(), None, U0.shape[1], U0.shape[2], residual=residual,
              optimizer=TrajOptimizer(method="gauss_newton", max_iters=5, backward="none"), structured=False)(x0, U0.clone())
    mpc = MPC(LegacyFnDyn(), None, U0.shape[1], U0.shape[2], residual=residual,
              optimizer=TrajOptimizer(method="gauss_newton", max_iters=5, backward="none", hessian="auto"))
    with pytest.warns(UserWarning, match="structured Jacobian unavailable"):
        res = mpc(x0, U0.clone())
    assert torch.allclose(res.U, ref.U, atol=1e-9)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mpc(x0, U0.clone())  # remembered: no second warning


def test_probe_jacobian_is_not_wasted(monkeypatch):
    """The first call's torch.func probe serves the solver's first iteration: one structured Jacobian per
    solver Jacobian evaluation, on the first call as on later ones."""
    x0, residual, U0 = problem()
    mpc = MPC(Dyn(), None, U0.shape[1], U0.shape[2], residual=residual,
              optimizer=TrajOptimizer(method="gauss_newton", max_iters=3, tol=0.0, backward="none"))
    calls = []
    real = mpc.residual_jacobian
    monkeypatch.setattr(mpc, "residual_jacobian", lambda x, U: calls.append(1) or real(x, U))
    counts = []
    for _ in range(2):
        calls.clear()
        mpc(x0, U0.clone())
        counts.append(len(calls))
    assert counts[0] == counts[1] >= 1, counts  # the probe was counted on the first call only if it was wasted


def test_residual_jac_fn_clamp_masks_columns():
    """clamp_in_cost: columns of coordinates outside the box are zero, as torch.clamp's backward makes them."""
    x0, residual, U = problem()
    U = U.clone()
    U[0, 1, 0] = 2.0
    U[1, 0, 1] = -3.0
    mpc = MPC(Dyn(), None, U.shape[1], U.shape[2], residual=residual, optimizer=TrajOptimizer(method="gauss_newton"))
    clamp = (-0.5, 0.5)
    given = Evaluator(None, lambda U_: mpc.residual_of(x0, U_), U.shape[0], clamp=clamp,
                      residual_jac_fn=lambda U_: mpc.residual_jacobian(x0, U_))
    generic = Evaluator(None, lambda U_: mpc.residual_of(x0, U_), U.shape[0], clamp=clamp)
    c1, g1, M1 = given.residual_jac(U, False)
    c2, g2, M2 = generic.residual_jac(U, False)
    assert torch.allclose(c1, c2) and torch.allclose(g1, g2, atol=1e-10) and torch.allclose(M1, M2, atol=1e-10)


def test_bad_input_errors():
    x0, residual, U0 = problem()
    dyn = Dyn()
    with pytest.raises(ValueError, match="exactly one of stage_cost"):
        MPC(dyn, lambda x, u: (x * x).sum(-1), 4, 2, residual=residual)
    with pytest.raises(ValueError, match="exactly one of stage_cost"):
        MPC(dyn, None, 4, 2)
    with pytest.raises(ValueError, match="needs residual"):
        MPC(dyn, lambda x, u: (x * x).sum(-1), 4, 2, optimizer=TrajOptimizer(method="lm"))
    with pytest.raises(ValueError, match="jacobian_mode must be one of"):
        MPC(dyn, None, 4, 2, residual=residual, jacobian_mode="dense")
    with pytest.raises(ValueError, match="residual_jac_fn serves"):
        TrajOptimizer(method="newton").solve(lambda U: (U * U).flatten(1).sum(-1), U0,
                                             residual_jac_fn=lambda U: None)
    bad = TrajOptimizer(method="gauss_newton", max_iters=2, backward="none")
    with pytest.raises(ValueError, match="Jacobian must have shape"):
        bad.solve(None, U0, residual_fn=lambda U: U.flatten(1),
                  residual_jac_fn=lambda U: (U.flatten(1), torch.zeros(U.shape[0], 3, 3, dtype=DT)))


def test_newton_with_residual_cost():
    """Every method can use the residual form (cost 0.5||r||^2); newton and gauss_newton reach the same minimum."""
    x0, residual, U0 = problem()
    dyn = Dyn()
    a = MPC(dyn, None, U0.shape[1], U0.shape[2], residual=residual,
            optimizer=TrajOptimizer(method="newton", max_iters=50, tol=1e-10, backward="none"))(x0, U0.clone())
    b = MPC(dyn, None, U0.shape[1], U0.shape[2], residual=residual,
            optimizer=TrajOptimizer(method="lm", max_iters=200, tol=1e-10, backward="none"))(x0, U0.clone())
    assert torch.allclose(a.info.cost, b.info.cost, rtol=1e-8, atol=1e-10)
