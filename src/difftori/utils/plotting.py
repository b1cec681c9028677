"""Learning curves of one or many runs: mean and spread over seeds, grouped by task and method."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from difftori.utils.runs import read_csv

__all__ = ["find_runs", "plot_runs", "plot_learning_curve"]


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


def _run_label(run: Path) -> tuple[str, str]:
    cfg_path = run / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        task = cfg.get("task", run.parts[-4] if len(run.parts) >= 4 else "task")
        method = cfg.get("agent") or cfg.get("policy") or cfg.get("method") or run.parts[-3]
        variant = cfg.get("label")
        return str(task), f"{method}-{variant}" if variant else str(method)
    return run.parts[-4], run.parts[-3]


def plot_runs(paths: list[str | Path], out: str | Path, metric: str | None = None) -> Path:
    """Plot ``metric`` (default: ``episode_return`` or ``success_rate``) vs step; one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = defaultdict(lambda: defaultdict(list))
    chosen = metric
    for run in find_runs(paths):
        rows = read_csv(run / "eval.csv")
        if not rows:
            continue
        key = chosen or next((m for m in ("episode_return", "success_rate") if m in rows[0]), None)
        if key is None or key not in rows[0]:
            continue
        chosen = key
        steps = np.array([float(r["step"]) for r in rows])
        vals = np.array([float(r[key]) for r in rows])
        task, method = _run_label(run)
        groups[task][method].append((steps, vals))
    if not groups:
        raise ValueError(f"no run has eval rows with metric {metric!r}")
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (task, methods) in zip(axes[0], sorted(groups.items())):
        for method, curves in sorted(methods.items()):
            grid = np.unique(np.concatenate([s for s, _ in curves]))
            interp = np.stack([np.interp(grid, s, v, right=np.nan) for s, v in curves])
            mean = np.nanmean(interp, axis=0)
            ax.plot(grid, mean, label=f"{method} (n={len(curves)})")
            if len(curves) > 1:
                std = np.nanstd(interp, axis=0)
                ax.fill_between(grid, mean - std, mean + std, alpha=0.25)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel(chosen)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
