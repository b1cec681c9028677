"""Finished cells as small committable records, so a grid spread over several machines or sessions
never re-runs a cell whose result is already committed.

``archive_done(grid, out, dest)`` copies each finished cell's records (``cell.json``, ``state.json``,
``result.json``) and its run's logs (``config.json``, ``train.csv``, ``eval.csv``, ``final.json``; no
checkpoints, TensorBoard events or videos) to ``dest/<cell id>/``, replacing an earlier record of that cell (a cell
run again leaves no stale run directory beside its new one). ``restore(grid, out, dest)`` copies
them back into ``out/cells/<cell id>/`` where that cell has no directory yet: the runner then sees it
done and reports read it as if it had run here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from difftori.sweep.runner import cell_dir, read_state
from difftori.utils.io import atomic_write_bytes

__all__ = ["archive_done", "restore", "RUN_FILES"]

RUN_FILES = ("config.json", "train.csv", "eval.csv", "final.json", "runtime.json")
"""The files of a run directory an archive keeps (``runtime.json``: where and at what precision each segment ran)."""
_CELL_FILES = ("cell.json", "state.json", "result.json")


def _copy(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, src.read_bytes())  # small log files


def archive_done(grid: Iterable, out: Path, dest: Path) -> list[str]:
    """Archive every finished cell of ``grid`` (run under ``out``) into ``dest``; returns the archived ids."""
    done = []
    for c in grid:
        state = read_state(out, c.id)
        if state.get("status") != "done" or not state.get("run_dir"):
            continue
        src, dst = cell_dir(out, c.id), Path(dest) / c.id
        run = (src / state["run_dir"]).resolve()
        files = {dst / name: src / name for name in _CELL_FILES if (src / name).exists()}
        files |= {dst / state["run_dir"] / name: run / name for name in RUN_FILES if (run / name).exists()}
        for to, frm in files.items():
            _copy(frm, to)
        _prune(dst, set(files))  # only once the new record is complete: an interruption loses nothing
        done.append(c.id)
    return done


def _prune(root: Path, keep: set[Path]) -> None:
    """Remove the files under ``root`` not in ``keep`` (an earlier run's record), then the folders left empty."""
    for p in sorted(root.rglob("*"), reverse=True):
        if p.is_file() and p not in keep:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def restore(grid: Iterable, out: Path, dest: Path) -> list[str]:
    """Restore archived cells of ``grid`` that have no directory under ``out``; returns the restored ids."""
    restored = []
    for c in grid:
        src, dst = Path(dest) / c.id, cell_dir(out, c.id)
        if not (src / "result.json").exists() or (dst / "result.json").exists() or (dst / "state.json").exists():
            continue
        for p in sorted(src.rglob("*")):
            if p.is_file():
                _copy(p, dst / p.relative_to(src))
        restored.append(c.id)
    return restored
