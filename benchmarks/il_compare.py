"""IL policies (bc, ibc, diffusion, difftori) on MetaWorld, robosuite or ManiSkill tasks: tasks x modalities x seeds, a
grid of the sweep runner.

For every task and modality the scripted expert's demos are collected once (a collect cell), then each
variant is trained on them (an ``il train`` cell); every ``difftori*`` cell starts from the *finished
diffusion cell of the same task, modality and seed* (its fixed base checkpoint) and is evaluated on the
same evaluation seeds (the trainer's: ``100000 + 1000 * seed``), so ``difftori - diffusion`` is a paired
comparison. Variants:

- ``bc``, ``ibc``, ``diffusion``: the baselines, with the preset's settings;
- ``difftori``: DiffTORI with the preset's settings (the library's default for that preset), lr 1e-3;
- ``difftori-faithful``: the released code's algorithm at the run's batch size, lr 1e-3: the batch packed
  into one LM problem, 100 iterations, a fresh base prediction at every training step, at inference
  ``batch size`` packed draws of the observation and draw 0 executed;
- ``difftori-paper``: the paper's Eq. 7 formulation (latent dynamics and reward, ``--preset paper-eq7``'s settings
  except the batch size and the window, which come from the grid's preset).

Protocol (the same for every variant): ``--eval-episodes`` episodes on fixed seeds every ``--eval-freq``
steps and at the end. Two numbers per run: the **final** success rate (last evaluation) and **DP3's**
(the mean of the best ``--top-k`` periodic evaluations, as 3D Diffusion Policy reports; k = 2 by default,
the number of evaluations of a difftori run at the default budgets). A third number, the **closing evaluation**:
each final checkpoint on ``--final-episodes`` fresh episodes (30), on env seeds shared by every variant of a task,
modality and seed (a script cell of ``il_final_eval.py`` after each run; the less noisy, paired verdict). Each cell is a
resumable sweep cell in ``--run-root``; finished cells are archived as small records in
``<out>/cells`` (committed), and a cell found there is never run again.

Outputs in ``--out``: ``il_compare.csv`` (one row per run, its closing evaluation in ``closing``), ``il_compare.md``
(final / DP3 / closing success, mean +- std over seeds per task,
the average over tasks, wins of difftori per task, the paired difference to diffusion, training wall clock
per policy) and ``il_compare.png`` (bars per task and the average, per modality).

    python benchmarks/il_compare.py --tasks button-press reach --modalities state --seeds 1 2 3 --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/il_compare.py` from anywhere: benchmarks.common for run()
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from difftori.utils.config import ConfigError, add_dataclass_args, check, dataclass_from_args, key_values  # noqa: E402
from difftori.utils.io import atomic_write_text  # noqa: E402

__all__ = ["CompareConfig", "VARIANTS", "variant_options", "cells", "summarise", "markdown", "run", "main"]

VARIANTS: dict[str, list[str]] = {
    "bc": ["--policy", "bc"],
    "ibc": ["--policy", "ibc"],
    "diffusion": ["--policy", "diffusion"],
    "difftori": ["--policy", "difftori", "--lr", "1e-3"],
    "difftori-faithful": ["--policy", "difftori", "--lr", "1e-3", "--label", "faithful", "--difftori.solver.packed", "true",
                          "--difftori.solver.method", "lm_scalar", "--difftori.solver.max-iters", "100",
                          "--difftori.solver.step-size", "3e-5", "--difftori.solver.damping", "0.01",
                          "--difftori.solver.backward", "truncated", "--difftori.solver.backward-iters", "5",
                          "--difftori.solver.tol", "0", "--difftori.base-pool", "0", "--difftori.inference-select", "first",
                          "--difftori.init", "base"],
    "difftori-paper": ["--policy", "difftori", "--label", "paper", "--difftori.formulation", "paper", "--lr", "3e-4", "--lr-min", "3e-4",
                       "--encoder-dim", "50", "--difftori.z-dim", "64", "--difftori.action-loss-weight", "1",
                       "--difftori.kl-weight", "1", "--difftori.gamma", "0.99", "--difftori.init", "base",
                       "--difftori.inference-samples", "1", "--difftori.inference-select", "first",
                       "--difftori.solver.method", "gd", "--difftori.solver.max-iters", "50",
                       "--difftori.solver.step-size", "0.1", "--difftori.solver.backward", "implicit",
                       "--difftori.solver.tol", "1e-4", "--difftori.solver.packed", "false"],
}
"""``il train`` options of each variant (added to the preset's); ``difftori-faithful`` also gets
``--difftori.inference-samples <batch size>`` (the original packs as many draws as its training batch).
``difftori`` and ``difftori-faithful`` train at lr 1e-3 (the base's 1e-4 leaves the cost nearly flat at these budgets).
``difftori-paper`` is the ``paper-eq7`` preset's formulation and hyperparameters except its batch size and its
2-action window (the grid's preset sets those: the window must match the diffusion base it starts from)."""

FIELDS = ["task", "modality", "variant", "policy", "seed", "steps", "status", "final", "dp3", "n_evals", "train_time_s",
          "eval_time_s", "eval_s_per_episode", "eval_ms_per_env_step", "eval_envs", "demo_mse", "base_demo_mse", "closing",
          "cell", "closing_cell"]


@dataclass
class CompareConfig:
    """The IL comparison grid (see the module docstring)."""

    tasks: tuple[str, ...] = ("button-press", "drawer-open", "door-open", "reach", "push", "pick-place", "assembly", "hammer")
    """IL tasks: MetaWorld (door-open, ...), robosuite (lift, can, square) or ManiSkill (pick-cube, ...; run from
    .venv-maniskill, `make maniskill`); ``suite:task`` picks a suite explicitly."""
    modalities: tuple[str, ...] = ("state",)
    """Observation types: state, pointcloud, image."""
    modality_tasks: tuple[str, ...] = ()
    """Per-modality task subsets, ``MODALITY=task,task`` (e.g. ``pointcloud=door-open,push``): that modality runs only
    these of --tasks (the rendered modalities cost more); a modality not named runs every task."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """Training seeds (each also fixes the evaluation seeds)."""
    variants: tuple[str, ...] = ("bc", "ibc", "diffusion", "difftori", "difftori-faithful")
    """Compared variants (any difftori* needs diffusion)."""
    preset: Literal["small", "paper"] = "small"
    """``il train --preset`` of every run: small (CPU sizes) or paper (published settings)."""
    steps: int = 2000
    """Gradient steps of bc, ibc and diffusion."""
    difftori_steps: int = 1000
    """Gradient steps of the difftori variants (on top of the trained diffusion base)."""
    demos: int = 10
    """Scripted-expert demos per task and modality."""
    eval_freq: int = 500
    """Evaluate every this many gradient steps (and at the end): the periodic evaluations of the DP3 number."""
    eval_episodes: Optional[int] = None
    """Episodes per evaluation (None: the preset's)."""
    top_k: int = 2
    """DP3's number: the mean of the best this many evaluations of a run (DP3: 5 of ~15). Keep it <= the fewest
    evaluations any variant gets (difftori: difftori_steps / eval_freq), else a variant with more, earlier,
    weaker evaluations is averaged over them and looks worse: with the defaults difftori has 2, the others 4."""
    jobs: int = 2
    """Runs in parallel on the local Ray cluster."""
    threads: int = 1
    """torch threads per run."""
    timeout_s: Optional[float] = None
    """Kill a run after this many seconds (rerun to resume it)."""
    run_root: Path = Path("runs/il_compare")
    """The sweep directory: cells with their runs (checkpoints stay here, never committed)."""
    out: Path = Path("benchmarks/results/il_compare")
    """Where il_compare.{csv,md,png} and the archived cell records go."""
    fresh: bool = False
    """Start every cell over instead of reusing finished / resuming interrupted ones."""
    retry_failed: bool = False
    """Run cells that failed in an earlier invocation again."""
    report_only: bool = False
    """Run nothing: archive finished cells and write the tables from what is on disk."""
    replace_tables: bool = False
    """Write this call's tables even when ``il_compare.csv`` in --out holds runs outside its grid (a subset call, e.g.
    one task or seed to finish, otherwise leaves a larger grid's tables as they are and prints its own)."""
    cost_grad: Literal["autograd", "manual"] = "manual"
    """difftori.cost_grad of the DiffTORI runs: how the solver's no-graph iterations get the cost's gradient (equal
    values to float rounding, so not part of a cell's id; manual is ~1.9x faster on the faithful inference solve)."""
    bf16_encoders: tuple[str, ...] = ("pointcloud", "image")
    """Modalities whose runs encode observations under bf16 autocast where the CPU computes bf16 in hardware
    (``--encoder-precision auto``: fp32 on one that would emulate it, slower): the point-cloud encoder is most of a
    training step on a CPU, and its bf16 loss curve matches fp32's (benchmarks/results/il_encoder_precision.md, so
    these runs keep one cell id on either kind of CPU); state runs stay fp32 (nothing to gain)."""
    modality_lr: tuple[str, ...] = ("pointcloud=1e-3", "image=1e-3")
    """Learning rate of every variant's runs on a modality, ``MODALITY=LR`` (over the preset's and the variant's; a
    modality not named keeps them). The rendered modalities' encoders are trained from scratch: at the preset's 1e-4
    the diffusion policy's point-cloud loss is still falling fast at 2000 steps (benchmarks/results/il_budget.md)."""
    encoder_from_base: tuple[str, ...] = ("pointcloud", "image")
    """Modalities whose ``difftori`` runs start their observation encoder from their diffusion base's
    (``--difftori.encoder-init base``; ``difftori-faithful`` keeps the released code's fresh encoder): 1000 steps
    are too few to train a point-cloud encoder from scratch (benchmarks/results/il_budget.md)."""
    task_steps: tuple[str, ...] = ()
    """Per-task budgets, ``TASK=STEPS`` (e.g. ``can=6000``): gradient steps of bc, ibc and diffusion on that task
    instead of --steps, for every modality; its evaluation interval scales with it, so each run keeps the same number
    of evaluations (the DP3 number stays comparable). DiffTORI keeps --difftori-steps on top of its longer base."""
    extra: str = ""
    """Extra ``il train`` options for every training run (one shell-quoted string)."""
    final_episodes: int = 30
    """Closing evaluation: each finished run's final checkpoint acts for this many episodes on env seeds
    ``final_seed + 1000 * seed + j``, the same for every variant of a task, modality and seed (paired; a script cell of
    ``il_final_eval.py``); 0: none. A run whose checkpoint is not on this machine (archived from another) gets none."""
    final_seed: int = 200_000
    """First env seed of the closing evaluations (the trainer's periodic ones use 100000 + 1000 * seed)."""

    def __post_init__(self) -> None:
        from difftori.data.collect import IL_SUITES
        from difftori.envs import suite_of
        from difftori.il.config import IL_PRESETS, OBS_TYPES

        self.run_root, self.out = Path(self.run_root), Path(self.out)
        self.tasks, self.modalities, self.seeds, self.variants = map(tuple, (self.tasks, self.modalities, self.seeds, self.variants))
        self.bf16_encoders, self.encoder_from_base = tuple(self.bf16_encoders), tuple(self.encoder_from_base)
        self.modality_lr, self.modality_tasks, self.task_steps = map(tuple, (self.modality_lr, self.modality_tasks, self.task_steps))
        check(len(self.tasks) > 0 and len(self.modalities) > 0 and len(self.seeds) > 0 and len(self.variants) > 0,
              "need at least one task, modality, seed and variant")
        for t in self.tasks:
            check(suite_of(t, IL_SUITES) is not None, f"unknown IL task {t!r} (suites: {', '.join(IL_SUITES)})")
        self._parse_key_values()
        for m in self.modalities + self.bf16_encoders + self.encoder_from_base:
            check(m in OBS_TYPES, f"unknown modality {m!r}; known: {', '.join(OBS_TYPES)}")
        for v in self.variants:
            check(v in VARIANTS, f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
        check("diffusion" in self.variants or not any(v.startswith("difftori") for v in self.variants),
              "the difftori variants start from the diffusion run: include diffusion in --variants")
        check(self.preset in IL_PRESETS, f"preset must be one of {', '.join(IL_PRESETS)}, got {self.preset!r}")
        check(self.steps >= 1 and self.difftori_steps >= 1, "steps and difftori_steps must be >= 1")
        check(self.eval_freq >= 0 and self.top_k >= 1, "eval_freq must be >= 0 and top_k >= 1")
        check(self.eval_episodes is None or self.eval_episodes >= 1, "eval_episodes must be >= 1 (the comparison needs evaluations)")
        check(self.jobs >= 1 and self.threads >= 1, "jobs and threads must be >= 1")
        check(self.demos >= 1, "demos must be >= 1")
        check(self.final_episodes >= 0 and self.final_seed >= 0, "final_episodes and final_seed must be >= 0")

    def _parse_key_values(self) -> tuple[dict[str, str], dict[str, set[str]], dict[str, int]]:
        """``modality_lr``, ``modality_tasks`` and ``task_steps`` as dicts (ConfigError naming a bad entry). Parsed
        on each use: the config keeps only its fields (``CompareConfig(**vars(cfg))`` stays a copy)."""
        from difftori.il.config import OBS_TYPES

        def lr(m: str, value: str) -> str:
            if m not in OBS_TYPES or not float(value) > 0:
                raise ValueError("")
            return value

        def tasks(m: str, names: str) -> set[str]:
            picked = {t for t in names.split(",") if t}
            if m not in OBS_TYPES or not picked:
                raise ValueError("")
            unknown = sorted(picked - set(self.tasks))
            if unknown:
                raise ValueError(f"{unknown} not in --tasks")
            return picked

        def steps(t: str, n: str) -> int:
            if not n.isdigit() or int(n) < 1:
                raise ValueError("")
            if t not in self.tasks:
                raise ValueError(f"{t!r} not in --tasks")
            return int(n)

        modalities = ", ".join(OBS_TYPES)
        return (key_values(self.modality_lr, f"modality_lr entries are MODALITY=LR with a modality of {modalities} and LR > 0", lr),
                key_values(self.modality_tasks, f"modality_tasks entries are MODALITY=task,task with a modality of {modalities}", tasks),
                key_values(self.task_steps, "task_steps entries are TASK=STEPS with STEPS >= 1 and a task of --tasks", steps))

    def lr_of(self, modality: str) -> str | None:
        """The learning rate ``modality_lr`` gives ``modality`` (as written), or None (the preset's / variant's)."""
        return self._parse_key_values()[0].get(modality)

    def steps_of(self, task: str) -> int:
        """Gradient steps of bc / ibc / diffusion on ``task``: its ``task_steps`` entry, else ``steps``."""
        return self._parse_key_values()[2].get(task, self.steps)

    def eval_freq_of(self, task: str) -> int:
        """Evaluation interval on ``task``: ``eval_freq`` scaled by its budget (same number of evaluations per run)."""
        return self.eval_freq * self.steps_of(task) // self.steps

    def tasks_of(self, modality: str) -> tuple[str, ...]:
        """The tasks ``modality`` runs: its ``modality_tasks`` subset (in --tasks order), else every task."""
        subsets = self._parse_key_values()[1]
        return tuple(t for t in self.tasks if t in subsets[modality]) if modality in subsets else self.tasks


# ----------------------------------------------------------------------------------- the grid
def variant_options(cfg: CompareConfig, variant: str, modality: str = "state", task: str = "") -> list[str]:
    """``il train`` options of one variant's runs on one modality and task (without task, seed, obs type and the
    runner's paths); ``task`` only matters where ``task_steps`` names it."""
    import shlex

    from difftori.il.config import IL_PRESETS

    steps = cfg.difftori_steps if variant.startswith("difftori") else cfg.steps_of(task)
    opts = ["--preset", cfg.preset, "--steps", str(steps), "--eval-freq", str(cfg.eval_freq_of(task)),
            *(["--eval-episodes", str(cfg.eval_episodes)] if cfg.eval_episodes is not None else []), *VARIANTS[variant]]
    if variant == "difftori-faithful":
        opts += ["--difftori.inference-samples", str(IL_PRESETS[cfg.preset].get("batch_size", 128))]
    if variant.startswith("difftori"):
        opts += ["--difftori.cost-grad", cfg.cost_grad]
    if modality in cfg.bf16_encoders:
        opts += ["--encoder-precision", "auto"]
    lr = cfg.lr_of(modality)
    if lr is not None:
        opts += ["--lr", lr]
    if variant.startswith("difftori"):  # explicit either way: the preset may give one (small: base on rendered modalities)
        opts += ["--difftori.encoder-init", "base" if variant == "difftori" and modality in cfg.encoder_from_base else "scratch"]
    return opts + shlex.split(cfg.extra)


def cells(cfg: CompareConfig) -> list:
    """Collect cells, then per seed, modality and task: diffusion first, the others after (options checked here)."""
    from difftori.sweep.grid import collect_cell, il_seed_cells

    data = {(t, m): collect_cell(t, m, cfg.demos) for m in cfg.modalities for t in cfg.tasks_of(m)}
    variants = {(t, m): {v: variant_options(cfg, v, m, t) for v in cfg.variants} for (t, m) in data}
    out = list(data.values())
    for s in cfg.seeds:  # seed-major: a grid stopped early covers every task with its first seeds
        for m in cfg.modalities:
            for t in cfg.tasks_of(m):
                out.extend(il_seed_cells(data[(t, m)], s, variants[(t, m)]))
    return out


FINAL_EVAL_SCRIPT = Path(__file__).resolve().parent / "il_final_eval.py"
FINAL_ENVS = 10
"""Episodes a closing evaluation runs side by side (part of its cell's id: the policies' sampling noise is batched)."""


def final_eval_cell(cfg: CompareConfig, train):
    """The closing evaluation of ``train``'s final checkpoint (``il_final_eval.py``, a script cell depending on it)."""
    from difftori.sweep.grid import script_cell

    n, seed = cfg.final_episodes, cfg.final_seed + 1000 * train.seed
    return script_cell(FINAL_EVAL_SCRIPT, train.task, f"{train.obs_type}-{train.variant}-final{n}", train.seed,
                       ["--episodes", n, "--seed", seed, "--envs", FINAL_ENVS], {"episodes": n, "seed": seed, "envs": FINAL_ENVS},
                       steps=n, deps={"checkpoint": train.id})


def final_eval_cells(cfg: CompareConfig, grid: list) -> dict[str, Any]:
    """``{training cell id: its closing-evaluation cell}`` (none when ``final_episodes`` is 0)."""
    return {c.id: final_eval_cell(cfg, c) for c in grid if c.area == "il"} if cfg.final_episodes > 0 else {}


# ----------------------------------------------------------------------------------- results
def dp3_score(rates: list[float], k: int) -> float:
    """DP3's protocol: the mean of the ``k`` best success rates among a run's evaluations."""
    if not rates:
        return float("nan")
    return float(np.mean(sorted(rates, reverse=True)[:k]))


def summarise(cfg: CompareConfig, cell, state: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: final and DP3 success, training and evaluation time of one cell."""
    from difftori.sweep.runner import cell_dir
    from difftori.utils.runs import read_csv

    row: dict[str, Any] = {"task": cell.task, "modality": cell.obs_type, "variant": cell.variant, "policy": cell.config["policy"],
                           "seed": cell.seed, "steps": cell.steps, "status": state.get("status", "pending"), "cell": cell.id}
    if row["status"] != "done" or not state.get("run_dir"):
        return row
    run = (cell_dir(cfg.run_root, cell.id) / state["run_dir"]).resolve()
    evals = read_csv(run / "eval.csv")
    rates = [float(e["success_rate"]) for e in evals]
    eval_s = sum(float(e["eval_time_s"]) for e in evals)
    per_eval = int(cell.config.get("eval_episodes") or 1)
    episodes = per_eval * max(len(evals), 1)
    # Episodes that stop on success are shorter: the cost per env step compares runs, the cost per episode does not.
    env_steps = sum(per_eval * float(e.get("mean_length") or "nan") for e in evals)
    saved = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    row.update(eval_envs=int(saved.get("eval_envs", 1)),  # runs from before side-by-side evaluation: one at a time
               final=rates[-1] if rates else float("nan"), dp3=dp3_score(rates, cfg.top_k), n_evals=len(rates),
               train_time_s=round(float(state.get("wall_s", float("nan"))) - eval_s, 1), eval_time_s=round(eval_s, 1),
               eval_s_per_episode=round(eval_s / episodes, 2),
               eval_ms_per_env_step=round(1000 * eval_s / env_steps, 2) if env_steps > 0 else float("nan"))
    if evals:  # the action error on demo windows at the last evaluation (runs since the trainer logs it)
        row.update({k: float(evals[-1][k]) for k in ("demo_mse", "base_demo_mse") if evals[-1].get(k)})
    return row


def summarise_final_eval(cfg: CompareConfig, cell, state: dict[str, Any]) -> dict[str, Any]:
    """The closing evaluation's columns of a run's row (``closing`` only once it is done)."""
    from difftori.sweep.runner import cell_dir

    out: dict[str, Any] = {"closing_cell": cell.id, "closing_status": state.get("status", "pending")}
    if out["closing_status"] == "done" and state.get("run_dir"):
        res = json.loads((cell_dir(cfg.run_root, cell.id) / state["run_dir"] / "final.json").read_text())
        out["closing"] = float(res["success_rate"])
    return out


def _ms(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return f"{np.mean(xs):.2f} ± {np.std(xs):.2f}" + ("" if len(xs) > 1 else " (n=1)") if xs else "-"


def _table(cfg: CompareConfig, rows: list[dict[str, Any]], modality: str, key: str) -> list[str]:
    by = defaultdict(list)
    for r in rows:
        if r["modality"] == modality and r.get(key) is not None:
            by[(r["task"], r["variant"])].append(float(r[key]))
    lines = ["| task | " + " | ".join(cfg.variants) + " |", "|---|" + "---|" * len(cfg.variants)]
    tasks = [t for t in dict.fromkeys(r["task"] for r in rows if r["modality"] == modality)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_ms(by[(t, v)]) for v in cfg.variants) + " |")
    avg = []
    for v in cfg.variants:
        means = [float(np.mean(by[(t, v)])) for t in tasks if by[(t, v)]]
        avg.append("-" if not means else f"**{np.mean(means):.3f}**" + ("" if len(means) == len(tasks) else f" ({len(means)}/{len(tasks)} tasks)"))
    lines.append("| **average over tasks** | " + " | ".join(avg) + " |")
    return lines


def _paired(rows: list[dict[str, Any]], modality: str, variant: str, other: str, key: str) -> tuple[list[float], int, int, int]:
    """Per (task, seed) differences ``variant - other`` and per-task wins / ties / losses (task means)."""
    val = {(r["task"], r["seed"], r["variant"]): float(r[key]) for r in rows if r["modality"] == modality and r.get(key) is not None}
    diffs, per_task = [], defaultdict(list)
    for (t, s, v), x in val.items():
        if v == variant and (t, s, other) in val:
            diffs.append(x - val[(t, s, other)])
            per_task[t].append(x - val[(t, s, other)])
    means = [np.mean(d) for d in per_task.values()]
    return diffs, sum(m > 0 for m in means), sum(m == 0 for m in means), sum(m < 0 for m in means)


def markdown(cfg: CompareConfig, rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    from difftori.il.config import IL_PRESETS

    preset = IL_PRESETS[cfg.preset]
    episodes = cfg.eval_episodes or preset.get("eval_episodes", 20)
    lines = [
        "# IL: bc / ibc / diffusion / DiffTORI", "",
        f"Budget: preset `{cfg.preset}` (batch {preset.get('batch_size', 128)}), {cfg.steps} gradient steps for bc / ibc / "
        f"diffusion, {cfg.difftori_steps} more for DiffTORI on top of the finished diffusion run of the same task, modality and "
        f"seed; {cfg.demos} scripted-expert demos per task; seeds {list(cfg.seeds)}; {episodes} evaluation episodes on fixed "
        f"seeds every {cfg.eval_freq} steps and at the end. Observation encoders in bf16 autocast (where the CPU has bf16 units; fp32 on others) on: "
        f"{', '.join(m for m in cfg.modalities if m in cfg.bf16_encoders) or 'none'} (fp32 elsewhere). "
        f"{''.join(f'On {m}: every policy at lr {cfg.lr_of(m)}. ' for m in cfg.modalities if cfg.lr_of(m))}"
        f"{''.join(f'On {t}: {cfg.steps_of(t)} steps for bc / ibc / diffusion, evaluated every {cfg.eval_freq_of(t)}. ' for t in cfg.tasks if cfg.steps_of(t) != cfg.steps)}"
        f"{''.join(f'On {m}: difftori starts its encoder from its base. ' for m in cfg.modalities if m in cfg.encoder_from_base)}"
        f"{meta['jobs']} runs in parallel x {cfg.threads} thread(s) on "
        f"{meta['cpu_count']} CPU cores ({meta['machine']}), no GPU. Entries: success rate, mean ± std over seeds.", "",
    ]
    counts = defaultdict(int)
    for r in rows:
        counts[r["status"]] += 1
    lines += [f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".", ""]
    for m in cfg.modalities:
        if not any(r["modality"] == m for r in rows):
            continue
        lines += [f"## {m}", "", "**Final** success rate (last evaluation):", "", *_table(cfg, rows, m, "final"), "",
                  f"**DP3 protocol** (mean of the best {cfg.top_k} evaluations of each run):", "", *_table(cfg, rows, m, "dp3"), ""]
        closed = [r for r in rows if r["modality"] == m and r.get("closing") is not None]
        if closed:
            lines += [f"**Closing evaluation** (each final checkpoint on {cfg.final_episodes} fresh episodes, env seeds "
                      f"{cfg.final_seed} + 1000 * seed + j, the same for every variant; {len(closed)} of "
                      f"{sum(r['modality'] == m and r['status'] == 'done' for r in rows)} finished runs):", "",
                      *_table(cfg, rows, m, "closing"), ""]
        n_evals = defaultdict(list)
        for r in rows:
            if r["modality"] == m and r.get("n_evals") is not None:
                n_evals[r["variant"]].append(int(r["n_evals"]))
        few = {v: min(ns) for v, ns in n_evals.items() if min(ns) < cfg.top_k}
        if few:  # the mean of the best k of fewer than k evaluations favours the runs that have fewer (later) ones
            lines += [f"Caution: {', '.join(f'{v} runs have {n} evaluation(s)' for v, n in few.items())}, fewer than "
                      f"{cfg.top_k}: their DP3 number is the mean of all they have (later, stronger ones), not comparable "
                      "with the others'. Compare final success.", ""]
        pairs = []
        for v in [v for v in cfg.variants if v.startswith("difftori")]:
            for other in [o for o in ("diffusion", "ibc") if o in cfg.variants]:
                for key in ("final", "dp3", "closing"):
                    d, w, t, l_ = _paired(rows, m, v, other, key)
                    if d:
                        pairs.append(f"| {v} − {other} | {key} | {np.mean(d):+.3f} ± {np.std(d):.3f} (n={len(d)}) | {w} / {t} / {l_} |")
        if pairs:
            lines += ["Paired differences (same task, seed and evaluation seeds; difftori starts from that seed's diffusion "
                      "checkpoint): mean ± std over (task, seed) pairs, and tasks won / tied / lost on the task mean:", "",
                      "| comparison | metric | difference | tasks won / tied / lost |", "|---|---|---|---|", *pairs, ""]
        tt = defaultdict(list)
        for r in rows:
            if r["modality"] == m and r.get("train_time_s") is not None:
                tt[r["variant"]].append((float(r["train_time_s"]), float(r.get("eval_ms_per_env_step") or "nan"), int(r["steps"]),
                                         int(r.get("eval_envs") or 1)))
        if tt:
            lines += ["Training wall clock per run (without evaluation; difftori excludes its base's training) and "
                      "evaluation cost:", "", "| variant | steps | train min (mean ± std) | ms / step | eval ms / env step |",
                      "|---|---|---|---|---|"]
            for v in cfg.variants:
                if tt.get(v):
                    tr = [x[0] for x in tt[v]]
                    steps = " / ".join(str(n) for n in sorted({x[2] for x in tt[v]}))  # budgets differ where task_steps says
                    lines.append(f"| {v} | {steps} | {np.mean(tr) / 60:.1f} ± {np.std(tr) / 60:.1f} | "
                                 f"{1000 * np.mean([x[0] / x[2] for x in tt[v]]):.0f} | {_eval_cost(tt[v])} |")
            lines.append("")
    bad = [(r["cell"], r["status"]) for r in rows if r["status"] not in ("done", "pending")]
    bad += [(r["closing_cell"], r["closing_status"]) for r in rows if r.get("closing_status") not in (None, "done", "pending")]
    if bad:
        lines += ["## Not finished", "", *[f"- {cid}: {status}" for cid, status in bad], ""]
    return "\n".join(lines)


def _eval_cost(runs: list[tuple]) -> str:
    """Mean evaluation wall clock per env step (ms; policy and simulator), split by the envs run side by side."""
    by = defaultdict(list)
    for r in runs:
        if math.isfinite(r[1]):
            by[r[3]].append(r[1])
    return " / ".join(f"{np.mean(v):.1f} ({n} env{'s' if n > 1 else ''})" for n, v in sorted(by.items())) or "-"


def plot(cfg: CompareConfig, rows: list[dict[str, Any]], out: Path) -> Optional[Path]:
    """Bars of the final success rate per task (and the average over tasks), one panel per modality."""
    from difftori.utils.plotting import plot_bars

    groups: dict[str, dict[str, list[float]]] = {}
    for m in cfg.modalities:
        per = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if r["modality"] == m and r.get("final") is not None:
                per[r["task"]][r["variant"]].append(float(r["final"]))
        if not per:
            continue
        for t, vs in per.items():
            groups[f"{t} ({m})" if len(cfg.modalities) > 1 else t] = dict(vs)
        if len(per) > 1:
            groups[f"average ({m})"] = {v: [float(np.mean(per[t][v])) for t in per if per[t].get(v)] for v in cfg.variants}
    return plot_bars(groups, out, ylabel="final success rate") if groups else None


def run(cfg: CompareConfig) -> list[dict[str, Any]]:
    """Run (or reuse) every cell, archive the finished ones, write the CSV, Markdown and PNG; returns the rows."""
    from benchmarks.common import cell_runs, write_csv_rows  # imports torch: here, not on --help
    from difftori.sweep.archive import archive_done, restore
    from difftori.sweep.runner import SweepOptions, read_state, run_sweep

    if not cfg.report_only:  # a suite missing from this Python (ManiSkill outside its venv) fails here, not in every cell
        from difftori.envs import MissingDependencyError, require_suite

        for task in cfg.tasks:
            try:
                require_suite(task)
            except MissingDependencyError as exc:
                raise ConfigError(f"task {task}: {exc}") from None
    grid = cells(cfg)
    archive = cfg.out / "cells"
    # An archive keeps no checkpoints: a diffusion cell whose difftori cells are not all archived runs again here,
    # and so does its closing evaluation (the run DiffTORI refines is the one evaluated; its record replaces the old).
    archived = {p.name for p in archive.iterdir() if (p / "result.json").exists()} if archive.is_dir() else set()
    needed = {c.deps["base_policy"] for c in grid if "base_policy" in c.deps and c.id not in archived}
    closing = final_eval_cells(cfg, grid)
    keep = [c for c in grid if c.id not in needed] + [ev for tid, ev in closing.items() if tid not in needed]
    for cid in restore(keep, cfg.run_root, archive):
        print(f"[il_compare] restored {cid} from the committed results in {archive}", flush=True)
    # A finished run without its checkpoint here (archived from another machine) cannot be evaluated again.
    closing = {tid: ev for tid, ev in closing.items() if read_state(cfg.run_root, ev.id)["status"] == "done"
               or read_state(cfg.run_root, tid)["status"] != "done" or cell_runs(cfg.run_root, tid)}
    # Each closing evaluation right after its run: it starts as soon as the run ends, before later runs.
    full = [x for c in grid for x in ([c, closing[c.id]] if c.id in closing else [c])]
    states: dict[str, Any] = {}
    if not cfg.report_only:
        opts = SweepOptions(num_cpus=cfg.jobs * cfg.threads, cpus_per_run=cfg.threads, max_parallel=cfg.jobs, fresh=cfg.fresh,
                            timeout_s=cfg.timeout_s, retry_failed=cfg.retry_failed)
        states = run_sweep(full, cfg.run_root, opts, log=lambda m: print(m.replace("[sweep]", "[il_compare]"), flush=True),
                           on_done=lambda c, _: archive_done([c] if c.area != "collect" else [], cfg.run_root, archive))
    archive_done([c for c in full if c.area != "collect"], cfg.run_root, archive)

    def state(c) -> dict[str, Any]:
        return {**read_state(cfg.run_root, c.id), **states.get(c.id, {})}

    rows = [{**summarise(cfg, c, state(c)), **(summarise_final_eval(cfg, closing[c.id], state(closing[c.id])) if c.id in closing else {})}
            for c in grid if c.area == "il"]
    outside = tabled_cells(cfg.out) - {r["cell"] for r in rows}
    if outside and not cfg.replace_tables:
        print(f"[il_compare] {cfg.out / 'il_compare.csv'} holds {len(outside)} runs outside this call's grid: its tables are "
              "left as they are (rewrite them with the grid's full arguments and --report-only, or pass --replace-tables)",
              file=sys.stderr, flush=True)
        return rows
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_csv_rows(cfg.out / "il_compare.csv", FIELDS, rows)
    atomic_write_text(cfg.out / "il_compare.md", markdown(cfg, rows, _meta(cfg)))
    plot(cfg, rows, cfg.out / "il_compare.png")
    return rows


def tabled_cells(out: Path) -> set[str]:
    """Cell ids of the runs in ``<out>/il_compare.csv`` (empty when there is none)."""
    path = out / "il_compare.csv"
    if not path.exists():
        return set()
    with path.open(newline="") as f:
        return {row["cell"] for row in csv.DictReader(f) if row.get("cell")}


def _meta(cfg: CompareConfig) -> dict[str, Any]:
    return {"jobs": cfg.jobs, "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_args(parser, CompareConfig)
    args = parser.parse_args(argv)
    try:
        cfg = dataclass_from_args(CompareConfig, args)
        rows = run(cfg)
    except ConfigError as exc:
        parser.error(str(exc))
    print(markdown(cfg, rows, _meta(cfg)))
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
