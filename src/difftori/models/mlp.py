"""MLP building blocks shared by RL world models and IL policies."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["mlp", "orthogonal_init", "zero_last_layer", "elu_grad"]


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    act: type[nn.Module] = nn.ELU,
    layernorm: bool = False,
    out_act: nn.Module | None = None,
) -> nn.Sequential:
    """``in -> [Linear (LayerNorm) act]*len(hidden) -> Linear out (out_act)``."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if layernorm:
            layers.append(nn.LayerNorm(h))
        layers.append(act())
        d = h
    layers.append(nn.Linear(d, out_dim))
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


def orthogonal_init(module: nn.Module) -> None:
    """Orthogonal weights, zero biases for Linear/Conv layers (TD-MPC's init); use with ``.apply``."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        gain = nn.init.calculate_gain("relu")
        nn.init.orthogonal_(module.weight, gain)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def zero_last_layer(net: nn.Sequential) -> None:
    """Zero the last Linear layer (reward and Q heads start at 0)."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


def elu_grad(pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """d elu(x)/dx (alpha 1) from the input ``pre`` and output ``post``: 1 above 0, exp(x) = elu(x) + 1 below.

    For hand-written backward passes through ELU MLPs (no autograd)."""
    return torch.where(pre > 0, 1.0, post + 1.0)
