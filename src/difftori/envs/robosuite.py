"""robosuite (Robomimic's tasks) Lift, Can and Square with state, image or point-cloud observations.

The tasks the paper evaluates on Robomimic, simulated by robosuite 1.5 (``Lift``,
``PickPlaceCan``, ``NutAssemblySquare``) with a Panda arm and robosuite's default BASIC
composite controller (OSC_POSE arm: 6-D end-effector delta in the base frame, scaled to
5 cm / 0.5 rad per step, plus a gripper command; 7-D actions in [-1, 1]) at 20 Hz.

Every observation is a dict, as for MetaWorld. ``"state"`` is always the 9-D agent state of
Robomimic's low-dim data (end-effector position, end-effector quaternion xyzw, the two gripper
finger joints). ``obs_type`` adds one modality:

* ``"state"``: ``"full_state"``, the agent state followed by robosuite's ``object-state`` vector
  (Lift: 19-D, Can and Square: 23-D);
* ``"image"``: ``(3, img_size, img_size)`` uint8 RGB from ``agentview``, upright;
* ``"pointcloud"``: ``(num_points, 3)`` float32 world-frame xyz in metres.

Point clouds: depth images (``pc_render_size``\\ :sup:`2` pixels) from two cameras (one camera
sees the object from one side only, and a small object then gets few points) are unprojected into
world coordinates, cropped to the task's workspace box, stripped of background (floor, walls,
table top, the bins; :func:`background_geoms`) and farthest-point sampled to
``num_points``. Only visual geoms (group 1) are rendered, so the robot's collision meshes and the
sites stay out of images and clouds; shadows, reflections and the skybox are off.

Seeding: ``reset(seed=s)`` reseeds the generator robosuite draws object placements and the
robot's initial joint noise from, so equal seeds give identical initial states; later ``reset()``
calls continue that stream. The model itself (Lift's cube size is random in robosuite) is built under a fixed
seed, so every instance of a task is the same. Episodes are truncated after ``episode_length`` steps (default 400,
Robomimic's evaluation horizon). ``info["success"]`` is the env's own ``_check_success()``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from difftori.envs.pointcloud import Box, Geom, camera_rays, foreground_mask, sample_cloud, unproject
from difftori.envs.pointcloud import background_geoms as _background_geoms
from difftori.envs.manipulation import (
    ManipulationEnv,
    MujocoRenderers,
    lazy_env_class,
    resolve_task,
)

__all__ = ["TASKS", "TaskInfo", "TASK_INFO", "canonical", "require", "make", "make_expert", "env_class", "background_geoms"]

INSTALL_HINT = "pip install 'difftori[robosuite]' && pip install --no-deps robosuite==1.5.2 (or: make setup)"


@dataclass(frozen=True)
class TaskInfo:
    """A task's robosuite class, its object, its workspace box and the point-cloud cameras."""

    env_name: str
    """robosuite environment class name."""
    object_body: str
    """Body of the object the task moves (its pose is what the scripted expert reads)."""
    crop_box: Box
    """World-frame box ``(xyz_min, xyz_max)`` kept in point clouds: the table (or bins) and the space above it."""
    pc_cameras: tuple[str, ...]
    """Cameras whose depth images are fused into the point cloud."""
    aliases: tuple[str, ...] = ()


TASK_INFO: dict[str, TaskInfo] = {
    "lift": TaskInfo("Lift", "cube_main", ((-0.4, -0.4, 0.79), (0.4, 0.4, 1.4)), ("agentview", "sideview")),
    "can": TaskInfo(
        "PickPlaceCan", "Can_main", ((-0.12, -0.52, 0.81), (0.32, 0.55, 1.4)), ("agentview", "birdview"),
        aliases=("pickplacecan", "pick-place-can"),
    ),
    "square": TaskInfo(
        "NutAssemblySquare", "SquareNut_main", ((-0.4, -0.4, 0.81), (0.4, 0.4, 1.4)), ("agentview", "sideview"),
        aliases=("nutassemblysquare", "nut-assembly-square"),
    ),
}  # fmt: skip

RENDERER = "mujoco"
"""What renders this suite's images and point clouds (MuJoCo's GL context, or SAPIEN's Vulkan renderer)."""

