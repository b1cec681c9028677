"""Policy registry: build a policy from an :class:`ILConfig` or from a checkpoint's build info.

A policy checkpoint stores ``policy_info`` (JSON-able: class, shapes, sub-config, and for
DiffTORI the base policy's info) and ``policy`` (the ``state_dict``, normalizer and frozen
base included), so ``load_policy(path)`` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from difftori.il.base import Policy
from difftori.il.config import BCConfig, DiffTORIConfig, DiffusionConfig, IBCConfig, ILConfig
from difftori.utils.config import from_dict
from difftori.utils.io import CorruptFileError, load_checkpoint

__all__ = ["POLICY_CLASSES", "build_policy", "policy_from_config", "load_policy", "resolve_checkpoint", "new_normalizer"]


def _classes():
    from difftori.il.bc import BCPolicy
    from difftori.il.difftori_policy import DiffTORIPolicy
    from difftori.il.diffusion import DiffusionPolicy
    from difftori.il.ibc import IBCPolicy

    return {"bc": (BCPolicy, BCConfig), "ibc": (IBCPolicy, IBCConfig), "diffusion": (DiffusionPolicy, DiffusionConfig), "difftori": (DiffTORIPolicy, DiffTORIConfig)}


POLICY_CLASSES = ("bc", "ibc", "diffusion", "difftori")


def new_normalizer() -> torch.nn.Module:
    """An empty normalizer of the data package's type (filled by ``fit`` or ``load_state_dict``)."""
    from difftori.data.normalizer import Normalizer

    return Normalizer()


def build_policy(info: Mapping[str, Any], base: Policy | None = None) -> Policy:
    """Instantiate (untrained, without normalizer) the policy described by ``info``.

    For DiffTORI, ``base`` is the frozen base policy; if omitted and ``info["base"]`` is set, an
    untrained base is built (its weights then come from the DiffTORI ``state_dict``).
    """
    classes = _classes()
    name = info["policy"]
    if name not in classes:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(classes)}")
    cls, cfg_cls = classes[name]
    kwargs = dict(
        obs_shapes={k: tuple(v) for k, v in info["obs_shapes"].items()},
        action_dim=int(info["action_dim"]),
        obs_steps=int(info["obs_steps"]),
        action_steps=int(info["action_steps"]),
        encoder_dim=int(info["encoder_dim"]),
        cfg=from_dict(cfg_cls, info["cfg"]),
    )
    if name == "difftori":
        if base is None and info.get("base"):
            base = build_policy(info["base"])
            base.set_normalizer(new_normalizer())
        kwargs["base"] = base
    policy = cls(**kwargs)
    policy.set_encoder_precision(info.get("encoder_precision", "fp32"))  # checkpoints from before the option: fp32
    return policy


def policy_from_config(cfg: ILConfig, obs_shapes: Mapping[str, tuple[int, ...]], action_dim: int, base: Policy | None = None) -> Policy:
    """A fresh policy of ``cfg.policy`` for the given per-frame observation shapes."""
    info = {
        "policy": cfg.policy,
        "obs_shapes": dict(obs_shapes),
        "action_dim": action_dim,
        "obs_steps": cfg.obs_steps,
        "action_steps": cfg.action_steps,
        "encoder_dim": cfg.encoder_dim,
        "encoder_precision": cfg.encoder_precision,
        "cfg": _section(cfg),
    }
    return build_policy(info, base=base)


def _section(cfg: ILConfig) -> dict[str, Any]:
    from difftori.utils.config import to_dict

    return to_dict(getattr(cfg, cfg.policy))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, a run dir (-> its ``checkpoints/last.pt``), or a folder of runs (-> the newest run's)."""
    from difftori.utils.runs import locate_checkpoint

    return locate_checkpoint(path)[0]


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> Policy:
    """Rebuild a trained policy (normalizer and, for DiffTORI, the frozen base included) from a checkpoint."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    if "policy_info" not in ckpt or "policy" not in ckpt:
        raise CorruptFileError(f"{path} is not an IL policy checkpoint (no policy_info/policy entries)")
    policy = build_policy(ckpt["policy_info"])
    policy.set_normalizer(new_normalizer())
    policy.load_state_dict(ckpt["policy"])
    return policy.to(device).eval()
