"""Sweep cells without Ray: stable ids, options checked before anything is written, IL dependencies, CLI lists,
the report from what is on disk, and the install hint when Ray is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from difftori.cli import main
from difftori.sweep.cli import split_lists
from difftori.sweep.grid import config_hash, il_grid, rl_cell, rl_grid, script_cell
from difftori.sweep.report import collect, summary_markdown, tidy, write_report
from difftori.sweep.runner import RAY_HINT, SweepOptions, _argv, prepare
from difftori.utils.config import ConfigError
from difftori.utils.io import atomic_write_json

from .helpers import TINY_RL


def test_cell_ids_are_stable_and_follow_the_resolved_config():
    a = rl_cell("cartpole_balance", "tdmpc", 1, ["--agent", "tdmpc", "--steps", "96", *TINY_RL])
    b = rl_cell("cartpole-balance", "tdmpc", 1, ["--steps", "96", "--agent", "tdmpc", *TINY_RL])  # other spelling / order
    assert a.id == b.id and a.id.startswith("cartpole-balance-tdmpc-seed1-")
    assert a.config["task"] == "cartpole-balance" and a.steps == 96
    other_seed = rl_cell("cartpole-balance", "tdmpc", 2, ["--agent", "tdmpc", "--steps", "96", *TINY_RL])
    other_opt = rl_cell("cartpole-balance", "tdmpc", 1, ["--agent", "tdmpc", "--steps", "96", *TINY_RL, "--lr", "3e-4"])
    assert len({a.id, other_seed.id, other_opt.id}) == 3
    # The preset is resolved: giving its value explicitly is the same run, hence the same cell.
    p1 = rl_cell("cartpole-balance", "tdmpc", 1, ["--agent", "tdmpc", "--steps", "960", "--preset", "small"])
    p2 = rl_cell("cartpole-balance", "tdmpc", 1, ["--agent", "tdmpc", "--steps", "960", "--preset", "small", "--mlp-dim", "64"])
    assert p1.id == p2.id and p1.config["mlp_dim"] == 64
    # A field added later at its neutral value leaves the id (and the committed results) alone; another value does not.
    from difftori.sweep.grid import NEUTRAL_DEFAULTS

    key, neutral = next(iter(NEUTRAL_DEFAULTS.items()))
    plain = {k: v for k, v in a.config.items() if k != key}
    assert config_hash({**plain, key: neutral}, {}) == config_hash(plain, {}) != config_hash({**plain, key: "other"}, {})


def test_fields_added_later_keep_old_ids_at_their_default():
    """``precision`` came after cells were archived: fp32 (the old computation) keeps the old id, bf16 is a new cell."""
    opts = ["--agent", "tdmpc", "--steps", "96", *TINY_RL]
    a = rl_cell("cartpole-balance", "tdmpc", 1, opts)
    old = {k: v for k, v in a.config.items() if k != "precision"}  # the config as archived before the field existed
    assert a.config["precision"] == "fp32" and a.id.endswith(config_hash(old, {}))
    assert rl_cell("cartpole-balance", "tdmpc", 1, [*opts, "--precision", "fp32"]).id == a.id
    assert rl_cell("cartpole-balance", "tdmpc", 1, [*opts, "--precision", "bf16"]).id != a.id
    # difftori.explore came later too: its default keeps the old ids (the committed rl100k cells), planner is new
    d_opts = ["--agent", "difftori", "--steps", "96", *TINY_RL]
    b = rl_cell("cartpole-balance", "difftori", 1, d_opts)
    old = {**b.config, "difftori": {k: v for k, v in b.config["difftori"].items() if k != "explore"}}
    assert b.config["difftori"]["explore"] == "schedule" and b.id.endswith(config_hash(old, {}))
    assert rl_cell("cartpole-balance", "difftori", 1, [*d_opts, "--difftori.explore", "planner"]).id != b.id


def test_auto_encoder_precision_keeps_the_bf16_cells_id():
    """encoder_precision=auto is bf16 where the CPU has bf16 units, fp32 elsewhere (the same learning curve): one
    cell id on both kinds of CPU, bf16's, so a grid started on one resumes on the other; fp32 stays its own cell."""
    from difftori.sweep.grid import collect_cell, il_cell

    data = collect_cell("push", "pointcloud", 10)
    opts = ["--preset", "small", "--steps", "20", "--policy", "bc"]
    ids = {p: il_cell("push", "bc", 1, "pointcloud", [*opts, "--encoder-precision", p], data).id for p in ("fp32", "bf16", "auto")}
    assert ids["auto"] == ids["bf16"] != ids["fp32"]
    assert ids["fp32"] == il_cell("push", "bc", 1, "pointcloud", opts, data).id


