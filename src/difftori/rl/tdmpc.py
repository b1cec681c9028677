"""TD-MPC (Hansen et al., 2022): the model-based RL baseline DiffTORI builds on.

The agent owns a :class:`TOLD` world model, its EMA target, and two Adam optimizers (world
model; pi). ``act`` plans with MPPI/CEM in latent space (vectorised over samples; a Python loop
only over iterations and horizon) with warm start from the previous plan shifted by one step
and 5% of the samples rolled out by pi. ``update`` takes one TD-MPC gradient step: latent
consistency + reward + TD value losses over a ``horizon``-step sequence, prioritized replay
weights and priorities, then the pi update and the target EMA. Subclasses (DiffTORI) override
``plan`` and add loss terms through ``_extra_losses`` and ``on_episode_end``.

``precision="bf16"`` runs the batched network passes (update, pi update, MPPI rollouts) under bf16
autocast (:meth:`TDMPC.autocast`); predictions are cast to fp32 before losses and MPPI statistics,
so parameters, losses, gradients, optimizer steps, priorities and returned actions stay fp32.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from difftori.envs.spec import EnvSpec
from difftori.rl.buffer import Batch, ReplayBuffer
from difftori.rl.config import RLConfig, resolve
from difftori.rl.world_model import TOLD, RandomShift
from difftori.utils.device import resolve_device

__all__ = ["TDMPC", "linear_schedule"]


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """Linear interpolation from ``start`` to ``end`` over ``duration`` steps, then constant."""
    frac = min(max(step / duration, 0.0), 1.0)
    return start + frac * (end - start)


@torch.no_grad()
def ema_(model: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau model."""
    for p, pt in zip(model.parameters(), target.parameters()):
        pt.lerp_(p, tau)


