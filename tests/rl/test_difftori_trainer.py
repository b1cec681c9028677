"""DiffTORI through the normal trainer and CLI: a tiny run in both policy-gradient modes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest


@pytest.mark.parametrize("pg_mode", ["episode", "replay"])
def test_trainer_smoke(tmp_path, pg_mode):
    from difftori.cli import main

    argv = [
        "rl", "train", "--agent", "difftori", "--task", "cartpole-swingup", "--steps", "320",
        "--episode-length", "80", "--seed-steps", "10", "--difftori.pg-start-step", "15",
        "--difftori.pg-mode", pg_mode, "--difftori.max-iters", "10", "--difftori.pg-batch", "4",
        "--latent-dim", "8", "--mlp-dim", "32", "--enc-dim", "32", "--batch-size", "16", "--horizon", "3",
        "--num-samples", "16", "--num-elites", "4", "--iterations", "2", "--updates-per-step", "0.5",
        "--eval-freq", "160", "--eval-episodes", "1", "--device", "cpu", "--run-root", str(tmp_path),
        "--progress", "false", "--num-threads", "1",
    ]
    assert main(argv) == 0
    (final,) = list(tmp_path.rglob("final.json"))
    res = json.loads(final.read_text())
    assert res["step"] >= 320 and math.isfinite(res["episode_return"])
    rows = list(csv.DictReader((final.parent / "train.csv").open()))
    late = [r for r in rows if int(float(r["agent_step"])) > 15]
    assert late, "no episode ran after pg_start_step"
    for key in ("pg_grad_norm", "pg_loss", "solver_iters", "solver_converged", "value_s_loss"):
        vals = [float(r[key]) for r in late if r.get(key) not in (None, "")]
        assert vals and all(math.isfinite(v) for v in vals), key
    assert all(float(r["pg_stepped"]) > 0 for r in late)
    assert all(float(r["pg_skipped_total"]) == 0 for r in late)
    assert Path(final.parent / "checkpoints" / "last.pt").exists()
    if pg_mode == "episode":  # resume from the checkpoint (PG optimizer state included) and extend the run
        assert main(["rl", "train", "--resume", str(final.parent), "--steps", "400", "--progress", "false"]) == 0
        res = json.loads(final.read_text())
        assert res["step"] >= 400 and math.isfinite(res["episode_return"])
