"""Learning curves of one or many runs (mean and spread over seeds, grouped by task and variant) and result bars."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difftori.utils.config import flat_config
from difftori.utils.runs import read_csv

__all__ = ["find_runs", "plot_runs", "plot_learning_curve", "Curve", "aggregate", "plot_curves", "plot_bars", "run_variants", "METRICS"]

METRICS = ("episode_return", "success_rate")
"""The headline metric of an eval.csv: RL runs log episode_return, IL runs success_rate."""

_NOT_A_VARIANT = {"seed", "run_root", "progress", "num_threads", "device", "dataset", "base_policy", "video", "label", "task",
                  "agent", "policy", "obs_type"}
"""Config fields that never distinguish variants in a plot (the seed is what the band spreads over)."""


@dataclass
class Curve:
    """One run's evaluations: what panel and variant it belongs to, and its (step, value) points."""

    panel: str
    variant: str
    metric: str
    steps: np.ndarray
    values: np.ndarray


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (those holding ``eval.csv``) at or below each path."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such run directory: {p}")
        runs.extend(sorted({c.parent for c in ([p / "eval.csv"] if (p / "eval.csv").exists() else p.rglob("eval.csv"))}))
    if not runs:
        raise FileNotFoundError(f"no eval.csv found under {', '.join(map(str, paths))}")
    return runs


def run_variants(configs: list[dict]) -> list[str]:
    """A variant name per run config: ``method-label`` if labelled, else the method plus the config fields
    (other than the seed and runtime fields) that differ between runs of the same task and method."""
    flats = [flat_config(c) for c in configs]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, f in enumerate(flats):
        groups[(f.get("task"), f.get("agent") or f.get("policy"), f.get("obs_type"))].append(i)
    names = [""] * len(configs)
    for (_, method, _), idx in groups.items():
        keys = sorted({k for i in idx for k in flats[i]} - _NOT_A_VARIANT)
        differ = [k for k in keys if len({json.dumps(flats[i].get(k), default=str) for i in idx}) > 1]
        for i in idx:
            f = flats[i]
            method_name = str(method or "run")
            if f.get("label"):
                names[i] = f"{method_name}-{f['label']}"
            elif differ:
                names[i] = method_name + " " + ", ".join(f"{k}={f.get(k)}" for k in differ[:4]) + (" ..." if len(differ) > 4 else "")
            else:
                names[i] = method_name
    return names


def _run_config(run: Path) -> dict:
    path = run / "config.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    parts = run.parts  # ROOT/task/method/seed<s>/<time>
    return {"task": parts[-4] if len(parts) >= 4 else "task", "agent": parts[-3] if len(parts) >= 3 else "run"}


def _run_label(run: Path) -> tuple[str, str]:
    cfg = _run_config(run)
    method = cfg.get("agent") or cfg.get("policy") or cfg.get("method") or "run"
    return str(cfg.get("task", "task")), f"{method}-{cfg['label']}" if cfg.get("label") else str(method)


