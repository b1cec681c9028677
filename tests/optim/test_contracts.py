"""Issue 10 / 14 contracts: batch independence for every method and option, non-finite inputs cleaned or
reported, OK only when the test passed at the returned point, best_cost == cost(best_U), bounds validation,
adam+truncated refused, unbounded defaults and per-method step sizes."""

from __future__ import annotations

import pytest
import torch

from difftori.optim import DEFAULT_STEP_SIZE, Status, TrajOptimizer

from .helpers import MLPCost

DT = torch.float64


def _mlp_problem(B, H, A, seed, alpha=0.0, scale=20.0):
    """The issue-10 cost: a small nonconvex nn.Linear MLP per sample (+ a linear term)."""
    torch.manual_seed(seed)
    cost = MLPCost(B, H, A, hidden=16, alpha=alpha)
    with torch.no_grad():
        for p in cost.net.parameters():
            p.mul_(scale)
    U0 = 0.3 * torch.randn(B, H, A, dtype=DT)

    def single(i):
        sub = MLPCost(1, H, A, hidden=16, alpha=alpha)
        sub.load_state_dict({k: (v[i:i + 1] if k in ("z", "lin") else v) for k, v in cost.state_dict().items()})
        return sub

    return cost, single, U0


OPTIONS = [
    ("newton", {}, "implicit"),
    ("newton", {"nonmonotone": 4}, "implicit"),
    ("newton", {"nonmonotone": 4}, "unroll"),
    ("newton", {"bound_mode": "clamp_in_cost"}, "none"),
    ("newton", {"n_ladder": 1, "step_tol": 1e-9}, "truncated"),
    ("gd", {}, "truncated"),
    ("adam", {}, "implicit"),
    ("lm_scalar", {"step_size": 1e-3, "offset": 20.0}, "truncated"),
    ("lm_scalar", {"bound_mode": "project", "step_size": 1e-3, "offset": 20.0}, "none"),
]


