"""One trainer for every IL policy (``difftori il train``) and the evaluation command (``difftori il eval``).

The trainer loads the demo windows once (into tensors on the training device), fits the
normalizer, builds the policy from the registry, and runs AdamW with warm-up + cosine decay.
It logs ``train.csv`` (loss and policy metrics), evaluates the success rate periodically
(``eval.csv``, with :func:`~difftori.il.runner.demo_mse`: the error of the policy's action windows on demo
windows), saves atomic resumable checkpoints (policy incl. normalizer, optimizer, scheduler, RNG, step) to
``checkpoints/last.pt`` and draws ``plot.png`` at the end.
``--resume RUN_DIR`` continues a run from its last checkpoint without losing or duplicating
logged rows; it refuses options that contradict the checkpoint (only ``--steps`` may grow).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from difftori.il.base import OBS_KEYS, Policy, policy_obs_shapes
from difftori.il.config import IL_PRESETS, INFERENCE_SELECT, ILConfig, preset_for
from difftori.utils.config import RUNTIME_FIELDS, ConfigError, add_dataclass_args, dataclass_from_args, load_config, save_config, to_dict

__all__ = ["train", "train_config", "evaluate_checkpoint", "load_windows", "fit_normalizer", "register_cli", "EVAL_SEED_BASE"]

EVAL_SEED_BASE = 100_000
"""Evaluation episodes use env seeds from here on, away from the demo-collection seeds."""


# ------------------------------------------------------------------ data ---------------------
def load_windows(
    source, obs_type: str, obs_steps: int, action_steps: int, task: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """All ``(obs history, action window)`` samples of a demo dataset, stacked into tensors.

    ``source`` is a dataset path or an in-memory ``DemoData`` (checked against ``task`` and
    ``obs_type`` when loaded from a path). Returns ``(windows, stats, env_options)``:
    ``windows = {"obs": {key: (N, To, ...)}, "action": (N, Ta, A)}`` with only the entries an
    ``obs_type`` policy uses, ``stats`` (every step once) to fit the normalizer, and the env
    options the demos were recorded with (evaluation rebuilds the same env). Ten demos fit in
    memory easily; sampling batches from tensors avoids per-step Python collation.
    """
    from difftori.data.dataset import DemoData, DemoWindowDataset, load_demos

    data = source if isinstance(source, DemoData) else load_demos(source, expect_task=task, expect_obs_type=obs_type)
    ds = DemoWindowDataset(data, obs_steps=obs_steps, action_steps=action_steps)
    if len(ds) == 0:
        raise ValueError(f"dataset {source} has no steps")
    shapes = policy_obs_shapes(obs_type, {k: tuple(v.shape[1:]) for k, v in ds[0]["obs"].items()})
    items = [ds[i] for i in range(len(ds))]
    obs = {k: torch.stack([it["obs"][k] for it in items]) for k in shapes}
    action = torch.stack([it["action"] for it in items]).float()
    stats = {k: v for k, v in ds.stats_data().items() if k == "action" or k in shapes}
    return {"obs": obs, "action": action}, stats, data.env_options


def fit_normalizer(stats: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Normalizer fitted on the actions and the non-image observation entries (images are scaled by the encoder)."""
    from difftori.il.policies import new_normalizer

    norm = new_normalizer()
    norm.fit({k: v for k, v in stats.items() if v.dtype != torch.uint8})
    return norm


def _batch(windows: dict[str, Any], idx: torch.Tensor) -> dict[str, Any]:
    return {"obs": {k: v[idx] for k, v in windows["obs"].items()}, "action": windows["action"][idx], "index": idx}


# ------------------------------------------------------------------ pieces -------------------
def _renderer(task: str) -> str | None:
    """The task's suite renderer (``mujoco`` / ``sapien``), None for an unknown task (the env reports it)."""
    from difftori.envs import suite_of

    found = suite_of(task)
    return found[0].RENDERER if found else None


