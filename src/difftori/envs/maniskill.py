"""ManiSkill3 tabletop tasks (Panda arm) with state, image or point-cloud observations, like envs/metaworld.py.

Every observation is a dict. ``"state"`` is always the agent state: arm + finger joint positions (9) and
velocities (9), tcp pose xyz + wxyz quaternion (7), and for a task whose goal marker is invisible to cameras
(:data:`HIDDEN_GOALS`: pick-cube) the goal's xyz, as ManiSkill adds ``goal_pos`` to its own visual observations
(25-D, 28-D for pick-cube). ``obs_type`` adds one modality:

* ``"state"``: ``"full_state"``, ManiSkill's own flattened ``obs_mode="state"`` vector (task-specific size,
  includes object and goal poses);
* ``"image"``: ``(3, img_size, img_size)`` uint8 RGB from the task's ``base_camera``;
* ``"pointcloud"``: ``(num_points, 3)`` float32 world-frame xyz in metres.

Point clouds: the ``base_camera``'s position image (``pc_render_size``\\ :sup:`2` pixels) in world
coordinates, background removed with the renderer's per-actor segmentation (the table, the ground and
pixels that hit nothing), cropped to :data:`CROP_BOX`, and reduced to exactly ``num_points`` by
farthest-point sampling (padded by repetition), as for MetaWorld. ``cloud_robot`` says how much of the robot
stays in the cloud: ``"all"`` its links, or ``"gripper"`` the hand and fingers only (the arm's links removed, as
DP3's crops keep the gripper and little of the arm; the joints are in the agent state). Default per task,
:data:`CLOUD_ROBOT`. Invisible goal markers are hidden from the camera, as ManiSkill does for its own observations.

Simulation and rendering run on the CPU (PhysX CPU; SAPIEN with the software Vulkan of
:mod:`difftori.envs.vulkan`, configured on import when it was fetched). ``obs_type="state"`` without
``render_mode`` creates no renderer at all. Actions are 8-D in [-1, 1]: the 7 arm joints' targets and the
gripper (-1 closed, 1 open), executed with ManiSkill's ``pd_joint_pos`` controller (the mode its motion planners
emit). ``arm_control`` says what an arm action means: ``"absolute"`` joint targets scaled from the joint limits,
or ``"delta"`` targets relative to the current joint positions (:data:`JOINT_DELTA` radians per unit, as
ManiSkill's ``pd_joint_delta_pos``). The experts' joint targets are converted to either exactly (a delta never
clips on their plans), so the demos' actions are what was executed. Default per task, :data:`ARM_CONTROL`.

Seeding: ``reset(seed=s)`` seeds ManiSkill's episode RNG with ``s`` (equal seeds, identical initial
states); later ``reset()`` calls continue ManiSkill's stream. PegInsertionSide rebuilds its scene on every
reset (new peg and hole sizes from the episode seed, as ManiSkill does with one env), so the camera and
segmentation ids are looked up after each reset.
Episodes are truncated after ``episode_length`` steps (default :data:`EPISODE_LENGTHS`: longer than
ManiSkill's registered limits, which its own motion-planned solutions exceed). ``info["success"]`` is
ManiSkill's success flag; episodes never terminate early.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from difftori.envs.pointcloud import Box, crop_mask, sample_cloud
from difftori.envs.manipulation import ManipulationEnv, lazy_env_class, resolve_task

__all__ = [
    "TASKS",
    "ENV_IDS",
    "EPISODE_LENGTHS",
    "CROP_BOX",
    "HIDDEN_GOALS",
    "OBS_REVISIONS",
    "ARM_CONTROL",
    "JOINT_DELTA",
    "CLOUD_ROBOT",
    "agent_state_dim",
    "canonical",
    "require",
    "make",
    "make_expert",
    "env_class",
    "MotionPlannedExpert",
]

INSTALL_HINT = "make maniskill (a separate venv .venv-maniskill with numpy<2), or pip install 'difftori[maniskill]'"

ENV_IDS: dict[str, str] = {
    "pick-cube": "PickCube-v1",
    "stack-cube": "StackCube-v1",
    "push-cube": "PushCube-v1",
    "peg-insertion-side": "PegInsertionSide-v1",
    "plug-charger": "PlugCharger-v1",
}
"""Our task names and ManiSkill's env ids (each has a Panda motion-planning solution)."""

RENDERER = "sapien"
"""What renders this suite's images and point clouds (MuJoCo's GL context, or SAPIEN's Vulkan renderer)."""

