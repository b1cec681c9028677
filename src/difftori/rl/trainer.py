"""One trainer for every RL agent (TD-MPC, DiffTORI): collect, update, evaluate, checkpoint, resume.

Loop (as TD-MPC): play a whole training episode (random actions for the first
``seed_steps`` agent steps, then the agent's planner), store it in the replay buffer, then take
``updates_per_step`` gradient updates per collected agent step, call the agent's
``on_episode_end`` hook, log, evaluate every ``eval_freq`` env steps and checkpoint every
``checkpoint_freq`` env steps. Everything happens at episode boundaries, so a checkpoint
(model, optimizers, buffer, RNG states, counters) is a consistent cut: ``resume`` reloads it,
drops any rows logged after it, and continues; env episodes are seeded from the episode
counter, so the resumed run replays exactly what the interrupted one would have done.
At the end: a final evaluation in ``final.json`` and the learning curve in ``plot.png``.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from difftori.envs import dmc
from difftori.rl.buffer import ReplayBuffer
from difftori.rl.config import ACT_MODES, RLConfig
from difftori.utils.config import ConfigError, load_config, save_config, to_dict
from difftori.utils.device import resolve_device, set_num_threads
from difftori.utils.io import atomic_write_json, load_checkpoint, save_checkpoint
from difftori.utils.runs import CHECKPOINT_NAME, MetricsLogger, find_run, locate_checkpoint, new_run_dir
from difftori.utils.seeding import get_rng_state, seed_everything, set_rng_state
from difftori.utils.video import save_video

__all__ = ["AGENTS", "agent_class", "make_env", "Trainer", "train", "resume", "evaluate", "random_policy_return", "CHECKPOINT_NAME"]

AGENTS: dict[str, Any] = {"tdmpc": "difftori.rl.tdmpc:TDMPC", "difftori": "difftori.rl.difftori:DiffTORI"}
"""Agent registry: name -> class or ``"module:Class"`` (imported on first use)."""

_EVAL_SEED_OFFSET = 1_000_003


def agent_class(name: str) -> type:
    """Resolve an agent name through :data:`AGENTS` (clear errors for unknown / unavailable agents)."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; known agents: {', '.join(sorted(AGENTS))}")
    entry = AGENTS[name]
    if not isinstance(entry, str):
        return entry
    module, _, cls = entry.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise ImportError(f"agent {name!r} is not available: module {module} is missing") from None
    if not hasattr(mod, cls):
        raise ImportError(f"agent {name!r} is not available: {module} defines no {cls}")
    return getattr(mod, cls)


def make_env(cfg: RLConfig, seed: int | None = None):
    """The DMC env of ``cfg`` (task preset action repeat unless overridden)."""
    return dmc.make(
        cfg.task, obs_type=cfg.obs_type, action_repeat=cfg.action_repeat, episode_length=cfg.episode_length,
        frame_stack=cfg.frame_stack, img_size=cfg.img_size, seed=seed,
    )


def evaluate(
    policy: Callable[[np.ndarray, bool, int], np.ndarray],
    env,
    episodes: int,
    seed: int,
    video_stem: Path | None = None,
) -> dict[str, Any]:
    """Run ``episodes`` (>= 1) episodes with ``policy(obs, t0, t)``; episode i uses env seed ``seed + i``."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    returns = []
    video = None
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        frames = [env.render()] if (video_stem is not None and i == 0) else None
        total, t, done = 0.0, 0, False
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs, t == 0, t))
            total += r
            t += 1
            done = term or trunc
            if frames is not None:
                frames.append(env.render())
        returns.append(total)
        if frames is not None:
            video = save_video(frames, video_stem)
    out = {
        "episode_return": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "returns": [float(r) for r in returns],
    }
    if video is not None:
        out["video"] = str(video)
    return out


def random_policy_return(cfg: RLConfig, episodes: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Return of uniformly random actions on ``cfg``'s task, on the same eval seeds as the trainer."""
    env = make_env(cfg)
    rng = np.random.default_rng(cfg.seed if seed is None else seed)
    adim = env.task_spec.action_dim
    seed0 = (cfg.seed if seed is None else seed) * 7919 + _EVAL_SEED_OFFSET
    res = evaluate(lambda o, t0, t: rng.uniform(-1, 1, adim).astype(np.float32), env, episodes or cfg.eval_episodes, seed0)
    env.close()
    return res


