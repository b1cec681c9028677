"""benchmarks/rl_compare.py on the sweep runner: config checks, run options, cell ids, adoption of runs of the
earlier layout, and a tiny end-to-end comparison (a local Ray cluster) whose second invocation re-runs nothing."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import rl_compare as bench  # noqa: E402
from difftori.sweep.runner import cell_dir, read_state  # noqa: E402
from difftori.utils.config import ConfigError  # noqa: E402

TINY = ("--latent-dim 8 --mlp-dim 32 --enc-dim 32 --batch-size 16 --horizon 3 --num-samples 16 --num-elites 4 "
        "--iterations 2 --updates-per-step 0.25 --difftori.max-iters 8 --difftori.pg-batch 4")


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown variant"):
        bench.CompareConfig(variants=("tdmpc", "mppi"))
    with pytest.raises(ConfigError, match="unknown DMC task"):
        bench.CompareConfig(tasks=("cartpole-swingup", "no-such-task"))
    assert bench.CompareConfig(tasks=("cartpole_swingup",)).tasks == ("cartpole-swingup",)
    with pytest.raises(ConfigError, match="--no-such-option"):
        bench.cells(bench.CompareConfig(extra="--no-such-option 1"))


def test_run_args_scale_schedules_and_select_variant():
    cfg = bench.CompareConfig(steps=8000, extra="--difftori.max-iters 7")
    args = bench.run_args(cfg, "cartpole-swingup", "difftori-replay", 3)
    opts = dict(zip(args[2::2], args[3::2]))
    assert args[:2] == ["rl", "train"] and "--run-root" not in opts and "--num-threads" not in opts
    # 8000 env steps / action repeat 8 = 1000 agent steps: seed 10%, DiffTORI start 15%, schedules 50%.
    assert opts["--seed-steps"] == "100" and opts["--difftori.pg-start-step"] == "150" and opts["--schedule-steps"] == "500"
    assert opts["--agent"] == "difftori" and opts["--difftori.pg-mode"] == "replay" and opts["--label"] == "replay"
    assert opts["--seed"] == "3" and opts["--difftori.max-iters"] == "7"
    paper = bench.run_args(bench.CompareConfig(preset="paper"), "cartpole-swingup", "tdmpc", 1)
    assert "--seed-steps" not in paper and "--mlp-dim" not in paper and "--agent" in paper


def test_cells_follow_the_options():
    cfg = bench.CompareConfig(tasks=("cartpole-swingup",), seeds=(1, 2), variants=("tdmpc", "difftori-nopg"), steps=100)
    grid = bench.cells(cfg)
    assert [(c.variant, c.seed) for c in grid] == [("tdmpc", 1), ("difftori-nopg", 1), ("tdmpc", 2), ("difftori-nopg", 2)]
    assert grid[1].config["difftori"]["pg_lr"] == 1e-12 and grid[1].config["label"] == "nopg"
    same = bench.cells(bench.CompareConfig(**{**cfg.__dict__, "jobs": 1, "threads": 2}))  # how it runs, not what
    other = bench.cells(bench.CompareConfig(**{**cfg.__dict__, "extra": "--difftori.init pi"}))
    assert [c.id for c in same] == [c.id for c in grid]
    assert grid[1].id != other[1].id  # changed options: a new cell (never the stale run)
    capped = bench.cells(bench.CompareConfig(**{**cfg.__dict__, "max_seeds": ("difftori-nopg=1",)}))
    assert [(c.variant, c.seed) for c in capped] == [("tdmpc", 1), ("difftori-nopg", 1), ("tdmpc", 2)]
    assert [c.id for c in capped] == [grid[0].id, grid[1].id, grid[2].id]  # the same cells, fewer of them
    for bad in ("difftori-nopg=0", "difftori-replay=1", "difftori-nopg"):
        with pytest.raises(ConfigError, match="max_seeds"):
            bench.CompareConfig(**{**cfg.__dict__, "max_seeds": (bad,)})


def test_runs_of_the_earlier_layout_are_adopted(tmp_path):
    cfg = bench.CompareConfig(tasks=("cartpole-swingup",), seeds=(1,), variants=("difftori-episode",), steps=100, run_root=tmp_path)
    cell = bench.cells(cfg)[0]
    legacy = tmp_path / "difftori-episode" / "cartpole-swingup" / "seed1"
    done = legacy / "cartpole-swingup" / "difftori" / "seed1" / "20260101-000000"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    (done / "final.json").write_text(json.dumps({"step": 100}))
    (legacy / "args.json").write_text(json.dumps(bench._options(cfg, "cartpole-swingup", "difftori-episode", 1, {"num_threads": 2})))
    assert not bench._adopt_legacy(cfg, cell)  # recorded with other options: never reused
    old_args = bench._options(cfg, "cartpole-swingup", "difftori-episode", 1,
                              {"num_threads": cfg.threads, "run_root": str(legacy), "progress": "false"})
    (legacy / "args.json").write_text(json.dumps(old_args))
    assert bench._adopt_legacy(cfg, cell)
    state = read_state(tmp_path, cell.id)
    assert state["status"] == "done" and (cell_dir(tmp_path, cell.id) / state["run_dir"]).resolve() == done.resolve()


def test_tiny_comparison_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = bench.CompareConfig(
        tasks=("cartpole-swingup",), seeds=(1,), variants=("tdmpc", "difftori-episode"), steps=160, episode_length=80,
        eval_freq=160, eval_episodes=1, jobs=2, run_root=tmp_path / "runs", out_dir=out, random_episodes=1, extra=TINY,
        return_grad="manual",  # the grid's default (compiled) would spend most of this tiny run compiling
        final_eval_episodes=2, final_eval_seed=555,
    )
    res = bench.run(cfg)
    assert json.loads(next((cfg.run_root / "cells").glob("*difftori-episode-seed*/cell.json")).read_text())["config"]["difftori"]["return_grad"] == "manual"
    assert [(r["variant"], r["flags"]) for r in res["runs"]] == [("tdmpc", []), ("difftori-episode", [])]
    rows = list(csv.DictReader((out / "rl_compare.csv").open()))
    assert {r["variant"] for r in rows} == {"tdmpc", "difftori-episode"} and all(int(r["step"]) == 160 for r in rows)
    assert (out / "rl_compare.png").stat().st_size > 0 and (cfg.run_root / "summary.md").exists()
    table = (out / "rl_compare.md").read_text()
    assert "| cartpole-swingup | difftori-episode |" in table and "not in the paper" in table
    for r in res["runs"]:
        assert r["ms_per_env_step"] > 0 and r["final_step"] >= 160
        assert r["explore_std"] >= 0.05 - 1e-6  # the noise actually added (never below the schedule's floor)
    assert "| explore std |" in table
    assert json.loads((out / "rl_compare.json").read_text())["runs"][0]["task"] == "cartpole-swingup"
    # The closing evaluation: both final checkpoints on the same two fixed seeds, a column and a paired table.
    fe = list(csv.DictReader((out / "rl_compare_final_eval.csv").open()))
    assert [(r["variant"], r["step"], r["episodes"], r["first_env_seed"]) for r in fe] == [
        ("tdmpc", "160", "2", "555"), ("difftori-episode", "160", "2", "555")]
    for r in res["runs"]:
        assert len(r["final_eval_returns"]) == 2 and r["final_eval_return"] == pytest.approx(sum(r["final_eval_returns"]) / 2)
    assert "final model, 2 episodes on fixed seeds" in table and "the final model on 2 fixed episodes" in table
    evals = [bench.final_eval_cell(cfg, c) for c in bench.cells(cfg)]
    assert [read_state(cfg.run_root, e.id)["status"] for e in evals] == ["done", "done"]
    assert all((out / "cells" / e.id / "result.json").exists() for e in evals)  # archived like the runs
    # A second invocation (through main) reuses the finished cells: nothing runs again.
    every = [*bench.cells(cfg), *evals]
    stamp = [(cell_dir(cfg.run_root, c.id) / "result.json").stat().st_mtime_ns for c in every]
    argv = ["--tasks", "cartpole-swingup", "--seeds", "1", "--variants", "tdmpc", "difftori-episode", "--steps", "160",
            "--episode-length", "80", "--eval-freq", "160", "--eval-episodes", "1", "--run-root", str(cfg.run_root),
            "--out-dir", str(out), "--random-episodes", "0", "--extra", TINY, "--final-eval-episodes", "2",
            "--final-eval-seed", "555"]
    assert bench.main(argv) == 0
    assert [(cell_dir(cfg.run_root, c.id) / "result.json").stat().st_mtime_ns for c in every] == stamp
    # A subset call (one variant) leaves the larger grid's tables as they are and prints its own; --replace-tables writes.
    capsys.readouterr()
    tables = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    subset = argv[:argv.index("--variants") + 1] + ["tdmpc"] + argv[argv.index("--variants") + 3:] + ["--report-only"]
    assert bench.main(subset) == 0
    printed = capsys.readouterr()
    assert "holds 1 runs outside this call's grid" in printed.err and "| cartpole-swingup | tdmpc |" in printed.out
    assert "| cartpole-swingup | difftori-episode |" not in printed.out
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == tables
    assert bench.main(subset + ["--replace-tables"]) == 0
    assert bench.tabled_cells(out) == {bench.cells(cfg)[0].id}
    assert "| cartpole-swingup | difftori-episode |" not in (out / "rl_compare.md").read_text()


def test_final_eval_cells_depend_on_their_run_and_refuse_unfinished_runs(tmp_path):
    cfg = bench.CompareConfig(tasks=("cartpole-swingup",), seeds=(1,), variants=("tdmpc", "difftori-episode"), steps=100)
    grid = bench.cells(cfg)
    pairs = bench.sweep_cells(cfg, grid)
    assert [ev.deps for _, ev in pairs] == [{"checkpoint": c.id} for c in grid]
    assert pairs[0][1].variant == "tdmpc-final20" and pairs[0][1].options[1:] == ["--episodes", "20", "--seed", "100000"]
    # not part of the training cells' ids; another seed or count is another evaluation cell
    assert [c.id for c in bench.cells(bench.CompareConfig(**{**cfg.__dict__, "final_eval_episodes": 0}))] == [c.id for c in grid]
    assert bench.final_eval_cell(bench.CompareConfig(**{**cfg.__dict__, "final_eval_seed": 7}), grid[0]).id != pairs[0][1].id
    assert all(ev is None for _, ev in bench.sweep_cells(bench.CompareConfig(**{**cfg.__dict__, "final_eval_episodes": 0}), grid))
    with pytest.raises(ConfigError, match="final_eval_episodes"):
        bench.CompareConfig(final_eval_episodes=-1)
    from benchmarks import rl_final_eval

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(SystemExit):  # no checkpoint: a clear argparse error, nothing written
        rl_final_eval.main(["--checkpoint", str(run), "--run-root", str(tmp_path / "ev")])
    assert not (tmp_path / "ev").exists()


def test_failed_cell_is_flagged(tmp_path):
    cfg = bench.CompareConfig(tasks=("cartpole-swingup",), seeds=(1,), variants=("tdmpc",), steps=100, run_root=tmp_path)
    cell = bench.cells(cfg)[0]
    s = bench.summarise_run(cfg, cell, {"status": "failed", "returncode": 3, "error": "exit 3: boom"})
    assert s["flags"] == ["crash(rc=3)", "no-run-dir"] and s["error"] == "exit 3: boom"
    s = bench.summarise_run(cfg, cell, {"status": "interrupted", "error": "timeout after 5 s (resumes at the next sweep)"})
    assert s["flags"][0] == "timeout"
    assert bench.summarise_run(cfg, cell, {"status": "pending"})["flags"] == ["not-run"]  # a grid cell not started yet


def test_paired_differences_pair_by_seed_and_count_outcomes():
    cfg = bench.CompareConfig(tasks=("reacher-easy", "finger-spin", "cup-catch"), seeds=(1, 2), variants=("tdmpc", "difftori-episode"),
                              steps=100)

    def run(task, variant, seed, ret, flags=()):
        return {"task": task, "variant": variant, "seed": seed, "final_return": ret, "flags": list(flags)}

    summaries = [run("reacher-easy", "tdmpc", 1, 500.0), run("reacher-easy", "tdmpc", 2, 700.0), run("reacher-easy", "difftori-episode", 1, 600.0),
                 run("reacher-easy", "difftori-episode", 2, 800.0),  # +100 on both seeds: won
                 run("finger-spin", "tdmpc", 1, 900.0), run("finger-spin", "difftori-episode", 1, 895.0),  # within 1%: tied
                 run("finger-spin", "difftori-episode", 2, 10.0),  # no tdmpc seed 2: not paired
                 run("cup-catch", "tdmpc", 1, 400.0), run("cup-catch", "difftori-episode", 1, 300.0),  # lost
                 run("cup-catch", "tdmpc", 2, 0.0), run("cup-catch", "difftori-episode", 2, 999.0, flags=("unfinished",))]  # excluded
    lines = bench.paired_differences(cfg, summaries)
    text = "\n".join(lines)
    assert "| difftori-episode | reacher-easy | +100.0 +- 0.0 | 2 | 700.0 / 600.0 | won |" in text
    assert "| difftori-episode | finger-spin | -5.0 +- 0.0 | 1 | 895.0 / 900.0 | tied |" in text
    assert "| difftori-episode | cup-catch | -100.0 +- 0.0 | 1 | 300.0 / 400.0 | lost |" in text
    assert "**1 / 1 / 1**" in text
