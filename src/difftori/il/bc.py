"""Feed-forward behaviour cloning: observation features -> MLP -> normalised action window (MSE)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from difftori.il.base import Policy
from difftori.il.config import BCConfig
from difftori.models.encoders import ObsEncoder
from difftori.models.mlp import mlp

__all__ = ["BCPolicy"]


class BCPolicy(Policy):
    """Deterministic regression of the action window; averages multimodal demos (the baseline's weakness)."""

    name = "bc"

    def __init__(self, obs_shapes, action_dim: int, obs_steps: int, action_steps: int, encoder_dim: int = 64, cfg: BCConfig | None = None):
        super().__init__(obs_shapes, action_dim, obs_steps, action_steps, encoder_dim, cfg or BCConfig())
        cfg = self.cfg
        self.encoder = ObsEncoder(self.obs_shapes, obs_steps, encoder_dim)
        self.head = mlp(self.encoder.feature_dim, cfg.hidden, action_steps * action_dim, act=nn.ReLU)

    def _forward(self, nobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feat = self.encoder(nobs)
        return self.head(feat).reshape(feat.shape[0], self.action_steps, self.action_dim)

    def compute_loss(self, batch: Mapping[str, Any]):
        nobs = self.normalize_obs(batch["obs"])
        target = self.normalize_action(batch["action"])
        loss = F.mse_loss(self._forward(nobs), target)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def predict_action(self, obs):
        return self.unnormalize_action(self._forward(self.normalize_obs(obs)))