def test_a_changed_observation_layout_is_a_new_collect_cell(monkeypatch):
    """Demos collected before a task's observations changed must not be reused; other tasks keep their ids."""
    from difftori.envs import maniskill, metaworld
    from difftori.sweep.grid import collect_cell

    pick = collect_cell("pick-cube", "pointcloud", 50)
    assert pick.config["obs_revision"] == maniskill.OBS_REVISIONS["pick-cube"] == 4
    old = {k: v for k, v in pick.config.items() if k != "obs_revision"}  # the id its demos had at revision 1
    assert not pick.id.endswith(config_hash(old, {}))
    push = collect_cell("push-cube", "pointcloud", 50)
    assert "obs_revision" not in push.config
    before = collect_cell("reach", "pointcloud", 10)
    monkeypatch.setattr(metaworld, "OBS_REVISIONS", {"reach": 2}, raising=False)
    assert collect_cell("reach", "pointcloud", 10).id != before.id


def test_bad_options_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="--latent-dimm"):
        rl_grid(["cartpole-balance"], ["tdmpc"], [1], 96, options=["--latent-dimm", "8"])
    with pytest.raises(ConfigError, match="horizon must be >= 1"):
        rl_grid(["cartpole-balance"], ["tdmpc"], [1], 96, options=["--horizon", "0"])
    with pytest.raises(ConfigError, match="runner sets it"):
        rl_grid(["cartpole-balance"], ["tdmpc"], [1], 96, options=["--num-threads", "4"])
    with pytest.raises(ConfigError, match="unknown DMC task"):
        rl_grid(["no-such-task"], ["tdmpc"], [1], 96)
    out = tmp_path / "sw"
    assert main(["sweep", "rl", "--tasks", "cartpole-balance", "--seeds", "1", "--steps", "96", "--out", str(out), "--latent-dimm", "8"]) == 2
    assert main(["sweep", "rl", "--tasks", "cartpole-balance", "--agents", "mppi", "--out", str(out)]) == 2
    assert not out.exists()


def test_il_grid_wires_difftori_to_its_diffusion_run():
    opts = ["--batch-size", "4", "--eval-episodes", "1"]
    cells = il_grid(["door-open"], ["bc", "difftori", "diffusion"], ["state", "pointcloud"], [1, 2], 10, demos=2, options=opts,
                    policy_steps={"difftori": 5})
    collects = [c for c in cells if c.area == "collect"]
    train = [c for c in cells if c.area == "il"]
    assert len(collects) == 2 and len(train) == 3 * 2 * 2
    by = {(c.variant, c.obs_type, c.seed): c for c in train}
    for (variant, obs, seed), c in by.items():
        data = next(d for d in collects if d.obs_type == obs)
        assert c.deps["dataset"] == data.id
        if variant == "difftori":
            assert c.deps["base_policy"] == by[("diffusion", obs, seed)].id and c.steps == 5
        else:
            assert "base_policy" not in c.deps and c.steps == 10
    with pytest.raises(ConfigError, match="include diffusion"):
        il_grid(["door-open"], ["difftori"], ["state"], [1], 10)
    assert il_grid(["door-open"], ["difftori"], ["state"], [1], 10, options=["--difftori.init", "zeros"])[1].deps.keys() == {"dataset"}


def test_list_options_take_commas():
    assert split_lists(["sweep", "rl", "--seeds", "1,2", "3", "--tasks=a,b", "--lr", "1e-3,x"]) == \
        ["sweep", "rl", "--seeds", "1", "2", "3", "--tasks", "a", "b", "--lr", "1e-3,x"]


