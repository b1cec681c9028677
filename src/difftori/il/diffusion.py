"""Diffusion policy (Chi et al. 2023; 3D Diffusion Policy for point clouds).

A 1-D temporal conv UNet (``ConditionalUnet1D``) with FiLM conditioning on the observation
features predicts the noise added to the normalised action window. Training is DDPM
(``squaredcos_cap_v2`` schedule, epsilon prediction); inference is deterministic DDIM with a
few steps, using EMA weights. The schedules are written here (no diffusers dependency).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from difftori.il.base import Policy
from difftori.il.config import DiffusionConfig
from difftori.models.encoders import ObsEncoder

__all__ = ["ConditionalUnet1D", "cosine_beta_schedule", "ddim_timesteps", "DiffusionPolicy"]


# ---------------------------------------------------------------- UNet -------------------
class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of the diffusion step."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        arg = t.float()[:, None] * freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, cin: int, cout: int, kernel: int, n_groups: int):
        super().__init__(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(n_groups, cout), nn.Mish())


class CondResBlock1D(nn.Module):
    """Two conv blocks with FiLM (per-channel scale and bias from the condition) between them."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, n_groups: int):
        super().__init__()
        self.block1 = Conv1dBlock(cin, cout, kernel, n_groups)
        self.block2 = Conv1dBlock(cout, cout, kernel, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.residual = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()
        self.cout = cout

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        scale, bias = self.film(cond).reshape(-1, 2, self.cout, 1).unbind(1)
        h = self.block2(scale * h + bias)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """diffusion_policy's ConditionalUnet1D (global conditioning only): ``(B, T, A) -> (B, T, A)``."""

    def __init__(self, input_dim: int, cond_dim: int, step_embed_dim: int = 128, down_dims: Sequence[int] = (128, 256), kernel: int = 5, n_groups: int = 8):
        super().__init__()
        self.step_encoder = nn.Sequential(
            SinusoidalPosEmb(step_embed_dim), nn.Linear(step_embed_dim, 4 * step_embed_dim), nn.Mish(), nn.Linear(4 * step_embed_dim, step_embed_dim)
        )
        cdim = step_embed_dim + cond_dim
        dims = [input_dim, *down_dims]
        in_out = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down.append(nn.ModuleList([
                CondResBlock1D(a, b, cdim, kernel, n_groups),
                CondResBlock1D(b, b, cdim, kernel, n_groups),
                nn.Conv1d(b, b, 3, 2, 1) if not last else nn.Identity(),
            ]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([CondResBlock1D(mid, mid, cdim, kernel, n_groups), CondResBlock1D(mid, mid, cdim, kernel, n_groups)])
        self.up = nn.ModuleList()
        for a, b in reversed(in_out[1:]):
            self.up.append(nn.ModuleList([
                CondResBlock1D(2 * b, a, cdim, kernel, n_groups),
                CondResBlock1D(a, a, cdim, kernel, n_groups),
                nn.ConvTranspose1d(a, a, 4, 2, 1),
            ]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel, n_groups), nn.Conv1d(down_dims[0], input_dim, 1))
        self.n_down = len(in_out) - 1

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if sample.shape[1] % (2 ** self.n_down):
            raise ValueError(f"horizon {sample.shape[1]} must be divisible by {2 ** self.n_down} for this UNet depth")
        x = sample.transpose(1, 2)
        c = torch.cat([self.step_encoder(timestep.expand(sample.shape[0])), cond], dim=-1)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, c), c)
            skips.append(x)
            x = downsample(x)
        for res in self.mid:
            x = res(x, c)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2(res1(x, c), c))
        return self.final(x).transpose(1, 2)


