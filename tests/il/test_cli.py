"""``difftori il train`` / ``il eval`` end to end on a tiny synthetic dataset: run dir, CSVs, resume, DiffTORI from a base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from difftori.cli import main
from difftori.utils.runs import read_csv


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two 20-step 'reach' episodes (state obs) in the demo format, written with the data package's writer."""
    from difftori.data.dataset import DemoData, save_demos

    rng = np.random.default_rng(0)
    n = 40
    data = DemoData(
        obs={"state": rng.uniform(-1, 1, (n, 9)).astype(np.float32), "full_state": rng.uniform(-1, 1, (n, 39)).astype(np.float32)},
        action=rng.uniform(-1, 1, (n, 4)).astype(np.float32),
        episode_ends=np.array([20, 40]),
        attrs={"task": "reach", "obs_type": "state", "env_options": {"episode_length": 20}},
    )
    return save_demos(tmp_path_factory.mktemp("demos") / "reach.zarr", data)


def _args(root: Path, dataset: Path, policy: str, *extra: str) -> list[str]:
    return [
        "il", "train", "--task", "reach", "--obs-type", "state", "--policy", policy, "--dataset", str(dataset),
        "--batch-size", "8", "--run-root", str(root), "--device", "cpu", "--progress", "false",
        "--eval-episodes", "1", "--eval-max-steps", "4", *extra,
    ]  # fmt: skip


