"""Closed-form checks: quadratic costs with a parameter-dependent linear term, box constraints."""

from __future__ import annotations

import pytest
import torch

from difftori.optim import Status, TrajOptimizer

from .helpers import spd

B, H, A = 2, 2, 3
N = H * A
DT = torch.float64


def _quadratic(seed=0, cond=5.0):
    gen = torch.Generator().manual_seed(seed)
    Q = spd(N, cond, gen=gen)
    W = torch.randn(N, 3, dtype=DT, generator=gen)
    theta = torch.randn(B, 3, dtype=DT, generator=gen).requires_grad_(True)
    b0 = torch.randn(B, N, dtype=DT, generator=gen)

    def b():
        return b0 + theta @ W.T

    def cost(U):
        x = U.flatten(1)
        return 0.5 * ((x @ Q) * x).sum(-1) - (b() * x).sum(-1)

    C = torch.linalg.cholesky(Q)  # Q = C C^T: 0.5||C^T x - C^-1 b||^2 = cost + const

    def residual(U):
        x = U.flatten(1)
        return x @ C - torch.linalg.solve_triangular(C, b().T, upper=False).T

    return Q, W, theta, b, cost, residual


CASES = [
    ("newton", dict(max_iters=20), "implicit"),
    ("newton", dict(max_iters=20), "unroll"),
    ("gd", dict(step_size=0.18, max_iters=400), "implicit"),
    ("gd", dict(step_size=0.18, max_iters=400), "unroll"),
    ("adam", dict(step_size=0.02, max_iters=1500, tol=1e-7), "implicit"),
    ("gauss_newton", dict(max_iters=3, damping=1e-12), "unroll"),
    ("lm", dict(max_iters=20), "implicit"),
    ("lm", dict(max_iters=20), "unroll"),
]


@pytest.mark.parametrize("method,kw,backward", CASES, ids=[f"{m}-{b}" for m, _, b in CASES])
def test_quadratic_solution_and_jacobian(method, kw, backward):
    Q, W, theta, b, cost, residual = _quadratic()
    kw = {"tol": 1e-10, "bounds": None, "implicit_damping": 0.0, **kw}
    opt = TrajOptimizer(method=method, backward=backward, **kw)
    U0 = torch.zeros(B, H, A, dtype=DT)
    if method in ("gauss_newton", "lm"):
        U, info = opt.solve(None, U0, residual_fn=residual)
    else:
        U, info = opt.solve(cost, U0)
    x_true = torch.linalg.solve(Q, b().T).T  # U* = Q^-1 b(theta)
    tol = 1e-4 if method == "adam" else 1e-7
    assert torch.allclose(U.flatten(1), x_true, atol=tol), (U.flatten(1) - x_true).abs().max()
    # dU*/dtheta = Q^-1 W: check the full Jacobian row by row via a random functional
    w = torch.randn(B, N, dtype=DT)
    (g,) = torch.autograd.grad((w * U.flatten(1)).sum(), theta)
    g_true = torch.linalg.solve(Q, w.T).T @ W
    assert torch.allclose(g, g_true, rtol=1e-4 if method == "adam" else 1e-6, atol=1e-7), (g - g_true).abs().max()


def test_gauss_newton_solves_linear_least_squares_in_one_iteration():
    gen = torch.Generator().manual_seed(3)
    J = torch.randn(B, 10, N, dtype=DT, generator=gen)
    y = torch.randn(B, 10, dtype=DT, generator=gen)

    def residual(U):
        return torch.bmm(J, U.reshape(B, N, 1)).squeeze(-1) - y

    x_true = torch.linalg.lstsq(J, y.unsqueeze(-1)).solution.squeeze(-1)
    for method in ("gauss_newton", "lm"):
        opt = TrajOptimizer(method=method, max_iters=1 if method == "gauss_newton" else 3, damping=1e-12,
                            bounds=None, backward="none", tol=1e-9)
        U, info = opt.solve(None, torch.zeros(B, H, A, dtype=DT), residual_fn=residual)
        assert torch.allclose(U.flatten(1), x_true, atol=1e-8), method