def _adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where every parameter is a float tensor on CPU or CUDA: the same update to
    float rounding, ~5x faster than the per-tensor loop on a diffusion UNet's ~130 tensors (~15% of its step)."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def _lr_lambda(cfg: ILConfig):
    floor = cfg.lr_min / cfg.lr

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _obs_type_of(obs_keys) -> str | None:
    """The modality whose observation entries are exactly ``obs_keys`` (None if none is)."""
    return next((t for t, keys in OBS_KEYS.items() if set(keys) == set(obs_keys)), None)


def _load_base(cfg: ILConfig, device: torch.device, obs_shapes=None, action_dim: int | None = None) -> Policy | None:
    """The frozen base policy of a DiffTORI run, checked (before any file is written) to be a diffusion
    checkpoint of this run's task, observation type and action window."""
    if cfg.policy != "difftori" or cfg.difftori.init != "base":
        return None
    from difftori.il.policies import build_policy, new_normalizer, resolve_checkpoint
    from difftori.utils.io import CorruptFileError, load_checkpoint

    path = resolve_checkpoint(cfg.base_policy)
    ckpt = load_checkpoint(path, map_location="cpu")
    info = ckpt.get("policy_info") if isinstance(ckpt, dict) else None
    if not info or "policy" not in ckpt:
        raise CorruptFileError(f"--base-policy {path} is not an IL policy checkpoint (no policy_info/policy entries)")
    bad = f"--base-policy {path} must be a diffusion checkpoint of this run's task, obs type and action window"
    if info["policy"] != "diffusion":
        raise ValueError(f"{bad}; it is a {info['policy']!r} policy")
    saved = ckpt.get("config") or {}
    base_obs = _obs_type_of(info["obs_shapes"])
    if base_obs != cfg.obs_type or saved.get("obs_type", cfg.obs_type) != cfg.obs_type:
        raise ValueError(f"{bad}; it was trained on obs_type {saved.get('obs_type', base_obs)!r}, this run uses {cfg.obs_type!r}")
    if saved.get("task", cfg.task) != cfg.task:
        raise ValueError(f"{bad}; it was trained on task {saved['task']!r}, this run is {cfg.task!r}")
    if obs_shapes is not None and {k: tuple(v) for k, v in info["obs_shapes"].items()} != {k: tuple(v) for k, v in obs_shapes.items()}:
        raise ValueError(f"{bad}; its observation shapes {info['obs_shapes']} differ from the dataset's {dict(obs_shapes)}")
    window = (int(info["obs_steps"]), int(info["action_steps"]), int(info["action_dim"]))
    want = (cfg.obs_steps, cfg.action_steps, action_dim if action_dim is not None else window[2])
    if window != want:
        raise ValueError(f"{bad}; its (obs_steps, action_steps, action_dim) = {window}, this run needs {want}")
    base = build_policy(info)
    base.set_normalizer(new_normalizer())
    base.load_state_dict(ckpt["policy"])
    return base.to(device).eval()


def _plot(run_dir: Path) -> Path | None:
    """``plot.png``: training loss and success rate against step."""
    from difftori.utils.runs import read_csv

    train_rows, eval_rows = read_csv(run_dir / "train.csv"), read_csv(run_dir / "eval.csv")
    if not train_rows and not eval_rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if train_rows:
        axes[0].plot([float(r["step"]) for r in train_rows], [float(r["loss"]) for r in train_rows])
        axes[0].set_yscale("log")
    axes[0].set(title="training loss", xlabel="step")
    if eval_rows:
        axes[1].plot([float(r["step"]) for r in eval_rows], [float(r["success_rate"]) for r in eval_rows], marker="o")
    axes[1].set(title="success rate", xlabel="step", ylim=(-0.05, 1.05))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "plot.png"
    tmp = run_dir / ".plot.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


