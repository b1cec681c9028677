"""DiffTORI vs TD-MPC on DeepMind Control: tasks x seeds x variants, a grid of the sweep runner (``difftori.sweep``).

Each run is a cell of ``difftori sweep`` (a Ray task running ``difftori rl train`` in its own process,
``--threads`` torch threads, up to ``--jobs`` at once on a local Ray cluster, or on the cluster at
``--address``), in ``RUN_ROOT/cells/<cell id>/`` (the run itself under ``run/<task>/<agent>/seed<s>/<time>``).
Variants: ``tdmpc`` (MPPI planner baseline), ``difftori-episode`` (original: PG accumulated per episode),
``difftori-replay`` (batched PG on replay), both with the library's default DiffTORI settings,
``difftori-faithful`` (the original: episode PG, pi-rollout init, clamp inside the cost) and two diagnostics
(``difftori-actplanner``, ``difftori-nopg``). A cell's id follows from its resolved options, so finished
runs are reused, interrupted ones resumed from their checkpoint, and changed options start new cells
(``--fresh`` starts every cell over). Runs of the earlier layout (``RUN_ROOT/<variant>/<task>/seed<s>`` with
an ``args.json`` equal to the current options) are adopted by their cell, so nothing is run twice.

Outputs in ``--out-dir`` (default ``benchmarks/results``): ``rl_compare.csv`` (every evaluation:
task, variant, seed, env step, return), ``rl_compare.png`` (curves, mean and spread over seeds),
``rl_compare.md`` (final returns beside METHOD.md's reference TD-MPC numbers and a random policy,
wall-clock ms per env step, crash / NaN flags) and ``rl_compare.json`` (the same + config). The sweep's
own report (``results.csv``, ``summary.md``, plots) is in ``RUN_ROOT``. After each run, a closing-evaluation
cell (``rl_final_eval.py``) evaluates its final checkpoint on ``--final-eval-episodes`` fixed env seeds shared by
every variant and seed (``rl_compare_final_eval.csv``, a column and a second paired table in the Markdown).

Presets (the CLI's, ``difftori.rl.config.preset_values``): ``paper`` = the published sizes and
schedules (GPU scale); ``small`` (alias ``cpu``) = small networks (MLP 64, latent 32, batch 64, 64
planner samples) with the seed phase, DiffTORI start and the schedules scaled to the budget
(``--seed-frac`` etc.), so a run of a few 10k env steps fits a CPU.

    python benchmarks/rl_compare.py --tasks cartpole-swingup reacher-easy --seeds 1 2 --steps 20000 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from difftori.envs import dmc
from difftori.rl.config import SMALL_FRACTIONS, preset_values
from difftori.sweep.archive import archive_done, restore
from difftori.sweep.grid import Cell, rl_cell, script_cell
from difftori.sweep.runner import SweepOptions, cell_dir, read_state, run_sweep
from difftori.utils.config import ConfigError, add_dataclass_args, check, dataclass_from_args, key_values, to_dict
from difftori.utils.io import atomic_write_json, atomic_write_text
from difftori.utils.runs import read_csv

__all__ = ["CompareConfig", "VARIANTS", "REFERENCE_TDMPC", "run_args", "cells", "final_eval_cell", "sweep_cells", "run", "main"]

VARIANTS: dict[str, dict[str, Any]] = {
    "tdmpc": {"agent": "tdmpc"},
    "difftori-episode": {"agent": "difftori", "label": "episode", "difftori.pg_mode": "episode"},
    "difftori-replay": {"agent": "difftori", "label": "replay", "difftori.pg_mode": "replay"},
    "difftori-faithful": {"agent": "difftori", "label": "faithful", "difftori.pg_mode": "episode",
                          "difftori.init": "pi", "difftori.bound_mode": "clamp_in_cost", "difftori.plateau_window": 0},
    "difftori-actplanner": {"agent": "difftori", "label": "actplanner", "difftori.pg_mode": "episode",
                            "difftori.act": "planner"},
    "difftori-explore": {"agent": "difftori", "label": "explore", "difftori.pg_mode": "episode",
                         "difftori.explore": "planner"},
    "difftori-nopg": {"agent": "difftori", "label": "nopg", "difftori.pg_mode": "episode", "difftori.pg_lr": 1e-12},
}
"""Variant name -> trainer options."""

REFERENCE_TDMPC: dict[str, tuple[int, int]] = {
    "cartpole-swingup-sparse": (558, 564), "cheetah-run": (824, 830), "cup-catch": (984, 980),
    "finger-spin": (714, 826), "finger-turn-easy": (904, 917), "finger-turn-hard": (610, 873),
    "hopper-stand": (916, 954), "pendulum-swingup": (585, 615), "quadruped-run": (856, 894),
    "quadruped-walk": (915, 951), "reacher-easy": (987, 984), "reacher-hard": (962, 970),
    "walker-run": (820, 824), "walker-stand": (994, 992), "walker-walk": (978, 978),
}
"""METHOD.md: TD-MPC returns from state (3 seeds) at 500k / 1M env steps."""


@dataclass
class CompareConfig:
    """Settings of one comparison."""

    tasks: tuple[str, ...] = ("cartpole-swingup", "reacher-easy")
    """DMC tasks."""
    seeds: tuple[int, ...] = (1, 2)
    """Seeds per task and variant."""
    variants: tuple[str, ...] = ("tdmpc", "difftori-episode", "difftori-replay")
    """Agents / variants: tdmpc, difftori-episode, difftori-replay, difftori-faithful, difftori-actplanner
    (MPPI acts, the solver only trains the model through PG), difftori-nopg (solver acts, no PG: a diagnostic)."""
    max_seeds: tuple[str, ...] = ()
    """Fewer seeds for some variants, as ``VARIANT=N`` (that variant runs only the first N of ``seeds``), e.g.
    ``difftori-faithful=1``: an expensive reference variant beside the full-seed comparison."""
    steps: int = 20_000
    """ENV steps per run."""
    preset: Literal["small", "cpu", "paper"] = "small"
    """small (``cpu`` is an alias): the CLI's small preset, small networks, schedules scaled to the budget; paper: published settings."""
    seed_frac: float = SMALL_FRACTIONS["seed_steps"]
    """cpu preset: random-action seed phase as a fraction of the budget (paper: 5000 agent steps)."""
    pg_start_frac: float = SMALL_FRACTIONS["pg_start_step"]
    """cpu preset: DiffTORI acting / PG start as a fraction of the budget (paper: 6000 agent steps)."""
    schedule_frac: float = SMALL_FRACTIONS["schedule_steps"]
    """cpu preset: horizon / exploration schedule length as a fraction of the budget (paper: 25000 agent steps)."""
    eval_freq: Optional[int] = None
    """Evaluate every this many env steps; None -> steps / 4."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    episode_length: int = 1000
    """Env steps per episode."""
    jobs: int = 2
    """Runs in parallel (the local Ray cluster gets jobs x threads CPUs; with --address, the most cells at once)."""
    threads: int = 1
    """torch threads per run."""
    timeout_s: Optional[float] = None
    """Kill a run after this many seconds (it is then flagged 'timeout'; rerun to resume it)."""
    run_root: Path = Path("runs/rl_compare")
    """The sweep directory: cells (with their runs) and the sweep's report."""
    address: Optional[str] = None
    """Run the cells on this Ray cluster (HOST:PORT of `ray start --head`) instead of a local one."""
    out_dir: Path = Path("benchmarks/results")
    """Where rl_compare.{csv,png,md,json} go."""
    fresh: bool = False
    """Start every run over instead of reusing finished / resuming interrupted ones."""
    retry_failed: bool = False
    """Run cells that failed in an earlier invocation again (resumed from their checkpoint)."""
    report_only: bool = False
    """Run nothing: archive the finished cells and write the tables / plots from what is on disk (e.g. while
    the grid still runs, or at the end of a session before its remaining cells continue elsewhere)."""
    replace_tables: bool = False
    """Write this call's tables even when ``rl_compare.json`` in --out-dir holds runs outside its grid (a subset call,
    e.g. one variant or seed to finish, otherwise leaves a larger grid's tables as they are and prints its own)."""
    random_episodes: int = 5
    """Episodes of the random-policy reference per task (0 skips it)."""
    final_eval_episodes: int = 20
    """Closing evaluation: each finished run's final checkpoint acts for this many episodes on fixed env seeds shared
    by every variant and seed of a task (a cell of its own after the run; 0: none). Far less noisy than the last
    periodic evaluation (``eval_episodes`` fresh seeds per run); not part of the training cells' ids."""
    final_eval_seed: int = 100_000
    """Env seed of the closing evaluation's first episode (episode i: this + i), the same for every run."""
    return_grad: Literal["autograd", "manual", "compiled"] = "compiled"
    """difftori.return_grad of the DiffTORI runs: how the acting solves get the predicted return's gradient (equal
    values to float rounding, so not part of a cell's id; compiled is the fastest on CPU)."""
    extra: str = ""
    """Extra ``difftori rl train`` options for every run (one shell-quoted string), e.g. --extra "--difftori.max-iters 50"."""

    def __post_init__(self) -> None:
        self.run_root, self.out_dir = Path(self.run_root), Path(self.out_dir)
        self.tasks, self.seeds, self.variants = tuple(self.tasks), tuple(self.seeds), tuple(self.variants)
        check(len(self.tasks) > 0 and len(self.seeds) > 0 and len(self.variants) > 0, "need at least one task, seed and variant")
        for t in self.tasks:
            check(dmc.canonical(t) is not None, f"unknown DMC task {t!r}; known: {', '.join(sorted(dmc.TASKS))}")
        self.tasks = tuple(dmc.canonical(t) for t in self.tasks)
        for v in self.variants:
            check(v in VARIANTS, f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
        self.max_seeds = tuple(self.max_seeds)
        self.seeds_of(self.variants[0])  # parses (and checks) every max_seeds entry
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.preset in ("small", "cpu", "paper"), f"preset must be small (alias cpu) or paper, got {self.preset!r}")
        check(0 <= self.seed_frac <= self.pg_start_frac <= 1, "need 0 <= seed_frac <= pg_start_frac <= 1")
        check(0 < self.schedule_frac <= 1, "schedule_frac must be in (0, 1]")
        check(self.eval_freq is None or self.eval_freq >= 1, "eval_freq must be >= 1")
        check(self.eval_episodes >= 1, "eval_episodes must be >= 1 (the comparison needs evaluations)")
        check(self.jobs >= 1 and self.threads >= 1, "jobs and threads must be >= 1")
        check(self.timeout_s is None or self.timeout_s > 0, "timeout_s must be > 0")
        check(self.final_eval_episodes >= 0, f"final_eval_episodes must be >= 0, got {self.final_eval_episodes}")

    def seeds_of(self, variant: str) -> tuple[int, ...]:
        """The seeds ``variant`` runs (all of ``seeds`` unless ``max_seeds`` limits it)."""
        def limit(name: str, n: str) -> int:
            if name not in self.variants or not n.isdigit() or int(n) < 1:
                raise ValueError("")
            return int(n)

        limits = key_values(self.max_seeds, "max_seeds entries are VARIANT=N with a variant of this grid and N >= 1", limit)
        return self.seeds[: limits.get(variant, len(self.seeds))]


