"""Analysis of an IL grid: how far each finished policy's action windows are from its demos' (``demo_mse``), and
whether DiffTORI's solve moves its base's actions toward the demos at inference (latents from the prior).

For every finished run of an ``il_compare`` grid (``<grid>/il_compare.csv``, status done) this reads the final
``demo_mse`` (and, for DiffTORI, ``base_demo_mse``) from the run's ``eval.csv``; runs trained before the trainer
logged it get it computed from their final checkpoint with the same function
(:func:`difftori.il.runner.demo_mse`: the same 64 demo windows of the task's dataset for every policy, a seeded
forked RNG). The success rate says whether a policy solves the task in 10 episodes; ``demo_mse`` says, with far
less noise, how closely it reproduces the demonstrated actions (on training windows: a measure of fit, not of
generalisation). A DiffTORI run's ``base_demo_mse`` is its base diffusion checkpoint's error under the same
noise, so ``demo_mse / base_demo_mse < 1`` means the refinement helps in imitation terms.

    python benchmarks/il_demo_mse.py                                          # the MetaWorld grid
    python benchmarks/il_demo_mse.py --grid benchmarks/results/il_suites --run-root runs/il_suites

Results: ``<grid>/il_demo_mse.csv`` (one row per run; kept between calls, so an interrupted analysis resumes) and
``<grid>/il_demo_mse.md``, written atomically.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python benchmarks/il_demo_mse.py` from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.common import cell_runs, md_table, parse_bench_config, write_csv_rows, write_results  # noqa: E402
from difftori.utils.runs import read_csv  # noqa: E402
from difftori.utils.config import ConfigError, check  # noqa: E402

__all__ = ["DemoMSEConfig", "run", "markdown", "main"]

FIELDS = ["task", "modality", "variant", "seed", "final", "demo_mse", "base_demo_mse", "source", "cell"]


@dataclass
class DemoMSEConfig:
    """Which grid to analyse."""

    grid: str = str(REPO / "benchmarks" / "results" / "il_compare")
    """Folder of the grid's il_compare.csv; il_demo_mse.csv / .md are written there."""
    run_root: str = str(REPO / "runs" / "il_compare")
    """The grid's sweep directory (its cells' run directories and checkpoints)."""
    windows: int = 64
    """Demo windows per run (the trainer's eval.csv uses 64: keep it to reuse those values)."""
    threads: int = 1
    """torch.set_num_threads for the whole run."""
    fresh: bool = False
    """Compute every run again instead of keeping the rows of an earlier call."""

    def __post_init__(self) -> None:
        check(self.windows >= 1 and self.threads >= 1, "windows and threads must be >= 1")


def _measure(run_dir: Path, windows: int) -> tuple[dict[str, float] | None, str]:
    """``({demo_mse[, base_demo_mse]}, source)`` of one finished run: its final eval row, else its checkpoint;
    ``(None, why)`` when it has neither."""
    from difftori.il.policies import load_policy
    from difftori.il.runner import DEMO_MSE_WINDOWS, demo_mse
    from difftori.il.train import load_windows
    from difftori.utils.io import load_checkpoint
    from difftori.utils.runs import locate_checkpoint

    evals = read_csv(run_dir / "eval.csv")
    if windows == DEMO_MSE_WINDOWS and evals and evals[-1].get("demo_mse"):
        return {k: float(evals[-1][k]) for k in ("demo_mse", "base_demo_mse") if evals[-1].get(k)}, "eval.csv"
    if not (run_dir / "checkpoints").is_dir():
        return None, "no demo_mse in its eval.csv and no checkpoint"
    path, _ = locate_checkpoint(run_dir)
    saved = load_checkpoint(path)["config"]
    policy = load_policy(path, device="cpu")
    data, _, _ = load_windows(saved["dataset"], saved["obs_type"], policy.obs_steps, policy.action_steps, task=saved["task"])
    return demo_mse(policy, data, count=windows), "checkpoint"


def _run_dirs(run_root: Path, archive: Path, cell: str) -> list[Path]:
    """A finished cell's run directories: those with a checkpoint in the sweep, else its logs (``eval.csv``) in the
    sweep or in the grid's committed archive (runs trained elsewhere log ``demo_mse`` there)."""
    if found := cell_runs(run_root, cell):
        return found
    for root in (run_root / "cells" / cell / "run", archive / cell / "run"):
        if root.is_dir() and (logged := sorted(p.parent for p in root.rglob("eval.csv"))):
            return logged
    return []


