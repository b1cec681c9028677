"""Results of one or several sweep directories, regenerated from what is on disk.

``results.csv`` (tidy: one row per cell and evaluation step with ``task``, ``variant``, ``seed``,
``step``, the metric, ``obs_type`` for IL, the cell's status and id, and the config columns: method,
budget and every config field that differs between cells), ``summary.md`` (final metric, mean +- std
over seeds per task and variant, and the average over tasks; failed and unfinished cells with their
errors), ``curves.png`` (learning curves per task, seeds shaded) and ``final.png`` (final-result bars).
Cells found in several directories (a merged report) count once, a finished copy first.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from difftori.sweep.grid import Cell
from difftori.sweep.runner import cell_dir, load_cells, read_state
from difftori.utils.config import flat_config
from difftori.utils.io import atomic_write_text
from difftori.utils.runs import read_csv

__all__ = ["Record", "collect", "tidy", "summary_markdown", "write_report", "METRIC"]

METRIC = {"rl": "episode_return", "il": "success_rate"}
"""The metric reported for each area."""

_SKIP_COLUMNS = {"task", "seed", "obs_type", "run_root", "progress", "num_threads", "device", "dataset", "base_policy", "label"}


@dataclass
class Record:
    """One training cell as found on disk."""

    cell: Cell
    state: dict[str, Any]
    run_dir: Path | None
    evals: list[dict[str, str]]

    @property
    def status(self) -> str:
        return self.state["status"]

    @property
    def panel(self) -> str:
        return f"{self.cell.task} ({self.cell.obs_type})" if self.cell.obs_type else self.cell.task

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        key = METRIC[self.cell.area]
        pts = sorted((float(r["step"]), float(r[key])) for r in self.evals if r.get(key) not in (None, ""))
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

    def final(self) -> float | None:
        """The last evaluation of a finished cell (None otherwise)."""
        steps, vals = self.points()
        return float(vals[-1]) if self.status == "done" and len(vals) else None


def _run_dir(d: Path, state: dict[str, Any]) -> Path | None:
    if state.get("run_dir"):
        return (d / state["run_dir"]).resolve()
    runs = sorted({p.parent for p in (d / "run").rglob("eval.csv")}, key=lambda r: (r.name, str(r))) if (d / "run").exists() else []
    return runs[-1] if runs else None  # an unfinished cell: its newest run so far


def collect(dirs: list[str | Path]) -> list[Record]:
    """Training cells (not demo collection) of every sweep directory in ``dirs``, each cell id once."""
    found: dict[str, Record] = {}
    for out in map(Path, dirs):
        if not (out / "cells").is_dir():
            raise FileNotFoundError(f"{out} is not a sweep directory (no cells/ folder)")
        for cell in load_cells(out):
            if cell.area not in METRIC:  # demo collection; script cells (their benchmark writes its own tables)
                continue
            state = read_state(out, cell.id)
            run = _run_dir(cell_dir(out, cell.id), state)
            rec = Record(cell, state, run, read_csv(run / "eval.csv") if run else [])
            old = found.get(cell.id)
            if old is None or (old.status != "done" and rec.status == "done"):
                found[cell.id] = rec
    records = sorted(found.values(), key=lambda r: (r.cell.task, r.cell.obs_type or "", r.cell.variant, r.cell.seed))
    areas = {r.cell.area for r in records}
    if len(areas) > 1:
        raise ValueError("these sweep directories hold both RL and IL cells; report them separately")
    return records


def tidy(records: list[Record]) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)`` of ``results.csv``."""
    if not records:
        return [], []
    area = records[0].cell.area
    metric = METRIC[area]
    flats = [flat_config(r.cell.config) for r in records]
    method = "agent" if area == "rl" else "policy"
    keys = sorted({k for f in flats for k in f} - _SKIP_COLUMNS - {method, "steps"})
    varying = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
    config_cols = [method, "steps", *varying]
    head = ["task", *(["obs_type"] if area == "il" else []), "variant", "seed", "step", metric, "status", "cell_id"]
    rows = []
    for r, f in zip(records, flats):
        steps, vals = r.points()
        base = {"task": r.cell.task, "obs_type": r.cell.obs_type, "variant": r.cell.variant, "seed": r.cell.seed,
                "status": r.status, "cell_id": r.cell.id, **{k: f.get(k) for k in config_cols}}
        for s, v in zip(steps, vals):
            rows.append({**base, "step": int(s), metric: v})
    return head + config_cols, rows


