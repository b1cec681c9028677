"""Shared benchmark pieces: TD-MPC-sized latent world model, DiffTORI RL/IL costs, the learned-dynamics
tracking problem, timing helpers.

Used by ``benchmarks/optim_peers.py``; the RL/IL benchmarks may import the model builders
and :func:`interleaved_timings` so every benchmark measures the same way.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from difftori.models.mlp import mlp, orthogonal_init

__all__ = [
    "RLSizes",
    "ILSizes",
    "TrackingSizes",
    "LatentWorldModel",
    "MLPDynamics",
    "ILCostNet",
    "Problem",
    "build_rl_problem",
    "build_il_problem",
    "build_tracking_problem",
    "rl_cost",
    "il_cost",
    "tracking_cost",
    "tracking_residual",
    "bare_cost_grad",
    "sync",
    "interleaved_timings",
    "median",
    "cosine",
    "grads_or_zero",
    "nan_to_none",
    "fmt_or_dash",
    "md_table",
    "run_meta",
    "parse_bench_config",
]


# --------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class RLSizes:
    """TD-MPC sizes (state-based TOLD, no encoder: z_0 is a precomputed encoding)."""

    latent: int = 50
    action: int = 6
    hidden: int = 512
    horizon: int = 5
    gamma: float = 0.99


@dataclass(frozen=True)
class ILSizes:
    """DiffTORI-IL cost-network sizes (MetaWorld: 64-D features, 64-D CVAE latent, 4x4 actions)."""

    features: int = 64
    latent: int = 64
    action: int = 4
    horizon: int = 4
    hidden: int = 256


@dataclass(frozen=True)
class TrackingSizes:
    """Learned-dynamics tracking problem (the mpc.pytorch comparison): TD-MPC-sized latent dynamics MLP."""

    state: int = 50
    action: int = 6
    hidden: int = 512
    horizon: int = 5
    action_gain: float = 3.0
    """Scale of the first layer's action columns. With a plain orthogonal init a unit action moves the
    next state far less than the state itself does; x3 makes the actions matter (a non-trivial problem)."""
    ref_amplitude: float = 2.0
    """The goal is the state reached after ``horizon`` steps of a reference U_ref ~ U(-a, a): with a > 1 it
    is not reachable inside the box |u| <= 1, so the optimum sits on the bound in some coordinates."""
    r_scale: float = 0.1
    """R = r_scale * logspace(-2, 0, action): cheap action dims saturate, expensive ones stay interior."""


# --------------------------------------------------------------------------- models
class LatentWorldModel(nn.Module):
    """TD-MPC's latent model parts used by the DiffTORI planning cost: d, R, pi, twin Q.

    Random weights (orthogonal init). Unlike TD-MPC the reward/Q heads are NOT zeroed, otherwise
    the cost would be constant and every optimizer would trivially stand still.
    """

    def __init__(self, sizes: RLSizes = RLSizes()):
        super().__init__()
        za, h = sizes.latent + sizes.action, sizes.hidden
        self.sizes = sizes
        self._dynamics = mlp(za, [h, h], sizes.latent)
        self._reward = mlp(za, [h, h], 1)
        self._pi = mlp(sizes.latent, [h, h], sizes.action)
        self._Q1, self._Q2 = self._q(za, h), self._q(za, h)
        self.apply(orthogonal_init)

    @staticmethod
    def _q(in_dim: int, h: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(in_dim, h), nn.LayerNorm(h), nn.Tanh(), nn.Linear(h, h), nn.ELU(), nn.Linear(h, 1))

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self._dynamics(torch.cat([z, a], dim=-1))

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self._reward(torch.cat([z, a], dim=-1))

    def pi(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self._pi(z))

    def Q(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([z, a], dim=-1)
        return self._Q1(x), self._Q2(x)

    def dyn_reward_parameters(self) -> list[nn.Parameter]:
        """The parameters the DiffTORI policy-gradient loss trains through the optimizer (here: d and R)."""
        return [*self._dynamics.parameters(), *self._reward.parameters()]


class ILCostNet(nn.Module):
    """DiffTORI-IL cost network C(features, z, U): (64 + 64 + H*A) -> 256 -> 256 -> 1, ELU."""

    def __init__(self, sizes: ILSizes = ILSizes()):
        super().__init__()
        self.sizes = sizes
        self.net = mlp(sizes.features + sizes.latent + sizes.horizon * sizes.action, [sizes.hidden, sizes.hidden], 1)

    def forward(self, feat: torch.Tensor, z: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([feat, z, U.flatten(1)], dim=-1))


class MLPDynamics(nn.Module):
    """Learned latent dynamics ``x_{t+1} = f(x_t, u_t)``: (state + action) -> hidden -> hidden -> state, ELU.

    An ``nn.Module`` with ``forward(x, u)`` (both (N, dim)), the interface mpc.pytorch expects of dynamics.
    """

    def __init__(self, sizes: TrackingSizes = TrackingSizes()):
        super().__init__()
        self.sizes = sizes
        self.net = mlp(sizes.state + sizes.action, [sizes.hidden, sizes.hidden], sizes.state)
        self.net.apply(orthogonal_init)
        with torch.no_grad():
            self.net[0].weight[:, sizes.state:] *= sizes.action_gain

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, u], dim=-1))


# --------------------------------------------------------------------------- costs
def rl_cost(model: LatentWorldModel, z0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``-(sum_t gamma^t R(z_t,u_t) + gamma^H min Q(z_H, pi(z_H)))`` per sample; U (B,H,A) clamped to [-1,1]."""
    gamma = model.sizes.gamma
    U = U.clamp(-1.0, 1.0)
    z, G, disc = z0, 0.0, 1.0
    for t in range(U.shape[1]):
        u = U[:, t]
        G = G + disc * model.reward(z, u)
        z = model.next(z, u)
        disc *= gamma
    G = G + disc * torch.min(*model.Q(z, model.pi(z)))
    return -G.squeeze(-1)