def run(cfg: DemoMSEConfig, progress: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    from difftori.utils.device import set_num_threads

    grid, run_root = Path(cfg.grid), Path(cfg.run_root)
    done = [r for r in read_csv(grid / "il_compare.csv") if r.get("status") == "done"]
    check(bool(done), f"no finished runs in {grid / 'il_compare.csv'} (run benchmarks/il_compare.py first)")
    set_num_threads(cfg.threads)
    out_csv = grid / "il_demo_mse.csv"
    have = {} if cfg.fresh else {r["cell"]: r for r in read_csv(out_csv)}
    rows: list[dict[str, Any]] = []
    for r in done:
        row = {k: r.get(k) for k in ("task", "modality", "variant", "seed", "final", "cell")}
        if r["cell"] in have:
            rows.append({**have[r["cell"]], "final": r.get("final")})
            continue
        found = _run_dirs(run_root, grid / "cells", r["cell"])
        if not found:
            progress(f"skip {r['cell']}: no run directory under {run_root / 'cells' / r['cell']} or {grid / 'cells'}")
            continue
        progress(f"{r['task']} {r['modality']} {r['variant']} seed {r['seed']}")
        fit, source = _measure(found[-1], cfg.windows)
        if fit is None:
            progress(f"skip {r['cell']}: {source}")
            continue
        rows.append({**row, **fit, "source": source})
        write_csv_rows(out_csv, FIELDS, rows + [v for k, v in have.items() if k not in {x["cell"] for x in rows}])
    write_csv_rows(out_csv, FIELDS, rows)
    return rows


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def markdown(rows: list[dict[str, Any]], cfg: DemoMSEConfig, finished: int | None = None) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    coverage = (f" {len(rows)} of the grid's {finished} finished runs have it (the others logged no demo_mse "
                "and their checkpoints are not on this machine)." if finished and finished > len(rows) else "")
    lines = ["# IL: the policies' action error on their demos (demo_mse)", "",
             f"Mean squared error (env action units) between the action windows a finished run predicts on {cfg.windows} "
             "fixed demo windows of its task's dataset and the demos' own, at the end of training (mean ± std over "
             "seeds). Training windows: this measures fit, not generalisation; the success rate is in il_compare.md. "
             "For DiffTORI, `ratio` = its demo_mse / its base diffusion checkpoint's on the same windows under the same "
             f"noise (< 1: the solve moves the base's actions toward the demos).{coverage}", ""]
    for modality in dict.fromkeys(r["modality"] for r in rows):
        mine = [r for r in rows if r["modality"] == modality]
        by = defaultdict(list)
        for r in mine:
            by[(r["task"], r["variant"])].append(_num(r.get("demo_mse")))
        body = []
        for t in dict.fromkeys(r["task"] for r in mine):
            cells = []
            for v in variants:
                xs = [x for x in by[(t, v)] if math.isfinite(x)]
                cells.append(f"{np.mean(xs):.4f} ± {np.std(xs):.4f}" + ("" if len(xs) > 1 else " (n=1)") if xs else "-")
            body.append([t, *cells])
        lines += [f"## {modality}", "", *md_table(["task", *variants], body), ""]
        for v in [v for v in variants if v.startswith("difftori")]:
            ratios = [_num(r.get("demo_mse")) / _num(r.get("base_demo_mse")) for r in mine
                      if r["variant"] == v and _num(r.get("base_demo_mse")) > 0]
            ratios = [x for x in ratios if math.isfinite(x)]
            if ratios:
                lines.append(f"- `{v}` / its base: ratio {np.mean(ratios):.3f} ± {np.std(ratios):.3f} over {len(ratios)} runs, "
                             f"below 1 in {sum(x < 1 for x in ratios)}, median {np.median(ratios):.3f}.")
        # the base's error measured inside a DiffTORI run is its diffusion run's own (same checkpoint, same noise)
        diff = {(r["task"], r["seed"]): _num(r.get("demo_mse")) for r in mine if r["variant"] == "diffusion"}
        gaps = [abs(_num(r.get("base_demo_mse")) - diff[(r["task"], r["seed"])]) for r in mine
                if r["variant"].startswith("difftori") and (r["task"], r["seed"]) in diff and r.get("base_demo_mse")]
        gaps = [g for g in gaps if math.isfinite(g)]
        if gaps:
            lines.append(f"- Check: a DiffTORI run's base_demo_mse vs its diffusion run's demo_mse: max |difference| "
                         f"{max(gaps):.2e} over {len(gaps)} pairs.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_bench_config(DemoMSEConfig, None, __doc__, argv)
    try:
        rows = run(cfg, progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    except ConfigError as exc:  # nothing to measure: one line, nothing written
        print(f"{Path(__file__).name}: error: {exc}", file=sys.stderr)
        return 2
    finished = sum(r.get("status") == "done" for r in read_csv(Path(cfg.grid) / "il_compare.csv"))
    md = markdown(rows, cfg, finished)
    write_results(cfg.grid, {"il_demo_mse.md": md}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