# ------------------------------------------------------------------ training -----------------
RESUME_RUNTIME = (*RUNTIME_FIELDS, "difftori.cost_grad", "eval_envs", "eval_stop_on_success", "encoder_precision")
"""What a resumed run may change: the runtime fields, how DiffTORI's cost gradient is computed (not its value),
how many evaluation episodes run side by side and whether they stop at their first success (the same success rate),
and the encoders' precision (bf16 autocast learns the fp32 curve to the third digit: a speed choice per machine,
benchmarks/results/il_encoder_precision.md)."""


def _record_runtime(run_dir: Path, step: int, policy: Policy, device: torch.device) -> None:
    """Append how this (re)start of the run computes to ``runtime.json``: one entry per segment, so a run resumed
    on another machine says which steps ran where and in which encoder precision."""
    from difftori.models.encoders import resolve_precision
    from difftori.utils.io import atomic_write_json

    path = run_dir / "runtime.json"
    segments = json.loads(path.read_text()) if path.exists() else []
    segments.append({
        "step": step, "device": str(device), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__, "encoder_precision": policy.encoder_precision,
        "encoder_precision_used": resolve_precision(policy.encoder_precision, device),
    })
    atomic_write_json(path, segments)


def _check_resume(saved: ILConfig, cfg: ILConfig) -> None:
    """Refuse a resumed config that differs from the saved one except in ``steps`` (>=) and runtime fields."""
    from difftori.utils.config import _flatten

    a, b = _flatten(to_dict(saved)), _flatten(to_dict(cfg))
    changed = sorted(k for k in a if k not in RESUME_RUNTIME and k != "steps" and a[k] != b.get(k))
    if changed:
        raise ConfigError(f"--resume continues a run with its saved config; cannot change {changed} (only --steps, to extend the budget)")
    if cfg.steps < saved.steps:
        raise ConfigError(f"steps {cfg.steps} is below the run's budget of {saved.steps}; a resumed run can only be extended")


