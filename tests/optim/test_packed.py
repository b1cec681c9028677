"""``lm_scalar`` with ``packed=True``: the batch as ONE Levenberg-Marquardt problem (the original DiffTORI-IL).

The reference is the textbook LM step on the flattened batch variable, computed densely:
r(vec U) = mean_i(offset + c_i(U_i)), J = dr/dvec(U), delta = -step * (J^T J + damping I)^-1 J^T r.
"""

from __future__ import annotations

import pytest
import torch

from difftori.optim import Status, TrajOptimizer

from .helpers import MLPCost

DT = torch.float64
B, H, A = 3, 2, 2
STEP, DAMPING, OFFSET = 2e-4, 0.01, 1000.0


def dense_packed(cost, U0, iters, bounds=(-1.0, 1.0), create_graph=False):
    """``iters`` dense LM steps on the single packed residual (clamp in the cost, as lm_scalar)."""
    shape = U0.shape
    clamp = (lambda V: V.clamp(*bounds)) if bounds is not None else (lambda V: V)

    def r_of(v):
        return (OFFSET + cost(clamp(v.reshape(shape)))).mean().reshape(1)

    u = U0.reshape(-1)
    eye = torch.eye(u.numel(), dtype=u.dtype)
    for _ in range(iters):
        J = torch.autograd.functional.jacobian(r_of, u, create_graph=create_graph)  # (1, B*H*A)
        r = r_of(u)
        u = u - STEP * torch.linalg.solve(J.T @ J + DAMPING * eye, J.T @ r)
    return clamp(u.reshape(shape))


def solver(**kw):
    base = dict(method="lm_scalar", packed=True, step_size=STEP, damping=DAMPING, offset=OFFSET, tol=0.0, early_stop=False)
    return TrajOptimizer(**{**base, **kw})


@pytest.mark.parametrize("bounds", [None, (-1.0, 1.0)], ids=["unbounded", "clamp_in_cost"])
@pytest.mark.parametrize("iters", [1, 4])
def test_packed_step_equals_dense_lm_on_the_flattened_batch(bounds, iters):
    torch.manual_seed(0)
    cost = MLPCost(B, H, A)
    U0 = 0.3 * torch.randn(B, H, A, dtype=DT)
    U, info = solver(max_iters=iters, bounds=bounds, backward="none").solve(cost, U0)
    ref = dense_packed(cost, U0, iters, bounds=bounds).detach()
    assert (U - U0.clamp(-1, 1)).abs().max() > 1e-3, "the test problem must actually move"
    torch.testing.assert_close(U, ref, rtol=1e-10, atol=1e-12)
    # a per-sample solve with the same step moves ~B times further: the packing is what sets the scale
    U_ps, _ = solver(max_iters=iters, bounds=bounds, backward="none", packed=False).solve(cost, U0)
    assert not torch.allclose(U_ps, U, atol=1e-4)
    assert info.cost.shape == (B,) and torch.isfinite(info.cost).all()


