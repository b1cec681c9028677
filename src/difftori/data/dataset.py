"""Demonstration datasets: the zarr on-disk format, checked loading, and observation/action windows.

On-disk format (a zarr group, chunked along time)::

    attrs: format="difftori-demos", format_version=1, task, obs_type, seed, episodes, tried,
           versions={difftori, metaworld, mujoco, numpy}, obs_keys=[...], action_dim,
           env_options={...}  (``make_env`` options besides obs_type the demos were recorded with),
           checksums={"data/action": crc32, ...}  (of each array's bytes, verified on load)
    data/action      (N, 4)          float32
    data/state       (N, 9)          float32   (always)
    data/pointcloud  (N, 512, 3)     float32   (obs_type "pointcloud")
    data/image       (N, 3, H, W)    uint8     (obs_type "image")
    data/full_state  (N, 39)         float32   (obs_type "state")
    meta/episode_ends (E,)           int64     cumulative ends: episode e is [ends[e-1], ends[e])

Step ``t`` stores the observation seen at ``t`` and the action taken at ``t``.
"""

from __future__ import annotations

import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DemoData",
    "DemoFormatError",
    "save_demos",
    "load_demos",
    "DemoWindowDataset",
]

FORMAT = "difftori-demos"
FORMAT_VERSION = 1
_CHUNK_STEPS = 100


class DemoFormatError(ValueError):
    """A path is not a valid difftori demo dataset (or not the one asked for); the message says why."""


