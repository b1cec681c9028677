"""Safeguards and contracts: batch independence, indefinite / non-finite costs, closed-form lm_scalar,
one evaluation per iteration, dtypes, devices, B=1, functorch fallback and input validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from difftori.optim import SolverInfo, Status, TrajOptimizer

from tests.learning import check

from .helpers import DEVICES, MLPCost

DT = torch.float64
H, A = 2, 2
N = H * A


def _per_sample_problem(B, seed=0, indefinite=(), nan_region=(), nonfinite_start=()):
    """Per-sample quadratics (+ optional NaN regions); sample i's cost uses only its own tensors."""
    gen = torch.Generator().manual_seed(seed)
    Qs, bs = [], []
    for i in range(B):
        R = torch.randn(N, N, dtype=DT, generator=gen)
        Q = R @ R.T / N + torch.eye(N, dtype=DT)
        if i in indefinite:
            Q = Q - 3.0 * torch.eye(N, dtype=DT)
        Qs.append(Q)
        bs.append(torch.randn(N, dtype=DT, generator=gen))
    Q, b = torch.stack(Qs), torch.stack(bs)
    nan_mask = torch.tensor([i in nan_region for i in range(B)])
    bad_start = torch.tensor([i in nonfinite_start for i in range(B)])

    def make(idx):
        Qi, bi, nm, bs_ = Q[idx], b[idx], nan_mask[idx], bad_start[idx]

        def cost(U):
            x = U.flatten(1)
            c = 0.5 * torch.einsum("bi,bij,bj->b", x, Qi, x) - (bi * x).sum(-1)
            c = torch.where(nm & (x[:, 0] > 0.3), torch.full_like(c, float("nan")), c)
            return torch.where(bs_ & (x[:, 1] < -0.5), torch.full_like(c, float("inf")), c)

        return cost

    return make


METHODS = [
    ("newton", dict(max_iters=15)),
    ("gd", dict(step_size=0.3, max_iters=40)),
    ("adam", dict(step_size=0.1, max_iters=40)),
    ("lm_scalar", dict(step_size=1e-4, max_iters=40)),
]


@pytest.mark.parametrize("method,kw", METHODS, ids=[m for m, _ in METHODS])
def test_batch_independence_with_bad_samples(method, kw):
    B = 4
    make = _per_sample_problem(B, indefinite=(1,), nan_region=(2,), nonfinite_start=(3,))
    U0 = 0.2 * torch.randn(B, H, A, dtype=DT)
    U0[3, 0, 1] = -0.9  # sample 3 starts where its cost is inf
    opt = TrajOptimizer(method=method, backward="none", bounds=(-1.0, 1.0), **kw)
    U_all, info_all = opt.solve(make(torch.arange(B)), U0)
    assert torch.isfinite(U_all).all()
    for i in range(B):
        U_i, info_i = opt.solve(make(torch.tensor([i])), U0[i:i + 1])
        assert torch.allclose(U_all[i], U_i[0], atol=1e-10), i
        assert info_all.status[i] == info_i.status[0]
        assert info_all.iterations[i] == info_i.iterations[0]
        assert torch.allclose(info_all.best_U[i], info_i.best_U[0], atol=1e-10)
    assert info_all.status[3] == Status.NON_FINITE
    assert torch.equal(U_all[3], U0[3].clamp(-1, 1))
    assert info_all.status[0] in (Status.OK, Status.MAX_ITERS)
    if method == "newton":
        assert info_all.neg_curvature[1] > 0  # negative curvature handled by the shift, counted per sample


def test_graph_modes_keep_gradients_finite_with_nan_trial_points():
    B = 3
    make = _per_sample_problem(B, nan_region=(1,))
    lin = torch.zeros(B, N, dtype=DT, requires_grad=True)
    base = make(torch.arange(B))

    def cost(U):
        return base(U) + (lin * U.flatten(1)).sum(-1)

    for method in ("newton", "gd"):
        for backward in ("unroll", "truncated", "implicit"):
            U, info = TrajOptimizer(method=method, step_size=0.3 if method == "gd" else 1.0, max_iters=20,
                                    backward=backward).solve(cost, torch.zeros(B, H, A, dtype=DT))
            (g,) = torch.autograd.grad(U.sum(), lin)
            assert torch.isfinite(U).all() and torch.isfinite(g).all(), (method, backward)
            assert (U.flatten(1)[1, 0] <= 0.3).item()  # never accepted a point inside the NaN region