def train(
    cfg: ILConfig | None = None,
    resume: str | Path | None = None,
    progress: bool | None = None,
    announce: Callable[[Path], None] | None = None,
) -> Path:
    """Train ``cfg.policy`` (or continue the run in ``resume``); returns the run directory.

    ``progress`` overrides ``cfg.progress``; ``announce(run_dir)`` is called once the run
    directory exists, before the first step. On resume ``cfg`` may only extend ``steps`` or
    change runtime fields; ``config.json`` is only rewritten with the larger ``steps``.
    """
    from difftori.il.policies import build_policy, policy_from_config
    from difftori.il.runner import demo_mse, evaluate
    from difftori.utils.device import resolve_device, set_num_threads
    from difftori.utils.io import load_checkpoint, save_checkpoint
    from difftori.utils.runs import CHECKPOINT_NAME, MetricsLogger, checkpoint_path, find_run, new_run_dir
    from difftori.utils.seeding import get_rng_state, seed_everything, set_rng_state

    ckpt = None
    if resume is not None:
        run_dir = find_run(resume)
        saved = load_config(ILConfig, run_dir / "config.json")
        cfg = cfg or saved
        _check_resume(saved, cfg)
        ckpt = load_checkpoint(checkpoint_path(run_dir))
    elif cfg is None:
        raise ValueError("train() needs a config or a run dir to resume")
    if not cfg.dataset:
        raise ValueError("no dataset given: pass --dataset PATH (written by `difftori il collect`)")
    show_progress = cfg.progress if progress is None else progress
    device = resolve_device(cfg.device)
    if cfg.eval_episodes > 0 and cfg.obs_type != "state" and _renderer(cfg.task) == "mujoco":
        from difftori.utils.gl import check_rendering

        check_rendering()  # fail now, not at the first evaluation
    set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)

    windows, stats, env_options = load_windows(cfg.dataset, cfg.obs_type, cfg.obs_steps, cfg.action_steps, task=cfg.task)
    obs_shapes = {k: tuple(v.shape[2:]) for k, v in windows["obs"].items()}
    action_dim = windows["action"].shape[-1]
    if ckpt is not None:
        policy = build_policy(ckpt["policy_info"])  # the frozen base's weights come with the state_dict
        policy.set_normalizer(fit_normalizer(stats))
        policy.load_state_dict(ckpt["policy"])
        policy.set_encoder_precision(cfg.encoder_precision)
    else:
        policy = policy_from_config(cfg, obs_shapes, action_dim, base=_load_base(cfg, device, obs_shapes, action_dim))
        policy.set_normalizer(fit_normalizer(stats))
    policy.to(device).train()
    windows = {"obs": {k: v.to(device) for k, v in windows["obs"].items()}, "action": windows["action"].to(device)}
    n = windows["action"].shape[0]
    policy.on_train_start(windows)

    optimizer = _adamw(policy.trainable_parameters(), lr=cfg.lr, betas=(0.95, 0.999), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    step = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        if cfg.steps != saved.steps:  # the only change a resumed run writes: a larger budget
            save_config(dataclasses.replace(saved, steps=cfg.steps), run_dir / "config.json")
        logger = MetricsLogger(run_dir, resume_step=step)
    else:
        with new_run_dir(cfg.run_root, cfg.task, cfg.policy, cfg.seed) as run_dir:
            save_config(cfg, run_dir / "config.json")
            logger = MetricsLogger(run_dir)
    _record_runtime(run_dir, step, policy, device)
    if announce is not None:
        announce(run_dir)

    def checkpoint() -> None:
        save_checkpoint(
            run_dir / CHECKPOINT_NAME,
            {
                "policy_info": policy.build_info(),
                "policy": policy.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": get_rng_state(),
                "step": step,
                "config": to_dict(cfg),
                "env_options": env_options,
            },
        )

    def run_eval() -> None:
        if cfg.eval_episodes <= 0:
            return
        res = evaluate(
            policy, cfg.task, cfg.obs_type, episodes=cfg.eval_episodes, seed=EVAL_SEED_BASE + 1000 * cfg.seed,
            max_steps=cfg.eval_max_steps, env_options=env_options, num_envs=cfg.eval_envs,
            stop_on_success=cfg.eval_stop_on_success,
        )
        fit = demo_mse(policy, windows)
        logger.log("eval", step, {**{k: res[k] for k in ("success_rate", "mean_return", "mean_length", "eval_time_s")}, **fit})

    from difftori.utils.progress import progress as progress_bar

    sums: dict[str, torch.Tensor] = {}
    count, t_window = 0, time.time()
    bar = progress_bar(cfg.steps, initial=step, enabled=show_progress, desc=f"{cfg.policy} {cfg.task}", unit="step")
    try:
        while step < cfg.steps:
            idx = torch.randint(0, n, (cfg.batch_size,), device=device)  # with replacement
            loss, metrics = policy.compute_loss(_batch(windows, idx))
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss {loss.item()} at step {step}; lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), cfg.grad_clip).detach()
            optimizer.step()
            scheduler.step()
            policy.on_train_step()
            step += 1
            bar.update(1)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v
            count += 1
            if step % cfg.log_freq == 0 or step == cfg.steps:
                row = {k: v / count for k, v in sums.items()}
                row.update(lr=scheduler.get_last_lr()[0], step_time_s=(time.time() - t_window) / count)
                logged = logger.log("train", step, row)
                bar.set_postfix(loss=f"{logged['loss']:.4g}")
                sums, count, t_window = {}, 0, time.time()
            if (cfg.eval_freq and step % cfg.eval_freq == 0) or step == cfg.steps:
                run_eval()
            if step % cfg.checkpoint_freq == 0 or step == cfg.steps:
                checkpoint()
    finally:
        bar.close()
        logger.close()
    _plot(run_dir)
    return run_dir


