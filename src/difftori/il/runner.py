"""Roll out any IL policy in its MetaWorld or robosuite env and measure the success rate.

The runner keeps the last ``obs_steps`` observations (the first one repeated at reset), asks
the policy for an action window (batch 1) and executes its ``action_steps`` actions before
replanning (receding horizon). An episode succeeds if ``info["success"]`` is ever true.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difftori.il.base import Policy

__all__ = ["evaluate", "run_episode"]


def _stack(history: deque, keys, device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.stack([np.asarray(o[k]) for o in history]), device=device).unsqueeze(0) for k in keys}


def run_episode(policy: Policy, env, seed: int, max_steps: int, video: bool = False) -> dict[str, Any]:
    """One episode; returns success, return, length, and frames (if ``video``)."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    history: deque = deque([obs] * policy.obs_steps, maxlen=policy.obs_steps)
    keys = list(policy.obs_shapes)
    frames, ret, success, steps = [], 0.0, False, 0
    if video:
        frames.append(env.render())
    while steps < max_steps:
        with torch.no_grad():
            actions = policy.predict_action(_stack(history, keys, policy.device))[0].cpu().numpy()
        for a in actions[: policy.action_steps]:
            obs, reward, terminated, truncated, info = env.step(a.astype(np.float32))
            history.append(obs)
            ret += float(reward)
            success = success or bool(info.get("success", False))
            steps += 1
            if video:
                frames.append(env.render())
            if terminated or truncated or steps >= max_steps:
                break
        if terminated or truncated:
            break
    return {"success": success, "return": ret, "length": steps, "frames": frames}


def evaluate(
    policy: Policy,
    task: str,
    obs_type: str,
    episodes: int = 20,
    seed: int = 0,
    video: bool = False,
    max_steps: int | None = None,
    video_dir: str | Path | None = None,
    env_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Success rate of ``policy`` on ``task`` over ``episodes`` episodes (seeds ``seed .. seed+episodes-1``).

    Returns ``success_rate``, ``mean_return``, ``mean_length``, ``eval_time_s`` and per-episode
    records under ``episodes``; with ``video`` the first episode is saved (mp4, else gif) in ``video_dir``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    from difftori.envs import make_env

    opts = dict(env_options or {})
    if video:
        opts.setdefault("render_mode", "rgb_array")
    env = make_env(task, obs_type=obs_type, **opts)
    limit = env.task_spec.episode_length if max_steps is None else max_steps
    was_training = policy.training
    policy.eval()
    t0 = time.time()
    records, video_path = [], None
    try:
        for i in range(episodes):
            rec = run_episode(policy, env, seed=seed + i, max_steps=limit, video=video and i == 0)
            if rec["frames"]:
                from difftori.utils.video import save_video

                video_path = save_video(rec["frames"], Path(video_dir or "videos") / f"{task}_seed{seed + i}", fps=20)
            rec.pop("frames")
            records.append(rec)
    finally:
        env.close()
        policy.train(was_training)
    return {
        "success_rate": float(np.mean([r["success"] for r in records])),
        "mean_return": float(np.mean([r["return"] for r in records])),
        "mean_length": float(np.mean([r["length"] for r in records])),
        "eval_time_s": time.time() - t0,
        "episodes": records,
        "video": str(video_path) if video_path else None,
    }
