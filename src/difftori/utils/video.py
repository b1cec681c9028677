"""Videos of rollouts: MP4 through ``imageio-ffmpeg`` (its ffmpeg binary ships in the wheel), GIF as fallback.

Written atomically (temp file in the same folder, then renamed), so a crash never leaves a
truncated video under the final name.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

__all__ = ["video_format", "save_video"]


def video_format() -> str:
    """``"mp4"`` when imageio can find an ffmpeg (the ``imageio-ffmpeg`` wheel or a system one), else ``"gif"``."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # not installed / no binary for this platform
        return "gif"
    return "mp4"


def _frames(frames) -> list[np.ndarray]:
    out = [np.asarray(f).astype(np.uint8) for f in frames if f is not None]
    if not out:
        raise RuntimeError("no frames to write: the env's render() returned nothing")
    return out


def save_video(frames, path_stem: str | Path, fps: int = 30) -> Path:
    """Write ``frames`` (HWC uint8) to ``path_stem`` + ``.mp4`` (or ``.gif``); returns the path written."""
    from difftori.utils.io import atomic_write_bytes

    frames = _frames(frames)
    stem = Path(path_stem)
    fmt = video_format()
    path = stem.with_name(stem.name + f".{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        import imageio.v2 as imageio

        tmp = path.with_name(f".{path.stem}.tmp.mp4")
        try:
            # macro_block_size=1: any frame size, no resize warnings
            imageio.mimwrite(tmp, frames, fps=fps, macro_block_size=1, codec="libx264", quality=7)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return path
    from PIL import Image

    imgs = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    atomic_write_bytes(path, buf.getvalue())
    return path
