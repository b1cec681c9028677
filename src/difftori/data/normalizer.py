"""Per-key linear normalizer (an ``nn.Module``: its statistics travel inside policy checkpoints).

Modes, chosen per key (``Normalizer(modes={...})`` overrides the defaults):

* ``"limits"`` (default): each feature (last dimension) is mapped affinely from its
  [min, max] over the data to [-1, 1]; a constant feature (range < ``eps``) is shifted to 0
  instead of scaled. Used for ``action``, ``state``, ``full_state`` and, as in 3D Diffusion
  Policy, ``pointcloud`` (per xyz axis over all points of all frames).
* ``"identity"``: values pass through unchanged (default for ``image``: uint8, the policy
  scales by 1/255 itself).

``normalize(key, x) = x * scale + offset`` and ``unnormalize`` inverts it exactly (up to float
rounding). A fresh ``Normalizer()`` can ``load_state_dict`` a fitted one's state.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["Normalizer", "DEFAULT_MODES"]

DEFAULT_MODES: dict[str, str] = {"image": "identity"}
"""Keys with a non-default mode; every other key uses ``"limits"``."""

_MODE_CODES = {"identity": 0, "limits": 1}
_MODE_NAMES = {v: k for k, v in _MODE_CODES.items()}


class _Field(nn.Module):
    """The affine map of one key: buffers ``scale``, ``offset`` (last-dim features) and ``mode``."""

    def __init__(self, dim: int = 1, mode: str = "identity") -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("mode", torch.tensor(_MODE_CODES[mode]))

    @property
    def mode_name(self) -> str:
        return _MODE_NAMES[int(self.mode)]


class Normalizer(nn.Module):
    """Fit on a dict of arrays, then normalise/unnormalise each key (see module docstring)."""

    def __init__(self, modes: Mapping[str, str] | None = None, eps: float = 1e-4) -> None:
        super().__init__()
        self.modes = {**DEFAULT_MODES, **dict(modes or {})}
        for key, mode in self.modes.items():
            if mode not in _MODE_CODES:
                raise ValueError(f"normalizer mode for {key!r} must be one of {sorted(_MODE_CODES)}, got {mode!r}")
        self.eps = float(eps)
        self.fields = nn.ModuleDict()

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, data: Mapping[str, torch.Tensor | np.ndarray]) -> "Normalizer":
        """Compute per-feature statistics of every key of ``data`` (arrays shaped ``(..., features)``)."""
        for key, value in data.items():
            x = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
            if "." in key or not key:
                raise ValueError(f"normalizer key {key!r} must be a non-empty name without '.'")
            mode = self.modes.get(key, "limits")
            if mode == "identity":
                self.fields[key] = _Field(1, "identity")
                continue
            if x.numel() == 0:
                raise ValueError(f"cannot fit normalizer key {key!r} on an empty array")
            x = x.reshape(-1, x.shape[-1]).double()
            if not torch.isfinite(x).all():
                raise ValueError(f"cannot fit normalizer key {key!r}: data has non-finite values")
            lo, hi = x.min(dim=0).values, x.max(dim=0).values
            span = hi - lo
            const = span < self.eps
            scale = torch.where(const, torch.ones_like(span), 2.0 / span.clamp_min(self.eps))
            offset = torch.where(const, -lo, -1.0 - lo * scale)
            f = _Field(x.shape[-1], "limits")
            f.scale.copy_(scale.float())
            f.offset.copy_(offset.float())
            self.fields[key] = f
        return self

    # ------------------------------------------------------------------ applying
    def _field(self, key: str, x: torch.Tensor) -> _Field:
        if key not in self.fields:
            raise KeyError(f"normalizer has no statistics for {key!r}; fitted keys: {sorted(self.fields)}")
        f = self.fields[key]
        if f.mode_name != "identity" and x.shape[-1] != f.scale.shape[0]:
            raise ValueError(f"normalizer {key!r}: expected last dim {f.scale.shape[0]}, got shape {tuple(x.shape)}")
        return f

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Map raw ``x`` to the normalised space of ``key``."""
        f = self._field(key, x)
        if f.mode_name == "identity":
            return x
        return x * f.scale.to(x.dtype) + f.offset.to(x.dtype)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        f = self._field(key, x)
        if f.mode_name == "identity":
            return x
        return (x - f.offset.to(x.dtype)) / f.scale.to(x.dtype)

    def normalize_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise every entry of an observation dict."""
        return {k: self.normalize(k, v) for k, v in obs.items()}

    def keys(self) -> list[str]:
        return list(self.fields)

    def __contains__(self, key: object) -> bool:
        return key in self.fields

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {f.mode_name}" for k, f in self.fields.items())

    # ------------------------------------------------------------------ state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Create the per-key fields a fresh (unfitted) normalizer lacks, with the right sizes,
        # before the children load their buffers.
        head = prefix + "fields."
        for name, value in state_dict.items():
            if name.startswith(head) and name.endswith(".scale"):
                key = name[len(head) : -len(".scale")]
                if key not in self.fields or self.fields[key].scale.shape != value.shape:
                    self.fields[key] = _Field(value.shape[0])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
