"""TOLD world model: part shapes, TD-MPC init, raw-observation critic, input checks."""

import pytest
import torch

from difftori.rl.world_model import TOLD, RandomShift


def test_state_model_shapes_and_init():
    m = TOLD((5,), 2, latent_dim=8, mlp_dim=16, enc_dim=12, obs_critic=True)
    obs, a = torch.randn(4, 5), torch.rand(4, 2) * 2 - 1
    z = m.encode(obs)
    assert z.shape == (4, 8)
    assert m.next(z, a).shape == (4, 8)
    r = m.reward(z, a)
    q1, q2 = m.Q(z, a)
    qs1, qs2 = m.Qs(obs, a)
    for out in (r, q1, q2, qs1, qs2):
        assert out.shape == (4, 1)
        assert torch.all(out == 0)  # zero-initialised last layers
    pi = m.pi(z)
    assert pi.shape == (4, 2) and pi.abs().max() < 1
    noisy = m.pi(z, std=0.5)
    assert noisy.abs().max() < 1 and not torch.allclose(noisy, pi)
    # First critic layers are Linear-LayerNorm-Tanh, as in TD-MPC.
    assert isinstance(m._Q1[1], torch.nn.LayerNorm) and isinstance(m._Q1[2], torch.nn.Tanh)


def test_losses_backprop_and_q_freeze():
    m = TOLD((3,), 1, latent_dim=6, mlp_dim=16, enc_dim=8)
    z = m.encode(torch.randn(5, 3))
    a = m.pi(z)
    m.track_q_grad(False)
    torch.min(*m.Q(z, a)).mean().backward()
    assert all(p.grad is None for net in m.critic_modules() for p in net.parameters())
    assert any(p.grad is not None for p in m.pi_parameters())
    m.track_q_grad(True)
    assert all(p.requires_grad for net in m.critic_modules() for p in net.parameters())
    ids = {id(p) for p in m.model_parameters()}
    assert not ids & {id(p) for p in m.pi_parameters()}


def test_pixel_model_and_augmentation():
    m = TOLD((9, 64, 64), 3, latent_dim=10, mlp_dim=16, num_channels=8, obs_critic=True)
    obs = torch.randint(0, 256, (2, 9, 64, 64), dtype=torch.uint8)
    assert m.encode(obs).shape == (2, 10)
    assert m.Qs(obs, torch.zeros(2, 3))[0].shape == (2, 1)
    aug = RandomShift(4)(obs)
    assert aug.shape == (2, 9, 64, 64) and aug.dtype == torch.float32
    assert RandomShift(4)(torch.randn(2, 5)).shape == (2, 5)  # identity on state


def test_bad_shapes_are_clear_errors():
    m = TOLD((5,), 2, latent_dim=4, mlp_dim=8, enc_dim=8)
    with pytest.raises(ValueError, match="observation shape"):
        m.encode(torch.randn(3, 6))
    with pytest.raises(RuntimeError, match="obs_critic"):
        m.Qs(torch.randn(3, 5), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="obs_shape"):
        TOLD((2, 3), 1)
