"""Observation encoders: output shapes, permutation invariance of PointNet, clear shape errors."""

import pytest
import torch

from difftori.models.encoders import ImageEncoder, ObsEncoder, PointNetEncoder, StateEncoder, encoder_for_shape


def test_pointnet_shape_and_permutation_invariance():
    enc = PointNetEncoder(out_dim=64)
    pts = torch.randn(3, 512, 3)
    out = enc(pts)
    assert out.shape == (3, 64)
    perm = torch.randperm(512)
    torch.testing.assert_close(enc(pts[:, perm]), out)
    # LayerNorm on the output: zero mean, unit variance per sample
    torch.testing.assert_close(out.mean(-1), torch.zeros(3), atol=1e-5, rtol=0)


def test_image_encoder_uint8_and_float():
    enc = ImageEncoder((3, 84, 84), out_dim=64)
    img = torch.randint(0, 256, (2, 3, 84, 84), dtype=torch.uint8)
    assert enc(img).shape == (2, 64)
    torch.testing.assert_close(enc(img), enc(img.float() / 255.0 - 0.5))


def test_obs_encoder_combines_modalities_over_frames():
    enc = ObsEncoder({"pointcloud": (128, 3), "state": (9,)}, obs_steps=2, out_dim=64)
    assert isinstance(enc.encoders["pointcloud"], PointNetEncoder) and isinstance(enc.encoders["state"], StateEncoder)
    assert enc.feature_dim == 2 * (64 + 64)
    obs = {"pointcloud": torch.randn(5, 2, 128, 3), "state": torch.randn(5, 2, 9)}
    feat = enc(obs)
    assert feat.shape == (5, 256)
    # frames are encoded separately: changing the older frame changes only its half
    obs2 = {k: v.clone() for k, v in obs.items()}
    obs2["state"][:, 0] += 1.0
    diff = (enc(obs2) - feat).abs().reshape(5, 2, 128).sum(-1)
    assert (diff[:, 0] > 0).all() and (diff[:, 1] == 0).all()


def test_shape_errors_are_clear():
    enc = ObsEncoder({"state": (9,)}, obs_steps=2)
    with pytest.raises(ValueError, match="expected \\(B, 2, 9\\)"):
        enc({"state": torch.randn(4, 3, 9)})
    with pytest.raises(KeyError, match="missing key 'state'"):
        enc({"pointcloud": torch.randn(4, 2, 9)})
    with pytest.raises(ValueError, match="no encoder for observation shape"):
        encoder_for_shape((4, 5))


def test_obs_encoder_bf16_is_close_to_fp32_returns_fp32_and_trains():
    torch.manual_seed(0)
    enc = ObsEncoder({"pointcloud": (256, 3), "image": (3, 84, 84), "state": (9,)}, obs_steps=2, out_dim=32)
    obs = {"pointcloud": torch.randn(4, 2, 256, 3), "image": torch.randint(0, 256, (4, 2, 3, 84, 84), dtype=torch.uint8),
           "state": torch.randn(4, 2, 9)}
    ref = enc(obs)
    enc.precision = "bf16"
    out = enc(obs)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert not torch.equal(out, ref), "bf16 must actually run in bf16"
    assert (out - ref).norm() / ref.norm() < 0.05  # LayerNorm'd features: bf16's ~3 significant digits
    out.square().sum().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="precision must be one of"):
        enc.precision = "fp16"


def test_encoder_precision_is_part_of_the_policy_and_its_checkpoint_info():
    from difftori.il.config import ILConfig
    from difftori.utils.config import ConfigError
    from difftori.il.policies import build_policy, policy_from_config
    from difftori.models.encoders import ObsEncoder as Enc

    cfg = ILConfig(task="push", policy="bc", obs_type="pointcloud", dataset="x", encoder_precision="bf16")
    pol = policy_from_config(cfg, {"pointcloud": (64, 3), "state": (9,)}, 4)
    assert [m.precision for m in pol.modules() if isinstance(m, Enc)] == ["bf16"]
    info = pol.build_info()
    assert info["encoder_precision"] == "bf16"
    assert build_policy(info).encoder_precision == "bf16"
    del info["encoder_precision"]  # a checkpoint from before the option
    assert build_policy(info).encoder_precision == "fp32"
    with pytest.raises(ConfigError, match="encoder_precision must be fp32, bf16 or auto"):
        ILConfig(encoder_precision="fp16")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_bf16(monkeypatch, native):
    """auto: bf16 autocast on a CPU with bf16 units, fp32 where torch would emulate bf16 (slower than fp32)."""
    import difftori.utils.device as device

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert device.native_bf16("cpu") is native
    torch.manual_seed(0)
    enc = ObsEncoder({"pointcloud": (128, 3)}, obs_steps=2, out_dim=16)
    obs = {"pointcloud": torch.randn(3, 2, 128, 3)}
    outs = {}
    for p in ("fp32", "bf16", "auto"):
        enc.precision = p
        outs[p] = enc(obs)
    assert enc.effective_precision("cpu") == ("bf16" if native else "fp32")
    assert torch.equal(outs["auto"], outs["bf16" if native else "fp32"])
    assert not torch.equal(outs["bf16"], outs["fp32"])
