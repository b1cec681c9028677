"""Table 8 of the DiffTORI paper (Appendix A.3): pendulum imitation of Amos et al. 2018, with and without damping.

The expert is MPC with the true model (difftori.optim newton, box [-2, 2], restarts from zeros and +-bound
constant sequences, lowest cost kept: the swing-up is non-convex). Learners imitate the expert's 20-step
action sequence from the initial state and are scored by the TRUE-dynamics cost of their open-loop sequence:
  lstm                 LSTM policy x0 -> 20 actions, trained by MSE;
  amos_mpcpytorch      Amos et al.'s method with their library: the pendulum model class with learnable (g, m, l)
                       [+ (d, b) damped], imitation through mpc.pytorch's differentiable box-DDP (run when `mpc`
                       is importable, as `make setup` installs it; else the table says why it is missing);
  amos_difftori        the same model class and imitation, through difftori.optim (newton, implicit gradient);
  difftori_released    the library's IL DiffTORI policy (difftori.il, released formulation: CVAE + cost network
                       over the action window, packed LM solve, 3000 MSE + 10 KL), observation x0, window = the
                       20 torques, U0 = zeros (no base policy on this task);
  difftori_paper       DiffTORI paper mode: encoder z0 = e(x0), latent dynamics z' = d(z, a) and latent cost
                       f(z, a) (small MLPs) rolled into sum_t f(z_t, a_t) over the 20 steps, U0 = 0, newton with
                       implicit gradient, trained by action MSE (no CVAE: the expert is deterministic).
Data: 100 / 10 / 10 train / val / test initial states, drawn per seed (or once with --data-seed); learners are
trained on train, the best validation-MSE checkpoint is kept, and test numbers are reported per seed. Ten test
states make a noisy mean (the expert's cost per state is bimodal: about -10 near the top, 20-30 from the side),
so compare rows within a seed draw.
Runs on the sweep runner (difftori.sweep, a local Ray cluster of --jobs cells): one script cell per setting x
data draw for the expert (it writes the dataset) and per method x setting x seed for the learners (each
depending on its expert cell), in --run-root; a rerun skips finished cells, and finished cells are archived
under ``--out``/cells (committed), from where they are restored instead of run again.
Writes ``results.csv`` (method, setting, seed, test_cost, imitation_mse, train_s, init_test_cost,
init_imitation_mse, restarts_used), ``table.md`` (Table 8 layout), ``table8.png`` and ``results.json`` under ``--out``.
Usage: python benchmarks/pendulum_il.py [--quick] [--seeds 0 1 2] [--settings ...] [--methods ...] [--jobs 2]
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
from difftori.sweep.archive import archive_done, restore  # noqa: E402
from difftori.sweep.grid import Cell, script_cell  # noqa: E402
from difftori.sweep.runner import SweepOptions, cell_dir, read_state, run_sweep  # noqa: E402
from difftori.utils.config import ConfigError  # noqa: E402
from difftori.utils.io import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint  # noqa: E402

SETTINGS = ("simple", "damped")
METHODS = ("expert", "lstm", "amos_mpcpytorch", "amos_difftori", "difftori_released", "difftori_paper")
"""Every row, in Table 8's order."""
MPC_METHODS = ("amos_mpcpytorch",)
"""Rows that need mpc.pytorch (`make setup` installs it: pip install --no-deps mpc==0.0.6)."""
LABELS = {"expert": "Expert", "lstm": "LSTM", "amos_mpcpytorch": "Amos et al. (mpc.pytorch)",
          "amos_difftori": "Amos et al. (difftori)", "difftori_released": "DiffTORI released",
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
    released_iters: int = 300
    released_lr: float = 1e-3
    """Adam, constant (the released 1e-4 barely moves the cost at these budgets, as on MetaWorld: il_compare)."""
    released_batch: int = 32
    """Training batch = the packed draws per state at inference (the released step scale depends on it)."""
    eval_every: int = 10


QUICK = Budget(n_train=20, lstm_iters=60, amos_iters=3, amos_batch=10, amos_solver_iters=30, paper_iters=30,
               paper_lr=1e-2, paper_batch=10, paper_solver_iters=10, released_iters=30, released_batch=10, eval_every=5)


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

    def loss(self, x0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """Training loss on a minibatch of initial states and expert sequences (default: the action MSE)."""
        return (self.train_forward(x0) - U).square().mean()

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


class DiffToriReleased(Learner):
    """The library's IL DiffTORI policy (``difftori.il``, released formulation) applied to the pendulum, unchanged.

    Observation = x0 (one frame of ``full_state``), action window = the 20 torques, U0 = zeros (``init="zeros"``:
    this task has no base policy to start from), the released solver (lm_scalar, the batch packed into one
    problem, 100 iterations, truncated backward k=5) and loss (3000 MSE + 10 KL of the CVAE). Torques are
    normalised by the box, so U0 = 0 is zero torque and the policy's [-1, 1] is the box; states by the training
    states' limits. Acting draws ``released_batch`` latents per state, packed as the training batch (the released
    step scale), and executes draw 0, so it is stochastic."""

    def __init__(self, x_train: torch.Tensor, bud: Budget):
        from difftori.data.normalizer import Normalizer
        from difftori.il.config import DiffTORIConfig
        from difftori.il.difftori_policy import DiffTORIPolicy

        cfg = DiffTORIConfig(formulation="released", init="zeros", inference_samples=bud.released_batch)
        self.policy = DiffTORIPolicy({"full_state": (3,)}, action_dim=1, obs_steps=1, action_steps=P.T, cfg=cfg)
        box = torch.tensor([[-P.U_MAX], [P.U_MAX]])
        self.policy.set_normalizer(Normalizer().fit({"full_state": x_train.float(), "action": box}))

    def parameters(self):
        return self.policy.trainable_parameters()

    @staticmethod
    def _obs(x0: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"full_state": x0[:, None, :]}

    def act(self, x0):
        return self.policy.predict_action(self._obs(x0)).to(x0)

    def loss(self, x0, U):
        return self.policy.compute_loss({"obs": self._obs(x0), "action": U})[0]


# ------------------------------------------------------------------ training / evaluation
def evaluate(learner: Learner, x0: torch.Tensor, U_exp: torch.Tensor, theta: torch.Tensor) -> tuple[float, float]:
    """(mean true-dynamics cost of the learner's open-loop sequence, imitation MSE)."""
    with torch.no_grad():
        U = learner.act(x0).detach()
    return float(rollout_cost(x0, U, theta).mean()), float((U - U_exp).square().mean())


def fit(learner: Learner, data: dict, iters: int, lr: float, batch: int, eval_every: int,
        gen: torch.Generator) -> tuple[float, list[dict]]:
    """Adam on ``learner.loss`` over minibatches; keeps the best validation-MSE parameters.

    Returns (wall seconds, one log row per evaluation: iteration, last minibatch loss, validation MSE)."""
    xt, Ut = data["train"]
    xv, Uv = data["val"]
    opt = torch.optim.Adam(learner.parameters(), lr=lr)

    def val_mse() -> float:
        with torch.no_grad():
            return float((learner.act(xv) - Uv).square().mean())

    best = (val_mse(), learner.state())
    log = [dict(step=0, loss=math.nan, val_mse=best[0])]
    t0 = time.perf_counter()
    for it in range(1, iters + 1):
        idx = torch.randperm(xt.shape[0], generator=gen)[:batch]
        loss = learner.loss(xt[idx], Ut[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % eval_every == 0 or it == iters:
            v = val_mse()
            log.append(dict(step=it, loss=float(loss.detach()), val_mse=v))
            if v < best[0]:
                best = (v, learner.state())
    learner.load(best[1])
    return time.perf_counter() - t0, log


def make_learner(method: str, setting: str, seed: int, bud: Budget, data: dict) -> tuple[Learner, dict]:
    """A fresh learner of ``method`` (seeded) and its ``fit`` budget (iters, lr, batch)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if method == "lstm":
        return LSTMPolicy(bud.lstm_hidden), dict(iters=bud.lstm_iters, lr=bud.lstm_lr, batch=32)
    if method == "amos_difftori":
        return AmosModel(setting, gen, bud), dict(iters=bud.amos_iters, lr=bud.amos_lr, batch=bud.amos_batch)
    if method == "amos_mpcpytorch":
        return AmosMPCPytorch(setting, gen, bud), dict(iters=bud.amos_iters, lr=bud.amos_lr, batch=bud.amos_batch)
    if method == "difftori_released":
        return DiffToriReleased(data["train"][0], bud), dict(iters=bud.released_iters, lr=bud.released_lr,
                                                               batch=bud.released_batch)
    if method == "difftori_paper":
        return DiffToriPaper(bud), dict(iters=bud.paper_iters, lr=bud.paper_lr, batch=bud.paper_batch)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


# ------------------------------------------------------------------ one cell (run by the sweep runner)
DATA_FIELDS = ("n_train", "n_val", "n_test", "expert_iters")
"""Budget fields that fix a dataset (and the expert, whose restarts the Amos rows also act with)."""
METHOD_FIELDS = {"expert": "", "lstm": "lstm_", "amos_difftori": "amos_", "amos_mpcpytorch": "amos_",
                 "difftori_released": "released_", "difftori_paper": "paper_"}
"""Prefix of the budget fields each method uses (its cell id depends on those and on DATA_FIELDS only)."""


def cell_config(method: str, setting: str, seed: int, data_seed: int, bud: Budget) -> dict:
    """What one cell computes: method, setting, seeds and the budget fields it uses."""
    b = asdict(bud)
    fields = [*DATA_FIELDS, *([] if method == "expert" else ["eval_every"])]
    fields += [k for k in b if METHOD_FIELDS[method] and k.startswith(METHOD_FIELDS[method])]
    return dict(benchmark="pendulum_il", method=method, setting=setting, seed=seed, data_seed=data_seed,
                budget={k: b[k] for k in fields})


def load_data(dataset: Path | None, setting: str, data_seed: int, bud: Budget) -> dict:
    """The expert cell's ``data.pt`` from its run directory; recomputed (deterministic) when the expert cell's
    run was archived without it."""
    want = dict(setting=setting, data_seed=data_seed, **{k: getattr(bud, k) for k in DATA_FIELDS})
    if dataset is not None and (dataset / "data.pt").exists():
        data = load_checkpoint(dataset / "data.pt")
        if data["meta"] != want:
            raise ValueError(f"{dataset / 'data.pt'} holds the data of {data['meta']}, this cell needs {want}")
        return data
    return make_data(setting, data_seed, bud)


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def run_cell(method: str, setting: str, seed: int, data_seed: int, bud: Budget, run_root: Path,
             dataset: Path | None) -> Path:
    """Run one cell and write its run directory (config.json, final.json, eval.csv, train.csv; data.pt for the
    expert); returns the directory. ``final.json`` holds the results.csv row (and the Amos rows' learned model)."""
    run_dir = run_root / setting / method / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", cell_config(method, setting, seed, data_seed, bud))
    theta = true_theta(setting)
    extra: dict = {}
    if method == "expert":
        t0 = time.perf_counter()
        data = make_data(setting, data_seed, bud)
        data["meta"] = dict(setting=setting, data_seed=data_seed, **{k: getattr(bud, k) for k in DATA_FIELDS})
        row = dict(method=method, setting=setting, seed=data_seed, test_cost=data["expert_test_cost"], imitation_mse=0.0,
                   train_s=time.perf_counter() - t0, init_test_cost=math.nan, init_imitation_mse=math.nan,
                   restarts_used=data["restarts_used"])
        save_checkpoint(run_dir / "data.pt", data)
        evals = [dict(step=0, test_cost=row["test_cost"], imitation_mse=0.0)]
        print(f"[{setting}] data seed {data_seed}: expert test cost {row['test_cost']:.3f} (a restart beat the zero "
              f"start on {data['restarts_used']} of {bud.n_train + bud.n_val + bud.n_test} states)", flush=True)
    else:
        data = load_data(dataset, setting, data_seed, bud)
        xs, Us = data["test"]
        learner, kw = make_learner(method, setting, seed, bud, data)
        c0, m0 = evaluate(learner, xs, Us, theta)
        ts, train_log = fit(learner, data, eval_every=bud.eval_every, gen=torch.Generator().manual_seed(seed + 1000), **kw)
        c1, m1 = evaluate(learner, xs, Us, theta)
        row = dict(method=method, setting=setting, seed=seed, test_cost=c1, imitation_mse=m1, train_s=ts,
                   init_test_cost=c0, init_imitation_mse=m0, restarts_used="")
        if isinstance(learner, AmosModel):
            extra["learned_params"] = learner.identifiable()
        _write_csv(run_dir / "train.csv", train_log)
        evals = [dict(step=0, test_cost=c0, imitation_mse=m0), dict(step=kw["iters"], test_cost=c1, imitation_mse=m1)]
        print(f"[{setting}] {method} seed {seed}: test cost {c0:.3f} -> {c1:.3f}, imitation MSE {m0:.4f} -> {m1:.4f}, "
              f"{ts:.1f} s", flush=True)
    _write_csv(run_dir / "eval.csv", evals)
    atomic_write_json(run_dir / "final.json", dict(row=row, **extra))
    return run_dir


def cell_main(argv: list[str]) -> int:
    """``pendulum_il.py cell ...``: one cell, as the sweep runner starts it (it appends --run-root etc.)."""
    ap = argparse.ArgumentParser(prog="pendulum_il.py cell", description="one cell of the pendulum benchmark")
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--setting", required=True, choices=SETTINGS)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--data-seed", type=int, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--run-root", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, default=None, help="run directory of the expert cell (its data.pt)")
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.device != "cpu":
        ap.error(f"--device {args.device}: the pendulum benchmark runs on CPU (float64, batches of 10-100 states)")
    if args.method in MPC_METHODS and mpc_missing():
        ap.error(f"--method {args.method}: {mpc_missing()}")
    torch.set_num_threads(args.num_threads)
    run_dir = run_cell(args.method, args.setting, args.seed, args.data_seed, QUICK if args.quick else Budget(),
                       args.run_root, args.dataset)
    print(f"run directory: {run_dir}", flush=True)
    return 0


# ------------------------------------------------------------------ the grid
def mpc_missing() -> str | None:
    """Why mpc.pytorch cannot be used here (None: it can)."""
    try:
        import mpc  # noqa: F401
    except ImportError as exc:
        return f"mpc.pytorch is not importable ({exc}); `make setup` installs it (pip install --no-deps mpc==0.0.6)"
    return None


def default_methods() -> list[str]:
    """Every row, without the mpc.pytorch one when ``mpc`` is not importable."""
    return [m for m in METHODS if m not in MPC_METHODS or mpc_missing() is None]


def cells(methods: list[str], settings: list[str], seeds: list[int], data_seed: int | None, quick: bool) -> list[Cell]:
    """Per setting and data draw an expert cell (the dataset), then one cell per learner and seed depending on it."""
    bud = QUICK if quick else Budget()
    script = Path(__file__)
    out: list[Cell] = []
    for setting in settings:
        experts: dict[int, Cell] = {}
        for seed in seeds:
            ds = seed if data_seed is None else data_seed
            if ds not in experts:
                experts[ds] = _cell(script, "expert", setting, ds, ds, bud, quick, {})
                out.append(experts[ds])
            out += [_cell(script, m, setting, seed, ds, bud, quick, {"dataset": experts[ds].id}) for m in methods
                    if m != "expert"]
    return out


def _cell(script: Path, method: str, setting: str, seed: int, ds: int, bud: Budget, quick: bool,
          deps: dict[str, str]) -> Cell:
    opts = ["cell", "--method", method, "--setting", setting, "--seed", seed, "--data-seed", ds, *(["--quick"] if quick else [])]
    cfg = cell_config(method, setting, seed, ds, bud)
    steps = 0 if method == "expert" else cfg["budget"].get(f"{METHOD_FIELDS[method]}iters", 0)
    return script_cell(script, f"pendulum-{setting}", method, seed, opts, cfg, steps, deps=deps)


def run(out: Path, run_root: Path, quick: bool, seeds: list[int], settings: list[str], methods: list[str],
        data_seed: int | None, jobs: int = 2, threads: int = 1, fresh: bool = False, retry_failed: bool = False,
        timeout_s: float | None = None, report_only: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Run (or reuse) the grid's cells on the sweep runner, archive finished ones under ``out/cells``, and write
    results.csv / results.json / table.md / table8.png under ``out``; returns the rows of the finished cells.

    Each seed draws its own dataset (``data_seed`` None) or all seeds share the draw ``data_seed``; the expert row
    is reported once per distinct draw, so its mean +- std covers the same test states as the learners'."""
    grid = cells(methods, settings, seeds, data_seed, quick)
    archive = out / "cells"
    for cid in restore(grid, run_root, archive):
        log(f"[pendulum_il] restored {cid} from {archive}")
    todo = [c for c in grid if fresh or read_state(run_root, c.id).get("status") != "done"]
    if not report_only and not todo:
        log(f"[pendulum_il] all {len(grid)} cells are done in {run_root} (or archived in {archive}): nothing to run")
    elif not report_only:
        opts = SweepOptions(num_cpus=jobs * threads, cpus_per_run=threads, gpus_per_run=0, max_parallel=jobs, fresh=fresh,
                            retry_failed=retry_failed, timeout_s=timeout_s)
        run_sweep(grid, run_root, opts, log=lambda m: log(m.replace("[sweep]", "[pendulum_il]")), report=False,
                  on_done=lambda c, _: archive_done([c], run_root, archive))
    archive_done(grid, run_root, archive)
    rows, extras, unfinished = [], {}, []
    for c in grid:
        state = read_state(run_root, c.id)
        if state.get("status") != "done":
            unfinished.append(f"{c.id}: {state.get('status')}" + (f" ({state['error']})" if state.get("error") else ""))
            continue
        final = json.loads((cell_dir(run_root, c.id) / state["run_dir"] / "final.json").read_text())
        rows.append(final["row"])
        if "learned_params" in final:
            extras[f"{c.variant}/{c.config['setting']}/{c.seed}"] = final["learned_params"]
    notes = [f"{LABELS[m]}: not run: {mpc_missing()}" for m in MPC_METHODS if m not in methods and mpc_missing()]
    notes += [f"not finished: {u}" for u in unfinished]
    meta = dict(budget=asdict(QUICK if quick else Budget()), seeds=seeds, data_seed=data_seed, learned_params=extras,
                cells=[c.id for c in grid])
    write_outputs(out, rows, meta, notes)
    return rows


# ------------------------------------------------------------------ outputs
def _fmt(vals: list[float]) -> str:
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} +- {sd:.3f}"


PAPER_EXPERT_COST = {"simple": 13.126, "damped": 10.132}
"""DiffTORI Table 8's expert rows (METHOD.md), printed beside ours."""


def table(rows: list[dict], notes: list[str] = ()) -> str:
    """Markdown table in Table 8's layout: methods x (without / with damping), test cost mean +- std; then the
    imitation MSE and the training seconds the same way, and ``notes`` (rows not run, cells not finished)."""
    lines = []
    for key, title in (("test_cost", None), ("imitation_mse", "Imitation MSE on the test states (mean +- std over seeds):"),
                       ("train_s", "Training wall-clock seconds per run (the expert: computing its dataset):")):
        if title:
            lines += ["", title, ""]
        lines += ["| Method | Without damping | With damping |", "|---|---|---|"]
        for m in METHODS:
            if key == "imitation_mse" and m == "expert":
                continue
            cells_ = [_fmt([float(r[key]) for r in rows if r["method"] == m and r["setting"] == s]) for s in SETTINGS]
            if any(c != "-" for c in cells_):
                lines.append(f"| {LABELS[m]} | " + " | ".join(cells_) + " |")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], meta: dict, notes: list[str] = ()) -> None:
    """results.csv (one row per cell), results.json (rows + budget and learned models), table.md and table8.png."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.json", json.dumps(dict(meta=meta, rows=rows), indent=1, default=float))
    budget = ", ".join(f"{k} {v}" for k, v in (meta.get("budget") or {}).items())
    protocol = (f"Protocol: learner seeds {meta.get('seeds')}, each with its own draw of initial states (data seed = learner "
                f"seed unless --data-seed); every learner is selected on the validation states and reported on the test "
                f"states; test cost = the learner's open-loop 20-step sequence rolled out on the true dynamics, averaged over "
                f"the test states; mean +- std over seeds. Budget: {budget}. The paper's Table 8 expert rows: "
                f"{PAPER_EXPERT_COST['simple']} / {PAPER_EXPERT_COST['damped']}.\n\n")
    atomic_write_text(out / "table.md", "# Pendulum imitation (DiffTORI Table 8): test cost on the true dynamics\n\n"
                      + protocol + table(rows, notes))
    from difftori.utils.plotting import plot_bars  # matplotlib: only where the tables are written, not in every cell

    groups = {f"{'without' if s == 'simple' else 'with'} damping": {LABELS[m]: [float(r["test_cost"]) for r in rows
              if r["method"] == m and r["setting"] == s] for m in METHODS} for s in SETTINGS}
    groups = {g: {m: v for m, v in d.items() if v} for g, d in groups.items()}
    groups = {g: d for g, d in groups.items() if d}
    if groups:
        plot_bars(groups, out / "table8.png", ylabel="test cost (true dynamics)")


def main(argv: list[str] | None = None) -> list[dict]:
    """The grid (or, as ``pendulum_il.py cell ...``, one cell of it: what the sweep runner starts)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cell"]:
        sys.exit(cell_main(argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets, seed 0 (the CI test, < 2 minutes)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="learner seeds (default 0 1 2; --quick: 0)")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="one initial-state draw (train/val/test) shared by all seeds; default: each seed draws its own")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS, help="simple and/or damped")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                    help="rows to run (default: all; the mpc.pytorch row only when `mpc` is importable)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"tables and archived cells (default {DEFAULT_OUT.relative_to(REPO)}; --quick: RUN_ROOT/results)")
    ap.add_argument("--run-root", type=Path, default=None,
                    help="the sweep directory (cells, runs; never committed); default runs/pendulum_il[_quick]")
    ap.add_argument("--jobs", type=int, default=2, help="cells in parallel (local Ray cluster)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= CPUs) per cell")
    ap.add_argument("--timeout-s", type=float, default=None, help="stop a cell after this many seconds (reruns it next time)")
    ap.add_argument("--fresh", action="store_true", help="run every cell again (earlier runs kept aside)")
    ap.add_argument("--retry-failed", action="store_true", help="run cells that failed before again")
    ap.add_argument("--report-only", action="store_true", help="run nothing: tables from the cells on disk")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        ap.error("--jobs and --threads must be >= 1")
    methods = args.methods or default_methods()
    if "expert" not in methods:
        methods = ["expert", *methods]  # the dataset of every learner
    if any(m in MPC_METHODS for m in methods) and mpc_missing():
        ap.error(f"--methods {' '.join(m for m in methods if m in MPC_METHODS)}: {mpc_missing()}")
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    run_root = args.run_root or REPO / "runs" / ("pendulum_il_quick" if args.quick else "pendulum_il")
    out = args.out or (run_root / "results" if args.quick else DEFAULT_OUT)
    try:
        rows = run(out, run_root, args.quick, seeds, args.settings, methods, args.data_seed, jobs=args.jobs,
                   threads=args.threads, fresh=args.fresh, retry_failed=args.retry_failed, timeout_s=args.timeout_s,
                   report_only=args.report_only)
    except (ConfigError, ImportError) as exc:
        ap.error(str(exc))
    print((out / "table.md").read_text())
    return rows


if __name__ == "__main__":
    main()
