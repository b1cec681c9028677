"""Benchmark: the RL agents (TD-MPC, DiffTORI) in ``precision=fp32`` vs ``bf16``, part by part.

Parts (ms of one call): ``update`` (one TD-MPC update on a batch from a replay buffer of random
transitions; DiffTORI's adds the Q_s loss), ``plan`` (one MPPI plan of TD-MPC, also DiffTORI's default
acting start), ``act_solve`` (one batch-1 DiffTORI acting solve from the pi rollout) and ``pg_grad`` (one
episode-mode DiffTORI policy-gradient term: the truncated-backward solve and the gradient into the world
model). A second table times one whole training agent step (act with exploration + one update; DiffTORI's act
includes its MPPI plan, the acting/PG solve and the episode-mode gradient) at the issue's starting settings
(``today``: fp32, autograd return gradient, a fixed number of solver iterations) against the fast ones (``fast``:
bf16 autocast, compiled return gradient, the plateau stop). Each part starts from fresh fp32 and bf16 agents with the same weights, whose repetitions are
interleaved so load drift hits both alike; both solves start from a fixed plan, so every call does the
same iterations. No environment is needed: the env spec is built directly (walker-walk: 24-D state,
6-D action). Reward and critic heads are re-initialised (TD-MPC zeroes them, which would make the
solver's cost flat and every solve stop at once).

    python benchmarks/rl_speed.py                       # paper sizes (RLConfig defaults), 1 thread
    python benchmarks/rl_speed.py --sizes small --quick

Results: ``<out>/rl_speed.json`` and ``<out>/rl_speed.md`` (``--out``, default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python benchmarks/rl_speed.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.common import interleaved_timings, median, parse_bench_config, run_meta  # noqa: E402
from difftori.envs.spec import EnvSpec  # noqa: E402
from difftori.models.mlp import orthogonal_init  # noqa: E402
from difftori.rl.buffer import ReplayBuffer  # noqa: E402
from difftori.rl.config import PRESETS, RETURN_GRADS, SMALL_SIZES, DiffTORIConfig, RLConfig  # noqa: E402
from difftori.rl.difftori import DiffTORI  # noqa: E402
from difftori.rl.tdmpc import TDMPC  # noqa: E402
from difftori.utils.config import check, to_dict  # noqa: E402
from difftori.utils.device import resolve_device  # noqa: E402
from difftori.utils.io import atomic_write_json, atomic_write_text  # noqa: E402

__all__ = ["SpeedConfig", "QUICK", "PARTS", "PRECISIONS", "SPEC", "run", "markdown", "parse_config", "main"]

DEFAULT_OUT = REPO / "benchmarks" / "results"
PRECISIONS = ("fp32", "bf16")
PARTS: dict[str, tuple[str, ...]] = {"tdmpc": ("update", "plan"), "difftori": ("update", "act_solve", "pg_grad")}
"""Timed parts per agent (see the module docstring)."""
SPEC = EnvSpec(task="walker-walk", suite="dmc", obs_type="state", obs_shapes={"obs": (24,)}, action_dim=6,
               episode_length=500, action_repeat=2)
SOLVE_PARTS = ("act_solve", "pg_grad")
STEP = 10**6  # an agent step after every schedule: full planning horizon, minimum stds, DiffTORI acting


@dataclass
class SpeedConfig:
    """What to time and how often."""

    sizes: tuple[str, ...] = ("paper",)
    """Network / planner sizes: paper (RLConfig defaults: latent 50, MLP 512, batch 512, 512 MPPI samples) and/or small (the small preset)."""
    quick: bool = False
    """Quick mode (a smoke run): few repetitions, written to runs/bench_quick. Explicit options still override it."""
    threads: int = 1
    """torch.set_num_threads for the whole run."""
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu or cuda[:N]."""
    repeats: int = 9
    """Timed, interleaved repetitions per part and precision (median reported)."""
    warmup: int = 2
    """Untimed calls per part and precision first."""
    seed: int = 0
    """Seed of the weights, the replay data and the observation."""
    return_grads: tuple[str, ...] = ("autograd", "manual", "compiled")
    """difftori.return_grad modes timed against each other on DiffTORI's solves (fp32); empty: skip that table."""
    agent_steps: bool = True
    """Also time one whole training agent step per agent, today's settings vs the fast ones (see STEP_SETTINGS)."""
    trained_iters: int = 30
    """Solver iterations of a third DiffTORI agent step ("fast, trained iters"): the fast settings with the solve capped at this
    many iterations, the median per-episode solver_iters of the rl100k default DiffTORI runs (train.csv, 765 episodes, plateau
    stop, small preset); random weights make the plateau stop run far longer than on a trained model. 0: skip."""
    fast_return_grad: str = "compiled"
    """difftori.return_grad of the fast DiffTORI agent step (compiled: the grids' setting; manual: no compile wait)."""
    out: str = str(DEFAULT_OUT)
    """Folder of rl_speed.json and rl_speed.md (written atomically)."""

    def __post_init__(self) -> None:
        self.sizes = tuple(self.sizes)
        self.return_grads = tuple(self.return_grads)
        check(all(m in RETURN_GRADS for m in self.return_grads), f"return_grads must be among {', '.join(RETURN_GRADS)}, got {self.return_grads}")
        check(bool(self.sizes) and all(s in PRESETS for s in self.sizes), f"sizes must be among {', '.join(PRESETS)}, got {self.sizes}")
        check(self.fast_return_grad in RETURN_GRADS, f"fast_return_grad must be one of {', '.join(RETURN_GRADS)}, got {self.fast_return_grad!r}")
        check(self.trained_iters >= 0, f"trained_iters must be >= 0, got {self.trained_iters}")
        check(self.threads >= 1, f"threads must be >= 1, got {self.threads}")
        check(self.repeats >= 1, f"repeats must be >= 1, got {self.repeats}")
        check(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}")


