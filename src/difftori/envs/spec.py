"""The env spec: env-derived values agents read (never written back into a config)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What an agent needs to know about an environment."""

    task: str
    """Canonical task name, e.g. ``cartpole-swingup`` or ``door-open``."""
    suite: str
    """``dmc``, ``metaworld``, ``robosuite`` or ``maniskill``."""
    obs_type: str
    """``state`` / ``pixels`` (DMC) or ``state`` / ``image`` / ``pointcloud`` (MetaWorld, robosuite, ManiSkill)."""
    obs_shapes: dict[str, tuple[int, ...]]
    """Shape of each observation entry; single-array observations use the key ``obs``."""
    action_dim: int
    """Number of action dimensions; actions live in [-1, 1]."""
    episode_length: int
    """Agent steps per episode (after action repeat)."""
    action_repeat: int = 1
    """Env steps per agent step."""
    extras: dict = field(default_factory=dict)
    """Suite-specific extras (e.g. camera name, workspace crop)."""

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of the main observation (``obs`` key, or the first key)."""
        return self.obs_shapes.get("obs", next(iter(self.obs_shapes.values())))


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