class Trainer:
    """Training state and loop of one run (build with :meth:`new` or :meth:`from_run_dir`)."""

    def __init__(self, cfg: RLConfig, run_dir: Path, checkpoint: dict[str, Any] | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.env = make_env(cfg, seed=cfg.seed)
        self.eval_env = make_env(cfg, seed=cfg.seed + 1)
        self.spec = self.env.task_spec
        self.agent = agent_class(cfg.agent)(cfg, self.spec)
        self.buffer = ReplayBuffer(
            self.spec.obs_shape, self.spec.action_dim, cfg.buffer_size, cfg.horizon, cfg.per_alpha, cfg.per_beta, cfg.frame_stack, seed=cfg.seed,
        )
        self.agent_step = 0
        self.episode = 0
        self.updates = 0
        self.evals = 0
        self.next_eval = cfg.eval_freq
        self.next_ckpt = cfg.checkpoint_freq
        self.elapsed = 0.0
        resume_step = None
        if checkpoint is not None:
            self._load(checkpoint)
            resume_step = self.env_step
        self.logger = MetricsLogger(self.run_dir, resume_step=resume_step)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def new(cls, cfg: RLConfig, run_dir: Path | None = None) -> "Trainer":
        """A fresh run in ``run_dir`` (default: ``run_root/task/agent/seed<s>/<time>``)."""
        # Fail on bad input before creating a run directory; anything raised while building the
        # envs, agent and buffer removes the directory again (no half-made runs).
        agent_class(cfg.agent)
        if dmc.canonical(cfg.task) is None:
            dmc.make(cfg.task)  # raises UnknownTaskError listing the tasks
        resolve_device(cfg.device)
        if cfg.obs_type == "pixels" or cfg.video:
            from difftori.utils.gl import check_rendering

            check_rendering()
        with new_run_dir(cfg.run_root, dmc.canonical(cfg.task), cfg.agent, cfg.seed, run_dir) as path:
            save_config(cfg, path / "config.json")
            return cls(cfg, path)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, steps: int | None = None, cfg: RLConfig | None = None) -> "Trainer":
        """Resume the run in ``run_dir`` (or the newest run below it) from its last checkpoint.

        ``steps`` extends the budget; ``cfg`` (from :func:`~difftori.utils.config.resume_config`)
        may also change runtime fields. ``config.json`` is only ever rewritten with a larger ``steps``.
        """
        run_dir = find_run(run_dir, need_checkpoint=False)
        saved = load_config(RLConfig, run_dir / "config.json")
        cfg = cfg if cfg is not None else saved
        if steps is not None:
            cfg = RLConfig(**{**cfg.__dict__, "steps": steps})
        if cfg.steps < saved.steps:
            raise ConfigError(f"steps {cfg.steps} is below the run's budget of {saved.steps}; a resumed run can only be extended")
        resolve_device(cfg.device)
        if cfg.steps != saved.steps:
            save_config(RLConfig(**{**saved.__dict__, "steps": cfg.steps}), run_dir / "config.json")
        ckpt_path = run_dir / CHECKPOINT_NAME
        ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
        if ckpt is None:
            # Interrupted before the first checkpoint: start over in the same directory.
            for kind in ("train", "eval"):
                (run_dir / f"{kind}.csv").unlink(missing_ok=True)
        return cls(cfg, run_dir, ckpt)

    # -- state -------------------------------------------------------------------------------------
    @property
    def env_step(self) -> int:
        return self.agent_step * self.spec.action_repeat

    def _state(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "agent": self.agent.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": get_rng_state(),
            "counters": {
                "agent_step": self.agent_step, "episode": self.episode, "updates": self.updates, "evals": self.evals,
                "next_eval": self.next_eval, "next_ckpt": self.next_ckpt, "elapsed": self.elapsed,
                "env_step": self.env_step,
            },
        }

    def _load(self, ckpt: dict[str, Any]) -> None:
        self.agent.load_state_dict(ckpt["agent"])
        self.buffer.load_state_dict(ckpt["buffer"])
        set_rng_state(ckpt["rng"])
        c = ckpt["counters"]
        self.agent_step, self.episode, self.updates, self.evals = c["agent_step"], c["episode"], c["updates"], c["evals"]
        self.next_eval, self.next_ckpt, self.elapsed = c["next_eval"], c["next_ckpt"], c["elapsed"]

    def save(self) -> Path:
        """Write the checkpoint atomically (at an episode boundary)."""
        path = self.run_dir / CHECKPOINT_NAME
        save_checkpoint(path, self._state())
        return path

    # -- loop pieces -------------------------------------------------------------------------------
    def _episode_seed(self) -> int:
        return self.cfg.seed * 7919 + self.episode

    def run_episode(self, on_step: Callable[[], None] | None = None) -> dict[str, float]:
        """Play one training episode and store it in the buffer."""
        obs, _ = self.env.reset(seed=self._episode_seed())
        self.agent.reset()
        observations, actions, rewards = [obs], [], []
        done, total = False, 0.0
        while not done:
            a = self.agent.act(obs, t0=not actions, eval_mode=False, step=self.agent_step)
            obs, r, term, trunc, _ = self.env.step(a)
            observations.append(obs)
            actions.append(a)
            rewards.append(r)
            total += r
            self.agent_step += 1
            done = term or trunc
            if on_step is not None:
                on_step()
        self.buffer.add_episode(np.stack(observations), np.stack(actions), np.asarray(rewards, np.float32))
        self.episode += 1
        return {"episode_return": total, "episode_length": len(actions)}

    def run_updates(self) -> dict[str, torch.Tensor]:
        """Catch up to ``updates_per_step`` updates per collected agent step (after the seed phase)."""
        if self.agent_step < self.cfg.seed_steps or self.buffer.num_valid == 0:
            return {}
        target = int(math.floor(self.agent_step * self.cfg.updates_per_step))
        collected: dict[str, list[torch.Tensor]] = {}
        while self.updates < target:
            for k, v in self.agent.update(self.buffer, self.agent_step).items():
                collected.setdefault(k, []).append(v)
            self.updates += 1
        return {k: torch.stack(v).float().mean() for k, v in collected.items()}

    def evaluate(self, video: bool | None = None) -> dict[str, Any]:
        """Evaluate the agent (eval mode) on ``eval_episodes`` episodes with fresh seeds per evaluation."""
        agent = self.agent
        video = self.cfg.video if video is None else video

        def policy(obs: np.ndarray, t0: bool, t: int) -> np.ndarray:
            if t0:
                agent.reset()
            return agent.act(obs, t0=t0, eval_mode=True, step=self.agent_step)

        stem = self.run_dir / "videos" / f"eval_{self.env_step:08d}" if video else None
        seed0 = self.cfg.seed * 7919 + _EVAL_SEED_OFFSET + self.evals * 1000
        return evaluate(policy, self.eval_env, self.cfg.eval_episodes, seed0, stem)

    # -- main loop -----------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train until ``steps`` env steps (the last episode is completed); returns the final evaluation."""
        cfg = self.cfg
        from difftori.utils.progress import progress

        bar = progress(cfg.steps, initial=min(self.env_step, cfg.steps), unit="step", enabled=cfg.progress,
                       desc=f"{cfg.agent} {self.spec.task}")
        last_return = float("nan")
        acts_at = self.difftori_start_env_step
        if acts_at is not None and acts_at >= cfg.steps:
            print(f"WARNING: DiffTORI starts acting with the solver at env step {acts_at} (difftori.pg_start_step "
                  f"{cfg.difftori.pg_start_step} agent steps x action repeat {self.spec.action_repeat}), after this run's "
                  f"budget of {cfg.steps} env steps: this run is plain TD-MPC. Lower --difftori.pg-start-step or use "
                  "--preset small.", file=sys.stderr, flush=True)
        start = time.perf_counter() - self.elapsed
        try:
            while self.env_step < cfg.steps:
                ep_start = time.perf_counter()
                steps0 = self.env_step
                ep = self.run_episode(on_step=lambda: bar.update(self.spec.action_repeat))
                metrics = self.run_updates()
                metrics.update(self.agent.on_episode_end(self.agent_step))
                self.elapsed = time.perf_counter() - start
                sps = (self.env_step - steps0) / max(time.perf_counter() - ep_start, 1e-9)
                last_return = ep["episode_return"]
                self.logger.log("train", self.env_step, {
                    "episode": self.episode, **ep, "agent_step": self.agent_step, "updates": self.updates,
                    "env_steps_per_s": sps, "time": self.elapsed, **metrics,
                })
                eval_res = None
                if cfg.eval_episodes > 0 and self.env_step >= self.next_eval and self.env_step < cfg.steps:
                    eval_res = self._log_eval()
                    while self.next_eval <= self.env_step:
                        self.next_eval += cfg.eval_freq
                bar.set_postfix(ret=f"{last_return:.1f}", eval=f"{eval_res['episode_return']:.1f}" if eval_res else "-",
                                sps=f"{sps:.0f}")
                if self.env_step >= self.next_ckpt and self.env_step < cfg.steps:
                    while self.next_ckpt <= self.env_step:
                        self.next_ckpt += cfg.checkpoint_freq
                    self.save()
            final = self._finish()
        finally:
            bar.close()
            self.logger.close()
        return final

    def _log_eval(self) -> dict[str, Any]:
        res = self.evaluate()
        self.evals += 1
        self.logger.log("eval", self.env_step, {
            "episode_return": res["episode_return"], "return_std": res["return_std"], "episode": self.episode,
            "time": self.elapsed,
        })
        return res

    def _finish(self) -> dict[str, Any]:
        """Final evaluation (once), checkpoint, ``final.json`` and ``plot.png``."""
        final_path = self.run_dir / "final.json"
        res: dict[str, Any] = {}
        if self.cfg.eval_episodes > 0:
            rows = self.logger.rows("eval")
            if rows and int(float(rows[-1]["step"])) == self.env_step and final_path.exists():
                import json

                res = json.loads(final_path.read_text())
            else:
                res = self._log_eval()
        self.save()
        out = {"task": self.spec.task, "agent": self.cfg.agent, "seed": self.cfg.seed, "step": self.env_step,
               "episodes": self.episode, "updates": self.updates, "train_time_s": self.elapsed, **res}
        acts_at = self.difftori_start_env_step
        if acts_at is not None:
            out.update(difftori_start_env_step=acts_at, solver_acted=self.env_step > acts_at)
        atomic_write_json(final_path, out)
        from difftori.utils.plotting import plot_learning_curve

        marker = ("DiffTORI acts", acts_at) if acts_at is not None else None
        plot_learning_curve(self.run_dir, self.run_dir / "plot.png", marker=marker)
        return out

    @property
    def difftori_start_env_step(self) -> int | None:
        """Env step from which DiffTORI acts with the solver (None for TD-MPC)."""
        if self.cfg.agent != "difftori":
            return None
        return self.cfg.difftori.pg_start_step * self.spec.action_repeat


