"""Atomic I/O, checkpoint errors, run directories (finding, cleanup), metric logging and resume truncation, plotting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difftori.utils.io import CorruptFileError, atomic_write_text, load_checkpoint, save_checkpoint
from difftori.utils.plotting import Curve, aggregate, plot_learning_curve, plot_runs, run_variants
from difftori.utils.runs import MetricsLogger, find_run, locate_checkpoint, make_run_dir, new_run_dir, read_csv


def test_checkpoint_round_trip_and_corrupt(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.arange(3), "step": 7})
    out = load_checkpoint(path)
    assert out["step"] == 7 and torch.equal(out["w"], torch.arange(3))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptFileError, match="corrupt"):
        load_checkpoint(path)
    torch.save({"x": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CorruptFileError, match="not a difftori checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_run_dir_layout(tmp_path):
    a = make_run_dir(tmp_path, "cartpole-swingup", "difftori", 1, stamp="t0")
    b = make_run_dir(tmp_path, "cartpole-swingup", "difftori", 1, stamp="t0")
    assert a.relative_to(tmp_path).parts == ("cartpole-swingup", "difftori", "seed1", "t0")
    assert a != b and b.exists()


def test_logger_resume_drops_rows_after_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in (10, 20, 30):
        log.log("eval", step, {"episode_return": torch.tensor(float(step))})
    log.log("eval", 40, {"episode_return": 4.0, "extra": 1})  # new column rewrites the file
    log.close()
    assert [r["step"] for r in read_csv(tmp_path / "eval.csv")] == ["10", "20", "30", "40"]
    log = MetricsLogger(tmp_path, resume_step=20, tensorboard=False)
    log.log("eval", 30, {"episode_return": 3.0})
    log.close()
    rows = read_csv(tmp_path / "eval.csv")
    assert [r["step"] for r in rows] == ["10", "20", "30"]
    assert float(rows[-1]["episode_return"]) == 3.0


def test_plot_runs(tmp_path):
    for seed in (1, 2):
        run = make_run_dir(tmp_path, "task", "m", seed, stamp="t")
        log = MetricsLogger(run, tensorboard=False)
        for step in (0, 100, 200):
            log.log("eval", step, {"episode_return": step * seed})
        log.close()
    out = plot_runs([tmp_path], tmp_path / "curves.png")
    assert out.exists() and out.stat().st_size > 1000
    with pytest.raises(FileNotFoundError):
        plot_runs([tmp_path / "nope"], tmp_path / "x.png")


def _eval_run(root, task, method, seed, rows, config):
    run = make_run_dir(root, task, method, seed, stamp="t")
    (run / "config.json").write_text(json.dumps(config))
    key = "episode_return" if "agent" in config else "success_rate"
    (run / "eval.csv").write_text(f"step,{key}\n" + "".join(f"{s},{v}\n" for s, v in rows))
    return run


def test_plot_groups_by_variant_and_never_extrapolates(tmp_path, monkeypatch):
    import difftori.utils.plotting as plotting

    rl = {"task": "cartpole", "agent": "difftori", "lr": 1e-3}
    _eval_run(tmp_path / "rl", "cartpole", "difftori", 1, [(100, 1.0), (200, 2.0)], {**rl, "seed": 1})
    _eval_run(tmp_path / "rl", "cartpole", "difftori", 2, [(200, 4.0), (300, 6.0)], {**rl, "seed": 2})
    _eval_run(tmp_path / "rl2", "cartpole", "difftori", 1, [(100, 9.0)], {**rl, "seed": 1, "lr": 3e-4})  # another config
    _eval_run(tmp_path / "il", "door", "diffusion", 1, [(50, 0.5)], {"task": "door", "policy": "diffusion", "obs_type": "state"})
    (tmp_path / "empty" / "r").mkdir(parents=True)
    (tmp_path / "empty" / "r" / "eval.csv").write_text("step,episode_return\n")
    drawn, warned = [], []
    monkeypatch.setattr(plotting, "plot_curves", lambda curves, out: drawn.extend(curves) or out)
    plot_runs([tmp_path], tmp_path / "c.png", warn=warned.append)
    assert len(warned) == 1 and "empty" in warned[0] and "no rows" in warned[0]
    by_variant = {}
    for c in drawn:
        by_variant.setdefault((c.panel, c.metric, c.variant), []).append(c)
    assert set(by_variant) == {("cartpole", "episode_return", "difftori lr=0.0003"), ("cartpole", "episode_return", "difftori lr=0.001"),
                               ("door (state)", "success_rate", "diffusion")}  # RL and IL both kept, configs not pooled
    steps, mean, std, n = aggregate(by_variant[("cartpole", "episode_return", "difftori lr=0.001")])
    assert steps.tolist() == [100, 200, 300] and n.tolist() == [1, 2, 1]
    assert mean.tolist() == [1.0, 3.0, 6.0]  # seed 2 is not held flat back to step 100, seed 1 not carried to 300
    assert np.isnan(std[0]) and std[1] == 1.0 and np.isnan(std[2])  # a band only where two runs have data
    assert run_variants([{"task": "t", "agent": "a", "label": "x"}, {"task": "t", "agent": "a", "lr": 1}]) == ["a-x", "a lr=1"]


def test_plot_curves_draws_single_points(tmp_path):
    from difftori.utils.plotting import plot_curves

    out = tmp_path / "one.png"  # an IL run with one evaluation: a marker, not an empty plot
    curves = [Curve("door (state)", "diffusion", "success_rate", np.array([50.0]), np.array([0.5]))]
    assert plot_curves(curves, out) == out and out.stat().st_size > 1000


def _fake_run(root, seed, stamp, checkpoint="last.pt"):
    run = make_run_dir(root, "task", "m", seed, stamp=stamp)
    (run / "config.json").write_text("{}")
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / checkpoint).write_bytes(b"x")
    return run


def test_find_run_and_locate_checkpoint(tmp_path, capsys):
    old = _fake_run(tmp_path, 1, "20240101-000000")
    new = _fake_run(tmp_path, 2, "20240102-000000")
    bare = _fake_run(tmp_path, 1, "20240103-000000", checkpoint=None)
    assert find_run(old) == old
    assert find_run(tmp_path) == new  # newest run with a checkpoint
    assert "using the newest" in capsys.readouterr().err
    assert find_run(tmp_path, need_checkpoint=False) == bare
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.pt"):
        find_run(bare)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run"):
        find_run(tmp_path / "empty")
    assert locate_checkpoint(new) == (new / "checkpoints" / "last.pt", new)
    assert locate_checkpoint(new / "checkpoints" / "last.pt") == (new / "checkpoints" / "last.pt", new)
    copied = tmp_path / "copy.pt"
    copied.write_bytes(b"x")
    assert locate_checkpoint(copied) == (copied, None)  # not inside a run
    legacy = _fake_run(tmp_path / "legacy", 1, "t", checkpoint="latest.pt")  # IL runs before last.pt
    assert locate_checkpoint(legacy)[0].name == "latest.pt"


def test_new_run_dir_is_removed_on_error_before_training(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with new_run_dir(tmp_path, "task", "m", 1) as run:
            (run / "config.json").write_text("{}")
            raise RuntimeError("boom")
    assert not any(tmp_path.rglob("config.json"))
    kept = tmp_path / "given"
    kept.mkdir()
    with pytest.raises(RuntimeError):
        with new_run_dir(tmp_path, "task", "m", 1, run_dir=kept):
            raise RuntimeError("boom")
    assert kept.exists()  # a directory this call did not create is never removed


def test_learning_curve_shows_training_episodes_and_baseline(tmp_path):
    import json

    run = make_run_dir(tmp_path, "task", "m", 1, stamp="t")
    (run / "config.json").write_text(json.dumps({"task": "task", "agent": "difftori"}))
    log = MetricsLogger(run, tensorboard=False)
    for step in range(100, 600, 100):
        log.log("train", step, {"episode_return": step / 10})
    log.log("eval", 500, {"episode_return": 55.0, "return_std": 2.0})
    log.close()
    out = plot_learning_curve(run, run / "plot.png", baseline=("random policy", 10.0, 1.0))
    assert out.exists() and out.stat().st_size > 1000
    assert plot_learning_curve(tmp_path / "nothing", tmp_path / "x.png") is None
