"""Run directories and metric logging shared by every trainer (RL and IL).

Layout: ``ROOT/<task>/<method>/seed<seed>/<YYYYmmdd-HHMMSS>/`` holding ``config.json``,
``<kind>.csv`` metric files (``train.csv``, ``eval.csv``), TensorBoard events under ``tb/``,
checkpoints under ``checkpoints/`` and videos under ``videos/``.

Resuming: the trainer loads the last checkpoint (at step S) and opens the logger with
``resume_step=S``; rows logged after S (by the interrupted process) are dropped, so the
resumed run neither loses nor duplicates logged data.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Mapping

from difftori.utils.io import atomic_write_text

__all__ = ["make_run_dir", "MetricsLogger", "read_csv"]


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
