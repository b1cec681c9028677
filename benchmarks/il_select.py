"""Comparison: which of an observation's solved draws a DiffTORI-IL policy executes, draw 0 (the original) or
the lowest-cost one, on the same trained checkpoints and the same evaluation episodes.

Each checkpoint (``--runs``: DiffTORI run directories with several draws per observation, e.g. the IL grid's
``difftori-faithful`` cells) is evaluated with ``--select first`` and ``--select lowest_cost`` on the env
seeds its own training evaluated on (``seed_base + 1000 * training seed``), torch seeded alike.

    python benchmarks/il_select.py --runs RUN_DIR [RUN_DIR ...] --episodes 10

Results: ``<out>/il_select.csv`` (one row per checkpoint) and ``<out>/il_select.md`` (per run, and the mean
paired difference), written atomically.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python benchmarks/il_select.py` from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.common import md_table, parse_bench_config, run_meta, write_results  # noqa: E402
from difftori.utils.config import check  # noqa: E402

__all__ = ["SelectConfig", "run", "markdown", "main"]

DEFAULT_OUT = REPO / "benchmarks" / "results" / "il_select"
SELECTS = ("first", "lowest_cost")


@dataclass
class SelectConfig:
    """Which checkpoints to evaluate and how."""

    runs: tuple[str, ...] = ()
    """DiffTORI-IL run directories (or checkpoint files) to evaluate."""
    episodes: int = 10
    """Evaluation episodes per checkpoint and selection rule."""
    seed_base: int = 100000
    """Env seed of the first episode is seed_base + 1000 * the run's training seed (the trainer's evaluation seeds)."""
    envs: int = 10
    """Episodes run side by side."""
    max_steps: int | None = None
    """Cap on env steps per episode (None = the task's episode length)."""
    threads: int = 1
    """torch.set_num_threads for the whole run."""
    out: str = str(DEFAULT_OUT)
    """Folder of il_select.csv and il_select.md."""

    def __post_init__(self) -> None:
        self.runs = tuple(self.runs)
        check(self.episodes >= 1 and self.envs >= 1 and self.threads >= 1, "episodes, envs and threads must be >= 1")


def run(cfg: SelectConfig, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    from difftori.il.train import evaluate_checkpoint
    from difftori.utils.config import to_dict
    from difftori.utils.device import set_num_threads
    from difftori.utils.io import load_checkpoint
    from difftori.utils.runs import locate_checkpoint

    check(bool(cfg.runs), "runs: pass at least one DiffTORI-IL run directory (--runs RUN_DIR ...)")
    paths = [locate_checkpoint(r)[0] for r in cfg.runs]  # every path checked before the first evaluation
    set_num_threads(cfg.threads)
    rows = []
    for path in paths:
        saved = load_checkpoint(path).get("config", {})
        seed = cfg.seed_base + 1000 * int(saved.get("seed", 1))
        row = {"run": str(path), "task": saved.get("task"), "obs_type": saved.get("obs_type"), "label": saved.get("label"),
               "train_seed": saved.get("seed"), "eval_seed": seed}
        for sel in SELECTS:
            progress(f"{row['task']} seed {row['train_seed']} select={sel}")
            res = evaluate_checkpoint(path, episodes=cfg.episodes, seed=seed, device="cpu", select=sel, num_envs=cfg.envs,
                                      max_steps=cfg.max_steps)
            row[sel] = res["success_rate"]
            row["draws"] = res["draws"]
        rows.append(row)
    return {"meta": run_meta(cfg.threads, "cpu", config=to_dict(cfg)), "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    rows, cfg = results["rows"], results["meta"]["config"]
    body = [[str(r["task"]), str(r["obs_type"]), str(r["label"] or "difftori"), str(r["train_seed"]), str(r["draws"]),
             f"{r['first']:.2f}", f"{r['lowest_cost']:.2f}", f"{r['lowest_cost'] - r['first']:+.2f}"] for r in rows]
    d = np.array([r["lowest_cost"] - r["first"] for r in rows])
    lines = [
        "# DiffTORI-IL inference: execute draw 0 (the original) or the lowest-cost draw",
        "",
        f"{cfg['episodes']} episodes per checkpoint and rule, env seeds 100000 + 1000 * training seed (the trainer's own "
        f"evaluation seeds), {cfg['envs']} envs side by side, torch seeded with the env seed; {results['meta']['date']}.",
        "",
        *md_table(["task", "obs", "policy", "seed", "draws", "first", "lowest_cost", "difference"], body),
        "",
        f"Mean success: first {np.mean([r['first'] for r in rows]):.3f}, lowest_cost {np.mean([r['lowest_cost'] for r in rows]):.3f}; "
        f"paired difference {d.mean():+.3f} +- {d.std(ddof=1) if len(d) > 1 else 0.0:.3f} over {len(d)} checkpoints "
        f"(better / equal / worse: {int((d > 0).sum())} / {int((d == 0).sum())} / {int((d < 0).sum())}).",
        "",
    ]
    return "\n".join(lines)


def to_csv(results: dict[str, Any]) -> str:
    keys = ["task", "obs_type", "label", "train_seed", "eval_seed", "draws", "first", "lowest_cost", "run"]
    return "\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in results["rows"]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    cfg = parse_bench_config(SelectConfig, None, __doc__, argv)
    results = run(cfg, progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    md = markdown(results)
    write_results(cfg.out, {"il_select.csv": to_csv(results), "il_select.md": md}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