TASKS: tuple[str, ...] = tuple(ENV_IDS)

EPISODE_LENGTHS: dict[str, int] = {
    "pick-cube": 150,
    "stack-cube": 250,
    "push-cube": 100,
    "peg-insertion-side": 300,
    "plug-charger": 300,
}
"""Default step limits: the longest motion-planned demo seen (20 seeds) plus margin. ManiSkill's
registered limits (50 / 50 / 50 / 100 / 200) are shorter than its own planned solutions."""

CROP_BOX: Box = ((-0.7, -0.6, -0.005), (0.5, 0.6, 1.0))
"""World-frame workspace box ``(xyz_min, xyz_max)`` in metres kept in point clouds: the table area in
front of the robot (base at x = -0.615), from the table top (z = 0) up to 1 m."""

BACKGROUND_NAMES = ("table-workspace", "ground")
"""Actors removed from point clouds (ManiSkill's TableSceneBuilder background)."""

AGENT_STATE_DIM = 25
"""Agent state size of a task without a hidden goal (see :func:`agent_state_dim`)."""

HIDDEN_GOALS: dict[str, tuple[str, ...]] = {"pick-cube": ("goal_site",)}
"""Goal markers a task hides from its cameras (ManiSkill's hidden objects), by actor name: their positions join
the agent state, or no image or point-cloud policy could know the goal."""

OBS_REVISIONS: dict[str, int] = {"pick-cube": 4}
"""Revision of the observation / action layout of the tasks where it changed after release (pick-cube: 2, the goal
joined the agent state; 3, delta arm actions; 4, the gripper-only cloud); the others are at 1. Stored with demos, part of a collect cell's
id, checked on load."""

ARM_CONTROL: dict[str, str] = {"pick-cube": "delta"}
"""Tasks whose arm actions are joint deltas by default (the others: absolute joint targets). Grasping needs joint
targets to ~0.01 rad: over the joint range (~5.8 rad) that is 0.003 of an absolute action's scale, finer than the
policies fit at CPU budgets; a delta spends the whole scale on one step's motion (benchmarks/results/il_budget.md)."""

JOINT_DELTA = 0.2
"""Radians of joint-target change per unit of a delta arm action (ManiSkill's ``pd_joint_delta_pos``: 0.1; twice
that, so the planners' steps, up to 0.1 rad from the current position, never clip)."""

CLOUD_ROBOT: dict[str, str] = {"pick-cube": "gripper"}
"""Tasks whose point clouds keep only the robot's hand and fingers (the others: the whole robot). Pick-cube's cube
holds ~1% of the pixels that hit the robot or the cube (18 of ~1500 at 128 x 128): with the arm in the cloud a
policy trained on 50 demos closes the gripper centimetres from the cube, while the same policy on the privileged
state grasps (benchmarks/results/il_budget.md)."""

GRIPPER_LINKS = ("panda_hand", "panda_hand_tcp", "panda_leftfinger", "panda_rightfinger", "panda_leftfinger_pad",
                 "panda_rightfinger_pad")
"""The robot links a ``cloud_robot="gripper"`` cloud keeps."""

CLOUD_ROBOTS = ("all", "gripper")
ARM_CONTROLS = ("absolute", "delta")
ARM_JOINTS = 7
ACTION_DIM = 8
CONTROL_MODE = "pd_joint_pos"
CAMERA = "base_camera"


def agent_state_dim(task: str) -> int:
    """Size of ``task``'s agent state: 25, plus 3 per hidden goal marker."""
    return AGENT_STATE_DIM + 3 * len(HIDDEN_GOALS.get(_resolve(task), ()))


def canonical(name: str) -> str | None:
    """``pick-cube`` for ``pick-cube`` / ``PickCube`` / ``PickCube-v1`` / ``pick_cube``; None if unknown."""
    n = name.strip()
    n = re.sub(r"-v\d+$", "", n)
    n = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", n).lower().replace("_", "-")
    return n if n in ENV_IDS else None


def _resolve(task: str) -> str:
    return resolve_task(task, canonical, "ManiSkill", TASKS)


def require() -> None:
    """Import the suite's dependencies (:class:`~difftori.envs.MissingDependencyError` with the install hint if missing)."""
    _import_maniskill()


