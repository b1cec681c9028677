"""Batched differentiable trajectory optimization (pure PyTorch; no other difftori imports).

``U_star, info = TrajOptimizer(method="newton", backward="implicit").solve(cost_fn, U0)`` with
``U0`` (B, H, A) and ``cost_fn(U) -> (B,)``. See :mod:`difftori.optim.solver` for methods,
backward modes, bounds handling and safeguards.
"""

from .info import SolverInfo, Status
from .solver import BACKWARDS, METHODS, TrajOptimizer

__all__ = ["TrajOptimizer", "SolverInfo", "Status", "METHODS", "BACKWARDS"]