def _fake_sweep(out: Path, seeds_done: dict[int, list[float]], failing_seed: int | None = None):
    """A sweep directory as the runner leaves it, with eval rows written by hand."""
    cells = rl_grid(["cartpole-balance"], ["tdmpc"], sorted(seeds_done) + ([failing_seed] if failing_seed else []), 96,
                    options=TINY_RL)
    prepare(cells, out, SweepOptions())
    for c in cells:
        d = out / "cells" / c.id
        if c.seed == failing_seed:
            atomic_write_json(d / "state.json", {"status": "failed", "error": "exit 2: difftori: error: boom"})
            continue
        run = d / "run" / "cartpole-balance" / "tdmpc" / f"seed{c.seed}" / "t"
        run.mkdir(parents=True)
        vals = seeds_done[c.seed]
        (run / "eval.csv").write_text("step,episode_return\n" + "".join(f"{48 * (i + 1)},{v}\n" for i, v in enumerate(vals)))
        atomic_write_json(d / "state.json", {"status": "done"})
        atomic_write_json(d / "result.json", {"run_dir": str(run.relative_to(d)), "wall_s": 1.0})
    return cells


def test_report_from_disk_and_merged(tmp_path):
    _fake_sweep(tmp_path / "a", {1: [10.0, 20.0]}, failing_seed=3)
    _fake_sweep(tmp_path / "b", {2: [30.0, 40.0]})
    recs = collect([tmp_path / "a", tmp_path / "b"])
    assert [(r.cell.seed, r.status) for r in recs] == [(1, "done"), (2, "done"), (3, "failed")]
    cols, rows = tidy(recs)
    assert cols[:6] == ["task", "variant", "seed", "step", "episode_return", "status"] and "agent" in cols
    assert [(r["seed"], r["step"], r["episode_return"]) for r in rows] == [(1, 48, 10.0), (1, 96, 20.0), (2, 48, 30.0), (2, 96, 40.0)]
    md = summary_markdown(recs)
    assert "| cartpole-balance | 30 ± 10 (n=2) |" in md and "boom" in md and "| **average over tasks** | 30 |" in md
    written = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert {p.name for p in written} == {"results.csv", "summary.md", "curves.png", "final.png"}
    assert main(["sweep", "report", str(tmp_path / "a")]) == 0 and (tmp_path / "a" / "results.csv").exists()
    assert main(["sweep", "report", str(tmp_path / "nope")]) == 2


def test_script_cells_hash_the_config_not_the_path_and_start_over(tmp_path):
    """A script cell's id follows its config and the script's name (not where the checkout is); the runner runs
    ``python SCRIPT options`` with its own paths and threads appended, after discarding an unfinished attempt."""
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "bench.py").write_text("")
    a = script_cell(tmp_path / "a" / "bench.py", "pendulum-simple", "lstm", 0, ["cell", "--method", "lstm"], {"iters": 5}, 5)
    b = script_cell(tmp_path / "b" / "bench.py", "pendulum-simple", "lstm", 0, ["cell", "--method", "lstm"], {"iters": 5}, 5)
    c = script_cell(tmp_path / "a" / "bench.py", "pendulum-simple", "lstm", 0, ["cell", "--method", "lstm"], {"iters": 6}, 6)
    dep = script_cell(tmp_path / "a" / "bench.py", "pendulum-simple", "lstm", 0, ["cell"], {"iters": 5}, 5, deps={"dataset": c.id})
    assert a.id == b.id != c.id != dep.id and a.id.startswith("pendulum-simple-lstm-seed0-") and a.area == "script"
    assert a.options[0] == str(tmp_path / "a" / "bench.py") and a.config == {"script": "bench.py", "iters": 5}
    d = tmp_path / "cell"
    (d / "run" / "partial").mkdir(parents=True)
    argv, resumed = _argv(dep.to_json(), d, {"dataset": "/x/run"}, 2, "cpu")
    assert argv == [str(tmp_path / "a" / "bench.py"), "cell", "--dataset", "/x/run", "--run-root", str(d / "run"), "--num-threads", "2",
                    "--device", "cpu"] and resumed is None and not (d / "run").exists()
    rl = rl_cell("cartpole-balance", "tdmpc", 1, ["--agent", "tdmpc", "--steps", "96", *TINY_RL])
    argv, _ = _argv(rl.to_json(), tmp_path / "rl", {}, 1, "cpu")
    assert argv[:4] == ["-m", "difftori.cli", "rl", "train"]  # the other cells still run the difftori CLI
    with pytest.raises(ConfigError, match="not a file"):
        script_cell(tmp_path / "nope.py", "t", "v", 0, [], {}, 1)
    with pytest.raises(ConfigError, match="--run-root"):
        script_cell(tmp_path / "a" / "bench.py", "t", "v", 0, ["--run-root", "x"], {}, 1)


