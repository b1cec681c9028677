"""The interface every IL policy implements (diffusion_policy style) and its shared plumbing.

A policy maps a dict of observation histories ``{key: (B, To, *shape)}`` in env units to an
action window ``(B, Ta, A)`` in env units. Internally it works in normalised units: a
``Normalizer`` (set with :meth:`Policy.set_normalizer`, a submodule, hence part of the
policy's ``state_dict`` and of every checkpoint) maps state/actions to [-1, 1].
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

__all__ = ["Policy", "OBS_KEYS", "policy_obs_shapes"]

OBS_KEYS: dict[str, tuple[str, ...]] = {
    "pointcloud": ("pointcloud", "state"),
    "image": ("image", "state"),
    "state": ("full_state",),
}
"""Observation entries each modality's policy consumes."""


def policy_obs_shapes(obs_type: str, available: Mapping[str, Iterable[int]]) -> dict[str, tuple[int, ...]]:
    """Per-frame shapes of the entries an ``obs_type`` policy uses, taken from ``available``."""
    if obs_type not in OBS_KEYS:
        raise ValueError(f"unknown obs_type {obs_type!r}; use one of {sorted(OBS_KEYS)}")
    missing = [k for k in OBS_KEYS[obs_type] if k not in available]
    if missing:
        raise KeyError(f"obs_type {obs_type!r} needs observation entries {missing}, but the data has only {sorted(available)}")
    return {k: tuple(available[k]) for k in OBS_KEYS[obs_type]}


class Policy(nn.Module):
    """Base class: normalisation helpers, shape checks and default hooks.

    Subclasses implement :meth:`predict_action` and :meth:`compute_loss`; they may override
    :meth:`on_train_step` (e.g. EMA updates) and :meth:`reset` (per-episode state).
    """

    name: str = "policy"

    def __init__(self, obs_shapes: Mapping[str, Iterable[int]], action_dim: int, obs_steps: int, action_steps: int, encoder_dim: int, cfg: Any):
        super().__init__()
        if not obs_shapes:
            raise ValueError(f"{self.name}: needs at least one observation entry")
        self.obs_shapes = {k: tuple(v) for k, v in obs_shapes.items()}
        self.action_dim = int(action_dim)
        self.obs_steps = int(obs_steps)
        self.action_steps = int(action_steps)
        self.encoder_dim = int(encoder_dim)
        self.cfg = cfg
        self.normalizer: nn.Module | None = None
        self.encoder_precision = "fp32"

    # --- interface -----------------------------------------------------------------------
    def predict_action(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{key: (B, To, ...)}`` env-unit observations -> ``(B, Ta, A)`` env-unit actions."""
        raise NotImplementedError

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of a batch ``{"obs": {...}, "action": (B, Ta, A)}`` and detached metrics."""
        raise NotImplementedError

    def reset(self) -> None:
        """Clear per-episode state (none by default)."""

    def on_train_step(self) -> None:
        """Called by the trainer after every optimiser step (EMA updates etc.)."""

    def on_train_start(self, windows: Mapping[str, Any]) -> None:
        """Called by the trainer once before the first step (also on resume) with all training windows
        ``{"obs": {...}, "action": (N, Ta, A)}``; batches then carry their windows' ``"index"`` (N,)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (normalizer and frozen parts such as EMA copies excluded)."""
        frozen = {id(p) for p in self.normalizer.parameters()} if self.normalizer is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in frozen]

    def set_encoder_precision(self, precision: str) -> None:
        """fp32, bf16 (autocast) or auto for every observation encoder of this policy (a frozen base policy keeps its own)."""
        from difftori.models.encoders import ObsEncoder

        base = getattr(self, "base", None)
        skip = {id(m) for m in base.modules()} if isinstance(base, nn.Module) else set()
        for m in self.modules():
            if isinstance(m, ObsEncoder) and id(m) not in skip:
                m.precision = precision
        self.encoder_precision = precision

    def set_normalizer(self, normalizer: nn.Module) -> None:
        """Attach the fitted normalizer (stored in ``state_dict`` under ``normalizer.``)."""
        self.normalizer = normalizer.to(self.device)

    # --- helpers -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _require_normalizer(self) -> nn.Module:
        if self.normalizer is None:
            raise RuntimeError(f"{type(self).__name__}: call set_normalizer(...) before training or predicting")
        return self.normalizer

    def normalize_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Select this policy's entries, check shapes, move to device and normalise them."""
        norm = self._require_normalizer()
        picked: dict[str, torch.Tensor] = {}
        batch = None
        for k, shape in self.obs_shapes.items():
            if k not in obs:
                raise KeyError(f"{self.name}: observation is missing {k!r} (got {sorted(obs)})")
            x = torch.as_tensor(obs[k], device=self.device)
            want = (self.obs_steps, *shape)
            if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
                raise ValueError(f"{self.name}: observation {k!r} must be (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"{self.name}: observation entries have different batch sizes")
            batch = x.shape[0]
            picked[k] = x if x.dtype == torch.uint8 else x.float()
        floats = {k: v for k, v in picked.items() if v.dtype != torch.uint8}  # images: scaled by their encoder
        out = norm.normalize_obs(floats) if floats else {}
        return {k: out[k] if k in out else picked[k] for k in picked}

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env-unit ``(B, Ta, A)`` actions -> normalised, with a shape check."""
        a = torch.as_tensor(action, device=self.device).float()
        if a.dim() != 3 or a.shape[-1] != self.action_dim or a.shape[1] < self.action_steps:
            raise ValueError(f"{self.name}: actions must be (B, >={self.action_steps}, {self.action_dim}), got {tuple(a.shape)}")
        return self._require_normalizer().normalize("action", a[:, : self.action_steps])

    def unnormalize_action(self, naction: torch.Tensor) -> torch.Tensor:
        """Normalised actions (clamped to [-1, 1], the demos' range) -> env units."""
        return self._require_normalizer().unnormalize("action", naction.clamp(-1.0, 1.0))

    def build_info(self) -> dict[str, Any]:
        """What :func:`difftori.il.policies.build_policy` needs to rebuild this policy (JSON-able)."""
        from difftori.utils.config import to_dict

        return {
            "policy": self.name,
            "obs_shapes": {k: list(v) for k, v in self.obs_shapes.items()},
            "action_dim": self.action_dim,
            "obs_steps": self.obs_steps,
            "action_steps": self.action_steps,
            "encoder_dim": self.encoder_dim,
            "encoder_precision": self.encoder_precision,
            "cfg": to_dict(self.cfg),
        }
