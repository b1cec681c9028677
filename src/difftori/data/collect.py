"""Expert demo collection for MetaWorld, robosuite and ManiSkill3 (``difftori il collect``).

Runs the task's expert and keeps successful episodes only: "scripted" demos from MetaWorld's own policies and
from the robosuite waypoint experts of :mod:`difftori.envs.robosuite_experts`; "motion-planned" demos from
ManiSkill's motion-planning solutions, which drive the env themselves (see
:class:`difftori.envs.maniskill.MotionPlannedExpert`). As in 3D Diffusion Policy, an episode counts as successful once ``info["success"]`` has been set on
``success_steps`` steps (default 5); the episode is ended right there (or at the step limit,
then discarded). Resets draw object/goal positions from one stream seeded with ``seed`` (the
first reset uses ``seed``, later ones continue the stream), so a collection is reproducible;
evaluate with a different seed to test on unseen initial states.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from difftori.utils.config import add_dataclass_args, check, dataclass_from_args

__all__ = ["CollectConfig", "CollectReport", "collect_demos", "default_out", "default_episode_length", "register_cli", "IL_SUITES",
           "DEMO_SOURCE"]

IL_SUITES = ("metaworld", "robosuite", "maniskill")
"""Suites with experts (``il collect``) and dict observations for the IL policies."""

DEMO_SOURCE = {"metaworld": "scripted", "robosuite": "scripted", "maniskill": "motion-planned"}
"""What the demos of each suite are (stored as the dataset's ``demo_source``)."""

_PACKAGES = {"metaworld": ("metaworld", "mujoco"), "robosuite": ("robosuite", "mujoco"),
             "maniskill": ("mani-skill", "sapien", "mplib")}


def _il_task(task: str):
    """``(suite module, canonical name)`` of an IL task, or None."""
    from difftori.envs import suite_of

    return suite_of(task, IL_SUITES)


def _known_il_tasks() -> str:
    from difftori.envs import known_tasks

    return "; ".join(f"{s}: {', '.join(t)}" for s, t in known_tasks().items() if s in IL_SUITES)


@dataclass
class CollectConfig:
    """Options of ``difftori il collect``."""

    task: str = "door-open"
    """IL task: MetaWorld (door-open, reach, ...; -v3 suffix accepted), robosuite (lift, can, square) or ManiSkill
    (pick-cube, stack-cube, ...)."""
    episodes: int = 10
    """Number of successful demonstrations to keep."""
    obs_type: Literal["pointcloud", "image", "state"] = "pointcloud"
    """Observation modality stored next to the 9-D agent state (as ``il train --obs-type``)."""
    out: Path | None = None
    """Output zarr directory (default: data/<suite>_<task>_<obs>_<episodes>.zarr)."""
    seed: int = 0
    """Seed of the reset stream (object / goal positions)."""
    max_tries: int | None = None
    """Give up after this many episodes (default: 3 x episodes)."""
    episode_length: int | None = None
    """Step limit per episode (default: the suite's, MetaWorld 200 as DP3, robosuite 400 as Robomimic, ManiSkill per
    task, longer than its plans)."""
    success_steps: int = 5
    """An episode succeeds (and ends) once the task reports success on this many steps."""
    img_size: int = 84
    """Image side in pixels (obs image)."""
    num_points: int = 512
    """Points per cloud (obs pointcloud)."""
    overwrite: bool = False
    """Replace an existing dataset at --out."""
    progress: bool = True
    """Show progress (a bar on a terminal, a line every few seconds in a log)."""

    def __post_init__(self) -> None:
        found = _il_task(self.task)
        check(found is not None, f"task: unknown IL task {self.task!r}; known: {_known_il_tasks()}")
        if self.episode_length is None:  # resolved here, so a MetaWorld config (and its sweep cell id) reads 200 as before
            self.episode_length = default_episode_length(*found)
        check(self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}")
        check(self.max_tries is None or self.max_tries >= self.episodes, f"max_tries ({self.max_tries}) must be >= episodes ({self.episodes})")
        check(self.episode_length is None or self.episode_length >= 1, f"episode_length must be >= 1, got {self.episode_length}")
        check(self.success_steps >= 1, f"success_steps must be >= 1, got {self.success_steps}")
        check(self.img_size >= 8 and self.num_points >= 1, "img_size must be >= 8 and num_points >= 1")


@dataclass
class CollectReport:
    """What a collection produced."""

    task: str
    obs_type: str
    path: Path
    kept: int
    """Successful episodes written."""
    tried: int
    """Episodes run."""
    requested: int
    steps: int
    """Steps written (sum of kept episode lengths)."""
    seconds: float
    episode_lengths: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.kept / max(self.tried, 1)

    @property
    def complete(self) -> bool:
        return self.kept >= self.requested

    def summary(self) -> str:
        lens = f"{min(self.episode_lengths)}-{max(self.episode_lengths)}" if self.episode_lengths else "-"
        return (
            f"{self.task} [{self.obs_type}]: kept {self.kept}/{self.requested} demos after {self.tried} tries "
            f"(expert success {self.success_rate:.0%}), {self.steps} steps, episode lengths {lens}, "
            f"{self.seconds:.1f}s -> {self.path}"
        )


def default_episode_length(suite, name: str) -> int:
    """The suite module's default step limit for task ``name``: per task (``EPISODE_LENGTHS``, ManiSkill) or per
    suite (``DEFAULT_EPISODE_LENGTH``, robosuite 400); MetaWorld 200 (DP3)."""
    per_task = getattr(suite, "EPISODE_LENGTHS", None)
    if per_task is not None and name in per_task:
        return int(per_task[name])
    return int(getattr(suite, "DEFAULT_EPISODE_LENGTH", 200))


def _suite_name(suite) -> str:
    return suite.__name__.rsplit(".", 1)[-1]


def _versions(suite: str) -> dict[str, str]:
    """Versions of difftori, the suite's packages and numpy."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("difftori", *_PACKAGES[suite], "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def default_out(task: str, obs_type: str, episodes: int) -> Path:
    """``data/<suite>_<task>_<obs>_<episodes>.zarr`` (canonical task name)."""
    found = _il_task(task)
    suite, name = (_suite_name(found[0]), found[1]) if found else ("metaworld", task)
    return Path("data") / f"{suite}_{name}_{obs_type}_{episodes}.zarr"


def _record_episode(env, expert, obs_keys: list[str], success_steps: int):
    """Run the expert for one episode: ``(obs {key: (T, ...)}, actions (T, A), succeeded)``.

    An expert with ``rollout(env, obs, on_step)`` (the motion planners) drives the env itself and we record what it
    executes; the others are asked ``get_action(env.raw_obs)`` at every step.
    """
    obs, _ = env.reset()
    if hasattr(expert, "reset"):  # stateful (phase-machine) experts start over
        expert.reset()
    rollout = getattr(expert, "rollout", None)
    if rollout is not None:
        rec_obs: dict[str, list[np.ndarray]] = {k: [] for k in obs_keys}
        rec_act: list[np.ndarray] = []
        count = [0]

        def on_step(o, a, info) -> bool:
            for k in obs_keys:
                rec_obs[k].append(o[k])
            rec_act.append(np.asarray(a, dtype=np.float32))
            count[0] += int(bool(info.get("success", 0.0)))
            return count[0] >= success_steps

        rollout(env, obs, on_step)
        if not rec_act:
            return {}, np.zeros((0, env.task_spec.action_dim), np.float32), False
        return {k: np.stack(v) for k, v in rec_obs.items()}, np.stack(rec_act), count[0] >= success_steps
    ep_obs: dict[str, list[np.ndarray]] = {k: [] for k in obs_keys}
    ep_act: list[np.ndarray] = []
    n_success = 0
    while True:
        action = np.clip(np.asarray(expert.get_action(env.raw_obs), dtype=np.float32), -1.0, 1.0)
        for k in obs_keys:
            ep_obs[k].append(obs[k])
        ep_act.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        n_success += int(bool(info.get("success", 0.0)))
        if n_success >= success_steps or terminated or truncated:
            break
    stacked = {k: np.stack(v) for k, v in ep_obs.items()}
    return stacked, np.stack(ep_act), n_success >= success_steps


def collect_demos(
    task: str,
    episodes: int = 10,
    obs_type: str = "pointcloud",
    out: str | Path | None = None,
    seed: int = 0,
    max_tries: int | None = None,
    success_steps: int = 5,
    overwrite: bool = False,
    progress: bool = True,
    **env_opts,
) -> CollectReport:
    """Collect ``episodes`` successful expert demos of ``task`` and write them to ``out`` (zarr).

    ``env_opts`` go to the suite's ``make`` (``episode_length``, ``img_size``,
    ``num_points``, ...) and are stored in the dataset's ``env_options`` attribute. Writes the
    kept episodes even when fewer than requested succeed (see ``CollectReport.complete``);
    raises ``RuntimeError`` if none does.
    """
    from difftori.data.dataset import DemoData, save_demos
    from difftori.envs import obs_revision

    found = _il_task(task)
    if found is None:
        from difftori.envs import UnknownTaskError

        raise UnknownTaskError(f"unknown IL task {task!r}; known tasks: {_known_il_tasks()}")
    suite, name = found
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    max_tries = 3 * episodes if max_tries is None else int(max_tries)
    if max_tries < episodes:
        raise ValueError(f"max_tries ({max_tries}) must be >= episodes ({episodes})")
    out = Path(out) if out is not None else default_out(name, obs_type, episodes)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")

    env_opts = {k: v for k, v in env_opts.items() if v is not None}  # None: the suite's default
    env = suite.make(name, obs_type=obs_type, seed=seed, **env_opts)
    expert = suite.make_expert(name)
    obs_keys = list(env.task_spec.obs_shapes)
    buffers: dict[str, list[np.ndarray]] = {k: [] for k in obs_keys}
    actions: list[np.ndarray] = []
    lengths: list[int] = []
    tried = 0
    start = time.perf_counter()
    from difftori.utils.progress import progress as progress_bar

    bar = progress_bar(episodes, desc=f"collect {name}", unit="demo", enabled=progress)
    try:
        with warnings.catch_warnings():
            # MetaWorld's experts warn that their gains exceed the action range; actions are clipped.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)
            while len(lengths) < episodes and tried < max_tries:
                tried += 1
                ep_obs, ep_act, ok = _record_episode(env, expert, obs_keys, success_steps)
                if ok:
                    for k in obs_keys:
                        buffers[k].append(ep_obs[k])
                    actions.append(ep_act)
                    lengths.append(len(ep_act))
                    bar.update(1)
                bar.set_postfix(tried=tried)
    finally:
        bar.close()
        env.close()
    if not lengths:
        raise RuntimeError(f"the {DEMO_SOURCE[_suite_name(suite)]} expert for {name} succeeded in none of {tried} episodes; "
                           "nothing written")

    if hasattr(env, "env_options"):  # the env's effective options (besides obs_type), so evaluation can rebuild it
        opts = env.env_options()
    else:
        opts = {"episode_length": env.episode_length, "img_size": env.img_size, "num_points": env.num_points,
                "pc_render_size": env.pc_render_size}
        if hasattr(env, "camera_pos"):  # metaworld
            opts["camera"], opts["camera_pos"] = env.camera, list(env.camera_pos)
        if hasattr(env, "pc_cameras"):  # robosuite
            opts["pc_cameras"] = list(env.pc_cameras)
    data = DemoData(
        obs={k: np.concatenate(buffers[k]) for k in obs_keys},
        action=np.concatenate(actions).astype(np.float32),
        episode_ends=np.cumsum(lengths).astype(np.int64),
        attrs={
            "task": name,
            "obs_type": obs_type,
            "seed": int(seed),
            "tried": tried,
            "success_steps": int(success_steps),
            "suite": _suite_name(suite),
            "demo_source": DEMO_SOURCE[_suite_name(suite)],
            "versions": _versions(_suite_name(suite)),
            "env_options": opts,
            "obs_revision": obs_revision(name),
        },
    )
    save_demos(out, data, overwrite=overwrite)
    return CollectReport(
        task=name,
        obs_type=obs_type,
        path=out,
        kept=len(lengths),
        tried=tried,
        requested=episodes,
        steps=int(sum(lengths)),
        seconds=time.perf_counter() - start,
        episode_lengths=lengths,
    )


def _run(args: argparse.Namespace) -> int:
    cfg = dataclass_from_args(CollectConfig, args)
    out = cfg.out if cfg.out is not None else default_out(cfg.task, cfg.obs_type, cfg.episodes)
    if out.exists() and not cfg.overwrite:
        print(f"difftori: error: {out} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    print(f"collecting {cfg.episodes} {cfg.task} demos ({cfg.obs_type}) -> {out}", flush=True)
    report = collect_demos(
        cfg.task,
        episodes=cfg.episodes,
        obs_type=cfg.obs_type,
        progress=cfg.progress,
        out=out,
        seed=cfg.seed,
        max_tries=cfg.max_tries,
        success_steps=cfg.success_steps,
        overwrite=cfg.overwrite,
        episode_length=cfg.episode_length,
        img_size=cfg.img_size,
        num_points=cfg.num_points,
    )
    print(report.summary())
    if not report.complete:
        print(f"difftori: warning: only {report.kept} of {report.requested} demos collected (raise --max-tries)", file=sys.stderr)
        return 1
    return 0


def register_cli(sub) -> None:
    """Add ``collect`` to the ``difftori il`` subcommands."""
    p = sub.add_parser(
        "collect",
        help="record expert demos (MetaWorld / robosuite scripted, ManiSkill motion-planned; successful episodes only) "
             "into a zarr dataset",
        description=__doc__.splitlines()[0],
    )
    add_dataclass_args(p, CollectConfig)
    p.set_defaults(func=_run)

