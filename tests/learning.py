"""Learning tests: statistics as functions of a seed, their limits, and one registry.

Every test that trains something and asserts an outcome computes its statistics with a
``*_stats(seed) -> dict`` function and checks them against ``LIMITS`` with :func:`check`. The
same functions are measured over seeds and CPU kernels (``ATEN_CPU_CAPABILITY``) by
``benchmarks/learning_margins.py``; the measured range is written beside each limit. Tests that
do this carry the ``learning`` marker, which ``.ci/run`` re-runs under a second CPU capability.
"""

from __future__ import annotations

import importlib
import operator

_OPS = {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}

# test id -> (module, stats function, limits attribute)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "il/bc": ("tests.il.test_policies", "bc_stats", "BC_LIMITS"),
    "il/diffusion": ("tests.il.test_policies", "diffusion_stats", "DIFFUSION_LIMITS"),
    "il/ibc": ("tests.il.test_policies", "ibc_stats", "IBC_LIMITS"),
    "il/difftori_modes": ("tests.il.test_difftori", "modes_stats", "MODES_LIMITS"),
    "il/difftori_refines": ("tests.il.test_difftori", "refine_stats", "REFINE_LIMITS"),
    "il/difftori_paper": ("tests.il.test_difftori_paper", "paper_stats", "PAPER_LIMITS"),
    "rl/tdmpc_update": ("tests.rl.test_tdmpc", "update_stats", "UPDATE_LIMITS"),
    "rl/tdmpc_learns": ("tests.rl.test_learning", "tdmpc_stats", "TDMPC_LIMITS"),
    "rl/difftori_learns": ("tests.rl.test_learning_difftori", "difftori_stats", "DIFFTORI_LIMITS"),
    "optim/newton_converges": ("tests.optim.test_robustness", "newton_stop_stats", "NEWTON_STOP_LIMITS"),
}


def check(stats: dict[str, float], limits: dict[str, tuple[str, float]]) -> None:
    """Assert every ``stats[name] <op> limit``; the message lists all statistics."""
    bad = [f"{k}={stats[k]:.4g} (needs {op} {lim})" for k, (op, lim) in limits.items() if not _OPS[op](stats[k], lim)]
    assert not bad, f"{'; '.join(bad)} -- all: { {k: round(v, 4) for k, v in stats.items()} }"


def load(test_id: str):
    """``(stats_fn, limits)`` of a registered learning test."""
    mod, fn, lim = REGISTRY[test_id]
    m = importlib.import_module(mod)
    return getattr(m, fn), getattr(m, lim)
