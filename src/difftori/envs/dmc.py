"""DeepMind Control Suite tasks as ``gymnasium.Env`` (state or stacked-pixel observations).

Task names are ``<domain>-<task>`` with dashes (``cartpole-swingup-sparse``, ``cup-catch`` for
ball_in_cup catch, ``point_mass-easy``); underscores and dashes are interchangeable on input.
Every task has a preset: the action repeat used by TD-MPC / DiffTORI and the DiffTORI solver
settings of METHOD.md (``SOLVER_PRESETS``), read by the DiffTORI agent when its config leaves
them unset. ``dm_control`` is imported lazily; without it :func:`make` raises
:class:`~difftori.envs.MissingDependencyError` with the install hint.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from difftori.envs.spec import EnvSpec

__all__ = [
    "TASKS",
    "PAPER_TASKS",
    "ACTION_REPEAT",
    "SOLVER_PRESETS",
    "DEFAULT_SOLVER_PRESET",
    "canonical",
    "require",
    "action_repeat_for",
    "solver_preset",
    "make",
    "DMCEnv",
]

# dm_control.suite.ALL_TASKS at dm_control 1.0.28 (kept static so listing tasks needs no import).
_SUITE_TASKS: tuple[tuple[str, str], ...] = (
    ("acrobot", "swingup"), ("acrobot", "swingup_sparse"), ("ball_in_cup", "catch"),
    ("cartpole", "balance"), ("cartpole", "balance_sparse"), ("cartpole", "swingup"),
    ("cartpole", "swingup_sparse"), ("cartpole", "two_poles"), ("cartpole", "three_poles"),
    ("cheetah", "run"), ("dog", "stand"), ("dog", "walk"), ("dog", "trot"), ("dog", "run"),
    ("dog", "fetch"), ("finger", "spin"), ("finger", "turn_easy"), ("finger", "turn_hard"),
    ("fish", "upright"), ("fish", "swim"), ("hopper", "stand"), ("hopper", "hop"),
    ("humanoid", "stand"), ("humanoid", "walk"), ("humanoid", "run"), ("humanoid", "run_pure_state"),
    ("humanoid_CMU", "stand"), ("humanoid_CMU", "walk"), ("humanoid_CMU", "run"),
    ("lqr", "lqr_2_1"), ("lqr", "lqr_6_2"), ("manipulator", "bring_ball"), ("manipulator", "bring_peg"),
    ("manipulator", "insert_ball"), ("manipulator", "insert_peg"), ("pendulum", "swingup"),
    ("point_mass", "easy"), ("point_mass", "hard"), ("quadruped", "walk"), ("quadruped", "run"),
    ("quadruped", "escape"), ("quadruped", "fetch"), ("reacher", "easy"), ("reacher", "hard"),
    ("stacker", "stack_2"), ("stacker", "stack_4"), ("swimmer", "swimmer6"), ("swimmer", "swimmer15"),
    ("walker", "stand"), ("walker", "walk"), ("walker", "run"),
)
_DOMAIN_ALIAS = {"ball_in_cup": "cup"}


def _name(domain: str, task: str) -> str:
    return f"{_DOMAIN_ALIAS.get(domain, domain)}-{task.replace('_', '-')}"


RENDERER = "mujoco"
"""What renders this suite's images and point clouds (MuJoCo's GL context, or SAPIEN's Vulkan renderer)."""

TASKS: dict[str, tuple[str, str]] = {_name(d, t): (d, t) for d, t in _SUITE_TASKS}
"""Canonical task name -> ``(dm_control domain, task)``."""

PAPER_TASKS: tuple[str, ...] = (
    "cartpole-swingup-sparse", "cheetah-run", "cup-catch", "finger-spin", "finger-turn-easy",
    "finger-turn-hard", "hopper-stand", "pendulum-swingup", "quadruped-run", "quadruped-walk",
    "reacher-easy", "reacher-hard", "walker-run", "walker-stand", "walker-walk",
)
"""The 15 DMC tasks of the DiffTORI paper."""

# Action repeat per domain (TD-MPC / METHOD.md): cartpole 8; hopper, quadruped, reacher 4; else 2.
ACTION_REPEAT: dict[str, int] = {"cartpole": 8, "hopper": 4, "quadruped": 4, "reacher": 4}
_DEFAULT_ACTION_REPEAT = 2

