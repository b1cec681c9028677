"""Shared test problems for difftori.optim: smooth convex MLP costs, quadratics, FD checks."""

from __future__ import annotations

import torch
from torch import nn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class MLPCost(nn.Module):
    """Per-sample smooth cost: small tanh MLP of (z_i, U_i) + strong quadratic (strongly convex in U)."""

    def __init__(self, B: int, H: int = 2, A: int = 2, hidden: int = 8, alpha: float = 3.0,
                 dtype=torch.float64, device="cpu"):
        super().__init__()
        n = H * A
        self.z = nn.Parameter(torch.randn(B, 3, dtype=dtype, device=device))
        self.lin = nn.Parameter(0.5 * torch.randn(B, n, dtype=dtype, device=device))
        self.net = nn.Sequential(nn.Linear(3 + n, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(dtype=dtype, device=device)
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(0.5)
        self.alpha = alpha

    def forward(self, U: torch.Tensor) -> torch.Tensor:
        x = U.flatten(1)
        return (self.net(torch.cat([self.z, x], -1)).squeeze(-1) + 0.5 * self.alpha * (x * x).sum(-1)
                + (self.lin * x).sum(-1))


def directional_check(solve, params, w, eps: float = 1e-6, seed: int = 1, fd_solve=None):
    """(autograd, central FD) directional derivative of ``<w, solve()>`` along a random direction.

    ``fd_solve`` (default ``solve``) is the function differenced numerically.
    """
    fd_solve = fd_solve or solve
    gen = torch.Generator().manual_seed(seed)
    U = solve()
    grads = torch.autograd.grad((w * U).sum(), params, allow_unused=True, materialize_grads=True)
    vs = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    analytic = sum((g * v).sum() for g, v in zip(grads, vs)).item()
    with torch.no_grad():
        for p, v in zip(params, vs):
            p.add_(eps * v)
    Lp = (w * fd_solve()).sum().item()
    with torch.no_grad():
        for p, v in zip(params, vs):
            p.sub_(2 * eps * v)
    Lm = (w * fd_solve()).sum().item()
    with torch.no_grad():
        for p, v in zip(params, vs):
            p.add_(eps * v)
    return analytic, (Lp - Lm) / (2 * eps)


def spd(n: int, cond: float = 10.0, dtype=torch.float64, gen=None) -> torch.Tensor:
    """Random symmetric positive-definite matrix with eigenvalues in [1, cond]."""
    Qo, _ = torch.linalg.qr(torch.randn(n, n, dtype=dtype, generator=gen))
    ev = torch.linspace(1.0, cond, n, dtype=dtype)
    return Qo @ torch.diag(ev) @ Qo.T
