"""Benchmark: DiffTORI's base pool with each training window encoded once vs once per draw.

With ``difftori.base_pool = K`` DiffTORI draws its initial actions from K predictions of the frozen diffusion base
per training window, computed when training starts. The peer is the way the pool was first computed: each
window repeated K times and sampled as K observations, so the observation encoder (a PointNet or a CNN on the
rendered modalities) ran K times on the same input. ``DiffusionPolicy.predict_action(obs, samples=K)`` encodes it
once and repeats the features. Both are timed in the same run (interleaved), on the preset's sizes with random
weights (the cost does not depend on training), and their draws compared under the same seed (fp32 encoders:
equal up to float rounding; bf16, as the grids run the rendered modalities: equal up to bf16 rounding).

    python benchmarks/il_base_pool.py            # state, point cloud, image; 256 windows, K = 8
    python benchmarks/il_base_pool.py --quick    # a smoke run (written to runs/bench_quick)

Results: ``<out>/il_base_pool.json`` and ``<out>/il_base_pool.md`` (``--out``, default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python benchmarks/il_base_pool.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.common import interleaved_timings, md_table, median, parse_bench_config, run_meta, write_results  # noqa: E402
from difftori.utils.config import check  # noqa: E402

__all__ = ["PoolConfig", "run", "markdown", "main"]

DEFAULT_OUT = REPO / "benchmarks" / "results"

SHAPES = {  # per-frame observation shapes of the IL envs (MetaWorld's sizes; robosuite / ManiSkill differ in state only)
    "state": {"full_state": (39,)},
    "pointcloud": {"state": (9,), "pointcloud": (512, 3)},
    "image": {"state": (9,), "image": (3, 84, 84)},
}


@dataclass
class PoolConfig:
    """What to time."""

    obs_types: tuple[str, ...] = ("state", "pointcloud", "image")
    """Observation types (each with the encoder the IL policies use for it)."""
    windows: int = 256
    """Training windows per timed call (the pool is computed in chunks of 1024 / K windows: 128 at K = 8)."""
    draws: int = 8
    """K: base predictions per window (the small preset's base_pool)."""
    precision: str = "bf16"
    """Encoder precision of the rendered modalities (state always fp32), as the IL grids run them."""
    preset: str = "small"
    """IL preset whose sizes the diffusion base takes."""
    repeats: int = 5
    """Timed calls of each way (interleaved; the median is reported)."""
    threads: int = 1
    """torch.set_num_threads for the whole run."""
    quick: bool = False
    """Quick mode (a smoke run): 16 windows, 2 repeats, written to runs/bench_quick. Explicit options still override it."""
    out: str = str(DEFAULT_OUT)
    """Folder of il_base_pool.json and il_base_pool.md (written atomically)."""

    def __post_init__(self) -> None:
        from difftori.il.config import IL_PRESETS

        self.obs_types = tuple(self.obs_types)
        check(all(o in SHAPES for o in self.obs_types) and bool(self.obs_types), f"obs_types must be among {sorted(SHAPES)}, got {self.obs_types}")
        check(self.windows >= 1 and self.draws >= 2 and self.repeats >= 1 and self.threads >= 1,
              "windows, repeats and threads must be >= 1 and draws >= 2")
        check(self.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {self.precision!r}")
        check(self.preset in IL_PRESETS, f"preset must be one of {', '.join(IL_PRESETS)}, got {self.preset!r}")


def _base(cfg: PoolConfig, obs_type: str):
    """A diffusion base of the preset's sizes for ``obs_type`` with random weights, a fitted normalizer and random windows."""
    import torch

    from difftori.data.normalizer import Normalizer
    from difftori.il.config import IL_PRESETS, ILConfig
    from difftori.il.policies import policy_from_config
    from difftori.utils.config import from_dict

    precision = "fp32" if obs_type == "state" else cfg.precision
    il = from_dict(ILConfig, dict(IL_PRESETS[cfg.preset], policy="diffusion", obs_type=obs_type, encoder_precision=precision))
    shapes = SHAPES[obs_type]
    pol = policy_from_config(il, shapes, 4).eval()
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.rand(cfg.windows, il.obs_steps, *s, generator=g) * (255 if k == "image" else 1) for k, s in shapes.items()}
    fit = {**obs, "action": torch.rand(64, 4) * 2 - 1}
    pol.set_normalizer(Normalizer().fit(fit))
    return pol, obs, precision


def run(cfg: PoolConfig) -> dict[str, Any]:
    import torch

    from difftori.utils.config import to_dict
    from difftori.utils.device import set_num_threads

    set_num_threads(cfg.threads)
    rows = []
    K = cfg.draws
    for obs_type in cfg.obs_types:
        pol, obs, precision = _base(cfg, obs_type)
        repeated = {k: v.repeat_interleave(K, 0) for k, v in obs.items()}

        def per_draw():
            torch.manual_seed(1)
            return pol.predict_action(repeated)

        def once():
            torch.manual_seed(1)
            return pol.predict_action(obs, samples=K)

        with torch.no_grad():
            diff = float((per_draw() - once()).abs().max())
            times = interleaved_timings({"per_draw": per_draw, "once": once}, cfg.repeats)
        t_peer, t_once = median(times["per_draw"]), median(times["once"])
        rows.append({"obs_type": obs_type, "precision": precision, "per_draw_s": t_peer, "once_s": t_once,
                     "speedup": t_peer / t_once, "ms_per_window_per_draw": 1000 * t_peer / cfg.windows,
                     "ms_per_window_once": 1000 * t_once / cfg.windows, "max_abs_diff": diff})
    return {"meta": run_meta(cfg.threads, "cpu", config=to_dict(cfg)), "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    cfg, m = results["meta"]["config"], results["meta"]
    header = ["obs", "encoder", "encoded per draw (peer), ms / window", "encoded once, ms / window", "speed-up", "max |diff| of the draws"]
    body = [[r["obs_type"], r["precision"], f"{r['ms_per_window_per_draw']:.1f}", f"{r['ms_per_window_once']:.1f}",
             f"{r['speedup']:.2f}x", f"{r['max_abs_diff']:.1e}"] for r in results["rows"]]
    lines = [
        "# DiffTORI base pool: each window encoded once vs once per draw",
        "",
        f"{cfg['draws']} diffusion draws per training window (10 DDIM steps each), {cfg['windows']} windows per call, preset "
        f"`{cfg['preset']}` sizes, random weights; median of {cfg['repeats']} interleaved calls; {m['threads']} thread(s), "
        f"{m['processor']}, torch {m['torch']}, {m['date']}. The difference is in action units (the draws use the same "
        "noise; bf16 encoders round differently in a batch of a different size).",
        "",
        *md_table(header, body),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    quick = PoolConfig(quick=True, windows=16, repeats=2, out=str(REPO / "runs" / "bench_quick"))  # never over the results
    cfg = parse_bench_config(PoolConfig, quick, __doc__, argv)
    results = run(cfg)
    md = markdown(results)
    write_results(cfg.out, {"il_base_pool.json": results, "il_base_pool.md": md}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
