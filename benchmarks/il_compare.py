"""Compare IL policies (bc, ibc, diffusion, difftori) on MetaWorld tasks: success rate and training time.

A grid of the sweep runner (``difftori.sweep``): for every task and modality, collect demos with the
scripted expert, train bc, ibc and diffusion, then difftori initialised from the trained diffusion
run of the same task and modality; evaluate each on ``--eval-episodes`` episodes. Each step is a cell
of the sweep in ``--run-root`` (default ``<out>/il_runs``): finished cells are reused, interrupted
ones resumed, so an interrupted benchmark continues where it stopped. Results go to
``<out>/il_compare.csv`` (one row per task, modality and policy) and ``<out>/il_compare.md``
(success-rate table + training times); the sweep's own report is in the run root.

    python benchmarks/il_compare.py --tasks door-open --modalities pointcloud
    python benchmarks/il_compare.py --tasks door-open reach --steps 2000 --difftori-steps 500
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from difftori.utils.io import atomic_write_text

POLICIES = ("bc", "ibc", "diffusion", "difftori")
FIELDS = ["task", "modality", "policy", "steps", "success_rate", "mean_return", "train_time_s", "eval_time_s", "run_dir"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["door-open"], help="MetaWorld tasks (default: door-open)")
    p.add_argument("--modalities", nargs="+", default=["pointcloud"], choices=["pointcloud", "image", "state"], help="observation types (default: pointcloud)")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES, help="policies to train (difftori needs diffusion)")
    p.add_argument("--demos", type=int, default=10, help="demos per task (default: 10)")
    p.add_argument("--steps", type=int, default=1000, help="gradient steps for bc, ibc and diffusion (default: 1000)")
    p.add_argument("--difftori-steps", type=int, default=300, help="gradient steps for difftori (default: 300)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--eval-episodes", type=int, default=20, help="evaluation episodes per policy (default: 20)")
    p.add_argument("--seed", type=int, default=1, help="training seed (default: 1)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    p.add_argument("--run-root", type=Path, default=None, help="run dirs (default: <out>/il_runs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (= CPUs) per run (default: 1)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel on the local Ray cluster (default: 1)")
    p.add_argument("--progress", action="store_true", help="ignored (kept for old command lines): every run logs to its cell's log.txt")
    return p.parse_args(argv)


def _write(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "il_compare.csv", buf.getvalue())
    policies = [p for p in POLICIES if any(r["policy"] == p for r in rows)]
    lines = [
        "# IL success rates (MetaWorld)", "",
        "| task | modality | " + " | ".join(policies) + " |",
        "|---|---|" + "---|" * len(policies),
    ]  # fmt: skip
    for task, mod in dict.fromkeys((r["task"], r["modality"]) for r in rows):
        cells = []
        for pol in policies:
            r = next((r for r in rows if (r["task"], r["modality"], r["policy"]) == (task, mod, pol)), None)
            cells.append("-" if r is None else f"{float(r['success_rate']):.2f} ({float(r['train_time_s']) / 60:.1f} min, {r['steps']} steps)")
        lines.append(f"| {task} | {mod} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: success rate over the evaluation episodes (training wall time, gradient steps)."]
    atomic_write_text(out / "il_compare.md", "\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    from difftori.sweep.grid import il_grid
    from difftori.sweep.runner import SweepOptions, cell_dir, read_state, run_sweep
    from difftori.utils.config import ConfigError
    from difftori.utils.runs import read_csv

    run_root = (args.run_root or args.out / "il_runs").absolute()
    threads = args.threads or 1
    options = ["--batch-size", args.batch_size, "--eval-freq", 0, "--eval-episodes", args.eval_episodes]
    policies = [p for p in POLICIES if p in args.policies]
    try:
        cells = il_grid(args.tasks, policies, args.modalities, [args.seed], args.steps, demos=args.demos, options=options,
                        policy_steps={"difftori": args.difftori_steps} if "difftori" in policies else None)
    except ConfigError as exc:
        raise SystemExit(f"il_compare: error: {exc}") from None
    gpus = {"cpu": 0.0, "auto": None}.get(args.device, 1.0)
    states = run_sweep(cells, run_root, SweepOptions(num_cpus=args.jobs * threads, cpus_per_run=threads, gpus_per_run=gpus,
                                                     max_parallel=args.jobs),
                       log=lambda m: print(m.replace("[sweep]", "[il_compare]"), flush=True))
    rows = []
    for c in cells:
        st = {**read_state(run_root, c.id), **states.get(c.id, {})}
        if c.area != "il" or st["status"] != "done":
            continue
        run = (cell_dir(run_root, c.id) / st["run_dir"]).resolve()
        ev = read_csv(run / "eval.csv")[-1]
        rows.append({
            "task": c.task, "modality": c.obs_type, "policy": c.variant, "steps": c.steps,
            "success_rate": float(ev["success_rate"]), "mean_return": float(ev["mean_return"]),
            "train_time_s": round(float(st["wall_s"]) - float(ev["eval_time_s"]), 1), "eval_time_s": round(float(ev["eval_time_s"]), 1),
            "run_dir": str(run),
        })  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out, rows)
    print(f"wrote {args.out / 'il_compare.csv'} and {args.out / 'il_compare.md'}")
    return 0 if all(s["status"] == "done" for s in states.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
