"""Roll out any IL policy in its MetaWorld, robosuite or ManiSkill env and measure the success rate.

The runner keeps the last ``obs_steps`` observations of each episode (the first one repeated at reset),
asks the policy for an action window and executes its ``action_steps`` actions before replanning
(receding horizon). Episodes run side by side in ``num_envs`` envs, one batched ``predict_action`` per
decision for all live episodes (a batch-1 call is overhead-bound on a CPU); episode ``i`` always uses env
seed ``seed + i``. An episode succeeds if ``info["success"]`` is ever true. :func:`demo_mse` measures a policy
on its demos instead: how far its action windows are from the demonstrated ones, without an env.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from difftori.il.base import Policy

__all__ = ["evaluate", "run_episode", "run_episodes", "demo_mse", "DEMO_MSE_WINDOWS"]

DEMO_MSE_WINDOWS = 64
"""Demo windows :func:`demo_mse` predicts on (a fixed draw of the dataset's windows)."""


def _stack(histories: Sequence[deque], keys, device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.stack([np.stack([np.asarray(o[k]) for o in h]) for h in histories]), device=device) for k in keys}


def run_episodes(policy: Policy, envs: Sequence, seeds: Sequence[int], max_steps: int, video: bool = False,
                 stop_on_success: bool = False) -> list[dict[str, Any]]:
    """Episode ``j`` with env seed ``seeds[j]`` in ``envs[j]``, all side by side: one batched policy call per
    decision for the episodes still running. Returns per episode success, return, length and frames (episode 0's,
    if ``video``). ``policy.reset()`` is called once, before the episodes start. An episode succeeds if any of its
    steps does; ``stop_on_success`` ends it there (the same success, fewer steps; return and length up to it)."""
    if len(envs) != len(seeds) or not envs:
        raise ValueError(f"need one env per seed, got {len(envs)} envs and {len(seeds)} seeds")
    policy.reset()
    histories: list[deque] = []
    for env, seed in zip(envs, seeds):
        obs, _ = env.reset(seed=int(seed))
        histories.append(deque([obs] * policy.obs_steps, maxlen=policy.obs_steps))
    keys = list(policy.obs_shapes)
    n = len(envs)
    ret, success, steps, done = [0.0] * n, [False] * n, [0] * n, [False] * n
    frames = [envs[0].render()] if video else []
    while not all(done):
        live = [j for j in range(n) if not done[j]]
        with torch.no_grad():
            windows = policy.predict_action(_stack([histories[j] for j in live], keys, policy.device)).cpu().numpy()
        for j, actions in zip(live, windows):
            for a in actions[: policy.action_steps]:
                obs, reward, terminated, truncated, info = envs[j].step(a.astype(np.float32))
                histories[j].append(obs)
                ret[j] += float(reward)
                success[j] = success[j] or bool(info.get("success", False))
                steps[j] += 1
                if video and j == 0:
                    frames.append(envs[0].render())
                if terminated or truncated or steps[j] >= max_steps or (stop_on_success and success[j]):
                    done[j] = True
                    break
    return [{"success": success[j], "return": ret[j], "length": steps[j], "frames": frames if j == 0 else []} for j in range(n)]


def run_episode(policy: Policy, env, seed: int, max_steps: int, video: bool = False,
                stop_on_success: bool = False) -> dict[str, Any]:
    """One episode; returns success, return, length, and frames (if ``video``)."""
    return run_episodes(policy, [env], [seed], max_steps, video=video, stop_on_success=stop_on_success)[0]


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
    num_envs: int = 10,
    stop_on_success: bool = True,
) -> dict[str, Any]:
    """Success rate of ``policy`` on ``task`` over ``episodes`` episodes (env seeds ``seed .. seed+episodes-1``).

    Episodes run ``num_envs`` at a time (1 = one after the other; the env seeds are the same either way,
    the policy's sampling noise is drawn in a different order). ``stop_on_success`` ends an episode at its first
    successful step (as robomimic's rollouts): the success rate is that of full-length episodes (an episode succeeds
    if any step does), at a fraction of the cost for a good policy. Returns ``success_rate``, ``mean_return``,
    ``mean_length``, ``eval_time_s`` and per-episode records under ``episodes``; with ``video`` the first
    episode is saved (mp4, else gif) in ``video_dir``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    from difftori.envs import make_env

    opts = dict(env_options or {})
    if video:
        opts.setdefault("render_mode", "rgb_array")
    envs: list = []
    was_training = policy.training
    policy.eval()
    t0 = time.time()
    records, video_path = [], None
    try:
        for _ in range(min(num_envs, episodes)):
            envs.append(make_env(task, obs_type=obs_type, **opts))
        limit = envs[0].task_spec.episode_length if max_steps is None else max_steps
        for first in range(0, episodes, len(envs)):
            n = min(len(envs), episodes - first)
            recs = run_episodes(policy, envs[:n], [seed + first + j for j in range(n)], max_steps=limit, video=video and first == 0,
                                stop_on_success=stop_on_success)
            if recs[0]["frames"]:
                from difftori.utils.video import save_video

                video_path = save_video(recs[0]["frames"], Path(video_dir or "videos") / f"{task}_seed{seed}", fps=20)
            for r in recs:
                r.pop("frames")
            records.extend(recs)
    finally:
        for env in envs:
            env.close()
        policy.train(was_training)
    return {
        "success_rate": float(np.mean([r["success"] for r in records])),
        "mean_return": float(np.mean([r["return"] for r in records])),
        "mean_length": float(np.mean([r["length"] for r in records])),
        "eval_time_s": time.time() - t0,
        "episodes": records,
        "video": str(video_path) if video_path else None,
        "num_envs": len(envs),
    }


def demo_mse(policy: Policy, windows: dict[str, Any], count: int = DEMO_MSE_WINDOWS, seed: int = 0) -> dict[str, float]:
    """Mean squared error (env action units) between the action windows ``policy`` predicts on ``count`` demo
    observation windows and the demos' own: ``demo_mse``; for a policy refining a base (DiffTORI), ``base_demo_mse``
    is the base's on the same windows, so their ratio says whether the refinement moves the base's actions toward
    the demos at inference (latents from the prior). ``windows`` are ``load_windows``'s (on the policy's device);
    the same ``count`` windows for any policy of a dataset (a permutation seeded by ``seed``). Runs in a forked
    RNG seeded by ``seed``: the caller's random stream (training's) is untouched, and repeated calls agree."""
    n = windows["action"].shape[0]
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].to(windows["action"].device)
    obs = {k: v[idx] for k, v in windows["obs"].items()}
    target = windows["action"][idx].float()
    base = getattr(policy, "base", None)
    was_training = policy.training
    policy.eval()
    out: dict[str, float] = {}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
            for key, pol in (("demo_mse", policy), ("base_demo_mse", base)):
                if pol is None:
                    continue
                torch.manual_seed(seed)
                pol.reset()
                out[key] = float(torch.mean((pol.predict_action(obs).float() - target) ** 2))
                pol.reset()
    finally:
        policy.train(was_training)
    return out
