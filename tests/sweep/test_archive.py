"""Committed cell records: archive a finished cell without its checkpoints, restore it elsewhere as done."""

from __future__ import annotations

import json
from types import SimpleNamespace

from difftori.sweep.archive import archive_done, restore
from difftori.sweep.runner import cell_dir, read_state


def _cell(out, cid, done=True):
    d = cell_dir(out, cid)
    run = d / "run" / "task" / "tdmpc" / "seed1" / "t0"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "final.json", "runtime.json"):
        (run / name).write_text("{}")
    (run / "eval.csv").write_text("step,episode_return\n100,5.0\n")
    (run / "checkpoints" / "last.pt").write_bytes(b"x" * 100)
    (d / "cell.json").write_text(json.dumps({"id": cid}))
    (d / "state.json").write_text(json.dumps({"status": "done" if done else "running"}))
    if done:
        (d / "result.json").write_text(json.dumps({"run_dir": "run/task/tdmpc/seed1/t0"}))


def test_archive_keeps_logs_not_checkpoints_and_restore_marks_done(tmp_path):
    out, dest, elsewhere = tmp_path / "out", tmp_path / "committed", tmp_path / "next_session"
    _cell(out, "a-done")
    _cell(out, "b-running", done=False)
    grid = [SimpleNamespace(id="a-done"), SimpleNamespace(id="b-running")]
    assert archive_done(grid, out, dest) == ["a-done"]
    kept = {p.relative_to(dest / "a-done").as_posix() for p in (dest / "a-done").rglob("*") if p.is_file()}
    assert kept == {"cell.json", "state.json", "result.json", "run/task/tdmpc/seed1/t0/config.json",
                    "run/task/tdmpc/seed1/t0/final.json", "run/task/tdmpc/seed1/t0/eval.csv",
                    "run/task/tdmpc/seed1/t0/runtime.json"}
    assert not (dest / "b-running").exists()
    # a fresh checkout: the committed cell is done, the other still pending
    assert restore(grid, elsewhere, dest) == ["a-done"]
    assert read_state(elsewhere, "a-done")["status"] == "done"
    assert read_state(elsewhere, "b-running")["status"] == "pending"
    assert (cell_dir(elsewhere, "a-done") / "run/task/tdmpc/seed1/t0/eval.csv").read_text().endswith("5.0\n")
    # never overwrites a cell that exists locally
    assert restore(grid, out, dest) == []


def test_archiving_a_cell_run_again_replaces_its_record_without_a_stale_run_directory(tmp_path):
    import shutil

    out, dest = tmp_path / "out", tmp_path / "committed"
    _cell(out, "a")
    grid = [SimpleNamespace(id="a")]
    archive_done(grid, out, dest)
    shutil.rmtree(out)  # the next session runs the cell again: a new run directory
    _cell(out, "a")
    old_run, new_run = "run/task/tdmpc/seed1/t0", "run/task/tdmpc/seed1/t1"
    (cell_dir(out, "a") / old_run).rename(cell_dir(out, "a") / new_run)
    (cell_dir(out, "a") / "result.json").write_text(json.dumps({"run_dir": new_run}))
    state = json.loads((cell_dir(out, "a") / "state.json").read_text())
    (cell_dir(out, "a") / "state.json").write_text(json.dumps({**state, "run_dir": new_run}))
    assert archive_done(grid, out, dest) == ["a"]
    assert not (dest / "a" / old_run).exists()  # the earlier run's folder is gone, not just emptied
    assert (dest / "a" / new_run / "eval.csv").exists()
    assert json.loads((dest / "a" / "result.json").read_text())["run_dir"] == new_run
