"""Gradients of every backward mode against finite differences (float64, smooth convex MLP costs)."""

from __future__ import annotations

import pytest
import torch

from difftori.optim import TrajOptimizer

from .helpers import MLPCost, directional_check

B, H, A = 2, 2, 2


def _setup(seed=0):
    torch.manual_seed(seed)
    cost = MLPCost(B, H, A)
    U0 = 0.3 * torch.randn(B, H, A, dtype=torch.float64)
    w = torch.randn(B, H, A, dtype=torch.float64)
    return cost, list(cost.parameters()), U0, w


UNROLL_CASES = [
    ("gd", dict(step_size=0.15, max_iters=8)),
    ("adam", dict(step_size=0.05, max_iters=8)),
    ("newton", dict(max_iters=4)),
    ("lm_scalar", dict(step_size=1e-4, damping=1e-3, max_iters=6, bounds=None)),
]


@pytest.mark.parametrize("method,kw", UNROLL_CASES, ids=[c[0] for c in UNROLL_CASES])
def test_unroll_matches_finite_differences(method, kw):
    cost, params, U0, w = _setup()
    kw = {"bounds": (-2.0, 2.0), **kw}
    opt = TrajOptimizer(method=method, backward="unroll", tol=0.0, early_stop=False, **kw)
    ref = TrajOptimizer(method=method, backward="none", tol=0.0, early_stop=False, **kw)
    U, _ = opt.solve(cost, U0)
    assert not torch.equal(U, U0)  # it moved
    # FD of the graph-free solve: "none" computes exactly the same iterates
    a, fd = directional_check(lambda: opt.solve(cost, U0)[0], params, w, fd_solve=lambda: ref.solve(cost, U0)[0])
    assert a == pytest.approx(fd, rel=1e-5, abs=1e-8)
    assert torch.allclose(ref.solve(cost, U0)[0], U.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method,kw", [
    ("newton", dict(max_iters=30)),
    ("gd", dict(step_size=0.2, max_iters=400)),
])
def test_implicit_matches_finite_differences_of_converged_solution(method, kw):
    cost, params, U0, w = _setup(1)
    opt = TrajOptimizer(method=method, backward="implicit", tol=1e-12, implicit_damping=0.0, bounds=None, **kw)
    U, info = opt.solve(cost, U0)
    assert info.converged.all()
    none = TrajOptimizer(method=method, backward="none", tol=1e-12, bounds=None, **kw)
    assert torch.equal(U.detach(), none.solve(cost, U0)[0])  # implicit step leaves the value unchanged
    a, fd = directional_check(lambda: opt.solve(cost, U0)[0], params, w, eps=1e-5)
    assert a == pytest.approx(fd, rel=1e-6)


def test_implicit_gradient_does_not_reach_U0_and_none_has_no_graph():
    cost, params, U0, w = _setup()
    U0 = U0.clone().requires_grad_(True)
    U, _ = TrajOptimizer(method="newton", backward="implicit").solve(cost, U0)
    g0 = torch.autograd.grad((w * U).sum(), U0, allow_unused=True)[0]
    assert g0 is None or torch.count_nonzero(g0) == 0
    U, _ = TrajOptimizer(method="newton").solve(cost, U0, backward="none")  # per-call override
    assert not U.requires_grad


