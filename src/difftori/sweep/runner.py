"""Run the cells of a grid as Ray tasks: local by default, the same on a cluster; resumable and idempotent.

Each cell runs the ``difftori`` CLI (a ``script`` cell: its Python script) in its own subprocess inside a Ray task
(one process per cell, ``--num-threads`` = CPUs per run), so a crash or kill of one cell never takes down the sweep. On disk,
``OUT/cells/<cell id>/`` holds ``cell.json`` (what the cell is), ``state.json`` (running / done /
failed / interrupted, with the error), ``log.txt`` (every attempt's output), ``run/`` (the run root of
the CLI) and, once the cell finished, ``result.json``. Running the same grid again skips cells with a
result, resumes the others from their checkpoint (``--resume``), and retries failed cells only with
``retry_failed``. ``OUT`` must be on a filesystem every node of the cluster sees.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from difftori.sweep.grid import Cell
from difftori.utils.config import ConfigError, check
from difftori.utils.io import atomic_write_json

__all__ = ["SweepOptions", "run_sweep", "load_cells", "cell_dir", "read_state", "RAY_HINT", "require_ray"]

RAY_HINT = "difftori sweep runs on Ray, which is not installed: pip install 'difftori[sweep]' (or: pip install ray)"


@dataclass
class SweepOptions:
    """How a grid runs: where (local or an existing Ray cluster), with which resources, what is redone."""

    address: Optional[str] = None
    """Join this Ray cluster (HOST:PORT of `ray start --head`) instead of starting a local one; default: $RAY_ADDRESS if set."""
    num_cpus: Optional[int] = None
    """Local cluster only: CPUs it may use; None: all of the machine's."""
    cpus_per_run: float = 1.0
    """CPUs reserved per cell; also its torch threads (rounded up)."""
    gpus_per_run: Optional[float] = None
    """GPUs reserved per cell (fractions share a GPU, e.g. 0.25); None: 1 when the cluster has GPUs, else 0 (CPU runs)."""
    max_parallel: Optional[int] = None
    """At most this many cells at once; None: as many as the cluster's resources allow."""
    retry_failed: bool = False
    """Run cells that failed in an earlier sweep again (resuming from their checkpoint if they have one)."""
    fresh: bool = False
    """Start every cell over (earlier results and runs are kept aside in the cell folder, not deleted)."""
    timeout_s: Optional[float] = None
    """Stop a cell after this many seconds; it is marked interrupted and resumes at the next sweep."""
    progress_s: float = 30.0
    """Print a progress line at least this often (and whenever a cell finishes)."""

    def __post_init__(self) -> None:
        check(self.num_cpus is None or self.num_cpus >= 1, f"num_cpus must be >= 1, got {self.num_cpus}")
        check(self.cpus_per_run > 0, f"cpus_per_run must be > 0, got {self.cpus_per_run}")
        check(self.gpus_per_run is None or self.gpus_per_run >= 0, f"gpus_per_run must be >= 0, got {self.gpus_per_run}")
        check(self.max_parallel is None or self.max_parallel >= 1, f"max_parallel must be >= 1, got {self.max_parallel}")
        check(self.timeout_s is None or self.timeout_s > 0, f"timeout_s must be > 0, got {self.timeout_s}")
        check(self.progress_s > 0, f"progress_s must be > 0, got {self.progress_s}")


