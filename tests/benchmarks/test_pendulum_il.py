"""benchmarks/pendulum_il.py: the --quick grid runs on the sweep runner and writes its outputs, the expert lands
where measured, every learner (DiffTORI released and mpc.pytorch's Amos row included) learns, a second run with
the archived cells runs nothing; and the pendulum + expert reproduce the paper's expert costs on a large draw."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import pendulum_il as bench  # noqa: E402
from difftori.envs import pendulum as P  # noqa: E402

os.environ["RAY_AUTH_MODE"] = "disabled"  # as tests/sweep/conftest.py: the same Ray mode in every test of the worker


# Expert test cost of the --quick split (seed 0: states 30..39 of a 40-state draw), measured with the
# newton expert; the margin absorbs solver-tolerance changes but not a wrong model, cost or box.
QUICK_EXPERT = {"simple": 12.178, "damped": 9.217}
# DiffTORI Table 8 expert rows (mean over test states); a 400-state draw must land near them.
PAPER_EXPERT = {"simple": 13.126, "damped": 10.132}


# The CI grid covers each learner once, in the setting where its code differs: the Amos et al. rows (learnable
# damping terms) with damping, the others without; each setting has its expert. The full grid crosses them all.
QUICK_GRIDS = {"simple": ["expert", "lstm", "difftori_released", "difftori_paper"],
               "damped": ["expert", "amos_difftori", "amos_mpcpytorch"]}
QUICK_CASES = [(m, s) for s, ms in QUICK_GRIDS.items() for m in ms[1:]]


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """setting -> (out folder, rows, methods) of its --quick grid."""
    runs = {}
    for setting, methods in QUICK_GRIDS.items():
        methods = [m for m in methods if m in bench.default_methods()]  # mpc.pytorch's row only when importable
        out, root = tmp_path_factory.mktemp(f"pendulum_il_{setting}"), tmp_path_factory.mktemp(f"sweep_{setting}")
        rows = bench.main(["--quick", "--settings", setting, "--methods", *methods, "--out", str(out), "--run-root", str(root)])
        runs[setting] = (out, rows, methods)
    return runs


@pytest.fixture(scope="module")
def quick_rows(quick_runs):
    return None, [r for _, rows, _ in quick_runs.values() for r in rows]


def _row(rows, method, setting):
    if method in bench.MPC_METHODS and bench.mpc_missing():
        pytest.skip(bench.mpc_missing())
    (row,) = [r for r in rows if r["method"] == method and r["setting"] == setting]
    return row


def test_quick_writes_outputs_and_archives_every_cell(quick_runs):
    out, rows, methods = quick_runs["simple"]
    with open(out / "results.csv") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == len(rows) == len(methods)
    assert tuple(read[0]) == bench.COLUMNS
    assert {(r["method"], r["setting"]) for r in read} == {(m, "simple") for m in methods}
    for r in read:
        assert math.isfinite(float(r["test_cost"])) and float(r["train_s"]) > 0
    md = (out / "table.md").read_text()
    for m in methods:
        assert bench.LABELS[m] in md
    assert "Without damping" in md and "not finished" not in md
    assert (out / "table8.png").stat().st_size > 0
    archived = sorted(p.name for p in (out / "cells").iterdir() if (p / "result.json").exists())
    assert len(archived) == len(rows) and all(p.startswith("pendulum-simple-") for p in archived)
    damped_md = (quick_runs["damped"][0] / "table.md").read_text()
    if bench.mpc_missing():
        assert f"{bench.LABELS['amos_mpcpytorch']}: not run: mpc.pytorch is not importable" in damped_md


def test_archived_cells_are_restored_not_run_again(quick_runs, tmp_path):
    """A new sweep directory with the committed archive: every cell is restored, nothing runs, same rows."""
    out, rows, methods = quick_runs["damped"]
    again = bench.main(["--quick", "--settings", "damped", "--methods", *methods, "--out", str(out),
                        "--run-root", str(tmp_path / "sweep")])
    assert json.dumps(again, sort_keys=True) == json.dumps(rows, sort_keys=True)  # (NaN != NaN as dict values)
    logs = list((tmp_path / "sweep" / "cells").glob("*/log.txt"))
    assert logs == []  # no cell was started


@pytest.mark.parametrize("setting", bench.SETTINGS)
def test_quick_expert_cost(quick_rows, setting):
    row = _row(quick_rows[1], "expert", setting)
    assert abs(row["test_cost"] - QUICK_EXPERT[setting]) < 0.5, row


@pytest.mark.parametrize("method,setting", QUICK_CASES)
def test_quick_learners_improve(quick_rows, method, setting):
    row = _row(quick_rows[1], method, setting)
    assert row["test_cost"] < row["init_test_cost"] or row["imitation_mse"] < row["init_imitation_mse"], row
    # no learner beats the expert it imitates by more than solver noise on the same states
    exp = _row(quick_rows[1], "expert", setting)
    assert row["test_cost"] > exp["test_cost"] - 1e-6, (row, exp)


def test_quick_mpc_pytorch_row_agrees_with_difftori(quick_rows):
    """Amos et al. trained with mpc.pytorch learns, and lands near the difftori row (same init)."""
    ours, theirs = (_row(quick_rows[1], m, "damped") for m in ("amos_difftori", "amos_mpcpytorch"))
    assert theirs["imitation_mse"] < theirs["init_imitation_mse"]
    assert theirs["init_test_cost"] == pytest.approx(ours["init_test_cost"], rel=0.05)
    assert theirs["test_cost"] == pytest.approx(ours["test_cost"], rel=0.1)


def test_difftori_released_is_the_il_policy_started_from_zero_torque():
    """The released row is difftori.il's DiffTORIPolicy (released formulation, no base policy, U0 = zeros), with
    the torque box as its action range: normalised 0 is zero torque, and its actions stay in the box."""
    from difftori.il.difftori_policy import DiffTORIPolicy

    x0 = P.initial_states(8, 0)
    learner = bench.DiffToriReleased(x0, bench.QUICK)
    pol = learner.policy
    assert isinstance(pol, DiffTORIPolicy) and pol.base is None
    assert (pol.cfg.formulation, pol.cfg.init, pol.cfg.draws) == ("released", "zeros", bench.QUICK.released_batch)
    U0 = pol.initial_actions({}, 3, training=True)
    assert torch.equal(pol.unnormalize_action(U0), torch.zeros(3, P.T, 1))
    U = learner.act(x0[:2])
    assert U.shape == (2, P.T, 1) and U.dtype == x0.dtype and float(U.abs().max()) <= P.U_MAX
    loss = learner.loss(x0[:4], torch.zeros(4, P.T, 1, dtype=x0.dtype))
    loss.backward()
    assert all(p.grad is not None for p in pol.cost_net.parameters())


def test_missing_mpc_drops_its_row_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mpc", None)  # import mpc -> ImportError
    assert "amos_mpcpytorch" not in bench.default_methods() and "make setup" in bench.mpc_missing()
    with pytest.raises(SystemExit) as exc:  # asked for explicitly: a one-line error before anything runs
        bench.main(["--quick", "--methods", "amos_mpcpytorch", "--out", str(tmp_path / "o"), "--run-root", str(tmp_path / "r")])
    assert exc.value.code == 2 and not (tmp_path / "r").exists()
    md = bench.table([dict(method="expert", setting="simple", test_cost=1.0, imitation_mse=0.0, train_s=1.0)],
                     ["Amos et al. (mpc.pytorch): not run: why"])
    assert md.rstrip().endswith("- Amos et al. (mpc.pytorch): not run: why")


@pytest.mark.parametrize("setting", bench.SETTINGS)
def test_expert_matches_paper_on_many_states(setting):
    torch.set_num_threads(1)
    x0 = P.initial_states(400, 123)
    cost = P.shooting_cost(x0, bench.true_theta(setting), *P.cost_weights())
    U, info = bench.newton(100, "none").solve(cost, torch.zeros(400, P.T, 1, dtype=P.DT))
    assert bool(info.converged.all())
    assert abs(float(info.cost.mean()) - PAPER_EXPERT[setting]) < 0.6


def test_the_ci_grids_cover_every_learner_and_both_experts():
    assert sorted(m for m, _ in QUICK_CASES) == sorted(bench.METHODS[1:])
    assert all(ms[0] == "expert" for ms in QUICK_GRIDS.values()) and set(QUICK_GRIDS) == set(bench.SETTINGS)
