"""Scripted-expert collection: a tiny real collection, exact replay of its demos, and the CLI."""

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="collection needs: pip install 'difftori[metaworld]'")

from difftori.cli import main  # noqa: E402
from difftori.data import DemoWindowDataset, collect_demos, load_demos  # noqa: E402
from difftori.envs import metaworld as mw  # noqa: E402


def test_collect_writes_successful_replayable_demos(tmp_path):
    out = tmp_path / "reach.zarr"
    report = collect_demos("reach-v3", episodes=2, obs_type="pointcloud", out=out, seed=5, progress=False, num_points=128)
    assert report.kept == 2 and report.tried >= 2 and report.complete and out.exists()
    assert not (tmp_path / "reach.zarr.tmp").exists()
    data = load_demos(out, expect_task="reach", expect_obs_type="pointcloud")
    assert data.attrs["tried"] == report.tried and data.attrs["seed"] == 5 and data.attrs["episodes"] == 2
    assert set(data.attrs["versions"]) == {"difftori", "metaworld", "mujoco", "numpy"}
    assert data.obs_shapes == {"state": (9,), "pointcloud": (128, 3)}
    assert data.episode_ends.tolist() == np.cumsum(report.episode_lengths).tolist()
    assert np.all(np.abs(data.action) <= 1.0) and data.action.dtype == np.float32
    assert all(length < 200 for length in report.episode_lengths)  # ended early, after success

    # Replaying the stored actions from the same seed reproduces the observations and the success.
    env = mw.make("reach", obs_type=data.obs_type, seed=5, **data.env_options)
    try:
        assert env.task_spec.obs_shapes == data.obs_shapes
        for start, end in data.episode_bounds():
            obs, _ = env.reset()
            successes = 0
            for t in range(start, end):
                np.testing.assert_allclose(obs["state"], data.obs["state"][t], atol=1e-6)
                np.testing.assert_allclose(obs["pointcloud"], data.obs["pointcloud"][t], atol=1e-6)
                obs, _, _, _, info = env.step(data.action[t])
                successes += int(info["success"])
            assert successes == 5  # the episode ended on its 5th success step
    finally:
        env.close()

    ds = DemoWindowDataset(out, obs_steps=2, action_steps=4)
    assert len(ds) == data.n_steps and ds[0]["obs"]["pointcloud"].shape == (2, 128, 3)


def test_collect_gives_up_when_the_expert_cannot_succeed(tmp_path):
    with pytest.raises(RuntimeError, match="succeeded in none of 2 episodes"):
        collect_demos("reach", episodes=1, obs_type="state", out=tmp_path / "x.zarr", max_tries=2, episode_length=3, progress=False)
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "x.zarr.tmp").exists()


def test_cli_collect(tmp_path, capsys):
    out = tmp_path / "bpt.zarr"
    argv = ["il", "collect", "--task", "button-press-topdown", "--episodes", "1", "--obs-type", "state", "--out", str(out), "--seed", "1"]
    assert main(argv) == 0
    assert "kept 1/1" in capsys.readouterr().out
    data = load_demos(out, expect_task="button-press-topdown", expect_obs_type="state")
    assert data.obs_shapes == {"state": (9,), "full_state": (39,)} and data.n_episodes == 1
    assert main(argv) == 2  # exists: refused without --overwrite
    assert "overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert main(["il", "collect", "--task", "not-a-task", "--out", str(tmp_path / "y")]) == 2
