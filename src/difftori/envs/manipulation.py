"""Shared plumbing of the IL manipulation envs (MetaWorld, robosuite, ManiSkill).

Each suite's ``gymnasium.Env`` subclass is built lazily (so importing a suite module imports neither
gymnasium nor the simulator) and mixes :class:`ManipulationEnv` in before ``gymnasium.Env``: the seed
handling of ``reset``, option checking, action checking, step counting and the observation dict are the same for
all. The helpers below build the class lazily, resolve task names and cache MuJoCo renderers.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from difftori.envs.spec import EnvSpec

__all__ = ["OBS_TYPES", "ManipulationEnv", "MujocoRenderers", "lazy_env_class", "manipulation_observations", "resolve_task"]

OBS_TYPES = ("pointcloud", "image", "state")
"""The observation types every manipulation env offers (besides the agent state)."""


def resolve_task(task: str, canonical: Callable[[str], str | None], suite: str, tasks) -> str:
    """``canonical(task)``, or :class:`~difftori.envs.UnknownTaskError` listing the suite's ``tasks``."""
    name = canonical(task)
    if name is None:
        from difftori.envs import UnknownTaskError

        raise UnknownTaskError(f"unknown {suite} task {task!r}; known tasks: {', '.join(tasks)}")
    return name


def lazy_env_class(require: Callable[[], Any], build: Callable[[], type]) -> Callable[[], type]:
    """A function returning the suite's env class, built by ``build`` on first use after ``require()`` (which imports
    the simulator, raising MissingDependencyError where it is missing): importing a suite module imports neither."""
    cls: list[type] = []

    def env_class() -> type:
        require()
        if not cls:
            cls.append(build())
        return cls[0]

    return env_class


class MujocoRenderers:
    """One ``mujoco.Renderer`` per (size, depth) of a model, made on first use with the costly effects off."""

    def __init__(self, model) -> None:
        self._model = model
        self._cache: dict[tuple[int, bool], Any] = {}

    def get(self, size: int, depth: bool):
        key = (int(size), bool(depth))
        if key not in self._cache:
            from difftori.envs.pointcloud import disable_costly_rendering
            from difftori.utils.gl import safe_renderer

            r = safe_renderer(self._model, size, size)
            disable_costly_rendering(r)
            if depth:
                r.enable_depth_rendering()
            self._cache[key] = r
        return self._cache[key]

    def close(self) -> None:
        for r in self._cache.values():
            r.close()
        self._cache.clear()


def manipulation_observations(obs_type: str, state_dim: int, full_state_dim: int, img_size: int, num_points: int):
    """Shapes and the ``gymnasium.spaces.Dict`` of an IL manipulation env's observations.

    Every such env (MetaWorld, robosuite, ManiSkill) emits the agent ``state`` plus one entry per
    ``obs_type``: ``full_state`` (state), ``image`` (uint8, channels first) or ``pointcloud`` (N x 3).
    Returns ``(shapes, observation_space)``; imports gymnasium (the envs already need it).
    """
    from gymnasium import spaces

    shapes: dict[str, tuple[int, ...]] = {"state": (state_dim,)}
    if obs_type == "state":
        shapes["full_state"] = (full_state_dim,)
    elif obs_type == "image":
        shapes["image"] = (3, img_size, img_size)
    elif obs_type == "pointcloud":
        shapes["pointcloud"] = (num_points, 3)
    else:
        raise ValueError(f"obs_type must be state, image or pointcloud, got {obs_type!r}")
    obs_spaces = {k: spaces.Box(0, 255, s, np.uint8) if k == "image" else spaces.Box(-np.inf, np.inf, s, np.float32)
                  for k, s in shapes.items()}
    return shapes, spaces.Dict(obs_spaces)


class ManipulationEnv:
    """Mixin (before ``gymnasium.Env``) of the manipulation envs.

    The env's constructor calls :meth:`_set_options` (first) and :meth:`_set_spaces`, sets ``task``,
    ``_pending_seed`` (the constructor's seed, used by the first reset without one) and ``_t``, and provides
    ``agent_state()``, ``full_state()``, ``image()`` (HxWx3 uint8) and ``point_cloud()``. ``SUITE`` names the suite
    in error messages, ``ACTION_DIM`` the action size.
    """

    SUITE = "manipulation"
    ACTION_DIM = 0

    def _set_options(self, obs_type: str, img_size: int, num_points: int, episode_length: int, render_mode: str | None,
                     render_size: int, pc_render_size: int) -> None:
        """Check and store the options every manipulation env takes (a clear ValueError for a bad one)."""
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        for key, val in (("img_size", img_size), ("num_points", num_points), ("episode_length", episode_length),
                         ("render_size", render_size), ("pc_render_size", pc_render_size)):  # fmt: skip
            if not isinstance(val, (int, np.integer)) or val <= 0:
                raise ValueError(f"{key} must be a positive integer, got {val!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.obs_type = obs_type
        self.img_size, self.num_points = int(img_size), int(num_points)
        self.episode_length = int(episode_length)
        self.render_mode, self.render_size, self.pc_render_size = render_mode, int(render_size), int(pc_render_size)

    def _set_spaces(self, suite: str, state_dim: int, full_state_dim: int, extras: dict[str, Any]) -> None:
        """Set ``observation_space``, ``action_space`` (``ACTION_DIM`` in [-1, 1]) and ``task_spec`` (after
        :meth:`_set_options` and ``self.task``); ``extras`` are the suite's own facts for the spec."""
        from gymnasium import spaces

        shapes, self.observation_space = manipulation_observations(
            self.obs_type, state_dim, full_state_dim, self.img_size, self.num_points)
        self.action_space = spaces.Box(-1.0, 1.0, (self.ACTION_DIM,), np.float32)
        self.task_spec = EnvSpec(task=self.task, suite=suite, obs_type=self.obs_type, obs_shapes=shapes,
                                 action_dim=self.ACTION_DIM, episode_length=self.episode_length, extras=extras)

    def _take_seed(self, seed: int | None) -> int | None:
        """The seed of this reset (``seed``, else the pending constructor seed, once); seeds ``np_random``."""
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        if seed is not None:
            super().reset(seed=seed)  # gymnasium.Env.reset: np_random
        self._t = 0
        return seed

    def _checked_action(self, action, dtype=np.float64) -> np.ndarray:
        """``action`` as an array of ``dtype`` clipped to [-1, 1]; a wrong shape or a non-finite entry raises."""
        a = np.asarray(action, dtype=dtype)
        if a.shape != (self.ACTION_DIM,):
            raise ValueError(f"{self.SUITE} actions have shape ({self.ACTION_DIM},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action has non-finite entries: {a}")
        return np.clip(a, -1.0, 1.0)

    def _tick(self) -> bool:
        """Count one step; True when the episode is truncated (``episode_length`` steps)."""
        self._t += 1
        return self._t >= self.episode_length

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {"state": self.agent_state()}
        if self.obs_type == "state":
            obs["full_state"] = self.full_state()
        elif self.obs_type == "image":
            obs["image"] = np.ascontiguousarray(self.image().transpose(2, 0, 1))
        else:
            obs["pointcloud"] = self.point_cloud()
        return obs
