"""MetaWorld envs: task names, observation shapes, seeded resets, and point clouds that lie on the scene."""

import sys

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="MetaWorld tests need: pip install 'difftori[metaworld]'")

import mujoco  # noqa: E402

from difftori.envs import MissingDependencyError, UnknownTaskError, make_env  # noqa: E402
from difftori.envs import metaworld as mw  # noqa: E402


@pytest.fixture
def closing():
    envs = []

    def make(*args, **kwargs):
        env = mw.make(*args, **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def test_task_names():
    assert len(mw.TASKS) == 50 and len(set(mw.TASKS)) == 50
    assert mw.canonical("door-open") == "door-open"
    assert mw.canonical("door-open-v3") == "door-open"
    assert mw.canonical("Peg-Insert-Side-v3") == "peg-insert-side"
    assert mw.canonical("cartpole-swingup") is None
    from metaworld.policies import ENV_POLICY_MAP

    assert {f"{t}-v3" for t in mw.TASKS} == set(ENV_POLICY_MAP)  # every task has a scripted expert


def test_unknown_task_and_bad_options():
    with pytest.raises(UnknownTaskError, match="door-open"):
        mw.make("door-opn")
    with pytest.raises(UnknownTaskError):
        make_env("metaworld:cartpole-swingup")
    with pytest.raises(ValueError, match="obs_type"):
        mw.make("reach", obs_type="rgbd")
    with pytest.raises(ValueError, match="camera"):
        mw.make("reach", camera="nope")


def test_missing_dependency_has_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'difftori\[metaworld\]'"):
        mw.make("reach")


def test_state_observation_and_steps(closing):
    env = closing("reach-v3", obs_type="state", seed=0, episode_length=6)
    assert env.task_spec.suite == "metaworld" and env.task_spec.task == "reach"
    assert env.task_spec.obs_shapes == {"state": (9,), "full_state": (39,)}
    assert env.task_spec.action_dim == 4 and env.task_spec.episode_length == 6
    obs, _ = env.reset()
    assert env.observation_space.contains(obs)
    state, full = obs["state"], obs["full_state"]
    assert state.dtype == np.float32 and full.dtype == np.float32
    # state = tcp centre + right pad + left pad (the tcp centre is the pads' midpoint); the 39-D obs
    # starts with the hand body position, ~4.5 cm above the tcp.
    np.testing.assert_allclose(state[:3], env.unwrapped_metaworld.tcp_center, atol=1e-6)
    np.testing.assert_allclose(state[:3], (state[3:6] + state[6:9]) / 2, atol=1e-6)
    assert 0.03 < np.linalg.norm(state[:3] - full[:3]) < 0.06
    for t in range(6):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0, 0.0, 5.0]))  # clipped to [-1, 1]
        assert not terminated and truncated == (t == 5)
        assert "success" in info and np.isfinite(reward)
    assert obs["state"][0] > state[0] + 0.01  # moved along +x
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))


def test_seeded_reset_is_reproducible(closing):
    a = closing("pick-place", obs_type="pointcloud", seed=7)
    b = closing("pick-place", obs_type="pointcloud", seed=7)
    oa, ob = a.reset()[0], b.reset()[0]
    np.testing.assert_array_equal(a.raw_obs, b.raw_obs)
    np.testing.assert_array_equal(oa["pointcloud"], ob["pointcloud"])
    np.testing.assert_array_equal(oa["state"], ob["state"])
    a.reset()  # continues the stream: a new object/goal placement
    assert not np.allclose(a.raw_obs[4:7], b.raw_obs[4:7]) or not np.allclose(a.raw_obs[-3:], b.raw_obs[-3:])
    a.reset(seed=7)
    np.testing.assert_array_equal(a.raw_obs, b.raw_obs)
    b.reset(seed=8)
    assert not np.allclose(a.raw_obs, b.raw_obs)


def test_image_observation(closing):
    env = closing("door-open", obs_type="image", img_size=64, seed=0)
    obs, _ = env.reset()
    img = obs["image"]
    assert img.shape == (3, 64, 64) == env.task_spec.obs_shapes["image"] and img.dtype == np.uint8
    assert img.std() > 10  # a real scene, not a blank frame
    assert env.observation_space.contains(obs)
    twin = closing("door-open", obs_type="image", img_size=64, seed=0)
    np.testing.assert_array_equal(twin.reset()[0]["image"], img)


def _site_mask(model, data, pts, pad=0.004):
    """Points on (rendered) sites such as goal markers, which mj_ray cannot hit."""
    near = np.zeros(len(pts), dtype=bool)
    for s in range(model.nsite):
        if model.site_group[s] < 3 and model.site_rgba[s, 3] > 0:
            near |= np.linalg.norm(pts - data.site_xpos[s], axis=1) < model.site_size[s].max() + pad
    return near


