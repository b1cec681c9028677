"""Compare IL policies (bc, ibc, diffusion, difftori) on MetaWorld tasks: success rate and training time.

For every task and modality: collect demos with the scripted expert (reused if present), train
bc, ibc and diffusion, then difftori initialised from the trained diffusion checkpoint; evaluate
each on ``--eval-episodes`` episodes. Results go to ``<out>/il_compare.csv`` (one row per task,
modality and policy, rewritten atomically after every policy, so an interrupted benchmark resumes
where it stopped) and ``<out>/il_compare.md`` (success-rate table + training times).

    python benchmarks/il_compare.py --tasks door-open --modalities pointcloud
    python benchmarks/il_compare.py --tasks door-open reach --steps 2000 --difftori-steps 500
"""

from __future__ import annotations

import argparse
import csv
import io
import time
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
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; 1 is best on a busy machine)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
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
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from difftori.data.collect import collect_demos
    from difftori.il.config import ILConfig
    from difftori.il.train import train
    from difftori.utils.config import from_dict
    from difftori.utils.runs import read_csv

    if "difftori" in args.policies and "diffusion" not in args.policies:
        raise SystemExit("difftori is initialised from the trained diffusion policy: include diffusion in --policies")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_root = args.run_root or out / "il_runs"
    rows = read_csv(out / "il_compare.csv")
    for task in args.tasks:
        for mod in args.modalities:
            data = out / "data" / f"{task}_{mod}_{args.demos}.zarr"
            if not data.exists():
                rep = collect_demos(task, episodes=args.demos, obs_type=mod, out=data, progress=args.progress)
                print(rep.summary(), flush=True)
            base_ckpt = None
            for pol in [p for p in POLICIES if p in args.policies]:
                done = next((r for r in rows if (r["task"], r["modality"], r["policy"]) == (task, mod, pol)), None)
                if done is not None:
                    if pol == "diffusion":
                        base_ckpt = Path(done["run_dir"]) / "checkpoints" / "last.pt"
                    continue
                steps = args.difftori_steps if pol == "difftori" else args.steps
                cfg = from_dict(ILConfig, {
                    "task": task, "policy": pol, "obs_type": mod, "dataset": str(data), "steps": steps,
                    "batch_size": args.batch_size, "eval_freq": 0, "eval_episodes": args.eval_episodes,
                    "checkpoint_freq": max(1, steps // 4), "log_freq": max(1, min(50, steps // 10)),
                    "seed": args.seed, "device": args.device, "run_root": str(run_root),
                    "base_policy": str(base_ckpt) if pol == "difftori" else None,
                })  # fmt: skip
                t0 = time.time()
                run = train(cfg, progress=args.progress)
                wall = time.time() - t0
                ev = read_csv(run / "eval.csv")[-1]
                rows.append({
                    "task": task, "modality": mod, "policy": pol, "steps": steps,
                    "success_rate": float(ev["success_rate"]), "mean_return": float(ev["mean_return"]),
                    "train_time_s": round(wall - float(ev["eval_time_s"]), 1), "eval_time_s": round(float(ev["eval_time_s"]), 1),
                    "run_dir": str(run),
                })  # fmt: skip
                if pol == "diffusion":
                    base_ckpt = run / "checkpoints" / "last.pt"
                _write(out, rows)
                print(f"{task} {mod} {pol}: success {float(ev['success_rate']):.2f}, train {wall / 60:.1f} min", flush=True)
    print(f"wrote {out / 'il_compare.csv'} and {out / 'il_compare.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
