"""The env spec: env-derived values agents read (never written back into a config)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
