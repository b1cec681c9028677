"""Typed configs: docstrings become --help, overrides parse, validation errors name the field."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from difftori.utils.config import (
    ConfigError,
    add_dataclass_args,
    check,
    dataclass_from_args,
    field_docs,
    from_dict,
    load_config,
    save_config,
    to_dict,
)


@dataclass
class Inner:
    method: Literal["newton", "lm"] = "newton"
    """Which solver to use."""
    iters: int = 5
    """Solver iterations."""

    def __post_init__(self):
        check(self.iters > 0, f"iters must be positive, got {self.iters}")


@dataclass
class Outer:
    task: str = "cartpole-swingup"
    """Task name."""
    lr: float = 1e-3
    """Learning rate (5% warm-up)."""
    video: bool = False
    """Record videos."""
    bounds: tuple[float, float] = (-1.0, 1.0)
    """Action box."""
    seed: Optional[int] = None
    """Seed (None: random)."""
    solver: Inner = field(default_factory=Inner)
    """Solver section."""


def _parse(argv):
    p = argparse.ArgumentParser()
    add_dataclass_args(p, Outer)
    return p, p.parse_args(argv)


def test_docstrings_become_help():
    p, _ = _parse([])
    text = p.format_help()
    assert "Learning rate (5% warm-up)." in text and "Which solver to use." in text
    assert field_docs(Outer)["video"] == "Record videos."


def test_overrides_and_defaults():
    _, ns = _parse(["--lr", "0.1", "--solver.method", "lm", "--video", "--bounds", "-2", "2", "--seed", "3"])
    cfg = dataclass_from_args(Outer, ns)
    assert cfg == Outer(lr=0.1, video=True, bounds=(-2.0, 2.0), seed=3, solver=Inner(method="lm"))
    _, ns = _parse(["--video", "false"])
    assert dataclass_from_args(Outer, ns) == Outer()


def test_base_config_kept_for_unset_fields():
    _, ns = _parse(["--solver.iters", "7"])
    cfg = dataclass_from_args(Outer, ns, base=Outer(lr=0.5))
    assert cfg.lr == 0.5 and cfg.solver.iters == 7


def test_bad_values_are_clear_errors():
    with pytest.raises(SystemExit):
        _parse(["--solver.method", "bogus"])
    _, ns = _parse(["--solver.iters", "0"])
    with pytest.raises(ConfigError, match="iters must be positive"):
        dataclass_from_args(Outer, ns)
    with pytest.raises(ConfigError, match="unknown field"):
        from_dict(Outer, {"nope": 1})


def test_json_round_trip(tmp_path):
    cfg = Outer(lr=0.2, solver=Inner(iters=9))
    save_config(cfg, tmp_path / "c.json")
    assert load_config(Outer, tmp_path / "c.json") == cfg
    assert to_dict(cfg)["solver"]["iters"] == 9
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(Outer, tmp_path / "bad.json")


@dataclass
class Run:
    steps: int = 10
    """Budget."""
    seed: int = 1
    """Seed."""
    progress: bool = True
    """Progress."""
    solver: Inner = field(default_factory=Inner)
    """Solver section."""


def test_resume_config_only_extends_steps_and_runtime_fields():
    from difftori.utils.config import resume_config

    p = argparse.ArgumentParser()
    add_dataclass_args(p, Run)
    saved = Run(steps=10, seed=3)
    cfg = resume_config(Run, saved, p.parse_args(["--steps", "20", "--progress", "false", "--seed", "3"]))
    assert (cfg.steps, cfg.seed, cfg.progress) == (20, 3, False)  # an option equal to the saved value is fine
    with pytest.raises(ConfigError, match=r"cannot change \['seed', 'solver.method'\].*seed: 3 -> 4"):
        resume_config(Run, saved, p.parse_args(["--seed", "4", "--solver.method", "lm"]))
    with pytest.raises(ConfigError, match="can only be extended"):
        resume_config(Run, saved, p.parse_args(["--steps", "5"]))


def test_key_values_parse_once_and_name_a_bad_entry():
    from difftori.utils.config import key_values

    def positive(key: str, value: str) -> int:
        if int(value) < 1:
            raise ValueError(f"{key} needs >= 1")
        return int(value)

    assert key_values(["a=1", "b=2", "a=3"], "entries are K=N", positive) == {"a": 3, "b": 2}
    assert key_values([], "entries are K=N", positive) == {}
    for bad, reason in (("a", "got 'a'$"), ("a=x", "got 'a=x'"), ("a=0", "got 'a=0': a needs >= 1")):
        with pytest.raises(ConfigError, match=f"^entries are K=N, {reason}"):
            key_values([bad], "entries are K=N", positive)
