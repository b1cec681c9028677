"""Batched derivatives of per-sample costs: value+gradient, exact per-sample Hessians, residual Jacobians.

All functions take ``U`` of shape (B, H, A) and a batched function whose sample ``i`` depends only on
``U[i]``. Then the Hessian of ``sum_i cost_i`` is block diagonal, so ``n = H*A`` Hessian-vector
products with basis tangents broadcast over the batch give all B Hessians at once. We compute them
reverse-over-reverse: ``torch.func.vjp(torch.func.grad(...))`` gives the value, gradient and an HVP
function in one forward+backward pass, and ``vmap`` of that HVP over the n basis cotangents gives the
Hessian rows in one batched double-backward (on the TD-MPC-sized RL cost, 1 thread: 5.6 bare
cost+grad evaluations at B=1 and 33 at B=256, vs 12.7 and 42 for forward-over-reverse
``vmap(jvp(grad))``). We fall back to a loop of double-backward autograd HVPs if the function is
not functorch-compatible (e.g. in-place ops under vmap).

``graph=True`` keeps the autograd graph (outputs differentiable w.r.t. ``U`` and everything the
function closes over); ``graph=False`` returns detached tensors and records nothing.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["Evaluator", "basis_tangents"]

CostFn = Callable[[torch.Tensor], torch.Tensor]

#: Errors that mean "this function cannot run under torch.func transforms".
_FUNCTORCH_ERRORS = (RuntimeError, NotImplementedError, TypeError, ValueError)


def basis_tangents(U: torch.Tensor) -> torch.Tensor:
    """(n, B, H, A) view: tangent k is the k-th unit vector of every sample (no copy over B)."""
    B, H, A = U.shape
    n = H * A
    return torch.eye(n, dtype=U.dtype, device=U.device).reshape(n, 1, H, A).expand(n, B, H, A)


def _grad(out: torch.Tensor, U: torch.Tensor, create_graph: bool, grad_outputs=None, retain: bool = False) -> torch.Tensor:
    """``d out / d U`` (zeros when ``out`` does not depend on ``U``)."""
    if not out.requires_grad:
        return torch.zeros_like(U)
    (g,) = torch.autograd.grad(
        out, U, grad_outputs=grad_outputs, create_graph=create_graph, retain_graph=retain or create_graph,
        allow_unused=True, materialize_grads=True,
    )
    return g


class Evaluator:
    """Evaluates the (optionally box-clamped) objective and its derivatives at a batch of points.

    ``cost_fn(U) -> (B,)``. For residual problems pass ``residual_fn(U) -> (B, R)``; the objective is
    then ``0.5 * ||r||^2`` and ``cost_fn`` is ignored. ``clamp`` = (lo, hi) makes every function see
    ``clamp(U, lo, hi)`` (the original DiffTORI's clamp-inside-the-cost).
    """

    def __init__(self, cost_fn: CostFn | None, residual_fn: CostFn | None, batch: int,
                 clamp: tuple | None = None, hessian: str = "auto", cost_grad_fn=None, residual_jac_fn=None):
        self.residual_fn = residual_fn
        self.cost_grad_fn = cost_grad_fn
        self.residual_jac_fn = residual_jac_fn
        self.batch = batch
        self.clamp = clamp
        self.use_functorch = hessian in ("auto", "functorch")
        self.strict_functorch = hessian == "functorch"
        self._basis: torch.Tensor | None = None
        if residual_fn is not None:
            self.cost_fn = self._residual_cost
        elif cost_fn is not None:
            self.cost_fn = cost_fn
        else:
            raise ValueError("need cost_fn (or residual_fn for gauss_newton / lm)")

    # ------------------------------------------------------------------ plain evaluations
    def _in(self, U: torch.Tensor) -> torch.Tensor:
        return U if self.clamp is None else torch.clamp(U, *self.clamp)

    def _check(self, out: torch.Tensor, what: str, ndim: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.ndim != ndim or out.shape[0] != self.batch:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            want = f"({self.batch},)" if ndim == 1 else f"({self.batch}, R)"
            raise ValueError(f"{what} must return a tensor of shape {want} (one value per sample), got {shape}")
        return out

    def _residual_cost(self, U: torch.Tensor) -> torch.Tensor:
        r = self._check(self.residual_fn(U), "residual_fn", 2)
        return 0.5 * (r * r).sum(-1)

    def cost(self, U: torch.Tensor) -> torch.Tensor:
        """(B,) objective, no graph."""
        with torch.no_grad():
            return self._check(self.cost_fn(self._in(U)), "cost_fn", 1)

    def cost_many(self, Um: torch.Tensor) -> torch.Tensor:
        """(m, B) objective of m candidate batches (m, B, H, A), no graph: one vmapped call (or a loop)."""
        if self.use_functorch and Um.shape[0] > 1:
            try:
                with torch.no_grad():
                    return torch.func.vmap(lambda u: self._check(self.cost_fn(self._in(u)), "cost_fn", 1))(Um)
            except _FUNCTORCH_ERRORS:
                if self.strict_functorch:
                    raise
                self.use_functorch = False
        return torch.stack([self.cost(u) for u in Um])

    def cost_grad(self, U: torch.Tensor, graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective (B,) and gradient (B, H, A): one forward + one backward pass."""
        if graph:
            Ug = U if U.requires_grad else U.detach().requires_grad_()
            with torch.enable_grad():
                c = self._check(self.cost_fn(self._in(Ug)), "cost_fn", 1)
                return c, _grad(c.sum(), Ug, True)
        if self.cost_grad_fn is not None:
            return self._cost_grad_given(U.detach())
        with torch.enable_grad():
            Ul = U.detach().requires_grad_()
            c = self._check(self.cost_fn(self._in(Ul)), "cost_fn", 1)
            g = _grad(c.sum(), Ul, False)
        return c.detach(), g

    def _cost_grad_given(self, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The caller's ``cost_grad_fn`` at ``clamp(U)``, its gradient masked as ``torch.clamp``'s backward."""
        with torch.no_grad():
            c, g = self.cost_grad_fn(self._in(U))
            self._check(c, "cost_grad_fn's cost", 1)
            if not isinstance(g, torch.Tensor) or g.shape != U.shape:
                got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
                raise ValueError(f"cost_grad_fn's gradient must have the shape of U {tuple(U.shape)}, got {got}")
            if self.clamp is not None:
                lo, hi = self.clamp
                g = torch.where((U >= lo) & (U <= hi), g, torch.zeros((), dtype=g.dtype, device=g.device))
        return c, g

    # ------------------------------------------------------------------ second order
    def _basis_for(self, U: torch.Tensor) -> torch.Tensor:
        b = self._basis
        if b is None or b.shape[1:] != U.shape or b.dtype != U.dtype or b.device != U.device:
            b = self._basis = basis_tangents(U)
        return b

    def cost_grad_hess(self, U: torch.Tensor, graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objective (B,), gradient (B, n) and exact per-sample Hessian (B, n, n)."""
        if self.use_functorch:
            try:
                return self._cgh_functorch(U, graph)
            except _FUNCTORCH_ERRORS:
                if self.strict_functorch:
                    raise
                self.use_functorch = False  # remember for the rest of this solve
        return self._cgh_autograd(U, graph)

    def _cgh_functorch(self, U, graph):
        B = U.shape[0]
        n = U.shape[1] * U.shape[2]

        def f(u):
            c = self._check(self.cost_fn(self._in(u)), "cost_fn", 1)
            return c.sum(), c

        gfn = torch.func.grad(f, has_aux=True)
        Up = U if graph else U.detach()
        ctx = torch.enable_grad() if graph else torch.no_grad()
        with ctx:
            # reverse-over-reverse: one forward+backward for (c, g), then n batched HVPs (rows of H)
            # through the saved backward graph.
            g, hvp, c = torch.func.vjp(gfn, Up, has_aux=True)
            (Hr,) = torch.func.vmap(hvp)(self._basis_for(U))
            # Hr[k, b] = e_k^T H_b (row k); H is symmetric, symmetrise away round-off.
            M = Hr.reshape(n, B, n).transpose(0, 1)
            M = 0.5 * (M + M.transpose(1, 2))
        return c, g.reshape(B, n), M

    def _cgh_autograd(self, U, graph):
        B = U.shape[0]
        n = U.shape[1] * U.shape[2]
        basis = self._basis_for(U)
        with torch.enable_grad():
            Ul = U if (graph and U.requires_grad) else U.detach().requires_grad_()
            c = self._check(self.cost_fn(self._in(Ul)), "cost_fn", 1)
            g = _grad(c.sum(), Ul, True)
            if g.requires_grad:
                cols = [_grad(g, Ul, graph, grad_outputs=basis[k], retain=True).reshape(B, n) for k in range(n)]
                M = torch.stack(cols, dim=-1)
            else:  # cost linear in U
                M = torch.zeros(B, n, n, dtype=U.dtype, device=U.device)
            M = 0.5 * (M + M.transpose(1, 2))
        if not graph:
            c, g, M = c.detach(), g.detach(), M.detach()
        return c, g.reshape(B, n), M

    def residual_jac(self, U: torch.Tensor, graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gauss-Newton quantities: cost 0.5||r||^2 (B,), gradient J^T r (B, n), J^T J (B, n, n)."""
        r, J = None, None
        if not graph and self.residual_jac_fn is not None:
            r, J = self._rj_given(U.detach())
        elif self.use_functorch:
            try:
                r, J = self._rj_functorch(U, graph)
            except _FUNCTORCH_ERRORS:
                if self.strict_functorch:
                    raise
                self.use_functorch = False
        if J is None:
            r, J = self._rj_autograd(U, graph)
        c = 0.5 * (r * r).sum(-1)
        g = torch.bmm(J.transpose(1, 2), r.unsqueeze(-1)).squeeze(-1)
        M = torch.bmm(J.transpose(1, 2), J)
        return c, g, M

    def _rj_given(self, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The caller's ``residual_jac_fn`` at ``clamp(U)``; Jacobian columns masked as ``torch.clamp``'s backward."""
        B, n = U.shape[0], U.shape[1] * U.shape[2]
        with torch.no_grad():
            r, J = self.residual_jac_fn(self._in(U))
            self._check(r, "residual_jac_fn's residual", 2)
            if not isinstance(J, torch.Tensor) or J.shape != (B, r.shape[1], n):
                got = tuple(J.shape) if isinstance(J, torch.Tensor) else type(J).__name__
                raise ValueError(f"residual_jac_fn's Jacobian must have shape (B, R, H*A) = {(B, r.shape[1], n)}, got {got}")
            if self.clamp is not None:
                lo, hi = self.clamp
                inside = ((U >= lo) & (U <= hi)).reshape(B, 1, n)
                J = torch.where(inside, J, torch.zeros((), dtype=J.dtype, device=J.device))
        return r, J

    def _rj_functorch(self, U, graph):
        B = U.shape[0]
        n = U.shape[1] * U.shape[2]
        Up = U if graph else U.detach()

        def res(u):
            return self._check(self.residual_fn(self._in(u)), "residual_fn", 2)

        def col(t):
            return torch.func.jvp(res, (Up,), (t,))

        ctx = torch.enable_grad() if graph else torch.no_grad()
        with ctx:
            r, Jc = torch.func.vmap(col, out_dims=(None, 0))(self._basis_for(U))  # Jc (n, B, R)
            J = Jc.permute(1, 2, 0)
        assert J.shape[2] == n
        return r, J

    def _rj_autograd(self, U, graph):
        B = U.shape[0]
        n = U.shape[1] * U.shape[2]
        with torch.enable_grad():
            Ul = U if (graph and U.requires_grad) else U.detach().requires_grad_()
            r = self._check(self.residual_fn(self._in(Ul)), "residual_fn", 2)
            rows = [_grad(r[:, j].sum(), Ul, graph, retain=True).reshape(B, n) for j in range(r.shape[1])]
            J = torch.stack(rows, dim=1)
        if not graph:
            r, J = r.detach(), J.detach()
        return r, J