def evaluate_checkpoint(
    checkpoint: str | Path,
    episodes: int = 20,
    seed: int = EVAL_SEED_BASE,
    video: bool = False,
    max_steps: int | None = None,
    task: str | None = None,
    obs_type: str | None = None,
    device: str = "auto",
    video_dir: str | Path | None = None,
    select: str | None = None,
    num_envs: int = 10,
    stop_on_success: bool = True,
) -> dict[str, Any]:
    """Load a policy checkpoint (file, run dir, or folder of runs) and evaluate it.

    ``task``/``obs_type`` default to its training config; the video goes to ``video_dir``
    (default: RUN_DIR/videos for a run's checkpoint, else ./videos). ``select`` (DiffTORI checkpoints only)
    overrides which of an observation's solved draws is executed: first (the original) or lowest_cost.
    torch is seeded with ``seed`` for the evaluation (inside a forked RNG), so the result is reproducible.
    """
    from difftori.il.policies import load_policy
    from difftori.il.runner import evaluate
    from difftori.utils.device import resolve_device
    from difftori.utils.io import load_checkpoint
    from difftori.utils.runs import locate_checkpoint

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if select is not None and select not in INFERENCE_SELECT:
        raise ValueError(f"select must be one of {', '.join(INFERENCE_SELECT)}, got {select!r}")
    path, run_dir = locate_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    policy_name = (ckpt.get("policy_info") or {}).get("policy")
    if select is not None and policy_name != "difftori":
        raise ValueError(f"--select applies to DiffTORI checkpoints; {path} holds a {policy_name} policy")
    saved = ckpt.get("config", {})
    task = task or saved.get("task")
    obs_type = obs_type or saved.get("obs_type")
    if not task or not obs_type:
        raise ValueError(f"{path} carries no training config; pass --task and --obs-type")
    if obs_type not in OBS_KEYS:
        raise ValueError(f"unknown obs_type {obs_type!r}; use one of {sorted(OBS_KEYS)}")
    trained_on = _obs_type_of((ckpt.get("policy_info") or {}).get("obs_shapes", OBS_KEYS[obs_type]))
    if trained_on != obs_type:
        raise ValueError(f"{path} was trained on obs_type {saved.get('obs_type', trained_on)!r}; it cannot be evaluated with obs_type {obs_type!r}")
    policy = load_policy(path, device=resolve_device(device))
    if select is not None:
        policy.cfg = dataclasses.replace(policy.cfg, inference_select=select)
    env_options = ckpt.get("env_options") or {}
    if video_dir is None:
        video_dir = run_dir / "videos" if run_dir is not None else Path("videos")
    with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):  # the caller's RNG stream is untouched
        torch.manual_seed(seed)  # the policy's sampling noise too: the same call gives the same result
        out = evaluate(
            policy, task, obs_type, episodes=episodes, seed=seed, video=video, max_steps=max_steps,
            video_dir=video_dir, env_options=env_options, num_envs=num_envs, stop_on_success=stop_on_success,
        )
    out.update(checkpoint=str(path), task=task, obs_type=obs_type, policy=policy.name)
    if policy.name == "difftori":
        out.update(select=policy.cfg.inference_select, draws=policy.cfg.draws)
    return out


# ------------------------------------------------------------------ CLI ----------------------
def _announce(run_dir: Path) -> None:
    print(f"run directory: {run_dir}", flush=True)


def train_config(args: argparse.Namespace) -> ILConfig:
    """The config of a new ``il train`` run: defaults, then ``--config``, then ``--preset``, then the options given."""
    base = load_config(ILConfig, args.config) if getattr(args, "config", None) else None
    if not getattr(args, "preset", None):
        return dataclass_from_args(ILConfig, args, base=base)
    preset = preset_for(args.preset, lambda plain: dataclass_from_args(ILConfig, args, base=base, preset=plain))
    return dataclass_from_args(ILConfig, args, base=base, preset=preset)