def _kkt_box_problem():
    """Quadratic with a box whose solution has known active coordinates (constructed via KKT)."""
    gen = torch.Generator().manual_seed(5)
    Q = spd(N, 4.0, gen=gen)
    x_star = 0.5 * torch.rand(B, N, dtype=DT, generator=gen) - 0.25  # interior values
    active_lo = torch.zeros(B, N, dtype=torch.bool)
    active_hi = torch.zeros(B, N, dtype=torch.bool)
    active_lo[0, 1] = active_hi[0, 4] = active_hi[1, 0] = True
    x_star[active_lo] = -1.0
    x_star[active_hi] = 1.0
    mult = torch.zeros(B, N, dtype=DT)
    mult[active_lo], mult[active_hi] = 0.7, -0.9  # gradient at the solution: >0 at lo, <0 at hi
    b0 = (x_star @ Q) - mult  # grad = Q x* - b = mult
    theta = torch.zeros(B, N, dtype=DT, requires_grad=True)

    def cost(U):
        x = U.flatten(1)
        return 0.5 * ((x @ Q) * x).sum(-1) - ((b0 + 0.1 * theta) * x).sum(-1)

    return Q, x_star, active_lo | active_hi, theta, cost


@pytest.mark.parametrize("method,kw,backward", [
    ("newton", dict(max_iters=30), "implicit"),
    ("newton", dict(max_iters=30), "unroll"),
    ("gd", dict(step_size=0.2, max_iters=300), "implicit"),
    ("gd", dict(step_size=0.2, max_iters=300), "unroll"),
])
def test_active_bounds_hold_and_get_zero_gradient(method, kw, backward):
    Q, x_star, active, theta, cost = _kkt_box_problem()
    opt = TrajOptimizer(method=method, backward=backward, tol=1e-10, bounds=(-1.0, 1.0), **kw)
    U, info = opt.solve(cost, torch.zeros(B, H, A, dtype=DT))
    x = U.flatten(1)
    assert torch.allclose(x, x_star, atol=1e-7)
    assert torch.all(x[active].abs() == 1.0)  # exactly on the bound
    assert info.converged.all() and (info.status == Status.OK).all()
    # Jacobian: active coords 0, free coords = Q_FF^-1 * 0.1 (d b / d theta = 0.1 I)
    for i in range(B):
        F = ~active[i]
        QFF = Q[F][:, F]
        J_true = torch.zeros(N, N, dtype=DT)
        J_true[F.nonzero().squeeze(1)[:, None], F.nonzero().squeeze(1)[None]] = 0.1 * torch.linalg.inv(QFF)
        for k in range(N):
            (g,) = torch.autograd.grad(x[i, k], theta, retain_graph=True)
            assert torch.allclose(g[i], J_true[k], atol=1e-6), (method, backward, i, k)
            assert torch.count_nonzero(g[1 - i]) == 0  # no cross-sample leakage


def test_inactive_box_matches_unconstrained():
    Q, W, theta, b, cost, _ = _quadratic(seed=7)
    U0 = torch.zeros(B, H, A, dtype=DT)
    w = torch.randn(B, H, A, dtype=DT)
    outs = []
    for bounds in (None, (-50.0, 50.0)):
        U, _ = TrajOptimizer(method="newton", bounds=bounds, tol=1e-12, implicit_damping=0.0).solve(cost, U0)
        outs.append((U.detach(), torch.autograd.grad((w * U).sum(), theta)[0]))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-12)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-10)


def test_clamp_in_cost_returns_clamped_actions_with_zero_gradient_outside():
    """lm_scalar's default (original) mode: the iterate may leave the box, U_star = clamp(U)."""
    theta = torch.tensor([3.0], dtype=DT, requires_grad=True)

    def cost(U):  # minimum at U = theta (outside the box for the first coordinate)
        target = torch.stack([theta.expand(1), torch.full((1,), 0.2, dtype=DT)], -1).reshape(1, 1, 2)
        return 0.5 * ((U - target) ** 2).sum((1, 2))

    U, info = TrajOptimizer(method="lm_scalar", step_size=1e-3, max_iters=200, backward="unroll", bounds=(-1.0, 1.0)).solve(
        cost, torch.zeros(1, 1, 2, dtype=DT))
    assert U[0, 0, 0].item() == 1.0  # the internal iterate left the box; the output is clamped
    assert info.best_U.abs().max() <= 1.0 and info.best_cost.item() < cost(torch.zeros(1, 1, 2, dtype=DT)).item()
    (g,) = torch.autograd.grad(U[0, 0, 0], theta)
    assert g.item() == 0.0
