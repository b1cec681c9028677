"""Shooting-form MPC on top of :class:`TrajOptimizer`: ``U, X, info = MPC(dynamics, stage_cost, ...)(x0)``.

The decision variable is the action sequence U (B, T, nu); the cost rolls the dynamics out from x0:
``sum_t stage_cost(x_t, u_t) + terminal_cost(x_T)``, ``x_{t+1} = dynamics(x_t, u_t)``, or, for least-squares
costs (gauss_newton / lm), ``0.5 ||residual(X, U)||^2`` over the whole rolled-out trajectory. The solution and
the rolled-out states are differentiable (with the optimizer's backward mode) w.r.t. x0 and every tensor /
parameter that ``dynamics`` and the costs use.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch

from .derivatives import _FUNCTORCH_ERRORS, basis_tangents
from .info import SolverInfo
from .solver import RESIDUAL_METHODS, TrajOptimizer

__all__ = ["MPC", "MPCResult", "rollout_jacobian", "JACOBIAN_MODES"]


JACOBIAN_MODES = ("auto", "forward", "per_step")


def _small(B: int, T: int) -> bool:
    """Batches this small are overhead-bound on a CPU: fewer, larger torch.func calls beat fewer flops."""
    return B * T <= 32


def rollout_jacobian(dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                     U: torch.Tensor, mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """States ``X (B, T+1, nx)`` rolled out from x0 under U and ``dX/dvec(U) (B, T+1, nx, T*nu)``, no graph.

    Both modes use causality (x_t depends on u_0..u_{t-1} only). ``forward``: step t pushes the t*nu tangents
    carried so far plus nu new ones through ``dynamics`` (one ``vmap(jvp)`` per step): T(T+1)/2 * nu tangent
    passes per sample instead of T^2 * nu for a dense Jacobian of the rollout. ``per_step``: the T step
    Jacobians (dx'/dx, dx'/du) in ONE ``vmap(vjp)`` call over nx cotangents, chained with small matrix products:
    T * nx passes, but one call instead of T (small batches are overhead-bound). ``auto``: ``per_step`` when it
    needs no more passes or the batch is small (B * T <= 32), else ``forward``. ``dynamics`` must run under
    ``torch.func`` transforms.
    """
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"rollout_jacobian: mode must be one of {JACOBIAN_MODES}, got {mode!r}")
    B, T, nu = U.shape
    nx, n = x0.shape[1], T * nu
    if mode == "auto":
        mode = "per_step" if (2 * nx <= (T + 1) * nu or _small(B, T)) else "forward"
    with torch.no_grad():
        x, U = x0.detach(), U.detach()
        if mode == "per_step":
            xs = [x]
            for t in range(T):
                xs.append(dynamics(xs[-1], U[:, t]))
            X = torch.stack(xs, 1)
            _, pull = torch.func.vjp(dynamics, X[:, :T].reshape(B * T, nx), U.reshape(B * T, nu))
            rows = torch.eye(nx, dtype=U.dtype, device=U.device).reshape(nx, 1, nx).expand(nx, B * T, nx)
            Jx, Ju = torch.func.vmap(pull)(rows)  # (nx_out, B*T, nx), (nx_out, B*T, nu)
            Fx = Jx.permute(1, 0, 2).reshape(B, T, nx, nx)
            Fu = Ju.permute(1, 0, 2).reshape(B, T, nx, nu)
            dX = X.new_zeros(B, T + 1, nx, n)
            for t in range(T):
                K = t * nu
                if K:
                    dX[:, t + 1, :, :K] = Fx[:, t] @ dX[:, t, :, :K]
                dX[:, t + 1, :, K : K + nu] = Fu[:, t]
            return X, dX
        # tangents lead (K, B, nx): vmap's batch dim is then already outermost and the batched matmuls need no copy
        dx = x.new_zeros(0, B, nx)  # d x_t / d u_s for the K = t * nu coordinates of u_0..u_{t-1}
        eye = torch.eye(nu, dtype=U.dtype, device=U.device)[:, None, :].expand(nu, B, nu)
        xs, dxs = [x], [x.new_zeros(B, nx, n)]
        for t in range(T):
            K = t * nu
            tx = torch.cat([dx, x.new_zeros(nu, B, nx)], 0)
            tu = torch.cat([U.new_zeros(K, B, nu), eye], 0)
            u = U[:, t]

            def push(a: torch.Tensor, b: torch.Tensor, x=x, u=u) -> tuple[torch.Tensor, torch.Tensor]:
                return torch.func.jvp(dynamics, (x, u), (a, b))

            x, dx = torch.func.vmap(push, out_dims=(None, 0))(tx, tu)
            xs.append(x)
            dxs.append(torch.nn.functional.pad(dx.permute(1, 2, 0), (0, n - K - nu)))
        return torch.stack(xs, 1), torch.stack(dxs, 1)


class MPCResult(NamedTuple):
    U: torch.Tensor
    """(B, T, nu) optimal actions (U[:, 0] is the one to execute)."""
    X: torch.Tensor
    """(B, T+1, nx) states rolled out from x0 under U (X[:, 0] = x0)."""
    info: SolverInfo
    """The optimizer's per-sample diagnostics."""