def _run_dir(root: Path, policy: str) -> Path:
    runs = sorted((root / "reach" / policy / "seed1").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_train_eval_and_resume_without_lost_or_duplicated_rows(tmp_path, dataset, monkeypatch, capsys):
    from difftori.il.bc import BCPolicy

    real = BCPolicy.compute_loss
    calls = {"n": 0}

    def crash_on_fifth(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the process dies during step 5; the last checkpoint is at step 3
        return real(self, batch)

    monkeypatch.setattr(BCPolicy, "compute_loss", crash_on_fifth)
    rc = main(_args(tmp_path, dataset, "bc", "--steps", "6", "--log-freq", "1", "--eval-freq", "3", "--checkpoint-freq", "3"))
    assert rc == 130
    run = _run_dir(tmp_path, "bc")
    assert [r["step"] for r in read_csv(run / "train.csv")] == ["1", "2", "3", "4"]
    monkeypatch.setattr(BCPolicy, "compute_loss", real)

    # Options that contradict the checkpoint are refused before anything is written (was: exit 0, config rewritten).
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["il", "train", "--resume", str(run), "--policy", "diffusion"]) == 2
    assert "cannot change ['policy']" in capsys.readouterr().err
    assert main(["il", "train", "--resume", str(run), "--steps", "2"]) == 2
    assert "can only be extended" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    assert main(["il", "train", "--resume", str(run), "--progress", "false", "--num-threads", "1", "--policy", "bc",
                 "--difftori.cost-grad", "manual", "--encoder-precision", "auto"]) == 0  # how it computes may change
    assert capsys.readouterr().out.startswith(f"run directory: {run}")
    segments = json.loads((run / "runtime.json").read_text())  # each (re)start: where from, in which precision
    assert [(s["step"], s["encoder_precision"]) for s in segments] == [(0, "fp32"), (3, "auto")]
    assert segments[0]["encoder_precision_used"] == "fp32" and segments[1]["encoder_precision_used"] in ("fp32", "bf16")
    assert segments[1]["device"] == "cpu" and segments[1]["cpu_capability"]
    rows = read_csv(run / "train.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert all(float(r["loss"]) > 0 and float(r["lr"]) > 0 for r in rows)
    evals = read_csv(run / "eval.csv")
    assert [r["step"] for r in evals] == ["3", "6"] and all(0.0 <= float(r["success_rate"]) <= 1.0 for r in evals)
    assert all(float(r["demo_mse"]) >= 0.0 for r in evals)  # the policy's error on demo windows, beside the success rate
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["policy"] == "bc" and cfg["task"] == "reach"
    assert (run / "checkpoints" / "last.pt").exists() and (run / "plot.png").exists()

    out = tmp_path / "eval.json"
    capsys.readouterr()
    argv = ["il", "eval", "--checkpoint", str(run), "--episodes", "2", "--max-steps", "4", "--out", str(out),
            "--video", "--video-dir", str(tmp_path / "vids"), "--full-episodes"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["video"] == str(tmp_path / "vids" / "reach_seed100000.mp4") and Path(summary["video"]).stat().st_size > 0
    assert summary["policy"] == "bc" and summary["task"] == "reach" and 0.0 <= summary["success_rate"] <= 1.0
    full = json.loads(out.read_text())
    assert len(full["episodes"]) == 2 and all(e["length"] == 4 for e in full["episodes"])
    assert json.loads((run / "config.json").read_text())["steps"] == 6

    for bad, msg in ((["--max-steps", "0"], "--max-steps must be >= 1"), (["--episodes", "0"], "--episodes must be >= 1")):
        assert main(["il", "eval", "--checkpoint", str(run), *bad]) == 2  # --max-steps 0 used to run 200 steps
        assert msg in capsys.readouterr().err
    # A run written before checkpoints were named last.pt still evaluates (and the seed folder names its newest run).
    (run / "checkpoints" / "last.pt").rename(run / "checkpoints" / "latest.pt")
    assert main(["il", "eval", "--checkpoint", str(run.parent), "--episodes", "1", "--max-steps", "2", "--num-threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"].endswith("latest.pt")


def test_difftori_from_a_trained_diffusion_checkpoint(tmp_path, dataset, capsys):
    small = ["--diffusion.down-dims", "16", "32", "--diffusion.step-embed-dim", "16"]
    assert main(_args(tmp_path, dataset, "diffusion", "--steps", "2", "--eval-episodes", "0", *small)) == 0
    base_ckpt = _run_dir(tmp_path, "diffusion") / "checkpoints" / "last.pt"
    rc = main(_args(tmp_path, dataset, "difftori", "--steps", "2", "--base-policy", str(base_ckpt), "--difftori.solver.max-iters", "3",
                   "--difftori.encoder-init", "base"))
    assert rc == 0
    run = _run_dir(tmp_path, "difftori")
    assert json.loads((run / "config.json").read_text())["difftori"]["encoder_init"] == "base"
    rows = read_csv(run / "train.csv")
    assert rows and {"action_mse", "kl", "init_mse"} <= set(rows[0])
    assert read_csv(run / "eval.csv")[-1]["step"] == "2"
    capsys.readouterr()
    assert main(["il", "eval", "--checkpoint", str(base_ckpt), "--episodes", "1", "--select", "lowest_cost"]) == 2
    assert "--select applies to DiffTORI checkpoints" in capsys.readouterr().err
    # the DiffTORI checkpoint is self-contained (frozen base inside): it evaluates without the base file
    base_ckpt.unlink()
    capsys.readouterr()
    for _ in range(2):  # seeded: the same evaluation twice gives the same episodes
        assert main(["il", "eval", "--checkpoint", str(run), "--episodes", "1", "--max-steps", "4", "--out", str(tmp_path / f"e{_}.json")]) == 0
        assert json.loads(capsys.readouterr().out)["select"] == "first"
    runs = [json.loads((tmp_path / f"e{i}.json").read_text())["episodes"] for i in range(2)]
    assert runs[0] == runs[1] and runs[0][0]["return"] != 0.0
    # --select overrides which solved draw is executed, for this evaluation only
    assert main(["il", "eval", "--checkpoint", str(run), "--episodes", "1", "--max-steps", "4", "--select", "lowest_cost"]) == 0
    assert json.loads(capsys.readouterr().out)["select"] == "lowest_cost"
    assert json.loads((run / "config.json").read_text())["difftori"]["inference_select"] == "first"


def test_clear_errors(tmp_path, dataset, capsys):
    assert main(_args(tmp_path, dataset, "difftori", "--steps", "1")) == 2
    assert "needs --base-policy" in capsys.readouterr().err
    assert main(["il", "train", "--task", "door-open", "--obs-type", "state", "--dataset", str(dataset), "--run-root", str(tmp_path)]) == 2
    assert "collected for task 'reach'" in capsys.readouterr().err
    assert main(["il", "train", "--run-root", str(tmp_path)]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["il", "eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(_args(tmp_path, dataset, "bc", "--steps", "1", "--device", "cuda:99")) == 2
    assert "cuda:99" in capsys.readouterr().err
    assert not (tmp_path / "reach").exists()  # no half-made run directory
