"""The sweep runner on a local Ray cluster (2 CPUs, tiny runs): a 2x2 grid completes and a second sweep re-runs
nothing; a failing cell is reported with its error while the others finish, and is retried only when asked; a
cell killed mid-run resumes from its checkpoint without lost or repeated rows."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import ray

from difftori.sweep.grid import rl_cell, rl_grid
from difftori.sweep.runner import SweepOptions, read_state, run_sweep
from difftori.utils.runs import read_csv

from .helpers import TINY_RL


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run_dir(out, cell_id):
    d = out / "cells" / cell_id
    return d / json.loads((d / "result.json").read_text())["run_dir"]


def test_grid_completes_reruns_nothing_and_reports_a_failing_cell(tmp_path):
    out = tmp_path / "sweep"
    cells = rl_grid(["cartpole-balance"], ["tdmpc", "difftori"], [1, 2], 96, options=TINY_RL)
    broken = rl_cell("cartpole-balance", "broken", 1, ["--agent", "difftori", "--steps", "96", *TINY_RL, "--difftori.solver-method", "bogus"])
    lines: list[str] = []
    seen: list[str] = []

    def on_done(cell, state):  # called as each finished cell ends; its OSError is logged, the sweep goes on
        seen.append(cell.id)
        assert state["status"] == "done" and (out / "cells" / cell.id / "result.json").exists()
        if len(seen) == 1:
            raise OSError("disk full")

    states = run_sweep([*cells, broken], out, SweepOptions(progress_s=60), log=lines.append, on_done=on_done)
    assert [states[c.id]["status"] for c in cells] == ["done"] * 4
    assert sorted(seen) == sorted(c.id for c in cells) and any("on_done of" in ln and "disk full" in ln for ln in lines)
    assert states[broken.id]["status"] == "failed" and "method must be one of" in states[broken.id]["error"]
    for c in cells:
        rows = read_csv(_run_dir(out, c.id) / "eval.csv")
        assert [int(r["step"]) for r in rows] == [96] and json.loads((_run_dir(out, c.id) / "final.json").read_text())["step"] == 96
    assert any("FAILED" in ln and broken.id in ln for ln in lines) and any("4/5 done" in ln for ln in lines)
    summary = (out / "summary.md").read_text()
    assert "| cartpole-balance |" in summary and "method must be one of" in summary
    assert {r["variant"] for r in read_csv(out / "results.csv")} == {"tdmpc", "difftori"}
    mtimes = {c.id: (out / "cells" / c.id / "result.json").stat().st_mtime_ns for c in cells}

    lines.clear()  # the same sweep again: nothing runs, the failure is kept
    again = run_sweep([*cells, broken], out, SweepOptions(progress_s=60), log=lines.append)
    assert {c.id: (out / "cells" / c.id / "result.json").stat().st_mtime_ns for c in cells} == mtimes
    assert again[broken.id]["attempts"] == 1 and "4 done before, 1 failed before" in lines[0] and "0 to run" in lines[0]

    retried = run_sweep([broken], out, SweepOptions(retry_failed=True, progress_s=60), log=lines.append, report=False)
    assert retried[broken.id]["status"] == "failed" and retried[broken.id]["attempts"] == 2


def test_killed_cell_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "sweep"
    steps = 960  # 20 episodes of 48 env steps; a checkpoint after every episode
    cell = rl_cell("cartpole-balance", "tdmpc", 1, ["--agent", "tdmpc", "--steps", str(steps), *TINY_RL, "--eval-freq", "480"])
    d = out / "cells" / cell.id
    first: dict = {}
    t = threading.Thread(target=lambda: first.update(run_sweep([cell], out, SweepOptions(progress_s=60), log=lambda m: None, report=False)))
    t.start()
    deadline = time.time() + 300  # generous: a loaded machine starts ray and the run slowly
    while not list(d.glob("run/*/*/*/*/checkpoints/last.pt")) and time.time() < deadline:
        time.sleep(0.05)
    state = json.loads((d / "state.json").read_text())
    assert state["status"] == "running" and not list(d.glob("run/*/*/*/*/final.json")), "the cell ended before it could be killed"
    os.kill(state["pid"], signal.SIGKILL)  # the run's process, as an OOM kill or a lost node would
    t.join(300)
    assert first[cell.id]["status"] == "interrupted" and "signal 9" in first[cell.id]["error"]
    assert read_state(out, cell.id)["status"] == "interrupted"

    second = run_sweep([cell], out, SweepOptions(progress_s=60), log=lambda m: None, report=False)
    assert second[cell.id]["status"] == "done" and second[cell.id]["attempts"] == 2
    run = _run_dir(out, cell.id)
    assert json.loads((d / "state.json").read_text())["resumed_from"] == str(run.relative_to(d))
    assert len(list(d.glob("run/*/*/*/*/config.json"))) == 1  # the same run continued
    assert "--resume" in (d / "log.txt").read_text().split("\n$ ")[-1].splitlines()[0]
    train = [int(r["step"]) for r in read_csv(run / "train.csv")]
    assert train == list(range(48, steps + 1, 48))  # every episode once: nothing lost, nothing repeated
    assert [int(r["step"]) for r in read_csv(run / "eval.csv")] == [480, 960]