@pytest.mark.parametrize("method,kw,backward", OPTIONS, ids=[f"{m}-{b}-{'-'.join(k)}" for m, k, b in OPTIONS])
@pytest.mark.parametrize("seed", [5, 11])
def test_sample_result_does_not_depend_on_the_batch(method, kw, backward, seed):
    # issue 10: newton's old nonmonotone default gave |dU| = 1.6-2.0 here (a bound coordinate was rebuilt as
    # U + (U_cand - U), one ulp inside the box, and the active set flipped)
    cost, single, U0 = _mlp_problem(4, 3, 2, seed)
    opt = TrajOptimizer(method=method, max_iters=20, backward=backward, bounds=(-1.0, 1.0), **kw)
    U, info = opt.solve(cost, U0)
    for i in range(4):
        U_i, info_i = opt.solve(single(i), U0[i:i + 1])
        # the cost itself is not bitwise batch-invariant (nn.Linear round-off): the solver must not amplify that
        assert (U[i] - U_i[0]).abs().max().item() <= 1e-6, i
        assert info.status[i] == info_i.status[0] and info.iterations[i] == info_i.iterations[0]
        assert (info.best_U[i] - info_i.best_U[0]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("method", ["newton", "gauss_newton", "lm"])
def test_infinite_U0_is_cleaned_in_clamp_in_cost_mode(method):
    U0 = torch.zeros(2, 2, 2, dtype=DT)
    U0[0, 0, 0], U0[1, 1, 1] = float("inf"), -float("inf")
    opt = TrajOptimizer(method=method, bounds=(-1.0, 1.0), bound_mode="clamp_in_cost", backward="none", max_iters=20)
    if method == "newton":
        U, info = opt.solve(lambda U: 0.5 * ((U - 0.3) ** 2).sum((1, 2)), U0)
    else:
        U, info = opt.solve(None, U0, residual_fn=lambda U: (U - 0.3).flatten(1))
    assert torch.isfinite(U).all() and (info.status == Status.OK).all()  # was NaN with status fallback
    torch.testing.assert_close(U, torch.full_like(U, 0.3), rtol=0, atol=1e-5)


def test_nan_or_unbounded_inf_U0_is_reported_and_never_returned():
    def cost(U):
        return 0.5 * (U ** 2).sum((1, 2))

    U0 = torch.zeros(3, 1, 2, dtype=DT)
    U0[0, 0, 0], U0[1, 0, 1] = float("nan"), float("inf")
    for bounds, method, mode in ((None, "newton", "auto"), (None, "gd", "auto"), ((-1.0, 1.0), "newton", "clamp_in_cost"),
                                 ((-1.0, 1.0), "gd", "project")):
        U, info = TrajOptimizer(method=method, bounds=bounds, bound_mode=mode, backward="implicit").solve(cost, U0)
        assert torch.isfinite(U).all() and torch.isfinite(info.best_U).all(), (bounds, method)
        assert info.status[0] == Status.NON_FINITE
        # +inf -> the bound when bounded, then optimised like any sample
        assert (info.status[1] == Status.NON_FINITE) == (bounds is None)
        assert info.status[2] != Status.NON_FINITE and torch.isfinite(info.cost[1:] if bounds else info.cost[2:]).all()


def test_non_finite_trial_points_are_rejected():
    """Unbounded gd with a huge step used to return U = inf with status OK."""
    def cost(U):
        return -4.0 * torch.tanh(U).sum((1, 2))

    U, info = TrajOptimizer(method="gd", step_size=1e308, backward="none", max_iters=5).solve(cost, torch.zeros(1, 1, 1, dtype=DT))
    assert torch.isfinite(U).all() and info.fallback_steps.item() > 0


def test_ok_means_converged_at_the_returned_point():
    torch.manual_seed(0)
    cost = MLPCost(3, 2, 2)
    U0 = torch.zeros(3, 2, 2, dtype=DT)
    for method, kw in (("gd", {"step_size": 0.1}), ("newton", {}), ("lm_scalar", {"step_size": 1e-3, "offset": 20.0})):
        for backward in ("truncated", "none"):
            U, info = TrajOptimizer(method=method, max_iters=60, tol=1e-6, backward=backward, **kw).solve(cost, U0)
            Ur = U.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(cost(Ur).sum(), Ur)
            gn = g.flatten(1).norm(dim=1)
            ok = info.status == Status.OK
            assert torch.equal(ok, info.converged)
            assert (gn[ok] <= 1e-6).all() and (info.grad_norm[ok] <= 1e-6).all(), (method, backward, gn)


def test_lm_scalar_stuck_outside_the_box_is_stalled_not_ok():
    """Step 1.0 (the old constructor default) throws the clamp_in_cost iterate out of the box, where the gradient is 0."""
    def cost(U):
        return 0.5 * ((U - 0.3) ** 2).sum((1, 2))

    U, info = TrajOptimizer(method="lm_scalar", step_size=1.0, bounds=(-1.0, 1.0), backward="none").solve(
        cost, torch.zeros(1, 2, 2, dtype=DT))
    assert info.cost.item() > 0.5 and info.status.item() == Status.STALLED and not info.converged.item()
    assert info.grad_norm.item() > 1e-6  # the projected gradient of the clamped problem at the returned point


@pytest.mark.parametrize("method", ["newton", "gd", "adam", "lm_scalar"])
def test_best_cost_is_the_cost_at_best_U_on_a_discontinuous_cost(method):
    def cost(U):
        x = U.flatten(1)
        smooth = 0.5 * ((x - 2.0) ** 2).sum(-1) + 0.3 * x[:, 0] * x[:, 1]
        return smooth + 1.0 * (x >= 1.0).sum(-1) + 0.5 * (torch.floor(7.0 * x) % 2).sum(-1)

    gen = torch.Generator().manual_seed(0)
    U0 = torch.rand(16, 1, 2, generator=gen, dtype=DT) * 2 - 1
    U0[3] = float("nan")  # a dead sample too
    U, info = TrajOptimizer(method=method, bounds=(-1.0, 1.0), backward="none", max_iters=15).solve(cost, U0)
    c_best = cost(info.best_U)
    live = info.status != Status.NON_FINITE
    assert torch.equal(c_best[live], info.best_cost[live]) and torch.equal(cost(U)[live], info.cost[live])
    assert (info.best_cost[live] <= info.cost[live]).all()


def test_bounds_are_validated():
    cost = MLPCost(1, 2, 2)
    U0 = torch.zeros(1, 2, 2, dtype=DT)
    for lo, hi in ((torch.ones(2, 2), -torch.ones(2, 2)), (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5])),
                   (1.0, -1.0), (torch.tensor(float("nan")), 1.0)):
        with pytest.raises(ValueError, match="lo < hi"):
            TrajOptimizer(bounds=(lo, hi)).solve(cost, U0)
    with pytest.raises(ValueError, match="broadcast"):
        TrajOptimizer(bounds=(-torch.ones(3), torch.ones(3))).solve(cost, U0)
    U, _ = TrajOptimizer(bounds=(-torch.ones(2), torch.tensor([1.0, 0.5])), backward="none").solve(
        lambda U: -(U * torch.tensor([1.0, 3.0], dtype=DT)).sum((1, 2)), U0)
    assert torch.equal(U[0, :, 1], torch.full((2,), 0.5, dtype=DT))


