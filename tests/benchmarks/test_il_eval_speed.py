"""Smoke test of benchmarks/il_eval_speed.py: a tiny bc run evaluated with 1 and 2 envs side by side."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import il_eval_speed as bench  # noqa: E402
from difftori.cli import main as cli  # noqa: E402
from difftori.utils.config import ConfigError  # noqa: E402


def test_quick_run_times_every_envs_value(tmp_path):
    from difftori.data.dataset import DemoData, save_demos

    rng = np.random.default_rng(0)
    data = DemoData(
        obs={"state": rng.uniform(-1, 1, (40, 9)).astype(np.float32), "full_state": rng.uniform(-1, 1, (40, 39)).astype(np.float32)},
        action=rng.uniform(-1, 1, (40, 4)).astype(np.float32), episode_ends=np.array([20, 40]),
        attrs={"task": "reach", "obs_type": "state", "env_options": {}},
    )
    ds = save_demos(tmp_path / "reach.zarr", data)
    assert cli(["il", "train", "--task", "reach", "--obs-type", "state", "--policy", "bc", "--dataset", str(ds), "--steps", "2",
                "--batch-size", "8", "--eval-episodes", "0", "--run-root", str(tmp_path / "runs"), "--device", "cpu",
                "--progress", "false"]) == 0
    run = next((tmp_path / "runs" / "reach" / "bc" / "seed1").iterdir())
    out = tmp_path / "out"
    assert bench.main(["--quick", "--runs", str(run), "--envs", "1", "2", "--episodes", "3", "--max-steps", "6", "--out", str(out)]) == 0
    res = json.loads((out / "il_eval_speed.json").read_text())
    (row,) = res["rows"]
    assert (row["task"], row["policy"]) == ("reach", "bc") and set(row["by_envs"]) == {"1", "2"}
    for r in row["by_envs"].values():
        assert r["s_per_episode"] > 0 and r["mean_length"] == 6
    # bc is deterministic: the same episodes either way
    assert row["by_envs"]["1"]["success_rate"] == row["by_envs"]["2"]["success_rate"]
    assert "speed-up 2 vs 1" in (out / "il_eval_speed.md").read_text()


def test_needs_runs_and_valid_envs(tmp_path):
    with pytest.raises(ConfigError, match="runs: pass at least one"):
        bench.main(["--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="envs must be >= 1"):
        bench.main(["--runs", "x", "--envs", "0", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