@example(seed=2382, method="newton", shift=0.0, bounded=False, hole="nan")  # a start point inside the NaN hole
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["newton", "gd", "adam", "lm_scalar", "lm"]),
    shift=st.floats(-4.0, 1.0),
    bounded=st.booleans(),
    hole=st.sampled_from([None, "nan", "inf", "-inf"]),
)
def test_hypothesis_indefinite_and_nonfinite_costs_never_raise_or_return_nan(seed, method, shift, bounded, hole):
    gen = torch.Generator().manual_seed(seed)
    B = 3
    R = torch.randn(B, N, N, dtype=DT, generator=gen)
    Q = 0.5 * (R + R.transpose(1, 2)) + shift * torch.eye(N, dtype=DT)  # often indefinite
    b = torch.randn(B, N, dtype=DT, generator=gen)
    thr = float(torch.rand(1, generator=gen)) * 0.8 + 0.1
    bad = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}.get(hole)

    def cost(U):
        x = U.flatten(1)
        c = 0.5 * torch.einsum("bi,bij,bj->b", x, Q, x) - (b * x).sum(-1)
        if bad is not None:
            c = torch.where(x[:, 0].abs() > thr, torch.full_like(c, bad), c)
        return c

    def residual(U):  # lm: residual form of a nonlinear (indefinite-ish) problem
        x = U.flatten(1)
        r = torch.cat([x - b, torch.sin(3 * x) * shift], 1)
        if bad is not None:
            r = torch.where((x[:, :1].abs() > thr), torch.full_like(r, bad), r)
        return r

    opt = TrajOptimizer(method=method, max_iters=12, bounds=(-1.0, 1.0) if bounded else None, backward="none",
                        step_size=0.2 if method in ("gd", "adam") else (1e-4 if method == "lm_scalar" else 1.0))
    U0 = 0.05 * torch.randn(B, H, A, dtype=DT, generator=gen)
    U, info = opt.solve(None if method == "lm" else cost, U0, residual_fn=residual if method == "lm" else None)
    assert torch.isfinite(U).all() and torch.isfinite(info.best_U).all()
    if bounded:
        assert U.abs().max() <= 1.0
    assert set(info.status.tolist()) <= {s.value for s in Status}
    eig_min = torch.linalg.eigvalsh(Q)[:, 0]
    if method == "newton" and not bounded:
        moved = info.iterations > 0
        # negative curvature at the start point is always reported (an event counter, not a status)
        assert torch.all(info.neg_curvature[(eig_min < -1e-3) & moved] > 0)
        assert (info.status != Status.FALLBACK).all()
    if bad is not None and method != "lm_scalar":
        # the cost at the returned point is finite: non-finite trials were rejected; a start point inside the hole
        # is reported (NON_FINITE, not optimised) and is the only way a non-finite cost comes back
        started_bad = info.status == Status.NON_FINITE
        assert torch.isfinite(info.cost[~started_bad]).all()
        assert (info.iterations[started_bad] == 0).all()


def test_nonfinite_trial_is_rejected_and_reported():
    def cost(U):  # minimum at x0 = 1, NaN beyond 0.5
        x = U.flatten(1)
        c = 0.5 * ((x - 1.0) ** 2).sum(-1)
        return torch.where(x[:, 0] > 0.5, torch.full_like(c, float("nan")), c)

    for method, kw in (("newton", {}), ("gd", dict(step_size=0.9)), ("adam", dict(step_size=0.4))):
        U, info = TrajOptimizer(method=method, max_iters=30, backward="none", **kw).solve(
            cost, torch.zeros(2, H, A, dtype=DT))
        assert torch.isfinite(U).all() and (U.flatten(1)[:, 0] <= 0.5).all(), method
        assert (info.fallback_steps > 0).all(), method
        assert info.summary()["with_fallback_steps"] == 2
        assert (info.status != Status.FALLBACK).all()  # the status says how the solve ended, not what happened


def test_nonfinite_start_returns_clamped_U0():
    def cost(U):
        return torch.full((U.shape[0],), float("nan"), dtype=U.dtype) + U.sum((1, 2))

    U0 = torch.tensor([[[2.0, -0.5]]], dtype=DT)
    for method in ("newton", "gd", "lm_scalar"):
        U, info = TrajOptimizer(method=method, backward="none", bounds=(-1.0, 1.0)).solve(cost, U0)
        assert torch.equal(U, U0.clamp(-1, 1)) and info.status.item() == Status.NON_FINITE
        assert info.summary()["non_finite"] == 1


def test_lm_scalar_matches_closed_form_step():
    torch.manual_seed(0)
    cost = MLPCost(3, H, A)
    U0 = 0.3 * torch.randn(3, H, A, dtype=DT)
    step, damping, offset = 1e-4, 1e-3, 1000.0
    U, info = TrajOptimizer(method="lm_scalar", max_iters=1, step_size=step, damping=damping, offset=offset,
                            backward="none").solve(cost, U0)
    U0r = U0.clone().requires_grad_(True)
    c = cost(U0r.clamp(-1, 1))
    (J,) = torch.autograd.grad(c.sum(), U0r)
    r = offset + c.detach()
    expected = U0 - step * J * (r / (damping + (J * J).sum((1, 2))))[:, None, None]
    assert torch.allclose(U, expected.clamp(-1, 1), rtol=0, atol=1e-14)
    assert torch.allclose(info.cost, cost(expected.clamp(-1, 1)).detach())