def test_adam_with_truncated_backward_is_refused():
    """At a fixed point adam moved the solution by 5e-2 and returned a ~1e13 gradient (cosine 0.15 vs FD)."""
    with pytest.raises(ValueError, match="adam.*truncated"):
        TrajOptimizer(method="adam", backward="truncated")
    with pytest.raises(ValueError, match="adam.*truncated"):
        TrajOptimizer(method="adam").solve(MLPCost(1, 2, 2), torch.zeros(1, 2, 2, dtype=DT), backward="truncated")


def test_unbounded_by_default_and_per_method_step_sizes():
    opt = TrajOptimizer()
    assert opt.bounds is None and opt.step_size == 1.0 and opt.nonmonotone == 0
    for m, step in DEFAULT_STEP_SIZE.items():
        assert TrajOptimizer(method=m).step_size == step
    assert TrajOptimizer(method="adam", step_size=0.3).step_size == 0.3
    target = torch.tensor([2.0, -1.7], dtype=DT)  # a torque of 2 is not silently capped at 1
    U, info = TrajOptimizer(backward="none").solve(lambda U: 0.5 * ((U - target) ** 2).sum((1, 2)),
                                                   torch.zeros(1, 3, 2, dtype=DT))
    torch.testing.assert_close(U, target.expand(1, 3, 2))
    assert info.status.item() == Status.OK


@pytest.mark.parametrize("method,bound_mode,backward", [("lm_scalar", "clamp_in_cost", "none"), ("adam", "project", "none"),
                                                        ("gd", "project", "truncated")])
def test_given_cost_gradient_reproduces_autograd(method, bound_mode, backward):
    """``cost_grad_fn`` replaces autograd in the no-graph evaluations only: same iterates, same gradient out."""
    cost, _, U0 = _mlp_problem(3, 4, 2, seed=0, scale=2.0)
    U0 = U0 * 4  # some coordinates start outside the box: clamp_in_cost masks their gradient
    calls = []

    def cost_grad(U):
        calls.append(U.shape[0])
        with torch.enable_grad():
            Ul = U.detach().requires_grad_()
            c = cost(Ul)
            (g,) = torch.autograd.grad(c.sum(), Ul)
        return c.detach(), g

    opt = TrajOptimizer(method=method, max_iters=25, bounds=(-1.0, 1.0), bound_mode=bound_mode, backward=backward)
    W = torch.randn(3, 4, 2, dtype=DT)
    out = []
    for fn in (None, cost_grad):
        for p in cost.parameters():
            p.grad = None
        U, info = opt.solve(cost, U0, cost_grad_fn=fn)
        if backward != "none":
            (W * U).sum().backward()
        out.append((U.detach(), info.iterations, [p.grad for p in cost.parameters()]))
    assert calls, "cost_grad_fn was never used"
    torch.testing.assert_close(out[1][0], out[0][0])
    assert torch.equal(out[1][1], out[0][1])
    for a, b in zip(out[0][2], out[1][2]):
        if a is not None:
            torch.testing.assert_close(b, a)


def test_given_cost_gradient_is_validated():
    cost, _, U0 = _mlp_problem(2, 3, 2, seed=0)
    with pytest.raises(ValueError, match="first-order"):
        TrajOptimizer(method="newton", max_iters=3).solve(cost, U0, cost_grad_fn=lambda U: (cost(U), U))
    with pytest.raises(ValueError, match="shape of U"):
        TrajOptimizer(method="adam", max_iters=3).solve(cost, U0, cost_grad_fn=lambda U: (cost(U).detach(), U[:, :1]))
