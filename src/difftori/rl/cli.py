"""``difftori rl train|eval|demo``: model-based RL (TD-MPC, DiffTORI) on DeepMind Control.

``train`` exposes every :class:`RLConfig` field as an option (``--seed-steps 100``,
``--difftori.max-iters 50``); ``--resume RUN_DIR`` continues an interrupted run from its last
checkpoint (the config is read from the run directory; only ``--steps`` may grow, plus the
runtime options ``--progress``, ``--num-threads``, ``--device``). ``eval`` loads a checkpoint
and reports the mean return. ``demo`` trains the small preset of :func:`demo_config` and
compares the result with a random policy on the same evaluation episodes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from difftori.rl.config import ACT_MODES, SMALL_SIZES, RLConfig, preset_overrides

__all__ = ["register", "demo_config", "train_config", "DEMO_PRESET"]

DEMO_PRESET: dict = dict(
    preset="small",
    **SMALL_SIZES,
    task="cartpole-balance",
    episode_length=500,
    steps=5000,
    seed_steps=124,
    schedule_steps=300,
    updates_per_step=2,
    eval_freq=2500,
    eval_episodes=5,
    checkpoint_freq=2500,
    num_threads=1,
    # DiffTORI acts with the solver right after the seed phase; 20 LM iterations instead of the
    # preset 100 keep acting at ~50 ms on CPU (100 iterations: ~165 ms, > 5 min for the demo).
    difftori=dict(pg_start_step=124, max_iters=20),
)
"""Small, CPU-friendly settings of ``difftori rl demo`` (chosen by measurement; see the README)."""


def demo_config(**overrides) -> RLConfig:
    """The demo preset as an :class:`RLConfig` (agent defaults to difftori)."""
    return RLConfig(**{**DEMO_PRESET, "agent": "difftori", "run_root": Path("runs/demo"), **overrides})  # dict -> DiffTORIConfig in __post_init__


def train_config(args: argparse.Namespace) -> RLConfig:
    """The config of a new ``rl train`` run from its parsed options: preset values first, the options given win."""
    from difftori.utils.config import dataclass_from_args

    cfg = dataclass_from_args(RLConfig, args)
    if cfg.preset != "paper":
        cfg = dataclass_from_args(RLConfig, args, preset=preset_overrides(cfg.preset, cfg.task, cfg.steps, cfg.action_repeat))
    return cfg


def _train(args: argparse.Namespace) -> int:
    from difftori.rl import trainer
    from difftori.utils.config import RUNTIME_FIELDS, load_config, resume_config

    if args.resume is not None:
        from difftori.utils.runs import find_run

        run_dir = find_run(args.resume, need_checkpoint=False)
        # the return gradient's mode changes how the solver's values are computed, not which: a resume may switch it
        cfg = resume_config(RLConfig, load_config(RLConfig, run_dir / "config.json"), args,
                            runtime=(*RUNTIME_FIELDS, "difftori.return_grad"))
        tr = trainer.Trainer.from_run_dir(run_dir, cfg=cfg)
    else:
        tr = trainer.Trainer.new(train_config(args))
    print(f"run directory: {tr.run_dir}", flush=True)
    final = tr.train()
    print(json.dumps({k: final[k] for k in ("task", "agent", "step", "episode_return", "return_std") if k in final}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from difftori.rl import trainer
    from difftori.utils.device import set_num_threads
    from difftori.utils.runs import locate_checkpoint

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    set_num_threads(args.num_threads)
    path, run_dir = locate_checkpoint(args.checkpoint)
    cfg, agent, env, step = trainer.load_agent(path, device=args.device, act=args.act)
    policy = trainer.acting_policy(agent, step, args.act)
    from difftori.utils.seeding import seed_everything

    seed_everything(args.seed)  # the planner's / solver's sampling too: the same command gives the same returns

    env_step = step * env.task_spec.action_repeat
    video_dir = args.video_dir or (run_dir / "videos" if run_dir is not None else Path("videos"))
    stem = video_dir / f"checkpoint_eval_{env_step:08d}" if args.video else None
    res = trainer.evaluate(policy, env, args.episodes, args.seed, stem)
    env.close()
    res = {"task": cfg.task, "agent": cfg.agent, "act": args.act, "checkpoint": str(path), "step": env_step, **res}
    if args.out:
        from difftori.utils.io import atomic_write_json

        atomic_write_json(args.out, res)
    print(json.dumps(res, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from difftori.rl import trainer
    from difftori.utils.io import atomic_write_json
    from difftori.utils.plotting import plot_learning_curve

    names = ("agent", "steps", "seed", "run_root", "num_threads", "progress")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    cfg = demo_config(**overrides)
    try:
        trainer.agent_class(cfg.agent)
    except ImportError as exc:
        raise ImportError(f"{exc}; run the baseline demo with: difftori rl demo --agent tdmpc") from None
    tr = trainer.Trainer.new(cfg)
    print(f"demo: {cfg.agent} on {cfg.task} for {cfg.steps} env steps; run directory: {tr.run_dir}", flush=True)
    final = tr.train()
    rand = trainer.random_policy_return(cfg, episodes=cfg.eval_episodes, seed=cfg.seed)
    summary = {
        "task": cfg.task, "agent": cfg.agent, "steps": final["step"], "train_time_s": round(final["train_time_s"], 1),
        "trained_return": final.get("episode_return"), "trained_return_std": final.get("return_std"),
        "random_return": rand["episode_return"], "random_return_std": rand["return_std"],
        "eval_episodes": cfg.eval_episodes, "episode_length_env_steps": cfg.episode_length,
    }
    atomic_write_json(tr.run_dir / "demo.json", summary)
    plot = plot_learning_curve(tr.run_dir, tr.run_dir / "plot.png", baseline=("random policy", rand["episode_return"], rand["return_std"]))
    print(json.dumps(summary, indent=2))
    print(f"learning curve: {plot}")
    return 0


def register(sub) -> None:
    """Add ``rl train|eval|demo`` to the top-level parser."""
    p = sub.add_parser("rl", help="model-based RL on DeepMind Control: train, evaluate, demo")
    rl_sub = p.add_subparsers(dest="cmd", required=True)

    from difftori.utils.config import add_dataclass_args, parse_bool

    t = rl_sub.add_parser("train", help="train TD-MPC or DiffTORI (every config field is an option)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue this run (or the newest run in this folder) from its last checkpoint; "
                        "only --steps (to extend), --progress, --num-threads and --device may be given with it")
    add_dataclass_args(t, RLConfig)
    t.set_defaults(func=_train)

    e = rl_sub.add_parser("eval", help="evaluate a checkpoint (file, run directory, or a folder of runs: the newest)")
    e.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file, run directory, or folder holding runs (its newest run)")
    e.add_argument("--episodes", type=int, default=10, help="evaluation episodes (default: 10)")
    e.add_argument("--seed", type=int, default=0, help="seed of the first evaluation episode (default: 0)")
    e.add_argument("--video", action="store_true", help="save a video (mp4, else gif) of the first episode")
    e.add_argument("--video-dir", type=Path, default=None,
                   help="folder for the video (default: RUN_DIR/videos for a run's checkpoint, else ./videos)")
    e.add_argument("--act", choices=ACT_MODES, default="agent",
                   help="how the checkpoint acts: agent (as trained), planner (TD-MPC's MPPI on its model), pi (the policy "
                        "network), solver (DiffTORI's optimizer on its model, also for a TD-MPC checkpoint)")
    e.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    e.add_argument("--device", default=None, help="override the device (auto, cpu, cuda[:N])")
    e.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    e.set_defaults(func=_eval)

    d = rl_sub.add_parser("demo", help="a few-minute CPU demo: train on a small preset, compare with a random policy")
    d.add_argument("--agent", choices=["difftori", "tdmpc"], default=None, help="agent (default: difftori)")
    d.add_argument("--steps", type=int, default=None, help=f"env steps (default: {DEMO_PRESET['steps']})")
    d.add_argument("--seed", type=int, default=None, help="seed (default: 1)")
    d.add_argument("--run-root", type=Path, default=None, help="run root (default: runs/demo)")
    d.add_argument("--num-threads", type=int, default=None, help=f"torch CPU threads (default: {DEMO_PRESET['num_threads']})")
    d.add_argument("--progress", type=parse_bool, default=None, metavar="BOOL", help="progress output (default: true)")
    d.set_defaults(func=_demo)