@dataclass
class DemoData:
    """Demonstrations in memory: per-step observations and actions, split into episodes."""

    obs: dict[str, np.ndarray]
    """Observation key -> ``(N, *shape)`` array (``state`` plus the modality's key)."""
    action: np.ndarray
    """``(N, action_dim)`` float32 actions in [-1, 1]."""
    episode_ends: np.ndarray
    """``(E,)`` int64 cumulative episode ends (the last one equals N)."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """Root attributes (task, obs_type, seed, versions, env_options, ...)."""

    def __post_init__(self) -> None:
        self.action = np.asarray(self.action)
        self.episode_ends = np.asarray(self.episode_ends, dtype=np.int64)
        n = len(self.action)
        if self.action.ndim != 2:
            raise DemoFormatError(f"action must be (N, action_dim), got shape {self.action.shape}")
        for key, arr in self.obs.items():
            if len(arr) != n:
                raise DemoFormatError(f"obs[{key!r}] has {len(arr)} steps but action has {n}")
        ends = self.episode_ends
        if ends.ndim != 1 or len(ends) == 0:
            raise DemoFormatError(f"episode_ends must be a non-empty 1-D array, got shape {ends.shape}")
        if ends[-1] != n or np.any(np.diff(np.concatenate([[0], ends])) <= 0):
            raise DemoFormatError(
                f"episode_ends must be strictly increasing positive cumulative ends ending at N={n}; got {ends.tolist()}"
            )

    @property
    def task(self) -> str | None:
        return self.attrs.get("task")

    @property
    def obs_type(self) -> str | None:
        return self.attrs.get("obs_type")

    @property
    def n_steps(self) -> int:
        return len(self.action)

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-step observation shapes (equal to the env's ``task_spec.obs_shapes``)."""
        return {k: tuple(v.shape[1:]) for k, v in self.obs.items()}

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[1])

    @property
    def env_options(self) -> dict[str, Any]:
        """``make_env`` options (besides ``obs_type``) the demos were recorded with; reuse them for evaluation."""
        return dict(self.attrs.get("env_options", {}))

    def episode_bounds(self) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` step ranges of each episode."""
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        return [(int(s), int(e)) for s, e in zip(starts, self.episode_ends)]


def _create_array(group, name: str, data: np.ndarray) -> None:
    chunks = (min(_CHUNK_STEPS, max(1, len(data))),) + tuple(data.shape[1:])
    if hasattr(group, "create_array"):  # zarr 3
        group.create_array(name, data=data, chunks=chunks)
    else:  # zarr 2
        group.create_dataset(name, data=data, chunks=chunks)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_demos(path: str | Path, data: DemoData, overwrite: bool = False) -> Path:
    """Write ``data`` to the zarr store ``path`` atomically (``path.tmp`` then rename).

    ``data.attrs`` must give at least ``task`` and ``obs_type``; the format tag, version,
    ``obs_keys``, ``action_dim`` and ``episodes`` are filled in here.
    """
    import zarr

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    for key in ("task", "obs_type"):
        if key not in data.attrs:
            raise ValueError(f"save_demos: data.attrs must contain {key!r}")
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        root = zarr.open_group(str(tmp), mode="w")
        arrays = {"data/action": np.asarray(data.action, dtype=np.float32)}
        arrays.update({f"data/{k}": np.ascontiguousarray(v) for k, v in data.obs.items()})
        arrays["meta/episode_ends"] = data.episode_ends.astype(np.int64)
        attrs = dict(data.attrs)
        attrs.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            obs_keys=sorted(data.obs),
            action_dim=data.action_dim,
            episodes=data.n_episodes,
            checksums={name: _checksum(arr) for name, arr in arrays.items()},
        )
        root.attrs.update(_jsonable(attrs))
        for name, arr in arrays.items():
            group, _, leaf = name.partition("/")
            _create_array(root.require_group(group), leaf, arr)
        old = path.with_name(path.name + ".old")
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            path.rename(old)
        tmp.rename(path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_demos(path: str | Path, expect_task: str | None = None, expect_obs_type: str | None = None) -> DemoData:
    """Load a demo dataset into memory, checking format, arrays and (optionally) task / obs type."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"demo dataset not found: {path} (collect one with `difftori il collect --out {path}`)")
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
    except Exception as exc:  # zarr raises several types for a non-zarr / damaged store
        raise DemoFormatError(f"{path} is not a readable zarr store ({type(exc).__name__}: {exc})") from None
    if attrs.get("format") != FORMAT:
        raise DemoFormatError(f"{path} is not a difftori demo dataset (format tag {attrs.get('format')!r}, expected {FORMAT!r})")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise DemoFormatError(
            f"{path} has format_version {attrs.get('format_version')!r}; this difftori reads version {FORMAT_VERSION}"
        )
    task, obs_type = attrs.get("task"), attrs.get("obs_type")
    if expect_task is not None or expect_obs_type is not None:
        from difftori.envs import suite_of

        found = suite_of(expect_task) if expect_task is not None else None
        want_task = (found[1] if found else expect_task) if expect_task is not None else task
        want_obs = expect_obs_type if expect_obs_type is not None else obs_type
        if want_task != task or want_obs != obs_type:
            raise DemoFormatError(
                f"dataset at {path} was collected for task {task!r} with obs {obs_type!r}, "
                f"but task {want_task!r} with obs {want_obs!r} was asked for"
            )
    if task is not None:
        from difftori.envs import obs_revision

        have, want = int(attrs.get("obs_revision", 1)), obs_revision(task)
        if have != want:
            raise DemoFormatError(f"{path} holds {task!r} observations of layout revision {have}, this difftori's {task!r} is at "
                                  f"revision {want} (its observations changed): collect the demos again with `difftori il collect`")
    obs_keys = list(attrs.get("obs_keys") or [])
    if not obs_keys:
        raise DemoFormatError(f"{path}: attribute 'obs_keys' is missing or empty")
    arrays: dict[str, np.ndarray] = {}
    for name in ["data/action", "meta/episode_ends"] + [f"data/{k}" for k in obs_keys]:
        try:
            arrays[name] = np.asarray(root[name][...])
        except KeyError:
            raise DemoFormatError(f"{path}: array {name!r} is missing (the store is incomplete or corrupt)") from None
        except Exception as exc:  # damaged chunks / metadata surface as codec or IO errors
            raise DemoFormatError(f"{path}: array {name!r} cannot be read ({type(exc).__name__}: {exc})") from None
    sums = attrs.get("checksums") or {}
    for name, arr in arrays.items():
        if name in sums and sums[name] != _checksum(arr):
            raise DemoFormatError(f"{path}: array {name!r} does not match its checksum (truncated or corrupt store)")
    _check_lengths(path, arrays)
    data = DemoData(
        obs={k: arrays[f"data/{k}"] for k in obs_keys},
        action=arrays["data/action"],
        episode_ends=arrays["meta/episode_ends"],
        attrs=attrs,
    )
    if attrs.get("action_dim") not in (None, data.action_dim):
        raise DemoFormatError(f"{path}: attrs say action_dim={attrs['action_dim']} but data/action is {data.action.shape}")
    if attrs.get("episodes") not in (None, data.n_episodes):
        raise DemoFormatError(f"{path}: attrs say {attrs['episodes']} episodes but meta/episode_ends has {data.n_episodes}")
    return data


def _checksum(arr: np.ndarray) -> int:
    """CRC32 of the array's bytes (missing zarr chunks read back as fill values; this catches them)."""
    return zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def _check_lengths(path: Path, arrays: dict[str, np.ndarray]) -> None:
    n = len(arrays["data/action"])
    for name, arr in arrays.items():
        if name.startswith("data/") and len(arr) != n:
            raise DemoFormatError(f"{path}: {name} has {len(arr)} steps but data/action has {n} (inconsistent lengths)")
    ends = arrays["meta/episode_ends"]
    if ends.ndim != 1 or len(ends) == 0 or ends[-1] != n or np.any(np.diff(np.concatenate([[0], ends])) <= 0):
        raise DemoFormatError(f"{path}: meta/episode_ends {ends.tolist()[:10]} is inconsistent with {n} steps")


class DemoWindowDataset(torch.utils.data.Dataset):
    """Windows of ``obs_steps`` observations and ``action_steps`` actions around every step.

    Item for time ``t`` of an episode: ``obs[key]`` at ``t-obs_steps+1 .. t`` and ``action`` at
    ``t .. t+action_steps-1``; indices before the episode start repeat its first step and
    indices past its end repeat its last step (never crossing episodes). Values are raw
    (unnormalised); float arrays become float32 tensors, images stay uint8.
    """

    def __init__(
        self,
        demos: DemoData | str | Path,
        obs_steps: int = 2,
        action_steps: int = 4,
        episodes: list[int] | np.ndarray | None = None,
    ) -> None:
        if obs_steps < 1 or action_steps < 1:
            raise ValueError(f"obs_steps and action_steps must be >= 1, got {obs_steps}, {action_steps}")
        self.data = demos if isinstance(demos, DemoData) else load_demos(demos)
        self.obs_steps, self.action_steps = int(obs_steps), int(action_steps)
        n_ep = self.data.n_episodes
        self.episodes = np.arange(n_ep) if episodes is None else np.asarray(sorted(set(int(e) for e in episodes)))
        if len(self.episodes) and (self.episodes.min() < 0 or self.episodes.max() >= n_ep):
            raise ValueError(f"episode indices must be in [0, {n_ep}), got {self.episodes.tolist()}")
        bounds = self.data.episode_bounds()
        t, lo, hi = [], [], []
        for e in self.episodes:
            s, end = bounds[e]
            t.append(np.arange(s, end))
            lo.append(np.full(end - s, s))
            hi.append(np.full(end - s, end - 1))
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64))  # noqa: E731
        t, lo, hi = cat(t), cat(lo), cat(hi)
        self.obs_index = np.clip(t[:, None] + np.arange(-self.obs_steps + 1, 1), lo[:, None], hi[:, None])
        self.action_index = np.clip(t[:, None] + np.arange(self.action_steps), lo[:, None], hi[:, None])
        self._obs = {k: torch.from_numpy(_as_tensor_array(v)) for k, v in self.data.obs.items()}
        self._action = torch.from_numpy(np.asarray(self.data.action, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.obs_index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        oi = torch.from_numpy(self.obs_index[i])
        ai = torch.from_numpy(self.action_index[i])
        return {"obs": {k: v[oi] for k, v in self._obs.items()}, "action": self._action[ai]}

    def split(self, val_ratio: float = 0.1, seed: int = 0) -> tuple["DemoWindowDataset", "DemoWindowDataset"]:
        """``(train, val)`` datasets over disjoint episodes; ``round(val_ratio * E)`` episodes (at least
        one when ``val_ratio > 0`` and there are >= 2 episodes) go to val, chosen with ``seed``."""
        if not 0.0 <= val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
        eps = np.random.default_rng(seed).permutation(self.episodes)
        n_val = int(round(val_ratio * len(eps)))
        if val_ratio > 0 and n_val == 0 and len(eps) >= 2:
            n_val = 1
        n_val = min(n_val, len(eps) - 1)
        make = lambda e: DemoWindowDataset(self.data, self.obs_steps, self.action_steps, episodes=e)  # noqa: E731
        return make(eps[n_val:]), make(eps[:n_val])

    def stats_data(self) -> dict[str, torch.Tensor]:
        """Every step of this dataset's episodes, ``{"action": (n, A), key: (n, *shape)}``, to fit a normalizer."""
        bounds = self.data.episode_bounds()
        idx = np.concatenate([np.arange(*bounds[e]) for e in self.episodes]) if len(self.episodes) else np.zeros(0, int)
        ti = torch.from_numpy(idx)
        return {"action": self._action[ti], **{k: v[ti] for k, v in self._obs.items()}}


def _as_tensor_array(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    return np.ascontiguousarray(arr if arr.dtype == np.uint8 else arr.astype(np.float32))