class MPC:
    """Model-predictive control by trajectory optimization in shooting form.

    ``dynamics(x (B, nx), u (B, nu)) -> (B, nx)``; ``stage_cost(x, u) -> (B,)``; optional
    ``terminal_cost(x_T) -> (B,)``. Or, instead of the two costs, ``residual(X (B, T+1, nx), U (B, T, nu)) ->
    (B, R)`` with cost ``0.5 ||r||^2`` (required by gauss_newton / lm, usable by every method): their
    Jacobian is then built from :func:`rollout_jacobian` (``structured=True``, the default; falls back with a
    warning if ``dynamics`` does not run under ``torch.func``; ``jacobian_mode`` picks its mode) instead of
    differentiating the whole rollout once per action coordinate. ``optimizer`` defaults to ``TrajOptimizer(method="newton")`` (unbounded: pass
    ``bounds`` for an action box). ``warm_start=True`` starts each call, when no ``U_init`` is given, from the
    previous solution shifted by one step (last action repeated), as in receding-horizon control.
    """

    def __init__(self, dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 stage_cost: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, horizon: int, n_ctrl: int,
                 terminal_cost: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 optimizer: TrajOptimizer | None = None, warm_start: bool = False,
                 residual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, structured: bool = True,
                 jacobian_mode: str = "auto"):
        if horizon < 1 or n_ctrl < 1:
            raise ValueError(f"MPC: need horizon >= 1 and n_ctrl >= 1, got {horizon}, {n_ctrl}")
        if (stage_cost is None) == (residual is None):
            raise ValueError("MPC: give exactly one of stage_cost (with an optional terminal_cost) or residual")
        if residual is not None and terminal_cost is not None:
            raise ValueError("MPC: terminal_cost goes with stage_cost; with residual, put the terminal terms in it")
        self.dynamics, self.stage_cost, self.terminal_cost = dynamics, stage_cost, terminal_cost
        self.residual = residual
        self.horizon, self.n_ctrl = horizon, n_ctrl
        self.optimizer = optimizer if optimizer is not None else TrajOptimizer(method="newton")
        if self.optimizer.method in RESIDUAL_METHODS and residual is None:
            raise ValueError(f"MPC: method {self.optimizer.method!r} needs residual(X, U) -> (B, R), not stage_cost")
        self.warm_start = warm_start
        if jacobian_mode not in JACOBIAN_MODES:
            raise ValueError(f"MPC: jacobian_mode must be one of {JACOBIAN_MODES}, got {jacobian_mode!r}")
        self.structured, self.jacobian_mode = structured, jacobian_mode
        self._jac_ok: bool | None = None  # structured Jacobian works with these functions (probed once)
        self._last: torch.Tensor | None = None

    def rollout(self, x0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """(B, T+1, nx) states from x0 under U."""
        xs = [x0]
        for t in range(U.shape[1]):
            xs.append(self.dynamics(xs[-1], U[:, t]))
        return torch.stack(xs, 1)

    def residual_of(self, x0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """(B, R) residual of U from x0 (``residual`` given)."""
        return self.residual(self.rollout(x0, U), U)

    def residual_jacobian(self, x0: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r (B, R), dr/dvec(U) (B, R, T*nu))`` without a graph: :func:`rollout_jacobian` for the states, then
        the (cheap) residual's derivatives chained onto it: one ``vmap(jvp)`` over the T*nu tangents, or, for
        small batches (overhead-bound), one ``vmap(vjp)`` over the R cotangents."""
        B, T, _ = U.shape
        X, dX = rollout_jacobian(self.dynamics, x0, U, self.jacobian_mode)
        with torch.no_grad():
            Ud = U.detach()
            if _small(B, T):
                r, pull = torch.func.vjp(self.residual, X, Ud)
                R = r.shape[1]
                rows = torch.eye(R, dtype=r.dtype, device=r.device).reshape(R, 1, R).expand(R, B, R)
                gX, gU = torch.func.vmap(pull)(rows)  # (R, B, T+1, nx), (R, B, T, nu)
                J = torch.bmm(gX.flatten(2).transpose(0, 1), dX.flatten(1, 2)) + gU.flatten(2).transpose(0, 1)
                return r, J
            tU = basis_tangents(Ud)  # (n, B, T, nu)

            def col(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return torch.func.jvp(self.residual, (X, Ud), (a, b))

            r, Jc = torch.func.vmap(col, in_dims=(3, 0), out_dims=(None, 2))(dX, tU)
        return r, Jc

    def cost(self, x0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """(B,) shooting cost of U from x0."""
        if self.residual is not None:
            r = self.residual_of(x0, U)
            return 0.5 * (r * r).sum(-1)
        x, total = x0, torch.zeros(x0.shape[0], dtype=U.dtype, device=U.device)
        for t in range(U.shape[1]):
            total = total + self.stage_cost(x, U[:, t])
            x = self.dynamics(x, U[:, t])
        if self.terminal_cost is not None:
            total = total + self.terminal_cost(x)
        return total

    def _structured_jacobian(self, x0: torch.Tensor, U: torch.Tensor):
        """``U -> residual_jacobian(x0, U)`` for the solver, or None (the solver's generic Jacobian): when
        ``structured`` is off, or ``dynamics`` / ``residual`` cannot run under ``torch.func`` (probed on the first
        call, then remembered; one warning)."""
        if not self.structured:
            return None
        probe = None
        if self._jac_ok is None:
            try:
                probe = (U.detach().clone(), self.residual_jacobian(x0, U))
                self._jac_ok = True
            except _FUNCTORCH_ERRORS as exc:
                warnings.warn(f"MPC: structured Jacobian unavailable ({type(exc).__name__}: {exc}); using the "
                              "solver's generic one", stacklevel=3)
                self._jac_ok = False
        if not self._jac_ok:
            return None

        def jac(U_: torch.Tensor):
            nonlocal probe
            if probe is not None:  # the probe's Jacobian serves the solver's first iteration at the same plan
                (U0, out), probe = probe, None
                if U_.shape == U0.shape and torch.equal(U_.detach(), U0):
                    return out
            return self.residual_jacobian(x0, U_)

        return jac

    @staticmethod
    def shift(U: torch.Tensor) -> torch.Tensor:
        """Warm start for the next step: drop the executed action, repeat the last one."""
        return torch.cat([U[:, 1:], U[:, -1:]], 1)

    def reset(self) -> None:
        """Forget the previous solution (next warm start is zeros)."""
        self._last = None

    def __call__(self, x0: torch.Tensor, U_init: torch.Tensor | None = None, *,
                 backward: str | None = None) -> MPCResult:
        """Solve from states x0 (B, nx); ``U_init`` (B, T, nu) overrides the warm start / zeros."""
        if x0.ndim != 2:
            raise ValueError(f"MPC: x0 must have shape (B, nx), got {tuple(x0.shape)}")
        B = x0.shape[0]
        if U_init is None:
            last = self._last
            if self.warm_start and last is not None and last.shape[0] == B:
                U_init = self.shift(last)
            else:
                U_init = torch.zeros(B, self.horizon, self.n_ctrl, dtype=x0.dtype, device=x0.device)
        opt = self.optimizer
        if opt.method in RESIDUAL_METHODS:
            jac = self._structured_jacobian(x0, U_init)
            U, info = opt.solve(None, U_init, residual_fn=lambda U_: self.residual_of(x0, U_), backward=backward,
                                residual_jac_fn=jac)
        else:
            U, info = opt.solve(lambda U_: self.cost(x0, U_), U_init, backward=backward)
        self._last = U.detach()
        return MPCResult(U, self.rollout(x0, U), info)
