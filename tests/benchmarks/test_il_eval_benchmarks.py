"""Smoke tests of the IL evaluation benchmarks on tiny runs: il_eval_speed.py (1 vs 2 envs side by side),
il_select.py (draw 0 vs the lowest-cost draw), il_demo_mse.py (action error on demo windows) and il_final_eval.py
(il_compare's closing evaluation of one run)."""

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
from benchmarks import il_select  # noqa: E402
from difftori.cli import main as cli  # noqa: E402
from difftori.utils.config import ConfigError  # noqa: E402


def _train(tmp_path: Path, policy: str, *extra: str) -> Path:
    """A 2-step run of ``policy`` on a tiny synthetic 'reach' dataset; returns its run directory."""
    from difftori.data.dataset import DemoData, save_demos

    ds = tmp_path / "reach.zarr"
    if not ds.exists():
        rng = np.random.default_rng(0)
        data = DemoData(
            obs={"state": rng.uniform(-1, 1, (40, 9)).astype(np.float32), "full_state": rng.uniform(-1, 1, (40, 39)).astype(np.float32)},
            action=rng.uniform(-1, 1, (40, 4)).astype(np.float32), episode_ends=np.array([20, 40]),
            attrs={"task": "reach", "obs_type": "state", "env_options": {}},
        )
        save_demos(ds, data)
    assert cli(["il", "train", "--task", "reach", "--obs-type", "state", "--policy", policy, "--dataset", str(ds), "--steps", "2",
                "--batch-size", "8", "--eval-episodes", "0", "--run-root", str(tmp_path / "runs"), "--device", "cpu",
                "--progress", "false", *extra]) == 0
    return next((tmp_path / "runs" / "reach" / policy / "seed1").iterdir())


def test_quick_run_times_every_envs_value(tmp_path):
    run = _train(tmp_path, "bc")
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


def test_select_compares_first_and_lowest_cost_draws_of_the_same_checkpoint(tmp_path):
    base = _train(tmp_path, "diffusion", "--diffusion.down-dims", "16", "32", "--diffusion.step-embed-dim", "16")
    run = _train(tmp_path, "difftori", "--base-policy", str(base), "--difftori.solver.max-iters", "3",
                 "--difftori.inference-samples", "4")
    out = tmp_path / "sel"
    assert il_select.main(["--runs", str(run), "--episodes", "2", "--envs", "2", "--max-steps", "8", "--out", str(out)]) == 0
    (row,) = [line.split(",") for line in (out / "il_select.csv").read_text().splitlines()[1:]]
    assert row[0] == "reach" and row[3] == "1" and row[4] == "101000" and row[5] == "4"
    assert all(0.0 <= float(x) <= 1.0 for x in row[6:8])
    assert "paired difference" in (out / "il_select.md").read_text()
    with pytest.raises(ConfigError, match="runs: pass at least one"):
        il_select.main(["--out", str(tmp_path / "none")])


