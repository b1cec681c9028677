"""``difftori il train --preset``, and clear errors for a wrong ``--base-policy`` or ``il eval --obs-type``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from difftori.cli import main
from difftori.il.config import IL_PRESETS
from difftori.il.policies import resolve_checkpoint
from difftori.utils.io import load_checkpoint, save_checkpoint
from tests.il.test_cli import _args, _run_dir, dataset  # noqa: F401  (module fixture)


SMALL = ["--diffusion.down-dims", "16", "32", "--diffusion.step-embed-dim", "16"]


@pytest.fixture(scope="module")
def diffusion_ckpt(tmp_path_factory, dataset) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("base")
    assert main(_args(root, dataset, "diffusion", "--steps", "1", "--eval-episodes", "0", *SMALL)) == 0
    return resolve_checkpoint(_run_dir(root, "diffusion"))


def test_preset_applies_under_the_given_options(tmp_path, dataset):  # noqa: F811
    assert main(_args(tmp_path, dataset, "bc", "--preset", "paper", "--steps", "1", "--eval-episodes", "0")) == 0
    cfg = json.loads((_run_dir(tmp_path, "bc") / "config.json").read_text())
    assert cfg["batch_size"] == 8 and cfg["eval_episodes"] == 0, "options given win over the preset"
    s = cfg["difftori"]["solver"]
    assert (cfg["lr"], cfg["lr_min"], cfg["encoder_dim"]) == (1e-4, 1e-6, 64)
    assert (s["method"], s["max_iters"], s["step_size"], s["damping"], s["backward"], s["backward_iters"], s["packed"]) == (
        "lm_scalar", 100, 3e-5, 0.01, "truncated", 5, True)
    assert (cfg["difftori"]["action_loss_weight"], cfg["difftori"]["kl_weight"], cfg["difftori"]["inference_samples"]) == (3000.0, 10.0, 128)
    assert IL_PRESETS["paper"]["batch_size"] == 128
    small = IL_PRESETS["small"]["difftori"]["solver"]
    assert (small["method"], small["packed"], small["backward"]) == ("gd", False, "unroll")


def test_difftori_small_preset_trains_from_a_base(tmp_path, dataset, diffusion_ckpt):  # noqa: F811
    rc = main(_args(tmp_path, dataset, "difftori", "--preset", "small", "--steps", "2", "--base-policy", str(diffusion_ckpt),
                    "--difftori.solver.max-iters", "3", "--difftori.inference-samples", "4", "--eval-episodes", "1"))
    assert rc == 0
    cfg = json.loads((_run_dir(tmp_path, "difftori") / "config.json").read_text())
    assert not cfg["difftori"]["solver"]["packed"] and cfg["difftori"]["solver"]["method"] == "gd"
    assert cfg["difftori"]["base_pool"] == 8 and cfg["difftori"]["solver"]["max_iters"] == 3
    from difftori.utils.runs import read_csv

    last = read_csv(_run_dir(tmp_path, "difftori") / "eval.csv")[-1]
    assert float(last["demo_mse"]) >= 0 and float(last["base_demo_mse"]) >= 0  # DiffTORI's error and its base's


def _variant(src: Path, dst: Path, edit) -> Path:
    ckpt = load_checkpoint(src)
    edit(ckpt)
    save_checkpoint(dst, ckpt)
    return dst


def test_wrong_base_policy_is_a_clear_error_before_any_file(tmp_path, dataset, diffusion_ckpt, capsys):  # noqa: F811
    root = tmp_path / "runs"

    def other_task(c):
        c["config"]["task"] = "door-open"

    def other_obs(c):
        c["config"]["obs_type"] = "pointcloud"
        c["policy_info"]["obs_shapes"] = {"pointcloud": [512, 3], "state": [9]}

    def other_window(c):
        c["policy_info"]["action_steps"] = 8

    def not_diffusion(c):
        c["policy_info"]["policy"] = "bc"

    cases = {
        other_task: "trained on task 'door-open'",
        other_obs: "trained on obs_type 'pointcloud'",
        other_window: "(obs_steps, action_steps, action_dim) = (2, 8, 4)",
        not_diffusion: "it is a 'bc' policy",
    }
    for edit, msg in cases.items():
        bad = _variant(diffusion_ckpt, tmp_path / f"{edit.__name__}.pt", edit)
        capsys.readouterr()
        assert main(_args(root, dataset, "difftori", "--steps", "1", "--base-policy", str(bad))) == 2
        err = capsys.readouterr().err
        assert "must be a diffusion checkpoint" in err and msg in err and len(err.strip().splitlines()) == 1, err
    assert not root.exists(), "no run directory may be created for a bad --base-policy"


def test_eval_with_another_obs_type_is_a_clear_error(tmp_path, diffusion_ckpt, capsys):
    capsys.readouterr()
    assert main(["il", "eval", "--checkpoint", str(diffusion_ckpt), "--obs-type", "pointcloud", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "was trained on obs_type 'state'" in err and "'pointcloud'" in err and len(err.strip().splitlines()) == 1


def test_preset_with_resume_is_refused(tmp_path, capsys):
    assert main(["il", "train", "--resume", str(tmp_path), "--preset", "paper"]) == 2
    assert "--preset applies to new runs" in capsys.readouterr().err


@pytest.mark.parametrize("policy,obs_type,lr,encoder_init", [
    ("diffusion", "state", 1e-4, "scratch"), ("bc", "pointcloud", 1e-3, "scratch"), ("difftori", "state", 1e-3, "scratch"),
    ("difftori", "pointcloud", 1e-3, "base"), ("difftori", "image", 1e-3, "base"),
])
def test_small_preset_rules_give_what_the_il_grid_runs(policy, obs_type, lr, encoder_init):
    from difftori.il.train import train_config
    from difftori.sweep.grid import _parse

    def cfg(*extra):
        opts = ["--task", "reach", "--policy", policy, "--obs-type", obs_type, "--dataset", "d.zarr", "--preset", "small", *extra]
        return train_config(_parse("il", "train", opts + (["--base-policy", "b"] if policy == "difftori" else [])))

    c = cfg()
    assert (c.lr, c.difftori.encoder_init, c.batch_size) == (lr, encoder_init, 32)
    assert c.difftori.cost_grad == ("manual" if policy == "difftori" else "autograd")
    given = cfg("--lr", "5e-4", "--difftori.encoder-init", "scratch", "--difftori.cost-grad", "autograd")
    assert (given.lr, given.difftori.encoder_init, given.difftori.cost_grad) == (5e-4, "scratch", "autograd")  # options win
    if policy == "difftori":  # a rule applies only where its settings are valid: no base, no copied encoder
        zeros = cfg("--difftori.init", "zeros")
        assert zeros.difftori.encoder_init == "scratch" and zeros.lr == 1e-3
        newton = cfg("--difftori.solver.method", "newton")
        assert newton.difftori.cost_grad == "autograd"
