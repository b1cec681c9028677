"""Atomic I/O, checkpoint errors, run directories, metric logging and resume truncation, plotting."""

from __future__ import annotations

import torch
import pytest

from difftori.utils.io import CorruptFileError, atomic_write_text, load_checkpoint, save_checkpoint
from difftori.utils.plotting import plot_runs
from difftori.utils.runs import MetricsLogger, make_run_dir, read_csv


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
