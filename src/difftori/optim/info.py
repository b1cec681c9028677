"""Per-sample solver diagnostics: :class:`Status` codes and the :class:`SolverInfo` record."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

__all__ = ["Status", "SolverInfo"]


class Status(IntEnum):
    """Outcome of one sample's solve (stored as ints in ``SolverInfo.status``).

    Precedence when several apply: NON_FINITE > FALLBACK > OK / STALLED / PLATEAU / MAX_ITERS.
    """

    OK = 0
    """Converged: (projected) gradient norm <= tol (or accepted step <= step_tol)."""
    MAX_ITERS = 1
    """Ran out of iterations before meeting the tolerance."""
    FALLBACK = 2
    """A safeguard fired at least once: a non-PD system (scaled-gradient step used instead) or a
    non-finite trial point (step rejected, step size halved / damping raised)."""
    NON_FINITE = 3
    """Cost or gradient non-finite at the start point: the sample was not optimised (U0, clamped)."""
    STALLED = 4
    """Damping reached ``damping_max`` without an acceptable step (no decrease possible at this
    precision; typical for float32 near a minimum)."""
    PLATEAU = 5
    """Stopped by the plateau rule (``plateau_window``): the best cost improved by less than
    ``plateau_rtol`` (relative) over the last window of iterations; the gradient test was not met."""


@dataclass
class SolverInfo:
    """Per-sample diagnostics of one ``TrajOptimizer.solve`` call; every tensor is detached, shape (B, ...)."""

    cost: torch.Tensor
    """(B,) cost at the returned ``U_star`` (NaN/inf only for NON_FINITE samples)."""
    best_cost: torch.Tensor
    """(B,) lowest cost seen at any evaluated iterate."""
    best_U: torch.Tensor
    """(B, H, A) iterate with the lowest cost (inside the bounds); what the original DiffTORI executes."""
    iterations: torch.Tensor
    """(B,) int64: iterations in which the sample was still being updated."""
    converged: torch.Tensor
    """(B,) bool: the tolerance was met."""
    status: torch.Tensor
    """(B,) int64 :class:`Status` codes."""
    grad_norm: torch.Tensor
    """(B,) (projected) gradient norm at the last point where the gradient was evaluated."""
    damping: torch.Tensor
    """(B,) final damping (adaptive for newton/lm; the fixed value otherwise)."""

    def summary(self) -> dict[str, int]:
        """Counts per status name plus ``converged`` (one host sync; for logging)."""
        counts = torch.bincount(self.status.reshape(-1).cpu(), minlength=len(Status)).tolist()
        out = {s.name.lower(): int(counts[s.value]) for s in Status}
        out["converged"] = int(self.converged.sum().item())
        return out
