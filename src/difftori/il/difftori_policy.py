"""DiffTORI-IL: a policy that is a trajectory optimiser over a learned, latent-conditioned cost.

features = encoder(obs); a CVAE encoder q(z | features, demo actions) gives a latent that
selects a mode; the cost network C(features, z, U) scores a normalised action window U.
Training: z ~ q (reparameterised), U0 = the frozen base (diffusion) policy's prediction
(+ optional noise) or zeros/noise, ``U* = TrajOptimizer.solve(C, U0)`` for the whole batch in
one batched call (independent problems), loss = w_a * MSE(U*, demo) + w_kl * KL(q || N(0, I)),
back-propagated through the solver into the cost network, the CVAE encoder and the obs encoder.
Inference: z ~ N(0, I), same initialisation, solve without backward, return the best iterate.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from difftori.il.base import Policy
from difftori.il.config import DiffTORIConfig
from difftori.models.encoders import ObsEncoder
from difftori.models.mlp import mlp

__all__ = ["DiffTORIPolicy"]


class DiffTORIPolicy(Policy):
    """CVAE + learned cost + differentiable trajectory optimisation (see module docstring)."""

    name = "difftori"

    def __init__(
        self,
        obs_shapes,
        action_dim: int,
        obs_steps: int,
        action_steps: int,
        encoder_dim: int = 64,
        cfg: DiffTORIConfig | None = None,
        base: Policy | None = None,
    ):
        super().__init__(obs_shapes, action_dim, obs_steps, action_steps, encoder_dim, cfg or DiffTORIConfig())
        c = self.cfg
        if c.init == "base" and base is None:
            raise ValueError("DiffTORIPolicy with init='base' needs a base policy (a trained diffusion policy)")
        self.encoder = ObsEncoder(self.obs_shapes, obs_steps, encoder_dim)
        feat = self.encoder.feature_dim
        self.act_flat = action_steps * action_dim
        self.cvae_encoder = mlp(feat + self.act_flat, (c.hidden, c.hidden), 2 * c.z_dim, act=nn.ELU)
        self.cost_net = mlp(feat + c.z_dim + self.act_flat, (c.hidden, c.hidden), 1, act=nn.ELU)
        self.base = base
        if base is not None:
            base.requires_grad_(False).eval()
            base.zero_grad(set_to_none=True)  # drop stale gradients from its own training
            if (base.action_dim, base.action_steps) != (action_dim, action_steps):
                raise ValueError(
                    f"base policy predicts ({base.action_steps}, {base.action_dim}) action windows, DiffTORI needs ({action_steps}, {action_dim})"
                )
        self._solvers: dict[bool, Any] = {}

    def build_info(self) -> dict[str, Any]:
        info = super().build_info()
        info["base"] = self.base.build_info() if self.base is not None else None
        return info

    # ------------------------------------------------------------------ parts -----------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.base is not None:
            self.base.eval()  # frozen: never in training mode
        return self

    def solver(self, training: bool):
        """The ``TrajOptimizer`` for training (configured backward) or inference (backward none)."""
        if training not in self._solvers:
            from difftori.optim import TrajOptimizer

            s = self.cfg.solver
            self._solvers[training] = TrajOptimizer(
                method=s.method,
                max_iters=s.max_iters,
                step_size=s.step_size,
                damping=s.damping,
                backward=s.backward if training else "none",
                backward_iters=s.backward_iters,
                bounds=(-1.0, 1.0),
                tol=s.tol,
            )
        return self._solvers[training]

    def posterior(self, feat: torch.Tensor, naction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | features, actions): mean and log-variance ``(B, z_dim)`` each."""
        mu, logvar = self.cvae_encoder(torch.cat([feat, naction.reshape(feat.shape[0], -1)], dim=-1)).chunk(2, dim=-1)
        return mu, logvar

    def cost(self, feat: torch.Tensor, z: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """C(features, z, U) -> ``(B,)``; actions are clamped to [-1, 1] inside (as the original)."""
        x = torch.cat([feat, z, U.clamp(-1.0, 1.0).reshape(U.shape[0], -1)], dim=-1)
        return self.cost_net(x).squeeze(-1)

    @torch.no_grad()
    def initial_actions(self, obs: Mapping[str, torch.Tensor], batch: int, training: bool) -> torch.Tensor:
        """U0 ``(B, Ta, A)`` in normalised units: base prediction, zeros or uniform noise (+ training noise)."""
        shape = (batch, self.action_steps, self.action_dim)
        if self.cfg.init == "base":
            assert self.base is not None
            U0 = self.normalize_action(self.base.predict_action(obs)).clamp(-1.0, 1.0)
        elif self.cfg.init == "zeros":
            U0 = torch.zeros(shape, device=self.device)
        else:
            U0 = torch.rand(shape, device=self.device) * 2 - 1
        if training and self.cfg.init_noise > 0:
            U0 = U0 + self.cfg.init_noise * torch.randn_like(U0)
        return U0

    def solve(self, feat: torch.Tensor, z: torch.Tensor, U0: torch.Tensor, training: bool):
        """All ``B`` problems in one batched solve; returns ``(U*, info)``."""
        return self.solver(training).solve(lambda U: self.cost(feat, z, U), U0)

    # ------------------------------------------------------------------ interface -------
    def compute_loss(self, batch: Mapping[str, Any]):
        nobs = self.normalize_obs(batch["obs"])
        target = self.normalize_action(batch["action"])
        b = target.shape[0]
        feat = self.encoder(nobs)
        mu, logvar = self.posterior(feat, target)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        U0 = self.initial_actions(batch["obs"], b, training=True)
        U_star, info = self.solve(feat, z, U0, training=True)
        mse = F.mse_loss(U_star, target)
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
        loss = self.cfg.action_loss_weight * mse + self.cfg.kl_weight * kl
        metrics = {
            "loss": loss.detach(),
            "action_mse": mse.detach(),
            "kl": kl.detach(),
            "init_mse": F.mse_loss(U0, target).detach(),
            "solver_cost": info.cost.detach().mean(),
        }
        return loss, metrics

    @torch.no_grad()
    def predict_action(self, obs):
        nobs = self.normalize_obs(obs)
        feat = self.encoder(nobs)
        b = feat.shape[0]
        z = torch.randn(b, self.cfg.z_dim, device=feat.device)
        U0 = self.initial_actions(obs, b, training=False)
        with torch.enable_grad():  # the solver needs grad_U of the cost; no parameter graph is kept
            _, info = self.solve(feat, z, U0, training=False)
        return self.unnormalize_action(info.best_U.detach())
