"""TOLD, TD-MPC's task-oriented latent dynamics model, plus DiffTORI's raw-observation critic.

One method per part: ``encode(obs) -> z``, ``next(z, a) -> z'``, ``reward(z, a)``,
``Q(z, a) -> (q1, q2)``, ``pi(z, std)``; and ``Qs(obs, a) -> (q1, q2)``, the twin critic on the
raw observation that DiffTORI's policy-gradient loss uses (built when ``obs_critic=True``).
Architecture and init follow TD-MPC: ELU MLPs, first Q layer LayerNorm + Tanh, orthogonal
init, zero-initialised last layers of reward and Q.
"""

from __future__ import annotations

import torch
from torch import nn

from difftori.models.mlp import mlp, orthogonal_init, zero_last_layer

__all__ = ["TOLD", "truncated_normal_sample", "RandomShift"]


def truncated_normal_sample(mu: torch.Tensor, std: float, clip: float = 0.3) -> torch.Tensor:
    """``mu + clamp(std * eps, +-clip)`` clamped to (-1, 1) with a straight-through gradient (TD-MPC)."""
    eps = (torch.randn_like(mu) * std).clamp(-clip, clip)
    x = mu + eps
    clamped = x.clamp(-1 + 1e-6, 1 - 1e-6)
    return x - x.detach() + clamped.detach()


def _q_net(in_dim: int, hidden: int) -> nn.Sequential:
    """TD-MPC critic: Linear-LayerNorm-Tanh, Linear-ELU, Linear(1)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.ELU(),
        nn.Linear(hidden, 1),
    )


def _pixel_encoder(in_ch: int, img_size: int, channels: int, out_dim: int) -> nn.Sequential:
    """TD-MPC's conv encoder: 4 conv layers (7/5/3/3, stride 2) of ``channels``, then Linear."""
    convs = nn.Sequential(
        nn.Conv2d(in_ch, channels, 7, stride=2), nn.ReLU(),
        nn.Conv2d(channels, channels, 5, stride=2), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(),
        nn.Flatten(),
    )
    with torch.no_grad():
        n = convs(torch.zeros(1, in_ch, img_size, img_size)).shape[1]
    return nn.Sequential(convs, nn.Linear(n, out_dim))


class _Normalize(nn.Module):
    """uint8 pixels -> [-0.5, 0.5] floats."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 - 0.5


class RandomShift(nn.Module):
    """Random-shift image augmentation (pad + random crop, DrQ / TD-MPC); identity for state."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad == 0 or x.dim() != 4:
            return x
        n, _, h, w = x.shape
        padded = nn.functional.pad(x.float(), (self.pad,) * 4, mode="replicate")
        eps = 1.0 / (h + 2 * self.pad)
        arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * self.pad, device=x.device)[:h]
        arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
        base = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
        shift = torch.randint(0, 2 * self.pad + 1, (n, 1, 1, 2), device=x.device, dtype=torch.float32)
        grid = base + shift * 2.0 / (h + 2 * self.pad)
        return nn.functional.grid_sample(padded, grid, padding_mode="zeros", align_corners=False)


