"""Device selection from config: ``auto`` means CUDA when present, else CPU. Never hard-coded."""

from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Map ``"auto" | "cpu" | "cuda" | "cuda:N"`` to a ``torch.device`` (clear error if unavailable)."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available; use --device auto or cpu")
    return dev
