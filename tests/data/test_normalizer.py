"""Normalizer: [-1, 1] limits, exact round trips, identity keys, and state_dict persistence."""

import numpy as np
import pytest
import torch
from torch import nn

from difftori.data import Normalizer


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    action = torch.rand(200, 4, generator=g) * torch.tensor([2.0, 0.5, 0.01, 2.0]) - torch.tensor([1.0, 0.0, 0.3, 1.0])
    state = torch.randn(200, 9, generator=g) * 3 + 10
    state[:, 4] = 0.25  # a constant feature
    cloud = torch.randn(50, 64, 3, generator=g) * torch.tensor([0.3, 0.2, 0.1]) + torch.tensor([0.0, 0.6, 0.2])
    image = torch.randint(0, 256, (10, 3, 8, 8), generator=g, dtype=torch.uint8)
    return {"action": action, "state": state, "pointcloud": cloud, "image": image}


def test_limits_map_to_unit_box_and_round_trip():
    data = _data()
    norm = Normalizer().fit(data)
    for key in ("action", "state", "pointcloud"):
        x = data[key]
        y = norm.normalize(key, x)
        flat = y.reshape(-1, x.shape[-1])
        varying = x.reshape(-1, x.shape[-1]).std(0) > 0
        torch.testing.assert_close(flat.min(0).values[varying], -torch.ones(int(varying.sum())), atol=1e-6, rtol=0)
        torch.testing.assert_close(flat.max(0).values[varying], torch.ones(int(varying.sum())), atol=1e-6, rtol=0)
        assert (norm.unnormalize(key, y) - x).abs().max() <= 1e-6 * max(1.0, x.abs().max().item())
    # A constant feature is centred at 0, not blown up.
    assert torch.all(norm.normalize("state", data["state"])[:, 4].abs() < 1e-6)
    # Point clouds: per-axis statistics over all points of all frames (as in DP3).
    assert norm.fields["pointcloud"].scale.shape == (3,)
    # Round trip on fresh values outside the fitted range too (float64 keeps it exact to 1e-12).
    z = torch.randn(7, 4, dtype=torch.float64) * 5
    assert (norm.unnormalize("action", norm.normalize("action", z)) - z).abs().max() < 1e-12


def test_images_pass_through_unchanged():
    data = _data()
    norm = Normalizer().fit(data)
    out = norm.normalize("image", data["image"])
    assert out.dtype == torch.uint8 and torch.equal(out, data["image"])
    assert torch.equal(norm.unnormalize("image", out), data["image"])
    ident = Normalizer(modes={"pointcloud": "identity"}).fit(data)
    assert torch.equal(ident.normalize("pointcloud", data["pointcloud"]), data["pointcloud"])


def test_normalize_obs_and_errors():
    data = _data()
    norm = Normalizer().fit({k: v for k, v in data.items() if k != "action"})
    obs = {"state": data["state"][:2], "pointcloud": data["pointcloud"][:2]}
    out = norm.normalize_obs(obs)
    assert set(out) == set(obs) and torch.equal(out["state"], norm.normalize("state", obs["state"]))
    with pytest.raises(KeyError, match="action"):
        norm.normalize("action", data["action"])
    with pytest.raises(ValueError, match="last dim 9"):
        norm.normalize("state", torch.zeros(3, 8))
    with pytest.raises(ValueError, match="mode"):
        Normalizer(modes={"state": "zscore"})
    with pytest.raises(ValueError, match="non-finite"):
        Normalizer().fit({"state": torch.tensor([[1.0, float("nan")]])})
    norm.fit({"numpy_ok": np.arange(6, dtype=np.float32).reshape(3, 2)})
    assert "numpy_ok" in norm


def test_state_dict_into_fresh_normalizer_and_inside_a_policy():
    data = _data()
    norm = Normalizer().fit(data)
    fresh = Normalizer()
    fresh.load_state_dict(norm.state_dict())
    assert set(fresh.keys()) == set(norm.keys())
    for key in data:
        assert torch.equal(fresh.normalize(key, data[key]), norm.normalize(key, data[key]))

    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.normalizer = Normalizer()
            self.net = nn.Linear(4, 4)

    fitted = Policy()
    fitted.normalizer.fit(data)
    sd = fitted.state_dict()
    assert "normalizer.fields.action.scale" in sd and "normalizer.fields.image.mode" in sd
    restored = Policy()
    restored.load_state_dict(sd)  # strict: every key matched
    torch.testing.assert_close(
        restored.normalizer.unnormalize("action", torch.zeros(1, 4)), fitted.normalizer.unnormalize("action", torch.zeros(1, 4))
    )
    assert restored.normalizer.fields["image"].mode_name == "identity"
