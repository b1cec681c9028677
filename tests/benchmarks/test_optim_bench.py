"""Smoke tests of benchmarks/optim_peers.py: tiny sizes; Theseus section on our side + bare only (no theseus
needed), mpc.pytorch section when mpc is importable."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import optim_peers as bench  # noqa: E402
from benchmarks.common import (  # noqa: E402
    ILSizes,
    RLSizes,
    TrackingSizes,
    bare_cost_grad,
    build_il_problem,
    build_rl_problem,
    build_tracking_problem,
)
from difftori.utils.config import ConfigError  # noqa: E402

TINY = dict(
    no_theseus=True, no_mpc=True, threads=1, repeats=1, repeats_slow=1, warmup_iters=5, rl_batches=(1, 3), rl_iters=8,
    rl_hidden=16, il_batch=4, il_iters=8, packed_iters=8, il_hidden=16, newton_batches=(1, 3), newton_ref_iters=8,
    newton_max_iters=4,
)


def test_tiny_run_writes_valid_results(tmp_path):
    out = tmp_path / "res.json"
    res = bench.run(bench.BenchConfig(out=str(out), **TINY))
    data = json.loads(out.read_text())
    assert data["cases"] == json.loads(json.dumps(res["cases"]))
    assert {"date", "torch", "threads", "theseus", "mpc", "config", "notes", "loadavg_start"} <= set(data["meta"])
    assert data["meta"]["threads"] == 1 and data["meta"]["theseus"] is None and data["mpc"] is None
    assert any("--no-theseus" in n for n in data["meta"]["notes"]) and any("--no-mpc" in n for n in data["meta"]["notes"])
    names = [c["name"] for c in data["cases"]]
    assert names == ["rl_act_b1", "rl_train_b1", "rl_act_b3", "rl_train_b3", "il_train_b4",
                     "newton_vs_lm_scalar_b1", "newton_vs_lm_scalar_b3"]
    for c in data["cases"]:
        assert set(bench.REQUIRED_CASE_KEYS) <= set(c), c["name"]
        assert c["wall_s"] > 0
        assert c["theseus_ms"] is None and c["speedup"] is None and c["grad_cosine"] is None
        if c["kind"] in ("rl", "il"):
            for key in ("ours_ms", "bare_ms", "ours_ms_per_iter", "bare_ms_per_iter", "overhead_vs_bare"):
                assert c[key] > 0 and math.isfinite(c[key]), (c["name"], key)
            assert c["ours_ms_per_iter"] == pytest.approx(c["ours_ms"] / c["iters"])
            assert c["batch"] == int(c["name"].rsplit("_b", 1)[1])
        else:
            assert c["ref_iters"] == 8 and c["ref_cost"] <= c["start_cost"]
    # every acting case is checked against the overhead target
    act = {t["case"] for t in data["targets"] if t["target"] == "overhead_vs_bare"}
    assert act == {"rl_act_b1", "rl_act_b3"}
    md = out.with_suffix(".md").read_text()
    assert md == bench.format_markdown(res) and "## Targets" in md and "| rl_act_b1 |" in md


def test_missing_theseus_skips_its_section_with_a_note(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "theseus", None)  # makes `import theseus` raise ImportError
    with pytest.raises(bench.TheseusMissingError, match="make bench-setup"):
        bench.import_theseus()
    cfg = bench.BenchConfig(out=str(tmp_path / "x.json"), **{**TINY, "no_theseus": False, "rl_batches": (1,),
                                                              "newton_batches": (1,)})
    res = bench.run(cfg)
    assert "Theseus skipped" in capsys.readouterr().err
    assert res["meta"]["theseus"] is None and any("make bench-setup" in n for n in res["meta"]["notes"])
    assert all(c["theseus_ms"] is None for c in res["cases"]) and (tmp_path / "x.json").exists()


def test_missing_mpc_skips_its_section_with_a_note(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "mpc", None)
    with pytest.raises(bench.MpcMissingError, match="make setup"):
        bench.import_mpc()
    res = bench.run(bench.BenchConfig(mpc_only=True, threads=1, out=str(tmp_path / "x.json")))
    assert "mpc.pytorch section skipped" in capsys.readouterr().err
    assert res["mpc"] is None and res["cases"] == [] and res["meta"]["mpc"] is None


def test_mpc_section_tiny(tmp_path):
    pytest.importorskip("mpc.mpc", reason="mpc.pytorch (mpc==0.0.6, installed by `make setup`) is not importable")
    out = tmp_path / "res.json"
    cfg = bench.BenchConfig(mpc_only=True, threads=1, track_hidden=16, track_batches=(1, 3), repeats=1,
                            repeats_slow=1, track_final_iters=8, fd_iters=20, pend_batches=(8,), pend_repeats=1,
                            pend_fd_batch=2, out=str(out))
    res = bench.run(cfg)
    data = json.loads(out.read_text())
    assert data["mpc"] == json.loads(json.dumps(res["mpc"])) and data["cases"] == []
    assert data["meta"]["mpc"] == "0.0.6"
    names = {"ours_newton", "ours_gauss_newton", "ours_gauss_newton_structured", "mpc_auto_diff", "mpc_analytic"}
    assert [c["name"] for c in data["mpc"]["cases"]] == ["track_b1", "track_b3"]
    for c in data["mpc"]["cases"]:
        assert set(c["solvers"]) == names and c["reference"] == "ours_newton"
        for n, r in c["solvers"].items():
            assert math.isfinite(r["final_cost"]) and r["final_cost"] > 0, (c["name"], n)
            if n.startswith("ours_"):  # ours reach the target within the budget (mpc.pytorch's reaching is reported)
                assert r["iters_to_target"] is not None, (c["name"], n)
            if r["iters_to_target"] is not None:
                assert r["ms_to_target"] > 0 and len(r["times_ms"]) == 1, (c["name"], n)
            for g, v in r["grad_cosine_vs_ref"].items():
                assert v is not None and -1.0 <= v <= 1.0 + 1e-9, (c["name"], n, g)
        assert c["solvers"]["ours_newton"]["grad_cosine_vs_ref"]["all"] == pytest.approx(1.0)
        # the same problem: ours at least as good as mpc.pytorch's final cost (float32)
        assert c["final_cost_ours"] <= c["final_cost_mpc"] * (1 + 1e-4)
        assert math.isfinite(c["solution_max_abs_diff"]) and c["ours_ms"] > 0
        assert 0.0 < c["active_fraction"] < 1.0  # some coordinates on the bound, some interior
        # both of our methods get the exact implicit gradient: they agree with each other
        assert c["solvers"]["ours_gauss_newton"]["grad_cosine_vs_ref"]["all"] > 0.999
        # the structured Jacobian changes how, not what: the same iterations and solution as the generic one
        gn, gns = c["solvers"]["ours_gauss_newton"], c["solvers"]["ours_gauss_newton_structured"]
        assert gns["iters_to_target"] == gn["iters_to_target"] and gns["trace"] == pytest.approx(gn["trace"], rel=1e-5)
        assert gns["grad_cosine_vs_ref"]["all"] > 0.999
    fd = data["mpc"]["fd_check"]
    for d in ("dynamics", "cost_goal_q"):
        res_d = fd["directions"][d]
        assert set(res_d) == names - {"ours_gauss_newton", "ours_gauss_newton_structured"}  # ours: the first method only
        assert res_d["ours_newton"]["rel_err_vs_reference_fd"] < 1e-4  # ours is the exact derivative
        assert all(math.isfinite(r["fd"]) and math.isfinite(r["analytic"]) for r in res_d.values())
    pend = data["pendulum"]
    assert [c["name"] for c in pend["cases"]] == ["pend_b8"]
    for c in pend["cases"]:
        assert set(c["solvers"]) == {"ours_newton", "mpc_auto_diff", "mpc_analytic"}
        assert all(r["ms"] > 0 and math.isfinite(r["final_cost"]) for r in c["solvers"].values())
        ours = c["solvers"]["ours_newton"]
        assert ours["statuses"]["ok"] == 8  # every sample converged within the budget
        # the same problem, solved at least as well as mpc.pytorch's best
        assert ours["final_cost"] <= min(r["final_cost"] for r in c["solvers"].values()) + 1e-6 * abs(ours["final_cost"])
    fd = pend["fd_check"]["solvers"]
    assert fd["ours_newton"]["rel_err"] < 1e-4 and all(math.isfinite(r["fd"]) for r in fd.values())
    kinds = [t["target"] for t in data["targets"]]
    assert sum(k.startswith("speedup_vs_mpc") for k in kinds) == 3
    md = out.with_suffix(".md").read_text()
    assert "## Peer 2: mpc.pytorch" in md and "| 3 | mpc_analytic |" in md and "Gradient check" in md
    assert "pendulum imitation training step" in md and "| 8 | mpc_auto_diff |" in md


def test_config_validation_and_quick_preset():
    with pytest.raises(ConfigError, match="rl_iters"):
        bench.BenchConfig(rl_iters=4, backward_iters=5)
    with pytest.raises(ConfigError, match="track_methods"):
        bench.BenchConfig(track_methods=("adam",))
    with pytest.raises(ConfigError, match="mpc_variants"):
        bench.BenchConfig(mpc_variants=("finite_diff",))
    with pytest.raises(ConfigError, match="exclude"):
        bench.BenchConfig(mpc_only=True, no_mpc=True)
    quick = bench.parse_config(["--quick", "--rl-iters", "12"])
    assert quick.quick and quick.rl_iters == 12 and quick.il_iters == bench.QUICK.il_iters
    assert quick.track_hidden < bench.BenchConfig().track_hidden
    assert "bench_quick" in quick.out and "bench_quick" not in bench.BenchConfig().out  # a smoke run never overwrites results
    assert bench.parse_config(["--mpc-only", "--track-batches", "1", "2"]).track_batches == (1, 2)
    assert bench.parse_config([]).rl_iters == bench.BenchConfig().rl_iters


def test_problems_and_bare_floor():
    torch.manual_seed(0)
    rl = build_rl_problem(2, RLSizes(hidden=8))
    assert rl.U0.shape == (2, 5, 6) and rl.U0.abs().max() <= 1 and rl.cost_fn(rl.U0).shape == (2,)
    il = build_il_problem(3, ILSizes(hidden=8))
    assert il.U0.shape == (3, 4, 4) and il.cost_fn(il.U0).shape == (3,)
    U = rl.U0.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(rl.cost_fn(U).sum(), U)
    assert torch.allclose(bare_cost_grad(rl.cost_fn, rl.U0, 2), g_ref)
    # the cost clamps U to [-1, 1] as the original does: no gradient outside the box
    V = torch.full_like(rl.U0, 2.0).requires_grad_(True)
    (g_out,) = torch.autograd.grad(rl.cost_fn(V).sum(), V)
    assert torch.count_nonzero(g_out) == 0


def test_tracking_problem():
    prob = build_tracking_problem(3, TrackingSizes(hidden=8))
    assert prob.U0.shape == (3, 5, 6) and torch.count_nonzero(prob.U0) == 0
    U = 0.5 * torch.randn(3, 5, 6)
    r = prob.extra["residual_fn"](U)
    assert r.shape == (3, 5 * (50 + 6))
    assert torch.allclose(prob.cost_fn(U), 0.5 * (r * r).sum(-1), rtol=1e-5)
    dyn = prob.extra["dynamics"]
    assert prob.grad_targets[-2] is prob.extra["goal"] and prob.grad_targets[-1] is prob.extra["q"]
    assert len(prob.grad_targets) == len(list(dyn.parameters())) + 2
    # same seed, any dtype: the same problem
    p64 = build_tracking_problem(3, TrackingSizes(hidden=8), dtype=torch.float64)
    assert torch.allclose(p64.cost_fn(U.double()).float(), prob.cost_fn(U), rtol=1e-5)
