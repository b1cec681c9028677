"""Run directories and metric logging shared by every trainer (RL and IL).

Layout: ``ROOT/<task>/<method>/seed<seed>/<YYYYmmdd-HHMMSS>/`` holding ``config.json``,
``<kind>.csv`` metric files (``train.csv``, ``eval.csv``), TensorBoard events under ``tb/``,
the checkpoint ``checkpoints/last.pt`` (RL and IL alike) and videos under ``videos/``.
Commands that take a run accept the run directory, a checkpoint file, or a folder holding
runs (``runs/door-open/diffusion/seed1``: the newest run below it, see :func:`find_run`).

Resuming: the trainer loads the last checkpoint (at step S) and opens the logger with
``resume_step=S``; rows logged after S (by the interrupted process) are dropped, so the
resumed run neither loses nor duplicates logged data.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from difftori.utils.io import atomic_write_text

__all__ = ["make_run_dir", "new_run_dir", "find_run", "checkpoint_path", "locate_checkpoint", "MetricsLogger", "read_csv", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoints/last.pt"
"""The checkpoint of a run, relative to its directory (RL and IL)."""

_LEGACY_CHECKPOINTS = ("checkpoints/latest.pt",)  # IL runs written before the names were unified


def make_run_dir(root: str | Path, task: str, method: str, seed: int, stamp: str | None = None) -> Path:
    """Create and return ``root/task/method/seed<seed>/<stamp>`` (stamp defaults to now)."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / task / method / f"seed{seed}" / stamp
    suffix = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{stamp}-{suffix}")
        suffix += 1
    candidate.mkdir(parents=True)
    return candidate


@contextlib.contextmanager
def new_run_dir(root: str | Path, task: str, method: str, seed: int, run_dir: str | Path | None = None) -> Iterator[Path]:
    """Create a run directory (``run_dir`` or :func:`make_run_dir`) and remove it again if the block raises.

    Wrap everything between creating the directory and the first training step, so an error
    raised before training starts leaves no half-made run behind. A given ``run_dir`` that
    already exists is kept (only what this call created is removed).
    """
    target = Path(run_dir) if run_dir is not None else Path(root) / task / method / f"seed{seed}" / "x"
    existing = next(p for p in target.absolute().parents if p.exists())  # nothing at or below it is ours
    if run_dir is not None:
        path, created = Path(run_dir), not Path(run_dir).exists()
        path.mkdir(parents=True, exist_ok=True)
    else:
        path, created = make_run_dir(root, task, method, seed), True
    try:
        yield path
    except BaseException:
        if created:
            shutil.rmtree(path, ignore_errors=True)
            parent = path.absolute().parent
            while parent != existing and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()  # the empty task/method/seed folders made for this run
                parent = parent.parent
        raise


def checkpoint_path(run_dir: str | Path) -> Path:
    """The checkpoint file of ``run_dir`` (``checkpoints/last.pt``, or a legacy name if only that exists)."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        for legacy in _LEGACY_CHECKPOINTS:
            if (run_dir / legacy).exists():
                return run_dir / legacy
    return path


def find_run(path: str | Path, need_checkpoint: bool = True, announce: bool = True) -> Path:
    """The run directory meant by ``path``: a run directory, or the newest run in a folder holding runs.

    A run directory holds ``config.json``; below a folder, the run whose directory name (its
    start time) is the latest wins, and ``announce`` prints which one was picked (to stderr).
    With ``need_checkpoint``, only runs that have a checkpoint count.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is not a run directory: it does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is a file; expected a run directory (or a folder holding runs)")

    def ok(run: Path) -> bool:
        return (run / "config.json").exists() and (not need_checkpoint or checkpoint_path(run).exists())

    if (path / "config.json").exists():
        if need_checkpoint and not checkpoint_path(path).exists():
            raise FileNotFoundError(f"{path} has no {CHECKPOINT_NAME} yet (the run wrote no checkpoint)")
        return path
    runs = sorted({c.parent for c in path.rglob("config.json") if ok(c.parent)}, key=lambda r: (r.name, str(r)))
    if not runs:
        what = "run with a checkpoint" if need_checkpoint else "run (no config.json below it)"
        raise FileNotFoundError(f"{path} holds no {what}")
    if announce and len(runs) > 1:
        print(f"{path} holds {len(runs)} runs; using the newest: {runs[-1]}", file=sys.stderr)
    return runs[-1]


def locate_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """``(checkpoint file, its run directory or None)`` for a checkpoint file, a run directory, or a folder of runs."""
    path = Path(path)
    if path.is_dir():
        run = find_run(path)
        return checkpoint_path(run), run
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    run = path.parent.parent
    return path, run if path.parent.name == "checkpoints" and (run / "config.json").exists() else None


def _scalar(v: Any) -> float | int | str:
    if hasattr(v, "item"):
        return v.item()
    return v


def read_csv(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


class MetricsLogger:
    """Append-only CSV files (one per ``kind``) plus TensorBoard scalars.

    ``log(kind, step, metrics)`` accepts tensors (``.item()`` is called here, only when
    logging). Columns are the union of keys seen; the file is rewritten atomically when a
    new column appears, otherwise rows are appended and flushed.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._fields: dict[str, list[str]] = {}
        for path in self.run_dir.glob("*.csv"):
            rows = read_csv(path)
            if resume_step is not None:
                rows = [r for r in rows if r.get("step") in (None, "") or float(r["step"]) <= resume_step]
            kind = path.stem
            self._rows[kind] = rows
            self._fields[kind] = list(rows[0].keys()) if rows else []
            if resume_step is not None:
                self._rewrite(kind)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = resume_step + 1 if resume_step is not None else None
                self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
            except ImportError:  # tensorboard is a core dependency; degrade rather than crash
                self._tb = None

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return list(self._rows.get(kind, []))

    def _rewrite(self, kind: str) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._fields[kind], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self._rows[kind])
        atomic_write_text(self.run_dir / f"{kind}.csv", buf.getvalue())

    def log(self, kind: str, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        rows = self._rows.setdefault(kind, [])
        fields = self._fields.setdefault(kind, [])
        rows.append(row)
        new = [k for k in row if k not in fields]
        path = self.run_dir / f"{kind}.csv"
        if new or not path.exists():
            fields.extend(new)
            self._rewrite(kind)
        else:
            with path.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore").writerow(row)
                fh.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{kind}/{k}", v, int(step))
        return row

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
