"""Shared plumbing of the IL manipulation envs (MetaWorld, robosuite, ManiSkill).

Each suite's ``gymnasium.Env`` subclass is built lazily (so importing a suite module imports neither
gymnasium nor the simulator) and mixes :class:`ManipulationEnv` in before ``gymnasium.Env``: the seed
handling of ``reset``, action checking, step counting and the observation dict are the same for all.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ManipulationEnv", "manipulation_observations"]


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

    The env sets ``obs_type``, ``episode_length``, ``_pending_seed`` (the constructor's seed, used by the first
    reset without one) and ``_t``, and provides ``agent_state()``, ``full_state()``, ``image()`` (HxWx3 uint8)
    and ``point_cloud()``. ``SUITE`` names the suite in error messages, ``ACTION_DIM`` the action size.
    """

    SUITE = "manipulation"
    ACTION_DIM = 0

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
