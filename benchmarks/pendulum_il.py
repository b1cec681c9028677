"""Table 8 of the DiffTORI paper (Appendix A.3): pendulum imitation of Amos et al. 2018, with and without damping.

The expert is MPC with the true model (difftori.optim newton, box [-2, 2], restarts from zeros and +-bound
constant sequences, lowest cost kept: the swing-up is non-convex). Learners imitate the expert's 20-step
action sequence from the initial state and are scored by the TRUE-dynamics cost of their open-loop sequence:
  lstm                 LSTM policy x0 -> 20 actions, trained by MSE;
  amos_difftori        the pendulum model class with learnable (g, m, l) [+ (d, b) damped], imitation through
                       differentiable MPC (difftori.optim, implicit gradient) -- Amos et al.'s method;
  difftori_paper       DiffTORI paper mode: encoder z0 = e(x0), latent dynamics z' = d(z, a) and latent cost
                       f(z, a) (small MLPs) rolled into sum_t f(z_t, a_t) over the 20 steps, U0 = 0, newton with
                       implicit gradient, trained by action MSE (no CVAE: the expert is deterministic).
Data: 100 / 10 / 10 train / val / test initial states, drawn per seed (or once with --data-seed); learners are
trained on train, the best validation-MSE checkpoint is kept, and test numbers are reported per seed. Ten test
states make a noisy mean (the expert's cost per state is bimodal: about -10 near the top, 20-30 from the side),
so compare rows within a seed draw.
Writes ``results.csv`` (method, setting, seed, test_cost, imitation_mse, train_s, init_test_cost,
init_imitation_mse, restarts_used), ``table.md`` (Table 8 layout) and ``results.json`` under ``--out``.
Usage: python benchmarks/pendulum_il.py [--quick] [--seeds 0 1 2] [--out DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from difftori.envs import pendulum as P  # noqa: E402
from difftori.optim import TrajOptimizer  # noqa: E402
from difftori.utils.io import atomic_write_text  # noqa: E402

SETTINGS = ("simple", "damped")
METHODS = ("expert", "lstm", "amos_difftori", "difftori_paper")
OPTIONAL_METHODS = ("amos_mpcpytorch",)
"""Rows run only when asked for with --methods (they need mpc.pytorch: pip install --no-deps mpc==0.0.6)."""
ALL_METHODS = ("expert", "lstm", "amos_difftori", "amos_mpcpytorch", "difftori_paper")
LABELS = {"expert": "Expert", "lstm": "LSTM", "amos_difftori": "Amos et al. (difftori)",
          "amos_mpcpytorch": "Amos et al. (mpc.pytorch)",
          "difftori_paper": "DiffTORI paper"}
COLUMNS = ("method", "setting", "seed", "test_cost", "imitation_mse", "train_s", "init_test_cost",
           "init_imitation_mse", "restarts_used")
DEFAULT_OUT = REPO / "benchmarks" / "results" / "pendulum_il"
RESTART_STARTS = (0.0, P.U_MAX, -P.U_MAX)


@dataclass
class Budget:
    """Training budgets (iterations are optimizer steps on minibatches)."""
    n_train: int = 100
    n_val: int = 10
    n_test: int = 10
    expert_iters: int = 100
    lstm_iters: int = 2000
    lstm_lr: float = 3e-3
    lstm_hidden: int = 64
    amos_iters: int = 40
    amos_lr: float = 0.05
    amos_batch: int = 32
    amos_solver_iters: int = 50
    paper_iters: int = 150
    paper_lr: float = 3e-3
    paper_batch: int = 32
    paper_solver_iters: int = 20
    paper_latent: int = 8
    paper_hidden: int = 32
    eval_every: int = 10


QUICK = Budget(n_train=20, lstm_iters=60, amos_iters=3, amos_batch=10, amos_solver_iters=30, paper_iters=30,
               paper_lr=1e-2, paper_batch=10, paper_solver_iters=10, eval_every=3)


# ------------------------------------------------------------------ problem
def true_theta(setting: str) -> torch.Tensor:
    return torch.tensor(P.TRUE_PARAMS[setting], dtype=P.DT)


def rollout_cost(x0: torch.Tensor, U: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(B,) summed quadratic cost of U (clamped to the box by the dynamics) rolled out from x0 under theta."""
    return P.shooting_cost(x0, theta, *P.cost_weights())(U)