QUICK = SpeedConfig(quick=True, repeats=2, warmup=1, return_grads=("autograd", "manual"), fast_return_grad="manual",
                    out=str(REPO / "runs" / "bench_quick"))  # never over the committed results

STEP_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "tdmpc": {"today": {"precision": "fp32"}, "fast": {"precision": "bf16"}},
    "difftori": {"today": {"precision": "fp32", "return_grad": "autograd", "plateau_window": 0},
                 "fast": {"precision": "bf16", "return_grad": "compiled", "plateau_window": 5}},
}
"""Settings of the whole-agent-step table: the issue's starting point (fp32, autograd, fixed solver iterations)
and the fast options (each verified by learning curves / exactness tests before use in the grids)."""


def agent_config(agent: str, precision: str, sizes: str, device: torch.device, return_grad: str = "autograd",
                 plateau_window: int | None = None, max_iters: int | None = None) -> RLConfig:
    """RLConfig of one timed agent: the sizes' network/planner values, everything else default."""
    extra = dict(SMALL_SIZES) if sizes == "small" else {}
    if agent == "difftori":
        more = {} if plateau_window is None else {"plateau_window": plateau_window}
        if max_iters is not None:
            more["max_iters"] = max_iters
        extra["difftori"] = DiffTORIConfig(return_grad=return_grad, **more)
    return RLConfig(task=SPEC.task, agent=agent, precision=precision, preset=sizes, device=str(device), **extra)


def make_agents(agent: str, sizes: str, device: torch.device, seed: int,
                variants: dict[str, dict] | None = None) -> dict[str, TDMPC]:
    """Agents with the same weights, one per variant (default: fp32 and bf16; a variant is agent_config's keywords);
    reward / critic heads randomised (orthogonal, as the other layers)."""
    cls = DiffTORI if agent == "difftori" else TDMPC
    variants = variants or {p: {"precision": p} for p in PRECISIONS}
    torch.manual_seed(seed)
    agents = {name: cls(agent_config(agent, kw.get("precision", "fp32"), sizes, device, kw.get("return_grad", "autograd"),
                                     kw.get("plateau_window"), kw.get("max_iters")), SPEC)
              for name, kw in variants.items()}
    first = next(iter(agents.values()))
    m = first.model
    with torch.no_grad():
        for net in [m._reward, m._Q1, m._Q2] + ([m._Qs1, m._Qs2] if m.obs_critic else []):
            orthogonal_init(net[-1])
    first.model_target.load_state_dict(m.state_dict())
    for a in agents.values():
        if a is not first:
            a.load_state_dict(first.state_dict())
    return agents


