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
    background_mask,
    camera_rays,
    crop_mask,
    disable_costly_rendering,
    farthest_point_sample,
    geom_distance,
    sample_cloud,
    unproject,
)
from difftori.envs.manipulation import ManipulationEnv, manipulation_observations
from difftori.envs.spec import EnvSpec

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

OBS_TYPES = ("pointcloud", "image", "state")

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
    try:
        import metaworld  # noqa: F401
        import mujoco  # noqa: F401
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as exc:
        from difftori.envs import MissingDependencyError

        raise MissingDependencyError(
            f"MetaWorld tasks need the 'metaworld' and 'mujoco' packages ({exc}); install them with: {INSTALL_HINT}"
        ) from None
    except (AttributeError, RuntimeError, OSError) as exc:  # mujoco could not load its GL backend
        from difftori.utils.gl import render_error

        raise render_error(exc) from None
    return ALL_V3_ENVIRONMENTS, ENV_POLICY_MAP


def _resolve(task: str) -> str:
    name = canonical(task)
    if name is None:
        from difftori.envs import UnknownTaskError

        raise UnknownTaskError(f"unknown MetaWorld task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    return name


def make_expert(task: str):
    """MetaWorld's scripted expert for ``task``; ``expert.get_action(full_state_39d) -> (4,)``."""
    name = _resolve(task)
    _, policies = _import_metaworld()
    return policies[f"{name}-v3"]()


def _build_env_class():
    """Build the Env subclass on first use so importing this module does not import gymnasium."""
    import gymnasium as gym
    import mujoco
    from gymnasium import spaces

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
            if obs_type not in OBS_TYPES:
                raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
            for key, val in (("img_size", img_size), ("num_points", num_points), ("episode_length", episode_length),
                             ("render_size", render_size), ("pc_render_size", pc_render_size)):  # fmt: skip
                if not isinstance(val, (int, np.integer)) or val <= 0:
                    raise ValueError(f"{key} must be a positive integer, got {val!r}")
            if render_mode not in (None, "rgb_array"):
                raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
            self.obs_type = obs_type
            self.img_size, self.num_points = int(img_size), int(num_points)
            self.episode_length = int(episode_length)
            self.render_mode, self.render_size, self.pc_render_size = render_mode, int(render_size), int(pc_render_size)

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
            self._renderers: dict[tuple[int, bool], Any] = {}
            self._rays = None
            self._raw_obs = np.zeros(FULL_STATE_DIM)
            self._t = 0
            self._pending_seed = seed
            if seed is None:
                self._inner.seed(int(np.random.SeedSequence().generate_state(1)[0]))

            shapes, self.observation_space = manipulation_observations(
                obs_type, AGENT_STATE_DIM, FULL_STATE_DIM, self.img_size, self.num_points)
            self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
            self.task_spec = EnvSpec(
                task=self.task,
                suite="metaworld",
                obs_type=obs_type,
                obs_shapes=shapes,
                action_dim=4,
                episode_length=self.episode_length,
                extras={
                    "camera": camera,
                    "camera_pos": self.camera_pos,
                    "img_size": self.img_size,
                    "num_points": self.num_points,
                    "pc_render_size": self.pc_render_size,
                    "crop_box": CROP_BOX,
                    "background_margin": BACKGROUND_MARGIN,
                    "metaworld_max_path_length": 500,
                },
            )

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
            for r in self._renderers.values():
                r.close()
            self._renderers.clear()
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

        def _renderer(self, size: int, depth: bool):
            key = (size, depth)
            if key not in self._renderers:
                from difftori.utils.gl import safe_renderer

                r = safe_renderer(self._inner.model, size, size)
                disable_costly_rendering(r)
                if depth:
                    r.enable_depth_rendering()
                self._renderers[key] = r
            return self._renderers[key]

        def _rgb(self, size: int) -> np.ndarray:
            r = self._renderer(size, depth=False)
            r.update_scene(self._inner.data, camera=self._cam_id)
            img = r.render()
            return np.ascontiguousarray(img[::-1, ::-1])  # corner2 is mounted upside down

        def depth_image(self) -> np.ndarray:
            """``(S, S)`` depth in metres (distance along the camera axis), rows top-first, unrotated."""
            r = self._renderer(self.pc_render_size, depth=True)
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

        def _background_geoms(self) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
            """Static background geoms near the crop box, as ``(kind, centre, rotation, half_sizes)``.

            Boxes and planes of :data:`BACKGROUND_BODIES` (floor, table top, retaining walls);
            geoms that cannot come within the margin of the crop box (the floor) are skipped.
            """
            m, d = self._inner.model, self._inner.data
            lo, hi = np.asarray(CROP_BOX[0]), np.asarray(CROP_BOX[1])
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            kinds = {int(mujoco.mjtGeom.mjGEOM_BOX): "box", int(mujoco.mjtGeom.mjGEOM_PLANE): "plane"}
            out = []
            for g in range(m.ngeom):
                kind = kinds.get(int(m.geom_type[g]))
                if kind is None or m.geom_group[g] >= 3 or m.body(m.geom_bodyid[g]).name not in BACKGROUND_BODIES:
                    continue
                geom = (kind, d.geom_xpos[g].copy(), d.geom_xmat[g].reshape(3, 3).copy(), m.geom_size[g].copy())
                if kind == "plane" and geom_distance(geom, corners.T).min() > BACKGROUND_MARGIN:
                    continue  # the whole crop box lies above this plane
                out.append(geom)
            return out

        def background_distance(self, pts: np.ndarray) -> np.ndarray:
            """Distance (metres, <= 0 inside) from each point ``(N, 3)`` to the nearest background geom."""
            coords = np.ascontiguousarray(pts.T)
            dist = np.full(len(pts), np.inf, dtype=coords.dtype)
            for geom in self._background:
                np.minimum(dist, geom_distance(geom, coords), out=dist)
            return dist

        def segment_points(self, pts: np.ndarray) -> np.ndarray:
            """Boolean mask of points ``(N, 3)`` inside :data:`CROP_BOX` and off the background."""
            keep = crop_mask(pts, CROP_BOX)
            idx = np.flatnonzero(keep)
            keep[idx] = ~background_mask(pts[idx], self._background, BACKGROUND_MARGIN)
            return keep

        def point_cloud(self) -> np.ndarray:
            """``(num_points, 3)`` float32 world-frame point cloud of the current scene."""
            pts = self.unproject(self.depth_image())
            return sample_cloud(pts, self.segment_points(pts), self.num_points, f"{self.task} (crop {CROP_BOX})")

    return _MetaWorldEnv


_ENV_CLASS = None


def env_class():
    """The ``gymnasium.Env`` subclass used by :func:`make` (imports gymnasium and mujoco)."""
    global _ENV_CLASS
    _import_metaworld()
    if _ENV_CLASS is None:
        _ENV_CLASS = _build_env_class()
    return _ENV_CLASS


def make(task: str, **options) -> Any:
    """Create the MetaWorld env for ``task`` (``door-open`` or ``door-open-v3``); see module docstring.

    Options: ``obs_type`` ("pointcloud" | "image" | "state"), ``img_size`` (84), ``num_points`` (512),
    ``camera`` ("corner2"), ``camera_pos`` (DP3's; None keeps MetaWorld's), ``seed``,
    ``episode_length`` (200), ``render_mode`` (None | "rgb_array"), ``render_size`` (256),
    ``pc_render_size`` (128).
    """
    name = _resolve(task)
    return env_class()(name, **options)
