"""Measure every learning test's statistics over seeds and CPU kernels, and their margin to the limit.

Each (test, CPU capability, seed) cell runs in its own process (``ATEN_CPU_CAPABILITY`` is read
when torch loads), one torch thread, ``--jobs`` at once. Cells already in the CSV are not re-run.
Outputs ``benchmarks/results/learning_margins.{csv,md}``: per statistic the limit, the measured
range per capability and overall, and the worst-case margin (distance of the worst value to the
limit, relative to the limit).

    python benchmarks/learning_margins.py --seeds 0 1 2 3 4 5 --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from difftori.utils.io import atomic_write_text  # noqa: E402
from tests.learning import REGISTRY, load  # noqa: E402

CAPS = ("default", "avx2", "avx512")
FIELDS = ["test", "capability", "seed", "stat", "value", "seconds"]

CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
from tests.learning import load
fn, _ = load(sys.argv[1])
t = time.perf_counter()
stats = fn(int(sys.argv[2]))
print("RESULT " + json.dumps({"stats": {k: float(v) for k, v in stats.items()}, "seconds": time.perf_counter() - t}))
"""


def run_cell(test: str, cap: str, seed: int) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "egl"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", CHILD, test, str(seed)], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{test} cap={cap} seed={seed} failed:\n{p.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def margin(op: str, limit: float, worst: float) -> float:
    """Relative distance of the worst value to the limit (positive = passes)."""
    scale = abs(limit) if limit != 0 else 1.0
    return (limit - worst) / scale if op in ("<", "<=") else (worst - limit) / scale


def report(rows: list[dict], out: Path) -> str:
    lines = [
        "# Learning tests: measured statistics vs their limits",
        "",
        "Produced by `python benchmarks/learning_margins.py` (one torch thread per cell, each cell its own process "
        "with `ATEN_CPU_CAPABILITY` set). Range = min-max over all seeds of that capability; worst = the value "
        "closest to the limit over every seed and capability; margin = its distance to the limit relative to the limit.",
        "",
        "| test | statistic | limit | " + " | ".join(CAPS) + " | worst | margin | seeds | s / run |",
        "|---|---|---|" + "---|" * len(CAPS) + "---|---|---|---|",
    ]
    for test in REGISTRY:
        _, limits = load(test)
        trows = [r for r in rows if r["test"] == test]
        if not trows:
            continue
        secs = {(r["capability"], r["seed"]): float(r["seconds"]) for r in trows}
        seeds = sorted({int(r["seed"]) for r in trows})
        for stat, (op, lim) in limits.items():
            vals = {c: [float(r["value"]) for r in trows if r["stat"] == stat and r["capability"] == c] for c in CAPS}
            allv = [v for vs in vals.values() for v in vs]
            if not allv:
                continue
            worst = max(allv) if op in ("<", "<=") else min(allv)
            cells = [f"{min(v):.4g}-{max(v):.4g}" if v else "-" for v in vals.values()]
            m = margin(op, lim, worst)
            lines.append(f"| {test} | {stat} | {op} {lim:g} | " + " | ".join(cells)
                         + f" | {worst:.4g} | {m:+.0%} | {','.join(map(str, seeds))} | {sum(secs.values()) / len(secs):.1f} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    ap.add_argument("--caps", nargs="+", default=list(CAPS), choices=list(CAPS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    csv_path = args.out_dir / "learning_margins.csv"
    rows = read_rows(csv_path)
    done = {(r["test"], r["capability"], r["seed"]) for r in rows}
    todo = [(t, c, s) for t in args.tests for c in args.caps for s in args.seeds if (t, c, str(s)) not in done]
    # longest first, so the two workers finish together
    todo.sort(key=lambda x: x[0] != "rl/tdmpc_learns")
    print(f"{len(todo)} cells to run ({len(done)} already measured)", flush=True)
    t0 = time.time()

    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_cell, *cell): cell for cell in todo}
        for fut in as_completed(futures):
            test, cap, seed = futures[fut]
            try:
                res = fut.result()
            except RuntimeError as e:
                failed += 1
                print(e, file=sys.stderr, flush=True)
                continue
            for k, v in res["stats"].items():
                rows.append({"test": test, "capability": cap, "seed": seed, "stat": k, "value": v, "seconds": res["seconds"]})
            write_rows(csv_path, rows)
            print(f"[{time.time() - t0:6.0f}s] {test} {cap} seed={seed}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in res["stats"].items()), flush=True)
    print(report(rows, args.out_dir / "learning_margins.md"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
