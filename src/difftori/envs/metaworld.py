"""MetaWorld (v3) manipulation tasks with state, image or point-cloud observations, as in 3D Diffusion Policy.

Every observation is a dict. ``"state"`` is always the 9-D agent state of DP3 (gripper
tcp centre + right and left finger pad positions). ``obs_type`` adds one modality:

* ``"state"``: ``"full_state"``, MetaWorld's 39-D goal-observable vector;
* ``"image"``: ``(3, img_size, img_size)`` uint8 RGB from a fixed camera;
* ``"pointcloud"``: ``(num_points, 3)`` float32 world-frame xyz in metres.

Point clouds: one depth image (``pc_render_size``\\ :sup:`2` pixels, depth in metres) from the
camera is unprojected with the camera intrinsics/extrinsics into world coordinates, cropped to
the workspace box :data:`CROP_BOX`, stripped of the static background (floor, table top and
the table's retaining walls: points within :data:`BACKGROUND_MARGIN` of those geoms are
dropped; the exact geoms are read from the model), and reduced to exactly ``num_points`` by
farthest-point sampling (padded by repetition when fewer points are left). The robot arm and
the goal markers (sites) stay in the cloud, as in DP3's data.

Camera: MetaWorld's ``corner2`` orientation, moved closer to the table as DP3 does
(``camera_pos=(0.6, 0.295, 0.8)``); the images are rotated 180 degrees so they appear upright
(``corner2`` is mounted upside down). Shadows, reflections and the skybox are off (~4x cheaper
software rendering).

Seeding: ``reset(seed=s)`` draws the task's object/goal positions from a generator seeded with
``s``, so equal seeds give identical initial states; later ``reset()`` calls continue that stream.
Episodes are truncated after ``episode_length`` steps (default 200, DP3's setting; MetaWorld's own
limit is 500). ``info["success"]`` is MetaWorld's success flag.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from difftori.envs.pointcloud import (
    Geom,
    background_geoms,
    camera_rays,
    farthest_point_sample,
    foreground_mask,
    sample_cloud,
    unproject,
)
from difftori.envs.manipulation import (
    ManipulationEnv,
    MujocoRenderers,
    lazy_env_class,
    resolve_task,
)

__all__ = [
    "TASKS",
    "canonical",
    "require",
    "make",
    "make_expert",
    "env_class",
    "CROP_BOX",
    "DEFAULT_CAMERA_POS",
    "farthest_point_sample",
]

INSTALL_HINT = "pip install 'difftori[metaworld]'"

RENDERER = "mujoco"
"""What renders this suite's images and point clouds (MuJoCo's GL context, or SAPIEN's Vulkan renderer)."""

TASKS: tuple[str, ...] = (
    "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown",
    "button-press-topdown-wall", "button-press", "button-press-wall", "coffee-button",
    "coffee-pull", "coffee-push", "dial-turn", "disassemble", "door-close", "door-lock",
    "door-open", "door-unlock", "hand-insert", "drawer-close", "drawer-open", "faucet-open",
    "faucet-close", "hammer", "handle-press-side", "handle-press", "handle-pull-side",
    "handle-pull", "lever-pull", "pick-place-wall", "pick-out-of-hole", "pick-place",
    "plate-slide", "plate-slide-side", "plate-slide-back", "plate-slide-back-side",
    "peg-insert-side", "peg-unplug-side", "soccer", "stick-push", "stick-pull", "push",
    "push-wall", "push-back", "reach", "reach-wall", "shelf-place", "sweep-into", "sweep",
    "window-open", "window-close",
)  # fmt: skip
"""All 50 MetaWorld v3 tasks; each has a scripted expert policy."""

CROP_BOX: tuple[tuple[float, float, float], tuple[float, float, float]] = ((-0.75, -0.35, -0.05), (0.75, 1.15, 1.0))
"""World-frame workspace box ``(xyz_min, xyz_max)`` in metres kept in point clouds: the table
(x in [-0.7, 0.7], y in [0.2, 1.0], top at z = 0) with everything on it, the robot arm above
the table, and nothing below the table top except 5 cm for holes (floor, pedestal, table legs out)."""

BACKGROUND_BODIES = ("world", "tablelink", "RetainingWall")
"""Bodies whose box/plane geoms are background (floor, table top, retaining walls)."""

BACKGROUND_MARGIN = 0.005
"""Points closer than this (metres) to a background geom are dropped."""

DEFAULT_CAMERA = "corner2"
DEFAULT_CAMERA_POS: tuple[float, float, float] = (0.6, 0.295, 0.8)
"""DP3's position for ``corner2`` (closer to the table than MetaWorld's (1.3, -0.2, 1.1))."""

