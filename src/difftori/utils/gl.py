"""Headless OpenGL for MuJoCo rendering: pick a backend before ``mujoco`` is imported.

MuJoCo reads ``MUJOCO_GL`` once, when ``mujoco`` is first imported; unset, it uses GLFW,
which needs a display and fails on a server with ``'Renderer' object has no attribute
'_mjr_context'``. :func:`configure_gl` respects a ``MUJOCO_GL`` that is set, and otherwise
picks the first headless backend whose library is installed (EGL, then OSMesa) on Linux.
:func:`check_rendering` creates one tiny offscreen context, once per process, so a backend that
cannot render fails with a one-line hint (:func:`render_error`) before any env renders.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import sys

__all__ = ["configure_gl", "check_rendering", "safe_renderer", "render_error", "HINT"]

HINT = (
    "set MUJOCO_GL=egl (GPU or Mesa EGL, e.g. apt install libegl1) or MUJOCO_GL=osmesa "
    "(software, e.g. apt install libosmesa6); MUJOCO_GL=glfw needs a display"
)


def _headless_candidates() -> list[str]:
    found = []
    if ctypes.util.find_library("EGL"):
        found.append("egl")
    if ctypes.util.find_library("OSMesa"):
        found.append("osmesa")
    return found


def configure_gl() -> str | None:
    """Set ``MUJOCO_GL`` (and the matching ``PYOPENGL_PLATFORM``) if unset; return the backend in use.

    Returns None when MuJoCo's own default applies (macOS/Windows, or no headless library
    found on Linux). Has no effect once ``mujoco`` has been imported.
    """
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not backend and "mujoco" not in sys.modules and platform.system() == "Linux":
        candidates = _headless_candidates()
        if candidates:
            backend = candidates[0]
            os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend or None


def render_error(exc: BaseException) -> RuntimeError:
    """A one-line error for a MuJoCo renderer that could not be created."""
    backend = os.environ.get("MUJOCO_GL") or "glfw (MuJoCo's default)"
    try:
        text = str(exc)
    except Exception:  # some PyOpenGL errors cannot format themselves
        text = ""
    detail = f"{type(exc).__name__}: {text}".strip().rstrip(":").splitlines()[0][:160]
    return RuntimeError(f"MuJoCo cannot render with MUJOCO_GL={backend} ({detail}); {HINT}")


_RENDER_OK = False


def safe_renderer(model, height: int, width: int):
    """``mujoco.Renderer(model, height, width)``, raising :func:`render_error` if no GL context can be made."""
    import mujoco

    r = mujoco.Renderer.__new__(mujoco.Renderer)
    r._mjr_context = None  # a failed __init__ would otherwise raise again in Renderer.__del__
    try:
        r.__init__(model, height, width)
    except Exception as exc:  # FatalError, EGLError, AttributeError, ... depending on the backend
        raise render_error(exc) from None
    return r


def check_rendering() -> None:
    """Raise a one-line :class:`RuntimeError` with the fix if MuJoCo cannot render offscreen here."""
    global _RENDER_OK
    if _RENDER_OK:
        return
    configure_gl()
    try:
        import mujoco
    except (AttributeError, RuntimeError, OSError) as exc:  # the GL backend failed to load
        raise render_error(exc) from None
    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>")
    safe_renderer(model, 8, 8).close()
    _RENDER_OK = True
