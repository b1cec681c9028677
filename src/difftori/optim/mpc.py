"""Shooting-form MPC on top of :class:`TrajOptimizer`: ``U, X, info = MPC(dynamics, stage_cost, ...)(x0)``.

The decision variable is the action sequence U (B, T, nu); the cost rolls the dynamics out from x0:
``sum_t stage_cost(x_t, u_t) + terminal_cost(x_T)``, ``x_{t+1} = dynamics(x_t, u_t)``. The solution and the
rolled-out states are differentiable (with the optimizer's backward mode) w.r.t. x0 and every tensor /
parameter that ``dynamics`` and the costs use.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .info import SolverInfo
from .solver import TrajOptimizer

__all__ = ["MPC", "MPCResult"]


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
    ``terminal_cost(x_T) -> (B,)``. ``optimizer`` defaults to ``TrajOptimizer(method="newton")`` (unbounded:
    pass ``bounds`` for an action box). ``warm_start=True`` starts each call, when no ``U_init`` is given,
    from the previous solution shifted by one step (last action repeated), as in receding-horizon control.
    """

    def __init__(self, dynamics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 stage_cost: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], horizon: int, n_ctrl: int,
                 terminal_cost: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 optimizer: TrajOptimizer | None = None, warm_start: bool = False):
        if horizon < 1 or n_ctrl < 1:
            raise ValueError(f"MPC: need horizon >= 1 and n_ctrl >= 1, got {horizon}, {n_ctrl}")
        self.dynamics, self.stage_cost, self.terminal_cost = dynamics, stage_cost, terminal_cost
        self.horizon, self.n_ctrl = horizon, n_ctrl
        self.optimizer = optimizer if optimizer is not None else TrajOptimizer(method="newton")
        self.warm_start = warm_start
        self._last: torch.Tensor | None = None

    def rollout(self, x0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """(B, T+1, nx) states from x0 under U."""
        xs = [x0]
        for t in range(U.shape[1]):
            xs.append(self.dynamics(xs[-1], U[:, t]))
        return torch.stack(xs, 1)

    def cost(self, x0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """(B,) shooting cost of U from x0."""
        x, total = x0, torch.zeros(x0.shape[0], dtype=U.dtype, device=U.device)
        for t in range(U.shape[1]):
            total = total + self.stage_cost(x, U[:, t])
            x = self.dynamics(x, U[:, t])
        if self.terminal_cost is not None:
            total = total + self.terminal_cost(x)
        return total

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
        U, info = self.optimizer.solve(lambda U_: self.cost(x0, U_), U_init, backward=backward)
        self._last = U.detach()
        return MPCResult(U, self.rollout(x0, U), info)
