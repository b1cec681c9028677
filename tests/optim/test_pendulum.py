"""Pendulum swing-up (issue 14): default newton vs mpc.pytorch's stored solutions, statuses, implicit gradient
vs finite differences, and the MPC front-end (the README example)."""

from __future__ import annotations

import pytest
import torch

from difftori.optim import MPC, Status, TrajOptimizer

from . import pendulum as P
from .helpers import directional_check

REF = P.load_reference()
B = REF["x0"].shape[0]


def _newton(**kw) -> TrajOptimizer:
    return TrajOptimizer(**{"method": "newton", "max_iters": 200, "backward": "none", "bounds": (-2.0, 2.0),
                            "tol": 1e-10, **kw})


def _zeros(n=B):
    return torch.zeros(n, P.T, 1, dtype=P.DT)


@pytest.mark.parametrize("kw", [{}, {"nonmonotone": 4}], ids=["defaults", "nonmonotone4"])
def test_swing_up_matches_mpc_pytorch_on_every_sample(kw):
    cost = P.shooting_cost(REF["x0"], P.params(), *P.cost_weights())
    U, info = _newton(**kw).solve(cost, _zeros())
    # The old nonmonotone default cycled on samples 2, 8, 14: cost -0.79 at iteration 3, then 32-48 after 200 its.
    assert (U - REF["U"]).abs().amax((1, 2)).max().item() <= 1e-4
    assert (info.cost <= REF["cost"] + 1e-9).all() and (info.cost >= REF["cost"] - 1e-6).all()
    assert (info.status == Status.OK).all() and info.converged.all() and (info.grad_norm <= 1e-10).all()
    assert info.iterations.max().item() < 40  # converged, not cycling through the budget
    torch.testing.assert_close(info.best_cost, info.cost, rtol=1e-14, atol=1e-13)  # monotone: the best is the last
    torch.testing.assert_close(cost(info.best_U), info.best_cost, rtol=1e-14, atol=1e-13)


def test_statuses_say_how_the_solve_ended_and_events_are_counters():
    cost = P.shooting_cost(REF["x0"], P.params(), *P.cost_weights())
    U, info = _newton(max_iters=4).solve(cost, _zeros())
    unconv = ~info.converged
    assert unconv.any() and info.converged.any()
    assert torch.equal(info.status == Status.MAX_ITERS, unconv)  # budget exhausted <=> not converged
    assert (info.iterations[unconv] == 4).all()
    assert (info.status[info.converged] == Status.OK).all() and (info.grad_norm[info.converged] <= 1e-10).all()
    assert (info.neg_curvature > 0).sum() > 0  # met on the way: a counter, not a status
    s = info.summary()
    assert s["max_iters"] == int(unconv.sum()) and s["ok"] == int(info.converged.sum()) and "fallback" not in s
    assert s["with_neg_curvature"] == int((info.neg_curvature > 0).sum())


def test_implicit_gradient_is_unbiased_at_the_solution():
    """Default implicit backward: undamped reduced Hessian at the converged point (was damped by 1e-3: 8.7% off)."""
    x0 = REF["x0"][:16]
    theta = P.params(requires_grad=True)
    q, p = P.cost_weights(requires_grad=True)
    opt = _newton(backward="implicit", tol=1e-12)
    w = torch.randn(x0.shape[0], P.T, 1, dtype=P.DT, generator=torch.Generator().manual_seed(3))

    def solve(o=opt):
        U, info = o.solve(P.shooting_cost(x0, theta, q, p), _zeros(x0.shape[0]))
        solve.info = info
        return U

    a, fd = directional_check(solve, [theta, q], w, eps=1e-6)
    assert (solve.info.status == Status.OK).all()
    assert (solve.info.backward_damping == 0).all()  # PD reduced Hessian: no damping, reported per sample
    assert a == pytest.approx(fd, rel=1e-4)
    # the old default damped the Hessian with 1e-3: biased (same direction: same seed, and U* is unchanged)
    damped = _newton(backward="implicit", tol=1e-12, implicit_damping=1e-3)
    a_old, _ = directional_check(lambda: solve(damped), [theta, q], w, eps=1e-6, fd_solve=lambda: solve(opt).detach())
    assert abs(a_old - fd) > 10 * abs(a - fd)


def test_mpc_front_end_readme_example():
    theta = P.params(requires_grad=True)  # (g, m, l)
    q, p = P.cost_weights(requires_grad=True)
    x0 = REF["x0"][:8].clone().requires_grad_(True)
    mpc = MPC(dynamics=lambda x, u: P.dynamics(x, u, theta), stage_cost=lambda x, u: P.stage_cost(x, u, q, p),
              horizon=P.T, n_ctrl=1, optimizer=TrajOptimizer(method="newton", max_iters=200, bounds=(-2.0, 2.0), tol=1e-12))
    U, X, info = mpc(x0)
    assert (info.status == Status.OK).all()
    assert (U - REF["U"][:8]).abs().max().item() <= 1e-4
    assert X.shape == (8, P.T + 1, 3) and torch.equal(X[:, 0], x0)
    torch.testing.assert_close(X[:, 1:], torch.stack([P.dynamics(X[:, t], U[:, t], theta) for t in range(P.T)], 1))
    # differentiable w.r.t. every parameter of the dynamics and the cost, and x0 (central finite differences)
    gen = torch.Generator().manual_seed(0)
    wU, wX = torch.randn(U.shape, dtype=P.DT, generator=gen), torch.randn(X.shape, dtype=P.DT, generator=gen)

    def out():
        U_, X_, _ = mpc(x0)
        return torch.cat([U_.flatten(1), X_.flatten(1)], 1)

    w = torch.cat([wU.flatten(1), wX.flatten(1)], 1)
    a, fd = directional_check(out, [theta, q, p, x0], w, eps=1e-6)
    assert a == pytest.approx(fd, rel=1e-4)
    # warm start: the next call starts from the previous solution shifted by one step
    warm = MPC(mpc.dynamics, mpc.stage_cost, P.T, 1, optimizer=mpc.optimizer, warm_start=True)
    U_prev = warm(x0.detach(), backward="none").U
    x1 = X[:, 1].detach()
    U_warm = warm(x1, backward="none").U
    assert torch.equal(U_warm, mpc(x1, U_init=MPC.shift(U_prev), backward="none").U)
    assert torch.equal(MPC.shift(U_prev)[:, :-1], U_prev[:, 1:]) and torch.equal(MPC.shift(U_prev)[:, -1], U_prev[:, -1])
    with pytest.raises(ValueError, match="x0"):
        mpc(x0[0])