# ----------------------------------------------------------------------------------- the grid
LAST_EVALS = 3
"""Evaluations averaged in the secondary, less noisy column (the final return stays the headline number)."""


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _options(cfg: CompareConfig, task: str, variant: str, seed: int, runner: dict[str, Any]) -> list[str]:
    ar = dmc.action_repeat_for(task)
    opts: dict[str, Any] = {
        "task": task, "seed": seed, "steps": cfg.steps, "episode_length": cfg.episode_length,
        "eval_freq": cfg.eval_freq or max(cfg.steps // 4, 1), "eval_episodes": cfg.eval_episodes,
        "checkpoint_freq": max(cfg.steps // 4, 1), **runner,
    }
    if cfg.preset in ("small", "cpu"):
        agent_steps = max(cfg.steps // ar, 1)
        opts["preset"] = "small"
        opts.update(preset_values("small", task, cfg.steps))  # the CLI's preset, spelled out
        opts.update({  # the benchmark's fractions (default: the preset's own)
            "seed_steps": int(cfg.seed_frac * agent_steps),
            "difftori.pg_start_step": int(cfg.pg_start_frac * agent_steps),
            "schedule_steps": max(int(cfg.schedule_frac * agent_steps), 1),
        })
    opts.update(VARIANTS[variant])
    if opts["agent"] == "difftori":
        opts["difftori.return_grad"] = cfg.return_grad
    args = ["rl", "train"]
    for k, v in opts.items():
        args += [_flag(k), str(v)]
    return args + shlex.split(cfg.extra)


def run_args(cfg: CompareConfig, task: str, variant: str, seed: int) -> list[str]:
    """``difftori rl train`` options of one run (threads, device and paths are the sweep runner's)."""
    return _options(cfg, task, variant, seed, {})


def cells(cfg: CompareConfig) -> list[Cell]:
    """The grid: one sweep cell per task, seed and variant (options checked here, before anything is written)."""
    return [rl_cell(t, v, s, run_args(cfg, t, v, s)[6:]) for t in cfg.tasks for s in cfg.seeds for v in cfg.variants
            if s in cfg.seeds_of(v)]


FINAL_EVAL_SCRIPT = Path(__file__).resolve().parent / "rl_final_eval.py"


def final_eval_cell(cfg: CompareConfig, train: Cell) -> Cell:
    """The closing evaluation of ``train``'s final checkpoint (``rl_final_eval.py``, a script cell depending on it)."""
    n, seed = cfg.final_eval_episodes, cfg.final_eval_seed
    return script_cell(FINAL_EVAL_SCRIPT, train.task, f"{train.variant}-final{n}", train.seed,
                       ["--episodes", n, "--seed", seed], {"episodes": n, "seed": seed, "act": "agent"},
                       steps=n, deps={"checkpoint": train.id})


def sweep_cells(cfg: CompareConfig, grid: list[Cell]) -> list[tuple[Cell, Optional[Cell]]]:
    """Each training cell with its closing-evaluation cell (None when ``final_eval_episodes`` is 0)."""
    return [(c, final_eval_cell(cfg, c) if cfg.final_eval_episodes > 0 else None) for c in grid]


def _adopt_legacy(cfg: CompareConfig, cell: Cell) -> bool:
    """Make a run of the earlier layout (``RUN_ROOT/<variant>/<task>/seed<s>``, whose ``args.json`` holds the same
    options) the cell's run: its folder becomes the cell's ``run/`` (a link), finished runs count as done."""
    legacy = cfg.run_root / cell.variant / cell.task / f"seed{cell.seed}"
    d = cell_dir(cfg.run_root, cell.id)
    if not (legacy / "args.json").exists() or (d / "run").exists():
        return False
    runner = {"num_threads": cfg.threads, "run_root": str(legacy), "progress": "false"}
    if json.loads((legacy / "args.json").read_text()) != _options(cfg, cell.task, cell.variant, cell.seed, runner):
        return False
    d.mkdir(parents=True, exist_ok=True)
    (d / "run").symlink_to(legacy.absolute(), target_is_directory=True)
    runs = sorted((p.parent for p in legacy.rglob("final.json")), key=lambda p: p.name)
    if runs and json.loads((runs[-1] / "final.json").read_text()).get("step", 0) >= cfg.steps:
        atomic_write_json(d / "state.json", {"status": "done", "adopted_from": str(legacy)})
        atomic_write_json(d / "result.json", {"run_dir": str(Path("run") / runs[-1].relative_to(legacy)), "adopted_from": str(legacy)})
    return True


# ----------------------------------------------------------------------------------- results
def _finite_floats(rows: list[dict[str, str]]) -> bool:
    """True if every numeric cell is finite (empty cells are fine)."""
    for row in rows:
        for v in row.values():
            if v in (None, ""):
                continue
            try:
                x = float(v)
            except ValueError:
                continue
            if not math.isfinite(x):
                return False
    return True


def summarise_run(cfg: CompareConfig, cell: Cell, state: dict[str, Any]) -> dict[str, Any]:
    """Final return, timings and flags of one cell (from its state and run directory)."""
    d = cell_dir(cfg.run_root, cell.id)
    if state.get("run_dir"):
        run_dir: Optional[Path] = d / state["run_dir"]
    else:  # unfinished: its newest run so far
        found = sorted((p.parent for p in (d / "run").rglob("config.json")), key=lambda p: p.name) if (d / "run").exists() else []
        run_dir = found[-1] if found else None
    out: dict[str, Any] = {"task": cell.task, "variant": cell.variant, "seed": cell.seed, "cell": cell.id,
                           "run_dir": str(run_dir) if run_dir else None, "flags": []}
    if state["status"] == "interrupted" and "timeout" in state.get("error", ""):
        out["flags"].append("timeout")
    elif state["status"] in ("failed", "interrupted"):
        rc = state.get("returncode")
        out["flags"].append(f"crash(rc={rc})" if rc is not None else state["status"])
        out["error"] = state.get("error", "")
    if run_dir is None:
        out["flags"].append("not-run" if state["status"] == "pending" else "no-run-dir")
        return out
    train, evals = read_csv(run_dir / "train.csv"), read_csv(run_dir / "eval.csv")
    final_path = run_dir / "final.json"
    final = json.loads(final_path.read_text()) if final_path.exists() else {}
    if not final:
        out["flags"].append("unfinished")
    if not (_finite_floats(train) and _finite_floats(evals)):
        out["flags"].append("nan")
    skipped = [float(t["pg_skipped_total"]) for t in train if t.get("pg_skipped_total") not in (None, "")]
    if skipped and skipped[-1] > 0:
        out["flags"].append(f"pg_skipped={int(skipped[-1])}")
    ar = dmc.action_repeat_for(cell.task)
    config = json.loads((run_dir / "config.json").read_text())
    pg_start_env = int(config.get("difftori", {}).get("pg_start_step", 0)) * ar
    seed_env = int(config.get("seed_steps", 0)) * ar

    def ms_per_step(rows: list[dict[str, str]]) -> float:
        sps = [float(t["env_steps_per_s"]) for t in rows if t.get("env_steps_per_s") not in (None, "")]
        sps = [s for s in sps if s > 0]
        return float(1000.0 * np.mean([1.0 / s for s in sps])) if sps else float("nan")

    # Agent phase: after DiffTORI starts (difftori) / after the seed phase (tdmpc); episode start = step - length.
    start = pg_start_env if config.get("agent") == "difftori" else seed_env
    if config.get("agent") == "difftori" and final and not final.get("solver_acted", True):
        out["flags"].append("solver-never-acted")
    agent_rows = [t for t in train if float(t["step"]) - float(t.get("episode_length", 0)) * ar >= start]
    out.update({
        "eval_steps": [int(float(e["step"])) for e in evals],
        "eval_returns": [float(e["episode_return"]) for e in evals],
        "final_return": final.get("episode_return", float("nan")),
        "final_step": final.get("step"),
        "train_time_s": final.get("train_time_s"),
        "ms_per_env_step": ms_per_step(agent_rows),
        "ms_per_env_step_all": ms_per_step(train),
        "wall_s": state.get("wall_s"),
    })
    for key in ("solver_iters", "solver_converged", "act_saturated", "pg_saturated", "pg_grad_norm"):
        vals = [float(t[key]) for t in train if t.get(key) not in (None, "")]
        if vals:
            out[key] = float(np.mean(vals))
    stds = [float(t["explore_std"]) for t in agent_rows if t.get("explore_std") not in (None, "")]
    if stds:  # logged by runs since 2026-11-30
        out["explore_std"] = float(np.mean(stds))
    return out


def summarise_final_eval(cfg: CompareConfig, cell: Cell, state: dict[str, Any]) -> dict[str, Any]:
    """The closing evaluation's result (``final_eval_*`` keys; none while it has not run, an error if it failed)."""
    out: dict[str, Any] = {"final_eval_cell": cell.id}
    if state.get("status") != "done" or not state.get("run_dir"):
        if state.get("status") == "failed":
            out["final_eval_error"] = state.get("error", "")
        return out
    res = json.loads((cell_dir(cfg.run_root, cell.id) / state["run_dir"] / "final.json").read_text())
    out.update(final_eval_return=float(res["episode_return"]), final_eval_std=float(res["return_std"]),
               final_eval_returns=[float(r) for r in res["returns"]], final_eval_step=int(res["step"]))
    return out


def random_returns(cfg: CompareConfig) -> dict[str, float]:
    """Mean return of uniformly random actions per task (the trainer's evaluation seeds)."""
    if cfg.random_episodes <= 0:
        return {}
    from difftori.rl.config import RLConfig
    from difftori.rl.trainer import random_policy_return

    return {t: random_policy_return(RLConfig(task=t, episode_length=cfg.episode_length), episodes=cfg.random_episodes,
                                    seed=cfg.seeds[0])["episode_return"] for t in cfg.tasks}


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}"


def markdown(cfg: CompareConfig, summaries: list[dict[str, Any]], rand: dict[str, float], meta: dict[str, Any]) -> str:
    """The comparison table (final return mean +- std over seeds; reference TD-MPC; ms per env step; flags)."""
    n_fe = cfg.final_eval_episodes
    fe_head = f" final model, {n_fe} episodes on fixed seeds (mean +- std; per seed) |" if n_fe > 0 else ""
    lines = [
        "# DiffTORI vs TD-MPC (DeepMind Control, state observations)",
        "",
        f"Budget: **{cfg.steps} env steps** per run, preset `{cfg.preset}`, seeds {list(cfg.seeds)}"
        + "".join(f" ({v}: seeds {list(cfg.seeds_of(v))})" for v in cfg.variants if cfg.seeds_of(v) != cfg.seeds) + ", "
        f"{cfg.eval_episodes} eval episodes; {meta['jobs']} runs in parallel x {cfg.threads} torch thread(s) on "
        f"{meta['cpu_count']} CPU cores ({meta['machine']}); total wall clock {meta['wall_s'] / 60:.1f} min. "
        "Reference TD-MPC numbers are METHOD.md's (paper sizes, 500k / 1M env steps); they are NOT comparable in budget.",
        "",
        f"| task | variant | final return (mean +- std) | per seed |{fe_head} mean of the last {LAST_EVALS} evaluations | random policy | TD-MPC ref 500k / 1M | ms / env step (agent phase) | solver iters | converged | acting first action saturated | PG first action saturated | explore std | flags |",
        "|---|---|---|---|" + "---|" * (bool(fe_head) + 10),
    ]
    for task in cfg.tasks:
        ref = REFERENCE_TDMPC.get(task)
        for v in cfg.variants:
            rows = [s for s in summaries if s["task"] == task and s["variant"] == v]
            finals = [s["final_return"] for s in rows if s.get("final_return") is not None and math.isfinite(s["final_return"])]
            mean = f"{np.mean(finals):.1f} +- {np.std(finals):.1f} (n={len(finals)})" if finals else "-"
            per_seed = ", ".join(_fmt(s.get("final_return")) for s in rows)
            ms = [s["ms_per_env_step"] for s in rows if s.get("ms_per_env_step") is not None and math.isfinite(s["ms_per_env_step"])]
            flags = sorted({f for s in rows for f in s["flags"]})

            def avg(key: str, nd: int = 2) -> str:
                xs = [s[key] for s in rows if key in s]
                return _fmt(float(np.mean(xs)), nd) if xs else "-"

            lasts = [float(np.mean(s["eval_returns"][-LAST_EVALS:])) for s in rows
                     if len(s.get("eval_returns") or []) >= LAST_EVALS and "unfinished" not in s["flags"]]
            last = f"{np.mean(lasts):.1f} +- {np.std(lasts):.1f} (n={len(lasts)})" if lasts else "-"
            fe = [s["final_eval_return"] for s in rows if "final_eval_return" in s]
            fe_col = ((f" {np.mean(fe):.1f} +- {np.std(fe):.1f} (n={len(fe)}; "
                       + ", ".join(_fmt(s.get("final_eval_return")) for s in rows) + ") |") if fe else " - |") if n_fe > 0 else ""
            lines.append(
                f"| {task} | {v} | {mean} | {per_seed} |{fe_col} {last} | {_fmt(rand.get(task))} | "
                f"{f'{ref[0]} / {ref[1]}' if ref else '- (not in the paper)'} | {_fmt(float(np.mean(ms)), 1) if ms else '-'} | "
                f"{avg('solver_iters', 1)} | {avg('solver_converged')} | {avg('act_saturated')} | {avg('pg_saturated')} | {avg('explore_std', 3)} | {', '.join(flags) or 'ok'} |"
            )
    lines += ["", "Columns: `ms / env step` = wall clock of collection + updates (+ PG step) per env step, averaged over "
              "episodes after the seed phase (TD-MPC) / after DiffTORI starts acting (DiffTORI), without evaluation. "
              "`solver iters` / `converged` = mean LM iterations and converged fraction of DiffTORI's acting solves; "
              "`acting` / `PG first action saturated` = fraction of first-action coordinates of the acting solve's / the PG "
              "solve's U* at the [-1, 1] bounds, where the policy gradient is exactly zero. `explore std` = mean std of the "
              "training noise on the executed action in the agent phase (MPPI elites' for TD-MPC; runs before 2026-11-30 did not log it). Flags: crash, timeout, nan (non-finite value in train/eval logs), "
              "pg_skipped=N (non-finite PG steps skipped), unfinished, not-run (a cell of the grid not started yet), solver-never-acted (the budget ended before DiffTORI's start: the run is plain TD-MPC). "
              f"`mean of the last {LAST_EVALS} evaluations`: per run, then mean +- std over finished runs (less noisy than "
              "one final evaluation; the final return stays the headline number)."
              + (f" `final model, {n_fe} episodes`: the closing evaluation of each finished run's final checkpoint on env "
                 f"seeds {cfg.final_eval_seed}..{cfg.final_eval_seed + n_fe - 1}, the same for every variant and seed "
                 f"(`{cfg.eval_episodes}` fresh seeds per periodic evaluation are few: one failed episode moves a "
                 "run's final return by a fifth of its range)." if n_fe > 0 else ""), ""]
    lines += paired_differences(cfg, summaries)
    if n_fe > 0:
        lines += paired_differences(cfg, summaries, key="final_eval_return",
                                    title=f"the final model on {n_fe} fixed episodes")
    return "\n".join(lines)


def paired_differences(cfg: CompareConfig, summaries: list[dict[str, Any]], key: str = "final_return",
                       title: str = "final return") -> list[str]:
    """Each DiffTORI variant minus TD-MPC on ``key`` (default: the final return), paired by seed (same evaluation
    seeds), per task, and the tasks won / tied (|difference of task means| < 1% of TD-MPC's) / lost: the issue's
    target is >= 2 of 3 won or tied."""
    if "tdmpc" not in cfg.variants:
        return []
    def finals(task: str, v: str) -> dict[int, float]:
        return {s["seed"]: s[key] for s in summaries if s["task"] == task and s["variant"] == v
                and "unfinished" not in s["flags"] and s.get(key) is not None and math.isfinite(s[key])}

    lines = [f"## Paired differences ({title}, variant - tdmpc, same seed)", "",
             "| variant | task | difference (mean +- std over seeds) | seeds | task means (variant / tdmpc) | outcome |",
             "|---|---|---|---|---|---|"]
    for v in [v for v in cfg.variants if v != "tdmpc"]:
        tally = {"won": 0, "tied": 0, "lost": 0}
        for task in cfg.tasks:
            a, b = finals(task, v), finals(task, "tdmpc")
            common = sorted(set(a) & set(b))
            if not common:
                continue
            d = [a[k] - b[k] for k in common]
            ma, mb = float(np.mean([a[k] for k in common])), float(np.mean([b[k] for k in common]))
            outcome = "tied" if abs(ma - mb) < 0.01 * max(abs(mb), 1.0) else ("won" if ma > mb else "lost")
            tally[outcome] += 1
            lines.append(f"| {v} | {task} | {np.mean(d):+.1f} +- {np.std(d):.1f} | {len(common)} | {ma:.1f} / {mb:.1f} | {outcome} |")
        lines.append(f"| {v} | **tasks won / tied / lost** | | | | **{tally['won']} / {tally['tied']} / {tally['lost']}** |")
    return lines + [""]


def run(cfg: CompareConfig) -> dict[str, Any]:
    """Run (or reuse) every cell on the sweep runner, then write the CSV, plot, Markdown table and JSON summary."""
    t0 = time.perf_counter()
    grid = cells(cfg)
    for c in grid:
        if not cfg.fresh and _adopt_legacy(cfg, c):
            print(f"[rl_compare] adopted {cfg.run_root / c.variant / c.task / f'seed{c.seed}'} as cell {c.id}", flush=True)
    pairs = sweep_cells(cfg, grid)
    full = [c for pair in pairs for c in pair if c is not None]  # each closing evaluation right after its run
    archive = cfg.out_dir / "cells"
    for cid in restore(full, cfg.run_root, archive):
        print(f"[rl_compare] restored {cid} from the committed results in {archive}", flush=True)
    opts = SweepOptions(address=cfg.address, num_cpus=None if cfg.address else cfg.jobs * cfg.threads, cpus_per_run=cfg.threads,
                        max_parallel=cfg.jobs, fresh=cfg.fresh, timeout_s=cfg.timeout_s, retry_failed=cfg.retry_failed)
    if cfg.report_only:
        states = {}
    else:
        states = run_sweep(full, cfg.run_root, opts, log=lambda m: print(m.replace("[sweep]", "[rl_compare]"), flush=True),
                           on_done=lambda c, _: archive_done([c], cfg.run_root, archive))  # each as it ends: a killed sweep keeps it
    archive_done(full, cfg.run_root, archive)  # small committable records: a later session skips these cells

    def state(c: Cell) -> dict[str, Any]:
        return {**read_state(cfg.run_root, c.id), **states.get(c.id, {})}

    summaries = [{**summarise_run(cfg, c, state(c)), **(summarise_final_eval(cfg, ev, state(ev)) if ev else {})} for c, ev in pairs]
    for s in summaries:
        if s.get("final_eval_error"):
            s["flags"].append("final-eval-failed")
    rand = random_returns(cfg)
    import torch

    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "jobs": cfg.jobs, "wall_s": time.perf_counter() - t0,
    }
    table = markdown(cfg, summaries, rand, meta)
    result = {"meta": meta, "config": to_dict(cfg), "random_return": rand, "runs": summaries, "markdown": table}
    outside = tabled_cells(cfg.out_dir) - {s["cell"] for s in summaries}
    if outside and not cfg.replace_tables:
        print(f"[rl_compare] {cfg.out_dir / 'rl_compare.json'} holds {len(outside)} runs outside this call's grid: its "
              "tables are left as they are (rewrite them with the grid's full arguments and --report-only, or pass "
              "--replace-tables)", file=sys.stderr, flush=True)
        return result
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    csv_lines = ["task,variant,seed,step,episode_return"]
    for s in summaries:
        for st, ret in zip(s.get("eval_steps", []), s.get("eval_returns", [])):
            csv_lines.append(f"{s['task']},{s['variant']},{s['seed']},{st},{ret}")
    atomic_write_text(cfg.out_dir / "rl_compare.csv", "\n".join(csv_lines) + "\n")
    if cfg.final_eval_episodes > 0:
        fe = ["task,variant,seed,step,episodes,first_env_seed,episode_return,return_std"]
        fe += [f"{s['task']},{s['variant']},{s['seed']},{s['final_eval_step']},{cfg.final_eval_episodes},{cfg.final_eval_seed},"
               f"{s['final_eval_return']},{s['final_eval_std']}" for s in summaries if "final_eval_return" in s]
        atomic_write_text(cfg.out_dir / "rl_compare_final_eval.csv", "\n".join(fe) + "\n")
    run_dirs = [Path(s["run_dir"]) for s in summaries if s.get("run_dir") and s.get("eval_steps")]
    if run_dirs:
        from difftori.utils.plotting import plot_runs

        plot_runs(run_dirs, cfg.out_dir / "rl_compare.png")
    atomic_write_text(cfg.out_dir / "rl_compare.md", table)
    atomic_write_json(cfg.out_dir / "rl_compare.json", {k: v for k, v in result.items() if k != "markdown"})
    return result


def tabled_cells(out_dir: Path) -> set[str]:
    """Cell ids of the runs in ``<out_dir>/rl_compare.json`` (empty when there is none)."""
    path = out_dir / "rl_compare.json"
    if not path.exists():
        return set()
    return {r["cell"] for r in json.loads(path.read_text()).get("runs", []) if r.get("cell")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_args(parser, CompareConfig)
    args = parser.parse_args(argv)
    try:
        cfg = dataclass_from_args(CompareConfig, args)
        res = run(cfg)
    except ConfigError as exc:  # also a bad --extra option: raised by the grid before anything is written
        parser.error(str(exc))
    print(res["markdown"])
    bad = [f"{s['task']}/{s['variant']}/seed{s['seed']}: {', '.join(s['flags'])}" for s in res["runs"]
           if any(not f.startswith("pg_skipped") and f != "solver-never-acted" for f in s["flags"])]
    if bad:
        print("FLAGGED RUNS:\n  " + "\n  ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
