"""Plumbing shared by the manipulation envs: option checks, task names, the lazy env class, background geoms."""

import numpy as np
import pytest

from difftori.envs import UnknownTaskError
from difftori.envs.manipulation import ManipulationEnv, lazy_env_class, resolve_task
from difftori.envs.pointcloud import background_geoms, foreground_mask


def _options(**over):
    opts = dict(obs_type="pointcloud", img_size=84, num_points=512, episode_length=10, render_mode=None, render_size=64,
                pc_render_size=32)
    opts.update(over)
    return opts


def test_options_are_checked_and_stored():
    env = ManipulationEnv()
    env._set_options(**_options(img_size=np.int64(32)))
    assert (env.obs_type, env.img_size, env.episode_length, env.pc_render_size) == ("pointcloud", 32, 10, 32)
    assert type(env.img_size) is int
    for bad, match in ((dict(obs_type="rgbd"), "obs_type"), (dict(num_points=0), "num_points"),
                       (dict(episode_length=2.5), "episode_length"), (dict(render_mode="human"), "render_mode")):
        with pytest.raises(ValueError, match=match):
            ManipulationEnv()._set_options(**_options(**bad))


def test_resolve_task_names_the_suite_and_its_tasks():
    canon = {"a": "a", "A-v1": "a"}.get
    assert resolve_task("A-v1", canon, "Toy", ("a", "b")) == "a"
    with pytest.raises(UnknownTaskError, match=r"unknown Toy task 'c'; known tasks: a, b"):
        resolve_task("c", canon, "Toy", ("a", "b"))


def test_lazy_env_class_requires_every_time_and_builds_once():
    calls = {"require": 0, "build": 0}

    def require():
        calls["require"] += 1

    def build():
        calls["build"] += 1
        return type("Env", (), {})

    env_class = lazy_env_class(require, build)
    assert calls == {"require": 0, "build": 0}  # nothing happens on import
    first = env_class()
    assert env_class() is first and calls == {"require": 2, "build": 1}

    def missing():
        raise ImportError("no simulator")

    with pytest.raises(ImportError, match="no simulator"):
        lazy_env_class(missing, build)()


def test_background_geoms_and_foreground_mask():
    mujoco = pytest.importorskip("mujoco")
    xml = """<mujoco><worldbody>
      <geom name="floor" type="plane" size="5 5 0.1" pos="0 0 -2"/>
      <geom name="shelf" type="plane" size="5 5 0.1" pos="0 0 0"/>
      <body name="table" pos="0 0 0.5"><geom name="top" type="box" size="1 1 0.05"/></body>
      <body name="cube" pos="0 0 0.6"><geom type="box" size="0.02 0.02 0.02"/></body>
      <body name="ball" pos="0.5 0 0.7"><geom type="sphere" size="0.05"/></body>
    </worldbody></mujoco>"""
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    box = ((-1.0, -1.0, -0.1), (1.0, 1.0, 1.0))
    bodies = ("world", "table")
    geoms = background_geoms(model, data, box, lambda g: model.body(model.geom_bodyid[g]).name in bodies, 0.005)
    # the floor plane lies 1.9 m below the crop box: skipped; the shelf plane and the table top stay; cube, ball are not background
    assert sorted(k for k, *_ in geoms) == ["box", "plane"]
    pts = np.array([[0.0, 0.0, 0.551], [0.0, 0.0, 0.58], [0.0, 0.0, 2.0], [0.5, 0.5, 0.3], [0.0, 0.0, 0.001]])
    # on the table top (dropped), on the cube (kept), above the crop box, between shelf and table (kept), on the shelf
    assert foreground_mask(pts, box, geoms, 0.005).tolist() == [False, True, False, True, False]


def test_suite_imports_turn_import_and_gl_failures_into_one_line_errors():
    from difftori.envs import MissingDependencyError, suite_imports

    with pytest.raises(MissingDependencyError, match=r"^Foo tasks need the 'foo' package \(No module named 'foo'\); install with: pip x$"):
        with suite_imports("Foo", "the 'foo' package", "pip x"):
            import foo  # noqa: F401
    with pytest.raises(RuntimeError, match="MuJoCo cannot render with MUJOCO_GL=.*OSError: no EGL"):
        with suite_imports("Foo", "foo", "pip x"):
            raise OSError("no EGL")
    with pytest.raises(OSError, match="^not GL$"):  # a suite without MuJoCo passes other errors on as they are
        with suite_imports("Bar", "bar", "pip y", mujoco=False):
            raise OSError("not GL")