class TDMPC:
    """TD-MPC agent: ``act``, ``update``, ``on_episode_end``, ``state_dict`` / ``load_state_dict``."""

    obs_critic = False
    """Whether the world model builds the raw-observation critic Q_s (DiffTORI sets True)."""

    def __init__(self, cfg: RLConfig, spec: EnvSpec):
        self.cfg = cfg
        self.spec = spec
        self.res = resolve(cfg, spec)
        self.device = resolve_device(cfg.device)
        self.model = TOLD(
            spec.obs_shape, spec.action_dim, cfg.latent_dim, cfg.mlp_dim, cfg.enc_dim, cfg.num_channels,
            obs_critic=self.obs_critic,
        ).to(self.device)
        self.model_target = copy.deepcopy(self.model).requires_grad_(False)
        self.model.eval()
        self.model_target.eval()
        self.optim = torch.optim.Adam(self.model.model_parameters(), lr=self.res.lr)
        self.pi_optim = torch.optim.Adam(self.model.pi_parameters(), lr=self.res.lr)
        self.aug = RandomShift(cfg.image_pad if spec.obs_type == "pixels" else 0)
        self.num_updates = 0
        self._prev_mean: torch.Tensor | None = None
        self._prev_std: torch.Tensor | None = None  # (H, A) std of the last plan's elites (clamped to the schedule)
        self._stats: dict[str, list[torch.Tensor]] = {}  # per-step acting metrics, averaged per episode

    def autocast(self, enabled: bool = True) -> torch.autocast:
        """bf16 autocast on the agent's device if ``enabled`` and ``precision == "bf16"``, else autocast off.

        ``autocast(False)`` also switches off an enclosing bf16 region, so fp32-only code (the
        difftori.optim solves) can never inherit it.
        """
        on = enabled and self.cfg.precision == "bf16"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=on)

    # -- schedules ------------------------------------------------------------------------------
    def std(self, step: int) -> float:
        """Exploration std / minimum planner std at agent step ``step`` (0.5 -> 0.05)."""
        c = self.cfg
        return linear_schedule(c.std_init, c.min_std, c.schedule_steps, step)

    def plan_horizon(self, step: int) -> int:
        """Planning horizon at agent step ``step`` (1 -> horizon)."""
        c = self.cfg
        return int(min(c.horizon, linear_schedule(1, c.horizon, c.schedule_steps, step)))

    # -- acting ---------------------------------------------------------------------------------
    def obs_tensor(self, obs: np.ndarray) -> torch.Tensor:
        """One env observation -> a batch of one on the agent's device."""
        x = torch.as_tensor(np.asarray(obs), device=self.device)
        if tuple(x.shape) != tuple(self.spec.obs_shape):
            raise ValueError(f"observation shape {tuple(x.shape)} != env spec {self.spec.obs_shape}")
        return x.unsqueeze(0) if self.spec.obs_type == "pixels" else x.float().unsqueeze(0)

    def act(self, obs: np.ndarray, t0: bool, eval_mode: bool, step: int) -> np.ndarray:
        """Action in [-1, 1] for ``obs``; random during the seed phase (training only)."""
        if step < self.cfg.seed_steps and not eval_mode:
            return np.random.uniform(-1.0, 1.0, self.spec.action_dim).astype(np.float32)
        a = self.plan(self.obs_tensor(obs), t0=t0, eval_mode=eval_mode, step=step)
        return a.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def estimate_value(self, z: torch.Tensor, actions: torch.Tensor, horizon: int) -> torch.Tensor:
        """Sum of discounted predicted rewards over ``actions (H, N, A)`` + terminal min-Q, ``(N, 1)``, fp32."""
        g, discount = 0.0, 1.0
        with self.autocast():
            for t in range(horizon):
                r = self.model.reward(z, actions[t])
                z = self.model.next(z, actions[t])
                g = g + discount * r.float()
                discount *= self.cfg.discount
            q = torch.min(*self.model.Q(z, self.model.pi(z, self.cfg.min_std))).float()
        return g + discount * q

    @torch.no_grad()
    def plan(self, obs: torch.Tensor, t0: bool, eval_mode: bool, step: int) -> torch.Tensor:
        """TD-MPC's MPPI/CEM planner: returns the action ``(A,)`` (unclamped noise added when training)."""
        c, adim, dev = self.cfg, self.spec.action_dim, self.device
        horizon = self.plan_horizon(step)
        min_std = self.std(step)
        # One autocast region for all rollouts (bf16 weight casts are cached within it); estimate_value
        # returns fp32, so the MPPI statistics below are computed in fp32 in either precision.
        with self.autocast():
            z0 = self.model.encode(obs)
            n_pi = int(c.mixture_coef * c.num_samples)
            pi_actions = None
            if n_pi > 0:
                pi_actions = torch.empty(horizon, n_pi, adim, device=dev)
                z = z0.expand(n_pi, -1)
                for t in range(horizon):
                    pi_actions[t] = self.model.pi(z, c.min_std)
                    z = self.model.next(z, pi_actions[t])
            z = z0.expand(c.num_samples + n_pi, -1)
            mean = torch.zeros(horizon, adim, device=dev)
            std = torch.full((horizon, adim), c.max_std, device=dev)
            if not t0 and self._prev_mean is not None:
                prev = self._prev_mean[1:]
                k = min(len(prev), horizon)
                mean[:k] = prev[:k]
            for _ in range(c.iterations):
                actions = (mean.unsqueeze(1) + std.unsqueeze(1) * torch.randn(horizon, c.num_samples, adim, device=dev)).clamp(-1, 1)
                if pi_actions is not None:
                    actions = torch.cat([actions, pi_actions], dim=1)
                value = self.estimate_value(z, actions, horizon).nan_to_num_(0.0)
                elite_idxs = torch.topk(value.squeeze(1), c.num_elites, dim=0).indices
                elite_value, elite_actions = value[elite_idxs], actions[:, elite_idxs]
                score = torch.exp(c.temperature * (elite_value - elite_value.max(0)[0]))
                score = score / score.sum(0)
                new_mean = (score.unsqueeze(0) * elite_actions).sum(1) / (score.sum(0) + 1e-9)
                new_std = torch.sqrt((score.unsqueeze(0) * (elite_actions - new_mean.unsqueeze(1)) ** 2).sum(1) / (score.sum(0) + 1e-9))
                new_std = new_std.clamp(min_std, c.max_std)
                mean, std = c.momentum * mean + (1 - c.momentum) * new_mean, new_std
            # Sample the executed sequence among the elites by score (as TD-MPC).
            choice = torch.multinomial(score.squeeze(1), 1).item()
            self._prev_mean, self._prev_std = mean, std
            a = elite_actions[0, choice]
            if not eval_mode:
                a = a + std[0] * torch.randn(adim, device=dev)
                self._push("explore_std", std[0].mean())
            return a

    def reset(self) -> None:
        """Forget the warm-start plan (a new episode begins)."""
        self._prev_mean = None

    # -- learning -------------------------------------------------------------------------------
    def td_target(self, next_obs: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """``r + discount * min Q_target(h(s'), pi(h(s')))`` (no gradient, fp32)."""
        with torch.no_grad():
            with self.autocast():
                next_z = self.model.encode(next_obs)
                a = self.model.pi(next_z, self.cfg.min_std)
                q = torch.min(*self.model_target.Q(next_z, a)).float()
            return reward + self.cfg.discount * q

    def _extra_losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """Extra per-sample fp32 losses ``{name: (B, 1)}`` (already weighted) added to the model loss; none here.

        Called outside the update's autocast region: an override runs its forwards under :meth:`autocast`
        and casts predictions to fp32 before its losses."""
        return {}

    def update_pi(self, zs: torch.Tensor) -> torch.Tensor:
        """pi maximises min Q over the detached rolled-out latents ``zs (H+1, B, L)``, weighted by rho^t."""
        self.pi_optim.zero_grad(set_to_none=True)
        self.model.track_q_grad(False)
        try:
            with self.autocast():
                a = self.model.pi(zs, self.cfg.min_std)
                q_min = torch.min(*self.model.Q(zs, a)).float()
            q = q_min.mean(dim=(1, 2))  # (H+1,)
            rho = self.cfg.rho ** torch.arange(len(zs), device=zs.device, dtype=q.dtype)
            loss = -(q * rho).sum()
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.pi_parameters(), self.cfg.grad_clip)
            self.pi_optim.step()
        finally:
            self.model.track_q_grad(True)
        return loss.detach()

    def update(self, buffer: ReplayBuffer, step: int) -> dict[str, torch.Tensor]:
        """One TD-MPC update on a prioritized batch; returns detached metrics."""
        c = self.cfg
        batch = buffer.sample(self.res.batch_size, self.device)
        self.model.train()
        self.optim.zero_grad(set_to_none=True)
        h, b = batch.next_obs.shape[:2]
        with torch.no_grad():  # targets for all steps at once (fewer, larger matmuls)
            next_obs = self.aug(batch.next_obs.flatten(0, 1))
            with self.autocast():
                next_z = self.model_target.encode(next_obs).float().view(h, b, -1)
                target = self.td_target(next_obs, batch.reward.flatten(0, 1)).view(h, b, 1)
        obs = self.aug(batch.obs)
        # One autocast region for the whole rollout (bf16 weight casts are cached within it). The losses are taken
        # on fp32 casts of the predictions; in fp32 the casts are no-ops and the graph is the plain one.
        with self.autocast():
            z = self.model.encode(obs)
            zs = [z.detach().float()]
            consistency = reward_loss = value_loss = priority = 0.0
            for t in range(c.horizon):
                a = batch.action[t]
                q1, q2 = (q.float() for q in self.model.Q(z, a))
                r_pred = self.model.reward(z, a).float()
                z = self.model.next(z, a)
                z32 = z.float()
                zs.append(z32.detach())
                rho = c.rho**t
                consistency = consistency + rho * ((z32 - next_z[t]) ** 2).mean(dim=1, keepdim=True)
                reward_loss = reward_loss + rho * (r_pred - batch.reward[t]) ** 2
                value_loss = value_loss + rho * ((q1 - target[t]) ** 2 + (q2 - target[t]) ** 2)
                priority = priority + rho * ((q1 - target[t]).abs() + (q2 - target[t]).abs())
        total = (
            c.consistency_coef * consistency.clamp(max=1e4)
            + c.reward_coef * reward_loss.clamp(max=1e4)
            + c.value_coef * value_loss.clamp(max=1e4)
        )
        extra = self._extra_losses(batch, step)
        for v in extra.values():
            total = total + v.clamp(max=1e4)
        weighted = (total.squeeze(1) * batch.weights.squeeze(1)).mean() / c.horizon
        weighted.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.model_parameters(), c.grad_clip)
        self.optim.step()
        buffer.update_priorities(batch.idxs, priority.clamp(max=1e4).detach().squeeze(1))
        pi_loss = self.update_pi(torch.stack(zs))
        self.num_updates += 1
        if self.num_updates % c.target_update_freq == 0:
            ema_(self.model, self.model_target, c.tau)
        self.model.eval()
        metrics = {
            "consistency_loss": consistency.mean().detach(),
            "reward_loss": reward_loss.mean().detach(),
            "value_loss": value_loss.mean().detach(),
            "pi_loss": pi_loss,
            "total_loss": total.mean().detach(),
            "weighted_loss": weighted.detach() * c.horizon,
            "grad_norm": grad_norm.detach(),
            "std": torch.tensor(self.std(step)),
        }
        metrics.update({k: v.mean().detach() for k, v in extra.items()})
        return metrics

    def on_episode_end(self, step: int) -> dict[str, torch.Tensor]:
        """Hook called after each training episode: the episode's acting metrics (``explore_std``: mean std of
        the exploration noise on the executed action)."""
        return self._flush()

    # -- metrics ----------------------------------------------------------------------------------
    def _push(self, key: str, value: torch.Tensor) -> None:
        self._stats.setdefault(key, []).append(value.detach().float().cpu())

    def _flush(self) -> dict[str, torch.Tensor]:
        """Per-episode means of the recorded acting metrics (``*_skipped`` is a count)."""
        out = {}
        for k, vs in self._stats.items():
            x = torch.stack(vs)
            out[k] = x.sum() if k.endswith("_skipped") else x.mean()
        self._stats = {}
        return out

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "model_target": self.model_target.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.model_target.load_state_dict(state["model_target"])
        self.optim.load_state_dict(state["optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])
        self.num_updates = int(state["num_updates"])
        self._stats = {}
        self._prev_mean = None