def random_buffer(cfg: RLConfig, batch_size: int, seed: int) -> ReplayBuffer:
    """A replay buffer of random transitions, large enough for ``batch_size`` sequences."""
    length = 250
    episodes = max(4, -(-2 * batch_size // length))
    buf = ReplayBuffer(SPEC.obs_shape, SPEC.action_dim, episodes * (length + 1), cfg.horizon,
                       cfg.per_alpha, cfg.per_beta, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        buf.add_episode(rng.standard_normal((length + 1, *SPEC.obs_shape)).astype(np.float32),
                        rng.uniform(-1, 1, (length, SPEC.action_dim)).astype(np.float32), rng.random(length).astype(np.float32))
    return buf


def part_fn(part: str, agent: TDMPC, obs: torch.Tensor, buf: ReplayBuffer | None) -> Callable[[], object]:
    """The call timed for ``part`` on ``agent``."""
    if part == "update":
        return lambda: agent.update(buf, STEP)
    if part == "plan":
        return lambda: TDMPC.plan(agent, obs, t0=True, eval_mode=True, step=STEP)
    with torch.no_grad():  # one fixed start (the pi rollout), so every call solves the same problem
        U0 = agent.initial_plan(agent.model.encode(obs), agent.plan_horizon(STEP), eval_mode=True)
    if part == "act_solve":
        def act_solve():
            with torch.no_grad():
                return agent.solve(obs, STEP, eval_mode=True, backward="none", U0=U0)
        return act_solve
    if part == "pg_grad":
        def pg_grad():
            loss, _, _ = agent.pg_loss(obs, STEP, eval_mode=False, U0=U0)
            return torch.autograd.grad(loss, agent.pg_parameters(), allow_unused=True)
        return pg_grad
    raise ValueError(f"unknown part {part!r}; known: {sorted({p for ps in PARTS.values() for p in ps})}")


def agent_step_fn(agent: TDMPC, obs: np.ndarray, buf: ReplayBuffer) -> Callable[[], object]:
    """One training agent step after every schedule: act (exploration on) from a warm start, then one update."""
    def step():
        agent.act(obs, t0=False, eval_mode=False, step=STEP)
        return agent.update(buf, STEP)
    return step


def solver_iters(agent: DiffTORI, obs: torch.Tensor) -> int:
    """Iterations of the acting solve from the pi rollout (the same in both precisions: it runs in fp32 in both)."""
    with torch.no_grad():
        U0 = agent.initial_plan(agent.model.encode(obs), agent.plan_horizon(STEP), eval_mode=True)
        _, info = agent.solve(obs, STEP, eval_mode=True, backward="none", U0=U0)
    return int(info.iterations.max())


def run(cfg: SpeedConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every part of every agent at each of ``cfg.sizes``; writes ``rl_speed.json`` / ``.md`` to ``cfg.out``."""
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    say = progress or (lambda _msg: None)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for sizes in cfg.sizes:
        for agent_name, parts in PARTS.items():
            for part in parts:
                say(f"{sizes} {agent_name} {part}")
                agents = make_agents(agent_name, sizes, device, cfg.seed)  # fresh: earlier parts' updates changed the weights
                obs = agents["fp32"].obs_tensor(np.random.default_rng(cfg.seed).standard_normal(SPEC.obs_shape).astype(np.float32))
                c, batch = agents["fp32"].cfg, agents["fp32"].res.batch_size
                bufs = {p: random_buffer(a.cfg, batch, cfg.seed) for p, a in agents.items()} if part == "update" else {}
                rows_per_pass = {"update": batch, "plan": c.num_samples + int(c.mixture_coef * c.num_samples)}
                fns = {p: part_fn(part, a, obs, bufs.get(p)) for p, a in agents.items()}
                times = interleaved_timings(fns, repeats=cfg.repeats, warmup=cfg.warmup, device=device)
                ms = {p: 1e3 * median(times[p]) for p in PRECISIONS}
                rows.append({
                    "sizes": sizes, "agent": agent_name, "part": part, "batch": rows_per_pass.get(part, 1),
                    "fp32_ms": ms["fp32"], "bf16_ms": ms["bf16"], "ratio": ms["bf16"] / ms["fp32"],
                    "solver_iters": {p: solver_iters(a, obs) for p, a in agents.items()} if part in SOLVE_PARTS else None,
                    "repeats": cfg.repeats, "times_ms": {p: [1e3 * t for t in times[p]] for p in PRECISIONS},
                })
    grad_rows: list[dict[str, Any]] = []
    for sizes in cfg.sizes if cfg.return_grads else ():
        for part in SOLVE_PARTS:
            say(f"{sizes} difftori {part} by return_grad")
            agents = make_agents("difftori", sizes, device, cfg.seed, {m: {"return_grad": m} for m in cfg.return_grads})
            first = next(iter(agents.values()))
            obs = first.obs_tensor(np.random.default_rng(cfg.seed).standard_normal(SPEC.obs_shape).astype(np.float32))
            fns = {m: part_fn(part, a, obs, None) for m, a in agents.items()}
            times = interleaved_timings(fns, repeats=cfg.repeats, warmup=cfg.warmup + 1, device=device)  # +1: compile
            ms = {m: 1e3 * median(times[m]) for m in cfg.return_grads}
            grad_rows.append({"sizes": sizes, "part": part, "ms": ms, "solver_iters": solver_iters(first, obs),
                              "speedup": {m: ms[cfg.return_grads[0]] / ms[m] for m in cfg.return_grads},
                              "times_ms": {m: [1e3 * t for t in times[m]] for m in cfg.return_grads}})
    step_rows: list[dict[str, Any]] = []
    for sizes in cfg.sizes if cfg.agent_steps else ():
        for agent_name, settings in STEP_SETTINGS.items():
            say(f"{sizes} {agent_name} agent step, today vs fast")
            if agent_name == "difftori":
                fast = {**settings["fast"], "return_grad": cfg.fast_return_grad}
                settings = {**settings, "fast": fast}
                if cfg.trained_iters:
                    settings["trained"] = {**fast, "max_iters": cfg.trained_iters}
            agents = make_agents(agent_name, sizes, device, cfg.seed, settings)
            obs = np.random.default_rng(cfg.seed).standard_normal(SPEC.obs_shape).astype(np.float32)
            fns = {n: agent_step_fn(a, obs, random_buffer(a.cfg, a.res.batch_size, cfg.seed)) for n, a in agents.items()}
            for a in agents.values():
                a.reset()
                a.act(obs, t0=True, eval_mode=False, step=STEP)
                a.on_episode_end(STEP)  # forget the warm-up's acting metrics (and DiffTORI's PG sum)
            times = interleaved_timings(fns, repeats=cfg.repeats, warmup=cfg.warmup + 1, device=device)  # +1: compile
            ms = {n: 1e3 * median(times[n]) for n in settings}
            ends = {n: a.on_episode_end(STEP) for n, a in agents.items()}  # the timed steps' metrics
            iters = {n: float(m["solver_iters"]) for n, m in ends.items() if "solver_iters" in m}
            step_rows.append({"sizes": sizes, "agent": agent_name, "settings": settings, "ms": ms,
                              "speedup": ms["today"] / ms["fast"], "solver_iters": iters or None,
                              "speedup_trained": ms["today"] / ms["trained"] if "trained" in ms else None,
                              "times_ms": {n: [1e3 * t for t in times[n]] for n in settings}})
        today_tdmpc = next(r["ms"]["today"] for r in step_rows if r["sizes"] == sizes and r["agent"] == "tdmpc")
        for r in step_rows:
            if r["sizes"] == sizes:
                r["fast_vs_today_tdmpc"] = r["ms"]["fast"] / today_tdmpc
                if "trained" in r["ms"]:
                    r["trained_vs_today_tdmpc"] = r["ms"]["trained"] / today_tdmpc
    results = {"meta": run_meta(cfg.threads, device, quick=cfg.quick, wall_s=time.perf_counter() - t_start,
                                config=to_dict(cfg)), "rows": rows, "return_grad_rows": grad_rows, "step_rows": step_rows}
    out = Path(cfg.out)
    atomic_write_json(out / "rl_speed.json", results)
    atomic_write_text(out / "rl_speed.md", markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table (median ms per precision and the bf16/fp32 ratio per part).

    ``batch``: rows of each network pass (update: replay batch; plan: MPPI samples incl. pi's; solves: 1)."""
    meta = results["meta"]
    lines = [
        "# RL agents: bf16 autocast vs fp32", "",
        f"{meta['date']}, torch {meta['torch']}, {meta['processor']}, device {meta['device']}, {meta['threads']} thread(s)"
        + (", **quick run** (few repetitions)" if meta.get("quick") else "") + ". Median of the interleaved repetitions; "
        "ratio < 1: bf16 is faster. batch: rows of each network pass (replay batch, MPPI samples incl. pi's, 1 for the "
        "solves). The acting and policy-gradient solves run in fp32 in both precisions.", "",
        "| sizes | agent | part | batch | fp32 ms | bf16 ms | bf16/fp32 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['sizes']} | {r['agent']} | {r['part']} | {r['batch']} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} | {r['ratio']:.2f} |")
    grad_rows = results.get("return_grad_rows") or []
    if grad_rows:
        modes = list(grad_rows[0]["ms"])
        lines += ["", "## DiffTORI's solves by `difftori.return_grad` (fp32, batch 1)", "",
                  f"The gradient of the predicted return in the solver's no-graph iterations: {', '.join(modes)}. "
                  f"Median ms per call; speedup = {modes[0]} ms / mode ms. The policy-gradient solve's differentiable "
                  "tail uses autograd in every mode.", "",
                  "| sizes | part | solver iters | " + " | ".join(f"{m} ms" for m in modes) + " | "
                  + " | ".join(f"{m} speedup" for m in modes[1:]) + " |",
                  "|---|---|---:|" + "---:|" * (2 * len(modes) - 1)]
        for r in grad_rows:
            lines.append(f"| {r['sizes']} | {r['part']} | {r['solver_iters']} | " + " | ".join(f"{r['ms'][m]:.1f}" for m in modes)
                         + " | " + " | ".join(f"{r['speedup'][m]:.2f}" for m in modes[1:]) + " |")
    step_rows = results.get("step_rows") or []
    if step_rows:
        lines += ["", "## One training agent step: today's settings vs the fast ones", "",
                  "act (exploration on, warm-started) + one update, after every schedule. today: fp32, and for DiffTORI "
                  "the autograd return gradient and a fixed number of solver iterations; fast: bf16 autocast, and for "
                  "DiffTORI the compiled return gradient and the plateau stop (random weights: the plateau stop's "
                  "iteration count is that of this problem, real runs report theirs in train.csv). Median ms; "
                  "fast / today TD-MPC: the fast step against today's fp32 TD-MPC step. trained iters (DiffTORI): the fast "
                  "settings with the solve capped at the iteration count the plateau stop reaches on trained models "
                  "(the median of the rl100k DiffTORI runs' train.csv; the cost of everything else is measured here).", "",
                  "| sizes | agent | today ms | fast ms | speedup | fast / today TD-MPC | trained iters ms | speedup | "
                  "trained iters / today TD-MPC | solver iters (today / fast / trained) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in step_rows:
            it = r.get("solver_iters") or {}
            its = " / ".join("-" if it.get(n) is None else f"{it[n]:.0f}" for n in ("today", "fast", "trained")) if it else "-"
            tr = (f"{r['ms']['trained']:.1f} | {r['speedup_trained']:.2f} | {r['trained_vs_today_tdmpc']:.2f}"
                  if r.get("speedup_trained") else "- | - | -")
            lines.append(f"| {r['sizes']} | {r['agent']} | {r['ms']['today']:.1f} | {r['ms']['fast']:.1f} | "
                         f"{r['speedup']:.2f} | {r['fast_vs_today_tdmpc']:.2f} | {tr} | {its} |")
    return "\n".join(lines) + "\n"


def parse_config(argv: list[str] | None = None) -> SpeedConfig:
    return parse_bench_config(SpeedConfig, QUICK, __doc__.split("\n\n")[0], argv)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    results = run(cfg, progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    print(markdown(results))
    print(f"wrote {Path(cfg.out) / 'rl_speed.json'} and {Path(cfg.out) / 'rl_speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
