"""Benchmark: IL evaluation with the episodes one at a time vs side by side in several envs.

Each trained policy checkpoint (``--runs``: run directories, e.g. the IL grid's cells) is evaluated on the same
episodes (env seeds ``seed ..``) with every ``--envs`` value; a batch-1 ``predict_action`` is overhead-bound on
a CPU, so one batched call for all live episodes costs much less per episode. Reported per checkpoint: seconds
per episode for each value, the speed-up over the first, and the success rates (equal up to the policies'
sampling noise, which is drawn in a different order).

    python benchmarks/il_eval_speed.py --runs RUN_DIR [RUN_DIR ...] --episodes 10

Results: ``<out>/il_eval_speed.json`` and ``<out>/il_eval_speed.md`` (``--out``, default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python benchmarks/il_eval_speed.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.common import md_table, parse_bench_config, run_meta, write_results  # noqa: E402
from difftori.utils.config import check  # noqa: E402

__all__ = ["EvalSpeedConfig", "run", "markdown", "main"]

DEFAULT_OUT = REPO / "benchmarks" / "results"


@dataclass
class EvalSpeedConfig:
    """Which checkpoints to evaluate and how."""

    runs: tuple[str, ...] = ()
    """IL run directories (or checkpoint files) to evaluate."""
    envs: tuple[int, ...] = (1, 10)
    """Numbers of envs side by side to compare (the first is the reference of the speed-up)."""
    episodes: int = 10
    """Episodes per evaluation (the same env seeds for every value of envs)."""
    seed: int = 100000
    """Env seed of the first episode (torch is seeded with it too)."""
    max_steps: int | None = None
    """Cap on env steps per episode (None = the task's episode length)."""
    threads: int = 1
    """torch.set_num_threads for the whole run."""
    quick: bool = False
    """Quick mode (a smoke run): 2 episodes of at most 20 steps, written to runs/bench_quick. Explicit options still override it."""
    out: str = str(DEFAULT_OUT)
    """Folder of il_eval_speed.json and il_eval_speed.md (written atomically)."""

    def __post_init__(self) -> None:
        self.runs, self.envs = tuple(self.runs), tuple(int(n) for n in self.envs)
        check(bool(self.envs) and all(n >= 1 for n in self.envs), f"envs must be >= 1, got {self.envs}")
        check(self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}")
        check(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 or None, got {self.max_steps}")
        check(self.threads >= 1, f"threads must be >= 1, got {self.threads}")


def run(cfg: EvalSpeedConfig, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    from difftori.il.train import evaluate_checkpoint
    from difftori.utils.device import set_num_threads
    from difftori.utils.io import load_checkpoint
    from difftori.utils.runs import locate_checkpoint

    check(bool(cfg.runs), "runs: pass at least one IL run directory (--runs RUN_DIR ...)")
    set_num_threads(cfg.threads)
    rows = []
    for path in cfg.runs:
        ckpt_path, _ = locate_checkpoint(path)  # fails on a bad path before anything is timed
        saved = load_checkpoint(ckpt_path).get("config", {})
        row = {"run": str(path), "task": saved.get("task"), "obs_type": saved.get("obs_type"), "policy": saved.get("policy"),
               "label": saved.get("label"), "by_envs": {}}
        for n in cfg.envs:
            progress(f"{row['task']} {row['policy']} {row['label'] or ''} envs={n}")
            res = evaluate_checkpoint(ckpt_path, episodes=cfg.episodes, seed=cfg.seed, max_steps=cfg.max_steps, device="cpu", num_envs=n)
            row["by_envs"][str(n)] = {"s_per_episode": res["eval_time_s"] / cfg.episodes, "success_rate": res["success_rate"],
                                      "mean_length": res["mean_length"]}
        rows.append(row)
    from difftori.utils.config import to_dict

    return {"meta": run_meta(cfg.threads, "cpu", config=to_dict(cfg)), "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    cfg = results["meta"]["config"]
    envs = [str(n) for n in cfg["envs"]]
    ref = envs[0]
    header = ["task", "obs", "policy"] + [f"s/episode, {n} env{'s' if n != '1' else ''}" for n in envs]
    header += [f"speed-up {n} vs {ref}" for n in envs[1:]] + [f"success ({' / '.join(envs)} envs)"]
    body = []
    for r in results["rows"]:
        by = r["by_envs"]
        name = r["policy"] + (f" ({r['label']})" if r["label"] else "")
        cells = [str(r["task"]), str(r["obs_type"]), name] + [f"{by[n]['s_per_episode']:.2f}" for n in envs]
        cells += [f"{by[ref]['s_per_episode'] / by[n]['s_per_episode']:.2f}x" for n in envs[1:]]
        cells.append(" / ".join(f"{by[n]['success_rate']:.2f}" for n in envs))
        body.append(cells)
    m = results["meta"]
    cap = cfg["max_steps"] or "the task's episode length"
    lines = [
        "# IL evaluation: episodes one at a time vs side by side",
        "",
        f"{cfg['episodes']} episodes per evaluation (env seeds {cfg['seed']}..), max steps {cap}; "
        f"{m['threads']} thread(s), {m['processor']}, torch {m['torch']}, {m['date']}. Wall-clock of the whole evaluation "
        "(env steps included) divided by the episodes.",
        "",
        *md_table(header, body),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    quick = EvalSpeedConfig(quick=True, episodes=2, max_steps=20, out=str(REPO / "runs" / "bench_quick"))  # never over the results
    cfg = parse_bench_config(EvalSpeedConfig, quick, __doc__, argv)
    results = run(cfg, progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    md = markdown(results)
    write_results(cfg.out, {"il_eval_speed.json": results, "il_eval_speed.md": md}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
