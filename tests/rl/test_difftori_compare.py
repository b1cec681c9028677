"""benchmarks/rl_compare.py: config checks, run options, and a tiny end-to-end comparison with a crash flagged."""

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
from difftori.utils.config import ConfigError  # noqa: E402

TINY = ("--latent-dim 8 --mlp-dim 32 --enc-dim 32 --batch-size 16 --horizon 3 --num-samples 16 --num-elites 4 "
        "--iterations 2 --updates-per-step 0.25 --difftori.max-iters 8 --difftori.pg-batch 4")


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown variant"):
        bench.CompareConfig(variants=("tdmpc", "mppi"))
    with pytest.raises(ConfigError, match="unknown DMC task"):
        bench.CompareConfig(tasks=("cartpole-swingup", "no-such-task"))
    assert bench.CompareConfig(tasks=("cartpole_swingup",)).tasks == ("cartpole-swingup",)


def test_run_args_scale_schedules_and_select_variant():
    cfg = bench.CompareConfig(steps=8000, extra="--difftori.max-iters 7")
    args = bench.run_args(cfg, "cartpole-swingup", "difftori-replay", 3, Path("root"))
    opts = dict(zip(args[2::2], args[3::2]))
    assert args[:2] == ["rl", "train"]
    # 8000 env steps / action repeat 8 = 1000 agent steps: seed 10%, DiffTORI start 15%, schedules 50%.
    assert opts["--seed-steps"] == "100" and opts["--difftori.pg-start-step"] == "150" and opts["--schedule-steps"] == "500"
    assert opts["--agent"] == "difftori" and opts["--difftori.pg-mode"] == "replay" and opts["--label"] == "replay"
    assert opts["--seed"] == "3" and opts["--difftori.max-iters"] == "7"
    paper = bench.run_args(bench.CompareConfig(preset="paper"), "cartpole-swingup", "tdmpc", 1, Path("root"))
    assert "--seed-steps" not in paper and "--mlp-dim" not in paper and "--agent" in paper


def test_tiny_comparison_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "out"
    cfg = bench.CompareConfig(
        tasks=("cartpole-swingup",), seeds=(1,), variants=("tdmpc", "difftori-episode"), steps=160, episode_length=80,
        eval_freq=160, eval_episodes=1, jobs=2, run_root=tmp_path / "runs", out_dir=out, random_episodes=1, extra=TINY,
    )
    res = bench.run(cfg)
    assert [(r["variant"], r["flags"]) for r in res["runs"]] == [("tdmpc", []), ("difftori-episode", [])]
    rows = list(csv.DictReader((out / "rl_compare.csv").open()))
    assert {r["variant"] for r in rows} == {"tdmpc", "difftori-episode"} and all(int(r["step"]) == 160 for r in rows)
    assert (out / "rl_compare.png").stat().st_size > 0
    table = (out / "rl_compare.md").read_text()
    assert "| cartpole-swingup | difftori-episode |" in table and "not in the paper" in table
    for r in res["runs"]:
        assert r["ms_per_env_step"] > 0 and r["final_step"] >= 160
    assert json.loads((out / "rl_compare.json").read_text())["runs"][0]["task"] == "cartpole-swingup"
    # A second invocation reuses the finished runs; a run that cannot start is flagged, not fatal.
    again = bench.run(bench.CompareConfig(**{**cfg.__dict__, "variants": ("tdmpc",)}))
    assert again["runs"][0]["flags"] == []
    # A run that fails is flagged (and main exits 1) without stopping the others.
    real_command = bench._command

    def failing(cfg_, r):
        if r.variant == "difftori-replay":
            return [sys.executable, "-c", "import sys; sys.exit(3)"]
        return real_command(cfg_, r)

    monkeypatch.setattr(bench, "_command", failing)
    broken = bench.CompareConfig(**{**cfg.__dict__, "variants": ("tdmpc", "difftori-replay")})
    assert bench.main(_argv(broken)) == 1
    runs = json.loads((out / "rl_compare.json").read_text())["runs"]
    assert runs[0]["flags"] == [] and "crash(rc=3)" in runs[1]["flags"]


def _argv(cfg: bench.CompareConfig) -> list[str]:
    return [
        "--tasks", *cfg.tasks, "--seeds", *map(str, cfg.seeds), "--variants", *cfg.variants, "--steps", str(cfg.steps),
        "--episode-length", str(cfg.episode_length), "--eval-episodes", str(cfg.eval_episodes), "--jobs", str(cfg.jobs),
        "--eval-freq", str(cfg.eval_freq), "--run-root", str(cfg.run_root), "--out-dir", str(cfg.out_dir),
        "--random-episodes", "0", "--extra", cfg.extra,
    ]


def test_finished_run_reused_only_with_the_same_options(tmp_path):
    cfg = bench.CompareConfig(tasks=("cartpole-swingup",), seeds=(1,), steps=100, run_root=tmp_path)
    r = bench.Run(task="cartpole-swingup", variant="difftori-episode", seed=1, root=tmp_path / "r", log=tmp_path / "r.log")
    cmd = bench._command(cfg, r)  # nothing there: a fresh run, whose options are recorded
    assert cmd is not None and "--resume" not in cmd
    assert json.loads((r.root / "args.json").read_text()) == bench.run_args(cfg, r.task, r.variant, 1, r.root)
    done = r.root / "cartpole-swingup" / "difftori" / "seed1" / "20260101-000000"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    (done / "final.json").write_text(json.dumps({"step": 100}))
    assert bench._command(cfg, r) is None  # same options, finished: reused
    other = bench.CompareConfig(tasks=("cartpole-swingup",), seeds=(1,), steps=100, run_root=tmp_path, extra="--difftori.init pi")
    cmd = bench._command(other, r)  # different options: never reuse the stale run
    assert cmd is not None and "--resume" not in cmd and cmd[-2:] == ["--difftori.init", "pi"]
