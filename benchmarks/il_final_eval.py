"""The closing evaluation of one finished IL run: its final checkpoint on ``--episodes`` episodes from env seed
``--seed`` (a ``script`` cell of ``benchmarks/il_compare.py``).

il_compare gives every variant of a task, modality and training seed the same seeds (``200000 + 1000 * seed`` by
default: other seeds than the trainer's own evaluations), so the success rates are paired across methods and less
noisy than a run's last periodic evaluation (10 episodes with the small preset). torch is seeded with ``--seed`` too:
rerunning gives the same numbers. Writes ``RUN_ROOT/final_eval/config.json`` and ``final.json`` and prints
``run directory: PATH`` (the sweep runner's contract). Refuses a run whose checkpoint is not at its last step.

    python benchmarks/il_final_eval.py --checkpoint RUN_DIR --episodes 30 --seed 201000 --run-root /tmp/ev
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python benchmarks/il_final_eval.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.common import finish_script_cell  # noqa: E402

__all__ = ["final_eval", "main"]


def final_eval(checkpoint: str | Path, episodes: int, seed: int, envs: int = 10, device: str = "cpu") -> dict[str, Any]:
    """Evaluate the run's last checkpoint (which must be at the run's final step) on env seeds ``seed + j``."""
    from difftori.il.train import evaluate_checkpoint
    from difftori.utils.io import load_checkpoint
    from difftori.utils.runs import locate_checkpoint

    if episodes < 1 or envs < 1:
        raise ValueError(f"--episodes and --envs must be >= 1, got {episodes} and {envs}")
    path, _ = locate_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    cfg = ckpt.get("config") or {}
    step, steps = int(ckpt.get("step", -1)), int(cfg.get("steps", -1))
    if step < steps or steps < 0:
        raise ValueError(f"{path}: the checkpoint is at step {step} of {steps}: not a finished run")
    res = evaluate_checkpoint(path, episodes=episodes, seed=seed, device=device, num_envs=envs)
    return {"task": res["task"], "obs_type": res["obs_type"], "policy": res["policy"], "label": cfg.get("label"),
            "training_seed": cfg.get("seed"), "step": step, "episodes": episodes, "first_env_seed": seed, "envs": envs,
            "checkpoint": str(path), **{k: res[k] for k in ("success_rate", "mean_return", "mean_length", "eval_time_s")},
            "successes": [bool(r["success"]) for r in res["episodes"]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a finished run directory (or its checkpoint file)")
    p.add_argument("--episodes", type=int, default=30, help="evaluation episodes")
    p.add_argument("--seed", type=int, default=200_000, help="env seed of the first episode (episode j: seed + j)")
    p.add_argument("--envs", type=int, default=10, help="episodes run side by side")
    p.add_argument("--run-root", type=Path, required=True, help="folder for final_eval/{config,final}.json")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="device (auto, cpu, cuda[:N])")
    args = p.parse_args(argv)
    from difftori.utils.device import set_num_threads

    set_num_threads(args.num_threads)
    try:
        res = final_eval(args.checkpoint, args.episodes, args.seed, args.envs, args.device)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    finish_script_cell(args.run_root, {"checkpoint": str(args.checkpoint), "episodes": args.episodes, "seed": args.seed,
                                       "envs": args.envs}, res, ("task", "obs_type", "policy", "label", "training_seed", "success_rate"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
