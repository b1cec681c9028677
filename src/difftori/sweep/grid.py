"""Cells of an experiment grid: one ``difftori rl train`` / ``il train`` / ``il collect`` run each, or one run of a
benchmark script (``script`` cells: :func:`script_cell`).

A cell's options are checked by the real CLI parser and resolved into the run's config (presets
applied) when the grid is built, so a bad option fails before anything is written. The cell id is
``<task>-[<obs>-]<variant>-seed<s>-<hash>``, the hash over the resolved config without the runtime
fields (threads, device, progress, paths) and with the ids of the cells it depends on: the same
grid always maps to the same ids, and any change to what a run computes gives a new cell.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from difftori.utils.config import ConfigError, to_dict

__all__ = ["Cell", "rl_cell", "il_cell", "collect_cell", "script_cell", "rl_grid", "il_grid", "il_seed_cells", "RUNNER_OPTIONS", "NEUTRAL_DEFAULTS", "ID_ALIASES", "config_hash"]

RUNNER_OPTIONS = ("--run-root", "--resume", "--progress", "--num-threads", "--device", "--dataset", "--base-policy", "--out", "--config")
"""Options the sweep runner sets itself for every cell (paths, threads = CPUs per run, device = GPUs per run)."""

_VOLATILE = {"run_root", "progress", "num_threads", "device", "dataset", "base_policy", "out", "overwrite", "eval_envs",
             "eval_stop_on_success"}
"""Config fields left out of the cell id: where and how a run executes, not what it computes (``eval_envs``: the
same evaluation episodes, run side by side; ``eval_stop_on_success``: the same success rate, episodes cut at it)."""

_VOLATILE_NESTED = {"difftori.return_grad", "difftori.cost_grad"}
"""Nested config fields (dotted paths) left out of the cell id for the same reason: how a value is computed
(the RL return's / the IL cost's gradient by autograd or by hand: equal to float rounding), not which value."""


@dataclass
class Cell:
    """One run of a grid (or the demo collection some IL runs need)."""

    area: Literal["rl", "il", "collect", "script"]
    """rl: ``difftori rl train``; il: ``difftori il train``; collect: ``difftori il collect``; script: a Python
    script (``options[0]``, see :func:`script_cell`)."""
    task: str
    """Task name (canonical)."""
    variant: str
    """Name of the compared variant (agent / policy, or a named option set)."""
    seed: int
    """Training seed (0 for collect cells)."""
    options: list[str]
    """CLI options of the run, without the ones the runner sets (:data:`RUNNER_OPTIONS`)."""
    config: dict[str, Any]
    """Resolved config of the run (``config.json`` as the CLI would write it, paths left out)."""
    steps: int
    """Training budget (env steps for RL, gradient steps for IL; episodes for collect)."""
    obs_type: str | None = None
    """Observation type (IL and collect cells)."""
    deps: dict[str, str] = field(default_factory=dict)
    """Cells that must finish first, by role: ``dataset`` (collect cell id), ``base_policy`` (diffusion cell id)."""
    id: str = ""
    """Stable id (see the module docstring); filled in by the constructors."""

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "area", "task", "variant", "seed", "obs_type", "steps", "options", "deps", "config")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Cell":
        return cls(**{k: data[k] for k in ("id", "area", "task", "variant", "seed", "obs_type", "steps", "options", "deps", "config")})


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises one-line :class:`ConfigError` instead of printing usage and exiting."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def _parse(area: Literal["rl", "il"], cmd: str, options: list[str]) -> argparse.Namespace:
    top = _Parser(prog="difftori")
    sub = top.add_subparsers(dest="area", required=True)
    if area == "rl":
        from difftori.rl import cli as rl_cli

        rl_cli.register(sub)
    else:
        from difftori.il import cli as il_cli

        il_cli.register(sub)
    return top.parse_args([area, cmd, *options])


def _check_owned(options: list[str], owned: tuple[str, ...]) -> None:
    bad = sorted({o.split("=", 1)[0] for o in options if o.split("=", 1)[0] in owned})
    if bad:
        raise ConfigError(f"{', '.join(bad)} cannot be given to a sweep cell: the runner sets it (threads = --cpus-per-run, "
                          "device from --gpus-per-run, paths inside the sweep directory)")


NEUTRAL_DEFAULTS: dict[str, Any] = {"precision": "fp32", "difftori.formulation": "released", "difftori.gamma": 0.99,
                                    "difftori.explore": "schedule", "encoder_precision": "fp32",
                                    "difftori.encoder_init": "scratch"}
"""Config fields (dotted paths) added after grids were committed, left out of the cell id at the value every
earlier run had: adding such a field keeps the ids (and so the committed results) of the runs it does not change."""


ID_ALIASES: dict[str, dict[Any, Any]] = {"encoder_precision": {"auto": "bf16"}}
"""Config values that take another value's place in the cell id: ``encoder_precision=auto`` runs bf16 autocast where
the CPU has bf16 units and fp32 where it would emulate them, and bf16 learns fp32's curve to the third digit
(benchmarks/results/il_encoder_precision.md): the same run at the machine's speed, so it keeps bf16's id and a grid
started on one kind of CPU resumes on another (each run's ``runtime.json`` says which precision it used)."""


def _drop_neutral(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        path = prefix + k
        if path in _VOLATILE_NESTED or (path in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[path]):
            continue
        if not isinstance(v, dict) and path in ID_ALIASES:
            v = ID_ALIASES[path].get(v, v)
        out[k] = _drop_neutral(v, path + ".") if isinstance(v, dict) else v
    return out


def config_hash(config: dict[str, Any], deps: dict[str, str]) -> str:
    """10 hex digits of sha1 over the config (minus :data:`_VOLATILE` fields and fields at their
    :data:`NEUTRAL_DEFAULTS` value) and the dependencies' ids."""
    stable = _drop_neutral({k: v for k, v in config.items() if k not in _VOLATILE})
    blob = json.dumps({"config": stable, "deps": deps}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _cell_id(task: str, obs_type: str | None, variant: str, seed: int, digest: str) -> str:
    parts = [task] + ([obs_type] if obs_type else []) + [variant, f"seed{seed}", digest]
    return "-".join(str(p).replace("/", "_").replace(" ", "_") for p in parts)


def _str_options(options: list[Any]) -> list[str]:
    return [str(o) for o in options]


def rl_cell(task: str, variant: str, seed: int, options: list[Any]) -> Cell:
    """A ``difftori rl train`` cell: ``options`` (any train option except :data:`RUNNER_OPTIONS`) plus task and seed."""
    from difftori.envs import dmc
    from difftori.rl.cli import train_config

    if dmc.canonical(task) is None:
        raise ConfigError(f"unknown DMC task {task!r}; known: {', '.join(sorted(dmc.TASKS))}")
    task = dmc.canonical(task)
    options = _str_options(options)
    _check_owned(options, RUNNER_OPTIONS)
    if "--task" in options or "--seed" in options:
        raise ConfigError("give tasks and seeds as the grid's --tasks / --seeds, not as a per-cell option")
    full = ["--task", task, "--seed", str(seed), *options]
    cfg = train_config(_parse("rl", "train", full))
    config = to_dict(cfg)
    return Cell(area="rl", task=task, variant=variant, seed=seed, options=full, config=config, steps=cfg.steps,
                id=_cell_id(task, None, variant, seed, config_hash(config, {})))


def collect_cell(task: str, obs_type: str, episodes: int, options: list[Any] = ()) -> Cell:
    """A ``difftori il collect`` cell: ``episodes`` scripted-expert demos of ``task`` with ``obs_type`` observations."""
    from difftori.data.collect import IL_SUITES, CollectConfig
    from difftori.envs import obs_revision, suite_of
    from difftori.utils.config import dataclass_from_args

    options = _str_options(options)
    _check_owned(options, RUNNER_OPTIONS)
    full = ["--task", task, "--obs-type", obs_type, "--episodes", str(episodes), *options]
    cfg = dataclass_from_args(CollectConfig, _parse("il", "collect", full))
    config = to_dict(cfg)
    found = suite_of(task, IL_SUITES)
    name = found[1] if found else task
    if obs_revision(name) != 1:  # demos of another observation layout are another cell (revision 1 keeps old ids)
        config["obs_revision"] = obs_revision(name)
    return Cell(area="collect", task=name, variant="demos", seed=0, obs_type=obs_type, options=full, config=config,
                steps=cfg.episodes, id=_cell_id(name, obs_type, f"demos{cfg.episodes}", 0, config_hash(config, {})))


def il_cell(task: str, variant: str, seed: int, obs_type: str, options: list[Any], dataset: Cell, base: Cell | None = None) -> Cell:
    """A ``difftori il train`` cell on ``dataset`` (a collect cell); ``base``: the diffusion cell a difftori run starts from."""
    from difftori.il.train import train_config

    options = _str_options(options)
    _check_owned(options, RUNNER_OPTIONS)
    if "--task" in options or "--seed" in options or "--obs-type" in options:
        raise ConfigError("give tasks, seeds and obs types as the grid's --tasks / --seeds / --obs-types, not as a per-cell option")
    full = ["--task", dataset.task, "--seed", str(seed), "--obs-type", obs_type, *options]
    # Placeholders let the config validate; the runner passes the real paths of the cells named in deps.
    ns = _parse("il", "train", [*full, "--dataset", "<collect cell>", "--base-policy", "<diffusion cell>"])
    cfg = train_config(ns)
    deps = {"dataset": dataset.id}
    if cfg.policy == "difftori" and cfg.difftori.init == "base":
        if base is None:
            raise ConfigError(f"difftori on {dataset.task}/{obs_type}/seed{seed} starts from the diffusion run of the same "
                              "task, obs type and seed: include diffusion in the grid's policies (or pass --difftori.init zeros)")
        if (base.task, base.obs_type, base.seed, base.config.get("policy")) != (dataset.task, obs_type, seed, "diffusion"):
            raise ConfigError(f"base cell {base.id} is not a diffusion run of {dataset.task}/{obs_type}/seed{seed}")
        deps["base_policy"] = base.id
    config = to_dict(cfg)
    config["demos"] = dataset.steps
    return Cell(area="il", task=dataset.task, variant=variant, seed=seed, obs_type=obs_type, options=full, config=config,
                steps=cfg.steps, deps=deps, id=_cell_id(dataset.task, obs_type, variant, seed, config_hash(config, deps)))


def script_cell(script: str | Path, task: str, variant: str, seed: int, options: list[Any], config: dict[str, Any],
                steps: int, deps: dict[str, str] | None = None) -> Cell:
    """A cell that runs ``python SCRIPT *options`` (a benchmark that is not a ``difftori`` CLI command).

    ``config`` is what the run computes (the id hashes it with the script's file name and ``deps``, not the
    script's absolute path, so a checkout elsewhere maps to the same ids). The runner appends ``--run-root DIR
    --num-threads N --device DEV`` and, per dependency role, ``--<role> PATH`` (the dependency's run directory,
    a collect cell's dataset; ``deps={"checkpoint": train_cell.id}`` gives ``--checkpoint RUN_DIR``). The script
    must print ``run directory: PATH`` (a folder under the run root holding ``config.json`` and ``final.json``,
    optionally ``train.csv`` / ``eval.csv``) and exit 0 when done.
    Script cells do not resume: an unfinished attempt is discarded and the cell starts over.
    """
    path = Path(script).resolve()
    if not path.is_file():
        raise ConfigError(f"script cell: {path} is not a file")
    options = _str_options(options)
    _check_owned(options, RUNNER_OPTIONS)
    config = {"script": path.name, **config}
    deps = dict(deps or {})
    _check_owned(options, tuple(f"--{role.replace('_', '-')}" for role in deps))
    return Cell(area="script", task=task, variant=variant, seed=seed, options=[str(path), *options], config=config,
                steps=int(steps), deps=deps, id=_cell_id(task, None, variant, seed, config_hash(config, deps)))


def _variant_name(method: str, options: list[str]) -> str:
    label = options[options.index("--label") + 1] if "--label" in options[:-1] else None
    return f"{method}-{label}" if label else method


def rl_grid(tasks, agents, seeds, steps: int, preset: str | None = None, options: list[Any] = ()) -> list[Cell]:
    """Tasks x agents x seeds of ``difftori rl train`` with the same extra ``options`` everywhere."""
    extra = _str_options(options)
    if "--agent" in extra or "--steps" in extra:
        raise ConfigError("give agents and steps as the grid's --agents / --steps")
    common = ["--steps", str(steps), *(["--preset", preset] if preset else []), *extra]
    return [rl_cell(t, _variant_name(a, extra), s, ["--agent", a, *common]) for t in tasks for a in agents for s in seeds]


def il_grid(tasks, policies, obs_types, seeds, steps: int, demos: int = 10, preset: str | None = None, options: list[Any] = (),
            policy_steps: dict[str, int] | None = None, collect_options: list[Any] = ()) -> list[Cell]:
    """Demo collection per task and obs type, then tasks x policies x obs types x seeds of ``difftori il train``.

    A difftori cell depends on the diffusion cell of the same task, obs type and seed (its base
    policy) and every training cell on its collect cell; ``policy_steps`` overrides ``steps`` per policy.
    """
    extra = _str_options(options)
    if "--policy" in extra or "--steps" in extra:
        raise ConfigError("give policies and steps as the grid's --policies / --steps")
    unknown = sorted(set(policy_steps or {}) - set(policies))
    if unknown:
        raise ConfigError(f"steps given for policies not in the grid: {unknown}")
    variants = {_variant_name(p, extra): ["--policy", p, "--steps", str((policy_steps or {}).get(p, steps)),
                                          *(["--preset", preset] if preset else []), *extra] for p in policies}
    cells: list[Cell] = []
    for t in tasks:
        for o in obs_types:
            data = collect_cell(t, o, demos, collect_options)
            cells.append(data)
            for s in seeds:
                cells.extend(il_seed_cells(data, s, variants))
    return cells


def il_seed_cells(dataset: Cell, seed: int, variants: dict[str, list[str]]) -> list[Cell]:
    """The ``il train`` cells of one collect cell and seed, one per variant (name -> options, with ``--policy``),
    in the order given; the diffusion cell is built first and every difftori cell starts from it."""
    def is_diffusion(name: str) -> bool:
        opts = variants[name]
        return opts[opts.index("--policy") + 1] == "diffusion"

    made: dict[str, Cell] = {}
    base: Cell | None = None
    for name in sorted(variants, key=lambda v: not is_diffusion(v)):  # the base before the runs that need it
        made[name] = il_cell(dataset.task, name, seed, dataset.obs_type, variants[name], dataset, base=base)
        if base is None and is_diffusion(name):
            base = made[name]
    return [made[v] for v in variants]