@pytest.mark.parametrize("task", ["door-open", "assembly"])
def test_point_cloud_lies_on_foreground_geometry(closing, task):
    env = closing(task, obs_type="pointcloud", num_points=512, seed=1)
    env.reset()
    expert = mw.make_expert(task)
    for _ in range(15):  # move the arm away from its home pose
        obs, *_ = env.step(np.clip(expert.get_action(env.raw_obs), -1, 1))
    pc = obs["pointcloud"]
    assert pc.shape == (512, 3) and pc.dtype == np.float32 and np.isfinite(pc).all()
    lo, hi = np.array(mw.CROP_BOX[0]), np.array(mw.CROP_BOX[1])
    assert np.all(pc >= lo - 1e-6) and np.all(pc <= hi + 1e-6)
    assert len(np.unique(pc, axis=0)) == 512  # enough scene points: no padding needed

    # Independent check: a ray from the camera towards each point must hit a (non-background) geom
    # at that point's distance (mj_ray intersects the model geometry, no rendering involved).
    model, data = env.unwrapped_metaworld.model, env.unwrapped_metaworld.data
    cam = data.cam_xpos[model.camera(env.camera).id].copy()
    on_site = _site_mask(model, data, pc.astype(np.float64))
    assert on_site.mean() < 0.2
    geomgroup = np.array([1, 1, 1, 0, 0, 0], dtype=np.uint8)
    geomid = np.zeros(1, dtype=np.int32)
    errors, bodies = [], set()
    for p in pc[~on_site].astype(np.float64):
        vec = p - cam
        dist = np.linalg.norm(vec)
        hit = mujoco.mj_ray(model, data, cam, vec / dist, geomgroup, 1, -1, geomid)
        errors.append(abs(hit - dist) if hit >= 0 else np.inf)
        if hit >= 0:
            bodies.add(model.body(model.geom_bodyid[geomid[0]]).name)
    errors = np.array(errors)
    assert np.quantile(errors, 0.98) < 0.003, f"points off the surfaces: {np.sort(errors)[-10:]}"
    assert not bodies & set(mw.BACKGROUND_BODIES), f"background geoms left in the cloud: {bodies}"
    # The gripper and the task object are in the cloud (every point within 3 cm of somewhere).
    pads = obs["state"].reshape(3, 3)
    assert np.linalg.norm(pc[None] - pads[:, None], axis=-1).min() < 0.03
    obj = env.raw_obs[4:7]
    assert np.linalg.norm(pc - obj, axis=1).min() < 0.05


def test_farthest_point_sampling():
    rng = np.random.default_rng(0)
    pts = rng.random((400, 3)).astype(np.float32)
    idx = mw.farthest_point_sample(pts, 32)
    assert len(idx) == 32 and len(set(idx.tolist())) == 32 and idx[0] == 0
    # Matches a plain reference implementation.
    ref, dist = [0], np.full(400, np.inf)
    for _ in range(31):
        dist = np.minimum(dist, ((pts - pts[ref[-1]]) ** 2).sum(1))
        ref.append(int(dist.argmax()))
    assert idx.tolist() == ref
    # Covers the set better than a random subset (smaller max distance to the nearest sample).
    def cover(sel):
        return np.linalg.norm(pts[:, None] - pts[sel][None], axis=-1).min(1).max()

    assert cover(idx) < cover(rng.choice(400, 32, replace=False))
    # Fewer points than asked: padding by repetition.
    assert mw.farthest_point_sample(pts[:5], 12).tolist() == [0, 1, 2, 3, 4] * 2 + [0, 1]
    with pytest.raises(ValueError, match="empty"):
        mw.farthest_point_sample(pts[:0], 4)


def test_farthest_point_sampling_kernels_agree():
    """The numba loop (numba comes with `make setup`) and the numpy passes pick the same indices, ties included."""
    from difftori.envs import pointcloud as pcl

    kernel = pcl._fps_kernel()
    assert kernel is not None, "numba is part of the default install (the robosuite extra)"
    rng = np.random.default_rng(1)
    for trial in range(6):
        pts = rng.normal(size=(int(rng.integers(600, 4000)), 3)).astype(np.float32)
        if trial % 2:
            pts = np.round(pts, 1)  # many equal distances
        coords = np.ascontiguousarray(pts.T)
        assert np.array_equal(kernel(coords, 256, trial), pcl._fps_numpy(coords, 256, trial))


def test_make_env_dispatch(closing):
    env = make_env("metaworld:button-press-topdown-v3", obs_type="state", seed=0)
    try:
        assert env.task_spec.task == "button-press-topdown"
        obs, _ = env.reset()
        assert set(obs) == {"state", "full_state"}
    finally:
        env.close()
