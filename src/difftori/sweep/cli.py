"""``difftori sweep rl|il|report``: experiment grids on Ray, resumable, local by default, the same on a cluster.

``sweep rl`` runs tasks x agents x seeds of ``difftori rl train``; ``sweep il`` collects demos per task
and obs type, then runs tasks x policies x obs types x seeds of ``difftori il train`` (difftori after
the diffusion run of the same task, obs type and seed it starts from). Options the sweep does not know
are passed to every run (``--latent-dim 32``, ``--difftori.max-iters 50``) and checked before anything
is written. List options take commas or spaces: ``--seeds 1,2,3`` = ``--seeds 1 2 3``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from difftori.sweep.runner import SweepOptions
from difftori.utils.config import ConfigError, check

__all__ = ["RLSweepConfig", "ILSweepConfig", "register", "split_lists"]

_LIST_FLAGS = ("--tasks", "--agents", "--seeds", "--policies", "--obs-types")


@dataclass
class RLSweepConfig(SweepOptions):
    """An RL grid: tasks x agents x seeds of ``difftori rl train``."""

    tasks: tuple[str, ...] = ("cartpole-swingup",)
    """DMC tasks."""
    agents: tuple[str, ...] = ("tdmpc", "difftori")
    """Agents (each a variant): tdmpc, difftori."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """Seeds of every task and agent."""
    steps: int = 100_000
    """Env steps per run."""
    preset: Optional[Literal["paper", "small"]] = None
    """Preset of every run (rl train --preset); None: the train defaults (paper)."""
    out: Optional[Path] = None
    """Sweep directory (cells, results.csv, summary.md, plots); required. Run the same command again to resume."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.out is not None, "--out DIR is required (the sweep directory; the same DIR resumes the sweep)")
        check(bool(self.tasks) and bool(self.agents) and bool(self.seeds), "need at least one task, agent and seed")
        for a in self.agents:
            check(a in ("tdmpc", "difftori"), f"unknown agent {a!r}; known: tdmpc, difftori")
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")


@dataclass
class ILSweepConfig(SweepOptions):
    """An IL grid: demos per task and obs type, then tasks x policies x obs types x seeds of ``difftori il train``."""

    tasks: tuple[str, ...] = ("door-open",)
    """MetaWorld tasks."""
    policies: tuple[str, ...] = ("bc", "ibc", "diffusion", "difftori")
    """Policies (each a variant): bc, ibc, diffusion, difftori (starts from the diffusion run of its task, obs type and seed)."""
    obs_types: tuple[str, ...] = ("pointcloud",)
    """Observation types: pointcloud, image, state."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """Training seeds."""
    steps: int = 3000
    """Gradient steps per run."""
    difftori_steps: Optional[int] = None
    """Gradient steps of the difftori runs (fine-tuning after diffusion); None: --steps."""
    demos: int = 10
    """Scripted-expert demos collected per task and obs type."""
    preset: Optional[Literal["paper", "small"]] = None
    """Preset of every run (il train --preset); None: the train defaults."""
    out: Optional[Path] = None
    """Sweep directory (cells, results.csv, summary.md, plots); required. Run the same command again to resume."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.out is not None, "--out DIR is required (the sweep directory; the same DIR resumes the sweep)")
        check(bool(self.tasks) and bool(self.policies) and bool(self.obs_types) and bool(self.seeds),
              "need at least one task, policy, obs type and seed")
        from difftori.il.config import OBS_TYPES, POLICIES

        for p in self.policies:
            check(p in POLICIES, f"unknown policy {p!r}; known: {', '.join(POLICIES)}")
        for o in self.obs_types:
            check(o in OBS_TYPES, f"unknown obs type {o!r}; known: {', '.join(OBS_TYPES)}")
        check(self.steps >= 1 and (self.difftori_steps is None or self.difftori_steps >= 1), "steps must be >= 1")
        check(self.demos >= 1, f"demos must be >= 1, got {self.demos}")