TASKS: tuple[str, ...] = tuple(TASK_INFO)
"""Robomimic's single-arm tasks with a scripted expert: ``lift``, ``can``, ``square``."""

AGENT_STATE_DIM = 9
ACTION_DIM = 7
CONTROL_FREQ = 20
DEFAULT_EPISODE_LENGTH = 400
MODEL_SEED = 0
"""Seed of the generator robosuite builds a task's model with (Lift draws its cube's size at construction): every
instance of a task is the same model, in any process; placements then come from the env's own seed."""
IMAGE_CAMERA = "agentview"
BACKGROUND_MARGIN = 0.005
"""Points closer than this (metres) to a background geom are dropped."""

_NOISY_LOGS = ("macro", "robosuite_models", "mink", "does not have this component", "controller configuration")


def canonical(name: str) -> str | None:
    """``lift`` / ``can`` / ``square`` for those names or robosuite's class names (any case); None otherwise."""
    n = name.strip().lower().replace("_", "-")
    for task, info in TASK_INFO.items():
        if n == task or n in info.aliases or n == info.env_name.lower():
            return task
    return None


def _resolve(task: str) -> str:
    return resolve_task(task, canonical, "robosuite", TASKS)


def _quiet_robosuite_logs() -> None:
    """Drop robosuite's start-up chatter (private macro file, optional robots, unused controller parts)."""
    logger = logging.getLogger("robosuite_logs")
    if not getattr(logger, "_difftori_quiet", False):
        logger.addFilter(lambda r: r.levelno >= logging.ERROR or not any(s in r.getMessage() for s in _NOISY_LOGS))
        logger._difftori_quiet = True  # type: ignore[attr-defined]


def require() -> None:
    """Import the suite's dependencies (:class:`~difftori.envs.MissingDependencyError` with the install hint if missing)."""
    _import_robosuite()


def _import_robosuite():
    _quiet_robosuite_logs()
    from difftori.envs import suite_imports

    with suite_imports("robosuite", "the 'robosuite' package and its dependencies", INSTALL_HINT):
        import mujoco  # noqa: F401
        import robosuite
        from robosuite.controllers import load_composite_controller_config
    return robosuite, load_composite_controller_config


def make_expert(task: str):
    """The scripted waypoint expert for ``task``: ``expert.reset()`` per episode, ``expert.get_action(env.raw_obs) -> (7,)``."""
    from difftori.envs.robosuite_experts import make_expert as _make

    return _make(_resolve(task))


def background_geoms(model, data, crop_box: Box) -> list[Geom]:
    """Static background boxes/planes near ``crop_box``: floor, walls, table top and legs, the bins.

    The bins (fixed in every episode, like the table) would take most of a Can cloud and leave the
    can a handful of points; the pegs and the Can target marker stay. A plane the crop box does not
    reach within the margin is skipped.
    """

    def is_background(g: int) -> bool:
        body = model.body(model.geom_bodyid[g]).name
        return body in ("world", "table") or body.startswith("bin")

    return _background_geoms(model, data, crop_box, is_background, BACKGROUND_MARGIN)


def _reseed_samplers(sampler, rng: np.random.Generator) -> None:
    """Point a placement sampler (and the samplers a composite one holds) at ``rng``."""
    if sampler is None:
        return
    if hasattr(sampler, "rng"):
        sampler.rng = rng
    for sub in getattr(sampler, "samplers", {}).values():
        _reseed_samplers(sub, rng)


