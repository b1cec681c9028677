"""DiffTORI-IL: a policy that is a trajectory optimiser over a learned, latent-conditioned cost.

features = encoder(obs); a CVAE encoder q(z | features, demo actions) gives a latent that
selects a mode; the cost network C(features, z, U) scores a normalised action window U.
Training: z ~ q (reparameterised), U0 = the frozen base (diffusion) policy's prediction
(+ optional noise) or zeros/noise, ``U* = TrajOptimizer.solve(C, U0)`` for the whole batch in
one batched call, loss = w_a * MSE(U*, demo) + w_kl * KL(q || N(0, I)), back-propagated through
the solver into the cost network, the CVAE encoder and the obs encoder. The batch is B
independent problems, or with ``solver.packed`` ONE problem (the original's packing: one residual
mean_i(1000 - G_i) over the whole batch; see ``TrajOptimizer.packed``).
Inference: per observation, ``draws`` latents z ~ N(0, I) all start from one base prediction
and are solved without backward; with ``solver.packed`` the draws of ONE observation form one
problem (the original's inference: 128 draws of its single observation), several observations
are never packed together. The executed window is draw 0 (or the lowest-cost draw): its last
iterate when packed (what the original executes), else its best iterate.

``formulation="paper"`` (the paper's Eq. 7 / Appendix D instead of the released code): features ->
latent state s0 (a linear map to ``encoder_dim``), a latent dynamics MLP d(s, a) and a reward MLP
f(s, a, z); the cost of the window U = (a_0 .. a_{L-1}) is -sum_l gamma^l f(s_l, a_l, z) with
s_{l+1} = d(s_l, a_l), L = action_steps. The CVAE posterior fuses an observation encoder h_o and an
action encoder h_a with h_l. Everything else (init, solve, loss, inference) is shared; d is trained only
by the imitation loss through the solver, as in the paper.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from difftori.il.base import Policy
from difftori.il.config import DiffTORIConfig
from difftori.models.encoders import ObsEncoder
from difftori.models.mlp import elu_grad, mlp

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
        hid = (c.hidden, c.hidden)
        if c.formulation == "released":
            self.cvae_encoder = mlp(feat + self.act_flat, hid, 2 * c.z_dim, act=nn.ELU)
            self.cost_net = mlp(feat + c.z_dim + self.act_flat, hid, 1, act=nn.ELU)
        else:
            if action_steps < 2:
                raise ValueError(f"formulation 'paper' needs action_steps >= 2 (planning horizon action_steps - 1), got {action_steps}")
            self.latent = nn.Linear(feat, encoder_dim)  # all frames and modalities -> the latent state s0
            self.obs_cvae = mlp(feat, (c.hidden,), c.hidden, act=nn.ELU)  # h_o
            self.act_cvae = mlp(self.act_flat, (c.hidden,), c.hidden, act=nn.ELU)  # h_a
            self.fuse_cvae = mlp(2 * c.hidden, (c.hidden,), 2 * c.z_dim, act=nn.ELU)  # h_l
            self.dynamics = mlp(encoder_dim + action_dim, hid, encoder_dim, act=nn.ELU)  # d(s, a) -> s'
            self.reward = mlp(encoder_dim + action_dim + c.z_dim, hid, 1, act=nn.ELU)  # f(s, a, z)
        self.base = base
        if base is not None:
            base.requires_grad_(False).eval()
            base.zero_grad(set_to_none=True)  # drop stale gradients from its own training
            if (base.action_dim, base.action_steps) != (action_dim, action_steps):
                raise ValueError(
                    f"base policy predicts ({base.action_steps}, {base.action_dim}) action windows, DiffTORI needs ({action_steps}, {action_dim})"
                )
        if c.encoder_init == "base":
            self._copy_base_encoder()
        self._solvers: dict[bool, Any] = {}
        self._pool: torch.Tensor | None = None  # (N, K, Ta, A) base predictions per training window (base_pool)

    def _copy_base_encoder(self) -> None:
        """Load the base's observation encoder (its EMA copy when it acts with one) into ours."""
        nets = getattr(self.base, "acting_nets", None)
        enc = nets["encoder"] if nets is not None and "encoder" in nets else getattr(self.base, "encoder", None)
        if not isinstance(enc, ObsEncoder) or enc.obs_shapes != self.encoder.obs_shapes or enc.feature_dim != self.encoder.feature_dim:
            raise ValueError("difftori.encoder_init=base: the base policy's observation encoder does not match DiffTORI's "
                             "(same observation keys and shapes, obs_steps and encoder_dim needed); "
                             "--difftori.encoder-init scratch starts a fresh one")
        self.encoder.load_state_dict(enc.state_dict())

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
                packed=s.packed,
            )
        return self._solvers[training]

    def posterior(self, feat: torch.Tensor, naction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | features, actions): mean and log-variance ``(B, z_dim)`` each (paper: h_l(h_o(feat), h_a(actions)))."""
        act = naction.reshape(feat.shape[0], -1)
        if self.cfg.formulation == "released":
            out = self.cvae_encoder(torch.cat([feat, act], dim=-1))
        else:
            out = self.fuse_cvae(torch.cat([self.obs_cvae(feat), self.act_cvae(act)], dim=-1))
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar

    def context(self, feat: torch.Tensor) -> torch.Tensor:
        """What the cost conditions on: the features (released) or the latent state s0 (paper)."""
        return feat if self.cfg.formulation == "released" else self.latent(feat)

    def cost(self, ctx: torch.Tensor, z: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """Cost of the window -> ``(B,)``; actions are clamped to [-1, 1] inside (as the original).

        released: C(features, z, U). paper: -sum_l gamma^l f(s_l, a_l, z), s_0 = ``ctx``, s_{l+1} = d(s_l, a_l).
        """
        U = U.clamp(-1.0, 1.0)
        if self.cfg.formulation == "released":
            return self.cost_net(torch.cat([ctx, z, U.reshape(U.shape[0], -1)], dim=-1)).squeeze(-1)
        s, ret = ctx, 0.0
        for l in range(U.shape[1]):
            a = U[:, l]
            ret = ret + self.cfg.gamma**l * self.reward(torch.cat([s, a, z], dim=-1)).squeeze(-1)
            if l + 1 < U.shape[1]:  # the last action's successor state is never scored
                s = self.dynamics(torch.cat([s, a], dim=-1))
        return -ret

    @torch.no_grad()
    def on_train_start(self, windows: Mapping[str, Any]) -> None:
        """With ``base_pool = K``: K base predictions of every training window, computed once (in chunks)."""
        K = self.cfg.base_pool
        if K == 0 or self.cfg.init != "base":
            return
        n = windows["action"].shape[0]
        chunk = max(1, 1024 // K)
        pool = []
        for i in range(0, n, chunk):  # each window encoded once by the base, K denoising draws
            obs = {k: v[i : i + chunk] for k, v in windows["obs"].items()}
            pool.append(self._base_actions(obs, K).reshape(-1, K, self.action_steps, self.action_dim))
        self._pool = torch.cat(pool)

    def _base_actions(self, obs: Mapping[str, torch.Tensor], samples: int = 1) -> torch.Tensor:
        assert self.base is not None
        return self.normalize_action(self.base.predict_action(obs, samples=samples)).clamp(-1.0, 1.0)

    @torch.no_grad()
    def initial_actions(self, obs: Mapping[str, torch.Tensor], batch: int, training: bool, index: torch.Tensor | None = None) -> torch.Tensor:
        """U0 ``(B, Ta, A)`` in normalised units: base prediction, zeros or uniform noise (+ training noise).

        ``index`` (training windows' indices) draws the base prediction from the ``base_pool`` when there is one.
        """
        shape = (batch, self.action_steps, self.action_dim)
        if self.cfg.init == "base" and training and self._pool is not None and index is not None:
            pick = torch.randint(0, self._pool.shape[1], (batch,), device=self._pool.device)
            U0 = self._pool[index.to(self._pool.device), pick].to(self.device)
        elif self.cfg.init == "base":
            U0 = self._base_actions(obs)
        elif self.cfg.init == "zeros":
            U0 = torch.zeros(shape, device=self.device)
        else:
            U0 = torch.rand(shape, device=self.device) * 2 - 1
        if training and self.cfg.init_noise > 0:
            U0 = U0 + self.cfg.init_noise * torch.randn_like(U0)
        return U0

    def solve(self, ctx: torch.Tensor, z: torch.Tensor, U0: torch.Tensor, training: bool, groups: int = 1):
        """All ``B`` samples in one batched solve; returns ``(U*, info)``. With ``solver.packed`` the batch is
        ``groups`` problems (consecutive equal blocks; 1 = the whole batch, as in training).

        ``ctx`` = :meth:`context` of the features (the features themselves in the released formulation)."""
        grad_fn = self._cost_grad_fn(ctx, z) if self.cfg.cost_grad == "manual" and self.cfg.formulation == "released" else None
        kw = {"packed_groups": groups} if self.cfg.solver.packed else {}
        return self.solver(training).solve(lambda U: self.cost(ctx, z, U), U0, cost_grad_fn=grad_fn, **kw)

    def _cost_grad_fn(self, ctx: torch.Tensor, z: torch.Tensor):
        """``U -> (C(features, z, U), dC/dU)`` of the released cost network without autograd (no graph).

        The cost net is ``Linear ELU Linear ELU Linear`` on ``[features, z, clamp(U)]``: the first layer's
        features/z share is computed once per solve; the backward runs into U only (clamp: zero outside the box,
        as ``torch.clamp``'s backward)."""
        l1, l2, l3 = (m for m in self.cost_net if isinstance(m, nn.Linear))
        k = ctx.shape[1] + z.shape[1]
        with torch.no_grad():
            W1u = l1.weight[:, k:]
            pre = F.linear(torch.cat([ctx, z], dim=-1).detach(), l1.weight[:, :k], l1.bias)

        def cost_grad(U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            B = U.shape[0]
            Uc = U.clamp(-1.0, 1.0).reshape(B, -1)
            p1 = torch.addmm(pre, Uc, W1u.t())
            h1 = F.elu(p1)
            p2 = F.linear(h1, l2.weight, l2.bias)
            h2 = F.elu(p2)
            c = F.linear(h2, l3.weight, l3.bias)[:, 0]
            g2 = l3.weight * elu_grad(p2, h2)
            g1 = (g2 @ l2.weight) * elu_grad(p1, h1)
            g = (g1 @ W1u).reshape(U.shape)
            return c, torch.where((U >= -1.0) & (U <= 1.0), g, 0.0)

        return cost_grad

    # ------------------------------------------------------------------ interface -------
    def compute_loss(self, batch: Mapping[str, Any]):
        nobs = self.normalize_obs(batch["obs"])
        target = self.normalize_action(batch["action"])
        b = target.shape[0]
        feat = self.encoder(nobs)
        mu, logvar = self.posterior(feat, target)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        U0 = self.initial_actions(batch["obs"], b, training=True, index=batch.get("index"))
        U_star, info = self.solve(self.context(feat), z, U0, training=True)
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
        feat = self.context(self.encoder(nobs))
        b, S = feat.shape[0], self.cfg.draws
        z = torch.randn(b * S, self.cfg.z_dim, device=feat.device)
        U0 = self.initial_actions(obs, b, training=False)  # one base call per observation, shared by its draws
        feat, U0 = feat.repeat_interleave(S, 0), U0.repeat_interleave(S, 0)
        packed = self.cfg.solver.packed
        with torch.enable_grad():  # the solver needs grad_U of the cost; no parameter graph is kept
            if packed:  # one problem per observation: its S draws (never several observations together)
                U, info = self.solve(feat, z, U0, training=False, groups=b)
                cost = info.cost
            else:
                _, info = self.solve(feat, z, U0, training=False)
                U, cost = info.best_U, info.best_cost
        U = U.detach().reshape(b, S, self.action_steps, self.action_dim)
        if self.cfg.inference_select == "lowest_cost" and S > 1:
            cost = torch.nan_to_num(cost.reshape(b, S), nan=float("inf"))
            U = U[torch.arange(b, device=U.device), cost.argmin(1)]
        else:
            U = U[:, 0]
        return self.unnormalize_action(U)