def _floats(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "") and r.get("step") not in (None, "")]
    pts.sort()
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def aggregate(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, std, n)`` over runs: each run counts only between its first and last evaluation
    (linear interpolation between its own points, never extrapolated); ``std`` is NaN where n < 2."""
    grid = np.unique(np.concatenate([c.steps for c in curves]))
    stack = np.full((len(curves), len(grid)), np.nan)
    for i, c in enumerate(curves):
        inside = (grid >= c.steps[0]) & (grid <= c.steps[-1])
        stack[i, inside] = np.interp(grid[inside], c.steps, c.values)
    n = np.sum(~np.isnan(stack), axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.array([np.nanmean(col) if k else np.nan for col, k in zip(stack.T, n)])
        std = np.array([np.nanstd(col) if k >= 2 else np.nan for col, k in zip(stack.T, n)])
    return grid, mean, std, n


def _save(fig, out: str | Path, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(out)
    return out


def _axes(n: int, width: float = 5.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def plot_curves(curves: list[Curve], out: str | Path, sparse: int = 20) -> Path:
    """One panel per (panel, metric), one line per variant: the mean over its runs where they have data, a
    band of +-1 std where at least two runs do, markers when a curve has <= ``sparse`` points, and the
    number of runs at every point where fewer than all of the variant's runs contribute."""
    if not curves:
        raise ValueError("nothing to plot")
    panels: dict[tuple[str, str], dict[str, list[Curve]]] = defaultdict(lambda: defaultdict(list))
    for c in curves:
        panels[(c.panel, c.metric)][c.variant].append(c)
    fig, axes = _axes(len(panels))
    for ax, ((panel, metric), variants) in zip(axes, sorted(panels.items())):
        for k, (variant, runs) in enumerate(sorted(variants.items())):
            steps, mean, std, n = aggregate(runs)
            color = f"C{k % 10}"
            marker = "o" if len(steps) <= sparse else None
            ax.plot(steps, mean, color=color, marker=marker, ms=4, label=f"{variant} (n={len(runs)})")
            if np.any(n >= 2):
                ax.fill_between(steps, mean - std, mean + std, where=n >= 2, color=color, alpha=0.2, lw=0)
            for x, y, m in zip(steps, mean, n):
                if m < len(runs):
                    ax.annotate(f"n={m}", (x, y), textcoords="offset points", xytext=(2, 4), fontsize=7, color=color)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def plot_bars(groups: dict[str, dict[str, list[float]]], out: str | Path, ylabel: str) -> Path:
    """Grouped bars: ``groups[group][variant]`` = final values over seeds; bar = mean, error bar = std, dots = seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not groups:
        raise ValueError("nothing to plot")
    variants = sorted({v for g in groups.values() for v in g})
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.5 * len(groups) * len(variants)), 3.8))
    for k, v in enumerate(variants):
        for j, g in enumerate(groups):
            vals = groups[g].get(v)
            if not vals:
                continue
            x = j - 0.4 + width * (k + 0.5)
            ax.bar(x, np.mean(vals), width, yerr=np.std(vals) if len(vals) > 1 else None, color=f"C{k % 10}", capsize=3,
                   label=v if j == min(i for i, gg in enumerate(groups) if groups[gg].get(v)) else None)
            ax.plot([x] * len(vals), vals, "k.", ms=3)
    ax.set_xticks(range(len(groups)), list(groups), rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def plot_runs(paths: list[str | Path], out: str | Path, metric: str | None = None, warn=None) -> Path:
    """Plot each run's ``metric`` (default: ``episode_return`` for RL, ``success_rate`` for IL) vs step.

    One panel per task (and IL obs type) and metric; runs are grouped into variants by label or, without
    one, by the config fields in which they differ (never pooled across configs); run directories that
    cannot be plotted are named through ``warn`` (default: a line on stderr).
    """
    warn = warn or (lambda msg: print(f"difftori plot: {msg}", file=sys.stderr))
    found, configs = [], []
    for run in find_runs(paths):
        rows = read_csv(run / "eval.csv")
        if not rows:
            warn(f"skipped {run}: eval.csv has no rows yet")
            continue
        key = metric or next((m for m in METRICS if m in rows[0]), None)
        if key is None or key not in rows[0]:
            warn(f"skipped {run}: eval.csv has no column {metric or ' or '.join(METRICS)} (it has {', '.join(rows[0])})")
            continue
        steps, vals = _floats(rows, key)
        if not len(steps):
            warn(f"skipped {run}: no {key} values")
            continue
        found.append((run, key, steps, vals))
        configs.append(_run_config(run))
    if not found:
        raise ValueError(f"no run has eval rows with metric {metric or ' or '.join(METRICS)}")
    curves = []
    for (run, key, steps, vals), cfg, variant in zip(found, configs, run_variants(configs)):
        panel = str(cfg.get("task", "task")) + (f" ({cfg['obs_type']})" if cfg.get("policy") and cfg.get("obs_type") else "")
        curves.append(Curve(panel, variant, key, steps, vals))
    return plot_curves(curves, out)


def plot_learning_curve(
    run_dir: str | Path, out: str | Path, baseline: tuple[str, float, float] | None = None,
    marker: tuple[str, float] | None = None,
) -> Path | None:
    """One RL run's return vs env step: every training episode, the evaluations (mean +- std), an
    optional ``baseline = (label, mean, std)`` (e.g. the random policy) as a horizontal band, and an
    optional ``marker = (label, env step)`` as a vertical line (e.g. where DiffTORI starts acting).

    Returns None when the run has logged nothing yet.
    """
    run_dir = Path(run_dir)
    train, evals = read_csv(run_dir / "train.csv"), read_csv(run_dir / "eval.csv")
    train = [r for r in train if r.get("episode_return") not in (None, "")]
    evals = [r for r in evals if r.get("episode_return") not in (None, "")]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    if train:
        ax.plot([float(r["step"]) for r in train], [float(r["episode_return"]) for r in train], ".-", color="tab:blue",
                alpha=0.45, lw=0.8, ms=4, label=f"training episodes ({len(train)})")
    if evals:
        steps = np.array([float(r["step"]) for r in evals])
        mean = np.array([float(r["episode_return"]) for r in evals])
        std = np.array([float(r.get("return_std") or 0.0) for r in evals])
        ax.errorbar(steps, mean, yerr=std, fmt="o-", color="tab:orange", capsize=3, label="evaluation (mean +- std)")
    if baseline is not None:
        label, mean_b, std_b = baseline
        ax.axhline(mean_b, color="gray", ls="--", label=f"{label} ({mean_b:.0f})")
        if std_b:
            ax.axhspan(mean_b - std_b, mean_b + std_b, color="gray", alpha=0.15)
    if marker is not None:
        ax.axvline(marker[1], color="tab:green", ls=":", label=f"{marker[0]} ({marker[1]:.0f})")
    task, method = _run_label(run_dir)
    ax.set(title=f"{task}: {method}", xlabel="env step", ylabel="episode return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, out)