def il_cost(net: ILCostNet, feat: torch.Tensor, z: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """IL cost to minimise: ``-C(features, z, clamp(U))`` per sample (the original maximises C)."""
    return -net(feat, z, U.clamp(-1.0, 1.0)).squeeze(-1)


def tracking_residual(dyn: MLPDynamics, x0: torch.Tensor, goal: torch.Tensor, q: torch.Tensor, r: torch.Tensor,
                      U: torch.Tensor) -> torch.Tensor:
    """(B, H*(state+action)) residual whose half squared norm is :func:`tracking_cost` (for gauss_newton / lm)."""
    x, parts = x0, []
    sq, sr = (2.0 * q).sqrt(), (2.0 * r).sqrt()
    for t in range(U.shape[1]):
        x = dyn(x, U[:, t])
        parts += [(x - goal) * sq, U[:, t] * sr]
    return torch.cat(parts, dim=-1)


def tracking_cost(dyn: MLPDynamics, x0: torch.Tensor, goal: torch.Tensor, q: torch.Tensor, r: torch.Tensor,
                  U: torch.Tensor) -> torch.Tensor:
    """``sum_{t=1..H} ||x_t - goal||^2_diag(q) + sum_{t=0..H-1} ||u_t||^2_diag(r)`` per sample, rolled out from x0."""
    x, c = x0, 0.0
    for t in range(U.shape[1]):
        x = dyn(x, U[:, t])
        c = c + ((x - goal) ** 2 * q).sum(-1) + (U[:, t] ** 2 * r).sum(-1)
    return c


@dataclass
class Problem:
    """One benchmark problem: the cost closure, its inputs and the tensors gradients are taken for."""

    cost_fn: Callable[[torch.Tensor], torch.Tensor]
    U0: torch.Tensor  # (B, H, A)
    grad_targets: list[torch.Tensor]  # z_0 / features and the network parameters
    loss_weights: torch.Tensor  # fixed random linear functional of U*: loss = (w * U*).sum()
    extra: dict


def build_rl_problem(batch: int, sizes: RLSizes = RLSizes(), seed: int = 0, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> Problem:
    """RL planning cost on a random TD-MPC-sized model; z_0 ~ N(0,1); U0 = pi rolled out in the model."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LatentWorldModel(sizes).to(device=device, dtype=dtype)
    z0 = torch.randn(batch, sizes.latent, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    with torch.no_grad():  # DiffTORI initialises U from a rollout of pi in the latent model
        z, us = z0, []
        for _ in range(sizes.horizon):
            us.append(model.pi(z))
            z = model.next(z, us[-1])
        U0 = torch.stack(us, dim=1).contiguous()
    w = torch.randn(U0.shape, generator=g).to(device=device, dtype=dtype)
    return Problem(
        cost_fn=lambda U: rl_cost(model, z0, U),
        U0=U0,
        grad_targets=[z0, *model.dyn_reward_parameters()],
        loss_weights=w,
        extra={"model": model, "z0": z0, "sizes": sizes},
    )


def build_il_problem(batch: int, sizes: ILSizes = ILSizes(), seed: int = 0, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> Problem:
    """IL cost on a random cost network; features and CVAE latent ~ N(0,1); U0 = small random 'base policy'."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ILCostNet(sizes).to(device=device, dtype=dtype)
    feat = torch.randn(batch, sizes.features, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
    z = torch.randn(batch, sizes.latent, generator=g).to(device=device, dtype=dtype)
    U0 = (0.3 * torch.randn(batch, sizes.horizon, sizes.action, generator=g)).clamp(-1, 1).to(device=device, dtype=dtype)
    w = torch.randn(U0.shape, generator=g).to(device=device, dtype=dtype)
    return Problem(
        cost_fn=lambda U: il_cost(net, feat, z, U),
        U0=U0,
        grad_targets=[feat, *net.parameters()],
        loss_weights=w,
        extra={"net": net, "feat": feat, "z": z, "sizes": sizes},
    )


def build_tracking_problem(batch: int, sizes: TrackingSizes = TrackingSizes(), seed: int = 0,
                           device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Problem:
    """Quadratic tracking through a random learned dynamics MLP, box |u| <= 1; U0 = 0.

    x_0 ~ N(0,1); per-sample goal = the state after H steps of U_ref ~ U(-a, a) (see :class:`TrackingSizes`);
    q ~ U(0.5, 1.5) per state dim, r per action dim. Gradients are taken for the dynamics parameters, the
    goal and q (``grad_targets`` in that order); the same seed gives the same problem in any dtype.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dyn = MLPDynamics(sizes)
    x0 = torch.randn(batch, sizes.state, generator=g)
    U_ref = sizes.ref_amplitude * (2.0 * torch.rand(batch, sizes.horizon, sizes.action, generator=g) - 1.0)
    with torch.no_grad():
        x = x0
        for t in range(sizes.horizon):
            x = dyn(x, U_ref[:, t])
    q = torch.rand(sizes.state, generator=g) + 0.5
    r = sizes.r_scale * torch.logspace(-2, 0, sizes.action)
    w = torch.randn(batch, sizes.horizon, sizes.action, generator=g)
    dyn = dyn.to(device=device, dtype=dtype)
    x0, r, w = (t.to(device=device, dtype=dtype) for t in (x0, r, w))
    goal = x.to(device=device, dtype=dtype).requires_grad_(True)
    q = q.to(device=device, dtype=dtype).requires_grad_(True)
    return Problem(
        cost_fn=lambda U: tracking_cost(dyn, x0, goal, q, r, U),
        U0=torch.zeros(batch, sizes.horizon, sizes.action, device=device, dtype=dtype),
        grad_targets=[*dyn.parameters(), goal, q],
        loss_weights=w,
        extra={"dynamics": dyn, "x0": x0, "goal": goal, "q": q, "r": r, "sizes": sizes,
               "residual_fn": lambda U: tracking_residual(dyn, x0, goal, q, r, U)},
    )


# --------------------------------------------------------------------------- floor + timing
def bare_cost_grad(cost_fn: Callable[[torch.Tensor], torch.Tensor], U0: torch.Tensor, iters: int) -> torch.Tensor:
    """The physical floor of any first-order solver: ``iters`` x (cost + dcost/dU), nothing else."""
    U = U0.detach().clone().requires_grad_(True)
    g = None
    for _ in range(iters):
        (g,) = torch.autograd.grad(cost_fn(U).sum(), U)
    return g


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels so wall-clock timings are honest on CUDA (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_timings(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        device: torch.device | str = "cpu", skip_warmup: tuple[str, ...] = (),
                        max_repeats: dict[str, int] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each fn; repeats are interleaved (a,b,c,b,c,a,...) so load drifts hit all alike.

    ``skip_warmup`` names fns warmed up elsewhere (e.g. an expensive solver warmed with fewer iterations);
    ``max_repeats`` caps the repeats of slow fns (they run in the first rounds only).
    """
    caps = max_repeats or {}
    for name, fn in fns.items():
        if name in skip_warmup:
            continue
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if len(out[name]) >= caps.get(name, repeats):
                continue
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            out[name].append(time.perf_counter() - t0)
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def cosine(a: torch.Tensor | list[torch.Tensor], b: torch.Tensor | list[torch.Tensor]) -> float:
    """Cosine similarity of two (lists of) tensors, flattened and concatenated; nan if either is zero."""
    fa = torch.cat([t.reshape(-1) for t in a]) if isinstance(a, (list, tuple)) else a.reshape(-1)
    fb = torch.cat([t.reshape(-1) for t in b]) if isinstance(b, (list, tuple)) else b.reshape(-1)
    fa, fb = fa.double(), fb.double()
    den = fa.norm() * fb.norm()
    return float((fa @ fb) / den) if den > 0 else math.nan


def grads_or_zero(grads, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """``autograd.grad(..., allow_unused=True)`` results with None (unused target) replaced by zeros."""
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]


def nan_to_none(x):
    """A non-finite float becomes None (JSON null); anything else is returned unchanged."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


def fmt_or_dash(x, fmt: str = "{:.2f}") -> str:
    """Table cell: ``fmt.format(x)``, or "-" for a missing value."""
    return "-" if x is None else fmt.format(x)


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def run_meta(threads: int, device: torch.device, **extra) -> dict:
    """Versions, threads and date for a results file."""
    import numpy

    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": threads,
        "device": str(device),
    }
    meta.update(extra)
    return meta


def parse_bench_config(cls: type, quick: Any, description: str, argv: list[str] | None = None) -> Any:
    """A benchmark's dataclass config from the command line: one option per field; with ``--quick`` the options
    given apply over ``quick`` (the reduced config) instead of the defaults."""
    import argparse

    from difftori.utils.config import add_dataclass_args, dataclass_from_args

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, cls)
    ns = parser.parse_args(argv)
    return dataclass_from_args(cls, ns, base=quick if getattr(ns, "quick", False) else cls())


def write_results(out: str | Path, files: dict[str, Any], report: str) -> None:
    """Write each ``{file name: content}`` atomically into ``out`` (a str as text, anything else as JSON), then print
    ``report`` (the Markdown) and what was written."""
    from difftori.utils.io import atomic_write_json, atomic_write_text

    out = Path(out)
    for name, content in files.items():
        (atomic_write_text if isinstance(content, str) else atomic_write_json)(out / name, content)
    print(report)
    print("wrote " + " and ".join(str(out / name) for name in files))


def write_csv_rows(path: str | Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """``rows`` as a CSV with columns ``fields`` (other keys ignored), written atomically."""
    import csv
    import io

    from difftori.utils.io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(path), buf.getvalue())


def cell_runs(run_root: str | Path, cell: str) -> list[Path]:
    """Run directories with a checkpoint of sweep cell ``cell`` under ``run_root`` (oldest first; [] if none)."""
    root = Path(run_root) / "cells" / cell / "run"
    return sorted(p.parent.parent for p in root.rglob("checkpoints/last.pt")) if root.is_dir() else []


def finish_script_cell(run_root: str | Path, config: dict[str, Any], result: dict[str, Any], summary_keys: tuple[str, ...]) -> Path:
    """A sweep script cell's last step (the runner's contract): ``RUN_ROOT/final_eval/config.json`` and ``final.json``
    written atomically, a one-line JSON summary of ``summary_keys``, then ``run directory: PATH``; returns PATH."""
    import json

    from difftori.utils.io import atomic_write_json

    out = Path(run_root) / "final_eval"
    atomic_write_json(out / "config.json", config)
    atomic_write_json(out / "final.json", result)
    print(json.dumps({k: result.get(k) for k in summary_keys}))
    print(f"run directory: {out}", flush=True)
    return out