def require_ray():
    """``import ray``, or an ImportError with the install hint."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_HINT) from None
    return ray


# ----------------------------------------------------------------------------------- disk state
def cell_dir(out: Path, cell_id: str) -> Path:
    return Path(out) / "cells" / cell_id


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:  # a file written by a killed process before atomic writes: treat as absent
        return None


def read_state(out: Path, cell_id: str) -> dict[str, Any]:
    """``state.json`` of a cell with ``result.json`` folded in; status ``pending`` if the cell never ran."""
    d = cell_dir(out, cell_id)
    state = _read_json(d / "state.json") or {"status": "pending"}
    result = _read_json(d / "result.json")
    if result is not None:
        state = {**state, **result, "status": "done"}
    return state


def load_cells(out: Path) -> list[Cell]:
    """Every cell recorded under a sweep directory (``cells/*/cell.json``)."""
    cells = []
    for path in sorted((Path(out) / "cells").glob("*/cell.json")):
        data = _read_json(path)
        if data is not None:
            cells.append(Cell.from_json(data))
    return cells


# ----------------------------------------------------------------------------------- one cell (inside a Ray task)
def _die_with_parent() -> None:
    """In the child: get SIGTERM when the Ray worker that started it dies (Linux), so a killed sweep leaves no orphans."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child may outlive a killed worker
        pass


def _resumable_run(run_root: Path) -> Path | None:
    """The newest run directory under ``run_root`` with a checkpoint; runs that never wrote one are removed."""
    from difftori.utils.runs import checkpoint_path

    runs = sorted({p.parent for p in run_root.rglob("config.json")}, key=lambda r: (r.name, str(r))) if run_root.exists() else []
    with_ckpt = [r for r in runs if checkpoint_path(r).exists()]
    for r in runs:
        if r not in with_ckpt:  # killed before its first checkpoint: nothing to resume, and it would confuse reports
            shutil.rmtree(r, ignore_errors=True)
    return with_ckpt[-1] if with_ckpt else None


def _volatile_options(options: list[str]) -> list[str]:
    """The ``--flag value`` pairs of ``options`` that set a :data:`~difftori.sweep.grid._VOLATILE_NESTED` field or
    one with :data:`~difftori.sweep.grid.ID_ALIASES` (how a run computes, not what: a resumed run follows the spec)."""
    from difftori.sweep.grid import _VOLATILE_NESTED, ID_ALIASES

    out = []
    for flag, value in zip(options, options[1:]):
        if flag.startswith("--") and flag[2:].replace("-", "_") in {*_VOLATILE_NESTED, *ID_ALIASES}:
            out += [flag, value]
    return out


def _argv(spec: dict[str, Any], d: Path, dep_paths: dict[str, str], threads: int, device: str) -> tuple[list[str], Path | None]:
    """Arguments after ``python`` of the cell's next attempt and the run it resumes (None: a new run)."""
    # train / collect cells know the roles dataset and base_policy; a script cell gets every role as --<role> PATH
    roles = sorted(dep_paths) if spec["area"] == "script" else [r for r in ("dataset", "base_policy") if r in dep_paths]
    paths = [x for role in roles for x in (f"--{role.replace('_', '-')}", dep_paths[role])]
    if spec["area"] == "script":  # no resume: an unfinished attempt's folder is discarded (see grid.script_cell)
        if (d / "run").exists():
            shutil.rmtree(d / "run")
        return [*spec["options"], *paths, "--run-root", str(d / "run"), "--num-threads", str(threads), "--device", device], None
    cli = ["-m", "difftori.cli"]
    runtime = ["--progress", "false"]
    if spec["area"] == "collect":
        return [*cli, "il", "collect", *spec["options"], "--out", str(d / "demos.zarr"), "--overwrite", *runtime], None
    resume = _resumable_run(d / "run")
    runtime += ["--num-threads", str(threads), "--device", device]
    if resume is not None:
        # how-not-what options (left out of the cell id) follow the current spec on resume too
        how = _volatile_options(spec["options"])
        return [*cli, spec["area"], "train", "--resume", str(resume), "--steps", str(spec["steps"]), *how, *runtime], resume
    return [*cli, spec["area"], "train", *spec["options"], *paths, "--run-root", str(d / "run"), *runtime], None


def _error_line(text: str) -> str:
    """The most telling line of a failed attempt's output: the CLI's error line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("difftori: error:") or "Error" in ln.split(":", 1)[0]:
            return ln
    return lines[-1] if lines else "no output"


def execute_cell(spec: dict[str, Any], out: str, dep_paths: dict[str, str], threads: int, device: str,
                 timeout_s: float | None, node_id: str = "") -> dict[str, Any]:
    """Run one cell to its end (or until killed / timed out) and record the outcome; returns its state.

    Never raises for a failed run: the error is recorded in ``state.json`` and returned.
    """
    d = cell_dir(Path(out), spec["id"])
    host = socket.gethostname()
    if not (d / "cell.json").exists():
        return {"status": "failed", "error": f"{d} is not visible on node {host}: the sweep directory must be on a filesystem every node shares"}
    previous = read_state(Path(out), spec["id"])
    argv, resumed = _argv(spec, d, dep_paths, threads, device)
    cmd = [sys.executable, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env.setdefault("MUJOCO_GL", "egl")
    t0 = time.time()
    with (d / "log.txt").open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        start = log.tell()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        state = {"status": "running", "attempts": int(previous.get("attempts", 0)) + 1, "host": host, "node_id": node_id,
                 "pid": proc.pid, "started": t0, "resumed_from": str(resumed.relative_to(d)) if resumed else None,
                 "wall_s_before": float(previous.get("wall_s_before", 0.0))}
        atomic_write_json(d / "state.json", state)
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.terminate()
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    text = (d / "log.txt").read_text(errors="replace")[start:]
    wall = time.time() - t0
    run_dirs = [ln.split("run directory:", 1)[1].strip() for ln in text.splitlines() if ln.startswith("run directory:")]
    state.update(ended=time.time(), wall_s=wall, returncode=rc, pid=None)
    if rc == 0:
        result: dict[str, Any] = {"node_id": node_id, "host": host, "wall_s": wall + float(previous.get("wall_s_before", 0.0))}
        if spec["area"] == "collect":
            result["dataset"] = "demos.zarr"
        elif run_dirs:
            result["run_dir"] = os.path.relpath(run_dirs[-1], d)
        else:
            state.update(status="failed", error="the run printed no run directory")
            atomic_write_json(d / "state.json", state)
            return state
        state["status"] = "done"
        atomic_write_json(d / "state.json", state)
        atomic_write_json(d / "result.json", result)  # last: its existence means done
        return {**state, **result}
    # Time already spent carries over to the resumed attempt (wall_s of the result = the whole run's).
    state["wall_s_before"] = float(previous.get("wall_s_before", 0.0)) + wall
    if timed_out:
        state.update(status="interrupted", error=f"timeout after {timeout_s:g} s (resumes at the next sweep)")
    elif rc < 0:
        state.update(status="interrupted", error=f"killed by signal {-rc} (resumes at the next sweep)")
    else:
        state.update(status="failed", error=f"exit {rc}: {_error_line(text)}")
    atomic_write_json(d / "state.json", state)
    return state


# ----------------------------------------------------------------------------------- the driver
def _init_ray(ray, opts: SweepOptions) -> bool:
    """Connect to (or start) a cluster; True if this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    import logging

    if address:
        if opts.num_cpus is not None:
            raise ConfigError("--num-cpus sizes a local cluster; with --address the cluster's own resources are used")
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        # "local": a new cluster of this process, never one that `ray start` left running on the machine
        ray.init(address="local", num_cpus=opts.num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


def _check_resources(ray, cpus: float, gpus: float) -> None:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not any(n["Resources"].get("CPU", 0) >= cpus for n in nodes):
        most = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        raise ConfigError(f"--cpus-per-run {cpus:g}: no node of the cluster has that many CPUs (the largest has {most:g})")
    if gpus > 0 and not any(n["Resources"].get("GPU", 0) >= min(gpus, 1.0) for n in nodes):
        raise ConfigError(f"--gpus-per-run {gpus:g}: the cluster has no GPU; use --gpus-per-run 0 to run on CPUs")


def _started_since(out: Path, cell_id: str, t0: float) -> bool:
    """Whether the cell's task has started running in this sweep (its state.json says so)."""
    st = _read_json(cell_dir(out, cell_id) / "state.json") or {}
    return st.get("status") == "running" and float(st.get("started", 0)) >= t0 - 1


def _fmt_s(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else (f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s")


def prepare(cells: list[Cell], out: Path, opts: SweepOptions) -> dict[str, str]:
    """Write every ``cell.json`` and return each cell's status before this sweep (after ``fresh``)."""
    ids = [c.id for c in cells]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"the grid has duplicate cells (same config): {dup}")
    known = set(ids)
    for c in cells:
        missing = [d for d in c.deps.values() if d not in known]
        if missing:
            raise ConfigError(f"cell {c.id} needs {missing}, which are not in the grid")
    status = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for c in cells:
        d = cell_dir(out, c.id)
        d.mkdir(parents=True, exist_ok=True)
        if opts.fresh:
            for name in ("result.json", "state.json", "run", "demos.zarr"):
                if (d / name).exists():
                    (d / name).rename(d / f"{name}.old-{stamp}")
        status[c.id] = read_state(out, c.id)["status"]
        if status[c.id] != "done" or not (d / "cell.json").exists():
            # a finished cell keeps the cell.json it ran with (volatile options may have changed since)
            atomic_write_json(d / "cell.json", c.to_json())
    return status


def run_sweep(cells: list[Cell], out: str | Path, opts: SweepOptions | None = None, log: Callable[[str], None] | None = None,
              report: bool = True, on_done: Callable[[Cell, dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run ``cells`` (skipping finished ones, resuming interrupted ones) and return each cell's final state by id.

    With ``report``, ``results.csv``, ``summary.md`` and the plots are (re)written in ``out`` at the end.
    ``on_done(cell, state)`` runs as each cell of this sweep finishes (e.g. to archive it at once, so that a
    sweep killed later keeps it); an ``OSError`` it raises is logged, not fatal.
    """
    opts = opts or SweepOptions()
    log = log or (lambda msg: print(msg, flush=True))
    ray = require_ray()
    out = Path(out).absolute()
    by_id = {c.id: c for c in cells}
    owns = _init_ray(ray, opts)  # before writing anything: a bad address fails here
    try:
        resources = ray.cluster_resources()
        gpus = opts.gpus_per_run if opts.gpus_per_run is not None else (1.0 if resources.get("GPU", 0) > 0 else 0.0)
        _check_resources(ray, opts.cpus_per_run, gpus)
        before = prepare(cells, out, opts)
        atomic_write_json(out / "sweep.json", {"cells": [c.id for c in cells], "argv": sys.argv, "date": time.strftime("%Y-%m-%d %H:%M:%S")})
        threads = max(1, int(-(-opts.cpus_per_run // 1)))
        device = "cuda" if gpus > 0 else "cpu"

        @ray.remote(num_cpus=opts.cpus_per_run, num_gpus=gpus, max_retries=2)
        def task(spec, out_s, dep_paths):
            return execute_cell(spec, out_s, dep_paths, threads, device, opts.timeout_s, ray.get_runtime_context().get_node_id())

        final: dict[str, dict[str, Any]] = {}
        pending: list[str] = []
        for c in cells:
            st = before[c.id]
            if st == "done" or (st == "failed" and not opts.retry_failed):
                final[c.id] = read_state(out, c.id)
            else:
                pending.append(c.id)
        skipped = sum(1 for s in final.values() if s["status"] == "done")
        old_failed = [i for i, s in final.items() if s["status"] == "failed"]
        log(f"[sweep] {len(cells)} cells in {out}: {skipped} done before, {len(old_failed)} failed before"
            f"{' (rerun them with --retry-failed)' if old_failed else ''}, {len(pending)} to run "
            f"({opts.cpus_per_run:g} CPU{f', {gpus:g} GPU' if gpus else ''} each; cluster: {resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs)")
        running: dict[Any, str] = {}
        t0, last = time.time(), 0.0
        finished_now = 0

        def dep_state(cid: str) -> str:
            return final[cid]["status"] if cid in final else "waiting"

        while pending or running:
            for cid in list(pending):
                if opts.max_parallel is not None and len(running) >= opts.max_parallel:
                    break
                deps = by_id[cid].deps
                states = {role: dep_state(dep) for role, dep in deps.items()}
                if any(s not in ("done", "waiting") for s in states.values()):
                    bad = next(dep for role, dep in deps.items() if states[role] not in ("done", "waiting"))
                    # A dependency that failed fails this cell too (both rerun with --retry-failed); one that was
                    # interrupted leaves it interrupted (both resume at the next sweep, nothing recorded).
                    final[cid] = {"status": final[bad]["status"], "error": f"needs {bad}, which {final[bad]['status']}"}
                    if final[bad]["status"] == "failed":
                        atomic_write_json(cell_dir(out, cid) / "state.json", final[cid])
                    pending.remove(cid)
                    continue
                if any(s == "waiting" for s in states.values()):
                    continue
                dep_paths = {}
                for role, dep in deps.items():
                    res = final[dep]
                    key = "dataset" if by_id[dep].area == "collect" else "run_dir"
                    dep_paths[role] = str((cell_dir(out, dep) / res[key]).resolve())
                running[task.remote(by_id[cid].to_json(), str(out), dep_paths)] = cid
                pending.remove(cid)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=min(opts.progress_s, 5.0)) if running else ([], [])
            for ref in ready:
                cid = running.pop(ref)
                try:
                    st = ray.get(ref)
                except (ray.exceptions.RayError, OSError) as exc:  # the worker or node died: resume next time
                    st = {"status": "interrupted", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                final[cid] = st
                finished_now += 1
                tag = {"done": "done  ", "failed": "FAILED", "interrupted": "INTERR"}.get(st["status"], st["status"])
                extra = f" ({_fmt_s(st.get('wall_s', 0))})" if st["status"] == "done" else f": {st.get('error', '')}"
                log(f"[sweep] {tag} {cid}{extra}")
                if on_done is not None and st["status"] == "done":
                    try:
                        on_done(by_id[cid], st)
                    except OSError as exc:
                        log(f"[sweep] on_done of {cid} failed: {type(exc).__name__}: {exc}")
            now = time.time()
            if ready or now - last >= opts.progress_s:
                last = now
                done = sum(1 for s in final.values() if s["status"] == "done")
                failed = sum(1 for s in final.values() if s["status"] == "failed")
                left = len(pending) + len(running)
                started = sum(1 for cid in running.values() if _started_since(out, cid, t0))
                eta = f"ETA {_fmt_s(left * (now - t0) / finished_now)}" if finished_now and left else ("ETA ?" if left else "")
                log(f"[sweep] {done}/{len(cells)} done, {started} running, {len(running) - started} queued, {failed} failed, "
                    f"{len(pending)} waiting for others; {eta}".rstrip("; "))
    finally:
        if owns:
            ray.shutdown()
    if report:
        from difftori.sweep.report import write_report

        try:
            paths = write_report([out], out)
            log(f"[sweep] wrote {', '.join(p.name for p in paths)} in {out}")
        except ValueError as exc:  # nothing evaluated yet (e.g. every cell failed): the states say why
            log(f"[sweep] no report: {exc}")
    bad = {i: s for i, s in final.items() if s["status"] != "done"}
    for cid, st in bad.items():
        log(f"[sweep] {st['status']}: {cid}: {st.get('error', '')}")
    return final