def test_missing_ray_is_a_clear_error(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from difftori.cli import main\n"
            f"sys.exit(main(['sweep', 'rl', '--tasks', 'cartpole-balance', '--seeds', '1', '--out', {str(tmp_path / 'o')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and RAY_HINT in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()


def test_ray_is_installed():
    """`make setup` installs the sweep extra: the Ray tests must run, not skip."""
    import ray  # noqa: F401


def test_how_the_return_gradient_is_computed_is_not_part_of_the_id():
    """difftori.return_grad changes how the solver's gradient is computed, not its value: same cell."""
    opts = ["--agent", "difftori", "--steps", "96", *TINY_RL]
    base = rl_cell("cartpole-balance", "difftori", 1, opts)
    fast = rl_cell("cartpole-balance", "difftori", 1, [*opts, "--difftori.return-grad", "compiled"])
    assert fast.config["difftori"]["return_grad"] == "compiled" and fast.id == base.id
    assert rl_cell("cartpole-balance", "difftori", 1, [*opts, "--difftori.pg-lr", "3e-4"]).id != base.id


def test_a_done_cell_keeps_the_cell_json_it_ran_with(tmp_path):
    """Rewriting cell.json on every sweep start would record today's volatile options (e.g. return_grad) for a
    cell that ran with others; a pending cell's record follows the current spec."""
    opts = ["--agent", "difftori", "--steps", "96", *TINY_RL]
    ran = rl_cell("cartpole-balance", "difftori", 1, opts)
    now = rl_cell("cartpole-balance", "difftori", 1, [*opts, "--difftori.return-grad", "compiled"])
    assert ran.id == now.id
    prepare([ran], tmp_path, SweepOptions())
    d = tmp_path / "cells" / ran.id
    (d / "state.json").write_text(json.dumps({"status": "done", "run_dir": "run"}))
    before = (d / "cell.json").read_text()
    prepare([now], tmp_path, SweepOptions())
    assert (d / "cell.json").read_text() == before
    (d / "state.json").write_text(json.dumps({"status": "failed"}))
    prepare([now], tmp_path, SweepOptions())
    assert json.loads((d / "cell.json").read_text())["config"]["difftori"]["return_grad"] == "compiled"


def test_resume_passes_how_not_what_options(tmp_path):
    """A resumed cell gets the spec's volatile options (e.g. the return gradient's mode), which --resume accepts."""
    cell = rl_cell("cartpole-balance", "difftori", 1, ["--agent", "difftori", "--steps", "96", *TINY_RL,
                                                       "--difftori.return-grad", "manual"])
    d = tmp_path / "c"
    run = d / "run" / "cartpole-balance" / "difftori" / "seed1" / "t0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / "config.json").write_text("{}")
    argv, resumed = _argv(cell.to_json(), d, {}, 1, "cpu")
    assert resumed == run
    i = argv.index("--difftori.return-grad")
    assert argv[i + 1] == "manual" and "--resume" in argv and "--task" not in argv
    # encoder_precision=auto shares bf16's id: a bf16 run resumed under an auto spec continues in auto
    from difftori.sweep.grid import collect_cell, il_cell

    il = il_cell("push", "bc", 1, "pointcloud", ["--steps", "20", "--policy", "bc", "--encoder-precision", "auto"],
                 collect_cell("push", "pointcloud", 10))
    run = d / "run" / "push" / "bc" / "seed1" / "t0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / "config.json").write_text("{}")
    argv, _ = _argv(il.to_json(), d, {"dataset": "/x"}, 1, "cpu")
    assert argv[argv.index("--encoder-precision") + 1] == "auto" and "--resume" in argv
