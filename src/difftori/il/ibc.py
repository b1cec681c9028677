"""Implicit BC (Florence et al. 2021): an energy model E(features, actions) trained with InfoNCE.

Counter-examples are drawn uniformly in the normalised action box [-1, 1]; inference runs
IBC's derivative-free optimiser (sample, resample by softmax(-E/T), perturb with shrinking
noise) and returns the lowest-energy candidate. This is the energy-based baseline DiffTORI
resembles (it also scores action sequences with a learned scalar, but optimises with gradients).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from difftori.il.base import Policy
from difftori.il.config import IBCConfig
from difftori.models.encoders import ObsEncoder
from difftori.models.mlp import mlp

__all__ = ["IBCPolicy"]


class IBCPolicy(Policy):
    """Energy-based policy over the flattened normalised action window."""

    name = "ibc"

    def __init__(self, obs_shapes, action_dim: int, obs_steps: int, action_steps: int, encoder_dim: int = 64, cfg: IBCConfig | None = None):
        super().__init__(obs_shapes, action_dim, obs_steps, action_steps, encoder_dim, cfg or IBCConfig())
        self.encoder = ObsEncoder(self.obs_shapes, obs_steps, encoder_dim)
        self.act_flat = action_steps * action_dim
        self.energy_net = mlp(self.encoder.feature_dim + self.act_flat, self.cfg.hidden, 1, act=nn.ReLU)

    def energy(self, feat: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``feat (B, F)``, ``actions (B, N, Ta*A)`` -> energies ``(B, N)`` (lower = better)."""
        n = actions.shape[1]
        x = torch.cat([feat.unsqueeze(1).expand(-1, n, -1), actions], dim=-1)
        return self.energy_net(x).squeeze(-1)

    def compute_loss(self, batch: Mapping[str, Any]):
        nobs = self.normalize_obs(batch["obs"])
        pos = self.normalize_action(batch["action"]).reshape(-1, 1, self.act_flat)
        b = pos.shape[0]
        neg = torch.rand(b, self.cfg.num_negatives, self.act_flat, device=pos.device) * 2 - 1
        cands = torch.cat([pos, neg], dim=1)  # the positive is candidate 0
        logits = -self.energy(self.encoder(nobs), cands) / self.cfg.temperature
        labels = torch.zeros(b, dtype=torch.long, device=pos.device)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == 0).float().mean()
        return loss, {"loss": loss.detach(), "pos_top1": acc.detach()}

    @torch.no_grad()
    def predict_action(self, obs):
        nobs = self.normalize_obs(obs)
        feat = self.encoder(nobs)
        b, n, c = feat.shape[0], self.cfg.dfo_samples, self.cfg
        samples = torch.rand(b, n, self.act_flat, device=feat.device) * 2 - 1
        noise = c.dfo_noise
        for _ in range(c.dfo_iters):
            probs = torch.softmax(-self.energy(feat, samples) / c.temperature, dim=1)
            idx = torch.multinomial(probs, n, replacement=True)
            samples = torch.gather(samples, 1, idx.unsqueeze(-1).expand(-1, -1, self.act_flat))
            samples = (samples + noise * torch.randn_like(samples)).clamp(-1.0, 1.0)
            noise *= c.dfo_shrink
        best = self.energy(feat, samples).argmin(dim=1)
        naction = samples[torch.arange(b, device=feat.device), best]
        return self.unnormalize_action(naction.reshape(b, self.action_steps, self.action_dim))