def _import_maniskill():
    """Import ManiSkill (registers its envs) after pointing Vulkan at the private driver."""
    from difftori.envs import suite_imports, vulkan

    vulkan.configure()
    with suite_imports("ManiSkill", "mani-skill, sapien and mplib", INSTALL_HINT, mujoco=False):
        import gymnasium  # noqa: F401
        import mani_skill.envs  # noqa: F401
        import numpy
    if int(numpy.__version__.split(".")[0]) >= 2:
        from difftori.envs import MissingDependencyError

        raise MissingDependencyError(
            f"ManiSkill needs numpy<2 (mplib 0.1.1 crashes under numpy {numpy.__version__}); set up with: {INSTALL_HINT}"
        )


def _build_env_class():
    """Build the Env subclass on first use so importing this module imports neither gymnasium nor ManiSkill."""
    import gymnasium as gym
    import torch

    class _ManiSkillEnv(ManipulationEnv, gym.Env):
        """One ManiSkill3 task with dict observations (see module docstring)."""

        SUITE, ACTION_DIM = "ManiSkill", ACTION_DIM

        metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

        def __init__(
            self,
            task: str,
            obs_type: str = "pointcloud",
            img_size: int = 84,
            num_points: int = 512,
            seed: int | None = None,
            episode_length: int | None = None,
            render_mode: str | None = None,
            render_size: int = 256,
            pc_render_size: int = 128,
            render_backend: str | None = None,
            arm_control: str | None = None,
            cloud_robot: str | None = None,
        ) -> None:
            self.task = _resolve(task)
            self.arm_control = ARM_CONTROL.get(self.task, "absolute") if arm_control is None else arm_control
            if self.arm_control not in ARM_CONTROLS:
                raise ValueError(f"arm_control must be one of {', '.join(ARM_CONTROLS)}, got {arm_control!r}")
            self.cloud_robot = CLOUD_ROBOT.get(self.task, "all") if cloud_robot is None else cloud_robot
            if self.cloud_robot not in CLOUD_ROBOTS:
                raise ValueError(f"cloud_robot must be one of {', '.join(CLOUD_ROBOTS)}, got {cloud_robot!r}")
            episode_length = EPISODE_LENGTHS[self.task] if episode_length is None else episode_length
            self._set_options(obs_type, img_size, num_points, episode_length, render_mode, render_size, pc_render_size)
            needs_camera = obs_type != "state" or render_mode is not None
            if render_backend is None:  # no renderer for pure state envs; SAPIEN picks (or falls back to) a device
                from difftori.envs import vulkan

                render_backend = "none" if not needs_camera else ("cpu" if vulkan.configure() else "gpu")
            self.render_backend = render_backend
            cam_size = self.img_size if obs_type == "image" else self.pc_render_size
            self._gym_env = gym.make(
                ENV_IDS[self.task],
                obs_mode="state",  # full_state; camera data is captured here, from one camera only
                control_mode=CONTROL_MODE,
                sim_backend="physx_cpu",
                render_backend=render_backend,
                render_mode=render_mode,
                sensor_configs={CAMERA: dict(width=cam_size, height=cam_size)},
                human_render_camera_configs=dict(width=self.render_size, height=self.render_size),
            )
            base = self._gym_env.unwrapped
            self._base = base
            if needs_camera:
                _keep_renderer_alive(base)
            self._needs_camera = needs_camera
            self._left_out_ids = self._find_left_out_ids()
            space = base.single_action_space
            self._act_low = np.asarray(space.low, dtype=np.float64)
            self._act_high = np.asarray(space.high, dtype=np.float64)
            self._full_dim = int(base.single_observation_space.shape[0])
            self._full_state = np.zeros(self._full_dim, dtype=np.float32)
            self._t = 0
            self._pending_seed = seed

            self._set_spaces("maniskill", agent_state_dim(self.task), self._full_dim, {
                "env_id": ENV_IDS[self.task],
                "control_mode": CONTROL_MODE,
                "arm_control": self.arm_control,
                "cloud_robot": self.cloud_robot,
                "camera": CAMERA,
                "img_size": self.img_size,
                "num_points": self.num_points,
                "pc_render_size": self.pc_render_size,
                "crop_box": CROP_BOX,
            })

        # ----------------------------------------------------------------- gym API
        def reset(self, *, seed: int | None = None, options: dict | None = None):
            seed = self._take_seed(seed)
            raw, _ = self._base.reset(seed=None if seed is None else int(seed))
            self._full_state = _np(raw)[0].astype(np.float32)
            self._left_out_ids = self._find_left_out_ids()  # the scene may have been rebuilt
            return self._observation(), {"success": 0.0}

        def step(self, action):
            raw, reward, _, _, info = self._base.step(self.denormalize_action(self._checked_action(action)))
            self._full_state = _np(raw)[0].astype(np.float32)
            truncated = self._tick()
            out = {k: _scalar(v) for k, v in info.items()}
            out["success"] = float(bool(out.get("success", 0.0)))
            return self._observation(), float(_np(reward).reshape(-1)[0]), False, truncated, out

        def render(self):
            if self.render_mode != "rgb_array":
                return None
            return np.ascontiguousarray(_np(self._base.render())[0].astype(np.uint8))

        def close(self):
            self._gym_env.close()

        # ------------------------------------------------------------------ actions
        def denormalize_action(self, action: np.ndarray) -> np.ndarray:
            """ManiSkill's ``pd_joint_pos`` action (joint targets in radians, gripper in [-1, 1]) of ``action`` in
            [-1, 1] (with delta arm control: relative to the current joint positions, within the joint limits)."""
            action = np.asarray(action, dtype=np.float64)
            raw = self._act_low + (action + 1.0) * 0.5 * (self._act_high - self._act_low)
            if self.arm_control == "delta":
                target = self._arm_qpos() + JOINT_DELTA * action[:ARM_JOINTS]
                raw[:ARM_JOINTS] = np.clip(target, self._act_low[:ARM_JOINTS], self._act_high[:ARM_JOINTS])
            return raw

        def normalize_action(self, raw: np.ndarray) -> np.ndarray:
            """Inverse of :meth:`denormalize_action` in the current state, clipped to [-1, 1] (joint targets beyond
            the limits, or further than :data:`JOINT_DELTA` from the current positions)."""
            raw = np.asarray(raw, dtype=np.float64)
            a = 2.0 * (raw - self._act_low) / (self._act_high - self._act_low) - 1.0
            if self.arm_control == "delta":
                a[:ARM_JOINTS] = (raw[:ARM_JOINTS] - self._arm_qpos()) / JOINT_DELTA
            return np.clip(a, -1.0, 1.0).astype(np.float32)

        def _arm_qpos(self) -> np.ndarray:
            return _np(self._base.agent.robot.get_qpos())[0, :ARM_JOINTS].astype(np.float64)

        # ------------------------------------------------------------- observations
        @property
        def unwrapped_maniskill(self):
            """The ManiSkill env (``BaseEnv``, one CPU sub-env)."""
            return self._base

        @property
        def raw_obs(self) -> np.ndarray:
            """ManiSkill's latest flattened state observation (same as ``full_state``)."""
            return self._full_state.copy()

        def env_options(self) -> dict[str, Any]:
            """The options (besides ``obs_type``) that rebuild this env: stored with collected demos."""
            return {
                "episode_length": self.episode_length,
                "img_size": self.img_size,
                "num_points": self.num_points,
                "pc_render_size": self.pc_render_size,
                "arm_control": self.arm_control,
                "cloud_robot": self.cloud_robot,
            }

        def agent_state(self) -> np.ndarray:
            """Joint positions (9), joint velocities (9), tcp pose (xyz, wxyz quaternion), hidden goals' xyz."""
            proprio = self._base.agent.get_proprioception()
            parts = [proprio["qpos"], proprio["qvel"], self._base.agent.tcp.pose.raw_pose]
            if HIDDEN_GOALS.get(self.task):
                hidden = {obj.name: obj for obj in self._base._hidden_objects}
                parts += [hidden[name].pose.p for name in HIDDEN_GOALS[self.task]]
            return np.concatenate([_np(p)[0] for p in parts]).astype(np.float32)

        def full_state(self) -> np.ndarray:
            """ManiSkill's flattened state observation (``full_state`` of ``obs_type="state"``)."""
            return self._full_state.copy()

        def image(self) -> np.ndarray:
            """``(img_size, img_size, 3)`` uint8 image of the task camera."""
            return self.capture(rgb=True)["rgb"]

        def _find_left_out_ids(self) -> np.ndarray:
            """Segmentation ids left out of point clouds: the background, and the arm's links for a gripper-only cloud."""
            builder = getattr(self._base, "table_scene", None) or getattr(self._base, "scene_builder", None)
            objs = builder.scene_objects if builder is not None else []
            ids = [int(a.per_scene_id[0]) for a in objs if a.name in BACKGROUND_NAMES]
            if self.cloud_robot == "gripper":
                ids += [int(link.per_scene_id[0]) for link in self._base.agent.robot.links if link.name not in GRIPPER_LINKS]
            return np.array(ids, dtype=np.int64)

        def capture(self, rgb: bool = False, position: bool = False) -> dict[str, np.ndarray]:
            """One frame of the camera: ``rgb`` (S, S, 3) uint8, ``position`` (S, S, 3) camera-frame metres
            (OpenGL axes) and ``segmentation`` (S, S) per-actor ids (0: nothing hit)."""
            base = self._base
            if not self._needs_camera or CAMERA not in base.scene.sensors:
                raise RuntimeError(f"{self.task}: no camera in a state env without render_mode")
            camera = base.scene.sensors[CAMERA]  # looked up each time: a reconfiguring reset replaces it
            for obj in base._hidden_objects:  # goal markers: invisible to sensors, as in ManiSkill's observations
                obj.hide_visual()
            base.scene.update_render(update_sensors=True, update_human_render_cameras=False)
            camera.capture()
            data = camera.get_obs(rgb=rgb, depth=False, position=position, segmentation=position)
            out = {}
            if rgb:
                out["rgb"] = _np(data["rgb"])[0]
            if position:
                out["position"] = _np(data["position"])[0].astype(np.float32) / 1000.0  # mm -> m
                out["segmentation"] = _np(data["segmentation"])[0, ..., 0].astype(np.int64)
            return out

        def camera_pose(self) -> np.ndarray:
            """``(4, 4)`` camera-to-world transform (OpenGL camera axes)."""
            return _np(self._base.scene.sensors[CAMERA].get_params()["cam2world_gl"])[0].astype(np.float64)

        def world_points(self) -> tuple[np.ndarray, np.ndarray]:
            """All camera pixels as world points ``(S*S, 3)`` and their segmentation ids ``(S*S,)``."""
            frame = self.capture(position=True)
            pose = self.camera_pose()
            pts = frame["position"].reshape(-1, 3).astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]
            return pts, frame["segmentation"].reshape(-1)

        def segment_points(self, pts: np.ndarray, seg: np.ndarray) -> np.ndarray:
            """Boolean mask of points inside :data:`CROP_BOX` that hit a foreground actor or a kept robot link."""
            keep = (seg != 0) & ~np.isin(seg, self._left_out_ids)
            return keep & crop_mask(pts, CROP_BOX)

        def point_cloud(self) -> np.ndarray:
            """``(num_points, 3)`` float32 world-frame point cloud of the current scene."""
            pts, seg = self.world_points()
            return sample_cloud(pts, self.segment_points(pts, seg), self.num_points, f"{self.task} (crop {CROP_BOX})")

    def _np(x) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    def _scalar(v):
        arr = _np(v)
        return arr.reshape(-1)[0].item() if arr.size == 1 else arr

    return _ManiSkillEnv


