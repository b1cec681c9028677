"""`difftori rl train|eval|demo` smoke runs with tiny budgets, and their error paths."""

import json

import pytest

from difftori.cli import main

TINY = [
    "--latent-dim", "8", "--mlp-dim", "32", "--enc-dim", "16", "--batch-size", "16", "--horizon", "3",
    "--num-samples", "16", "--num-elites", "4", "--iterations", "2", "--device", "cpu", "--progress", "false",
]


def test_train_eval_and_resume_cli(tmp_path, capsys):
    argv = ["rl", "train", "--agent", "tdmpc", "--task", "cartpole-balance", "--steps", "200", "--seed-steps", "12",
            "--episode-length", "96", "--eval-freq", "100", "--eval-episodes", "1", "--video", "--seed", "3",
            "--run-root", str(tmp_path), *TINY]
    assert main(argv) == 0
    (run,) = [p.parent for p in tmp_path.rglob("config.json")]
    assert run.relative_to(tmp_path).parts[:3] == ("cartpole-balance", "tdmpc", "seed3")
    for name in ("train.csv", "eval.csv", "final.json", "plot.png", "checkpoints/last.pt"):
        assert (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["seed_steps"] == 12
    assert list((run / "videos").glob("eval_*.*"))
    final = json.loads((run / "final.json").read_text())
    assert final["step"] == 288 and len(final["returns"]) == 1  # 3 episodes of 96 env steps

    capsys.readouterr()
    assert main(["rl", "eval", "--checkpoint", str(run), "--episodes", "2", "--video"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "cartpole-balance" and len(out["returns"]) == 2 and "video" in out

    # A checkpoint copied out of its run: the video goes where asked (--video-dir), printed in the results.
    copied = tmp_path / "elsewhere" / "model.pt"
    copied.parent.mkdir()
    copied.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    out_json = tmp_path / "eval.json"
    assert main(["rl", "eval", "--checkpoint", str(copied), "--episodes", "1", "--video", "--video-dir", str(tmp_path / "vids"),
                 "--num-threads", "1", "--out", str(out_json)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["video"].endswith(".mp4") and list((tmp_path / "vids").glob("*.mp4")) and out == json.loads(out_json.read_text())
    assert {p.name for p in copied.parent.iterdir()} == {"model.pt"} and not (tmp_path / "videos").exists()
    # The same model acting otherwise: pi alone is deterministic; DiffTORI's solver acts on a TD-MPC model.
    for act in ("pi", "planner", "solver"):
        assert main(["rl", "eval", "--checkpoint", str(run), "--episodes", "1", "--act", act]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["act"] == act and out["agent"] == "tdmpc" and len(out["returns"]) == 1
        # seeded: the same command gives the same returns (MPPI samples too)
        assert main(["rl", "eval", "--checkpoint", str(run), "--episodes", "1", "--act", act]) == 0
        assert json.loads(capsys.readouterr().out)["returns"] == out["returns"]
    from difftori.rl.difftori import DiffTORI
    from difftori.rl.trainer import load_agent

    _, wrapped, env, _ = load_agent(run, act="solver")
    env.close()
    assert isinstance(wrapped, DiffTORI) and wrapped.dcfg.pg_start_step == 0 and wrapped.dcfg.act == "solver"
    assert main(["rl", "eval", "--checkpoint", str(run), "--episodes", "0"]) == 2  # was: NaN in the JSON
    assert "--episodes must be >= 1" in capsys.readouterr().err

    # Extend the finished run by one episode; the run may be named by its seed folder (newest run there).
    assert main(["rl", "train", "--resume", str(run.parent), "--steps", "300"]) == 0
    assert f"run directory: {run}" in capsys.readouterr().out
    assert json.loads((run / "final.json").read_text())["step"] == 384
    # Changing anything but --steps on resume is refused, before anything is written.
    config = (run / "config.json").read_bytes()
    assert main(["rl", "train", "--resume", str(run), "--seed", "4"]) == 2
    assert "cannot change ['seed']" in capsys.readouterr().err
    assert main(["rl", "train", "--resume", str(run), "--steps", "100"]) == 2
    assert "can only be extended" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == config and json.loads(config)["steps"] == 300
    # how DiffTORI's return gradient is computed is not what the run computes: a resume may switch it (config.json
    # keeps what the run was started with, as for --num-threads)
    assert main(["rl", "train", "--resume", str(run), "--difftori.return-grad", "manual"]) == 0
    capsys.readouterr()
    assert (run / "config.json").read_bytes() == config


def test_cli_errors(tmp_path, capsys):
    assert main(["rl", "train", "--agent", "tdmpc", "--task", "cartpole-flip", "--run-root", str(tmp_path)]) == 2
    assert "unknown DMC task 'cartpole-flip'" in capsys.readouterr().err
    assert main(["rl", "train", "--agent", "tdmpc", "--horizon", "0", "--run-root", str(tmp_path)]) == 2
    assert "horizon must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rl", "train", "--agent", "sac"])
    assert main(["rl", "eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    # An unavailable device fails on every machine (no CUDA, or no 100th GPU) and leaves no run directory.
    assert main(["rl", "train", "--agent", "tdmpc", "--task", "cartpole-balance", "--device", "cuda:99", "--run-root", str(tmp_path)]) == 2
    assert "cuda:99" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing half-created


def test_an_error_while_building_the_run_removes_its_directory(tmp_path, monkeypatch):
    from difftori.rl import trainer

    def broken(*args, **kwargs):
        raise RuntimeError("replay buffer too large")

    monkeypatch.setattr(trainer, "ReplayBuffer", broken)
    assert main(["rl", "train", "--agent", "tdmpc", "--task", "cartpole-balance", "--run-root", str(tmp_path), *TINY]) == 2
    assert not any(tmp_path.iterdir())


def test_demo_cli_writes_random_vs_trained(tmp_path, capsys):
    assert main(["rl", "demo", "--agent", "tdmpc", "--steps", "400", "--run-root", str(tmp_path)]) == 0
    (demo,) = list(tmp_path.rglob("demo.json"))
    res = json.loads(demo.read_text())
    assert res["agent"] == "tdmpc" and res["task"] == "cartpole-balance"
    assert res["random_return"] >= 0 and res["trained_return"] >= 0 and res["steps"] >= 400
    assert (demo.parent / "plot.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert out.index("run directory:") < out.index("trained_return")  # announced at the start


def test_preset_small_then_explicit_options_win(tmp_path, capsys):
    from difftori.rl.config import SMALL_SIZES, preset_overrides, preset_values

    argv = ["rl", "train", "--preset", "small", "--agent", "tdmpc", "--task", "cartpole-balance", "--steps", "200",
            "--episode-length", "96", "--eval-episodes", "1", "--mlp-dim", "32", "--device", "cpu", "--progress", "false",
            "--run-root", str(tmp_path)]
    assert main(argv) == 0
    (cfg_path,) = tmp_path.rglob("config.json")
    cfg = json.loads(cfg_path.read_text())
    assert cfg["preset"] == "small" and cfg["mlp_dim"] == 32  # the explicit option wins over the preset's 64
    assert all(cfg[k] == v for k, v in SMALL_SIZES.items() if k != "mlp_dim")
    # schedules scale with the budget: 200 env steps / action repeat 8 = 25 agent steps
    assert (cfg["seed_steps"], cfg["difftori"]["pg_start_step"], cfg["schedule_steps"]) == (2, 3, 12)
    assert preset_values("paper", "cartpole-balance", 10**5) == {}
    assert preset_overrides("small", "walker-walk", 100_000)["difftori"]["pg_start_step"] == 7500
    with pytest.raises(ValueError, match="unknown preset"):
        preset_values("tiny", "walker-walk", 1000)


def test_difftori_budget_before_solver_start_is_flagged(tmp_path, capsys):
    argv = ["rl", "train", "--agent", "difftori", "--task", "cartpole-balance", "--steps", "96", "--episode-length", "96",
            "--seed-steps", "4", "--eval-episodes", "1", "--run-root", str(tmp_path), *TINY]
    assert main(argv) == 0
    assert "WARNING: DiffTORI starts acting with the solver at env step 48000" in capsys.readouterr().err
    (final,) = tmp_path.rglob("final.json")
    res = json.loads(final.read_text())
    assert res["solver_acted"] is False and res["difftori_start_env_step"] == 48000
