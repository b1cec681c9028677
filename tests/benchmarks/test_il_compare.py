"""benchmarks/il_compare.py: config checks, the grid's wiring (difftori on its seed's diffusion cell), DP3's number,
and the tables / paired differences / plot from rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import il_compare as bench  # noqa: E402
from difftori.utils.config import ConfigError  # noqa: E402


def test_bad_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown variant"):
        bench.CompareConfig(variants=("bc", "nope"))
    with pytest.raises(ConfigError, match="include diffusion"):
        bench.CompareConfig(variants=("bc", "difftori"))
    with pytest.raises(ConfigError, match="unknown IL task"):
        bench.CompareConfig(tasks=("not-a-task",))
    assert bench.CompareConfig(tasks=("lift", "robosuite:can", "door-open")).tasks == ("lift", "robosuite:can", "door-open")
    with pytest.raises(SystemExit):
        bench.main(["--modalities", "lidar"])


def test_grid_pairs_every_difftori_with_its_seeds_diffusion_cell():
    cfg = bench.CompareConfig(tasks=("reach",), seeds=(1, 2), variants=("diffusion", "difftori", "difftori-faithful", "bc"))
    grid = bench.cells(cfg)
    collect = [c for c in grid if c.area == "collect"]
    assert len(collect) == 1 and len(grid) == 1 + 2 * 4
    diffusion = {c.seed: c.id for c in grid if c.variant == "diffusion"}
    for c in grid:
        if c.variant.startswith("difftori"):
            assert c.deps == {"dataset": collect[0].id, "base_policy": diffusion[c.seed]}
            assert c.steps == cfg.difftori_steps
        elif c.area == "il":
            assert c.steps == cfg.steps and "base_policy" not in c.deps
    faithful = next(c for c in grid if c.variant == "difftori-faithful").config["difftori"]
    assert faithful["solver"]["packed"] and faithful["solver"]["max_iters"] == 100 and faithful["base_pool"] == 0
    assert faithful["inference_samples"] == 32 and faithful["inference_select"] == "first"  # = the small preset's batch
    ids = [c.id for c in grid]
    assert ids == [c.id for c in bench.cells(cfg)] and len(set(ids)) == len(ids)  # stable, distinct


def test_paper_variant_is_the_paper_formulation_on_the_grids_window():
    cfg = bench.CompareConfig(tasks=("reach",), seeds=(1,), variants=("diffusion", "difftori-paper"))
    cell = next(c for c in bench.cells(cfg) if c.variant == "difftori-paper")
    d = cell.config["difftori"]
    assert (d["formulation"], d["action_loss_weight"], d["kl_weight"], d["solver"]["backward"], d["solver"]["packed"]) == (
        "paper", 1.0, 1.0, "implicit", False)
    assert (cell.config["lr"], cell.config["encoder_dim"]) == (3e-4, 50)
    base = next(c for c in bench.cells(cfg) if c.variant == "diffusion")
    assert cell.config["action_steps"] == base.config["action_steps"] and cell.config["batch_size"] == 32  # the small preset's


def test_dp3_score_is_the_mean_of_the_best_k():
    assert bench.dp3_score([0.1, 0.5, 0.3, 0.9], 2) == pytest.approx(0.7)
    assert bench.dp3_score([0.2], 5) == pytest.approx(0.2)


def _rows():
    rows = []
    for task, base in (("reach", 0.5), ("push", 0.2)):
        for seed in (1, 2):
            for variant, delta in (("diffusion", 0.0), ("difftori", 0.1 if task == "reach" else -0.1), ("ibc", -0.2)):
                v = max(base + delta + 0.1 * seed, 0.0)
                rows.append({"task": task, "modality": "state", "variant": variant, "policy": variant.split("-")[0], "seed": seed,
                             "steps": 100, "status": "done", "final": v, "dp3": v + 0.05, "n_evals": 3, "train_time_s": 60.0,
                             "eval_time_s": 10.0, "eval_s_per_episode": 1.0 if seed == 1 else 0.4,
                             "eval_ms_per_env_step": 5.0 if seed == 1 else 2.0, "eval_envs": 1 if seed == 1 else 10,
                             "cell": f"{task}-{variant}-{seed}"})
    return rows


def test_markdown_has_means_averages_paired_differences_and_times(tmp_path):
    cfg = bench.CompareConfig(tasks=("reach", "push"), seeds=(1, 2), variants=("ibc", "diffusion", "difftori"))
    md = bench.markdown(cfg, _rows(), {"jobs": 2, "cpu_count": 2, "machine": "x86_64"})
    assert "| reach | 0.45 ± 0.05 | 0.65 ± 0.05 | 0.75 ± 0.05 |" in md
    assert "**average over tasks**" in md and "DP3 protocol" in md
    # difftori - diffusion: +0.1 on both reach seeds, -0.1 on both push seeds -> mean 0, one task won, one lost
    assert "| difftori − diffusion | final | +0.000 ± 0.100 (n=4) | 1 / 0 / 1 |" in md
    assert "| difftori − ibc | final | +0.200 ± 0.100 (n=4) | 2 / 0 / 0 |" in md
    assert "| difftori | 100 | 1.0 ± 0.0 | 600 | 5.0 (1 env) / 2.0 (10 envs) |" in md  # split by envs side by side
    assert "Caution" not in md  # every run has 3 evaluations >= top_k
    few = [dict(r, n_evals=1) if r["variant"] == "difftori" else r for r in _rows()]
    assert "Caution: difftori runs have 1 evaluation(s), fewer than 2" in bench.markdown(cfg, few, {"jobs": 2, "cpu_count": 2, "machine": "x"})
    png = bench.plot(cfg, _rows(), tmp_path / "il.png")
    assert png is not None and png.stat().st_size > 0


def test_archived_cells_are_restored_except_a_base_whose_difftori_runs_are_missing(tmp_path, monkeypatch):
    import json

    cfg = bench.CompareConfig(tasks=("reach",), seeds=(1,), variants=("bc", "diffusion", "difftori"), run_root=tmp_path / "runs",
                              out=tmp_path / "out", report_only=True)
    grid = bench.cells(cfg)
    by = {c.variant: c for c in grid}
    closing = bench.final_eval_cells(cfg, grid)
    for v in ("bc", "diffusion"):  # archived without the difftori cell that needs the diffusion checkpoint
        _archive(cfg.out, by[v], {"eval.csv": "step,success_rate,mean_return,mean_length,eval_time_s\n10,0.5,1,1,0.1\n"})
        _archive(cfg.out, closing[by[v].id], {"final.json": json.dumps({"success_rate": 0.8})})
    rows = {r["variant"]: r for r in bench.run(cfg)}
    assert rows["bc"]["closing"] == 0.8
    # the diffusion run DiffTORI will refine is evaluated again, not paired with the archived run's evaluation
    assert rows["diffusion"]["closing_status"] == "pending" and "closing" not in rows["diffusion"]
    assert rows["bc"]["status"] == "done" and rows["bc"]["final"] == 0.5
    episodes = int(by["bc"].config["eval_episodes"])  # 0.1 s for `episodes` episodes of one step each
    assert rows["bc"]["eval_ms_per_env_step"] == pytest.approx(100.0 / episodes, abs=0.01)
    assert rows["diffusion"]["status"] != "done", "its checkpoint is not archived: it must run again for difftori"
    assert (cfg.out / "il_compare.md").exists()


def test_bf16_encoders_on_the_rendered_modalities_only_and_state_ids_unchanged():
    cfg = bench.CompareConfig(tasks=("reach",), seeds=(1,), modalities=("state", "pointcloud"), variants=("diffusion", "difftori"))
    grid = [c for c in bench.cells(cfg) if c.area == "il"]
    assert {(c.obs_type, c.config["encoder_precision"]) for c in grid} == {("state", "fp32"), ("pointcloud", "auto")}
    fp32 = bench.CompareConfig(tasks=("reach",), seeds=(1,), modalities=("state", "pointcloud"), variants=("diffusion", "difftori"),
                               bf16_encoders=())
    ids = {c.id for c in bench.cells(fp32)}
    assert {c.id for c in grid if c.obs_type == "state"} <= ids  # committed state cells keep their ids
    assert not {c.id for c in grid if c.obs_type == "pointcloud"} & ids
    with pytest.raises(ConfigError, match="unknown modality"):
        bench.CompareConfig(bf16_encoders=("lidar",))


def test_rendered_modalities_get_their_lr_and_difftori_the_bases_encoder_state_ids_unchanged():
    variants = ("diffusion", "difftori", "difftori-faithful", "bc")
    cfg = bench.CompareConfig(tasks=("reach",), seeds=(1,), modalities=("state", "pointcloud"), variants=variants)
    grid = [c for c in bench.cells(cfg) if c.area == "il"]
    got = {(c.obs_type, c.variant): (c.config["lr"], c.config["difftori"]["encoder_init"]) for c in grid}
    assert got[("pointcloud", "difftori")] == (1e-3, "base")
    assert got[("pointcloud", "difftori-faithful")] == (1e-3, "scratch"), "the faithful variant keeps a fresh encoder"
    assert got[("pointcloud", "diffusion")][0] == got[("pointcloud", "bc")][0] == 1e-3
    assert got[("state", "diffusion")][0] == 1e-4 and got[("state", "difftori")] == (1e-3, "scratch")
    # Without the grid's own settings the preset (small) gives the same lr on point clouds: the same cells;
    # without encoder_from_base DiffTORI's point-cloud runs start a fresh encoder: other cells.
    plain = bench.CompareConfig(tasks=("reach",), seeds=(1,), modalities=("state", "pointcloud"), variants=variants,
                                modality_lr=(), encoder_from_base=())
    plain_ids = {(c.obs_type, c.variant): c.id for c in bench.cells(plain) if c.area == "il"}
    ids = {(c.obs_type, c.variant): c.id for c in grid}
    assert {k: v for k, v in ids.items() if k != ("pointcloud", "difftori")} == {k: v for k, v in plain_ids.items() if k != ("pointcloud", "difftori")}
    assert ids[("pointcloud", "difftori")] != plain_ids[("pointcloud", "difftori")]
    slow = bench.CompareConfig(tasks=("reach",), seeds=(1,), modalities=("state", "pointcloud"), variants=variants,
                               modality_lr=("pointcloud=1e-4",))
    slow_ids = {(c.obs_type, c.variant): c.id for c in bench.cells(slow) if c.area == "il"}
    assert all((slow_ids[k] == v) == (k[0] == "state") for k, v in ids.items())  # committed state cells keep their ids
    for bad in (("pointcloud=fast",), ("pointcloud",), ("lidar=1e-3",), ("image=-1",)):
        with pytest.raises(ConfigError, match="modality_lr entries are MODALITY=LR"):
            bench.CompareConfig(modality_lr=bad)
    with pytest.raises(ConfigError, match="unknown modality"):
        bench.CompareConfig(encoder_from_base=("lidar",))


def test_modality_tasks_restrict_a_modality_to_a_subset_of_the_tasks():
    cfg = bench.CompareConfig(tasks=("reach", "push", "door-open"), seeds=(1,), modalities=("state", "pointcloud"),
                              variants=("bc",), modality_tasks=("pointcloud=door-open,reach",))
    assert cfg.tasks_of("state") == ("reach", "push", "door-open") and cfg.tasks_of("pointcloud") == ("reach", "door-open")
    got = {(c.task, c.obs_type) for c in bench.cells(cfg) if c.area == "il"}
    assert got == {("reach", "state"), ("push", "state"), ("door-open", "state"), ("reach", "pointcloud"), ("door-open", "pointcloud")}
    for bad, msg in ((("pointcloud=hammer",), "not in --tasks"), (("lidar=reach",), "MODALITY=task"), (("pointcloud",), "MODALITY=task")):
        with pytest.raises(ConfigError, match=msg):
            bench.CompareConfig(tasks=("reach",), modality_tasks=bad)


def test_a_task_whose_suite_is_missing_is_one_error_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mani_skill.envs", None)  # as in the default venv: ManiSkill has its own
    argv = ["--tasks", "reach", "pick-cube", "--modalities", "state", "--seeds", "1",
            "--run-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2 and "task pick-cube: ManiSkill tasks need" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_task_steps_raise_one_tasks_budget_and_keep_the_others_ids():
    plain = bench.CompareConfig(tasks=("reach", "push"), seeds=(1,), variants=("bc", "diffusion", "difftori"), eval_freq=500)
    longer = bench.CompareConfig(tasks=("reach", "push"), seeds=(1,), variants=("bc", "diffusion", "difftori"), eval_freq=500,
                                 task_steps=("push=6000",))
    before = {c.id: c for c in bench.cells(plain) if c.area == "il"}
    after = [c for c in bench.cells(longer) if c.area == "il"]
    assert {c.id for c in after if c.task == "reach"} <= set(before)  # untouched tasks keep their cells
    push = {c.variant: c for c in after if c.task == "push"}
    assert (push["bc"].config["steps"], push["bc"].config["eval_freq"]) == (6000, 1500)  # same number of evaluations
    assert (push["diffusion"].config["steps"], push["difftori"].config["steps"]) == (6000, plain.difftori_steps)
    assert not {c.id for c in push.values()} & set(before)
    md = bench.markdown(longer, [], {"jobs": 1, "cpu_count": 2, "machine": "x86_64"})
    assert "On push: 6000 steps for bc / ibc / diffusion, evaluated every 1500." in md
    for bad in (("push=0",), ("push",), ("door-open=100",), ("push=1e3",)):
        with pytest.raises(bench.ConfigError, match="task_steps"):
            bench.CompareConfig(tasks=("reach", "push"), task_steps=bad)


def test_every_run_gets_a_closing_evaluation_on_seeds_shared_by_its_task_modality_and_seed():
    cfg = bench.CompareConfig(tasks=("reach", "push"), seeds=(1, 2), modalities=("state", "pointcloud"), variants=("bc", "diffusion", "difftori"))
    grid = bench.cells(cfg)
    closing = bench.final_eval_cells(cfg, grid)
    train = {c.id: c for c in grid if c.area == "il"}
    assert set(closing) == set(train) and len({ev.id for ev in closing.values()}) == len(train)
    for tid, ev in closing.items():
        assert ev.area == "script" and ev.deps == {"checkpoint": tid} and ev.seed == train[tid].seed
        assert ev.config == {"script": "il_final_eval.py", "episodes": 30, "seed": 200_000 + 1000 * train[tid].seed, "envs": 10}
        assert train[tid].obs_type in ev.variant
    assert bench.final_eval_cells(bench.CompareConfig(tasks=("reach",), final_episodes=0), grid) == {}
    with pytest.raises(ConfigError, match="final_episodes"):
        bench.CompareConfig(final_episodes=-1)


def _archive(out: Path, cell, run_files: dict[str, str]) -> None:
    import json

    d = out / "cells" / cell.id
    (d / "run" / "x").mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"run_dir": "run/x"}))
    (d / "state.json").write_text(json.dumps({"status": "done", "run_dir": "run/x", "wall_s": 1.0}))
    for name, text in run_files.items():
        (d / "run" / "x" / name).write_text(text)


def test_closing_evaluations_join_the_rows_and_a_run_without_its_checkpoint_gets_none(tmp_path):
    import json

    cfg = bench.CompareConfig(tasks=("reach", "push"), seeds=(1,), variants=("bc", "ibc"), run_root=tmp_path / "runs",
                              out=tmp_path / "out", report_only=True)
    grid = bench.cells(cfg)
    closing = bench.final_eval_cells(cfg, grid)
    evals = "step,success_rate,mean_return,mean_length,eval_time_s\n10,0.5,1,1,0.1\n"
    for c in grid:
        if c.area == "il":
            _archive(cfg.out, c, {"eval.csv": evals})
            if c.task == "reach":  # reach's closing evaluations are archived; push's runs have no checkpoint here
                _archive(cfg.out, closing[c.id], {"final.json": json.dumps({"success_rate": 0.8 if c.variant == "bc" else 0.2})})
    rows = {(r["task"], r["variant"]): r for r in bench.run(cfg)}
    assert rows[("reach", "bc")]["closing"] == 0.8 and rows[("reach", "ibc")]["closing"] == 0.2
    assert "closing" not in rows[("push", "bc")] and "closing_cell" not in rows[("push", "bc")]
    md = (cfg.out / "il_compare.md").read_text()
    assert "**Closing evaluation** (each final checkpoint on 30 fresh episodes" in md and "2 of 4 finished runs" in md
    assert "| reach | 0.80 ± 0.00 (n=1) | 0.20 ± 0.00 (n=1) |" in md
    # With push's checkpoints here, their closing evaluations are part of the grid (pending in a report).
    for c in grid:
        if c.area == "il" and c.task == "push":
            (tmp_path / "runs" / "cells" / c.id / "run" / "x" / "checkpoints").mkdir(parents=True)
            (tmp_path / "runs" / "cells" / c.id / "run" / "x" / "checkpoints" / "last.pt").write_bytes(b"")
    rows = {(r["task"], r["variant"]): r for r in bench.run(cfg)}
    assert rows[("push", "bc")]["closing_status"] == "pending" and rows[("push", "bc")]["closing_cell"] == closing[
        next(c.id for c in grid if c.area == "il" and c.task == "push" and c.variant == "bc")].id


def test_a_subset_call_leaves_a_larger_grids_tables_as_they_are(tmp_path, capsys):
    from dataclasses import replace

    full = bench.CompareConfig(tasks=("reach", "push"), seeds=(1,), variants=("bc",), run_root=tmp_path / "runs",
                               out=tmp_path / "out", report_only=True, final_episodes=0)
    for c in bench.cells(full):
        if c.area == "il":
            _archive(full.out, c, {"eval.csv": "step,success_rate,mean_return,mean_length,eval_time_s\n10,0.5,1,1,0.1\n"})
    bench.run(full)
    tables = {n: (full.out / n).read_bytes() for n in ("il_compare.csv", "il_compare.md")}
    assert len(bench.tabled_cells(full.out)) == 2
    subset = replace(full, tasks=("reach",))
    assert bench.main(["--tasks", "reach", "--seeds", "1", "--variants", "bc", "--run-root", str(subset.run_root),
                       "--out", str(subset.out), "--report-only", "--final-episodes", "0"]) == 0
    out = capsys.readouterr()
    assert "holds 1 runs outside this call's grid" in out.err and "| reach |" in out.out  # its own table, printed
    assert {n: (full.out / n).read_bytes() for n in tables} == tables
    rows = bench.run(replace(subset, replace_tables=True))
    assert len(rows) == 1 and bench.tabled_cells(full.out) == {rows[0]["cell"]}
