"""DiffTORI learns acting with its solver: on TD-MPC's learning-test task and budget (tests/rl/test_learning.py)
it beats a random policy. A file of its own, so the two slowest learning tests run on different pytest workers."""

import pytest

from difftori.rl.config import DiffTORIConfig, RLConfig
from tests.learning import check
from tests.rl.test_learning import CFG, _train_against_random


def difftori_stats(seed: int) -> dict[str, float]:
    """DiffTORI on the same task and budget as TD-MPC's test, acting with its solver from 15% of the run.

    ``acting_fraction``: share of the env steps collected by the solver's actions (from the logs: episodes with
    solver statistics); ``return_over_threshold`` as for TD-MPC.
    """
    s = _train_against_random(RLConfig(**{**CFG, "seed": seed, "agent": "difftori"}, difftori=DiffTORIConfig(pg_start_step=94)))
    acted = sum(float(r["episode_length"]) for r in s["rows"] if r.get("solver_iters") not in (None, "")) * s["action_repeat"]
    return {**{k: s[k] for k in ("return_over_threshold", "return", "random_return")}, "acting_fraction": acted / s["step"]}


DIFFTORI_LIMITS = {
    "return_over_threshold": (">", 1.0),  # measured 1.12-1.91 (seeds 0-2 x 3 CPU capabilities; seed 1: 1.58-1.76); TD-MPC's bar
    "acting_fraction": (">", 0.5),  # measured 0.82 everywhere: the solver collects most of the run (it starts at 15%)
}


@pytest.mark.slow
@pytest.mark.learning
def test_difftori_beats_random_policy_acting_with_its_solver():
    check(difftori_stats(1), DIFFTORI_LIMITS)
