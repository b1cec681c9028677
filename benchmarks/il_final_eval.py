"""A closing evaluation of an IL grid's finished runs: each final checkpoint on ``--episodes`` fresh episodes, the
same env seeds for every variant of a task and training seed (paired), a less noisy success rate than the grid's
last evaluation (10 episodes by the small preset's protocol).

Runs are the finished rows of ``<grid>/il_compare.csv`` (filtered by ``--tasks`` / ``--modalities`` /
``--variants``); run ``i``'s episodes use env seeds ``seed_base + 1000 * training seed + j`` (by default other
seeds than the trainer's own evaluations, ``100000 + 1000 * seed``), torch seeded alike. Resumable: each
evaluated run is written to ``<grid>/il_final_eval.csv`` at once and not evaluated again.

    python benchmarks/il_final_eval.py --grid benchmarks/results/il_suites --run-root runs/il_suites \\
        --tasks lift --variants diffusion difftori --episodes 30

Results: ``<grid>/il_final_eval.csv`` (one row per run) and ``<grid>/il_final_eval.md`` (mean ± std over seeds per
task and variant, the paired difference of each variant to diffusion), written atomically.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python benchmarks/il_final_eval.py` from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.common import cell_runs, md_table, parse_bench_config, write_csv_rows, write_results  # noqa: E402
from difftori.utils.runs import read_csv  # noqa: E402
from difftori.utils.config import ConfigError, check  # noqa: E402

__all__ = ["FinalEvalConfig", "run", "markdown", "main"]

FIELDS = ["task", "modality", "variant", "seed", "episodes", "first_env_seed", "success_rate", "grid_final", "eval_time_s", "cell"]


@dataclass
class FinalEvalConfig:
    """Which runs of which grid, and how many episodes."""

    grid: str = str(REPO / "benchmarks" / "results" / "il_compare")
    """Folder of the grid's il_compare.csv; il_final_eval.csv / .md are written there."""
    run_root: str = str(REPO / "runs" / "il_compare")
    """The grid's sweep directory (its cells' run directories and checkpoints)."""
    tasks: tuple[str, ...] = ()
    """Only these tasks (empty: every task)."""
    modalities: tuple[str, ...] = ()
    """Only these observation types (empty: every one)."""
    variants: tuple[str, ...] = ("diffusion", "difftori")
    """Only these variants (empty: every one); diffusion is the reference of the paired differences."""
    episodes: int = 30
    """Episodes per run."""
    seed_base: int = 200_000
    """Run of training seed s: env seeds seed_base + 1000 * s + j (the trainer evaluates on 100000 + 1000 * s + j)."""
    envs: int = 10
    """Episodes run side by side."""
    threads: int = 1
    """torch.set_num_threads for the whole run."""
    fresh: bool = False
    """Evaluate every run again instead of keeping the rows of an earlier call."""

    def __post_init__(self) -> None:
        self.tasks, self.modalities, self.variants = tuple(self.tasks), tuple(self.modalities), tuple(self.variants)
        check(self.episodes >= 1 and self.envs >= 1 and self.threads >= 1, "episodes, envs and threads must be >= 1")


def _wanted(cfg: FinalEvalConfig, r: dict[str, str]) -> bool:
    return (r.get("status") == "done" and (not cfg.tasks or r["task"] in cfg.tasks)
            and (not cfg.modalities or r["modality"] in cfg.modalities) and (not cfg.variants or r["variant"] in cfg.variants))