def split_lists(argv: list[str]) -> list[str]:
    """Split comma lists after the grid's list options: ``--seeds 1,2`` -> ``--seeds 1 2``."""
    out, in_list = [], False
    for tok in argv:
        if tok.startswith("--"):
            in_list = tok.split("=", 1)[0] in _LIST_FLAGS
            if in_list and "=" in tok:
                flag, val = tok.split("=", 1)
                out += [flag, *[v for v in val.split(",") if v]]
                continue
            out.append(tok)
        elif in_list:
            out += [v for v in tok.split(",") if v]
        else:
            out.append(tok)
    return out


def _run(args: argparse.Namespace, cells, cfg) -> int:
    from difftori.sweep.runner import run_sweep

    states = run_sweep(cells, cfg.out, cfg)  # cfg is a SweepOptions
    bad = [s for s in states.values() if s["status"] != "done"]
    print(f"[sweep] {len(states) - len(bad)}/{len(states)} cells done; results in {cfg.out}")
    return 1 if bad else 0


def _sweep_rl(args: argparse.Namespace) -> int:
    from difftori.sweep.grid import rl_grid
    from difftori.sweep.runner import require_ray
    from difftori.utils.config import dataclass_from_args

    cfg = dataclass_from_args(RLSweepConfig, args)
    require_ray()
    cells = rl_grid(cfg.tasks, cfg.agents, cfg.seeds, cfg.steps, cfg.preset, getattr(args, "overrides", []))
    return _run(args, cells, cfg)


def _sweep_il(args: argparse.Namespace) -> int:
    from difftori.sweep.grid import il_grid
    from difftori.sweep.runner import require_ray
    from difftori.utils.config import dataclass_from_args

    cfg = dataclass_from_args(ILSweepConfig, args)
    require_ray()
    steps = {"difftori": cfg.difftori_steps} if cfg.difftori_steps is not None and "difftori" in cfg.policies else None
    cells = il_grid(cfg.tasks, cfg.policies, cfg.obs_types, cfg.seeds, cfg.steps, cfg.demos, cfg.preset,
                    getattr(args, "overrides", []), policy_steps=steps)
    return _run(args, cells, cfg)


def _report(args: argparse.Namespace) -> int:
    from difftori.sweep.report import write_report

    if getattr(args, "overrides", None):
        raise ConfigError(f"unrecognized arguments: {' '.join(args.overrides)}")
    out = args.out or Path(args.dirs[0])
    for p in write_report(args.dirs, out):
        print(f"wrote {p}")
    return 0


def register(sub) -> None:
    """Add ``sweep rl|il|report`` to the top-level parser."""
    from difftori.utils.config import add_dataclass_args

    p = sub.add_parser("sweep", help="experiment grids on Ray (tasks x variants x seeds): resumable, local or on a cluster",
                       description=__doc__.splitlines()[0])
    s = p.add_subparsers(dest="cmd", required=True)
    r = s.add_parser("rl", help="tasks x agents x seeds of `rl train` (other options go to every run)", allow_abbrev=False,
                     epilog="Any other `difftori rl train` option is passed to every run, e.g. --latent-dim 32.")
    add_dataclass_args(r, RLSweepConfig)
    r.set_defaults(func=_sweep_rl, overrides_ok=True)
    i = s.add_parser("il", help="demos, then tasks x policies x obs types x seeds of `il train` (other options go to every run)",
                     allow_abbrev=False,
                     epilog="Any other `difftori il train` option is passed to every run, e.g. --batch-size 32.")
    add_dataclass_args(i, ILSweepConfig)
    i.set_defaults(func=_sweep_il, overrides_ok=True)
    rep = s.add_parser("report", help="regenerate results.csv, summary.md and plots from sweep directories (several: merged)")
    rep.add_argument("dirs", nargs="+", type=Path, help="sweep directories")
    rep.add_argument("--out", type=Path, default=None, help="where the report goes (default: the first directory)")
    rep.set_defaults(func=_report)