def test_packed_unrolled_gradient_equals_dense_reference():
    torch.manual_seed(1)
    cost = MLPCost(B, H, A)
    U0 = 0.3 * torch.randn(B, H, A, dtype=DT)
    w = torch.randn(B, H, A, dtype=DT)
    params = [cost.z, cost.lin, *cost.net.parameters()]
    U, _ = solver(max_iters=3, backward="unroll").solve(cost, U0)
    g_solver = torch.autograd.grad((w * U).sum(), params)
    ref = dense_packed(cost, U0, 3, create_graph=True)
    g_ref = torch.autograd.grad((w * ref).sum(), params)
    torch.testing.assert_close(U.detach(), ref.detach(), rtol=1e-10, atol=1e-12)
    for a, b in zip(g_solver, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    # the coupling is real: sample 0's output depends on sample 1's parameters
    U, _ = solver(max_iters=3, backward="unroll").solve(cost, U0)
    (g_z,) = torch.autograd.grad(U[0].sum(), cost.z)
    assert g_z[1].abs().sum() > 0


def test_packed_convergence_and_best_iterate_are_shared():
    torch.manual_seed(2)
    cost = MLPCost(B, H, A)
    U0 = 0.3 * torch.randn(B, H, A, dtype=DT)
    opt = solver(max_iters=200, step_size=1e-3, tol=0.5, early_stop=True, bounds=None)
    U, info = opt.solve(cost, U0)
    assert info.converged.all() and (info.status == Status.OK).all()
    assert (info.iterations == info.iterations[0]).all() and int(info.iterations[0]) < 200
    assert (info.grad_norm == info.grad_norm[0]).all()
    # the shared test is on ||dr/dvec(U)|| = ||[g_1 .. g_B]||_F / B, at the last point where g was taken
    assert float(info.grad_norm[0]) <= 0.5
    # best iterate: the whole batch's, by the packed residual, so best_cost is the cost vector of ONE iterate
    Ub = info.best_U
    torch.testing.assert_close(info.best_cost, cost(Ub).detach())
    assert (OFFSET + info.best_cost).mean() <= (OFFSET + cost(U0).detach()).mean()


def test_packed_excludes_samples_non_finite_at_start():
    torch.manual_seed(3)
    cost4 = MLPCost(4, H, A)
    bad = torch.tensor([False, False, True, False])

    def cost(U):
        c = cost4(U)
        return torch.where(bad, torch.full_like(c, float("inf")), c)

    U0 = 0.3 * torch.randn(4, H, A, dtype=DT)
    U, info = solver(max_iters=4).solve(cost, U0)
    assert info.status[2] == Status.NON_FINITE and torch.equal(U[2], U0[2])
    keep = torch.tensor([0, 1, 3])

    def cost_live(V):  # the same problem without the dead sample: B counts the live samples only
        full = U0.clone().index_copy(0, keep, V)
        return cost4(full)[keep]

    ref = dense_packed(cost_live, U0[keep], 4).detach()
    torch.testing.assert_close(U[keep], ref, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(U).all()


def test_packed_rejects_the_whole_step_on_a_non_finite_trial():
    torch.manual_seed(4)
    cost3 = MLPCost(B, H, A)
    U0 = torch.zeros(B, H, A, dtype=DT)
    U1, _ = solver(max_iters=1, bounds=None).solve(cost3, U0)
    moved = (U1 - U0).flatten(1)[1, 0].item()  # where sample 1's first coordinate goes in one full step
    assert abs(moved) > 1e-4

    def cost(U):  # NaN for sample 1 beyond 3/4 of its first step
        c = cost3(U)
        hit = (U.flatten(1)[:, 0] - 0.75 * moved) * (1 if moved > 0 else -1) > 0
        return torch.where(hit & (torch.arange(B) == 1), torch.full_like(c, float("nan")), c)

    U, info = solver(max_iters=2, bounds=None).solve(cost, U0)
    assert torch.isfinite(U).all() and torch.isfinite(info.cost).all()
    assert (info.fallback_steps == 1).all(), "the step of ONE problem was rejected: every sample saw it"
    # step 1 (full) rejected for every sample, sample 0 included; step 2 = half a step of the whole batch
    U_half, _ = solver(max_iters=1, bounds=None, step_size=STEP / 2).solve(cost3, U0)
    torch.testing.assert_close(U, U_half, rtol=1e-12, atol=1e-14)


def test_packed_needs_lm_scalar():
    with pytest.raises(ValueError, match="packed=True is only defined for method lm_scalar"):
        TrajOptimizer(method="gd", packed=True)


def _sub_cost(cost, U_full, rows):
    """``cost`` restricted to ``rows`` of the batch (the others held at ``U_full``): one packed problem."""

    def f(V):
        return cost(U_full.detach().index_copy(0, rows, V))[rows]

    return f


@pytest.mark.parametrize("early", [False, True], ids=["fixed_iters", "tol_stop"])
def test_packed_groups_equal_separate_packed_solves(early):
    """``packed_groups=G``: G problems side by side, each exactly its own packed solve (values, status, iterations,
    gradients), and one group's non-finite trial rejects only that group's step."""
    torch.manual_seed(5)
    G, m = 3, 2
    cost6 = MLPCost(G * m, H, A)
    U0 = 0.3 * torch.randn(G * m, H, A, dtype=DT)
    kw = dict(max_iters=60, step_size=1e-3, tol=0.5, early_stop=True, bounds=None) if early else dict(max_iters=4)
    U, info = solver(backward="unroll", **kw).solve(cost6, U0, packed_groups=G)
    w = torch.randn_like(U0)
    (g_all,) = torch.autograd.grad((w * U).sum(), cost6.z)
    for j in range(G):
        rows = torch.arange(j * m, (j + 1) * m)
        Uj, info_j = solver(backward="unroll", **kw).solve(_sub_cost(cost6, U0, rows), U0[rows])
        torch.testing.assert_close(U[rows], Uj, rtol=1e-10, atol=1e-12)
        for f in ("cost", "best_cost", "best_U", "iterations", "status", "grad_norm"):
            torch.testing.assert_close(getattr(info, f)[rows], getattr(info_j, f), rtol=1e-10, atol=1e-12, equal_nan=True)
        (g_j,) = torch.autograd.grad((w[rows] * Uj).sum(), cost6.z)
        torch.testing.assert_close(g_all[rows], g_j[rows], rtol=1e-8, atol=1e-10)
        assert g_all[rows].abs().sum() > 0
    if early:  # the groups stop on their own: not all after the same number of iterations
        assert len(set(info.iterations.tolist())) > 1


def test_packed_groups_reject_only_the_failing_group():
    torch.manual_seed(6)
    cost4 = MLPCost(4, H, A)
    U0 = torch.zeros(4, H, A, dtype=DT)

    def cost(U):  # NaN for sample 3 (group 1) away from the start
        c = cost4(U)
        return torch.where((U.flatten(1).abs().sum(1) > 0) & (torch.arange(4) == 3), torch.full_like(c, float("nan")), c)

    U, info = solver(max_iters=2, bounds=None).solve(cost, U0, packed_groups=2)
    assert info.fallback_steps.tolist() == [0, 0, 2, 2]
    assert torch.equal(U[2:], U0[2:]) and (U[:2] - U0[:2]).abs().max() > 1e-4
    ref, _ = solver(max_iters=2, bounds=None).solve(_sub_cost(cost4, U0, torch.arange(2)), U0[:2])
    torch.testing.assert_close(U[:2], ref, rtol=1e-10, atol=1e-12)


def test_packed_groups_checks_its_argument():
    cost = MLPCost(4, H, A)
    U0 = torch.zeros(4, H, A, dtype=DT)
    with pytest.raises(ValueError, match="packed_groups must be an int >= 1 that divides the batch 4"):
        solver().solve(cost, U0, packed_groups=3)
    with pytest.raises(ValueError, match="packed_groups > 1 needs packed=True"):
        solver(packed=False).solve(cost, U0, packed_groups=2)
