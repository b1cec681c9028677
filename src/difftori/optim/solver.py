"""Batched, differentiable trajectory optimizer: ``U* = argmin_U cost(U)`` for B independent problems.

``U`` has shape (B, H, A) (batch, horizon, action dim); ``cost_fn(U) -> (B,)``. Sample ``i``'s cost
may depend only on ``U[i]``; every per-sample quantity (step size, damping, accept/reject,
convergence) is a (B,) vector, so a sample's result never depends on the rest of the batch
(the one exception is ``packed=True``, below, which couples the batch on purpose).

Methods
    ``gd``            U <- U - step_size * g
    ``adam``          Adam with per-sample moments (lr = step_size)
    ``lm_scalar``     the original DiffTORI solver: Levenberg-Marquardt on the single residual
                      r = offset + cost, closed form (Sherman-Morrison, no factorisation, always accept):
                      delta = -step_size * J^T r / (damping + ||J||^2), J = dcost/dU.
                      ``packed=True`` (lm_scalar only): the original's packing, the whole batch is ONE LM
                      problem on ONE residual r = mean_i(offset + cost_i) over vec(U) (see ``packed``).
    ``newton``        damped Newton with the exact per-sample Hessian (torch.func forward-over-reverse).
                      Per iteration and sample: the damping is shifted past the most negative eigenvalue
                      (``eigvalsh``), ``n_ladder`` dampings ``shift + lam * 4^j`` (j = -2, ...) plus one
                      undamped candidate (damping 1e-6 ||H|| + damping_min, only where no shift was needed) are
                      factorised with ``cholesky_ex`` and their trial points evaluated in ONE batched
                      (vmapped) cost-only call; the sample takes its lowest-cost candidate if it lowers
                      the cost (accept: lam <- chosen damping, i.e. down) or stays (reject: lam x256).
                      Monotone by default; ``nonmonotone=M > 0`` also accepts a candidate below the max of
                      the last M+1 accepted costs (see that field: it cannot cycle) and returns the best point.
    ``gauss_newton``  residual problems ``residual_fn(U) -> (B, R)``, cost 0.5||r||^2, J^T J + damping,
                      fixed damping, every finite step accepted.
    ``lm``            as gauss_newton with newton's damping ladder and accept/reject (J^T J is PSD: no shift).

Safeguards (never raises on a bad system, never returns NaN)
    Negative curvature -> the damping is shifted to make the system PD (counted in
    ``info.neg_curvature``). A system that still fails to factorise (Cholesky ``info > 0``) -> that sample
    takes a scaled-gradient step ``-g / (damping + ||H||_F)`` (and for gauss_newton its damping grows 10x).
    A trial point that is non-finite, or has a non-finite cost or derivatives, is rejected (first-order
    methods also halve that sample's step size). Both count in ``info.fallback_steps``. ``U0`` entries at
    +-inf are moved onto the bound when bounded; a sample whose start point (or cost/gradient there) is
    still non-finite is not optimised: it returns U0 clamped to the box, non-finite entries replaced by
    the box midpoint (0 unbounded), with status NON_FINITE.
    ``info.status`` says how each sample's solve ended (:class:`Status`): OK = the convergence test
    passed at the returned point; else STALLED, MAX_ITERS or NON_FINITE.

Backward modes (``backward=``, constructor default, overridable per ``solve`` call)
    ``unroll``     graph through every iteration (exact derivative of the computed iterate).
    ``truncated``  first K-k iterations without graph, the last ``backward_iters`` = k with graph.
                   Samples are not frozen in the differentiable tail (a converged Newton sample keeps
                   taking its tiny step), so the tail carries -H^-1 d(grad)/dtheta. Refused for adam:
                   its step m/sqrt(v) is scale-free, so near a fixed point its derivative grows like 1/|g|.
    ``implicit``   solve without graph, then ONE differentiable Newton step at the detached solution
                   U* with the detached exact Hessian: U_out = U* + (d - d.detach()),
                   d = -(H_free + lam I)^-1 g(U*, theta). The value is exactly U*; the gradient is the
                   implicit-function-theorem one. lam = 0 (unbiased) where the reduced Hessian is
                   positive definite; where it is indefinite or near-singular, lam shifts its smallest
                   eigenvalue up to ``damping`` (per sample, in ``info.backward_damping``).
                   ``implicit_damping`` = a fixed lam instead. No gradient flows to U0.
    ``none``       no graph at all (acting).

Bounds (``bounds=(lo, hi)``; floats or tensors broadcastable to (H, A), lo < hi; default ``None`` = unbounded)
    ``bound_mode="project"`` (default for every method except lm_scalar): iterates are clamped into
    the box after every step (projected gradient / projected Newton). Active set: a coordinate at a
    bound whose gradient points outward (at lo with g >= 0, at hi with g <= 0) is held fixed; Newton
    solves the reduced system on the free coordinates (active rows/columns replaced by identity).
    newton / gauss_newton / lm then solve each candidate's box-constrained model exactly (``_box_qp``:
    projected Newton on ``g.d + 0.5 d.(M + damping) d`` inside the box, started from the clamped reduced
    step; the model never increases), like mpc.pytorch's box-DDP: coordinates the clamp would pin
    wrongly are released and the step lands on the model's constrained minimiser, so a bounded solve
    needs fewer iterations (tracking benchmark: 2 instead of 3). In graph modes the step is
    differentiated on the QP's final active set (active coordinates: bound - U, zero derivative).
    Convergence uses the projected gradient (active coordinates zeroed).
    ``bound_mode="clamp_in_cost"`` (default for lm_scalar, the original DiffTORI): iterates are
    unconstrained, the cost sees clamp(U), and the returned U_star / best_U are clamp(U).
    Gradient at the bounds (both modes): active / clamped coordinates of U_star get ZERO gradient
    (projection and clamp have zero derivative there; the implicit step is zero on the active set).
    The free coordinates get the gradient of the problem restricted to the free set.
    In ``clamp_in_cost`` mode a coordinate that leaves the box sees zero gradient and stays there
    (as in the original).

Convergence: a sample is converged when its (projected) gradient norm <= ``tol`` (or, if
``step_tol > 0``, an accepted step has norm <= ``step_tol``); converged samples stop changing (masked)
while the batch continues (OK is re-checked at the returned point where it may have moved since: truncated
tail, clamp_in_cost iterates outside the box, best point returned); with ``early_stop`` the loop ends when every sample is done (checked
every ``check_every`` iterations: the check is a host sync). Each iteration costs exactly one
cost+gradient evaluation for gd/adam/lm_scalar (one cost+gradient+Hessian for newton, one
residual+Jacobian for gauss_newton/lm) at the trial point; the final trial point is evaluated for
its cost only. newton/lm: one batched cost-only call for the candidates plus one
cost+gradient+Hessian (or residual+Jacobian) evaluation at the accepted points per iteration.
In unroll mode the chosen damping is piecewise constant, so the derivative is exact except that
the negative-curvature shift (a function of the Hessian's eigenvalues) is treated as a constant.

Known limitation: in graph modes (unroll/truncated/implicit) a sample whose cost is non-finite at
its START point puts NaN into the graph of the shared parameters (0 * NaN in the backward pass of
batched layers). Non-finite TRIAL points are re-evaluated at the previous point, so they are safe.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .derivatives import Evaluator
from .info import SolverInfo, Status

__all__ = ["TrajOptimizer"]

METHODS = ("gd", "adam", "newton", "gauss_newton", "lm", "lm_scalar")
#: step_size used when it is None: gd's step and adam's learning rate for actions of order 1, the original
#: DiffTORI's most common lm_scalar step, and the full (damped) step for the second-order methods.
DEFAULT_STEP_SIZE = {"gd": 0.1, "adam": 0.05, "lm_scalar": 1e-4, "newton": 1.0, "gauss_newton": 1.0, "lm": 1.0}
BACKWARDS = ("unroll", "truncated", "implicit", "none")
FIRST_ORDER_METHODS = ("gd", "adam", "lm_scalar")
"""Methods that need only the cost's gradient (and accept ``solve(..., cost_grad_fn=...)``)."""
RESIDUAL_METHODS = ("gauss_newton", "lm")
"""Methods that solve a least-squares residual (``solve(..., residual_fn=...)``, optionally ``residual_jac_fn=``)."""

