"""Peer 2 of ``benchmarks/optim_peers.py``: mpc.pytorch's box-constrained iLQR (Amos et al. 2018) vs our
TrajOptimizer on the learned-dynamics tracking problem of :func:`benchmarks.common.build_tracking_problem`, and on
one imitation-training step of the pendulum swing-up (:class:`PendulumStep`).

mpc.pytorch (``mpc==0.0.6``, ``from mpc import mpc``) solves the problem in its (x, u) form with ``QuadCost``;
ours in shooting form. Measured: time to reach the better final cost, solution agreement, and the gradient of
a fixed linear functional of U* (our implicit backward vs mpc.pytorch's LQR backward) with a float64
central-difference check saying which is right. Quirks of mpc.pytorch 0.0.6 on torch 2.x handled here: it
needs grad mode (AUTO_DIFF Jacobians), warns on every call (deprecated torch.lu), and its horizon convention
differs from ours (see :class:`MpcPeer`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable

import torch

from benchmarks.common import (
    Problem,
    build_tracking_problem,
    cosine,
    fmt_or_dash,
    grads_or_zero,
    interleaved_timings,
    md_table,
    median,
    nan_to_none,
)
from difftori.envs import pendulum as P
from difftori.optim import MPC, SolverInfo, TrajOptimizer
from difftori.utils.config import to_dict

if TYPE_CHECKING:  # the config class lives in the driver, which imports this module
    from benchmarks.optim_peers import BenchConfig

MPC_INSTALL_HINT = "run `make setup` (installs mpc==0.0.6 with --no-deps), or pass --no-mpc"
MPC_VARIANTS = ("auto_diff", "analytic")
TRACK_METHODS = ("newton", "gauss_newton", "lm", "gauss_newton_structured", "lm_structured")
"""Ours on the tracking problem; ``*_structured``: the same method through the MPC front-end's least-squares form
(:class:`difftori.optim.MPC` with ``residual=``), whose Jacobian uses the causal rollout structure."""
BOX = (-1.0, 1.0)  # the tracking problem's action box |u| <= 1
TARGET_MPC_SPEEDUP = 3.0  # the issue's target (checked and reported, never asserted here)
FD_DIRECTIONS = ("dynamics", "cost_goal_q")  # finite-difference directions: dynamics parameters; (goal, q)


class MpcMissingError(RuntimeError):
    """mpc.pytorch is not importable; the message carries the install hint."""


def import_mpc():
    """``from mpc import mpc`` (mpc.pytorch); a clear error with the install hint if it is missing."""
    try:
        from mpc import mpc as mpc_lib
    except ImportError as exc:
        raise MpcMissingError(f"mpc.pytorch is not importable ({exc}); {MPC_INSTALL_HINT}") from exc
    return mpc_lib


@contextlib.contextmanager
def _quiet_mpc():
    """mpc.pytorch 0.0.6 calls torch.lu / lu_solve (deprecated: one warning per call) and needs grad mode."""
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        yield


class JacrevDynamics(torch.nn.Module):
    """The dynamics plus ``grad_input`` for mpc.pytorch's ``GradMethods.ANALYTIC``: all (x, u) Jacobians in one
    ``vmap(jacrev)`` call, differentiable w.r.t. the parameters (so mpc's backward also gets dF/dtheta, which
    its AUTO_DIFF path drops: it takes the Jacobians without create_graph)."""

    def __init__(self, dyn: torch.nn.Module):
        super().__init__()
        self.dyn = dyn

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.dyn(x, u)

    def grad_input(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def one(xi: torch.Tensor, ui: torch.Tensor) -> torch.Tensor:  # a batch of one: dynamics may index dim 0
            return self.dyn(xi.unsqueeze(0), ui.unsqueeze(0)).squeeze(0)

        return torch.func.vmap(torch.func.jacrev(one, argnums=(0, 1)))(x, u)


class MpcPeer:
    """mpc.pytorch's box-DDP on a tracking :class:`Problem`, returning U (B, H, A) like ours.

    mpc.pytorch's horizon T has states x_0..x_{T-1} and controls u_0..u_{T-1}, a cost on every (x_t, u_t) and
    x_{t+1} = f(x_t, u_t) for t < T-1. We use T = H + 1 with the x_0 block of the cost zeroed: u_H only pays
    ||u_H||^2_R (0 at the optimum, dropped), and the objective is our tracking cost minus the constant
    sum_t ||goal||^2_Q. C = 2 diag(q, r), c = (-2 q * goal, 0): differentiable in goal and q.
    """

    def __init__(self, lib, prob: Problem, variant: str):
        self.lib, self.prob, self.variant = lib, prob, variant
        ex = prob.extra
        self.dyn = ex["dynamics"] if variant == "auto_diff" else JacrevDynamics(ex["dynamics"])
        self.grad_method = lib.GradMethods.AUTO_DIFF if variant == "auto_diff" else lib.GradMethods.ANALYTIC
        self.B, self.H, self.A = prob.U0.shape
        self.n = ex["x0"].shape[1]

    def quad_cost(self):
        ex, n, T, B = self.prob.extra, self.n, self.H + 1, self.B
        nt = n + self.A
        ref = ex["q"]
        first = torch.ones(T, 1, nt, device=ref.device, dtype=ref.dtype)
        first[0, :, :n] = 0.0  # no cost on the fixed x_0
        C = torch.diag_embed(2.0 * torch.cat([ex["q"], ex["r"]])).expand(T, B, nt, nt) * (first[..., None] * first[..., None, :])
        c = torch.cat([-2.0 * ex["q"] * ex["goal"], torch.zeros(B, self.A, device=ref.device, dtype=ref.dtype)], -1)
        return self.lib.QuadCost(C, c.expand(T, B, nt) * first)

    def solve(self, iters: int, eps: float = 1e-7) -> torch.Tensor:
        """U (B, H, A) after at most ``iters`` iLQR iterations (with mpc.pytorch's graph for its backward)."""
        T = self.H + 1
        with _quiet_mpc():
            solver = self.lib.MPC(self.n, self.A, T, u_lower=BOX[0], u_upper=BOX[1], lqr_iter=iters, verbose=-1,
                                  eps=eps, exit_unconverged=False, detach_unconverged=False, grad_method=self.grad_method)
            _, u, _ = solver(self.prob.extra["x0"], self.quad_cost(), self.dyn)
        return u[: self.H].transpose(0, 1)


def ours_tracking(method: str, iters: int, backward: str, tol: float = 0.0, early_stop: bool = False):
    """Our solver on the tracking problem: box |u| <= 1 (projected), otherwise the method's defaults."""
    return TrajOptimizer(method=method, max_iters=iters, backward=backward, bounds=BOX, tol=tol, early_stop=early_stop)


def tracking_mpc(prob: Problem, opt: TrajOptimizer) -> MPC:
    """The tracking problem in our MPC front-end's least-squares form: r = (sqrt(2q)(x_t - goal), sqrt(2r) u_t)."""
    ex = prob.extra
    sq, sr = (2.0 * ex["q"]).sqrt(), (2.0 * ex["r"]).sqrt()
    goal = ex["goal"]

    def residual(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        return torch.cat([((X[:, 1:] - goal[:, None]) * sq).flatten(1), (U * sr).flatten(1)], -1)

    return MPC(ex["dynamics"], None, prob.U0.shape[1], prob.U0.shape[2], optimizer=opt, residual=residual)


def ours_tracking_solve(opt, prob: Problem, structured: bool = False) -> torch.Tensor:
    """gauss_newton / lm see the residual (0.5 ||r||^2 = the cost), newton the cost; ``structured``: through
    :func:`tracking_mpc`."""
    if structured:
        return tracking_mpc(prob, opt)(prob.extra["x0"], prob.U0.clone()).U
    if opt.method in ("gauss_newton", "lm"):
        U, _ = opt.solve(None, prob.U0, residual_fn=prob.extra["residual_fn"])
    else:
        U, _ = opt.solve(prob.cost_fn, prob.U0)
    return U


def tracking_solvers(lib, prob: Problem, cfg: BenchConfig) -> dict[str, Callable[[int, bool], torch.Tensor]]:
    """name -> solve(iters, final): ``final`` = the converged, differentiable solve (ours: tolerance, implicit
    backward; mpc: its own stopping rules); else exactly ``iters`` iterations, no backward (timed)."""
    out: dict[str, Callable[[int, bool], torch.Tensor]] = {}
    for name in cfg.track_methods:
        m, structured = name.removesuffix("_structured"), name.endswith("_structured")

        def ours(k: int, final: bool, m=m, structured=structured) -> torch.Tensor:
            opt = (ours_tracking(m, k, "implicit", tol=cfg.track_tol, early_stop=True) if final
                   else ours_tracking(m, k, "none"))
            return ours_tracking_solve(opt, prob, structured)

        out[f"ours_{name}"] = ours
    for v in cfg.mpc_variants:
        peer = MpcPeer(lib, prob, v)
        out[f"mpc_{v}"] = lambda k, final, peer=peer: peer.solve(k)
    return out


def _grad_groups(grads, targets) -> dict[str, list[torch.Tensor]]:
    """Split gradients w.r.t. ``[*dynamics params, goal, q]`` into named groups."""
    g = grads_or_zero(grads, targets)
    return {"all": g, "dynamics": g[:-2], "goal": g[-2:-1], "q": g[-1:]}


def tracking_case(B: int, cfg: BenchConfig, lib, device, dtype, say: Callable[[str], None]) -> dict[str, Any]:
    """Final costs, iterations and interleaved time to reach the better final cost, agreement and gradient cosines."""
    prob = build_tracking_problem(B, cfg.track_sizes, seed=cfg.seed, device=device, dtype=dtype)
    solvers = tracking_solvers(lib, prob, cfg)
    names = list(solvers)
    ref_name = names[0]  # ours, first method: its implicit gradient is the reference (checked by finite differences)
    K = cfg.track_final_iters

    def cost_of(U: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return prob.cost_fn(U.detach())

    final: dict[str, dict[str, Any]] = {}
    for name in names:  # converged, differentiable solves: final costs, solutions, gradients
        say(f"track_b{B}: {name} final solve + backward")
        t0 = time.perf_counter()
        with _quiet_mpc() if name.startswith("mpc") else contextlib.nullcontext():
            U = solvers[name](K, True)
            grads = torch.autograd.grad((prob.loss_weights * U).sum(), prob.grad_targets, allow_unused=True)
        final[name] = {"U": U.detach(), "cost": cost_of(U), "grads": _grad_groups(grads, prob.grad_targets),
                       "ms": 1e3 * (time.perf_counter() - t0)}
    best_ps = torch.stack([f["cost"] for f in final.values()]).min(0).values  # per-sample better final cost
    best_mean = min(f["cost"].mean().item() for f in final.values())
    target = best_mean + cfg.track_rtol * abs(best_mean)

    rows: dict[str, dict[str, Any]] = {}
    at_k: dict[str, torch.Tensor] = {}
    for name in names:  # smallest iteration count reaching the target (k iterations are a prefix of k + 1)
        f = final[name]
        row = {"final_cost": f["cost"].mean().item(), "final_solve_backward_ms_single": f["ms"], "iters_to_target": None,
               "trace": []}
        if f["cost"].mean().item() <= target:
            say(f"track_b{B}: {name} iterations to target")
            for k in range(1, K + 1):
                U = solvers[name](k, False).detach()
                c = cost_of(U)
                row["trace"].append(c.mean().item())
                if c.mean().item() <= target:
                    row["iters_to_target"] = k
                    row["samples_within_rtol"] = (c <= best_ps + cfg.track_rtol * best_ps.abs()).float().mean().item()
                    at_k[name] = U
                    break
        rows[name] = row

    timed = [n for n in names if rows[n]["iters_to_target"] is not None]
    say(f"track_b{B}: interleaved timings of {', '.join(timed)}")
    fns = {n: (lambda n=n: solvers[n](rows[n]["iters_to_target"], False)) for n in timed}
    reps = cfg.repeats if B <= 16 else cfg.repeats_slow
    times = interleaved_timings(fns, repeats=reps, warmup=1, device=device) if fns else {}
    for n in timed:
        rows[n]["ms_to_target"] = 1e3 * median(times[n])
        rows[n]["times_ms"] = [1e3 * t for t in times[n]]

    ref = final[ref_name]
    for n in names:
        r = rows[n]
        r["final_U_max_abs_diff_vs_ref"] = (final[n]["U"] - ref["U"]).abs().max().item()
        r["grad_cosine_vs_ref"] = {g: nan_to_none(cosine(final[n]["grads"][g], ref["grads"][g])) for g in ref["grads"]}
        r["grad_norm_ratio_vs_ref"] = float(torch.cat([t.reshape(-1) for t in final[n]["grads"]["all"]]).norm()
                                            / torch.cat([t.reshape(-1) for t in ref["grads"]["all"]]).norm().clamp_min(1e-30))

    def fastest(prefix: str) -> str | None:
        cands = [n for n in timed if n.startswith(prefix)]
        return min(cands, key=lambda n: rows[n]["ms_to_target"]) if cands else None

    ours_best, mpc_best = fastest("ours_"), fastest("mpc_")
    ours_final = min((n for n in names if n.startswith("ours_")), key=lambda n: rows[n]["final_cost"])
    mpc_names = [n for n in names if n.startswith("mpc_")]
    mpc_final = min(mpc_names, key=lambda n: rows[n]["final_cost"]) if mpc_names else None
    U_ref = final[ref_name]["U"]
    diffs_at_k = [(at_k[n] - at_k[ours_best]).abs().max().item() for n in mpc_names if ours_best and n in at_k]
    case: dict[str, Any] = {
        "name": f"track_b{B}", "kind": "mpc_tracking", "batch": B, "target_cost": target, "best_final_cost": best_mean,
        "rtol": cfg.track_rtol, "final_iters": K, "repeats": reps, "reference": ref_name, "solvers": rows,
        "ours_best": ours_best, "mpc_best": mpc_best,
        "ours_ms": rows[ours_best]["ms_to_target"] if ours_best else None,
        "mpc_ms": rows[mpc_best]["ms_to_target"] if mpc_best else None,
        "speedup": (rows[mpc_best]["ms_to_target"] / rows[ours_best]["ms_to_target"]) if (ours_best and mpc_best) else None,
        "speedup_vs": {n: rows[n]["ms_to_target"] / rows[ours_best]["ms_to_target"]
                       for n in timed if n.startswith("mpc_") and ours_best},
        "final_cost_ours": rows[ours_final]["final_cost"],
        "final_cost_mpc": rows[mpc_final]["final_cost"] if mpc_final else None,
        "solution_max_abs_diff": max((rows[n]["final_U_max_abs_diff_vs_ref"] for n in mpc_names), default=None),
        "solution_max_abs_diff_at_target": max(diffs_at_k, default=None),
        "active_fraction": ((U_ref - BOX[0]).abs().le(1e-6) | (U_ref - BOX[1]).abs().le(1e-6)).float().mean().item(),
        "grad_cosine": {n: rows[n]["grad_cosine_vs_ref"] for n in mpc_names},
    }
    return case


def fd_check(cfg: BenchConfig, lib, device) -> dict[str, Any]:
    """float64 central differences of L = sum(W * U*) along a unit direction in the dynamics parameters and one in
    (goal, q), each solver's own forward, vs its analytic gradient; reference: the FD of our (tight) solve."""
    prob = build_tracking_problem(cfg.fd_batch, cfg.track_sizes, seed=cfg.seed, device=device, dtype=torch.float64)
    targets = prob.grad_targets
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def unit(ts):
        v = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(device) for t in ts]
        nrm = torch.sqrt(sum((x * x).sum() for x in v))
        return [x / nrm for x in v]

    dirs = dict(zip(FD_DIRECTIONS, (unit(targets[:-2]) + [torch.zeros_like(targets[-2]), torch.zeros_like(targets[-1])],
                                    [torch.zeros_like(t) for t in targets[:-2]] + unit(targets[-2:]))))
    ours_m = cfg.track_methods[0]
    solvers: dict[str, Callable[[bool], torch.Tensor]] = {
        f"ours_{ours_m}": lambda graph: ours_tracking_solve(
            ours_tracking(ours_m.removesuffix("_structured"), cfg.fd_iters, "implicit" if graph else "none", tol=1e-10,
                          early_stop=True), prob, ours_m.endswith("_structured"))}
    for v in cfg.mpc_variants:
        peer = MpcPeer(lib, prob, v)
        solvers[f"mpc_{v}"] = lambda graph, peer=peer: peer.solve(cfg.fd_iters, eps=1e-12)
    base = [t.detach().clone() for t in targets]

    def loss_at(solve, d, s: float) -> float:
        with torch.no_grad():
            for t, b, dv in zip(targets, base, d):
                t.copy_(b + s * dv)
        try:
            with _quiet_mpc():
                return (prob.loss_weights * solve(False).detach()).sum().item()
        finally:
            with torch.no_grad():
                for t, b in zip(targets, base):
                    t.copy_(b)

    out: dict[str, Any] = {"batch": cfg.fd_batch, "eps": cfg.fd_eps, "iters": cfg.fd_iters, "dtype": "float64",
                           "directions": {}}
    analytic: dict[str, list[torch.Tensor]] = {}
    sols: dict[str, torch.Tensor] = {}
    for name, solve in solvers.items():
        with _quiet_mpc():
            U = solve(True)
            grads = torch.autograd.grad((prob.loss_weights * U).sum(), targets, allow_unused=True)
        analytic[name], sols[name] = grads_or_zero(grads, targets), U.detach()
    ref_name = f"ours_{ours_m}"
    out["solution_max_abs_diff_vs_reference"] = {n: (U - sols[ref_name]).abs().max().item() for n, U in sols.items()}
    out["cost"] = {n: prob.cost_fn(U).mean().item() for n, U in sols.items()}
    for dname, d in dirs.items():
        res: dict[str, Any] = {}
        for name, solve in solvers.items():
            fd = (loss_at(solve, d, cfg.fd_eps) - loss_at(solve, d, -cfg.fd_eps)) / (2 * cfg.fd_eps)
            an = float(sum((g * dv).sum() for g, dv in zip(analytic[name], d)))
            res[name] = {"fd": fd, "analytic": an}
        ref = res[ref_name]["fd"]
        for r in res.values():
            r["rel_err_vs_reference_fd"] = abs(r["analytic"] - ref) / max(abs(ref), 1e-30)
            r["fd_rel_diff_vs_reference_fd"] = abs(r["fd"] - ref) / max(abs(ref), 1e-30)
        out["directions"][dname] = res
    out["reference"] = ref_name
    return out


def run_mpc_section(cfg: BenchConfig, lib, device, dtype, say: Callable[[str], None]) -> dict[str, Any]:
    """All tracking cases and the finite-difference check."""
    cases = []
    for B in cfg.track_batches:
        t0 = time.perf_counter()
        case = tracking_case(B, cfg, lib, device, dtype, say)
        case["wall_s"] = time.perf_counter() - t0
        cases.append(case)
    say("mpc finite-difference check (float64)")
    t0 = time.perf_counter()
    fd = fd_check(cfg, lib, device)
    fd["wall_s"] = time.perf_counter() - t0
    return {"sizes": to_dict(cfg.track_sizes), "methods": list(cfg.track_methods), "variants": list(cfg.mpc_variants),
            "cases": cases, "fd_check": fd}


def evaluate_mpc_targets(mpc_res: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's mpc.pytorch targets: >= 3x faster to the same cost, final cost and gradient at least as accurate."""
    if not mpc_res:
        return []
    out = []
    for c in mpc_res["cases"]:
        sp = c.get("speedup")
        out.append({"case": c["name"], "target": f"speedup_vs_mpc ({c.get('ours_best')} vs {c.get('mpc_best')})",
                    "value": sp, "threshold": TARGET_MPC_SPEEDUP, "ok": None if sp is None else sp >= TARGET_MPC_SPEEDUP})
        if c.get("final_cost_mpc") is not None:  # at least as accurate: our final cost not above mpc.pytorch's
            rel = (c["final_cost_ours"] - c["final_cost_mpc"]) / abs(c["final_cost_mpc"])
            out.append({"case": c["name"], "target": "(final cost ours - mpc) / mpc <= rtol", "value": rel,
                        "threshold": c["rtol"], "ok": rel <= c["rtol"]})
    fd = mpc_res["fd_check"]
    for dname in FD_DIRECTIONS:
        res = fd["directions"][dname]
        ours = res[fd["reference"]]["rel_err_vs_reference_fd"]
        peers = [r["rel_err_vs_reference_fd"] for n, r in res.items() if n.startswith("mpc_")]
        if peers:
            out.append({"case": f"fd_{dname}", "target": "grad rel. error vs FD: ours <= best mpc.pytorch", "value": ours,
                        "threshold": min(peers), "ok": ours <= min(peers)})
    return out


def _solver_order(mpc_res: dict[str, Any]) -> list[str]:
    """Ours (config order), then the mpc.pytorch variants: the row order, also when read back from a (key-sorted) JSON."""
    return [f"ours_{m}" for m in mpc_res["methods"]] + [f"mpc_{v}" for v in mpc_res["variants"]]


def format_mpc_section(mpc_res: dict[str, Any] | None) -> list[str]:
    """Markdown tables of the tracking cases (per solver and summary) and of the finite-difference check."""
    if not mpc_res:
        return ["(not run)"]
    order = _solver_order(mpc_res)
    sz = mpc_res["sizes"]
    lines = [f"Problem: x_(t+1) = MLP(x_t, u_t) (state {sz['state']}, {sz['hidden']} x 2 ELU, action {sz['action']}, "
             f"action gain {sz['action_gain']}), horizon {sz['horizon']}, cost sum_t ||x_t - goal||^2_Q + ||u_t||^2_R, "
             f"|u| <= 1, U0 = 0. Ours: TrajOptimizer in shooting form; mpc.pytorch: MPC(T = H+1, QuadCost) box-DDP. "
             "'to target' = fewest iterations (and their median interleaved time, no backward) whose mean cost is "
             "within rtol of the better final mean cost (mpc.pytorch's time includes the differentiable "
             "linearization it does after its iterations on every call); grad cos = cosine of d sum(W * U*)/d(dynamics "
             "params / goal / q) with the reference (ours, implicit backward; mpc.pytorch: its LQR backward at the "
             "fixed point).", ""]
    rows = []
    for c in mpc_res["cases"]:
        for n in order:
            r = c["solvers"][n]
            gc = r["grad_cosine_vs_ref"]
            rows.append([str(c["batch"]), n, fmt_or_dash(r["iters_to_target"], "{}"),
                         fmt_or_dash(r.get("ms_to_target"), "{:.1f}"), fmt_or_dash(r["final_cost"], "{:.6f}"),
                         fmt_or_dash(r.get("samples_within_rtol"), "{:.2f}"),
                         fmt_or_dash(r["final_U_max_abs_diff_vs_ref"], "{:.1e}"),
                         " / ".join(fmt_or_dash(gc[g], "{:.4f}") for g in ("all", "dynamics", "goal", "q"))])
    lines += md_table(["B", "solver", "iters to target", "ms to target", "final mean cost", "samples within rtol",
                       "max abs U diff vs ref", "grad cos vs ref (all / dyn / goal / q)"], rows)

    def best(ms, name, K):
        return f"{ms:.1f} ({name})" if name else f"target not reached in {K} iterations"

    rows = [[str(c["batch"]), best(c["ours_ms"], c["ours_best"], c["final_iters"]),
             best(c["mpc_ms"], c["mpc_best"], c["final_iters"]), fmt_or_dash(c["speedup"], "{:.2f}x"),
             ", ".join(f"{n}: {c['speedup_vs'][n]:.2f}x" for n in order if n in c["speedup_vs"]),
             fmt_or_dash(c["final_cost_ours"], "{:.6f}"), fmt_or_dash(c["final_cost_mpc"], "{:.6f}"),
             fmt_or_dash(c["solution_max_abs_diff"], "{:.1e}"), fmt_or_dash(c["active_fraction"], "{:.2f}")]
            for c in mpc_res["cases"]]
    lines += ["", "Summary (ours: our fastest method to the target; mpc.pytorch: its fastest variant):", ""]
    lines += md_table(["B", "ours ms", "mpc.pytorch ms", "speedup", "speedup vs each variant", "final cost ours",
                       "final cost mpc", "max abs U diff", "U* on bound"], rows)
    fd = mpc_res["fd_check"]
    lines += ["", f"Gradient check: central differences (eps {fd['eps']}, float64, B = {fd['batch']}) of "
              f"L = sum(W * U*) along a unit direction, each solver's own forward ({fd['iters']} iterations, tight "
              f"tolerances); reference = the FD of {fd['reference']}.", ""]
    rows = [[d, n, f"{r['fd']:.8g}", f"{r['analytic']:.8g}", f"{r['rel_err_vs_reference_fd']:.2e}",
             f"{fd['solution_max_abs_diff_vs_reference'][n]:.1e}", f"{fd['cost'][n]:.10g}"]
            for d in FD_DIRECTIONS for n in order if n in fd["directions"][d]
            for r in [fd["directions"][d][n]]]
    lines += md_table(["direction", "solver", "FD of own forward", "analytic (own backward)", "rel. error vs reference FD",
                       "max abs U diff vs reference", "cost"], rows)
    return lines


# ============================================================================ pendulum imitation training step
PEND_STOP = (1e-2, 1e-3, 1e-4, 1e-6, 1e-8)
"""Stopping thresholds tried, loosest first, by both libraries (ours: gradient-norm tolerance; mpc.pytorch: its eps
on the size of the full control step): each solver is timed at the loosest one whose final mean cost is within
``pend_rtol`` (relative) of the reference (ours at ``pend_tol``), so both are timed to the same cost."""


class PendulumStep:
    """One imitation-training step of Amos et al.'s pendulum (METHOD.md, "A small benchmark from the paper"): solve
    the swing-up with learnable (g, m, l) from U = 0, loss = mean((U* - U_expert)^2), gradient w.r.t. log(g, m, l).

    float64; the expert is our newton solve with the true parameters (for timing, what it imitates does not matter);
    the learner's parameters are the true ones perturbed by factors exp(+-0.6) (seeded), as in
    ``benchmarks/pendulum_il.py``."""

    def __init__(self, B: int, seed: int, iters: int, tol: float):
        self.B, self.iters, self.tol = B, iters, tol
        self.x0 = P.initial_states(B, seed)
        self.q, self.p = P.cost_weights()
        self.U_exp, _ = self._ours_opt("none", 100).solve(P.shooting_cost(self.x0, P.params(), self.q, self.p), self._zeros())
        gen = torch.Generator().manual_seed(seed)
        self.log_gml = (P.params().log() + (torch.rand(3, generator=gen, dtype=P.DT) - 0.5) * 1.2).requires_grad_()

    def _zeros(self) -> torch.Tensor:
        return torch.zeros(self.B, P.T, 1, dtype=P.DT)

    def _ours_opt(self, backward: str, iters: int | None = None, tol: float | None = None) -> TrajOptimizer:
        return TrajOptimizer(method="newton", max_iters=iters or self.iters, backward=backward,
                             bounds=(-P.U_MAX, P.U_MAX), tol=self.tol if tol is None else tol)

    def cost(self, U: torch.Tensor) -> torch.Tensor:
        """(B,) cost of U under the learner's current parameters (no graph)."""
        with torch.no_grad():
            return P.shooting_cost(self.x0, self.log_gml.exp(), self.q, self.p)(U)

    def ours(self, graph: bool = True, tol: float | None = None) -> tuple[torch.Tensor, SolverInfo]:
        opt = self._ours_opt("implicit" if graph else "none", tol=tol)
        return opt.solve(P.shooting_cost(self.x0, self.log_gml.exp(), self.q, self.p), self._zeros())

    def mpc(self, lib, variant: str, eps: float) -> torch.Tensor:
        from mpc.env_dx.pendulum import PendulumDx

        dx = PendulumDx(self.log_gml.exp(), simple=True)
        if variant == "analytic":
            dx = JacrevDynamics(dx)
        grad_method = lib.GradMethods.AUTO_DIFF if variant == "auto_diff" else lib.GradMethods.ANALYTIC
        Q = torch.diag(self.q).expand(P.T, self.B, 4, 4).contiguous()
        pp = self.p.expand(P.T, self.B, 4).contiguous()
        with _quiet_mpc():
            _, u, _ = lib.MPC(3, 1, P.T, u_init=torch.zeros(P.T, self.B, 1, dtype=P.DT), u_lower=-P.U_MAX,
                              u_upper=P.U_MAX, lqr_iter=self.iters, verbose=-1, eps=eps, exit_unconverged=False,
                              detach_unconverged=False, grad_method=grad_method, linesearch_decay=0.2,
                              max_linesearch_iter=10)(self.x0, lib.QuadCost(Q, pp), dx)
        return u.transpose(0, 1)

    def loss_grad(self, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = ((U - self.U_exp) ** 2).mean()
        with _quiet_mpc():
            (g,) = torch.autograd.grad(loss, self.log_gml)
        return loss.detach(), g


def pendulum_case(B: int, cfg: BenchConfig, lib, say: Callable[[str], None]) -> dict[str, Any]:
    """Time one training step (solve + backward) of ours and of each mpc.pytorch variant, each at its loosest
    stopping threshold that reaches the reference cost (:data:`PEND_STOP`)."""
    prob = PendulumStep(B, cfg.seed, cfg.pend_solver_iters, cfg.pend_tol)
    U_ref, _ = prob.ours()
    _, g_ref = prob.loss_grad(U_ref)
    c_ref = prob.cost(U_ref.detach()).mean().item()
    target = c_ref + cfg.pend_rtol * abs(c_ref)
    solvers: dict[str, Callable[[float], tuple[torch.Tensor, SolverInfo | None]]] = {
        "ours_newton": lambda stop: prob.ours(tol=stop)}
    for v in cfg.mpc_variants:
        solvers[f"mpc_{v}"] = lambda stop, v=v: (prob.mpc(lib, v, stop), None)
    rows: dict[str, dict[str, Any]] = {}
    steps: dict[str, Callable[[], object]] = {}
    for name, solve in solvers.items():
        for stop in PEND_STOP:
            say(f"pend_b{B}: {name} stop {stop:g}")
            U, info = solve(stop)
            c = prob.cost(U.detach()).mean().item()
            if c <= target:
                break
        loss, g = prob.loss_grad(U)
        rows[name] = {"stop": stop, "reached": c <= target, "final_cost": c, "loss": loss.item(),
                      "iters_mean": None if info is None else info.iterations.float().mean().item(),
                      "iters_max": None if info is None else int(info.iterations.max()),
                      "statuses": None if info is None else info.summary(),
                      "U_max_abs_diff": (U - U_ref).abs().max().item(), "grad_cosine": cosine(g, g_ref),
                      "grad_norm_ratio": (g.norm() / g_ref.norm().clamp_min(1e-30)).item()}
        steps[name] = lambda solve=solve, stop=stop: prob.loss_grad(solve(stop)[0])
    say(f"pend_b{B}: interleaved timings of {', '.join(steps)}")
    reps = cfg.pend_repeats if B <= 32 else cfg.repeats_slow
    times = interleaved_timings(steps, repeats=reps, warmup=0)
    for n, ts in times.items():
        rows[n]["ms"] = 1e3 * median(ts)
        rows[n]["times_ms"] = [1e3 * t for t in ts]
    mpc_names = [n for n in rows if n.startswith("mpc_") and rows[n]["reached"]]
    mpc_best = min(mpc_names, key=lambda n: rows[n]["ms"]) if mpc_names else None
    ours_ok = rows["ours_newton"]["reached"]
    return {"name": f"pend_b{B}", "kind": "pendulum_training_step", "batch": B, "repeats": reps, "solvers": rows,
            "reference_cost": c_ref, "target_cost": target, "mpc_best": mpc_best, "ours_ms": rows["ours_newton"]["ms"],
            "mpc_ms": rows[mpc_best]["ms"] if mpc_best else None,
            "speedup": rows[mpc_best]["ms"] / rows["ours_newton"]["ms"] if (mpc_best and ours_ok) else None}


def pendulum_fd(cfg: BenchConfig, lib) -> dict[str, Any]:
    """Central differences (float64) of the imitation loss along a unit direction in log(g, m, l), each solver's own
    tight forward, against its own backward."""
    prob = PendulumStep(cfg.pend_fd_batch, cfg.seed, 100, 1e-12)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    d = torch.randn(3, generator=gen, dtype=P.DT)
    d = d / d.norm()
    base = prob.log_gml.detach().clone()
    solvers: dict[str, Callable[[bool], torch.Tensor]] = {"ours_newton": lambda graph: prob.ours(graph)[0]}
    for v in cfg.mpc_variants:
        solvers[f"mpc_{v}"] = lambda graph, v=v: prob.mpc(lib, v, 1e-12)

    def loss_at(solve, s: float) -> float:
        with torch.no_grad():
            prob.log_gml.copy_(base + s * d)
        try:
            return ((solve(False).detach() - prob.U_exp) ** 2).mean().item()
        finally:
            with torch.no_grad():
                prob.log_gml.copy_(base)

    out: dict[str, Any] = {"batch": cfg.pend_fd_batch, "eps": cfg.pend_fd_eps, "solvers": {}}
    for name, solve in solvers.items():
        _, g = prob.loss_grad(solve(True))
        fd = (loss_at(solve, cfg.pend_fd_eps) - loss_at(solve, -cfg.pend_fd_eps)) / (2 * cfg.pend_fd_eps)
        an = float((g * d).sum())
        out["solvers"][name] = {"fd": fd, "analytic": an, "rel_err": abs(an - fd) / max(abs(fd), 1e-30)}
    return out


def run_pendulum_section(cfg: BenchConfig, lib, say: Callable[[str], None]) -> dict[str, Any]:
    """The pendulum training-step cases and their finite-difference check."""
    cases = []
    for B in cfg.pend_batches:
        t0 = time.perf_counter()
        case = pendulum_case(B, cfg, lib, say)
        case["wall_s"] = time.perf_counter() - t0
        cases.append(case)
    say("pendulum finite-difference check (float64)")
    return {"solver_iters": cfg.pend_solver_iters, "tol": cfg.pend_tol, "rtol": cfg.pend_rtol,
            "variants": list(cfg.mpc_variants), "cases": cases, "fd_check": pendulum_fd(cfg, lib)}


def evaluate_pendulum_targets(res: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue target: a training step no slower than mpc.pytorch's at every batch size; gradient at least as exact."""
    if not res:
        return []
    out = [{"case": c["name"], "target": f"speedup_vs_mpc (ours_newton vs {c['mpc_best']})", "value": c["speedup"],
            "threshold": 1.0, "ok": None if c["speedup"] is None else c["speedup"] >= 1.0} for c in res["cases"]]
    fd = res["fd_check"]["solvers"]
    peers = [r["rel_err"] for n, r in fd.items() if n.startswith("mpc_")]
    if peers:
        out.append({"case": "pend_fd", "target": "grad rel. error vs own FD: ours <= best mpc.pytorch",
                    "value": fd["ours_newton"]["rel_err"], "threshold": min(peers), "ok": fd["ours_newton"]["rel_err"] <= min(peers)})
    return out


def format_pendulum_section(res: dict[str, Any] | None) -> list[str]:
    """Markdown: per-solver rows of every batch size, and the finite-difference check."""
    if not res:
        return ["(not run)"]
    lines = [f"Problem: one imitation-training step of the pendulum swing-up (Amos et al. 2018; horizon {P.T}, "
             f"|u| <= {P.U_MAX}, float64): solve with learnable (g, m, l) from U = 0 (at most {res['solver_iters']} "
             "iterations), loss = mean((U* - U_expert)^2), gradient w.r.t. log(g, m, l). Ours: newton, implicit "
             "backward. mpc.pytorch: box-DDP with its LQR backward. Reference: ours at tolerance "
             f"{res['tol']:g}. 'stop' = the loosest of {', '.join(f'{e:g}' for e in PEND_STOP)} (ours: gradient-norm "
             "tolerance; mpc.pytorch: eps on its control step) whose mean cost is within "
             f"{res['rtol']:g} (relative) of the reference: both are timed to the same cost. ms = median interleaved "
             "wall clock of the whole step (solve + backward). The batch iterates until its slowest sample stops.", ""]
    rows = []
    for c in res["cases"]:
        for n, r in c["solvers"].items():
            rows.append([str(c["batch"]), n, f"{r['stop']:g}", fmt_or_dash(r["ms"], "{:.1f}"),
                         fmt_or_dash(r["iters_mean"], "{:.1f}"), fmt_or_dash(r["iters_max"], "{}"),
                         f"{r['final_cost']:.8f}", f"{r['loss']:.6f}",
                         f"{r['U_max_abs_diff']:.1e}", fmt_or_dash(r["grad_cosine"], "{:.4f}"),
                         f"{r['grad_norm_ratio']:.3f}"])
    lines += md_table(["B", "solver", "stop", "ms / step", "ours iters (mean)", "ours iters (max)", "final mean cost",
                       "loss", "max abs U diff vs ref", "grad cos vs ref", "grad norm ratio vs ref"], rows)
    rows = [[str(c["batch"]), f"{c['ours_ms']:.1f}", fmt_or_dash(c["mpc_ms"], "{:.1f}"), str(c["mpc_best"]),
             fmt_or_dash(c["speedup"], "{:.2f}x")] for c in res["cases"]]
    lines += ["", "Summary:", ""] + md_table(["B", "ours ms", "mpc.pytorch ms (fastest variant)", "variant", "speedup"], rows)
    fd = res["fd_check"]
    lines += ["", f"Gradient check: central differences (eps {fd['eps']}, float64, B = {fd['batch']}) of the loss along a "
              "unit direction in log(g, m, l), each solver's own tight forward (ours tol 1e-12, mpc.pytorch eps 1e-12).", ""]
    lines += md_table(["solver", "FD of own forward", "analytic (own backward)", "rel. error"],
                      [[n, f"{r['fd']:.8g}", f"{r['analytic']:.8g}", f"{r['rel_err']:.2e}"] for n, r in fd["solvers"].items()])
    return lines