_RENDER_KEEPALIVE: dict[str, Any] = {}


def _keep_renderer_alive(base) -> None:
    """Hold one empty SAPIEN render system per render device for the life of the process.

    SAPIEN frees its Vulkan context, and with it the compiled shaders, when the last render system is
    deleted; the next env then compiles them again (7 s on an idle core with lavapipe, 20-30 s on a
    busy machine). Evaluations that build a fresh env each time would pay that every time.
    """
    import sapien

    device = getattr(getattr(base, "backend", None), "render_device", None)
    if device is None:
        return
    key = str(device)
    if key not in _RENDER_KEEPALIVE:
        _RENDER_KEEPALIVE[key] = sapien.render.RenderSystem(device)


env_class = lazy_env_class(require, _build_env_class)
"""The ``gymnasium.Env`` subclass used by :func:`make` (imports gymnasium and ManiSkill)."""


def make(task: str, **options) -> Any:
    """Create the ManiSkill env for ``task`` (``pick-cube`` or ``PickCube-v1``); see the module docstring.

    Options: ``obs_type`` ("pointcloud" | "image" | "state"), ``img_size`` (84), ``num_points`` (512),
    ``seed``, ``episode_length`` (per task, :data:`EPISODE_LENGTHS`), ``render_mode`` (None |
    "rgb_array"), ``render_size`` (256), ``pc_render_size`` (128), ``render_backend`` (None: "cpu" with
    the private software Vulkan, else ManiSkill's "gpu"; "none" for state envs without render_mode),
    ``arm_control`` ("absolute" | "delta"; per task, :data:`ARM_CONTROL`), ``cloud_robot`` ("all" | "gripper"; per
    task, :data:`CLOUD_ROBOT`).
    """
    name = _resolve(task)
    return env_class()(name, **options)