CostFn = Callable[[torch.Tensor], torch.Tensor]


class _State:
    """Mutable per-sample solver state (plain attributes; (B,)-vectors unless noted)."""


def _finite(*ts: torch.Tensor | None) -> torch.Tensor:
    ok = None
    for t in ts:
        if t is None:
            continue
        f = torch.isfinite(t) if t.ndim == 1 else torch.isfinite(t).flatten(1).all(1)
        ok = f if ok is None else ok & f
    return ok


def _active(U: torch.Tensor, g: torch.Tensor, lo, hi) -> torch.Tensor:
    """Coordinates at (or beyond) a bound whose gradient points outward: held fixed."""
    return ((U <= lo) & (g >= 0)) | ((U >= hi) & (g <= 0))


def _min_eigenvalue(M: torch.Tensor) -> torch.Tensor:
    """(B,) smallest eigenvalue of symmetric (B, n, n); Gershgorin lower bound if eigvalsh fails."""
    try:
        return torch.linalg.eigvalsh(M)[:, 0]
    except torch.linalg.LinAlgError:
        d = torch.diagonal(M, dim1=1, dim2=2)
        return (d - (M.abs().sum(-1) - d.abs())).min(dim=1).values


def _box_qp(A: torch.Tensor, g: torch.Tensor, d: torch.Tensor, dlo: torch.Tensor, dhi: torch.Tensor,
            iters: int) -> torch.Tensor:
    """Projected Newton on the box QP ``min_d g.d + 0.5 d.A.d, dlo <= d <= dhi`` from the feasible ``d``.

    Batched over the leading dims of ``d`` (..., n) (``A`` (..., n, n), ``g``, ``dlo``, ``dhi`` broadcast to
    them); every entry is an independent QP. Each iteration fixes the coordinates at a bound whose model
    gradient points outward, takes the Newton step on the others and a projected Armijo backtracking line
    search (all step lengths in one batched model evaluation): the model value never increases. An entry
    whose reduced system fails to factorise, or that no longer decreases, stops; the iterations run on the
    entries still moving only (one host sync per iteration) and end when none is.
    """
    shape, n, dt, dev = d.shape, d.shape[-1], d.dtype, d.device
    Af = A.expand(shape[:-1] + (n, n)).reshape(-1, n, n)
    gf, lof, hif = (t.expand(shape).reshape(-1, n) for t in (g, dlo, dhi))
    out = d.reshape(-1, n).clone()
    eye = torch.eye(n, dtype=dt, device=dev)
    na = 8
    al = (0.5 ** torch.arange(0, na, dtype=dt, device=dev))[:, None, None]
    ks = torch.arange(na, device=dev)[:, None]
    tiny = 16.0 * torch.finfo(dt).eps

    def model(Ai, gi, x):  # x (k, P, n) -> (k, P): one bmm, A is not copied per step length
        Ax = torch.bmm(Ai, x.permute(1, 2, 0)).permute(2, 0, 1)
        return (x * (gi + 0.5 * Ax)).sum(-1)

    idx = None  # entries still moving (None: all)
    Ai, gi, lo, hi, di = Af, gf, lof, hif, out
    qd = model(Ai, gi, di[None])[0]
    for _ in range(iters):
        gq = gi + torch.bmm(Ai, di.unsqueeze(-1)).squeeze(-1)
        f = (~(((di <= lo) & (gq > 0)) | ((di >= hi) & (gq < 0)))).to(dt)
        L, info = torch.linalg.cholesky_ex(Ai * (f.unsqueeze(-1) * f.unsqueeze(-2)) + torch.diag_embed(1.0 - f))
        ok = info == 0
        L = torch.where(ok[:, None, None], L, eye)
        p = -torch.cholesky_solve((gq * f).unsqueeze(-1), L).squeeze(-1) * f
        dc = torch.clamp(di + al * p, lo, hi)  # (k, P, n)
        qc = model(Ai, gi, dc)
        # Armijo; the full step is also taken when it leaves the model unchanged up to round-off, so the iterate lands
        # on the face minimiser exactly (a decrease test alone would stop up to sqrt(eps) away from it)
        valid = (qc <= qd + 0.1 * (gq * (dc - di)).sum(-1)) & (qc <= qd)
        valid[0] = valid[0] | (qc[0] <= qd + tiny * (qd.abs() + 1.0))
        valid = valid & torch.isfinite(qc)
        k = torch.where(valid, ks, na).min(0).values  # the longest step that passes
        acc = ok & (k < na)
        kk = k.clamp_max(na - 1)
        d_new = dc.gather(0, kk[None, :, None].expand(1, -1, n))[0]
        q_new = qc.gather(0, kk[None])[0]
        # keep iterating while the iterate moves by more than round-off
        cont = acc & ((d_new - di).abs().amax(-1) > 64.0 * torch.finfo(dt).eps * (di.abs().amax(-1) + 1.0))
        rows = acc.nonzero().squeeze(1)
        out[rows if idx is None else idx[rows]] = d_new[rows]
        keep = cont.nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        idx = keep if idx is None else idx[keep]
        Ai, gi, lo, hi, di, qd = Af[idx], gf[idx], lof[idx], hif[idx], d_new[keep], q_new[keep]
    return out.reshape(shape)


def _check_adam_backward(method: str, backward: str) -> None:
    if method == "adam" and backward == "truncated":
        raise ValueError(
            "TrajOptimizer: method='adam' with backward='truncated' is refused: Adam's step m/sqrt(v) is "
            "scale-free, so at (or near) a fixed point its derivative grows like 1/|grad| and the truncated "
            "gradient is huge and meaningless. Use backward='implicit' (IFT at the solution), or method='gd'.")


def _bcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


