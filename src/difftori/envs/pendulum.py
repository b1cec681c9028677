"""Pendulum swing-up of Amos et al. 2018 (mpc.pytorch's ``PendulumDx``), pure torch, in shooting form.

Used by the optimizer tests and the Table 8 imitation benchmark (``benchmarks/pendulum_il.py``).
dt 0.05, horizon 20, state (cos th, sin th, thdot), torque bound 2, cost
sum_t 1/2 tau_t^T diag(q) tau_t + p^T tau_t, tau_t = (x_t, u_t), q = (1, 1, 0.1, 0.001), p = (-1, 0, 0, 0).
Parameters: simple (g, m, l); damped (g, m, l, d, b) adds -d*th to the angular acceleration and a gravity
bias b (sin(th + b)), exactly as ``PendulumDx(simple=False)``. The true damped system is (10, 1, 1, 1.0, 0.1).
"""

from __future__ import annotations

import math

import torch

__all__ = ["DT", "DT_SIM", "T", "U_MAX", "TRUE_PARAMS", "params", "cost_weights", "dynamics", "stage_cost",
           "shooting_cost", "initial_states"]

DT = torch.float64
DT_SIM, T, U_MAX = 0.05, 20, 2.0
TRUE_PARAMS = {"simple": (10.0, 1.0, 1.0), "damped": (10.0, 1.0, 1.0, 1.0, 0.1)}
"""True parameters per setting: (g, m, l) and (g, m, l, d, b)."""


def params(g: float = 10.0, m: float = 1.0, l: float = 1.0, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor([g, m, l], dtype=DT, requires_grad=requires_grad)


def cost_weights(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=DT, requires_grad=requires_grad)
    p = torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=DT, requires_grad=requires_grad)
    return q, p


def dynamics(x: torch.Tensor, u: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """One step of PendulumDx: x (B, 3), u (B, 1), theta (g, m, l) or (g, m, l, d, b) (shape (3,)/(5,) or (B, 3/5))."""
    th_ = theta.unbind(-1)
    g, m, l = th_[:3]
    c, s, w = x.unbind(-1)
    u = u[..., 0].clamp(-U_MAX, U_MAX)
    if len(th_) == 3:
        nw = w + DT_SIM * (3.0 * g / (2.0 * l) * s + 3.0 * u / (m * l * l))
        nth = torch.atan2(s, c) + nw * DT_SIM
    else:
        d, b = th_[3:]
        th = torch.atan2(s, c)
        nw = w + DT_SIM * (3.0 * g / (2.0 * l) * torch.sin(th + b) + 3.0 * u / (m * l * l) - d * th)
        nth = th + nw * DT_SIM
    return torch.stack((torch.cos(nth), torch.sin(nth), nw), -1)


def stage_cost(x: torch.Tensor, u: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    tau = torch.cat([x, u], -1)
    return (0.5 * q * tau * tau + p * tau).sum(-1)


def shooting_cost(x0: torch.Tensor, theta: torch.Tensor, q: torch.Tensor, p: torch.Tensor):
    """cost_fn(U) -> (B,) for TrajOptimizer: roll the dynamics out from x0 (mpc.pytorch's convention: x_T unpriced)."""
    def cost(U: torch.Tensor) -> torch.Tensor:
        x, total = x0, 0.0
        for t in range(U.shape[1]):
            total = total + stage_cost(x, U[:, t], q, p)
            x = dynamics(x, U[:, t], theta)
        return total
    return cost


def initial_states(n: int = 32, seed: int = 0) -> torch.Tensor:
    """th ~ U(-pi/2, pi/2), thdot ~ U(-1, 1) (the paper's distribution), as (cos th, sin th, thdot)."""
    gen = torch.Generator().manual_seed(seed)
    th = (torch.rand(n, generator=gen, dtype=DT) - 0.5) * math.pi
    w = torch.rand(n, generator=gen, dtype=DT) * 2 - 1
    return torch.stack((torch.cos(th), torch.sin(th), w), -1)