def train(cfg: RLConfig, run_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Train a new run; returns ``(run_dir, final evaluation)``."""
    trainer = Trainer.new(cfg, run_dir)
    return trainer.run_dir, trainer.train()


def resume(run_dir: str | Path, steps: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Continue the run in ``run_dir`` from its last checkpoint."""
    trainer = Trainer.from_run_dir(run_dir, steps)
    return trainer.run_dir, trainer.train()


def load_agent(path: str | Path, device: str | None = None, act: str = "agent"):
    """``(cfg, agent, env, agent_step)`` from a checkpoint file or a run directory (its last checkpoint).

    ``act="solver"`` on a TD-MPC checkpoint wraps its weights in a DiffTORI agent with the default DiffTORI settings
    (the raw-observation critic, unused when acting, stays untrained); on any checkpoint the solver then acts from
    the first step (``pg_start_step`` 0)."""
    if act not in ACT_MODES:
        raise ConfigError(f"act must be one of {', '.join(ACT_MODES)}, got {act!r}")
    path, _ = locate_checkpoint(path)
    ckpt = load_checkpoint(path)
    if "config" not in ckpt or "agent" not in ckpt:
        raise ConfigError(f"{path} is not an RL checkpoint (no config/agent)")
    data = ckpt["config"]
    if device is not None:
        data = {**data, "device": device}
    from difftori.utils.config import from_dict

    cfg = from_dict(RLConfig, data)
    env = make_env(cfg)
    wrap = act == "solver" and cfg.agent != "difftori"
    agent = agent_class("difftori" if wrap else cfg.agent)(cfg, env.task_spec)
    if wrap:
        state = ckpt["agent"]
        agent.model.load_state_dict(state["model"], strict=False)
        agent.model_target.load_state_dict(state["model_target"], strict=False)
        missing = {k for k in agent.model.state_dict() if k not in state["model"]}
        if any(not k.startswith(("_Qs1.", "_Qs2.")) for k in missing):
            raise ConfigError(f"{path}: the checkpoint's model lacks {sorted(missing)[:3]}...: cannot act with the solver")
    else:
        agent.load_state_dict(ckpt["agent"])
    if act == "solver":
        from dataclasses import replace

        agent.dcfg = replace(agent.dcfg, pg_start_step=0, act="solver")
    return cfg, agent, env, int(ckpt["counters"]["agent_step"])


def acting_policy(agent, step: int, act: str = "agent") -> Callable[[np.ndarray, bool, int], np.ndarray]:
    """``policy(obs, t0, t)`` of a loaded agent in evaluation mode, acting per ``act`` (:data:`ACT_MODES`)."""
    from difftori.rl.tdmpc import TDMPC

    if act not in ACT_MODES:
        raise ConfigError(f"act must be one of {', '.join(ACT_MODES)}, got {act!r}")

    def policy(obs: np.ndarray, t0: bool, t: int) -> np.ndarray:
        if t0:
            agent.reset()
        if act in ("agent", "solver"):
            return agent.act(obs, t0=t0, eval_mode=True, step=step)
        with torch.no_grad():
            x = agent.obs_tensor(obs)
            if act == "planner":
                a = TDMPC.plan(agent, x, t0=t0, eval_mode=True, step=step)
            else:
                a = agent.model.pi(agent.model.encode(x), 0.0)[0]
        return a.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)

    return policy