# DiffTORI's per-task Levenberg-Marquardt settings (METHOD.md: LM iterations / step size / damping).
SOLVER_PRESETS: dict[str, dict[str, float | int]] = {
    "cartpole-swingup-sparse": dict(max_iters=50, step_size=1e-3, damping=0.5),
    "cheetah-run": dict(max_iters=100, step_size=1e-4, damping=1e-3),
    "cup-catch": dict(max_iters=100, step_size=1e-4, damping=0.01),
    "finger-spin": dict(max_iters=100, step_size=1e-4, damping=0.01),
    "finger-turn-easy": dict(max_iters=50, step_size=1e-3, damping=0.1),
    "finger-turn-hard": dict(max_iters=50, step_size=1e-3, damping=0.1),
    "hopper-stand": dict(max_iters=50, step_size=1e-3, damping=0.01),
    "pendulum-swingup": dict(max_iters=100, step_size=1e-4, damping=1e-3),
    "quadruped-run": dict(max_iters=100, step_size=1e-4, damping=0.1),
    "quadruped-walk": dict(max_iters=100, step_size=1e-4, damping=0.1),
    "reacher-easy": dict(max_iters=100, step_size=1e-4, damping=0.01),
    "reacher-hard": dict(max_iters=100, step_size=1e-4, damping=0.01),
    "walker-run": dict(max_iters=200, step_size=3e-5, damping=1e-3),
    "walker-stand": dict(max_iters=100, step_size=1e-4, damping=0.01),
    "walker-walk": dict(max_iters=100, step_size=1e-4, damping=0.01),
}
DEFAULT_SOLVER_PRESET: dict[str, float | int] = dict(max_iters=100, step_size=1e-4, damping=0.01)
"""Used for tasks outside the paper (the paper's most common setting, not a published value)."""

_NORMALISED = {k.lower().replace("_", "-"): k for k in TASKS}
_NORMALISED.update({f"ball-in-cup-{k.split('-', 1)[1]}": k for k in TASKS if k.startswith("cup-")})


def canonical(name: str) -> str | None:
    """Canonical task name for ``name`` (dashes/underscores/case-insensitive), or None if not DMC."""
    return _NORMALISED.get(name.strip().lower().replace("_", "-"))


def _require(name: str) -> str:
    canon = canonical(name)
    if canon is None:
        from difftori.envs import UnknownTaskError

        raise UnknownTaskError(f"unknown DMC task {name!r}. Known: {', '.join(sorted(TASKS))}")
    return canon


def action_repeat_for(task: str) -> int:
    """Preset action repeat of ``task``."""
    return ACTION_REPEAT.get(TASKS[_require(task)][0], _DEFAULT_ACTION_REPEAT)


def solver_preset(task: str) -> dict[str, float | int]:
    """DiffTORI solver preset (``max_iters``, ``step_size``, ``damping``) for ``task`` (a copy)."""
    return dict(SOLVER_PRESETS.get(_require(task), DEFAULT_SOLVER_PRESET))


def require() -> None:
    """Import the suite's dependencies (:class:`~difftori.envs.MissingDependencyError` with the install hint if missing)."""
    _import_dm_control()


def _import_dm_control():
    from difftori.utils.gl import configure_gl

    from difftori.envs import suite_imports

    configure_gl()
    with suite_imports("DeepMind Control", "dm_control", "pip install 'difftori[dmc]'"):
        from dm_control import suite
    return suite


def _gymnasium():
    try:
        import gymnasium
    except ImportError as exc:
        from difftori.envs import MissingDependencyError

        raise MissingDependencyError(f"gymnasium is required for envs: pip install 'difftori[dmc]' ({exc})") from exc
    return gymnasium


def make(
    task: str,
    obs_type: str = "state",
    action_repeat: int | None = None,
    episode_length: int = 1000,
    frame_stack: int = 3,
    img_size: int = 84,
    seed: int | None = None,
    render_size: int = 256,
):
    """Create DMC ``task`` as a ``gymnasium.Env`` with ``task_spec`` (see :class:`DMCEnv`)."""
    canon = _require(task)
    if obs_type not in ("state", "pixels"):
        raise ValueError(f"obs_type must be 'state' or 'pixels', got {obs_type!r}")
    repeat = action_repeat_for(canon) if action_repeat is None else int(action_repeat)
    if repeat < 1:
        raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
    if episode_length < repeat:
        raise ValueError(f"episode_length ({episode_length} env steps) must be >= action_repeat ({repeat})")
    if frame_stack < 1 or img_size < 8:
        raise ValueError(f"frame_stack must be >= 1 and img_size >= 8, got {frame_stack}, {img_size}")
    return _env_class()(canon, obs_type, repeat, int(episode_length), int(frame_stack), int(img_size), seed, int(render_size))


_ENV_CLASS = None


