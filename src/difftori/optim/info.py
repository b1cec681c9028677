"""Per-sample solver diagnostics: :class:`Status` codes and the :class:`SolverInfo` record."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

__all__ = ["Status", "SolverInfo"]


class Status(IntEnum):
    """How one sample's solve ended (stored as ints in ``SolverInfo.status``).

    Events on the way (fallback steps, negative curvature) are not statuses: they are per-sample counters
    in :class:`SolverInfo`. Precedence: NON_FINITE > OK > STALLED > PLATEAU > MAX_ITERS.
    """

    OK = 0
    """Converged: the convergence test ((projected) gradient norm <= tol, or an accepted step <= step_tol)
    passed at the returned point."""
    MAX_ITERS = 1
    """Budget exhausted: the iterations ran out before the test passed."""
    FALLBACK = 2
    """Retired (no longer produced; kept so the other codes keep their values): see
    ``SolverInfo.fallback_steps`` and ``SolverInfo.neg_curvature``."""
    NON_FINITE = 3
    """The start point (or the cost / gradient there) is non-finite: the sample was not optimised."""
    STALLED = 4
    """No further progress possible: the damping reached ``damping_max`` without an acceptable step (typical
    for float32 near a minimum), or (clamp_in_cost) the iterate sits outside the box where the gradient is
    zero, at a point that is not stationary for the clamped problem."""
    PLATEAU = 5
    """Stopped by the plateau rule (``plateau_window``): the best cost improved by less than
    ``plateau_rtol`` (relative) over the last window of iterations; the gradient test was not met."""


@dataclass
class SolverInfo:
    """Per-sample diagnostics of one ``TrajOptimizer.solve`` call; every tensor is detached, shape (B, ...)."""

    cost: torch.Tensor
    """(B,) cost at the returned ``U_star`` (NaN/inf only for NON_FINITE samples)."""
    best_cost: torch.Tensor
    """(B,) lowest cost seen at any evaluated iterate; equals the cost at ``best_U``."""
    best_U: torch.Tensor
    """(B, H, A) iterate with the lowest cost (inside the bounds); what the original DiffTORI executes."""
    iterations: torch.Tensor
    """(B,) int64: iterations in which the sample was still being updated."""
    converged: torch.Tensor
    """(B,) bool: the convergence test passed at the returned point (status OK)."""
    status: torch.Tensor
    """(B,) int64 :class:`Status` codes: how the solve ended."""
    grad_norm: torch.Tensor
    """(B,) (projected) gradient norm at the last point where the gradient was evaluated."""
    damping: torch.Tensor
    """(B,) final damping (adaptive for newton/lm; the fixed value otherwise)."""
    fallback_steps: torch.Tensor | None = None
    """(B,) int64: iterations in which a safeguard fired: a system that failed to factorise (scaled-gradient
    step) or a rejected non-finite trial point."""
    neg_curvature: torch.Tensor | None = None
    """(B,) int64 (newton): iterations whose (reduced) Hessian had a non-positive eigenvalue (damping shifted)."""
    backward_damping: torch.Tensor | None = None
    """(B,) damping added to the Hessian by the implicit backward (0 = exact IFT gradient; > 0 where the
    reduced Hessian was indefinite or near-singular, or ``implicit_damping`` was set); 0 for other modes."""

    def summary(self) -> dict[str, int]:
        """Counts per status name, ``converged``, and samples with fallback steps / negative curvature (one host sync)."""
        counts = torch.bincount(self.status.reshape(-1).cpu(), minlength=len(Status)).tolist()
        out = {s.name.lower(): int(counts[s.value]) for s in Status if s is not Status.FALLBACK}
        out["converged"] = int(self.converged.sum().item())
        if self.fallback_steps is not None:
            out["with_fallback_steps"] = int((self.fallback_steps > 0).sum().item())
        if self.neg_curvature is not None:
            out["with_neg_curvature"] = int((self.neg_curvature > 0).sum().item())
        return out