def test_unroll_gradient_reaches_U0():
    cost, params, U0, w = _setup()
    U0 = U0.clone().requires_grad_(True)
    opt = TrajOptimizer(method="gd", step_size=0.1, max_iters=3, backward="unroll", tol=0.0, bounds=None)
    a, fd = directional_check(lambda: opt.solve(cost, U0)[0], [U0], w)
    assert a == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize("method,kw", [
    ("gd", dict(step_size=0.15)),
    ("lm_scalar", dict(step_size=1e-4, damping=1e-3, bounds=None)),
])
def test_truncated_equals_unroll_of_the_last_k_iterations(method, kw):
    """truncated(K, k) == K-k iterations without graph, then k unrolled iterations (values and grads)."""
    cost, params, U0, w = _setup(2)
    K, k = 9, 3
    common = dict(method=method, tol=0.0, early_stop=False, **kw)
    U_tr, _ = TrajOptimizer(max_iters=K, backward="truncated", backward_iters=k, **common).solve(cost, U0)
    g_tr = torch.autograd.grad((w * U_tr).sum(), params, allow_unused=True, materialize_grads=True)
    U_mid, _ = TrajOptimizer(max_iters=K - k, backward="none", **common).solve(cost, U0)
    tail = TrajOptimizer(max_iters=k, backward="unroll", **common)
    U_un, _ = tail.solve(cost, U_mid)
    g_un = torch.autograd.grad((w * U_un).sum(), params, allow_unused=True, materialize_grads=True)
    assert torch.allclose(U_tr, U_un, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_tr, g_un):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    # ... and that tail gradient is the finite-difference derivative of the tail map
    a, fd = directional_check(lambda: tail.solve(cost, U_mid)[0], params, w)
    assert a == pytest.approx(fd, rel=1e-5, abs=1e-9)
    # truncation really drops the head: the full unroll gradient differs
    U_full, _ = TrajOptimizer(max_iters=K, backward="unroll", **common).solve(cost, U0)
    g_full = torch.autograd.grad((w * U_full).sum(), params, allow_unused=True, materialize_grads=True)
    assert not all(torch.allclose(a, b, rtol=1e-6) for a, b in zip(g_tr, g_full))


def test_truncated_newton_at_convergence_matches_implicit():
    """A converged Newton sample keeps stepping in the differentiable tail: gradient ~= IFT gradient."""
    cost, params, U0, w = _setup(3)
    common = dict(method="newton", max_iters=30, tol=1e-10, bounds=None)
    U_tr, info = TrajOptimizer(backward="truncated", backward_iters=2, **common).solve(cost, U0)
    assert info.converged.all()
    g_tr = torch.autograd.grad((w * U_tr).sum(), params, allow_unused=True, materialize_grads=True)
    U_im, _ = TrajOptimizer(backward="implicit", implicit_damping=0.0, **common).solve(cost, U0)
    g_im = torch.autograd.grad((w * U_im).sum(), params, allow_unused=True, materialize_grads=True)
    for a, b in zip(g_tr, g_im):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


def _residual_problem(seed=0):
    torch.manual_seed(seed)
    theta = torch.randn(B, H * A, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def residual(U):
        x = U.flatten(1)
        return torch.cat([x - theta, scale * torch.sin(2.0 * x) + 0.1 * x * x.roll(1, dims=1)], dim=1)

    return residual, [theta, scale]


@pytest.mark.parametrize("method", ["gauss_newton", "lm"])
def test_residual_methods_unroll_and_implicit_match_fd(method):
    residual, params = _residual_problem()
    U0 = torch.zeros(B, H, A, dtype=torch.float64)
    w = torch.randn(B, H, A, dtype=torch.float64)
    opt = TrajOptimizer(method=method, backward="unroll", max_iters=4, tol=0.0, early_stop=False, bounds=None)
    a, fd = directional_check(lambda: opt.solve(None, U0, residual_fn=residual)[0], params, w)
    assert a == pytest.approx(fd, rel=1e-5, abs=1e-9)
    opt = TrajOptimizer(method=method, backward="implicit", max_iters=60, tol=1e-12, damping=1e-6,
                        implicit_damping=0.0, bounds=None)
    U, info = opt.solve(None, U0, residual_fn=residual)
    assert info.converged.all()
    a, fd = directional_check(lambda: opt.solve(None, U0, residual_fn=residual)[0], params, w, eps=1e-5)
    assert a == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize("iters", [1, 4])  # at 2 iterations the ladder's choice is a near-tie (FD across its jump)
def test_unroll_through_box_qp_steps_matches_finite_differences(iters):
    """Bounded newton: each step solves its box-constrained model (projected Newton inside the box); the unrolled
    step is differentiated on the QP's final active set (a quarter of the coordinates end on the bound here)."""
    cost, params, U0, w = _setup()
    kw = dict(method="newton", max_iters=iters, tol=0.0, early_stop=False, bounds=(-0.1, 0.5))
    opt, ref = TrajOptimizer(backward="unroll", **kw), TrajOptimizer(backward="none", **kw)
    U, _ = opt.solve(cost, U0)
    assert ((U.detach() == -0.1) | (U.detach() == 0.5)).any()  # some coordinates are active
    a, fd = directional_check(lambda: opt.solve(cost, U0)[0], params, w, fd_solve=lambda: ref.solve(cost, U0)[0])
    assert a == pytest.approx(fd, rel=1e-6, abs=1e-9)
