"""robosuite envs (lift / can / square): names, observation types, seeding, scripted experts, point clouds.

robosuite is installed by ``make setup``, so these tests fail (never skip) when it is missing.
"""

import sys

import mujoco
import numpy as np
import pytest

from difftori.envs import MissingDependencyError, UnknownTaskError, make_env
from difftori.envs import robosuite as rs


_CACHE: dict = {}


@pytest.fixture(scope="module")
def env_of():
    """One env per (task, obs_type) from ``make_env("robosuite:<task>")``, shared by the tests of this module
    (an env takes ~1-2 s to build)."""

    def get(task: str, obs_type: str):
        key = (task, obs_type)
        if key not in _CACHE:
            _CACHE[key] = make_env(f"robosuite:{task}", obs_type=obs_type, img_size=48, num_points=256, pc_render_size=80, seed=0)
        return _CACHE[key]

    yield get
    for env in _CACHE.values():
        env.close()
    _CACHE.clear()


def test_task_names_and_bad_options():
    assert rs.TASKS == ("lift", "can", "square")
    assert rs.canonical("Lift") == "lift" and rs.canonical("PickPlaceCan") == "can"
    assert rs.canonical("nut-assembly-square") == "square" and rs.canonical("door-open") is None
    with pytest.raises(UnknownTaskError, match="lift, can, square"):
        rs.make("lifft")
    with pytest.raises(UnknownTaskError):
        make_env("robosuite:door-open")
    with pytest.raises(ValueError, match="obs_type"):
        rs.make("lift", obs_type="rgbd")
    with pytest.raises(ValueError, match="no scripted robosuite expert"):
        from difftori.envs.robosuite_experts import ScriptedExpert

        ScriptedExpert("stack")


def test_missing_dependency_has_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "robosuite", None)  # makes `import robosuite` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'difftori\[robosuite\]'"):
        rs.make("lift")


@pytest.mark.parametrize("task", rs.TASKS)
@pytest.mark.parametrize("obs_type", ["state", "image", "pointcloud"])
def test_reset_and_step_each_observation_type(env_of, task, obs_type):
    env = env_of(task, obs_type)
    spec = env.task_spec
    assert spec.suite == "robosuite" and spec.task == task and spec.action_dim == 7 and spec.obs_type == obs_type
    assert spec.episode_length == rs.DEFAULT_EPISODE_LENGTH == 400
    obs, info = env.reset(seed=1)
    assert set(obs) == set(spec.obs_shapes) and info == {"success": 0.0}
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 5.0]))  # clipped
    assert not terminated and not truncated and np.isfinite(reward) and info["success"] == 0.0
    assert env.observation_space.contains(obs)
    for key, shape in spec.obs_shapes.items():
        assert obs[key].shape == shape
    state = obs["state"]  # eef position, eef quaternion, finger joints
    np.testing.assert_allclose(state[:3], env.raw_obs["robot0_eef_pos"], atol=1e-6)
    assert abs(np.linalg.norm(state[3:7]) - 1) < 1e-4
    if obs_type == "state":
        assert spec.obs_shapes["full_state"] == ((19,) if task == "lift" else (23,))
        objects = obs["full_state"][9:]  # robosuite's object-state holds the object position
        windows = np.lib.stride_tricks.sliding_window_view(objects, 3)
        assert np.abs(windows - env.raw_obs["object_pos"]).max(axis=1).min() < 1e-5
    elif obs_type == "image":
        img = obs["image"]
        assert img.dtype == np.uint8 and img.std() > 10
        # Upright: agentview looks at the robot over the table, so the table (bright) is in the lower half
        # and the dark background at the top.
        assert img[:, -8:].mean() > img[:, :8].mean()
    else:
        pc = obs["pointcloud"]
        assert pc.dtype == np.float32 and np.isfinite(pc).all()
        lo, hi = np.array(env.crop_box[0]), np.array(env.crop_box[1])
        assert np.all(pc >= lo - 1e-6) and np.all(pc <= hi + 1e-6)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(4))


def test_seeded_reset_is_reproducible(env_of):
    env = env_of("square", "state")
    a = env.reset(seed=3)[0]["full_state"]
    nut = env.raw_obs["object_pos"]
    env.reset()  # continues the stream: another placement
    assert not np.allclose(env.raw_obs["object_pos"], nut)
    np.testing.assert_array_equal(env.reset(seed=3)[0]["full_state"], a)
    twin = make_env("square", obs_type="state", seed=3)  # no suite prefix: found in the registry
    try:
        np.testing.assert_array_equal(twin.reset()[0]["full_state"], a)
    finally:
        twin.close()


