"""Environments by task name: DeepMind Control (RL), MetaWorld, robosuite and ManiSkill3 (IL), as ``gymnasium.Env``.

``make_env(task, **options)`` resolves the name in each suite's registry (optionally
prefixed ``dmc:``, ``metaworld:``, ``robosuite:`` or ``maniskill:``) and returns an env whose ``task_spec`` attribute is an
:class:`EnvSpec`. Suites are imported lazily so a missing optional dependency only matters
when that suite is used, and then the error carries the install hint. Importing this package
picks a headless MuJoCo GL backend when ``MUJOCO_GL`` is unset (see :mod:`difftori.utils.gl`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from difftori.envs.spec import EnvSpec
from difftori.utils.gl import configure_gl

configure_gl()

__all__ = ["EnvSpec", "make_env", "known_tasks", "suite_of", "require_suite", "obs_revision", "suite_imports", "UnknownTaskError",
           "MissingDependencyError"]


class UnknownTaskError(ValueError):
    """The task name is in no registry; the message lists the known ones."""


class MissingDependencyError(ImportError):
    """An optional dependency is missing; the message gives the install hint."""


@contextmanager
def suite_imports(suite: str, needs: str, hint: str, mujoco: bool = True) -> Iterator[None]:
    """Around a suite's lazy imports: an ``ImportError`` becomes :class:`MissingDependencyError` ("``suite`` tasks
    need ``needs`` (why); install with: ``hint``"); with ``mujoco``, an error of MuJoCo loading its GL backend
    becomes the render error that names the backend and how to pick another."""
    try:
        yield
    except ImportError as exc:
        raise MissingDependencyError(f"{suite} tasks need {needs} ({exc}); install with: {hint}") from None
    except (AttributeError, RuntimeError, OSError) as exc:
        if not mujoco:
            raise
        from difftori.utils.gl import render_error

        raise render_error(exc) from None


def _suites():
    from difftori.envs import dmc, maniskill, metaworld, robosuite

    return {"dmc": dmc, "metaworld": metaworld, "robosuite": robosuite, "maniskill": maniskill}


def known_tasks() -> dict[str, list[str]]:
    """``{suite: [task, ...]}`` of every task name ``make_env`` accepts."""
    return {name: list(mod.TASKS) for name, mod in _suites().items()}


def suite_of(task: str, suites: tuple[str, ...] | None = None):
    """``(suite module, canonical task name)`` for ``task`` (optionally ``suite:``-prefixed), or None if unknown.

    ``suites`` restricts the search (e.g. to the IL suites); a prefix outside it is unknown too.
    """
    mods = _suites()
    prefix, _, name = task.rpartition(":")
    for s in [prefix] if prefix else list(mods):
        if s in mods and (suites is None or s in suites) and mods[s].canonical(name) is not None:
            return mods[s], mods[s].canonical(name)
    return None


def obs_revision(task: str) -> int:
    """Revision of ``task``'s observation layout (1 unless its suite's ``OBS_REVISIONS`` bumped it). Demos record
    it; loading demos of another revision is an error (re-collect), and it is part of a collect cell's id."""
    found = suite_of(task)
    if found is None:
        return 1
    return int(getattr(found[0], "OBS_REVISIONS", {}).get(found[1], 1))


def require_suite(task: str) -> None:
    """Import ``task``'s simulator without building an env: :class:`UnknownTaskError` for an unknown name,
    :class:`MissingDependencyError` (with the install hint) where this Python lacks the suite (e.g. ManiSkill outside
    its own venv). For tools that start many runs: fail once, up front, not in every run."""
    found = suite_of(task)
    if found is None:
        make_env(task)  # raises UnknownTaskError listing the known tasks
    found[0].require()


def make_env(task: str, **options):
    """Create the env for ``task`` with the suite's preset defaults, overridden by ``options``."""
    suites = _suites()
    suite_name, _, name = task.rpartition(":")
    candidates = [suite_name] if suite_name else list(suites)
    for s in candidates:
        if s not in suites:
            raise UnknownTaskError(f"unknown suite prefix {s!r}; use one of {sorted(suites)}")
        if suites[s].canonical(name) is not None:
            return suites[s].make(suites[s].canonical(name), **options)
    lines = "\n".join(f"  {s}: {', '.join(sorted(suites[s].TASKS))}" for s in candidates)
    raise UnknownTaskError(f"unknown task {task!r}. Known tasks:\n{lines}")
