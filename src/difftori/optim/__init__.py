"""Batched differentiable trajectory optimization (pure PyTorch; no other difftori imports).

``U_star, info = TrajOptimizer(method="newton", backward="implicit").solve(cost_fn, U0)`` with
``U0`` (B, H, A) and ``cost_fn(U) -> (B,)``. See :mod:`difftori.optim.solver` for methods,
backward modes, bounds handling and safeguards. :class:`MPC` builds the shooting cost from dynamics and
stage / terminal costs.
"""

from .info import SolverInfo, Status
from .mpc import MPC, MPCResult
from .solver import BACKWARDS, DEFAULT_STEP_SIZE, FIRST_ORDER_METHODS, METHODS, RESIDUAL_METHODS, TrajOptimizer

__all__ = ["TrajOptimizer", "SolverInfo", "Status", "METHODS", "FIRST_ORDER_METHODS", "RESIDUAL_METHODS", "BACKWARDS", "DEFAULT_STEP_SIZE", "MPC", "MPCResult"]
