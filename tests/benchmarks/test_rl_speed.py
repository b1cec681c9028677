"""Smoke test of benchmarks/rl_speed.py: a quick run at the small sizes writes every part for both precisions."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import rl_speed as bench  # noqa: E402
from difftori.utils.config import ConfigError  # noqa: E402


def test_quick_small_run_writes_every_part(tmp_path, capsys):
    assert bench.main(["--quick", "--sizes", "small", "--repeats", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "rl_speed.json").read_text())
    assert data["meta"]["quick"] and data["meta"]["threads"] == 1
    got = [(r["agent"], r["part"]) for r in data["rows"]]
    assert got == [(a, p) for a, parts in bench.PARTS.items() for p in parts]
    for r in data["rows"]:
        assert r["sizes"] == "small"
        for p in bench.PRECISIONS:
            assert r[f"{p}_ms"] > 0 and math.isfinite(r[f"{p}_ms"]), (r["part"], p)
            assert len(r["times_ms"][p]) == 1
        assert r["ratio"] == pytest.approx(r["bf16_ms"] / r["fp32_ms"])
        if r["part"] in bench.SOLVE_PARTS:  # the solves run in fp32 in both precisions: same iterations
            assert r["solver_iters"]["fp32"] == r["solver_iters"]["bf16"] >= 1
    assert {r["batch"] for r in data["rows"] if r["part"] == "update"} == {bench.SMALL_SIZES["batch_size"]}
    grad_rows = data["return_grad_rows"]
    assert [r["part"] for r in grad_rows] == list(bench.SOLVE_PARTS)
    for r in grad_rows:
        assert set(r["ms"]) == set(bench.QUICK.return_grads) and all(v > 0 for v in r["ms"].values())
        assert r["speedup"]["autograd"] == pytest.approx(1.0)
    step_rows = data["step_rows"]
    assert [r["agent"] for r in step_rows] == list(bench.STEP_SETTINGS)
    for r in step_rows:
        names = {"today", "fast", "trained"} if r["agent"] == "difftori" else {"today", "fast"}
        assert set(r["ms"]) == names and all(v > 0 and math.isfinite(v) for v in r["ms"].values())
        assert r["speedup"] == pytest.approx(r["ms"]["today"] / r["ms"]["fast"])
    dt = step_rows[1]
    assert dt["settings"]["fast"]["return_grad"] == "manual" and dt["settings"]["today"]["plateau_window"] == 0
    assert dt["solver_iters"]["today"] >= 1 and dt["solver_iters"]["fast"] >= 1
    # the trained-iterations step: the fast settings with the solve capped at trained_iters
    assert dt["settings"]["trained"] == {**dt["settings"]["fast"], "max_iters": bench.QUICK.trained_iters}
    assert 1 <= dt["solver_iters"]["trained"] <= bench.QUICK.trained_iters
    assert dt["speedup_trained"] == pytest.approx(dt["ms"]["today"] / dt["ms"]["trained"])
    assert step_rows[0]["speedup_trained"] is None
    md = (tmp_path / "rl_speed.md").read_text()
    assert md.count("| small |") == len(data["rows"]) + len(grad_rows) + len(step_rows) and "bf16/fp32" in md and "manual speedup" in md
    assert md in capsys.readouterr().out


def test_config_validation_and_quick_preset():
    with pytest.raises(ConfigError, match="sizes"):
        bench.SpeedConfig(sizes=("huge",))
    with pytest.raises(ConfigError, match="threads"):
        bench.SpeedConfig(threads=0)
    with pytest.raises(ConfigError, match="trained_iters"):
        bench.SpeedConfig(trained_iters=-1)
    quick = bench.parse_config(["--quick", "--repeats", "3"])
    assert quick.quick and quick.repeats == 3 and quick.warmup == bench.QUICK.warmup
    assert "bench_quick" in quick.out and "bench_quick" not in bench.SpeedConfig().out  # never over the committed results
    assert bench.parse_config([]).sizes == ("paper",) and bench.parse_config(["--sizes", "paper", "small"]).sizes == ("paper", "small")
