"""Atomic file writes and checked checkpoint loading: a crash never leaves a half-written file."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written, so light users (the sweep) stay light
    import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "save_checkpoint", "load_checkpoint", "CorruptFileError"]


class CorruptFileError(RuntimeError):
    """A file exists but cannot be read back (truncated, wrong format, wrong kind)."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + fsync + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """``torch.save`` a dict atomically, tagged so :func:`load_checkpoint` can recognise it."""
    import torch

    buf = io.BytesIO()
    torch.save({"__difftori_checkpoint__": 1, **payload}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with a clear error if it is not one."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CorruptFileError(f"checkpoint {path} is corrupt or not a torch file: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict) or "__difftori_checkpoint__" not in obj:
        raise CorruptFileError(f"{path} is not a difftori checkpoint")
    obj.pop("__difftori_checkpoint__")
    return obj