@dataclass
class TrajOptimizer:
    """Batched differentiable trajectory optimizer; ``U_star, info = opt.solve(cost_fn, U0)``.

    See the module docstring for methods, backward modes, bounds and safeguards.
    """

    method: Literal["gd", "adam", "newton", "gauss_newton", "lm", "lm_scalar"] = "newton"
    """Solver: gd | adam | newton | gauss_newton | lm | lm_scalar (original DiffTORI closed-form LM)."""
    max_iters: int = 50
    """Maximum iterations K (each: one trial-point evaluation)."""
    step_size: float | None = None
    """Step size (gd step, adam learning rate, lm_scalar step, newton/lm step multiplier); None = the
    method's own default (``DEFAULT_STEP_SIZE``: gd 0.1, adam 0.05, lm_scalar 1e-4, second order 1.0)."""
    damping: float = 1e-3
    """Damping: lm_scalar's constant; initial adaptive damping for newton/lm; fixed for gauss_newton."""
    backward: Literal["unroll", "truncated", "implicit", "none"] = "implicit"
    """How U_star is differentiated: unroll | truncated | implicit | none (no graph, for acting)."""
    backward_iters: int = 5
    """Differentiable tail length k for backward=truncated."""
    bounds: tuple[float, float] | None = None
    """Box (lo, hi) for every action coordinate (floats or tensors broadcastable to (H, A)); None = unbounded."""
    tol: float = 1e-6
    """Per-sample tolerance on the (projected) gradient norm; 0 disables."""
    early_stop: bool = True
    """Stop the batch loop once every sample has converged (off: always run max_iters)."""
    bound_mode: Literal["auto", "project", "clamp_in_cost"] = "auto"
    """project: clamp iterates after each step; clamp_in_cost: cost sees clamp(U) (original); auto: clamp_in_cost for lm_scalar, project otherwise."""
    offset: float = 1000.0
    """lm_scalar residual offset: r = offset + cost (1000 - G in the original)."""
    step_tol: float = 0.0
    """Also converged when an accepted step has norm <= step_tol (0 disables)."""
    damping_min: float = 1e-9
    """Lower clamp of the adaptive damping."""
    damping_max: float = 1e9
    """Upper clamp of the adaptive damping (reaching it while rejecting = STALLED)."""
    implicit_damping: float | None = None
    """Fixed damping of the Hessian in the implicit backward step; None = 0 where the reduced Hessian is
    positive definite (unbiased IFT gradient), shifted up to ``damping`` only where it is not."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam moment decay rates."""
    adam_eps: float = 1e-8
    """Adam denominator epsilon."""
    nonmonotone: int = 0
    """newton, M > 0: when no ladder candidate lowers the cost, still take the lowest-cost finite one if its
    cost is strictly below the reference R_k = max of the last M+1 accepted costs, at most M times in a row;
    candidates at or above R_k are rejected (damping x256). The best point seen is returned (and the
    implicit gradient taken there). Crosses kinks (e.g. a twin-Q min) where every second-order model
    predicts a decrease that does not exist. 0 = monotone (default).
    Why it cannot cycle (Grippo-Lampariello-Lucidi): every accepted cost c_{k+1} < R_k, so
    R_{k+1} = max(c_{k+1}, c_k, ..., c_{k+1-M}) <= R_k; and the M+1 costs accepted after step k are
    all < R_k, so R_{k+M+1} < R_k. The reference, a max of visited costs, strictly decreases every
    M+1 accepted steps: no cost (hence no point) is revisited infinitely often, every iterate
    costs <= c_0, and a step to a cost above R_k (the climb of a cycle) is refused."""
    n_ladder: int = 6
    """newton/lm: dampings tried per iteration (lam * 4^-2 ... lam * 4^(n_ladder-3)), evaluated in one batched call,
    plus an undamped candidate (damping 1e-6 ||M||_F + damping_min where the (reduced) model matrix needed no
    negative-curvature shift; a repeat of lam * 4^-2 where it did). Choosing the undamped one sets lam <- lam * 4^-2:
    a sample in a flat valley (damping >> its smallest curvature) takes the full Newton step at once instead of
    creeping while lam decreases 16x per iteration."""
    plateau_window: int = 0
    """Plateau stop rule (0 = off): every this many iterations a sample whose best cost improved by less than
    ``plateau_rtol * max(|best cost|, 1)`` since the previous check stops (status PLATEAU). Acting solves reach
    their final predicted return long before a fixed budget ends; the rule is per sample and costs no extra sync."""
    plateau_rtol: float = 1e-4
    """Relative best-cost improvement per ``plateau_window`` below which a sample stops."""
    check_every: int = 0
    """Early-stop check period in iterations (a host sync); 0 = auto (1 on CPU, 8 on accelerators)."""
    hessian: Literal["auto", "functorch", "autograd"] = "auto"
    """Hessian/Jacobian engine: functorch (vmap+jvp), autograd (loop of HVPs), auto (functorch, fall back)."""
    packed: bool = False
    """lm_scalar only: solve the batch as ONE problem, as the original DiffTORI-IL does. One residual
    r = mean_i(offset + c_i) over the flattened batch (J = [g_1 .. g_B] / B, g_i = dc_i/dU_i), so the closed-form
    step is delta_i = -step_size * g_i * r / (B * (damping + sum_j ||g_j||^2 / B^2)): every sample moves ~B times
    less than in a per-sample solve, and r and the denominator couple the batch (also in the backward pass).
    This is the ONLY mode where a sample's result depends on the rest of the batch. Everything that belongs to
    the problem is shared: convergence (norm of dr/dvec(U), or of the whole step), accept/reject (a non-finite
    trial anywhere rejects the whole step), best iterate (lowest |r|); samples non-finite at the start are left
    out of the problem (B counts the others). ``SolverInfo`` fields stay (B,), with the shared values repeated.
    ``solve(..., packed_groups=G)`` solves G such problems side by side (consecutive equal blocks of the batch)."""

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"TrajOptimizer: {msg}")

        need(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        need(self.backward in BACKWARDS, f"backward must be one of {BACKWARDS}, got {self.backward!r}")
        need(isinstance(self.max_iters, int) and self.max_iters >= 0, f"max_iters must be an int >= 0, got {self.max_iters!r}")
        need(self.backward_iters >= 1, f"backward_iters must be >= 1, got {self.backward_iters}")
        if self.step_size is None:
            self.step_size = DEFAULT_STEP_SIZE[self.method]
        need(self.step_size > 0, f"step_size must be > 0, got {self.step_size}")
        _check_adam_backward(self.method, self.backward)
        need(self.damping >= 0, f"damping must be >= 0, got {self.damping}")
        need(self.tol >= 0 and self.step_tol >= 0, "tol and step_tol must be >= 0")
        need(0 < self.damping_min <= self.damping_max, "need 0 < damping_min <= damping_max")
        need(self.bound_mode in ("auto", "project", "clamp_in_cost"), f"unknown bound_mode {self.bound_mode!r}")
        need(self.hessian in ("auto", "functorch", "autograd"), f"unknown hessian engine {self.hessian!r}")
        need(self.check_every >= 0, "check_every must be >= 0")
        need(isinstance(self.plateau_window, int) and self.plateau_window >= 0, f"plateau_window must be an int >= 0, got {self.plateau_window!r}")
        need(self.plateau_rtol >= 0, f"plateau_rtol must be >= 0, got {self.plateau_rtol}")
        need(not (self.packed and self.plateau_window), "plateau_window is per sample; a packed solve is one coupled problem (use max_iters)")
        need(isinstance(self.nonmonotone, int) and self.nonmonotone >= 0, f"nonmonotone must be an int >= 0, got {self.nonmonotone!r}")
        need(isinstance(self.n_ladder, int) and self.n_ladder >= 1, f"n_ladder must be an int >= 1, got {self.n_ladder!r}")
        need(self.implicit_damping is None or self.implicit_damping >= 0, "implicit_damping must be >= 0")
        need(not self.packed or self.method == "lm_scalar", f"packed=True is only defined for method lm_scalar, got {self.method!r}")
        b1, b2 = self.adam_betas
        need(0 <= b1 < 1 and 0 <= b2 < 1 and self.adam_eps > 0, "adam_betas must be in [0, 1) and adam_eps > 0")
        if self.bounds is not None:
            need(len(self.bounds) == 2, f"bounds must be (lo, hi), got {self.bounds!r}")
            lo, hi = self.bounds
            need(bool(torch.all(torch.as_tensor(lo) < torch.as_tensor(hi))),
                 f"bounds must satisfy lo < hi (everywhere, no NaN), got {self.bounds!r}")

    # ------------------------------------------------------------------ public API
    def solve(self, cost_fn: CostFn | None, U0: torch.Tensor, residual_fn: CostFn | None = None, *,
              backward: str | None = None, cost_grad_fn: Callable | None = None,
              residual_jac_fn: Callable | None = None, packed_groups: int = 1) -> tuple[torch.Tensor, SolverInfo]:
        """Minimise ``cost_fn`` from ``U0`` (B, H, A); return ``(U_star, info)``.

        ``residual_fn(U) -> (B, R)`` is required by gauss_newton / lm (objective 0.5||r||^2; ``cost_fn``
        is then not used and may be None). ``backward`` overrides the constructor's backward mode.
        ``cost_grad_fn(U) -> (cost (B,), dcost/dU (B, H, A))``, optional (first-order methods): a faster
        evaluation of ``cost_fn`` and its gradient without a graph, used for every evaluation that needs
        no graph (the iterations before a truncated tail, all of them with ``backward="none"``); it must
        agree with ``cost_fn``, which still serves every evaluation with a graph.
        ``residual_jac_fn(U) -> (r (B, R), dr/dvec(U) (B, R, H*A))``, optional (gauss_newton / lm): the same
        for the residual and its Jacobian, e.g. a structured one (:meth:`MPC.residual_jacobian`); it must agree
        with ``residual_fn``.
        ``packed_groups`` (``packed=True`` only): the batch is this many independent packed problems, its
        consecutive equal blocks (e.g. the draws of each of several observations solved in one call); 1 = the
        whole batch is one problem.
        """
        mode = self.backward if backward is None else backward
        if mode not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {mode!r}")
        _check_adam_backward(self.method, mode)
        if not isinstance(U0, torch.Tensor) or U0.ndim != 3 or not U0.is_floating_point():
            desc = f"{tuple(U0.shape)} {U0.dtype}" if isinstance(U0, torch.Tensor) else type(U0).__name__
            raise ValueError(f"U0 must be a floating-point tensor of shape (B, H, A), got {desc}")
        if U0.numel() == 0:
            raise ValueError(f"U0 must be non-empty, got shape {tuple(U0.shape)}")
        if self.method in RESIDUAL_METHODS:
            if residual_fn is None:
                raise ValueError(f"method {self.method!r} needs residual_fn(U) -> (B, R)")
        elif residual_fn is not None:
            raise ValueError(f"residual_fn is only used by gauss_newton / lm, not {self.method!r}; pass cost_fn")
        elif cost_fn is None:
            raise ValueError("cost_fn is required")

        B, H, A = U0.shape
        if not isinstance(packed_groups, int) or packed_groups < 1 or B % packed_groups:
            raise ValueError(f"packed_groups must be an int >= 1 that divides the batch {B}, got {packed_groups!r}")
        if packed_groups > 1 and not self.packed:
            raise ValueError("packed_groups > 1 needs packed=True (a per-sample solve has no groups)")
        dev, dt = U0.device, U0.dtype
        bm = self.bound_mode
        if bm == "auto":
            bm = "clamp_in_cost" if self.method == "lm_scalar" else "project"
        lo = hi = None
        if self.bounds is not None:
            lo, hi = (b.to(device=dev, dtype=dt) if isinstance(b, torch.Tensor) else float(b) for b in self.bounds)
            for b in (lo, hi):
                try:
                    fits = not isinstance(b, torch.Tensor) or torch.broadcast_shapes(b.shape, (H, A)) == (H, A)
                except RuntimeError:
                    fits = False
                if not fits:
                    raise ValueError(f"bounds must broadcast to (H, A) = {(H, A)}, got shape {tuple(b.shape)}")
        bounded = lo is not None
        project = bounded and bm == "project"
        clamp_cost = bounded and bm == "clamp_in_cost"
        if cost_grad_fn is not None and self.method not in FIRST_ORDER_METHODS:
            raise ValueError(f"cost_grad_fn serves the first-order methods ({', '.join(FIRST_ORDER_METHODS)}), not {self.method!r}")
        if residual_jac_fn is not None and self.method not in RESIDUAL_METHODS:
            raise ValueError(f"residual_jac_fn serves the residual methods ({', '.join(RESIDUAL_METHODS)}), not {self.method!r}")
        ev = Evaluator(cost_fn, residual_fn if self.method in RESIDUAL_METHODS else None, B,
                       clamp=(lo, hi) if clamp_cost else None, hessian=self.hessian, cost_grad_fn=cost_grad_fn,
                       residual_jac_fn=residual_jac_fn)

        K = self.max_iters
        graph_from = {"unroll": 0, "truncated": max(K - self.backward_iters, 0)}.get(mode, K + 1)
        level = "grad" if self.method in FIRST_ORDER_METHODS else ("jac" if self.method in RESIDUAL_METHODS else "hess")

        # ---- start point: +-inf onto the bound when bounded; other non-finite entries -> box midpoint / 0 (NON_FINITE)
        U = U0 if (graph_from == 0 and U0.requires_grad) else U0.detach()
        if bounded:
            U = torch.clamp(U, lo, hi) if project else torch.where(torch.isinf(U), torch.clamp(U, lo, hi), U)
        with torch.no_grad():
            bad_start = ~torch.isfinite(U.detach()).flatten(1).all(1)
        if bool(bad_start.any()):
            mid = torch.zeros((), dtype=dt, device=dev) if not bounded else torch.as_tensor((lo + hi) / 2, dtype=dt, device=dev)
            U = torch.where(torch.isfinite(U), U, mid)
        U0_box = U.detach().clamp(lo, hi) if bounded else U.detach()
        S = _State()
        S.U = U
        S.G = packed_groups
        S.c, S.g, S.M = self._evaluate(ev, U, level, graph_from == 0 and K > 0)
        with torch.no_grad():
            S.dead = ~_finite(S.c, S.g, S.M) | bad_start
        self._sanitise(S)  # keeps the graph
        with torch.no_grad():
            zeros_b = torch.zeros(B, dtype=torch.bool, device=dev)
            S.conv, S.stalled = zeros_b, zeros_b.clone()
            S.n_fb = torch.zeros(B, dtype=torch.long, device=dev)  # iterations with a fallback / rejected non-finite step
            S.n_neg = torch.zeros(B, dtype=torch.long, device=dev)  # iterations that met negative curvature
            S.done = S.dead.clone()
            S.live = ~S.dead
            S.lam = torch.full((B,), self.damping, dtype=dt, device=dev)
            S.nm = torch.zeros(B, dtype=torch.long, device=dev)  # consecutive non-decreasing newton steps
            S.hist = S.c.detach()[:, None].repeat(1, self.nonmonotone + 1)  # last accepted costs (GLL reference)
            if self.method in ("newton", "lm"):
                S.lam.clamp_(self.damping_min, self.damping_max)
            S.lr = torch.ones(B, dtype=dt, device=dev)
            if self.method == "adam":
                S.m = torch.zeros_like(U.detach())
                S.v = torch.zeros_like(U.detach())
                S.t = torch.zeros(B, dtype=dt, device=dev)
            S.best_c = S.c.detach().clone()
            S.best_U = U.clone() if self._keeps_best_graph() else U.detach().clone()
            if self.packed:  # the packed problem's best iterate is the one with the lowest |r|
                S.best_r = self._packed_r(S, S.c.detach()).abs()
            S.iters = torch.zeros(B, dtype=torch.long, device=dev)
            S.plateau = zeros_b.clone()
            S.ref_c = S.best_c.clone()  # best cost at the previous plateau check
            S.gnorm = torch.full((B,), float("nan"), dtype=dt, device=dev)

        # ---- iterations
        check_every = self.check_every or (1 if dev.type == "cpu" else 8)
        step = self._first_order_step if self.method in FIRST_ORDER_METHODS else self._second_order_step
        i = 0
        while i < K:
            step_graph = i >= graph_from
            freeze = not (mode == "truncated" and step_graph)
            last = i == K - 1
            trial_graph = (not last) and (i + 1 >= graph_from)
            # grad mode on whenever a graph is needed: for the step, or for committing a trial with graph
            with nullcontext() if (step_graph or trial_graph) else torch.no_grad():
                step(S, ev, "cost" if last else level, trial_graph, freeze, (lo, hi) if bounded else None, project)
            if self.plateau_window and freeze and not last and (i + 1) % self.plateau_window == 0:
                with torch.no_grad():
                    flat = (S.ref_c - S.best_c) <= self.plateau_rtol * S.best_c.abs().clamp_min(1.0)
                    flat = flat & ~S.done & S.live
                    S.plateau = S.plateau | flat
                    S.done = S.done | flat
                    S.ref_c = S.best_c.clone()
            if freeze and self.early_stop and not last and (i + 1) % check_every == 0:
                if bool((S.done | S.dead).all()):
                    if mode != "truncated":
                        break
                    if i + 1 < graph_from:  # skip ahead to the differentiable tail
                        S.c, S.g, S.M = self._evaluate(ev, S.U.detach(), level, True)
                        self._sanitise(S)
                        i = graph_from
                        continue
            i += 1

        # ---- output
        box = (lo, hi) if bounded else None
        self._finish(S, cost_fn, residual_fn, mode, box, clamp_cost)
        with torch.no_grad():
            status = torch.where(S.conv, int(Status.OK), int(Status.MAX_ITERS))
            status = torch.where(S.stalled & ~S.conv, int(Status.STALLED), status)
            status = torch.where(S.plateau & ~S.conv & ~S.stalled, int(Status.PLATEAU), status)
            status = torch.where(S.dead, int(Status.NON_FINITE), status)
        S.bdamp = torch.zeros(B, dtype=dt, device=dev)
        if mode == "implicit":
            U_out = self._implicit(ev, S, box)
        elif mode == "none":
            U_out = S.U.detach()
        else:
            U_out = S.U
        best_U = S.best_U.detach()
        if clamp_cost:
            U_out = torch.clamp(U_out, lo, hi)
            best_U = torch.clamp(best_U, lo, hi)
        dead3 = _bcast(S.dead, U_out)
        U_out = torch.where(dead3, U0_box, U_out)
        best_U = torch.where(dead3, U0_box, best_U)
        info = SolverInfo(
            cost=S.c.detach(), best_cost=S.best_c, best_U=best_U, iterations=S.iters, converged=S.conv.clone(),
            status=status.long(), grad_norm=S.gnorm, damping=S.lam, fallback_steps=S.n_fb, neg_curvature=S.n_neg,
            backward_damping=S.bdamp,
        )
        return U_out, info

    # ------------------------------------------------------------------ helpers
    def _keeps_best_graph(self) -> bool:
        """newton with nonmonotone > 0 returns its best iterate: keep that iterate's graph (unroll)."""
        return self.method == "newton" and self.nonmonotone > 0

    def _finish(self, S, cost_fn, residual_fn, mode, box, clamp_cost) -> None:
        """Put the best point in place where that is the rule (nonmonotone newton) and re-test convergence
        where the returned point is not the one last tested: truncated tail (samples keep moving), best point,
        clamp_in_cost iterates outside the box (zero gradient there: test the clamped problem instead; a
        sample stuck outside at a non-stationary point is STALLED)."""
        need = torch.zeros_like(S.conv)
        stuck_check = torch.zeros_like(S.conv)
        with torch.no_grad():
            if self._keeps_best_graph() and mode != "truncated":
                c = S.c.detach()
                best = S.live & (S.best_c < c - 8.0 * torch.finfo(c.dtype).eps * (c.abs() + S.best_c.abs()))
                if bool(best.any()):
                    S.U = torch.where(_bcast(best, S.U), S.best_U, S.U)
                    S.c = torch.where(best, S.best_c, S.c)
                    need = need | best
            if mode == "truncated":
                need = need | S.live
            if clamp_cost:
                Ud = S.U.detach()
                stuck_check = S.conv & S.live & ((Ud < box[0]) | (Ud > box[1])).flatten(1).any(1)
                need = need | stuck_check
        if self.tol > 0 and bool(need.any()):
            Uc = S.U.detach() if box is None else torch.clamp(S.U.detach(), *box)
            raw = Evaluator(cost_fn, residual_fn if self.method in RESIDUAL_METHODS else None, Uc.shape[0], hessian=self.hessian)
            _, g = raw.cost_grad(Uc, graph=False)
            with torch.no_grad():
                pg = g if box is None else g.masked_fill(_active(Uc, g, *box), 0.0)
                gn = torch.linalg.vector_norm(pg.flatten(1), dim=1)
                ok = torch.isfinite(gn) & (gn <= self.tol)
                S.gnorm = torch.where(need, gn, S.gnorm)
                S.stalled = S.stalled | (stuck_check & ~ok)
                S.conv = torch.where(need, ok, S.conv)

    @staticmethod
    def _evaluate(ev: Evaluator, U: torch.Tensor, level: str, graph: bool):
        if level == "cost":
            return ev.cost(U), None, None
        if level == "grad":
            c, g = ev.cost_grad(U, graph)
            return c, g, None
        if level == "hess":
            return ev.cost_grad_hess(U, graph)
        return ev.residual_jac(U, graph)

    @staticmethod
    def _sanitise(S: _State) -> None:
        """Zero gradients / identity Hessians of dead samples so they cannot produce NaN steps."""
        S.g = torch.where(_bcast(S.dead, S.g), torch.zeros((), dtype=S.g.dtype, device=S.g.device), S.g)
        if S.M is not None:
            eye = torch.eye(S.M.shape[-1], dtype=S.M.dtype, device=S.M.device)
            S.M = torch.where(_bcast(S.dead, S.M), eye, S.M)

    def _converged(self, S: _State, gnorm: torch.Tensor, freeze: bool) -> torch.Tensor:
        """Update convergence flags; return the (B,) mask of samples that take a step this iteration."""
        S.gnorm = gnorm
        conv = (gnorm <= self.tol) & S.live
        S.conv = S.conv | conv
        S.done = S.done | conv
        return ~S.done if freeze else S.live

    def _safe_trial(self, ev, S, U_try, bad, level):
        """Graph mode: re-evaluate rejected non-finite trials at the current point (keeps NaN out of the graph)."""
        if level == "cost" or not bool(bad.any()):
            return None
        U_safe = torch.where(_bcast(bad, U_try), S.U.detach(), U_try)
        return self._evaluate(ev, U_safe, level, True)

    @staticmethod
    def _gsum(x: torch.Tensor, G: int) -> torch.Tensor:
        """(B,) -> (B,): the sum over each sample's packed problem (G consecutive equal blocks), repeated."""
        return x.reshape(G, -1).sum(1).repeat_interleave(x.shape[0] // G)

    def _packed_n(self, S) -> torch.Tensor:
        """Live samples of each sample's packed problem (B,), at least 1."""
        return self._gsum(S.live.to(S.c.dtype), S.G).clamp_min(1)

    def _packed_r(self, S, c: torch.Tensor) -> torch.Tensor:
        """Each sample's packed residual r = mean over its problem's live samples of (offset + c_i) (B,)."""
        return self._gsum(torch.where(S.live, self.offset + c, 0.0), S.G) / self._packed_n(S)

    def _record(self, S, acc, c_t, U_try, moving):
        if self.packed:  # one problem: the best iterate is the whole batch's, by |r|
            r_t = self._packed_r(S, c_t.detach()).abs()
            grp = self._gsum((acc & (r_t < S.best_r)).to(r_t.dtype), S.G) > 0  # the problem's iterate improved
            better = acc & grp
            S.best_r = torch.where(grp, r_t, S.best_r)
        else:
            better = acc & (c_t.detach() < S.best_c)
        S.best_c = torch.where(better, c_t.detach(), S.best_c)
        keep = self._keeps_best_graph() and U_try.requires_grad  # unroll: the returned best point keeps its graph
        with torch.enable_grad() if keep else nullcontext():
            S.best_U = torch.where(_bcast(better, S.best_U), U_try if keep else U_try.detach(), S.best_U)
        S.iters = S.iters + moving

    # ------------------------------------------------------------------ first order
    def _first_order_step(self, S, ev, level, trial_graph, freeze, box, project):
        """gd / adam / lm_scalar: one cost+gradient evaluation at the trial point; few, fused bookkeeping ops."""
        U, g, c = S.U, S.g, S.c
        graph_on = torch.is_grad_enabled()
        with torch.no_grad():
            if self.tol > 0:
                # projected gradient (project mode); with clamp_in_cost the gradient outside the box is already 0
                pg = g.masked_fill(_active(U, g, *box), 0.0) if project else g
                gn = torch.linalg.vector_norm(pg.flatten(1), dim=1)
                if self.packed:  # one problem: ||dr/dvec(U)|| = ||g||_F / B, shared by every sample
                    gn = self._gsum(gn.square(), S.G).sqrt() / self._packed_n(S)
                moving = self._converged(S, gn, freeze)
            else:
                moving = ~S.done if freeze else ~S.dead
        if self.method == "gd":
            d = g * (-self.step_size * S.lr)[:, None, None]
        elif self.method == "lm_scalar":
            if self.packed:  # one residual, J = [g_1 .. g_n] / n over the n live samples
                n = self._packed_n(S)
                coef = self._packed_r(S, c) * (-self.step_size * S.lr) / (n * (self.damping + self._gsum((g * g).sum((1, 2)), S.G) / n**2))
            else:
                coef = (self.offset + c) * (-self.step_size * S.lr) / (self.damping + (g * g).sum((1, 2)))
            d = g * coef[:, None, None]
        else:  # adam
            b1, b2 = self.adam_betas
            m_new = b1 * S.m + (1 - b1) * g
            v_new = b2 * S.v + (1 - b2) * (g * g)
            t_new = S.t + 1
            mhat = m_new / (1 - b1 ** t_new)[:, None, None]
            vhat = v_new / (1 - b2 ** t_new)[:, None, None]
            d = mhat / (vhat.clamp_min(self.adam_eps ** 2).sqrt() + self.adam_eps) * (-self.step_size * S.lr)[:, None, None]
        U_try = U + d
        if project:
            U_try = torch.clamp(U_try, *box)
        if graph_on or trial_graph:  # keep non-moving samples at finite points (NaN-free graphs)
            U_try = torch.where(moving[:, None, None], U_try, U)

        c_t, g_t, _ = self._evaluate(ev, U_try, level, trial_graph)
        with torch.no_grad():
            # one fused finiteness test: NaN/inf anywhere in U_try or g_t makes the sum non-finite
            ok = torch.isfinite((c_t if g_t is None else c_t + g_t.sum((1, 2))) + U_try.detach().sum((1, 2)))
            if self.packed:  # one problem: a non-finite trial anywhere rejects the whole step
                ok = ok & ~(self._gsum((moving & ~ok).to(U.dtype), S.G) > 0)
            acc = moving & ok
            rej = moving ^ acc
            any_rej = True if U.device.type != "cpu" else bool(rej.any())  # the check is free on CPU
            redo = self._safe_trial(ev, S, U_try, rej, level) if (trial_graph and any_rej) else None
        if redo is not None:
            c_t, g_t, _ = redo
        acc3 = acc[:, None, None]
        S.U = torch.where(acc3, U_try, U)
        S.c = torch.where(acc, c_t, c)
        if g_t is not None:
            S.g = torch.where(acc3, g_t, g)
        if self.method == "adam":
            S.m = torch.where(acc3, m_new, S.m)
            S.v = torch.where(acc3, v_new, S.v)
            S.t = torch.where(acc, t_new, S.t)
        with torch.no_grad():
            if self.step_tol > 0:
                sn = torch.linalg.vector_norm((S.U - U).flatten(1), dim=1)
                if self.packed:  # the norm of the whole (packed) step
                    sn = self._gsum(sn.square(), S.G).sqrt()
                small = acc & (sn <= self.step_tol)
                S.conv = S.conv | small
                S.done = S.done | small
            if any_rej:
                S.lr = torch.where(rej, 0.5 * S.lr, S.lr)
                S.n_fb = S.n_fb + rej
            self._record(S, acc, c_t, U_try, moving)

    # ------------------------------------------------------------------ second order
    def _second_order_step(self, S, ev, level, trial_graph, freeze, box, project):
        """Damped Newton / GN / LM step with per-sample damping, chosen from a ladder of candidates.

        newton/lm: the damping is shifted past the most negative eigenvalue of the (reduced) model
        matrix (``eigvalsh``; negative curvature is counted in ``neg_curvature``), then ``n_ladder``
        dampings ``shift + lam * 4^j`` are factorised (``cholesky_ex``) and their trial points
        evaluated in ONE batched cost-only call; each sample takes its lowest-cost candidate if it
        decreases the cost (accept: lam <- chosen), else stays (reject: lam grows 256x). The
        derivatives are then evaluated once, at the accepted points. gauss_newton: one candidate
        with fixed damping, every finite step accepted. Bounded (project mode): every candidate is the
        solution of its box-constrained model (:func:`_box_qp`), not the clamp of the reduced step.
        """
        U, g, M, c = S.U, S.g, S.M, S.c
        B, H, A = U.shape
        n = H * A
        dt, dev = U.dtype, U.device
        eye = torch.eye(n, dtype=dt, device=dev)
        adaptive = self.method != "gauss_newton"
        graph_on = torch.is_grad_enabled()
        with torch.no_grad():
            Ud = U.detach()
            if box is not None:
                fr = (~_active(Ud, g.detach().reshape(B, H, A), *box).reshape(B, n)).to(dt)
            else:
                fr = torch.ones(B, n, dtype=dt, device=dev)
            moving = self._converged(S, torch.linalg.vector_norm(g.detach() * fr, dim=1), freeze)
            frozen_tail = S.conv if not freeze else torch.zeros_like(S.conv)
            pg = g.detach() * fr
            Mr = M.detach() * (fr[:, :, None] * fr[:, None, :]) + torch.diag_embed(1.0 - fr)
            shift = torch.zeros(B, dtype=dt, device=dev)
            neg = torch.zeros(B, dtype=torch.bool, device=dev)
            if self.method == "newton":  # shift past negative curvature so every candidate is PD
                ev_min = _min_eigenvalue(Mr)
                neg = ev_min <= 0
                shift = torch.where(neg, -ev_min + 1e-6 * torch.linalg.matrix_norm(Mr) + self.damping_min, shift)
                S.n_neg = S.n_neg + (moving & neg)
            ladder = self._ladder(dt, dev) if adaptive else torch.ones(1, dtype=dt, device=dev)
            lams = shift[None] + S.lam[None] * ladder[:, None]  # (m, B)
            if adaptive and self._UNDAMPED:
                # the undamped candidate: only where the (reduced) matrix is PD, with a relative floor (a step along
                # a near-null direction would amplify round-off); where it was shifted it repeats lam * 4^-2
                floor = 1e-6 * torch.linalg.matrix_norm(Mr) + self.damping_min
                lams = torch.cat([torch.where(neg, lams[1], floor)[None], lams[1:]])
            m = lams.shape[0]
            L, info = torch.linalg.cholesky_ex(Mr[None] + lams[..., None, None] * eye)
            okm = info == 0
            L = torch.where(okm[..., None, None], L, eye)
            D = -torch.cholesky_solve(pg[None].expand(m, B, n).unsqueeze(-1), L).squeeze(-1)
            D_fb = -pg[None] / (lams + torch.linalg.matrix_norm(Mr)[None])[..., None]
            D = torch.where(okm[..., None], D, D_fb) * fr
            if project:  # box-QP subproblem: projected Newton on the model from the clamped reduced step
                lo_n, hi_n = (torch.as_tensor(b, dtype=dt, device=dev).expand(B, H, A).reshape(B, n) for b in box)
                dlo, dhi = lo_n - Ud.reshape(B, n), hi_n - Ud.reshape(B, n)
                D = torch.clamp(D, dlo, dhi)
                Aq = M.detach()[None] + lams[..., None, None] * eye
                Dq = _box_qp(Aq, g.detach()[None].expand(m, B, n), D, dlo, dhi, self._QP_ITERS)
                D = torch.where(okm[..., None], Dq, D)
                fq = ((D > dlo) & (D < dhi)).to(dt)  # the QP's free set (interior coordinates)
            D = D * self.step_size
            Uc = Ud.reshape(1, B, n) + D
            if project:
                Uc = torch.clamp(Uc.reshape(m, B, H, A), *box).reshape(m, B, n)
            Uc = torch.where(moving[None, :, None], Uc, Ud.reshape(1, B, n))
            cm = torch.where(torch.isfinite(Uc).all(-1), 0.0, float("inf")).to(dt)  # a non-finite trial point is rejected
            cm = cm + (ev.cost_many(Uc.reshape(m, B, H, A)) if m > 1 else ev.cost(Uc.reshape(B, H, A))[None])
            cm = torch.where(torch.isfinite(cm), cm, torch.full_like(cm, float("inf")))
            c_best, j = cm.min(dim=0)
            U_cand = Uc[j, torch.arange(B, device=dev)]  # exactly the point whose cost was evaluated
            dd = U_cand - Ud.reshape(B, n)
            ok_j = okm.gather(0, j[None])[0]
            lam_j = lams.gather(0, j[None])[0]
            fin = torch.isfinite(c_best)
            if adaptive:
                pred = -((g.detach() * dd).sum(1) + 0.5 * (dd * torch.bmm(M.detach(), dd.unsqueeze(-1)).squeeze(-1)).sum(1))
                noise = 8.0 * torch.finfo(dt).eps * (c.detach().abs() + c_best.abs())
                decrease = c_best < c.detach()
                flat = (c_best <= c.detach() + noise) & (pred.abs() <= noise)  # round-off regime
                good = fin & (decrease | flat | frozen_tail)
                if self.method == "newton" and self.nonmonotone > 0:
                    # at a kink (e.g. a twin-Q min) no candidate decreases the cost; step across it anyway if it
                    # stays strictly below the GLL reference, at most `nonmonotone` times in a row (field docstring)
                    ref = S.hist.max(1).values - noise - 1e-4 * pred.clamp_min(0.0)  # sufficient decrease vs R_k
                    up = fin & ~good & (c_best < ref) & (S.nm < self.nonmonotone)
                    S.nm = torch.where(moving & up, S.nm + 1, torch.where(moving & decrease, 0, S.nm))
                    good = good | up
            else:
                good = fin
            acc = moving & good
            rej = moving & ~good
            S.n_fb = S.n_fb + (moving & (~ok_j | ~fin))
        if graph_on and project:
            # differentiable box-QP step for the chosen damping and active set (both piecewise constant): the
            # active coordinates go to their bound (d_A = bound - U_A), the free ones solve the reduced system
            fj = fq.gather(0, j[None, :, None].expand(1, B, n))[0]
            fj = torch.where(ok_j[:, None], fj, fr)
            dA = (Ud.reshape(B, n) + D.gather(0, j[None, :, None].expand(1, B, n))[0] / self.step_size).detach() \
                - U.reshape(B, n)
            dA = dA * (1.0 - fj)
            Mg = M * (fj[:, :, None] * fj[:, None, :]) + torch.diag_embed(1.0 - fj)
            Lg, _ = torch.linalg.cholesky_ex(torch.where(ok_j[:, None, None], Mg + lam_j[:, None, None] * eye, eye))
            rhs = (g + torch.bmm(M, dA.unsqueeze(-1)).squeeze(-1)) * fj
            d = torch.where(ok_j[:, None], -torch.cholesky_solve(rhs.unsqueeze(-1), Lg).squeeze(-1) * fj + dA,
                            -(g * fr) / (lam_j + torch.linalg.matrix_norm(Mr))[:, None].detach() * fr)
            U_new = torch.clamp((U.reshape(B, n) + d * self.step_size).reshape(B, H, A), *box)
            U_new = U_new + (U_cand.reshape(B, H, A) - U_new).detach()  # value: the evaluated candidate, exactly
        elif graph_on:  # differentiable step for the chosen damping (the choice itself is piecewise constant)
            Mg = M * (fr[:, :, None] * fr[:, None, :]) + torch.diag_embed(1.0 - fr)
            Lg, _ = torch.linalg.cholesky_ex(torch.where(ok_j[:, None, None], Mg + lam_j[:, None, None] * eye, eye))
            pgg = g * fr
            d = torch.where(ok_j[:, None], -torch.cholesky_solve(pgg.unsqueeze(-1), Lg).squeeze(-1),
                            -pgg / (lam_j + torch.linalg.matrix_norm(Mr))[:, None].detach())
            U_new = U.reshape(B, n) + d * (self.step_size * fr)
            if project:
                U_new = torch.clamp(U_new.reshape(B, H, A), *box)
            U_new = U_new.reshape(B, H, A)
            U_new = U_new + (U_cand.reshape(B, H, A) - U_new).detach()  # value: the evaluated candidate, exactly
        else:
            U_new = U_cand.reshape(B, H, A)
        S.U = torch.where(acc[:, None, None], U_new, U)

        if level == "cost":  # last iteration: the candidate cost is all we need
            S.c = torch.where(acc, c_best, c)
        elif bool(acc.any()):
            c_n, g_n, M_n = self._evaluate(ev, S.U, level, trial_graph)
            with torch.no_grad():
                bad = acc & ~_finite(c_n, g_n, M_n)  # finite cost but non-finite derivatives: undo
            if bool(bad.any()):
                acc, rej = acc & ~bad, rej | bad
                S.n_fb = S.n_fb + bad
                S.U = torch.where(acc[:, None, None], S.U, U)
                c_n, g_n, M_n = self._evaluate(ev, torch.where(bad[:, None, None], U.detach(), S.U), level, trial_graph)
            S.c = torch.where(acc, c_n, c)
            S.g = torch.where(acc[:, None], g_n, g)
            S.M = torch.where(acc[:, None, None], M_n, M)
        elif trial_graph and not g.requires_grad:  # entering the differentiable tail: derivatives need a graph
            S.c, S.g, S.M = self._evaluate(ev, S.U, level, True)
        with torch.no_grad():
            lam = S.lam
            if adaptive:
                chosen = torch.where(ok_j, ladder.clamp_min(self._LADDER_BASE ** -2).gather(0, j) * lam, lam)
                new_lam = torch.where(acc, chosen, lam * float(self._LADDER_BASE ** 4))
            else:
                new_lam = torch.where(ok_j, lam, torch.maximum(10.0 * lam, torch.full_like(lam, self.damping_min)))
            upd = moving & ~frozen_tail
            S.lam = torch.where(upd, new_lam.clamp(self.damping_min if adaptive else 0.0, self.damping_max), lam)
            if adaptive:
                st = rej & (S.lam >= self.damping_max)
                S.stalled = S.stalled | st
                if freeze:
                    S.done = S.done | st
            if self.step_tol > 0:
                small = acc & (torch.linalg.vector_norm(dd, dim=1) <= self.step_tol)
                S.conv = S.conv | small
                S.done = S.done | small
            if self.nonmonotone > 0:
                S.hist = torch.where(acc[:, None], torch.cat([S.hist[:, 1:], c_best[:, None]], 1), S.hist)
            self._record(S, acc, c_best if level == "cost" else S.c, S.U, moving)  # S.c: the plain cost at S.U

    _LADDER_BASE = 4.0
    _QP_ITERS = 20
    _UNDAMPED = True

    def _ladder(self, dt, dev) -> torch.Tensor:
        """Damping multipliers tried per iteration: 4^-2 ... 4^(n_ladder-3)."""
        lad = self._LADDER_BASE ** torch.arange(-2, self.n_ladder - 2, dtype=dt, device=dev)
        if self._UNDAMPED:
            lad = torch.cat([torch.zeros(1, dtype=dt, device=dev), lad])
        return lad

    # ------------------------------------------------------------------ implicit backward
    def _implicit(self, ev: Evaluator, S: _State, box) -> torch.Tensor:
        """One differentiable Newton step at the detached solution (value unchanged; IFT gradient)."""
        Ud = S.U.detach()
        B, H, A = Ud.shape
        n = H * A
        with torch.no_grad():
            _, g0, Mh = ev.cost_grad_hess(Ud, graph=False)
            fin = _finite(g0, Mh) & ~S.dead
            g0 = torch.where(fin[:, None], g0, 0.0)
            eye = torch.eye(n, dtype=Ud.dtype, device=Ud.device)
            Mh = torch.where(fin[:, None, None], Mh, eye)
            if box is not None:
                fr = (~_active(Ud, g0.reshape(B, H, A), *box)).reshape(B, n).to(Ud.dtype)
            else:
                fr = torch.ones(B, n, dtype=Ud.dtype, device=Ud.device)
            Mr = Mh * (fr[:, :, None] * fr[:, None, :]) + torch.diag_embed(1.0 - fr)
            if self.implicit_damping is None:
                # unbiased (lam = 0) where the reduced Hessian is PD; else shift its smallest eigenvalue to `damping`
                ev_min = _min_eigenvalue(Mr)
                tiny = torch.finfo(Ud.dtype).eps ** 0.5 * torch.linalg.matrix_norm(Mr)
                lam = torch.where(ev_min > tiny, 0.0, tiny.clamp_min(self.damping) - ev_min)
                lam = torch.where(fin, lam, 0.0)
            else:
                lam = torch.full((B,), float(self.implicit_damping), dtype=Ud.dtype, device=Ud.device)
            L, info = torch.linalg.cholesky_ex(Mr + lam[:, None, None] * eye)
            for _ in range(12):  # one-off per solve: a few host syncs are fine here
                bad = info != 0
                if not bool(bad.any()):
                    break
                lam = torch.where(bad, torch.maximum(100.0 * lam, torch.full_like(lam, 1e-6)), lam)
                L, info = torch.linalg.cholesky_ex(Mr + lam[:, None, None] * eye)
            ok = info == 0
            L = torch.where(ok[:, None, None], L, eye)
            scale = lam + torch.linalg.matrix_norm(Mr)
            S.bdamp = torch.where(fin, lam, 0.0)
        _, g = ev.cost_grad(Ud, graph=True)
        pg = g.reshape(B, n) * fr
        d = torch.where(ok[:, None], -torch.cholesky_solve(pg.unsqueeze(-1), L).squeeze(-1), -pg / scale[:, None])
        d = torch.where(fin[:, None], d * fr, torch.zeros((), dtype=d.dtype, device=d.device))
        return Ud + (d - d.detach()).reshape(B, H, A)
