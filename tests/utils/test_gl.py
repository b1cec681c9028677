"""Headless rendering: a backend is picked when MUJOCO_GL is unset, a set one is respected, failures are one line."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _run(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: v for k, v in env_changes.items() if v is not None})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_import_picks_a_headless_backend_and_metaworld_renders():
    assert ctypes.util.find_library("EGL") or ctypes.util.find_library("OSMesa"), "test machine needs EGL or OSMesa"
    code = (
        "import os\n"
        "from difftori.envs import make_env\n"
        "env = make_env('reach', obs_type='image', img_size=32)\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(os.environ['MUJOCO_GL'], obs['image'].shape, int(obs['image'].max()))\n"
        "env.close()\n"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr[-2000:]
    backend, shape, vmax = res.stdout.split(None, 1)[0], res.stdout.split("(")[1].split(")")[0], int(res.stdout.split()[-1])
    assert backend == ("egl" if ctypes.util.find_library("EGL") else "osmesa")
    assert shape == "3, 32, 32" and vmax > 0  # a real image, not a black frame


def test_a_set_backend_is_respected():
    res = _run("import os, difftori.envs; print(os.environ['MUJOCO_GL'], os.environ['PYOPENGL_PLATFORM'])", MUJOCO_GL="osmesa")
    assert res.returncode == 0 and res.stdout.split() == ["osmesa", "osmesa"]


def test_a_backend_that_cannot_render_is_a_one_line_error(tmp_path):
    code = "from difftori.cli import main; raise SystemExit(main())"
    argv = ["il", "collect", "--task", "reach", "--episodes", "1", "--obs-type", "image", "--out", str(tmp_path / "d.zarr")]
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""), MUJOCO_GL="glfw", PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("difftori: error:")]
    assert len(errors) == 1 and "MUJOCO_GL=glfw" in errors[0] and "MUJOCO_GL=egl" in errors[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "d.zarr").exists()
