"""``difftori rl train|eval|demo``: model-based RL (TD-MPC, DiffTORI) on DeepMind Control.

``train`` exposes every :class:`RLConfig` field as an option (``--seed-steps 100``,
``--difftori.max-iters 50``); ``--resume RUN_DIR`` continues an interrupted run from its last
checkpoint (the config is read from the run directory; only ``--steps`` may change, to extend
a run). ``eval`` loads a checkpoint and reports the mean return. ``demo`` trains the small
preset of :func:`demo_config` and compares the result with a random policy on the same
evaluation episodes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from difftori.rl.config import RLConfig

__all__ = ["register", "demo_config", "DEMO_PRESET"]

DEMO_PRESET: dict = dict(
    task="cartpole-balance",
    episode_length=500,
    steps=5000,
    seed_steps=124,
    schedule_steps=300,
    updates_per_step=2,
    eval_freq=2500,
    eval_episodes=5,
    checkpoint_freq=2500,
    mlp_dim=64,
    enc_dim=64,
    latent_dim=32,
    batch_size=64,
    num_samples=64,
    num_elites=8,
    iterations=3,
    num_threads=1,
    # DiffTORI acts with the solver right after the seed phase; 20 LM iterations instead of the
    # preset 100 keep acting at ~50 ms on CPU (100 iterations: ~165 ms, > 5 min for the demo).
    difftori=dict(pg_start_step=124, max_iters=20),
)
"""Small, CPU-friendly settings of ``difftori rl demo`` (chosen by measurement; see the README)."""


def demo_config(**overrides) -> RLConfig:
    """The demo preset as an :class:`RLConfig` (agent defaults to difftori)."""
    return RLConfig(**{**DEMO_PRESET, "agent": "difftori", "run_root": Path("runs/demo"), **overrides})  # dict -> DiffTORIConfig in __post_init__


def _train(args: argparse.Namespace) -> int:
    from difftori.rl import trainer
    from difftori.utils.config import dataclass_from_args

    given = {k for k in vars(args) if k not in ("area", "cmd", "func", "resume")}
    if args.resume is not None:
        extra = given - {"steps", "progress"}
        if extra:
            raise ValueError(f"--resume continues a run with its saved config; cannot change {sorted(extra)} (only --steps)")
        tr = trainer.Trainer.from_run_dir(args.resume, getattr(args, "steps", None))
        if hasattr(args, "progress"):
            tr.cfg.progress = args.progress
    else:
        cfg = dataclass_from_args(RLConfig, args)
        tr = trainer.Trainer.new(cfg)
    print(f"run directory: {tr.run_dir}")
    final = tr.train()
    print(json.dumps({k: final[k] for k in ("task", "agent", "step", "episode_return", "return_std") if k in final}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from difftori.rl import trainer

    cfg, agent, env, step = trainer.load_agent(args.checkpoint, device=args.device)
    run_dir = Path(args.checkpoint)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent.parent

    def policy(obs, t0, t):
        if t0:
            agent.reset()
        return agent.act(obs, t0=t0, eval_mode=True, step=step)

    stem = run_dir / "videos" / f"checkpoint_eval_{step * env.task_spec.action_repeat:08d}" if args.video else None
    res = trainer.evaluate(policy, env, args.episodes, args.seed, stem)
    res = {"task": cfg.task, "agent": cfg.agent, "step": step * env.task_spec.action_repeat, **res}
    print(json.dumps(res, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from difftori.rl import trainer
    from difftori.utils.io import atomic_write_json

    overrides = {k: v for k, v in (("agent", args.agent), ("steps", args.steps), ("seed", args.seed), ("run_root", args.run_root)) if v is not None}
    cfg = demo_config(**overrides)
    try:
        trainer.agent_class(cfg.agent)
    except ImportError as exc:
        raise ImportError(f"{exc}; run the baseline demo with: difftori rl demo --agent tdmpc") from None
    tr = trainer.Trainer.new(cfg)
    print(f"demo: {cfg.agent} on {cfg.task} for {cfg.steps} env steps -> {tr.run_dir}")
    final = tr.train()
    rand = trainer.random_policy_return(cfg, episodes=cfg.eval_episodes, seed=cfg.seed)
    summary = {
        "task": cfg.task, "agent": cfg.agent, "steps": final["step"], "train_time_s": round(final["train_time_s"], 1),
        "trained_return": final.get("episode_return"), "trained_return_std": final.get("return_std"),
        "random_return": rand["episode_return"], "random_return_std": rand["return_std"],
        "eval_episodes": cfg.eval_episodes, "episode_length_env_steps": cfg.episode_length,
    }
    atomic_write_json(tr.run_dir / "demo.json", summary)
    print(json.dumps(summary, indent=2))
    print(f"learning curve: {tr.run_dir / 'plot.png'}")
    return 0


def register(sub) -> None:
    """Add ``rl train|eval|demo`` to the top-level parser."""
    p = sub.add_parser("rl", help="model-based RL on DeepMind Control: train, evaluate, demo")
    rl_sub = p.add_subparsers(dest="cmd", required=True)

    from difftori.utils.config import add_dataclass_args

    t = rl_sub.add_parser("train", help="train TD-MPC or DiffTORI (every config field is an option)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue this run from its last checkpoint")
    add_dataclass_args(t, RLConfig)
    t.set_defaults(func=_train)

    e = rl_sub.add_parser("eval", help="evaluate a checkpoint (file or run directory)")
    e.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file or run directory")
    e.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    e.add_argument("--seed", type=int, default=0, help="seed of the first evaluation episode")
    e.add_argument("--video", action="store_true", help="save a video of the first episode in RUN_DIR/videos")
    e.add_argument("--device", default=None, help="override the device (auto, cpu, cuda)")
    e.set_defaults(func=_eval)

    d = rl_sub.add_parser("demo", help="a few-minute CPU demo: train on a small preset, compare with a random policy")
    d.add_argument("--agent", choices=["difftori", "tdmpc"], default=None, help="agent (default: difftori)")
    d.add_argument("--steps", type=int, default=None, help=f"env steps (default: {DEMO_PRESET['steps']})")
    d.add_argument("--seed", type=int, default=None, help="seed (default: 1)")
    d.add_argument("--run-root", type=Path, default=None, help="run root (default: runs/demo)")
    d.set_defaults(func=_demo)
