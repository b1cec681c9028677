"""DeepMind Control envs: names, presets, shapes, action repeat, pixels, errors."""

import numpy as np
import pytest

from difftori.envs import MissingDependencyError, UnknownTaskError, dmc


def test_paper_tasks_registered_with_presets():
    assert len(dmc.PAPER_TASKS) == 15
    for task in dmc.PAPER_TASKS:
        assert task in dmc.TASKS
        preset = dmc.solver_preset(task)
        assert set(preset) == {"max_iters", "step_size", "damping"}
    assert dmc.action_repeat_for("cartpole-swingup-sparse") == 8
    assert dmc.action_repeat_for("hopper-stand") == 4
    assert dmc.action_repeat_for("walker-walk") == 2
    assert dmc.solver_preset("walker-run") == dict(max_iters=200, step_size=3e-5, damping=1e-3)
    assert dmc.canonical("ball_in_cup-catch") == "cup-catch"
    assert dmc.canonical("point-mass-easy") == dmc.canonical("point_mass_easy") == "point_mass-easy"
    assert dmc.canonical("door-open") is None


def test_unknown_task_error_lists_tasks():
    with pytest.raises(UnknownTaskError, match="cartpole-swingup"):
        dmc.make("cartpole-flip")


def test_state_env_reset_step_and_truncation():
    env = dmc.make("cartpole-swingup", episode_length=80, seed=0)
    spec = env.task_spec
    assert spec.action_repeat == 8 and spec.episode_length == 10 and spec.obs_shape == (5,)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (5,) and obs.dtype == np.float32
    assert env.observation_space.contains(obs)
    steps, truncated = 0, False
    while not truncated:
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        assert not terminated and 0.0 <= r <= 8.0  # reward summed over 8 env steps, each in [0, 1]
    assert steps == 10 and info["env_steps"] == 80


def test_reset_seed_is_reproducible_and_action_repeat_sums_rewards():
    a = dmc.make("cartpole-balance", action_repeat=1, episode_length=40)
    b = dmc.make("cartpole-balance", action_repeat=4, episode_length=40)
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    np.testing.assert_allclose(oa, ob)
    act = np.array([0.3], np.float32)
    total = sum(a.step(act)[1] for _ in range(4))
    _, r4, *_ = b.step(act)
    assert r4 == pytest.approx(total, rel=1e-6)


def test_pixels_shape_dtype_and_render():
    env = dmc.make("cartpole-swingup", obs_type="pixels", img_size=64, episode_length=16)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (9, 64, 64) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs[:3], obs[6:])  # reset stacks the first frame
    obs2, *_ = env.step(np.ones(1, np.float32))
    np.testing.assert_array_equal(obs2[:6], obs[3:])  # frames shift by one
    assert obs2[6:].std() > 0
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="obs_type"):
        dmc.make("cartpole-swingup", obs_type="rgb")
    env = dmc.make("cartpole-swingup")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.nan], np.float32))


def test_missing_dm_control_gives_install_hint(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "dm_control" or m.startswith("dm_control.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dm_control", None)  # makes `import dm_control` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'difftori\[dmc\]'"):
        dmc.make("cartpole-swingup")
