"""Videos: MP4 through imageio-ffmpeg (no system ffmpeg needed), GIF as the fallback."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from difftori.utils.video import save_video, video_format


def _frames(n=12, size=32):
    return [np.full((size, size, 3), 20 * i, dtype=np.uint8) for i in range(n)]


def test_mp4_without_a_system_ffmpeg(tmp_path):
    assert video_format() == "mp4"  # imageio-ffmpeg is a dependency: its wheel ships the binary
    path = save_video(_frames(), tmp_path / "videos" / "eval_0.5")
    assert path == tmp_path / "videos" / "eval_0.5.mp4" and path.stat().st_size > 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    import imageio.v2 as imageio

    assert len(imageio.mimread(path)) == 12


def test_gif_fallback_without_imageio_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    path = save_video(_frames(), tmp_path / "clip")
    assert path.suffix == ".gif" and path.read_bytes()[:3] == b"GIF"
    with pytest.raises(RuntimeError, match="no frames"):
        save_video([], tmp_path / "empty")