def _build_env_class():
    """Build the Env subclass on first use so importing this module does not import gymnasium or robosuite."""
    import gymnasium as gym
    import mujoco

    class _RobosuiteEnv(ManipulationEnv, gym.Env):
        """One robosuite task with dict observations (see module docstring)."""

        SUITE, ACTION_DIM = "robosuite", ACTION_DIM

        metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

        def __init__(
            self,
            task: str,
            obs_type: str = "pointcloud",
            img_size: int = 84,
            num_points: int = 512,
            seed: int | None = None,
            episode_length: int = DEFAULT_EPISODE_LENGTH,
            render_mode: str | None = None,
            render_size: int = 256,
            pc_render_size: int = 112,
            pc_cameras: tuple[str, ...] | list[str] | None = None,
        ) -> None:
            suite, load_config = _import_robosuite()
            self.task = _resolve(task)
            info = TASK_INFO[self.task]
            self._set_options(obs_type, img_size, num_points, episode_length, render_mode, render_size, pc_render_size)
            self.crop_box = info.crop_box

            self._inner = suite.make(
                info.env_name,
                robots="Panda",
                controller_configs=load_config(controller="BASIC", robot="Panda"),
                has_renderer=False,
                has_offscreen_renderer=False,  # this wrapper renders with its own mujoco.Renderer
                use_camera_obs=False,
                use_object_obs=True,
                control_freq=CONTROL_FREQ,
                horizon=self.episode_length + 1,
                ignore_done=True,  # truncation is ours
                hard_reset=False,  # keep one MjModel (the renderers hold it) across resets
                seed=MODEL_SEED,  # the model: robosuite draws Lift's cube size from this generator
            )
            rng = np.random.default_rng(seed)  # placements and joint noise: the caller's seed (None: fresh entropy)
            self._inner.rng = rng
            _reseed_samplers(getattr(self._inner, "placement_initializer", None), rng)
            self._model, self._data = self._inner.sim.model._model, self._inner.sim.data._data
            cams = [self._model.camera(i).name for i in range(self._model.ncam)]
            self.pc_cameras = tuple(pc_cameras) if pc_cameras is not None else info.pc_cameras
            for cam in (IMAGE_CAMERA, *self.pc_cameras):
                if cam not in cams:
                    raise ValueError(f"unknown camera {cam!r} for {self.task}; robosuite cameras: {cams}")
            self._model.vis.quality.offsamples = 0  # no multisampling: cheaper software rendering
            size = max(self.img_size, self.render_size, self.pc_render_size)
            self._model.vis.global_.offwidth = max(self._model.vis.global_.offwidth, size)
            self._model.vis.global_.offheight = max(self._model.vis.global_.offheight, size)
            self._scene_option = mujoco.MjvOption()
            self._scene_option.geomgroup[:] = 0
            self._scene_option.geomgroup[1] = 1  # visual geoms only
            self._scene_option.sitegroup[:] = 0
            self._renderers = MujocoRenderers(self._model)
            self._rays: dict[str, np.ndarray] = {}
            self._pending_seed = seed
            self._obj_body = self._model.body(info.object_body).id
            self._raw: dict[str, np.ndarray] = {}
            self._t = 0
            self._background: list[Geom] | None = None

            self.full_state_dim = AGENT_STATE_DIM + int(self._inner._get_observations()["object-state"].shape[0])
            self._set_spaces("robosuite", AGENT_STATE_DIM, self.full_state_dim, {
                "robosuite_env": info.env_name,
                "robot": "Panda",
                "controller": "BASIC (OSC_POSE)",
                "control_freq": CONTROL_FREQ,
                "image_camera": IMAGE_CAMERA,
                "pc_cameras": self.pc_cameras,
                "img_size": self.img_size,
                "num_points": self.num_points,
                "pc_render_size": self.pc_render_size,
                "crop_box": self.crop_box,
                "background_margin": BACKGROUND_MARGIN,
            })

        # ----------------------------------------------------------------- gym API
        def reset(self, *, seed: int | None = None, options: dict | None = None):
            seed = self._take_seed(seed)
            if seed is not None:
                rng = np.random.default_rng(int(seed))
                self._inner.rng = rng
                _reseed_samplers(getattr(self._inner, "placement_initializer", None), rng)
            self._set_raw(self._inner.reset())
            return self._observation(), {"success": 0.0}

        def step(self, action):
            raw, reward, _, info = self._inner.step(self._checked_action(action))
            truncated = self._tick()
            self._set_raw(raw)
            info = dict(info)
            info["success"] = float(bool(self._inner._check_success()))
            return self._observation(), float(reward), False, truncated, info

        def render(self):
            if self.render_mode != "rgb_array":
                return None
            return self._rgb(IMAGE_CAMERA, self.render_size)

        def close(self):
            self._renderers.close()
            self._inner.close()

        # ------------------------------------------------------------- observations
        @property
        def raw_obs(self) -> dict[str, np.ndarray]:
            """Privileged observation for the scripted experts: robosuite's observation dict plus
            ``grip_xmat`` (grip site rotation, 9), ``object_pos`` / ``object_quat`` (wxyz) of the task
            object and ``goal_pos`` (peg / target position; zeros for Lift)."""
            return {k: v.copy() for k, v in self._raw.items()}

        @property
        def unwrapped_robosuite(self):
            """The wrapped robosuite env."""
            return self._inner

        def _set_raw(self, raw: dict[str, np.ndarray]) -> None:
            d, m = self._data, self._model
            out = {k: np.asarray(v, dtype=np.float64) for k, v in raw.items()}
            site = m.site("gripper0_right_grip_site").id
            out["grip_xmat"] = d.site_xmat[site].copy()
            out["object_pos"] = d.xpos[self._obj_body].copy()
            out["object_quat"] = d.xquat[self._obj_body].copy()
            out["goal_pos"] = self._goal_pos()
            self._raw = out

        def _goal_pos(self) -> np.ndarray:
            m, d = self._model, self._data
            if self.task == "square":
                return d.xpos[m.body("peg1").id].copy()
            if self.task == "can":
                return d.xpos[m.body("VisualCan_main").id].copy()
            return np.zeros(3)

        def agent_state(self) -> np.ndarray:
            """Robomimic's 9-D agent state: end-effector position, quaternion (xyzw), gripper finger joints."""
            r = self._raw
            return np.concatenate([r["robot0_eef_pos"], r["robot0_eef_quat"], r["robot0_gripper_qpos"]]).astype(np.float32)

        def full_state(self) -> np.ndarray:
            """Agent state and robosuite's ``object-state`` (``full_state`` of ``obs_type="state"``)."""
            return np.concatenate([self.agent_state(), self._raw["object-state"]]).astype(np.float32)

        def image(self) -> np.ndarray:
            """``(img_size, img_size, 3)`` uint8 image of the agentview camera."""
            return self._rgb(IMAGE_CAMERA, self.img_size)

        def _rgb(self, camera: str, size: int) -> np.ndarray:
            """``(size, size, 3)`` uint8 RGB, upright (mujoco.Renderer returns rows top-first)."""
            r = self._renderers.get(size, depth=False)
            r.update_scene(self._data, camera=camera, scene_option=self._scene_option)
            return r.render().copy()

        def depth_image(self, camera: str) -> np.ndarray:
            """``(S, S)`` depth in metres (distance along the camera axis) from ``camera``, rows top-first."""
            r = self._renderers.get(self.pc_render_size, depth=True)
            r.update_scene(self._data, camera=camera, scene_option=self._scene_option)
            return r.render().copy()

        def camera_points(self, camera: str) -> np.ndarray:
            """World-frame points ``(S*S, 3)`` of ``camera``'s depth image."""
            cam = self._model.camera(camera).id
            if camera not in self._rays:
                self._rays[camera] = camera_rays(float(self._model.cam_fovy[cam]), self.pc_render_size)
            return unproject(self.depth_image(camera), self._rays[camera], self._data.cam_xpos[cam], self._data.cam_xmat[cam])

        def segment_points(self, pts: np.ndarray) -> np.ndarray:
            """Boolean mask of points ``(N, 3)`` inside the crop box and off the background."""
            if self._background is None:  # static geoms: computed once
                self._background = background_geoms(self._model, self._data, self.crop_box)
            return foreground_mask(pts, self.crop_box, self._background, BACKGROUND_MARGIN)

        def point_cloud(self) -> np.ndarray:
            """``(num_points, 3)`` float32 world-frame point cloud fused from :attr:`pc_cameras`."""
            pts = np.concatenate([self.camera_points(c) for c in self.pc_cameras])
            return sample_cloud(pts, self.segment_points(pts), self.num_points, f"{self.task} (crop {self.crop_box})")

    return _RobosuiteEnv


env_class = lazy_env_class(require, _build_env_class)
"""The ``gymnasium.Env`` subclass used by :func:`make` (imports gymnasium, mujoco and robosuite)."""


def make(task: str, **options) -> Any:
    """Create the robosuite env for ``task`` (``lift``, ``can``, ``square``); see module docstring.

    Options: ``obs_type`` ("pointcloud" | "image" | "state"), ``img_size`` (84), ``num_points`` (512),
    ``seed``, ``episode_length`` (400), ``render_mode`` (None | "rgb_array"), ``render_size`` (256),
    ``pc_render_size`` (112), ``pc_cameras`` (the task's two cameras).
    """
    name = _resolve(task)
    return env_class()(name, **options)