class MotionPlannedExpert:
    """ManiSkill's own motion-planning solution for a task (mplib screw / RRT plans in ``pd_joint_pos``).

    Two ways to use it, both after ``env.reset()``:

    * :meth:`rollout` (what ``il collect`` uses) lets the solution drive ``env`` itself: each joint
      target it emits is normalised to [-1, 1] and executed with ``env.step``, so the recorded
      observations and actions are exactly the executed episode;
    * :meth:`start_episode` plans on the env from its current state, records the actions and restores
      the state; :meth:`get_action` then replays them open-loop. Restoring a PhysX state is not exact:
      tight insertions (PlugCharger) succeed less often on replay than in the planning run.

    Once the plan is exhausted the last action is held (the robot stays where the plan ended).
    """

    def __init__(self, task: str) -> None:
        self.task = _resolve(task)
        self._actions: list[np.ndarray] = []
        self._i = 0
        self.planned_ok = False
        self.plan_success = False
        """Whether the env reported success at the end of the planning run (before the replay)."""

    def _solution(self):
        """ManiSkill's ``solve(env, seed, debug, vis)`` for the task (Panda solutions)."""
        from mani_skill.examples.motionplanning.panda import solutions

        return getattr(solutions, "solve" + ENV_IDS[self.task].split("-")[0])

    def start_episode(self, env) -> bool:
        """Plan the episode from ``env``'s current state; False if a planning stage failed."""
        base = env.unwrapped_maniskill
        state = base.get_state_dict()
        elapsed = base._elapsed_steps.clone()
        actions: list[np.ndarray] = []

        def step(raw):
            actions.append(env.normalize_action(raw))  # before the step: a delta action is relative to this state
            return base.step(raw)

        try:
            res = self._solution()(_Driver(base, step), seed=None, debug=False, vis=False)
            self.plan_success = bool(base.evaluate()["success"][0]) if actions else False
        finally:
            base.set_state_dict(state)
            base._elapsed_steps[:] = elapsed
        self._actions = actions
        self._i = 0
        self.planned_ok = not (isinstance(res, int) and res == -1) and bool(self._actions)
        return self.planned_ok

    def rollout(self, env, obs: dict, on_step) -> bool:
        """Run the solution on ``env`` from its current state (``obs``: the observation there).

        ``on_step(obs, action, info)`` is called for every executed step with the observation the
        action was taken in; it returns True to end the episode. After the plan, the last action is
        held until ``on_step`` ends the episode or the env truncates it. Returns False if a planning
        stage failed (the episode then ends where the solution gave up).
        """
        current = {"obs": obs, "raw": None}

        def step(raw):
            action = env.normalize_action(raw)
            nxt, reward, terminated, truncated, info = env.step(action)
            stop = on_step(current["obs"], action, info)
            current["obs"], current["raw"] = nxt, np.asarray(raw, dtype=np.float64)
            if stop or terminated or truncated:
                raise _EpisodeOver
            return nxt, reward, terminated, truncated, info

        try:
            res = self._solution()(_Driver(env.unwrapped_maniskill, step), seed=None, debug=False, vis=False)
            self.planned_ok = not (isinstance(res, int) and res == -1) and current["raw"] is not None
            if not self.planned_ok:
                return False
            while True:
                step(current["raw"])
        except _EpisodeOver:
            pass
        return True

    def get_action(self, obs: Any = None) -> np.ndarray:
        """The next planned action in [-1, 1] (``obs`` is ignored: the plan is open-loop)."""
        if not self._actions:
            raise RuntimeError("MotionPlannedExpert: call start_episode(env) after each reset")
        a = self._actions[min(self._i, len(self._actions) - 1)]
        self._i += 1
        return a.copy()

    def __len__(self) -> int:
        return len(self._actions)


class _EpisodeOver(Exception):
    """Raised inside a solution's env.step to end the episode (success reached or step limit)."""


class _Driver:
    """What a ManiSkill solution sees as its env: ``reset`` keeps the current state, ``step`` is ours."""

    def __init__(self, base, step) -> None:
        self._base = base
        self.step = step

    @property
    def unwrapped(self):
        return self._base

    def reset(self, seed: int | None = None, options: dict | None = None):
        return self._base.get_obs(), {}


def make_expert(task: str) -> MotionPlannedExpert:
    """ManiSkill's motion-planning solution for ``task`` as an expert (see :class:`MotionPlannedExpert`)."""
    _import_maniskill()
    return MotionPlannedExpert(task)