AGENT_STATE_DIM = 9
FULL_STATE_DIM = 39


def canonical(name: str) -> str | None:
    """``door-open`` for ``door-open`` / ``door-open-v3`` (any case); None if not a MetaWorld task."""
    n = name.strip().lower().replace("_", "-")
    for suffix in ("-v3-goal-observable", "-v3"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
            break
    return n if n in TASKS else None


def require() -> None:
    """Import the suite's dependencies (:class:`~difftori.envs.MissingDependencyError` with the install hint if missing)."""
    _import_metaworld()


def _import_metaworld():
    from difftori.envs import suite_imports

    with suite_imports("MetaWorld", "the 'metaworld' and 'mujoco' packages", INSTALL_HINT):
        import metaworld  # noqa: F401
        import mujoco  # noqa: F401
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP
    return ALL_V3_ENVIRONMENTS, ENV_POLICY_MAP


def _resolve(task: str) -> str:
    return resolve_task(task, canonical, "MetaWorld", sorted(TASKS))


def make_expert(task: str):
    """MetaWorld's scripted expert for ``task``; ``expert.get_action(full_state_39d) -> (4,)``."""
    name = _resolve(task)
    _, policies = _import_metaworld()
    return policies[f"{name}-v3"]()


def _build_env_class():
    """Build the Env subclass on first use so importing this module does not import gymnasium."""
    import gymnasium as gym
    import mujoco

    class _MetaWorldEnv(ManipulationEnv, gym.Env):
        """One MetaWorld task with dict observations (see module docstring)."""

        SUITE, ACTION_DIM = "MetaWorld", 4

        metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

        def __init__(
            self,
            task: str,
            obs_type: str = "pointcloud",
            img_size: int = 84,
            num_points: int = 512,
            camera: str = DEFAULT_CAMERA,
            camera_pos: tuple[float, float, float] | None = DEFAULT_CAMERA_POS,
            seed: int | None = None,
            episode_length: int = 200,
            render_mode: str | None = None,
            render_size: int = 256,
            pc_render_size: int = 128,
        ) -> None:
            envs, _ = _import_metaworld()
            self.task = _resolve(task)
            self._set_options(obs_type, img_size, num_points, episode_length, render_mode, render_size, pc_render_size)

            inner = envs[f"{self.task}-v3"]()
            inner._partially_observable = False  # goal-observable 39-D obs (the experts need the goal)
            inner.__dict__.pop("sawyer_observation_space", None)  # cached property depends on the flag
            inner._set_task_called = True
            inner._freeze_rand_vec = False
            inner.seeded_rand_vec = True  # object/goal positions from inner.np_random (seedable)
            inner.max_path_length = max(inner.max_path_length, self.episode_length)
            self._inner = inner
            model = inner.model
            cam_names = [model.camera(i).name for i in range(model.ncam)]
            if camera not in cam_names:
                raise ValueError(f"unknown camera {camera!r}; MetaWorld cameras: {cam_names}")
            self.camera = camera
            self._cam_id = model.camera(camera).id
            model.vis.quality.offsamples = 0  # no multisampling: ~30% cheaper software rendering
            if camera_pos is not None:
                model.cam_pos[self._cam_id] = np.asarray(camera_pos, dtype=np.float64)
            self.camera_pos = tuple(float(v) for v in model.cam_pos[self._cam_id])
            size = max(self.img_size, self.render_size, self.pc_render_size)
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
            model.vis.global_.offheight = max(model.vis.global_.offheight, size)
            mujoco.mj_forward(model, inner.data)
            self._background = self._background_geoms()
            self._renderers = MujocoRenderers(model)
            self._rays = None
            self._raw_obs = np.zeros(FULL_STATE_DIM)
            self._t = 0
            self._pending_seed = seed
            if seed is None:
                self._inner.seed(int(np.random.SeedSequence().generate_state(1)[0]))

            self._set_spaces("metaworld", AGENT_STATE_DIM, FULL_STATE_DIM, {
                "camera": camera,
                "camera_pos": self.camera_pos,
                "img_size": self.img_size,
                "num_points": self.num_points,
                "pc_render_size": self.pc_render_size,
                "crop_box": CROP_BOX,
                "background_margin": BACKGROUND_MARGIN,
                "metaworld_max_path_length": 500,
            })

        # ----------------------------------------------------------------- gym API
        def reset(self, *, seed: int | None = None, options: dict | None = None):
            seed = self._take_seed(seed)
            if seed is not None:
                self._inner.seed(int(seed))
            raw, _ = self._inner.reset()
            self._raw_obs = np.asarray(raw, dtype=np.float64)
            return self._observation(), {"success": 0.0}

        def step(self, action):
            raw, reward, _, _, info = self._inner.step(self._checked_action(action, np.float32))
            self._raw_obs = np.asarray(raw, dtype=np.float64)
            truncated = self._tick()
            return self._observation(), float(reward), False, truncated, dict(info)

        def render(self):
            if self.render_mode != "rgb_array":
                return None
            return self._rgb(self.render_size)

        def close(self):
            self._renderers.close()
            self._inner.close()

        # ------------------------------------------------------------- observations
        @property
        def raw_obs(self) -> np.ndarray:
            """The latest 39-D MetaWorld observation (input of the scripted experts)."""
            return self._raw_obs.copy()

        @property
        def unwrapped_metaworld(self):
            """The wrapped MetaWorld env (``SawyerXYZEnv``)."""
            return self._inner

        def agent_state(self) -> np.ndarray:
            """DP3's 9-D agent state: tcp centre, right pad, left pad (world xyz)."""
            inner = self._inner
            return np.concatenate(
                [inner.tcp_center, inner._get_site_pos("rightEndEffector"), inner._get_site_pos("leftEndEffector")]
            ).astype(np.float32)

        def full_state(self) -> np.ndarray:
            """The 39-D MetaWorld observation as float32 (``full_state`` of ``obs_type="state"``)."""
            return self._raw_obs.astype(np.float32)

        def image(self) -> np.ndarray:
            """``(img_size, img_size, 3)`` uint8 camera image."""
            return self._rgb(self.img_size)

        def _rgb(self, size: int) -> np.ndarray:
            r = self._renderers.get(size, depth=False)
            r.update_scene(self._inner.data, camera=self._cam_id)
            img = r.render()
            return np.ascontiguousarray(img[::-1, ::-1])  # corner2 is mounted upside down

        def depth_image(self) -> np.ndarray:
            """``(S, S)`` depth in metres (distance along the camera axis), rows top-first, unrotated."""
            r = self._renderers.get(self.pc_render_size, depth=True)
            r.update_scene(self._inner.data, camera=self._cam_id)
            return r.render().copy()

        def camera_rays(self) -> np.ndarray:
            """``(S*S, 3)`` camera-frame directions with unit depth (-z is the viewing axis)."""
            if self._rays is None:
                self._rays = camera_rays(float(self._inner.model.cam_fovy[self._cam_id]), self.pc_render_size)
            return self._rays

        def unproject(self, depth: np.ndarray) -> np.ndarray:
            """World-frame points ``(S*S, 3)`` of a depth image from :meth:`depth_image`."""
            data = self._inner.data
            return unproject(depth, self.camera_rays(), data.cam_xpos[self._cam_id], data.cam_xmat[self._cam_id])

        def _background_geoms(self) -> list[Geom]:
            """Static background geoms near the crop box: boxes and planes of :data:`BACKGROUND_BODIES` (floor, table
            top, retaining walls) in geom groups 0-2."""
            m, d = self._inner.model, self._inner.data

            def is_background(g: int) -> bool:
                return m.geom_group[g] < 3 and m.body(m.geom_bodyid[g]).name in BACKGROUND_BODIES

            return background_geoms(m, d, CROP_BOX, is_background, BACKGROUND_MARGIN)

        def segment_points(self, pts: np.ndarray) -> np.ndarray:
            """Boolean mask of points ``(N, 3)`` inside :data:`CROP_BOX` and off the background."""
            return foreground_mask(pts, CROP_BOX, self._background, BACKGROUND_MARGIN)

        def point_cloud(self) -> np.ndarray:
            """``(num_points, 3)`` float32 world-frame point cloud of the current scene."""
            pts = self.unproject(self.depth_image())
            return sample_cloud(pts, self.segment_points(pts), self.num_points, f"{self.task} (crop {CROP_BOX})")

    return _MetaWorldEnv


env_class = lazy_env_class(require, _build_env_class)
"""The ``gymnasium.Env`` subclass used by :func:`make` (imports gymnasium and mujoco)."""


def make(task: str, **options) -> Any:
    """Create the MetaWorld env for ``task`` (``door-open`` or ``door-open-v3``); see module docstring.

    Options: ``obs_type`` ("pointcloud" | "image" | "state"), ``img_size`` (84), ``num_points`` (512),
    ``camera`` ("corner2"), ``camera_pos`` (DP3's; None keeps MetaWorld's), ``seed``,
    ``episode_length`` (200), ``render_mode`` (None | "rgb_array"), ``render_size`` (256),
    ``pc_render_size`` (128).
    """
    name = _resolve(task)
    return env_class()(name, **options)