@pytest.mark.parametrize("method", ["gd", "lm_scalar", "adam"])
def test_first_order_methods_do_exactly_one_cost_grad_per_iteration(method):
    calls = {"n": 0}
    torch.manual_seed(0)
    base = MLPCost(2, H, A)

    def cost(U):
        calls["n"] += 1
        return base(U)

    K = 7
    TrajOptimizer(method=method, max_iters=K, step_size=1e-3, tol=0.0, early_stop=False, backward="none").solve(
        cost, torch.zeros(2, H, A, dtype=DT))
    assert calls["n"] == K + 1  # start point + one trial per iteration (the last one cost-only)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["gd", "adam", "newton", "lm_scalar", "lm", "gauss_newton"])
def test_dtypes_devices_and_batch_of_one(method, dtype, device):
    torch.manual_seed(0)
    cost = MLPCost(1, H, A, dtype=dtype, device=device)
    target = torch.full((1, N), 0.3, dtype=dtype, device=device, requires_grad=True)

    def residual(U):
        x = U.flatten(1)
        return torch.cat([x - target, 0.3 * torch.tanh(x)], 1)

    U0 = torch.zeros(1, H, A, dtype=dtype, device=device)
    kw = dict(step_size={"gd": 0.2, "adam": 0.05, "lm_scalar": 1e-4}.get(method, 1.0), max_iters=20)
    opt = TrajOptimizer(method=method, backward="unroll", **kw)
    res = residual if method in ("lm", "gauss_newton") else None
    U, info = opt.solve(None if res else cost, U0, residual_fn=res)
    assert U.dtype == dtype and U.device.type == device and U.shape == U0.shape
    assert torch.isfinite(U).all() and info.status.device.type == device
    c0 = (0.5 * (residual(U0) ** 2).sum(-1)) if res else cost(U0)
    assert info.best_cost.item() < c0.item()
    U.sum().backward()  # differentiable
    params = [target] if res else list(cost.parameters())
    assert any(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in params)


def test_functorch_incompatible_cost_falls_back_to_autograd_hvps():
    torch.manual_seed(0)
    base = MLPCost(2, H, A)

    def inplace_cost(U):  # in-place write into a fresh unbatched buffer: breaks vmap
        buf = torch.zeros(U.shape[0], N, dtype=U.dtype)
        buf += U.flatten(1)
        return base(buf.reshape(U.shape))

    U0 = 0.1 * torch.randn(2, H, A, dtype=DT)
    ref, _ = TrajOptimizer(method="newton", backward="none").solve(base, U0)
    with pytest.raises(RuntimeError):
        TrajOptimizer(method="newton", hessian="functorch", backward="none").solve(inplace_cost, U0)
    out, info = TrajOptimizer(method="newton", backward="none").solve(inplace_cost, U0)
    assert torch.allclose(out, ref, atol=1e-10) and info.converged.all()


def newton_stop_stats(seed: int) -> dict[str, float]:
    """Newton on 3 random strongly convex MLP costs (float64): converged fraction and most iterations used (of 50)."""
    torch.manual_seed(seed)
    cost = MLPCost(3, H, A)
    _, info = TrajOptimizer(method="newton", max_iters=50, tol=1e-8).solve(cost, torch.zeros(3, H, A, dtype=DT), backward="none")
    assert isinstance(info, SolverInfo)
    return {"converged": info.converged.float().mean().item(), "max_iterations": info.iterations.max().item(),
            "ok": (info.status == Status.OK).float().mean().item()}


NEWTON_STOP_LIMITS = {
    "converged": (">=", 1.0),  # every sample (measured: all, seeds 0-5 x 3 CPU capabilities)
    "ok": (">=", 1.0),
    "max_iterations": ("<", 10),  # measured 2
}


@pytest.mark.learning
def test_early_stop_and_info_summary():
    check(newton_stop_stats(0), NEWTON_STOP_LIMITS)
    torch.manual_seed(0)
    cost = MLPCost(3, H, A)
    U0 = torch.zeros(3, H, A, dtype=DT)
    _, info = TrajOptimizer(method="newton", max_iters=50, tol=1e-8).solve(cost, U0, backward="none")
    assert info.summary() == {"ok": 3, "max_iters": 0, "non_finite": 0, "stalled": 0, "plateau": 0, "converged": 3,
                              "with_fallback_steps": 0, "with_neg_curvature": 0}
    _, info = TrajOptimizer(method="gd", step_size=1e-3, max_iters=5, tol=1e-8).solve(cost, U0, backward="none")
    assert (info.status == Status.MAX_ITERS).all() and (info.iterations == 5).all()


