"""The closing evaluation of one finished RL run: its final checkpoint acts for ``--episodes`` episodes on the
fixed env seeds ``--seed``, ``--seed`` + 1, ... (a ``script`` cell of ``benchmarks/rl_compare.py``).

rl_compare gives every variant and seed of a task the same seeds, so the returns are paired across methods and
far less noisy than one periodic evaluation of a few episodes. Writes ``RUN_ROOT/final_eval/config.json`` and
``final.json`` (mean, std and every episode's return) and prints ``run directory: PATH`` (the sweep runner's
contract). Refuses a run whose last checkpoint is not its final step (an unfinished run).

    python benchmarks/rl_final_eval.py --checkpoint RUN_DIR --episodes 20 --seed 100000 --run-root /tmp/ev
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python benchmarks/rl_final_eval.py` from anywhere
    sys.path.insert(0, str(REPO))

from difftori.rl.config import ACT_MODES  # noqa: E402
from benchmarks.common import finish_script_cell  # noqa: E402

__all__ = ["final_eval", "main"]


def final_eval(checkpoint: Path, episodes: int, seed: int, act: str = "agent", device: str | None = None) -> dict:
    """Evaluate the run's last checkpoint (which must be its final step) on ``episodes`` episodes from env seed ``seed``."""
    from difftori.rl import trainer
    from difftori.utils.runs import locate_checkpoint

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    path, run_dir = locate_checkpoint(checkpoint)
    cfg, agent, env, step = trainer.load_agent(path, device=device, act=act)
    env_step = step * env.task_spec.action_repeat
    final_path = run_dir / "final.json" if run_dir is not None else None
    if final_path is None or not final_path.exists():
        raise ValueError(f"{checkpoint}: not a finished run (no final.json beside its checkpoints)")
    final_step = int(json.loads(final_path.read_text())["step"])
    if env_step < final_step:
        raise ValueError(f"{path}: the checkpoint is at env step {env_step}, the run ended at {final_step}")
    from difftori.utils.seeding import seed_everything

    seed_everything(seed)  # the planner's sampling too: the same evaluation whenever it is rerun
    t0 = time.perf_counter()
    res = trainer.evaluate(trainer.acting_policy(agent, step, act), env, episodes, seed)
    env.close()
    return {"task": cfg.task, "agent": cfg.agent, "label": cfg.label, "seed": cfg.seed, "act": act, "step": env_step,
            "episodes": episodes, "first_env_seed": seed, "checkpoint": str(path), "eval_time_s": time.perf_counter() - t0, **res}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a finished run directory (or its checkpoint file)")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes")
    p.add_argument("--seed", type=int, default=100_000, help="env seed of the first episode (episode i: seed + i)")
    p.add_argument("--act", choices=ACT_MODES, default="agent", help="how the checkpoint acts (see `difftori rl eval --help`)")
    p.add_argument("--run-root", type=Path, required=True, help="folder for final_eval/{config,final}.json")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="device (auto, cpu, cuda[:N])")
    args = p.parse_args(argv)
    from difftori.utils.device import set_num_threads

    set_num_threads(args.num_threads)
    try:
        res = final_eval(args.checkpoint, args.episodes, args.seed, args.act, args.device)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    finish_script_cell(args.run_root, {"checkpoint": str(args.checkpoint), "episodes": args.episodes, "seed": args.seed,
                                       "act": args.act}, res, ("task", "agent", "label", "seed", "step", "episode_return", "return_std"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