def run(cfg: FinalEvalConfig, progress: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    from difftori.il.train import evaluate_checkpoint
    from difftori.utils.device import set_num_threads

    grid, run_root = Path(cfg.grid), Path(cfg.run_root)
    todo = [r for r in read_csv(grid / "il_compare.csv") if _wanted(cfg, r)]
    check(bool(todo), f"no finished runs in {grid / 'il_compare.csv'} match the filters")
    runs = {}
    for r in todo:  # every checkpoint located before the first evaluation
        found = cell_runs(run_root, r["cell"])
        check(bool(found), f"{r['cell']}: no checkpoint under {run_root / 'cells' / r['cell'] / 'run'}")
        runs[r["cell"]] = found[-1]
    set_num_threads(cfg.threads)
    out_csv = grid / "il_final_eval.csv"
    have = {} if cfg.fresh else {(r["cell"], int(r["episodes"]), int(r["first_env_seed"])): r for r in read_csv(out_csv)}
    rows: list[dict[str, Any]] = []
    for r in todo:
        seed = cfg.seed_base + 1000 * int(r["seed"])
        key = (r["cell"], cfg.episodes, seed)
        if key in have:
            rows.append(have[key])
            continue
        progress(f"{r['task']} {r['modality']} {r['variant']} seed {r['seed']}: {cfg.episodes} episodes from env seed {seed}")
        res = evaluate_checkpoint(runs[r["cell"]], episodes=cfg.episodes, seed=seed, device="cpu", num_envs=cfg.envs)
        rows.append({**{k: r[k] for k in ("task", "modality", "variant", "seed", "cell")}, "episodes": cfg.episodes,
                     "first_env_seed": seed, "success_rate": res["success_rate"], "grid_final": r.get("final"),
                     "eval_time_s": round(res["eval_time_s"], 1)})
        write_csv_rows(out_csv, FIELDS, rows + [v for k, v in have.items() if k not in _keys(rows)])
    write_csv_rows(out_csv, FIELDS, rows + [v for k, v in have.items() if k not in _keys(rows)])  # earlier calls' other rows kept
    return rows


def _keys(rows: list[dict[str, Any]]) -> set[tuple[str, int, int]]:
    return {(r["cell"], int(r["episodes"]), int(r["first_env_seed"])) for r in rows}


def markdown(rows: list[dict[str, Any]], cfg: FinalEvalConfig) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["# IL: closing evaluation of the final checkpoints", "",
             f"{cfg.episodes} fresh episodes per final checkpoint (env seeds {cfg.seed_base} + 1000 * training seed + j, the "
             "same for every variant of a seed), success rate; mean ± std over training seeds. `grid final` is the grid's "
             "own last evaluation of the same runs (fewer episodes, other seeds).", ""]
    for modality in dict.fromkeys(r["modality"] for r in rows):
        mine = [r for r in rows if r["modality"] == modality]
        val = {(r["task"], r["variant"], str(r["seed"])): float(r["success_rate"]) for r in mine}
        grid_final = defaultdict(list)
        for r in mine:
            if r.get("grid_final") not in (None, ""):
                grid_final[(r["task"], r["variant"])].append(float(r["grid_final"]))
        body = []
        for t in dict.fromkeys(r["task"] for r in mine):
            row = [t]
            for v in variants:
                xs = [x for (tt, vv, _), x in val.items() if (tt, vv) == (t, v)]
                g = grid_final[(t, v)]
                row.append(f"{np.mean(xs):.2f} ± {np.std(xs):.2f} (n={len(xs)}; grid final {np.mean(g):.2f})" if xs else "-")
            body.append(row)
        lines += [f"## {modality}", "", *md_table(["task", *variants], body), ""]
        for v in [v for v in variants if v != "diffusion"]:
            d = [val[(t, v, s)] - val[(t, "diffusion", s)] for (t, vv, s) in val if vv == v and (t, "diffusion", s) in val]
            if d:
                d = np.array(d)
                lines.append(f"- {v} − diffusion (paired by task and seed): {d.mean():+.3f} ± {d.std():.3f} over {len(d)} runs "
                             f"(ahead / equal / behind: {int((d > 0).sum())} / {int((d == 0).sum())} / {int((d < 0).sum())}).")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_bench_config(FinalEvalConfig, None, __doc__, argv)
    try:
        rows = run(cfg, progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    except ConfigError as exc:  # nothing to measure: one line, nothing written
        print(f"{Path(__file__).name}: error: {exc}", file=sys.stderr)
        return 2
    kept = [r for r in read_csv(Path(cfg.grid) / "il_final_eval.csv")  # earlier calls' runs too (other tasks, modalities)
            if int(r["episodes"]) == cfg.episodes and int(r["first_env_seed"]) == cfg.seed_base + 1000 * int(r["seed"])]
    md = markdown(kept or rows, cfg)
    write_results(cfg.grid, {"il_final_eval.md": md}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
