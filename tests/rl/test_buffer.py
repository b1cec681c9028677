"""Prioritized episodic replay: shapes, episode boundaries, priorities, pixels, checkpointing, ring."""

import numpy as np
import pytest
import torch

from difftori.rl.buffer import ReplayBuffer


def _episode(t, start, obs_dim=3, adim=2):
    """obs value encodes (global id): obs[i] = start + i; action[i] = start + i; reward = start + i."""
    ids = start + np.arange(t + 1, dtype=np.float32)
    obs = np.repeat(ids[:, None], obs_dim, axis=1)
    return obs, np.repeat(ids[:-1, None], adim, axis=1), ids[:-1].copy()


def test_sample_shapes_and_sequences_stay_in_episode():
    buf = ReplayBuffer((3,), 2, capacity=1000, horizon=4, seed=0)
    buf.add_episode(*_episode(10, 0))
    buf.add_episode(*_episode(6, 100))
    b = buf.sample(64)
    assert b.obs.shape == (64, 3) and b.next_obs.shape == (4, 64, 3)
    assert b.action.shape == (4, 64, 2) and b.reward.shape == (4, 64, 1) and b.weights.shape == (64, 1)
    first = b.obs[:, 0]
    # Consecutive ids within one episode: obs_{t+1} = obs_t + 1, a_t = obs_t.
    for t in range(4):
        torch.testing.assert_close(b.next_obs[t, :, 0], first + t + 1)
        torch.testing.assert_close(b.action[t, :, 0], first + t)
        torch.testing.assert_close(b.reward[t, :, 0], first + t)
    starts = set(first.tolist())
    assert starts <= set(range(0, 7)) | set(range(100, 103))  # 10-4+1 and 6-4+1 valid starts
    assert buf.num_valid == 7 + 3


def test_priorities_change_sampling_and_weights():
    buf = ReplayBuffer((3,), 2, capacity=1000, horizon=1, alpha=1.0, beta=1.0, seed=0)
    buf.add_episode(*_episode(20, 0))
    b = buf.sample(256)
    prios = np.ones(256)
    prios[b.obs[:, 0].numpy() == 5] = 10.0
    buf.update_priorities(b.idxs, prios)
    b2 = buf.sample(1024)
    is5 = b2.obs[:, 0] == 5
    # P(5) = 10 / (10 + 19 others at priority 1) ~ 0.34 (uniform would be 0.05).
    assert 0.25 < is5.float().mean().item() < 0.45
    # Importance weights (N P(i))^-beta normalised by the max: w5 / w_other = 1 / 10.
    assert b2.weights[~is5].max().item() == pytest.approx(1.0)
    assert b2.weights[is5].max().item() == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ValueError, match="priorities"):
        buf.update_priorities(b.idxs, np.ones(3))


def test_pixel_frames_restacked():
    fs, c = 3, 3
    buf = ReplayBuffer((fs * c, 4, 4), 1, capacity=100, horizon=2, frame_stack=fs, seed=1)
    t = 6
    frames = [np.full((c, 4, 4), i, np.uint8) for i in range(t + 1)]
    obs = np.stack([np.concatenate([frames[max(i - 2, 0)], frames[max(i - 1, 0)], frames[i]]) for i in range(t + 1)])
    buf.add_episode(obs, np.zeros((t, 1), np.float32), np.zeros(t, np.float32))
    assert buf._frames.shape[1:] == (c, 4, 4)  # single frames stored, not stacks
    b = buf.sample(32)
    idx = b.obs[:, -1, 0, 0].long().numpy()  # newest frame value = position in the episode
    np.testing.assert_array_equal(b.obs.numpy(), obs[idx])
    np.testing.assert_array_equal(b.next_obs[1].numpy(), obs[idx + 2])
    with pytest.raises(ValueError, match="uint8"):
        buf.add_episode(obs.astype(np.float32), np.zeros((t, 1), np.float32), np.zeros(t, np.float32))


def test_state_dict_round_trip_and_rng():
    buf = ReplayBuffer((3,), 2, capacity=500, horizon=3, seed=4)
    buf.add_episode(*_episode(30, 0))
    buf.sample(8)
    state = buf.state_dict()
    other = ReplayBuffer((3,), 2, capacity=500, horizon=3, seed=99)
    other.load_state_dict(state)
    a, b = buf.sample(16), other.sample(16)
    np.testing.assert_array_equal(a.idxs, b.idxs)
    torch.testing.assert_close(a.next_obs, b.next_obs)
    with pytest.raises(ValueError, match="does not match"):
        ReplayBuffer((4,), 2, capacity=500, horizon=3).load_state_dict(state)


def test_ring_overwrites_oldest_and_keeps_sequences_valid():
    buf = ReplayBuffer((3,), 2, capacity=25, horizon=3, seed=0)
    for k in range(5):
        buf.add_episode(*_episode(9, 100 * k))  # 10 slots each -> wraps
    assert len(buf) == 25
    b = buf.sample(200)
    first = b.obs[:, 0]
    torch.testing.assert_close(b.next_obs[-1, :, 0], first + 3)  # never crosses into other data
    assert (first >= 200).all()  # episodes 0 and 1 are gone, 2 only partly left


def test_bad_episode_shapes():
    buf = ReplayBuffer((3,), 2, capacity=100, horizon=2)
    obs, act, rew = _episode(5, 0)
    with pytest.raises(ValueError, match="episode obs shape"):
        buf.add_episode(obs[:-1], act, rew)
    with pytest.raises(RuntimeError, match="no sequence"):
        buf.sample(4)