class TOLD(nn.Module):
    """Latent world model: encoder, latent dynamics, reward, pi and twin latent critic."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        latent_dim: int = 50,
        mlp_dim: int = 512,
        enc_dim: int = 256,
        num_channels: int = 32,
        obs_critic: bool = False,
    ):
        super().__init__()
        if len(obs_shape) not in (1, 3):
            raise ValueError(f"obs_shape must be (D,) for state or (C, H, W) for pixels, got {obs_shape}")
        self.obs_shape = tuple(obs_shape)
        self.action_dim = action_dim
        self.latent_dim = latent_dim
        self.pixels = len(obs_shape) == 3
        za = latent_dim + action_dim
        self._encoder = self._make_encoder(latent_dim, enc_dim, num_channels)
        self._dynamics = mlp(za, [mlp_dim, mlp_dim], latent_dim)
        self._reward = mlp(za, [mlp_dim, mlp_dim], 1)
        self._pi = mlp(latent_dim, [mlp_dim, mlp_dim], action_dim)
        self._Q1, self._Q2 = _q_net(za, mlp_dim), _q_net(za, mlp_dim)
        self.obs_critic = obs_critic
        if obs_critic:
            # Raw-observation critic: state -> directly on (obs, a); pixels -> own conv features.
            feat = latent_dim if self.pixels else obs_shape[0]
            self._qs_encoder = self._make_encoder(latent_dim, enc_dim, num_channels) if self.pixels else nn.Identity()
            self._Qs1, self._Qs2 = _q_net(feat + action_dim, mlp_dim), _q_net(feat + action_dim, mlp_dim)
        self.apply(orthogonal_init)
        for net in [self._reward, self._Q1, self._Q2] + ([self._Qs1, self._Qs2] if obs_critic else []):
            zero_last_layer(net)

    def _make_encoder(self, latent_dim: int, enc_dim: int, num_channels: int) -> nn.Module:
        if self.pixels:
            c, h, w = self.obs_shape
            if h != w:
                raise ValueError(f"pixel observations must be square, got {self.obs_shape}")
            return nn.Sequential(_Normalize(), _pixel_encoder(c, h, num_channels, latent_dim))
        return mlp(self.obs_shape[0], [enc_dim], latent_dim)

    def _check_obs(self, obs: torch.Tensor) -> None:
        if tuple(obs.shape[-len(self.obs_shape):]) != self.obs_shape:
            raise ValueError(f"observation shape {tuple(obs.shape)} does not end with {self.obs_shape}")

    # -- parts ----------------------------------------------------------------------------------
    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """h(obs) -> z, ``(B, *obs_shape) -> (B, latent)``."""
        self._check_obs(obs)
        return self._encoder(obs if self.pixels else obs.float())

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Latent dynamics d(z, a) -> z'."""
        return self._dynamics(torch.cat([z, a], dim=-1))

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Predicted reward R(z, a), shape ``(B, 1)``."""
        return self._reward(torch.cat([z, a], dim=-1))

    def Q(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Twin latent critic ``(q1, q2)``, each ``(B, 1)``."""
        x = torch.cat([z, a], dim=-1)
        return self._Q1(x), self._Q2(x)

    def pi(self, z: torch.Tensor, std: float = 0.0) -> torch.Tensor:
        """Policy: ``tanh(MLP(z))``, plus clipped Gaussian noise of ``std`` if ``std > 0``; fp32 under autocast too
        (actions stay fp32, and the noise is drawn as in fp32)."""
        mu = torch.tanh(self._pi(z).float())
        return truncated_normal_sample(mu, std) if std > 0 else mu

    def Qs(self, obs: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Twin critic on the raw observation (DiffTORI), each ``(B, 1)``."""
        if not self.obs_critic:
            raise RuntimeError("this TOLD was built without the raw-observation critic (obs_critic=False)")
        self._check_obs(obs)
        feat = self._qs_encoder(obs if self.pixels else obs.float())
        x = torch.cat([feat, a], dim=-1)
        return self._Qs1(x), self._Qs2(x)

    # -- helpers --------------------------------------------------------------------------------
    def critic_modules(self) -> list[nn.Module]:
        """The latent critic networks (frozen for the pi loss)."""
        return [self._Q1, self._Q2]

    def obs_critic_modules(self) -> list[nn.Module]:
        """The raw-observation critic (encoder included); empty if not built."""
        return [self._qs_encoder, self._Qs1, self._Qs2] if self.obs_critic else []

    def track_q_grad(self, enable: bool = True) -> None:
        """Enable / disable gradients of the latent critic (TD-MPC freezes Q for the pi loss)."""
        for m in self.critic_modules():
            m.requires_grad_(enable)

    def track_qs_grad(self, enable: bool = True) -> None:
        """Enable / disable gradients of the raw-observation critic."""
        for m in self.obs_critic_modules():
            m.requires_grad_(enable)

    def pi_parameters(self) -> list[nn.Parameter]:
        return list(self._pi.parameters())

    def model_parameters(self) -> list[nn.Parameter]:
        """Everything but pi (encoder, dynamics, reward, Q, and Q_s if built)."""
        pi_ids = {id(p) for p in self._pi.parameters()}
        return [p for p in self.parameters() if id(p) not in pi_ids]