# ---------------------------------------------------------------- schedules --------------
def cosine_beta_schedule(steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """``squaredcos_cap_v2`` betas (Nichol & Dhariwal): alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)]
    return torch.tensor(betas, dtype=torch.float64)


def ddim_timesteps(train_steps: int, inference_steps: int) -> list[int]:
    """Evenly spaced timesteps, descending (diffusers' DDIM ``leading`` spacing, offset 0)."""
    ratio = train_steps // inference_steps
    return [i * ratio for i in reversed(range(inference_steps))]


class EMA:
    """diffusion_policy's EMA schedule: decay = 1 - (1 + step)^-power, clipped to [0, max_decay]."""

    @staticmethod
    def decay(step: int, power: float, max_decay: float) -> float:
        return float(min(max(1 - (1 + step) ** -power, 0.0), max_decay))

    @staticmethod
    @torch.no_grad()
    def update(ema: nn.Module, model: nn.Module, decay: float) -> None:
        pe, pm = list(ema.parameters()), [p.detach() for p in model.parameters()]
        torch._foreach_mul_(pe, decay)  # pe = decay * pe + (1 - decay) * pm, all tensors per op
        torch._foreach_add_(pe, pm, alpha=1 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


# ---------------------------------------------------------------- policy -----------------
class DiffusionPolicy(Policy):
    """Obs encoder + ConditionalUnet1D trained as a DDPM noise predictor; DDIM + EMA at inference."""

    name = "diffusion"

    def __init__(self, obs_shapes, action_dim: int, obs_steps: int, action_steps: int, encoder_dim: int = 64, cfg: DiffusionConfig | None = None):
        super().__init__(obs_shapes, action_dim, obs_steps, action_steps, encoder_dim, cfg or DiffusionConfig())
        c = self.cfg
        encoder = ObsEncoder(self.obs_shapes, obs_steps, encoder_dim)
        unet = ConditionalUnet1D(action_dim, encoder.feature_dim, c.step_embed_dim, c.down_dims, c.kernel_size, c.n_groups)
        self.nets = nn.ModuleDict({"encoder": encoder, "unet": unet})
        self.ema_nets = copy.deepcopy(self.nets).requires_grad_(False)
        self.register_buffer("ema_step", torch.zeros((), dtype=torch.long))
        betas = cosine_beta_schedule(c.train_timesteps)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float(), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.ema_nets.eval()  # the EMA copy only ever runs in inference mode
        return self

    @property
    def acting_nets(self) -> nn.ModuleDict:
        """The networks it predicts with: the EMA copy (``use_ema``) or the trained ones."""
        return self.ema_nets if self.cfg.use_ema else self.nets

    def on_train_step(self) -> None:
        if self.cfg.use_ema:
            EMA.update(self.ema_nets, self.nets, EMA.decay(int(self.ema_step), self.cfg.ema_power, self.cfg.ema_max_decay))
        self.ema_step += 1

    def compute_loss(self, batch: Mapping[str, Any]):
        nobs = self.normalize_obs(batch["obs"])
        x0 = self.normalize_action(batch["action"])
        cond = self.nets["encoder"](nobs)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.cfg.train_timesteps, (x0.shape[0],), device=x0.device)
        ab = self.alphas_cumprod[t].view(-1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        loss = F.mse_loss(self.nets["unet"](xt, t, cond), noise)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def sample_normalized(self, obs: Mapping[str, torch.Tensor], samples: int = 1) -> torch.Tensor:
        """DDIM (eta = 0) sample of the normalised action window ``(B * samples, Ta, A)``: ``samples`` draws per
        observation (consecutive), each observation encoded once."""
        nets = self.acting_nets
        nobs = self.normalize_obs(obs)
        cond = nets["encoder"](nobs)
        if samples > 1:
            cond = cond.repeat_interleave(samples, 0)
        x = torch.randn(cond.shape[0], self.action_steps, self.action_dim, device=cond.device)
        ts = ddim_timesteps(self.cfg.train_timesteps, self.cfg.inference_steps)
        ratio = self.cfg.train_timesteps // self.cfg.inference_steps
        one = torch.ones((), device=cond.device)
        for t in ts:
            eps = nets["unet"](x, torch.tensor([t], device=cond.device), cond)
            ab = self.alphas_cumprod[t]
            ab_prev = self.alphas_cumprod[t - ratio] if t - ratio >= 0 else one
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # consistent with the clipped x0
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        return x

    @torch.no_grad()
    def predict_action(self, obs, samples: int = 1):
        """Action windows ``(B * samples, Ta, A)``; ``samples`` > 1 draws several per observation (consecutive)."""
        return self.unnormalize_action(self.sample_normalized(obs, samples))