def test_il_base_pool_benchmark_times_both_ways_and_checks_their_draws(tmp_path):
    from benchmarks import il_base_pool

    assert il_base_pool.main(["--quick", "--windows", "2", "--repeats", "1", "--obs-types", "state", "pointcloud",
                              "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "il_base_pool.json").read_text())
    rows = {r["obs_type"]: r for r in res["rows"]}
    assert set(rows) == {"state", "pointcloud"} and rows["pointcloud"]["precision"] == "bf16"
    assert all(r["per_draw_s"] > 0 and r["once_s"] > 0 and r["max_abs_diff"] < 1e-5 for r in rows.values())
    assert "encoded once" in (tmp_path / "il_base_pool.md").read_text()
    with pytest.raises(ConfigError, match="draws"):
        il_base_pool.PoolConfig(draws=1)


def test_il_demo_mse_reads_a_grid_measures_checkpoints_and_resumes(tmp_path, monkeypatch):
    import shutil

    from benchmarks import il_demo_mse

    grid, root = tmp_path / "grid", tmp_path / "sweep"
    diffusion = _train(tmp_path, "diffusion")
    difftori = _train(tmp_path, "difftori", "--base-policy", str(diffusion), "--difftori.solver.max-iters", "2")
    rows = []
    for variant, run in (("diffusion", diffusion), ("difftori", difftori)):
        shutil.copytree(run, root / "cells" / f"reach-state-{variant}-seed1-x" / "run" / "reach" / variant / "seed1" / run.name)
        rows.append(f"reach,state,{variant},1,done,0.5,reach-state-{variant}-seed1-x")
    rows.append("reach,state,bc,1,running,,reach-state-bc-seed1-x")  # unfinished: not measured
    grid.mkdir()
    (grid / "il_compare.csv").write_text("task,modality,variant,seed,status,final,cell\n" + "\n".join(rows) + "\n")
    cfg = il_demo_mse.DemoMSEConfig(grid=str(grid), run_root=str(root))
    got = {r["variant"]: r for r in il_demo_mse.run(cfg)}
    assert set(got) == {"diffusion", "difftori"} and {r["source"] for r in got.values()} == {"checkpoint"}
    assert got["difftori"]["base_demo_mse"] == got["diffusion"]["demo_mse"] > 0  # the base is the diffusion run
    md = il_demo_mse.markdown(list(got.values()), cfg, finished=2)
    assert "`difftori` / its base: ratio" in md and "max |difference| 0.00e+00 over 1 pairs" in md

    def no_measure(*args):
        raise AssertionError("a measured run is not measured again")

    monkeypatch.setattr(il_demo_mse, "_measure", no_measure)
    again = {r["variant"]: r for r in il_demo_mse.run(cfg)}  # resumes from il_demo_mse.csv
    assert float(again["difftori"]["demo_mse"]) == pytest.approx(got["difftori"]["demo_mse"])
    with pytest.raises(AssertionError, match="measured again"):
        il_demo_mse.run(il_demo_mse.DemoMSEConfig(grid=str(grid), run_root=str(root), fresh=True))


def test_il_demo_mse_reads_archived_runs_logs_and_skips_runs_with_neither_log_nor_checkpoint(tmp_path):
    from benchmarks import il_demo_mse

    grid, root = tmp_path / "grid", tmp_path / "sweep"
    logged = grid / "cells" / "reach-state-bc-seed1-a" / "run" / "reach" / "bc" / "seed1" / "t0"
    old = grid / "cells" / "reach-state-ibc-seed1-b" / "run" / "reach" / "ibc" / "seed1" / "t0"
    for d, head, row in ((logged, "step,success,demo_mse", "100,0.5,0.0125"), (old, "step,success", "100,0.1")):
        d.mkdir(parents=True)
        (d / "eval.csv").write_text(f"{head}\n{row}\n")
    (grid / "il_compare.csv").write_text("task,modality,variant,seed,status,final,cell\n"
                                         "reach,state,bc,1,done,0.5,reach-state-bc-seed1-a\n"
                                         "reach,state,ibc,1,done,0.1,reach-state-ibc-seed1-b\n")
    said = []
    got = il_demo_mse.run(il_demo_mse.DemoMSEConfig(grid=str(grid), run_root=str(root)), progress=said.append)
    assert [(r["variant"], r["demo_mse"], r["source"]) for r in got] == [("bc", 0.0125, "eval.csv")]
    assert any("reach-state-ibc-seed1-b" in m and "no checkpoint" in m for m in said)
    assert "1 of the grid's 2 finished runs have it" in il_demo_mse.markdown(got, il_demo_mse.DemoMSEConfig(
        grid=str(grid), run_root=str(root)), finished=2)


def test_il_final_eval_evaluates_a_finished_run_reproducibly_and_refuses_an_unfinished_one(tmp_path, capsys):
    import json

    import torch

    from benchmarks import il_final_eval

    run = _train(tmp_path, "diffusion")
    args = ["--checkpoint", str(run), "--episodes", "2", "--seed", "201000", "--envs", "2"]
    assert il_final_eval.main([*args, "--run-root", str(tmp_path / "a")]) == 0
    assert f"run directory: {tmp_path / 'a' / 'final_eval'}" in capsys.readouterr().out
    res = json.loads((tmp_path / "a" / "final_eval" / "final.json").read_text())
    assert (res["task"], res["policy"], res["step"], res["episodes"], res["first_env_seed"]) == ("reach", "diffusion", 2, 2, 201000)
    assert 0 <= res["success_rate"] <= 1 and len(res["successes"]) == 2
    assert il_final_eval.main([*args, "--run-root", str(tmp_path / "b")]) == 0  # seeded: the same episodes again
    again = json.loads((tmp_path / "b" / "final_eval" / "final.json").read_text())
    assert (again["successes"], again["mean_return"]) == (res["successes"], res["mean_return"])
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    ckpt["step"] = 1  # as a run interrupted before its last step
    torch.save(ckpt, tmp_path / "early.pt")
    with pytest.raises(SystemExit) as exc:
        il_final_eval.main(["--checkpoint", str(tmp_path / "early.pt"), "--run-root", str(tmp_path / "c")])
    assert exc.value.code == 2 and "at step 1 of 2: not a finished run" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
