"""ManiSkill3 envs: observation types, seeded resets, a motion-planned demo, point clouds on the scene.

ManiSkill lives in its own venv (numpy<2 for mplib): run with ``make test-maniskill``. In the default
venv (no mani_skill) this module is skipped at collection, by design, and the skip is listed with its
reason in pytest's summary; test_maniskill_registry.py (names, errors) runs in both venvs.
"""

import numpy as np
import pytest

from difftori.envs import make_env
from difftori.envs import maniskill as ms

mani_skill = pytest.importorskip("mani_skill", reason="ManiSkill tests need its own venv: make test-maniskill")


@pytest.fixture
def closing():
    envs = []

    def make(*args, **kwargs):
        env = ms.make(*args, **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def test_bad_options(closing):
    with pytest.raises(ValueError, match="obs_type"):
        ms.make("pick-cube", obs_type="rgbd")
    with pytest.raises(ValueError, match="num_points"):
        ms.make("pick-cube", num_points=0)
    env = closing("pick-cube", obs_type="state", seed=0)
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(7))
    with pytest.raises(RuntimeError, match="no camera"):
        env.point_cloud()


@pytest.mark.parametrize("task", ms.TASKS)
def test_state_env_resets_and_steps(closing, task):
    env = closing(task, obs_type="state", seed=3, episode_length=4)
    spec = env.task_spec
    assert spec.suite == "maniskill" and spec.task == task and spec.action_dim == 8 and spec.episode_length == 4
    obs, _ = env.reset()
    assert set(obs) == {"state", "full_state"} and env.observation_space.contains(obs)
    assert obs["state"].shape == (ms.agent_state_dim(task),) and obs["full_state"].shape == spec.obs_shapes["full_state"]
    np.testing.assert_allclose(obs["state"][18:21], env.unwrapped_maniskill.agent.tcp.pose.p[0].numpy(), atol=1e-6)
    base = env.unwrapped_maniskill
    # every goal marker the cameras cannot see is in the agent state, at its position
    assert sorted(o.name for o in base._hidden_objects) == sorted(ms.HIDDEN_GOALS.get(task, ()))
    for i, obj in enumerate(o for name in ms.HIDDEN_GOALS.get(task, ()) for o in base._hidden_objects if o.name == name):
        np.testing.assert_allclose(obs["state"][25 + 3 * i: 28 + 3 * i], obj.pose.p[0].numpy(), atol=1e-6)
    for t in range(4):
        obs, reward, terminated, truncated, info = env.step(np.full(8, 0.2))
        assert not terminated and truncated == (t == 3) and np.isfinite(reward) and info["success"] in (0.0, 1.0)
    twin = closing(task, obs_type="state", seed=3)
    np.testing.assert_array_equal(twin.reset()[0]["full_state"], env.reset(seed=3)[0]["full_state"])
    assert not np.allclose(env.reset(seed=4)[0]["full_state"], twin.raw_obs)


def test_action_scaling(closing):
    env = closing("push-cube", obs_type="state", seed=0)
    assert env.arm_control == "absolute" and env.env_options()["arm_control"] == "absolute"
    raw = env.denormalize_action(np.linspace(-1, 1, 8))
    np.testing.assert_allclose(env.normalize_action(raw), np.linspace(-1, 1, 8), atol=1e-6)
    assert raw[7] == 1.0  # the gripper keeps ManiSkill's [-1, 1]
    with pytest.raises(ValueError, match="arm_control must be one of absolute, delta"):
        ms.make("push-cube", obs_type="state", arm_control="velocity")


def test_delta_arm_actions_are_relative_to_the_current_joint_positions(closing):
    env = closing("pick-cube", obs_type="state", seed=0)
    assert env.arm_control == ms.ARM_CONTROL["pick-cube"] == "delta"
    obs, _ = env.reset(seed=0)
    qpos = obs["state"][:7].astype(np.float64)
    a = np.array([0.5, -0.5, 0.25, -0.25, 0.1, -0.1, 0.0, -1.0])
    raw = env.denormalize_action(a)
    np.testing.assert_allclose(raw[:7], qpos + ms.JOINT_DELTA * a[:7], atol=1e-6)
    np.testing.assert_allclose(env.normalize_action(raw), a, atol=1e-6)
    assert raw[7] == -1.0  # the gripper stays absolute
    np.testing.assert_allclose(env.denormalize_action(np.zeros(8))[:7], qpos, atol=1e-6)  # zero: hold the joints
    for _ in range(10):  # the PD controller follows: the joints move by the commanded delta
        obs, *_ = env.step(np.r_[np.full(7, 0.0), 1.0])
    target = env.denormalize_action(np.r_[0.25, np.zeros(6), 1.0])[:7]
    for _ in range(15):
        obs, *_ = env.step(env.normalize_action(np.r_[target, 1.0]))
    np.testing.assert_allclose(obs["state"][:7], target, atol=0.01)
    absolute = closing("pick-cube", obs_type="state", seed=0, arm_control="absolute")
    np.testing.assert_allclose(absolute.normalize_action(absolute.denormalize_action(a)), a, atol=1e-6)


@pytest.mark.parametrize("task", ms.TASKS)
def test_visual_observations(closing, task):
    img = closing(task, obs_type="image", img_size=32, seed=0)
    obs, _ = img.reset()
    assert obs["image"].shape == (3, 32, 32) and obs["image"].dtype == np.uint8 and obs["image"].std() > 10
    obs, *_ = img.step(np.zeros(8))
    assert img.observation_space.contains(obs)
    pc = closing(task, obs_type="pointcloud", num_points=64, pc_render_size=64, seed=0, cloud_robot="all")
    obs, _ = pc.reset()
    cloud = obs["pointcloud"]
    assert cloud.shape == (64, 3) and cloud.dtype == np.float32 and np.isfinite(cloud).all()
    lo, hi = np.array(ms.CROP_BOX[0]), np.array(ms.CROP_BOX[1])
    assert np.all(cloud >= lo - 1e-6) and np.all(cloud <= hi + 1e-6)
    assert len(np.unique(cloud, axis=0)) == 64  # enough foreground points: no padding
    pc.step(np.zeros(8))


