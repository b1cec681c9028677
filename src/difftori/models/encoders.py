"""Observation encoders for IL policies: PointNet (3D Diffusion Policy style), a small CNN, a state MLP.

:class:`ObsEncoder` picks one encoder per observation key from the key's shape
(``(N, 3)`` -> PointNet, ``(C, H, W)`` -> CNN, ``(D,)`` -> MLP), encodes each of the
``obs_steps`` frames and concatenates everything into one flat feature vector per sample.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Mapping, Sequence

import torch
from torch import nn

__all__ = ["PointNetEncoder", "ImageEncoder", "StateEncoder", "ObsEncoder", "encoder_for_shape", "resolve_precision"]


class PointNetEncoder(nn.Module):
    """DP3's PointNet: per-point MLP 3->64->128->256 (LayerNorm+ReLU), max-pool, Linear+LayerNorm -> out_dim."""

    def __init__(self, in_channels: int = 3, out_dim: int = 64, hidden: Sequence[int] = (64, 128, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_channels
        for h in hidden:
            layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.ReLU()]
            d = h
        self.point_mlp = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(d, out_dim), nn.LayerNorm(out_dim))
        self.in_channels = in_channels
        self.out_dim = out_dim

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, N, C) -> (B, out_dim)``; order-invariant thanks to the max-pool."""
        if points.dim() != 3 or points.shape[-1] != self.in_channels:
            raise ValueError(f"PointNetEncoder expects (B, N, {self.in_channels}) points, got {tuple(points.shape)}")
        return self.head(self.point_mlp(points).max(dim=1).values)


class ImageEncoder(nn.Module):
    """Small CNN for ``(3, 84, 84)`` images: 4 conv layers (32 ch) + Linear+LayerNorm -> out_dim.

    ``uint8`` inputs are scaled to [-0.5, 0.5]; float inputs are used as given.
    """

    def __init__(self, shape: Sequence[int] = (3, 84, 84), out_dim: int = 64, channels: int = 32):
        super().__init__()
        c, h, w = shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, c, h, w)).shape[-1]
        self.head = nn.Sequential(nn.Linear(flat, out_dim), nn.LayerNorm(out_dim))
        self.shape = tuple(shape)
        self.out_dim = out_dim

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or tuple(img.shape[1:]) != self.shape:
            raise ValueError(f"ImageEncoder expects (B, {', '.join(map(str, self.shape))}) images, got {tuple(img.shape)}")
        x = img.float() / 255.0 - 0.5 if img.dtype == torch.uint8 else img.float()
        return self.head(self.convs(x))


class StateEncoder(nn.Module):
    """MLP for low-dimensional state: ``in -> hidden -> out_dim`` with ReLU (DP3's state MLP)."""

    def __init__(self, in_dim: int, out_dim: int = 64, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"StateEncoder expects (..., {self.in_dim}) state, got {tuple(x.shape)}")
        return self.net(x.float())


def encoder_for_shape(shape: Sequence[int], out_dim: int = 64) -> nn.Module:
    """The encoder matching one observation entry's per-frame shape."""
    shape = tuple(shape)
    if len(shape) == 1:
        return StateEncoder(shape[0], out_dim)
    if len(shape) == 2 and shape[-1] in (3, 6):
        return PointNetEncoder(shape[-1], out_dim)
    if len(shape) == 3:
        return ImageEncoder(shape, out_dim)
    raise ValueError(f"no encoder for observation shape {shape}: expected (D,), (N, 3) points or (C, H, W) images")


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``auto`` -> bf16 where ``device`` computes bf16 in hardware, else fp32; fp32 / bf16 as they are."""
    if precision != "auto":
        return precision
    from difftori.utils.device import native_bf16

    return "bf16" if native_bf16(device) else "fp32"


class ObsEncoder(nn.Module):
    """Encode a dict of ``(B, To, *shape)`` observations into ``(B, feature_dim)``.

    One encoder per key (chosen by shape), shared across the ``obs_steps`` frames; the
    per-frame features of all keys are concatenated and flattened over frames. ``precision="bf16"`` runs the
    encoders under bf16 autocast (the point-cloud / image encoders are compute-bound; features come out fp32);
    ``"auto"``: bf16 on a device that computes it in hardware, fp32 where torch would emulate it (slower).
    """

    PRECISIONS = ("fp32", "bf16", "auto")

    def __init__(self, obs_shapes: Mapping[str, Sequence[int]], obs_steps: int = 2, out_dim: int = 64, precision: str = "fp32"):
        super().__init__()
        if not obs_shapes:
            raise ValueError("ObsEncoder needs at least one observation key")
        self.keys = sorted(obs_shapes)
        self.obs_shapes = {k: tuple(obs_shapes[k]) for k in self.keys}
        self.encoders = nn.ModuleDict({k: encoder_for_shape(self.obs_shapes[k], out_dim) for k in self.keys})
        self.obs_steps = obs_steps
        self.frame_dim = sum(e.out_dim for e in self.encoders.values())
        self.feature_dim = self.frame_dim * obs_steps
        self.precision = precision

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in self.PRECISIONS:
            raise ValueError(f"ObsEncoder precision must be one of {self.PRECISIONS}, got {value!r}")
        self._precision = value

    def effective_precision(self, device: str | torch.device = "cpu") -> str:
        """The precision the encoders run in on ``device`` (``auto`` resolved)."""
        return resolve_precision(self.precision, device)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        batch = None
        dev = next(iter(obs.values())).device.type if obs else "cpu"
        cast = torch.autocast(dev, dtype=torch.bfloat16) if self.effective_precision(dev) == "bf16" else nullcontext()
        for k in self.keys:
            if k not in obs:
                raise KeyError(f"observation is missing key {k!r} (has {sorted(obs)})")
            x = obs[k]
            want = (self.obs_steps, *self.obs_shapes[k])
            if tuple(x.shape[1:]) != want:
                raise ValueError(f"observation {k!r}: expected (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
            batch = x.shape[0]
            with cast:
                f = self.encoders[k](x.reshape(-1, *self.obs_shapes[k]))
            feats.append(f.float().reshape(batch, self.obs_steps, -1))
        return torch.cat(feats, dim=-1).reshape(batch, self.feature_dim)