def _env_class():
    """Build the Env subclass on first use so importing this module does not import gymnasium."""
    global _ENV_CLASS
    if _ENV_CLASS is not None:
        return _ENV_CLASS
    gym = _gymnasium()
    spaces = gym.spaces

    class _DMCEnv(gym.Env):
        """A dm_control task: actions in [-1, 1], rewards summed over the action repeat.

        ``episode_length`` counts env (physics-control) steps; the episode is truncated after
        ``episode_length // action_repeat`` agent steps. Pixel observations are the last
        ``frame_stack`` RGB frames stacked on the channel axis (uint8, ``(3*k, H, W)``), rendered
        headless with shadows and reflections off (~3x cheaper, visually nearly identical).
        """

        metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

        def __init__(self, task, obs_type, action_repeat, episode_length, frame_stack, img_size, seed, render_size):
            suite = _import_dm_control()
            domain, name = TASKS[task]
            self._task_name = task
            self._obs_type = obs_type
            self._repeat = action_repeat
            self._max_steps = episode_length // action_repeat
            self._img = img_size
            self._render_size = render_size
            self._camera = 2 if domain == "quadruped" else 0  # as in TD-MPC
            self._env = suite.load(
                domain,
                name,
                task_kwargs={"random": seed, "time_limit": float("inf")},
                visualize_reward=False,
            )
            model = self._env.physics.model
            model.light_castshadow[:] = 0
            model.mat_reflectance[:] = 0
            aspec = self._env.action_spec()
            self._a_low = aspec.minimum.astype(np.float64)
            self._a_high = aspec.maximum.astype(np.float64)
            # Map [-1, 1] onto the native bounds when they are finite (lqr's are +-1e10: treated
            # as unbounded, actions pass through) and not already [-1, 1] (quadruped: [-1, 1.1]).
            self._rescale = bool(
                np.all(np.abs(self._a_low) < 1e3) and np.all(np.abs(self._a_high) < 1e3)
                and not (np.allclose(self._a_low, -1.0) and np.allclose(self._a_high, 1.0))
            )
            adim = int(aspec.shape[0])
            self.action_space = spaces.Box(-1.0, 1.0, (adim,), np.float32)
            self.render_mode = "rgb_array"
            self._frames: deque[np.ndarray] = deque(maxlen=frame_stack)
            if obs_type == "pixels":
                shape = (3 * frame_stack, img_size, img_size)
                self.observation_space = spaces.Box(0, 255, shape, np.uint8)
            else:
                dim = int(sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values()))
                shape = (dim,)
                self.observation_space = spaces.Box(-np.inf, np.inf, shape, np.float32)
            self.task_spec = EnvSpec(
                task=task,
                suite="dmc",
                obs_type=obs_type,
                obs_shapes={"obs": shape},
                action_dim=adim,
                episode_length=self._max_steps,
                action_repeat=action_repeat,
                extras={"camera_id": self._camera, "domain": domain, "dmc_task": name, "frame_stack": frame_stack},
            )
            self._t = 0

        # -- observation helpers -------------------------------------------------------------
        def _state(self, ts) -> np.ndarray:
            return np.concatenate([np.asarray(v, np.float32).ravel() for v in ts.observation.values()])

        def _render(self, size: int) -> np.ndarray:
            from difftori.utils.gl import check_rendering

            check_rendering()  # a one-line error with the fix instead of dm_control's GL traceback
            return self._env.physics.render(size, size, camera_id=self._camera)

        def _frame(self) -> np.ndarray:
            return np.ascontiguousarray(self._render(self._img).transpose(2, 0, 1))

        def _obs(self, ts) -> np.ndarray:
            if self._obs_type == "state":
                return self._state(ts)
            return np.concatenate(list(self._frames), axis=0)

        # -- gymnasium API -------------------------------------------------------------------
        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
            super().reset(seed=seed)
            if seed is not None:
                self._env.task.random.seed(seed)
            ts = self._env.reset()
            self._t = 0
            if self._obs_type == "pixels":
                frame = self._frame()
                for _ in range(self._frames.maxlen):
                    self._frames.append(frame)
            return self._obs(ts), {}

        def step(self, action):
            a = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"action contains non-finite values: {a}")
            a = np.clip(a, -1.0, 1.0)
            if self._rescale:
                a = self._a_low + (a + 1.0) * 0.5 * (self._a_high - self._a_low)
            reward = 0.0
            terminated = False
            for _ in range(self._repeat):
                ts = self._env.step(a)
                reward += float(ts.reward or 0.0)
                if ts.last():
                    terminated = ts.discount == 0
                    break
            self._t += 1
            truncated = not terminated and (self._t >= self._max_steps or ts.last())
            if self._obs_type == "pixels":
                self._frames.append(self._frame())
            return self._obs(ts), reward, bool(terminated), bool(truncated), {"env_steps": self._t * self._repeat}

        def render(self):
            """An RGB frame (``render_size`` square, HWC uint8) from the task camera, for videos."""
            return self._render(self._render_size)

        def close(self):
            self._env.close()

    _DMCEnv.__name__ = _DMCEnv.__qualname__ = "DMCEnv"
    _ENV_CLASS = _DMCEnv
    return _ENV_CLASS


def __getattr__(name: str):
    if name == "DMCEnv":
        return _env_class()
    raise AttributeError(name)
