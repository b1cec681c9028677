"""Smoke test of benchmarks/optim_vs_theseus.py: tiny sizes, our side + bare only (no theseus needed)."""

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

from benchmarks import optim_vs_theseus as bench  # noqa: E402
from benchmarks.common import bare_cost_grad, build_il_problem, build_rl_problem, RLSizes, ILSizes  # noqa: E402
from difftori.utils.config import ConfigError  # noqa: E402

TINY = dict(
    no_theseus=True, threads=1, repeats=1, repeats_slow=1, warmup_iters=5, rl_batches=(1, 3), rl_iters=8,
    rl_hidden=16, il_batch=4, il_iters=8, packed_iters=8, il_hidden=16, newton_batches=(1, 3), newton_ref_iters=8,
    newton_max_iters=4,
)


def test_tiny_run_writes_valid_results(tmp_path):
    out = tmp_path / "res.json"
    res = bench.run(bench.BenchConfig(out=str(out), **TINY))
    data = json.loads(out.read_text())
    assert data["cases"] == json.loads(json.dumps(res["cases"]))
    assert {"date", "torch", "threads", "theseus", "config"} <= set(data["meta"])
    assert data["meta"]["threads"] == 1 and data["meta"]["theseus"] is None
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
    assert "targets:" in bench.format_table(res)


def test_missing_theseus_gives_install_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "theseus", None)  # makes `import theseus` raise ImportError
    with pytest.raises(bench.TheseusMissingError, match="make bench-setup"):
        bench.import_theseus()
    assert bench.main(["--quick", "--out", str(tmp_path / "x.json")]) == 2
    assert "make bench-setup" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_config_validation_and_quick_preset():
    with pytest.raises(ConfigError, match="rl_iters"):
        bench.BenchConfig(rl_iters=4, backward_iters=5)
    quick = bench.parse_config(["--quick", "--rl-iters", "12"])
    assert quick.quick and quick.rl_iters == 12 and quick.il_iters == bench.QUICK.il_iters
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