def test_a_gripper_only_cloud_keeps_the_hand_the_fingers_and_the_objects(closing):
    grip = closing("pick-cube", obs_type="pointcloud", seed=0)
    assert grip.cloud_robot == ms.CLOUD_ROBOT["pick-cube"] == "gripper" and grip.env_options()["cloud_robot"] == "gripper"
    full = closing("pick-cube", obs_type="pointcloud", seed=0, cloud_robot="all")
    clouds = {"gripper": grip.reset(seed=0)[0]["pointcloud"], "all": full.reset(seed=0)[0]["pointcloud"]}
    base = grip.unwrapped_maniskill
    links = {link.name: int(link.per_scene_id[0]) for link in base.agent.robot.links}
    pts, seg = grip.world_points()
    kept = set(np.unique(seg[grip.segment_points(pts, seg)]).tolist())
    assert kept & set(links.values()) and kept & set(links.values()) <= {links[n] for n in ms.GRIPPER_LINKS}
    assert int(base.cube.per_scene_id[0]) in kept
    pts, seg = full.world_points()
    assert links["panda_link6"] in set(np.unique(seg[full.segment_points(pts, seg)]).tolist())  # the arm stays in "all"
    cube = base.cube.pose.p[0].numpy()
    on_cube = {k: int((np.abs(c - cube).max(axis=1) < 0.021).sum()) for k, c in clouds.items()}
    assert on_cube["gripper"] >= 3 * on_cube["all"] > 0, on_cube
    with pytest.raises(ValueError, match="cloud_robot must be one of all, gripper"):
        ms.make("pick-cube", obs_type="state", cloud_robot="arm")


def test_point_cloud_lies_on_foreground_geometry(closing):
    env = closing("pick-cube", obs_type="pointcloud", num_points=256, seed=1)
    env.reset()
    expert = ms.make_expert("pick-cube")
    assert expert.start_episode(env)
    for _ in range(25):  # the arm moves over the cube
        obs, *_ = env.step(expert.get_action())
    cloud = obs["pointcloud"].astype(np.float64)
    # Independent of rendering: a PhysX ray from the camera towards each point must hit a collision shape
    # other than the table and the ground: on the task objects (exact boxes) at the point's distance; on
    # the robot no farther than the point (its collision shapes are convex hulls around its meshes: link5's
    # hides parts of the base that the camera sees). The fingers' collision shapes are smaller than their
    # meshes: a few rays pass them and end behind the point.
    base = env.unwrapped_maniskill
    cam = env.camera_pose()[:3, 3].astype(np.float32)
    background = {a._objs[0] for a in base.table_scene.scene_objects}
    robot = {link._objs[0].entity for link in base.agent.robot.links}
    object_errors, missed = [], []
    for p in cloud:
        vec = p - cam
        dist = np.linalg.norm(vec)
        hit = base.scene.px.raycast(cam, (vec / dist).astype(np.float32), float(dist + 0.5))
        if hit is None or hit.component.entity in background:
            missed.append(p)
        elif hit.component.entity in robot:
            if hit.distance > dist + 0.003:
                missed.append(p)
        else:
            object_errors.append(abs(hit.distance - dist))
    assert len(missed) <= 0.03 * len(cloud), f"{len(missed)} points on no foreground geometry, e.g. {missed[:3]}"
    object_errors = np.array(object_errors)
    assert len(object_errors) >= 3 and object_errors.max() < 0.003, f"points off the objects: {np.sort(object_errors)[-5:]}"
    cube = base.cube.pose.p[0].numpy()
    on_cube = np.abs(cloud - cube).max(axis=1) < 0.021  # 2 cm half size, plus 1 mm
    assert on_cube.sum() >= 3, "the cube is missing from the cloud"
    tcp = obs["state"][18:21]
    assert np.linalg.norm(cloud - tcp, axis=1).min() < 0.06  # the gripper is in the cloud


def test_motion_planned_demo_collects(tmp_path):
    from difftori.data.collect import collect_demos
    from difftori.data.dataset import load_demos

    report = collect_demos("pick-cube", episodes=1, obs_type="state", out=tmp_path / "d.zarr", seed=0, progress=False)
    assert report.kept == 1 and report.tried == 1, report.summary()
    data = load_demos(tmp_path / "d.zarr")
    assert data.attrs["demo_source"] == "motion-planned" and data.attrs["suite"] == "maniskill"
    assert data.attrs["obs_revision"] == 4 and data.obs["state"].shape[1] == 28  # the goal is in the state
    assert data.attrs["env_options"]["arm_control"] == "delta" and data.attrs["env_options"]["cloud_robot"] == "gripper"
    assert data.action.shape[1] == 8 and np.abs(data.action).max() <= 1.0
    # Delta arm actions, executed as planned (the episode succeeded): no step needs more than JOINT_DELTA.
    assert 0.05 < np.abs(data.action[:, :7]).max() < 1.0
    assert 40 < len(data.action) < ms.EPISODE_LENGTHS["pick-cube"]


def test_make_env_dispatch():
    env = make_env("maniskill:PushCube-v1", obs_type="state", seed=0)
    try:
        assert env.task_spec.task == "push-cube"
        assert set(env.reset()[0]) == {"state", "full_state"}
    finally:
        env.close()