def _train_cmd(args: argparse.Namespace) -> int:
    preset = IL_PRESETS[args.preset] if args.preset else None
    if preset and args.resume is not None:
        raise ValueError("--preset applies to new runs; a resumed run keeps its saved config")
    if args.resume is not None:
        from difftori.utils.config import resume_config
        from difftori.utils.runs import find_run

        if args.config is not None:
            raise ValueError("--config and --resume exclude each other: a resumed run keeps its saved config")
        run_dir = find_run(args.resume)
        cfg = resume_config(ILConfig, load_config(ILConfig, run_dir / "config.json"), args, runtime=RESUME_RUNTIME)
        train(cfg, resume=run_dir, announce=_announce)
    else:
        train(train_config(args), announce=_announce)
    return 0


def _eval_cmd(args: argparse.Namespace) -> int:
    from difftori.utils.device import set_num_threads

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.envs < 1:
        raise ValueError(f"--envs must be >= 1, got {args.envs}")
    set_num_threads(args.num_threads)
    res = evaluate_checkpoint(
        args.checkpoint, episodes=args.episodes, seed=args.seed, video=args.video, max_steps=args.max_steps,
        task=args.task, obs_type=args.obs_type, device=args.device, video_dir=args.video_dir, select=args.select,
        num_envs=args.envs, stop_on_success=not args.full_episodes,
    )
    summary = {k: v for k, v in res.items() if k != "episodes"}
    if args.out:
        from difftori.utils.io import atomic_write_json

        atomic_write_json(args.out, res)
    print(json.dumps(summary, indent=2))
    return 0


def register_cli(sub) -> None:
    """Add ``difftori il train`` and ``difftori il eval`` to the ``il`` subparsers."""
    p = sub.add_parser("train", help="train an IL policy (bc, ibc, diffusion, difftori) on a demo dataset")
    add_dataclass_args(p, ILConfig)
    p.add_argument("--config", type=Path, default=None, help="start from this config.json (options given override it)")
    p.add_argument("--preset", default=None, choices=sorted(IL_PRESETS), help="named settings applied over the defaults and --config, under the options given: paper (published DiffTORI-IL settings, packed solve), paper-eq7 (the paper's Eq. 7 formulation and Appendix D settings), small (CPU-sized; lr 1e-3 for DiffTORI and on point clouds / images, DiffTORI's encoder from its base there: what benchmarks/il_compare.py runs)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue this run (or the newest run in this folder) from its last checkpoint; only --steps "
                        "(to extend), --progress, --num-threads and --device may be given with it")
    p.set_defaults(func=_train_cmd)

    e = sub.add_parser("eval", help="evaluate a trained IL policy checkpoint: success rate over episodes")
    e.add_argument("--checkpoint", required=True, type=Path,
                   help="checkpoint file, run directory, or folder holding runs (its newest run)")
    e.add_argument("--episodes", type=int, default=20, help="episodes (default: 20)")
    e.add_argument("--seed", type=int, default=EVAL_SEED_BASE, help=f"env seed of the first episode (default: {EVAL_SEED_BASE})")
    e.add_argument("--video", action="store_true", help="save a video (mp4, else gif) of the first episode")
    e.add_argument("--video-dir", type=Path, default=None,
                   help="folder for the video (default: RUN_DIR/videos for a run's checkpoint, else ./videos)")
    e.add_argument("--max-steps", type=int, default=None, help="cap on steps per episode (default: the task's episode length)")
    e.add_argument("--envs", type=int, default=10, help="episodes run side by side, one batched policy call per decision (default: 10)")
    e.add_argument("--full-episodes", action="store_true",
                   help="run every episode to its full length (default: end it at its first success; the success rate is the same)")
    e.add_argument("--task", default=None, help="task (default: the checkpoint's training task)")
    e.add_argument("--obs-type", default=None, choices=sorted(OBS_KEYS), help="modality (default: the checkpoint's)")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    e.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    e.add_argument("--out", type=Path, default=None, help="also write the full results (per episode) as JSON here")
    e.add_argument("--select", default=None, choices=INFERENCE_SELECT,
                   help="DiffTORI checkpoints: which solved draw of an observation is executed, first (the original) or "
                        "lowest_cost (default: the checkpoint's difftori.inference_select)")
    e.set_defaults(func=_eval_cmd)