def test_invalid_inputs_raise_clear_errors():
    cost = MLPCost(2, H, A)
    U0 = torch.zeros(2, H, A, dtype=DT)
    with pytest.raises(ValueError, match="method"):
        TrajOptimizer(method="bfgs")
    with pytest.raises(ValueError, match="backward"):
        TrajOptimizer(backward="adjoint")
    with pytest.raises(ValueError, match="lo < hi"):
        TrajOptimizer(bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="backward"):
        TrajOptimizer().solve(cost, U0, backward="sideways")
    with pytest.raises(ValueError, match=r"\(B, H, A\)"):
        TrajOptimizer().solve(cost, torch.zeros(2, N, dtype=DT))
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        TrajOptimizer(method="gd").solve(lambda U: U.sum(), U0)
    with pytest.raises(ValueError, match="residual_fn"):
        TrajOptimizer(method="lm").solve(cost, U0)
    with pytest.raises(ValueError, match="residual_fn"):
        TrajOptimizer(method="gd").solve(cost, U0, residual_fn=lambda U: U.flatten(1))


def _kink_cost(U):
    """|x0 - x1| kink (a max of two planes, like a twin-Q min in the cost) plus a smooth valley."""
    x = U.flatten(1)
    return torch.maximum(10 * (x[:, 0] - x[:, 1]), 10 * (x[:, 1] - x[:, 0])) + (x[:, 0] + x[:, 1] - 1.5) ** 2


def test_newton_nonmonotone_option_on_a_kink():
    U0 = torch.tensor([[[0.01, 0.0]], [[0.3, -0.2]]], dtype=torch.float64)
    c0 = _kink_cost(U0)
    for K in (1, 2, 3, 5):  # monotone: every accepted step lowers the cost
        _, info = TrajOptimizer(method="newton", max_iters=K, nonmonotone=0, tol=0.0, backward="none").solve(_kink_cost, U0)
        assert torch.all(info.cost <= c0) and torch.equal(info.cost, info.best_cost)
    U, info = TrajOptimizer(method="newton", max_iters=10, nonmonotone=4, tol=0.0, early_stop=False,
                            backward="none").solve(_kink_cost, U0)
    assert torch.isfinite(U).all() and torch.all(info.best_cost < c0)
    torch.testing.assert_close(_kink_cost(info.best_U), info.best_cost)
    with pytest.raises(ValueError, match="nonmonotone"):
        TrajOptimizer(method="newton", nonmonotone=-1)


@pytest.mark.parametrize("method,kw", [("lm_scalar", dict(step_size=1e-3, damping=1e-3)), ("adam", dict(step_size=0.05)),
                                       ("gd", dict(step_size=0.05))])
def test_plateau_stop_is_per_sample_and_reported(method, kw):
    """The plateau rule stops samples whose best cost stopped improving, independently of the batch."""
    torch.manual_seed(0)
    cost = MLPCost(4, H, A)
    U0 = torch.zeros(4, H, A, dtype=DT)
    full = TrajOptimizer(method=method, max_iters=300, tol=0.0, backward="none", bounds=(-1.0, 1.0), **kw)
    plat = TrajOptimizer(method=method, max_iters=300, tol=0.0, backward="none", bounds=(-1.0, 1.0), plateau_window=5, plateau_rtol=1e-4, **kw)
    U_f, info_f = full.solve(cost, U0)
    U_p, info_p = plat.solve(cost, U0)
    assert (info_f.iterations == 300).all() and (info_f.status == Status.MAX_ITERS).all()
    assert (info_p.status == Status.PLATEAU).all() and (info_p.iterations < 300).all()
    assert (info_p.iterations % 5 == 0).all()
    # stopping early loses little: within 2e-2 of the full budget's best cost (measured: <= 1.3e-2, adam)
    assert torch.all(info_p.best_cost - info_f.best_cost <= 2e-2 * info_f.best_cost.abs().clamp_min(1.0))
    for i in range(4):  # batch independence: each sample alone stops at the same iteration, same point
        one = MLPCost(1, H, A)
        one.load_state_dict({k: (v[i:i + 1] if k in ("z", "lin") else v) for k, v in cost.state_dict().items()})
        U_i, info_i = plat.solve(one, U0[i:i + 1])
        assert info_i.iterations[0] == info_p.iterations[i]
        assert torch.allclose(U_i[0], U_p[i], atol=1e-10)
    with pytest.raises(ValueError, match="plateau_window"):
        TrajOptimizer(plateau_window=-1)