def test_every_instance_of_a_task_is_the_same_model():
    """robosuite draws Lift's cube size from the env's generator at construction: built with a fixed model seed, two
    unseeded instances are the same model (and give the same point clouds for the same reset seed); numpy's global
    RNG is untouched."""
    np.random.seed(123)
    want = np.random.get_state()[1].copy()
    a, b = make_env("lift", obs_type="pointcloud", num_points=128, pc_render_size=64), make_env("lift", obs_type="pointcloud", num_points=128, pc_render_size=64)
    try:
        np.testing.assert_array_equal(np.random.get_state()[1], want)
        np.testing.assert_array_equal(a._model.geom_size, b._model.geom_size)
        np.testing.assert_array_equal(a._model.body_mass, b._model.body_mass)
        np.testing.assert_array_equal(a.reset(seed=4)[0]["pointcloud"], b.reset(seed=4)[0]["pointcloud"])
    finally:
        a.close()
        b.close()


def _expert_episode(env, task: str, seed: int, max_steps: int = 400) -> tuple[bool, int]:
    """Run the scripted expert; success = the env's check holding for 5 steps (as ``il collect``)."""
    env.reset(seed=seed)
    expert = rs.make_expert(task)
    held = 0
    for t in range(max_steps):
        _, _, _, _, info = env.step(expert.get_action(env.raw_obs))
        held += int(info["success"] > 0)
        if held >= 5:
            return True, t + 1
    return False, max_steps


@pytest.mark.parametrize("task", ["can", "square"])
def test_scripted_expert_succeeds(env_of, task):
    ok, steps = _expert_episode(env_of(task, "state"), task, seed=11)
    assert ok, f"{task}: the scripted expert failed in {steps} steps"


def test_il_collect_keeps_successful_lift_demos(tmp_path):
    from difftori.data.collect import collect_demos
    from difftori.data.dataset import load_demos

    report = collect_demos("robosuite:lift", episodes=1, obs_type="state", out=tmp_path / "lift.zarr", progress=False)
    assert report.complete and report.tried == 1 and report.task == "lift"
    assert report.path.name == "lift.zarr" and report.episode_lengths[0] < 100
    data = load_demos(tmp_path / "lift.zarr", expect_task="lift", expect_obs_type="state")
    assert data.action.shape == (report.steps, 7) and np.abs(data.action).max() <= 1.0
    assert data.obs["full_state"].shape == (report.steps, 19)
    assert data.attrs["env_options"]["episode_length"] == 400
    assert set(data.attrs["versions"]) == {"difftori", "robosuite", "mujoco", "numpy"}


@pytest.mark.parametrize("task", ["can", "square"])
def test_point_cloud_lies_on_foreground_geometry(env_of, task):
    env = env_of(task, "pointcloud")
    env.reset(seed=2)
    expert = rs.make_expert(task)
    for _ in range(12):  # move the arm away from its home pose
        obs, *_ = env.step(expert.get_action(env.raw_obs))
    pc = obs["pointcloud"]
    assert pc.shape == (256, 3)
    assert len(np.unique(pc, axis=0)) == 256  # enough scene points: no padding needed

    # Independent check: a ray from one of the cameras towards each point hits a rendered (group 1),
    # non-background geom at that point's distance (mj_ray intersects the model, no rendering).
    model, data = env.unwrapped_robosuite.sim.model._model, env.unwrapped_robosuite.sim.data._data
    cams = [data.cam_xpos[model.camera(c).id].copy() for c in env.pc_cameras]
    geomgroup = np.array([0, 1, 0, 0, 0, 0], dtype=np.uint8)
    geomid = np.zeros(1, dtype=np.int32)
    errors, bodies = [], set()
    for p in pc.astype(np.float64):
        best, body = np.inf, None
        for cam in cams:
            vec = p - cam
            dist = np.linalg.norm(vec)
            hit = mujoco.mj_ray(model, data, cam, vec / dist, geomgroup, 1, -1, geomid)
            if hit >= 0 and abs(hit - dist) < best:
                best, body = abs(hit - dist), model.body(model.geom_bodyid[geomid[0]]).name
        errors.append(best)
        if body is not None and best < 0.003:
            bodies.add(body)
    errors = np.array(errors)
    assert np.quantile(errors, 0.98) < 0.003, f"points off the surfaces: {np.sort(errors)[-10:]}"
    background = {b for b in bodies if b in ("world", "table", "bin1", "bin2") or b.startswith("fixed_mount")}
    assert not background, f"background geoms left in the cloud: {background}"
    assert any(b.startswith(("robot0", "gripper0")) for b in bodies)  # the arm is in the cloud
    near_object = np.linalg.norm(pc - env.raw_obs["object_pos"], axis=1) < 0.05
    assert near_object.sum() >= 8, f"only {near_object.sum()} points on the {task} object"
