"""Prioritized episodic replay for TD-MPC's multi-step losses.

Storage is one ring of *observation slots*: an episode of T transitions takes T+1 slots
(``obs_0..obs_T``; slot t also holds action t and reward t, the last slot a dummy). A slot is a
valid sequence start when ``horizon`` transitions follow it inside its episode, so sampled
sequences never cross episode boundaries. Pixel observations are stored as single uint8
frames (the newest frame of each stack) and re-stacked on sampling, 3x less memory than
storing stacks. Sampling is proportional to ``priority ** alpha`` with importance weights
``(N P(i)) ** -beta`` normalised by their max (TD-MPC). Arrays grow by doubling up to
``capacity`` so a large capacity costs nothing until used; when full, the oldest slots are
overwritten. The buffer owns its RNG, and ``state_dict`` captures everything for resuming.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ReplayBuffer", "Batch"]


@dataclass
class Batch:
    """A batch of ``horizon``-step sequences (time-major, as TD-MPC)."""

    obs: torch.Tensor
    """(B, *obs_shape) first observation."""
    next_obs: torch.Tensor
    """(H, B, *obs_shape) observations after each action."""
    action: torch.Tensor
    """(H, B, A)."""
    reward: torch.Tensor
    """(H, B, 1)."""
    idxs: np.ndarray
    """(B,) slot indices of the sequence starts (for priority updates)."""
    weights: torch.Tensor
    """(B, 1) importance-sampling weights (max 1)."""


class ReplayBuffer:
    """Prioritized replay of whole episodes (see module docstring)."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        capacity: int,
        horizon: int,
        alpha: float = 0.6,
        beta: float = 0.4,
        frame_stack: int = 3,
        seed: int = 0,
    ):
        if capacity < horizon + 1:
            raise ValueError(f"capacity ({capacity}) must exceed the horizon ({horizon})")
        self.obs_shape = tuple(obs_shape)
        self.pixels = len(obs_shape) == 3
        if self.pixels and obs_shape[0] % frame_stack:
            raise ValueError(f"pixel obs {obs_shape} channels are not divisible by frame_stack={frame_stack}")
        self.frame_stack = frame_stack if self.pixels else 1
        self.frame_shape = (obs_shape[0] // frame_stack, *obs_shape[1:]) if self.pixels else self.obs_shape
        self.action_dim = action_dim
        self.capacity = int(capacity)
        self.horizon = int(horizon)
        self.alpha, self.beta = float(alpha), float(beta)
        self.rng = np.random.default_rng(seed)
        self._alloc = 0
        self._frames = np.empty((0, *self.frame_shape), np.uint8 if self.pixels else np.float32)
        self._action = np.empty((0, action_dim), np.float32)
        self._reward = np.empty((0,), np.float32)
        self._pos = np.empty((0,), np.int64)  # position of the slot in its episode
        self._left = np.empty((0,), np.int64)  # transitions after this slot in its episode
        self._prio = np.empty((0,), np.float64)  # 0 for slots that cannot start a sequence
        self.head = 0  # next slot to write
        self.size = 0  # filled slots
        self.num_episodes = 0
        self.num_transitions = 0

    # -- storage --------------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self._alloc:
            return
        new = min(self.capacity, max(need, 2 * self._alloc, 1024))

        def grow(a: np.ndarray) -> np.ndarray:
            out = np.zeros((new, *a.shape[1:]), a.dtype)
            out[: len(a)] = a
            return out

        self._frames, self._action, self._reward = grow(self._frames), grow(self._action), grow(self._reward)
        self._pos, self._left, self._prio = grow(self._pos), grow(self._left), grow(self._prio)
        self._alloc = new

    def add_episode(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        """Store one episode: ``obs (T+1, *obs_shape)``, ``actions (T, A)``, ``rewards (T,)``."""
        obs, actions, rewards = np.asarray(obs), np.asarray(actions, np.float32), np.asarray(rewards, np.float32)
        t = len(actions)
        if obs.shape != (t + 1, *self.obs_shape):
            raise ValueError(f"episode obs shape {obs.shape} != ({t + 1}, *{self.obs_shape}) for {t} actions")
        if actions.shape != (t, self.action_dim) or rewards.shape != (t,):
            raise ValueError(f"actions {actions.shape} / rewards {rewards.shape} do not match T={t}, A={self.action_dim}")
        if t + 1 > self.capacity:
            raise ValueError(f"episode of {t} steps does not fit the buffer capacity {self.capacity}")
        frames = obs[:, -self.frame_shape[0]:] if self.pixels else obs
        if self.pixels and obs.dtype != np.uint8:
            raise ValueError(f"pixel observations must be uint8, got {obs.dtype}")
        # Before the first wrap the filled slots are [0, head); wrapping needs the full ring.
        self._grow(min(self.capacity, self.head + t + 1))
        max_p = float(self._prio[: self.size].max()) if self.size else 0.0
        max_p = max_p if max_p > 0 else 1.0
        slots = (self.head + np.arange(t + 1)) % self.capacity
        self._frames[slots] = frames
        self._action[slots[:-1]] = actions
        self._action[slots[-1]] = 0.0
        self._reward[slots[:-1]] = rewards
        self._reward[slots[-1]] = 0.0
        self._pos[slots] = np.arange(t + 1)
        self._left[slots] = t - np.arange(t + 1)
        self._prio[slots] = np.where(self._left[slots] >= self.horizon, max_p, 0.0)
        self.head = int((self.head + t + 1) % self.capacity)
        self.size = int(min(self.capacity, self.size + t + 1))
        if self.size == self.capacity:
            # Slots just after the head belong to the oldest (partly overwritten) episode; their
            # frame stacks may reach back into overwritten slots, so they stop being starts.
            after = (self.head + np.arange(self.frame_stack)) % self.capacity
            self._prio[after[self._pos[after] > 0]] = 0.0
        self.num_episodes += 1
        self.num_transitions += t

    @property
    def num_valid(self) -> int:
        """Slots that can start a sequence."""
        return int(np.count_nonzero(self._prio[: self.size] > 0))

    def __len__(self) -> int:
        return self.size

    # -- sampling -------------------------------------------------------------------------------
    def _obs_at(self, slots: np.ndarray) -> np.ndarray:
        """Observations at ``slots`` (pixel stacks rebuilt, repeating the episode's first frame)."""
        if not self.pixels:
            return self._frames[slots]
        pos = self._pos[slots]
        stack = [self._frames[(slots - np.minimum(pos, k)) % self.capacity] for k in range(self.frame_stack - 1, -1, -1)]
        return np.concatenate(stack, axis=1)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> Batch:
        """Sample ``batch_size`` sequences of ``horizon`` transitions by priority."""
        prio = self._prio[: self.size]
        valid = prio > 0
        n_valid = int(valid.sum())
        if n_valid == 0:
            raise RuntimeError(f"replay buffer holds no sequence of {self.horizon} transitions yet")
        p = prio ** self.alpha if self.alpha != 1 else prio.copy()
        p = np.where(valid, p, 0.0)
        cdf = np.cumsum(p)
        idxs = np.searchsorted(cdf, self.rng.random(batch_size) * cdf[-1], side="right")
        idxs = np.minimum(idxs, self.size - 1)
        probs = p[idxs] / cdf[-1]
        weights = (n_valid * probs) ** (-self.beta)
        weights = weights / weights.max()
        steps = (idxs[None, :] + np.arange(self.horizon + 1)[:, None]) % self.capacity  # (H+1, B)
        obs = self._obs_at(idxs)
        next_obs = np.stack([self._obs_at(steps[t]) for t in range(1, self.horizon + 1)])
        action = self._action[steps[:-1]]
        reward = self._reward[steps[:-1]][..., None]
        dev = torch.device(device)

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x, device=dev)

        return Batch(
            obs=t(obs), next_obs=t(next_obs), action=t(action), reward=t(reward), idxs=idxs,
            weights=t(weights.astype(np.float32)[:, None]),
        )

    def update_priorities(self, idxs: np.ndarray, priorities: torch.Tensor | np.ndarray) -> None:
        """Set the priorities of sampled starts (e.g. TD errors); kept strictly positive."""
        pr = priorities.detach().cpu().numpy() if isinstance(priorities, torch.Tensor) else np.asarray(priorities)
        pr = np.nan_to_num(pr.reshape(-1).astype(np.float64), nan=1.0, posinf=1e4)
        if pr.shape[0] != len(idxs):
            raise ValueError(f"{pr.shape[0]} priorities for {len(idxs)} indices")
        self._prio[idxs] = np.maximum(pr, 1e-6)

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {
            "frames": self._frames[:n].copy(), "action": self._action[:n].copy(), "reward": self._reward[:n].copy(),
            "pos": self._pos[:n].copy(), "left": self._left[:n].copy(), "prio": self._prio[:n].copy(),
            "head": self.head, "size": self.size, "num_episodes": self.num_episodes,
            "num_transitions": self.num_transitions, "rng": self.rng.bit_generator.state,
            "meta": {"obs_shape": self.obs_shape, "action_dim": self.action_dim, "capacity": self.capacity, "horizon": self.horizon},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = state["meta"]
        mine = {"obs_shape": self.obs_shape, "action_dim": self.action_dim, "capacity": self.capacity, "horizon": self.horizon}
        if {k: tuple(v) if k == "obs_shape" else v for k, v in meta.items()} != mine:
            raise ValueError(f"replay buffer state {meta} does not match this buffer {mine}")
        n = int(state["size"])
        self._alloc = 0
        self._frames = self._frames[:0]
        self._action, self._reward = self._action[:0], self._reward[:0]
        self._pos, self._left, self._prio = self._pos[:0], self._left[:0], self._prio[:0]
        self._grow(max(n, 1))
        for name in ("frames", "action", "reward", "pos", "left", "prio"):
            getattr(self, f"_{name}")[:n] = state[name]
        self.head, self.size = int(state["head"]), n
        self.num_episodes, self.num_transitions = int(state["num_episodes"]), int(state["num_transitions"])
        self.rng.bit_generator.state = state["rng"]