def _mean_std(xs: list[float]) -> str:
    return f"{np.mean(xs):.3g} ± {np.std(xs):.2g} (n={len(xs)})" if xs else "-"


def finals(records: list[Record]) -> dict[str, dict[str, list[float]]]:
    """``{panel: {variant: [final metric per finished seed]}}``."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        v = r.final()
        if v is not None:
            out[r.panel][r.cell.variant].append(v)
    return out


def summary_markdown(records: list[Record]) -> str:
    """Final metric per task and variant (mean ± std over seeds), the average over tasks, and the cells that did not finish."""
    if not records:
        return "# Sweep results\n\nNo training cells.\n"
    metric = METRIC[records[0].cell.area]
    variants = list(dict.fromkeys(r.cell.variant for r in records))
    panels = list(dict.fromkeys(r.panel for r in records))
    table = finals(records)
    counts = defaultdict(int)
    for r in records:
        counts[r.status] += 1
    lines = [
        "# Sweep results", "",
        f"{len(records)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ". "
        f"Each entry: the final `{metric}` (last evaluation of each finished cell), mean ± std over seeds (n seeds).", "",
        "| task | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]  # fmt: skip
    for p in panels:
        lines.append(f"| {p} | " + " | ".join(_mean_std(table[p].get(v, [])) for v in variants) + " |")
    avg = []
    for v in variants:
        means = [float(np.mean(table[p][v])) for p in panels if table[p].get(v)]
        avg.append("-" if not means else f"{np.mean(means):.3g}" + ("" if len(means) == len(panels) else f" ({len(means)} of {len(panels)} tasks)"))
    lines.append("| **average over tasks** | " + " | ".join(avg) + " |")
    bad = [r for r in records if r.status != "done"]
    if bad:
        lines += ["", "## Not finished", "", "| cell | status | error |", "|---|---|---|"]
        for r in bad:
            err = str(r.state.get("error", "")).replace("|", "\\|")
            lines.append(f"| {r.cell.id} | {r.status} | {err} |")
    return "\n".join(lines) + "\n"


def write_report(dirs: list[str | Path], out: str | Path) -> list[Path]:
    """Write ``results.csv``, ``summary.md``, ``curves.png`` and ``final.png`` for the cells of ``dirs`` into ``out``."""
    from difftori.utils.plotting import Curve, plot_bars, plot_curves

    records = collect(dirs)
    if not records:
        raise ValueError(f"no training cells under {', '.join(map(str, dirs))}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cols, rows = tidy(records)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    written = [out / "results.csv", out / "summary.md"]
    atomic_write_text(written[0], buf.getvalue())
    atomic_write_text(written[1], summary_markdown(records))
    metric = METRIC[records[0].cell.area]
    curves = []
    for r in records:
        steps, vals = r.points()
        if len(steps):
            curves.append(Curve(r.panel, r.cell.variant, metric, steps, vals))
    if curves:
        written.append(plot_curves(curves, out / "curves.png"))
    table = finals(records)
    if table:
        groups = {p: dict(v) for p, v in table.items()}
        variants = {v for g in groups.values() for v in g}
        avg = {v: [float(np.mean(groups[p][v])) for p in groups if groups[p].get(v)] for v in variants}
        if len(groups) > 1:
            groups["average over tasks"] = avg
        written.append(plot_bars(groups, out / "final.png", ylabel=f"final {metric}"))
    return written