def solve_restarts(cost: Callable[[torch.Tensor], torch.Tensor], B: int, opt: TrajOptimizer,
                   starts: tuple[float, ...] = RESTART_STARTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve from each constant start, keep the per-sample lowest cost; returns (U, cost, index of winning start).

    The selection is a gather, so the implicit gradient of the winning solve flows through it."""
    Us, cs = [], []
    for c in starts:
        U, info = opt.solve(cost, torch.full((B, P.T, 1), c, dtype=P.DT))
        Us.append(U)
        cs.append(info.cost.detach())
    C = torch.stack(cs, 1)
    # a later start wins only if it is strictly better (1e-9 relative), so "restarts needed" is meaningful
    best = torch.zeros(B, dtype=torch.long)
    for k in range(1, len(starts)):
        better = C[:, k] < C.gather(1, best[:, None])[:, 0] - 1e-9 * C[:, 0].abs().clamp_min(1.0)
        best = torch.where(better, torch.full_like(best, k), best)
    U = torch.stack(Us, 1)[torch.arange(B), best]
    return U, C.gather(1, best[:, None])[:, 0], best


def newton(iters: int, backward: str) -> TrajOptimizer:
    return TrajOptimizer(method="newton", max_iters=iters, backward=backward, bounds=(-P.U_MAX, P.U_MAX), tol=1e-8)


def make_data(setting: str, data_seed: int, bud: Budget) -> dict:
    """Train / val / test initial states and the expert's action sequences (true model, restarts)."""
    n = bud.n_train + bud.n_val + bud.n_test
    x0 = P.initial_states(n, data_seed)
    th = true_theta(setting)
    U, c, idx = solve_restarts(P.shooting_cost(x0, th, *P.cost_weights()), n, newton(bud.expert_iters, "none"))
    cuts = (0, bud.n_train, bud.n_train + bud.n_val, n)
    parts = {}
    for name, a, b in zip(("train", "val", "test"), cuts[:-1], cuts[1:]):
        parts[name] = (x0[a:b], U[a:b].detach())
    parts["expert_test_cost"] = float(c[cuts[2]:].mean())
    parts["restarts_used"] = int((idx > 0).sum())
    return parts


# ------------------------------------------------------------------ learners
class Learner:
    """A policy x0 (B, 3) -> U (B, 20, 1) with trainable parameters; ``train_forward`` may differ from ``act``."""

    def parameters(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def act(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.act(x0)

    def state(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.parameters()]

    def load(self, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, s in zip(self.parameters(), state):
                p.copy_(s)


class LSTMPolicy(Learner, nn.Module):
    """LSTM fed x0 at every step; tanh-squashed to the torque box."""

    def __init__(self, hidden: int):
        nn.Module.__init__(self)
        self.lstm = nn.LSTM(3, hidden, batch_first=True).double()
        self.head = nn.Linear(hidden, 1).double()

    def parameters(self):  # type: ignore[override]
        return list(nn.Module.parameters(self))

    def act(self, x0):
        h, _ = self.lstm(x0[:, None, :].expand(-1, P.T, -1))
        return P.U_MAX * torch.tanh(self.head(h))


class AmosModel(Learner):
    """The true model class with learnable physical parameters; acts by MPC (restarts) with those parameters.

    g, m, l are positive (log-parametrised); damped adds free d and b initialised at 0. Training solves from
    zeros only (one solve per step, implicit gradient); acting uses the expert's restarts."""

    def __init__(self, setting: str, gen: torch.Generator, bud: Budget):
        true = torch.tensor(P.TRUE_PARAMS[setting][:3], dtype=P.DT)
        noise = (torch.rand(3, generator=gen, dtype=P.DT) - 0.5) * 1.2  # factors exp(+-0.6)
        self.log_gml = (true.log() + noise).requires_grad_()
        self.db = torch.zeros(2, dtype=P.DT, requires_grad=True) if setting == "damped" else None
        self.bud = bud

    def parameters(self):
        return [self.log_gml] + ([self.db] if self.db is not None else [])

    def theta(self) -> torch.Tensor:
        parts = [self.log_gml.exp()] + ([self.db] if self.db is not None else [])
        return torch.cat(parts)

    def identifiable(self) -> dict[str, float]:
        g, m, l = self.log_gml.detach().exp().tolist()
        out = {"3g/(2l)": 3 * g / (2 * l), "3/(ml^2)": 3 / (m * l * l)}
        if self.db is not None:
            out.update(d=float(self.db[0].detach()), b=float(self.db[1].detach()))
        return out

    def _cost(self, x0):
        return P.shooting_cost(x0, self.theta(), *P.cost_weights())

    def act(self, x0):
        with torch.no_grad():
            return solve_restarts(self._cost(x0), x0.shape[0], newton(self.bud.expert_iters, "none"))[0]

    def train_forward(self, x0):
        U, _ = newton(self.bud.amos_solver_iters, "implicit").solve(
            self._cost(x0), torch.zeros(x0.shape[0], P.T, 1, dtype=P.DT))
        return U


class AmosMPCPytorch(AmosModel):
    """Amos et al. with their own library: the same learnable model, solved and differentiated by mpc.pytorch.

    mpc.pytorch's box-DDP from zeros (``lqr_iter`` = the solver budget) with its analytic LQR backward; needs
    ``pip install --no-deps mpc==0.0.6``. Acting uses the same solver from zeros (no restarts)."""

    def _mpc(self, x0: torch.Tensor, iters: int) -> torch.Tensor:
        from mpc import mpc
        from mpc.env_dx.pendulum import PendulumDx
        from mpc.mpc import GradMethods, QuadCost

        B = x0.shape[0]
        dx = PendulumDx(self.theta(), simple=self.db is None)
        q, p = P.cost_weights()
        Q = torch.diag(q).expand(P.T, B, 4, 4).contiguous()
        pp = p.expand(P.T, B, 4).contiguous()
        with torch.enable_grad():  # AUTO_DIFF needs grad mode
            _, u, _ = mpc.MPC(3, 1, P.T, u_init=torch.zeros(P.T, B, 1, dtype=P.DT), u_lower=-P.U_MAX,
                              u_upper=P.U_MAX, lqr_iter=iters, verbose=-1, exit_unconverged=False,
                              detach_unconverged=False, grad_method=GradMethods.AUTO_DIFF, eps=1e-8,
                              linesearch_decay=0.2, max_linesearch_iter=10)(x0, QuadCost(Q, pp), dx)
        return u.transpose(0, 1)

    def act(self, x0):
        return self._mpc(x0, self.bud.expert_iters).detach()

    def train_forward(self, x0):
        return self._mpc(x0, self.bud.amos_solver_iters)


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, o)).double()


class DiffToriPaper(Learner, nn.Module):
    """Latent encoder + dynamics + cost; acts by minimising sum_t f(z_t, a_t) + 1e-3/2 a_t^2 from U0 = 0.

    The small fixed action penalty keeps the Newton problem bounded where f is flat in a (the box does the rest)."""

    ACTION_REG = 1e-3

    def __init__(self, bud: Budget):
        nn.Module.__init__(self)
        z, h = bud.paper_latent, bud.paper_hidden
        self.enc, self.dyn, self.cost = _mlp(3, h, z), _mlp(z + 1, h, z), _mlp(z + 1, h, 1)
        self.bud = bud

    def parameters(self):  # type: ignore[override]
        return list(nn.Module.parameters(self))

    def _objective(self, x0):
        z0 = self.enc(x0)

        def cost(U):
            z, total = z0, 0.0
            for t in range(U.shape[1]):
                za = torch.cat([z, U[:, t]], -1)
                total = total + self.cost(za)[:, 0] + 0.5 * self.ACTION_REG * U[:, t, 0] ** 2
                z = z + self.dyn(za)
            return total
        return cost

    def _solve(self, x0, backward):
        U, _ = newton(self.bud.paper_solver_iters, backward).solve(
            self._objective(x0), torch.zeros(x0.shape[0], P.T, 1, dtype=P.DT))
        return U

    def act(self, x0):
        return self._solve(x0, "none").detach()

    def train_forward(self, x0):
        return self._solve(x0, "implicit")


# ------------------------------------------------------------------ training / evaluation
def evaluate(learner: Learner, x0: torch.Tensor, U_exp: torch.Tensor, theta: torch.Tensor) -> tuple[float, float]:
    """(mean true-dynamics cost of the learner's open-loop sequence, imitation MSE)."""
    with torch.no_grad():
        U = learner.act(x0).detach()
    return float(rollout_cost(x0, U, theta).mean()), float((U - U_exp).square().mean())


def fit(learner: Learner, data: dict, iters: int, lr: float, batch: int, eval_every: int,
        gen: torch.Generator) -> float:
    """Adam on the action MSE over minibatches; keeps the best validation-MSE parameters; returns wall seconds."""
    xt, Ut = data["train"]
    xv, Uv = data["val"]
    opt = torch.optim.Adam(learner.parameters(), lr=lr)
    def val_mse() -> float:
        with torch.no_grad():
            return float((learner.act(xv) - Uv).square().mean())

    best = (val_mse(), learner.state())
    t0 = time.perf_counter()
    for it in range(1, iters + 1):
        idx = torch.randperm(xt.shape[0], generator=gen)[:batch]
        loss = (learner.train_forward(xt[idx]) - Ut[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % eval_every == 0 or it == iters:
            v = val_mse()
            if v < best[0]:
                best = (v, learner.state())
    learner.load(best[1])
    return time.perf_counter() - t0


def make_learner(method: str, setting: str, seed: int, bud: Budget) -> tuple[Learner, dict]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if method == "lstm":
        return LSTMPolicy(bud.lstm_hidden), dict(iters=bud.lstm_iters, lr=bud.lstm_lr, batch=32)
    if method == "amos_difftori":
        return AmosModel(setting, gen, bud), dict(iters=bud.amos_iters, lr=bud.amos_lr, batch=bud.amos_batch)
    if method == "amos_mpcpytorch":
        return AmosMPCPytorch(setting, gen, bud), dict(iters=bud.amos_iters, lr=bud.amos_lr, batch=bud.amos_batch)
    if method == "difftori_paper":
        return DiffToriPaper(bud), dict(iters=bud.paper_iters, lr=bud.paper_lr, batch=bud.paper_batch)
    raise ValueError(f"unknown method {method!r}")


def run(out: Path, bud: Budget, seeds: list[int], settings: list[str], methods: list[str], data_seed: int | None,
        log: Callable[[str], None] = print) -> list[dict]:
    """Run the grid, write results.csv / results.json / table.md under ``out``; return the rows.

    Each seed draws its own dataset (``data_seed`` None) or all seeds share the draw ``data_seed``; the expert row
    is reported once per distinct draw, so its mean +- std covers the same test states as the learners'."""
    rows, extras, cache = [], {}, {}
    for setting in settings:
        theta = true_theta(setting)
        for seed in seeds:
            ds = seed if data_seed is None else data_seed
            if ds not in cache:
                t0 = time.perf_counter()
                cache[ds] = data = make_data(setting, ds, bud)
                n = bud.n_train + bud.n_val + bud.n_test
                rows.append(dict(method="expert", setting=setting, seed=ds, test_cost=data["expert_test_cost"],
                                 imitation_mse=0.0, train_s=time.perf_counter() - t0, init_test_cost=math.nan,
                                 init_imitation_mse=math.nan, restarts_used=data["restarts_used"]))
                log(f"[{setting}] data seed {ds}: expert test cost {data['expert_test_cost']:.3f} "
                    f"(a restart beat the zero start on {data['restarts_used']} of {n} states)")
            data = cache[ds]
            xs, Us = data["test"]
            for method in methods:
                if method == "expert":
                    continue
                learner, kw = make_learner(method, setting, seed, bud)
                c0, m0 = evaluate(learner, xs, Us, theta)
                ts = fit(learner, data, eval_every=bud.eval_every, gen=torch.Generator().manual_seed(seed + 1000), **kw)
                c1, m1 = evaluate(learner, xs, Us, theta)
                rows.append(dict(method=method, setting=setting, seed=seed, test_cost=c1, imitation_mse=m1, train_s=ts,
                                 init_test_cost=c0, init_imitation_mse=m0, restarts_used=""))
                if isinstance(learner, AmosModel):
                    extras[f"{method}/{setting}/{seed}"] = learner.identifiable()
                log(f"[{setting}] {method} seed {seed}: test cost {c0:.3f} -> {c1:.3f}, "
                    f"imitation MSE {m0:.4f} -> {m1:.4f}, {ts:.1f} s")
        cache.clear()
    write_outputs(out, rows, dict(budget=asdict(bud), seeds=seeds, data_seed=data_seed, learned_params=extras))
    return rows


def _fmt(vals: list[float]) -> str:
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} +- {sd:.3f}"


def table(rows: list[dict]) -> str:
    """Markdown table in Table 8's layout: methods x (without / with damping), test cost mean +- std."""
    lines = ["| Method | Without damping | With damping |", "|---|---|---|"]
    for m in ALL_METHODS:
        cells = [_fmt([r["test_cost"] for r in rows if r["method"] == m and r["setting"] == s]) for s in SETTINGS]
        if any(c != "-" for c in cells):
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines += ["", "Imitation MSE on the test states (mean +- std over seeds):", "",
              "| Method | Without damping | With damping |", "|---|---|---|"]
    for m in ALL_METHODS[1:]:
        cells = [_fmt([r["imitation_mse"] for r in rows if r["method"] == m and r["setting"] == s]) for s in SETTINGS]
        if any(c != "-" for c in cells):
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], meta: dict) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.json", json.dumps(dict(meta=meta, rows=rows), indent=1, default=float))
    atomic_write_text(out / "table.md", "# Pendulum imitation (DiffTORI Table 8): test cost on the true dynamics\n\n"
                      + table(rows))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets (CI smoke run, < 2 minutes)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="learner seeds")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="one initial-state draw (train/val/test) shared by all seeds; default: each seed draws its own")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS, help="simple and/or damped")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=ALL_METHODS,
                    help=f"rows to run (optional, needs mpc.pytorch: {', '.join(OPTIONAL_METHODS)})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bud = QUICK if args.quick else Budget()
    return run(args.out, bud, args.seeds, args.settings, args.methods, args.data_seed)


if __name__ == "__main__":
    main()
