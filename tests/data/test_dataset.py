"""Demo datasets: zarr round trip, checked loading of bad stores, and exact window padding at episode edges."""

import json
import shutil

import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr")

from difftori.data import DemoData, DemoFormatError, DemoWindowDataset, load_demos, save_demos  # noqa: E402

LENGTHS = [3, 1, 5, 4]


def _demos(obs_type="pointcloud", lengths=LENGTHS, seed=0) -> DemoData:
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    obs = {"state": rng.normal(size=(n, 9)).astype(np.float32)}
    if obs_type == "pointcloud":
        obs["pointcloud"] = rng.normal(size=(n, 16, 3)).astype(np.float32)
    elif obs_type == "image":
        obs["image"] = rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8)
    else:
        obs["full_state"] = rng.normal(size=(n, 39)).astype(np.float32)
    # action[t, 0] = t makes every window's provenance readable.
    action = np.concatenate([np.arange(n)[:, None], rng.uniform(-1, 1, size=(n, 3))], axis=1).astype(np.float32)
    return DemoData(obs=obs, action=action, episode_ends=np.cumsum(lengths), attrs={"task": "reach", "obs_type": obs_type, "seed": 0})


def _reference_window(lengths, t_global, obs_steps, action_steps):
    """Plain-loop reference: the episode of t, then clamped obs/action indices."""
    start = 0
    for length in lengths:
        if t_global < start + length:
            end = start + length
            obs = [max(start, t_global - k) for k in range(obs_steps - 1, -1, -1)]
            act = [min(end - 1, t_global + k) for k in range(action_steps)]
            return obs, act
        start += length
    raise IndexError(t_global)


@pytest.mark.parametrize("obs_steps,action_steps", [(2, 4), (3, 1), (1, 6)])
def test_windows_pad_at_episode_edges_exactly(obs_steps, action_steps):
    data = _demos()
    ds = DemoWindowDataset(data, obs_steps=obs_steps, action_steps=action_steps)
    assert len(ds) == sum(LENGTHS)
    for i in range(len(ds)):
        item = ds[i]
        obs_idx, act_idx = _reference_window(LENGTHS, i, obs_steps, action_steps)
        assert item["action"].shape == (action_steps, 4) and item["action"].dtype == torch.float32
        assert item["action"][:, 0].tolist() == act_idx
        for key in ("state", "pointcloud"):
            assert item["obs"][key].shape == (obs_steps, *data.obs[key].shape[1:])
            np.testing.assert_array_equal(item["obs"][key].numpy(), data.obs[key][obs_idx])
    # Spot-check the edges explicitly: first step of episode 2 (global 4, length 5), last step of it (8).
    first = DemoWindowDataset(data, 2, 4)[4]
    assert first["action"][:, 0].tolist() == [4, 5, 6, 7]
    np.testing.assert_array_equal(first["obs"]["state"].numpy(), data.obs["state"][[4, 4]])
    last = DemoWindowDataset(data, 2, 4)[8]
    assert last["action"][:, 0].tolist() == [8, 8, 8, 8]
    # The single-step episode (global index 3) only ever sees itself.
    lone = DemoWindowDataset(data, 2, 4)[3]
    assert lone["action"][:, 0].tolist() == [3, 3, 3, 3]


def test_images_stay_uint8_and_batches_collate():
    ds = DemoWindowDataset(_demos("image"), obs_steps=2, action_steps=4)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["obs"]["image"].dtype == torch.uint8 and batch["obs"]["image"].shape == (5, 2, 3, 8, 8)
    assert batch["obs"]["state"].dtype == torch.float32 and batch["action"].shape == (5, 4, 4)


def test_split_by_episode():
    data = _demos(lengths=[2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    ds = DemoWindowDataset(data, 2, 4)
    train, val = ds.split(val_ratio=0.2, seed=3)
    assert len(val.episodes) == 2 and len(train.episodes) == 8
    assert set(train.episodes) | set(val.episodes) == set(range(10)) and not set(train.episodes) & set(val.episodes)
    assert len(train) + len(val) == len(ds)
    again, _ = ds.split(val_ratio=0.2, seed=3)
    assert again.episodes.tolist() == train.episodes.tolist()
    # Val windows only contain steps of val episodes.
    bounds = data.episode_bounds()
    allowed = {t for e in val.episodes for t in range(*bounds[e])}
    assert {int(v) for i in range(len(val)) for v in val[i]["action"][:, 0]} <= allowed
    stats = train.stats_data()
    assert stats["action"].shape[0] == sum(bounds[e][1] - bounds[e][0] for e in train.episodes)
    with pytest.raises(ValueError, match="val_ratio"):
        ds.split(val_ratio=1.0)


@pytest.mark.parametrize("obs_type", ["pointcloud", "image", "state"])
def test_save_load_round_trip(tmp_path, obs_type):
    data = _demos(obs_type)
    path = save_demos(tmp_path / "demos.zarr", data)
    assert not (tmp_path / "demos.zarr.tmp").exists()
    back = load_demos(path, expect_task="reach-v3", expect_obs_type=obs_type)
    assert back.task == "reach" and back.obs_type == obs_type and back.n_episodes == len(LENGTHS)
    assert back.attrs["format"] == "difftori-demos" and back.attrs["format_version"] == 1
    assert back.attrs["obs_keys"] == sorted(data.obs) and back.attrs["action_dim"] == 4
    np.testing.assert_array_equal(back.episode_ends, np.cumsum(LENGTHS))
    assert back.episode_ends.dtype == np.int64
    np.testing.assert_array_equal(back.action, data.action)
    for key, arr in data.obs.items():
        assert back.obs[key].dtype == arr.dtype
        np.testing.assert_array_equal(back.obs[key], arr)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_demos(path, data)
    save_demos(path, _demos(obs_type, lengths=[2, 2]), overwrite=True)
    assert load_demos(path).n_steps == 4


def _saved(tmp_path):
    return save_demos(tmp_path / "d.zarr", _demos())


def _edit_attrs(path, **changes):
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"].update(changes)
    meta.write_text(json.dumps(doc))


def test_missing_and_non_zarr_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="il collect"):
        load_demos(tmp_path / "nope.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DemoFormatError, match="not a readable zarr store|not a difftori"):
        load_demos(tmp_path / "empty")
    (tmp_path / "file.zarr").write_bytes(b"\x00garbage")
    with pytest.raises(DemoFormatError):
        load_demos(tmp_path / "file.zarr")


def test_wrong_format_tag_and_version(tmp_path):
    path = _saved(tmp_path)
    _edit_attrs(path, format="something-else")
    with pytest.raises(DemoFormatError, match="format tag"):
        load_demos(path)
    _edit_attrs(path, format="difftori-demos", format_version=99)
    with pytest.raises(DemoFormatError, match="format_version 99"):
        load_demos(path)


def test_task_or_obs_mismatch_names_both(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(DemoFormatError, match="collected for task 'reach' with obs 'pointcloud', but task 'door-open'"):
        load_demos(path, expect_task="door-open")
    with pytest.raises(DemoFormatError, match="with obs 'image' was asked for"):
        load_demos(path, expect_obs_type="image")


def test_demos_of_an_older_observation_layout_are_refused(monkeypatch, tmp_path):
    from difftori.envs import metaworld

    path = _saved(tmp_path)
    assert load_demos(path, expect_task="reach").task == "reach"  # no obs_revision attribute: revision 1
    monkeypatch.setattr(metaworld, "OBS_REVISIONS", {"reach": 2}, raising=False)  # reach's observations changed
    with pytest.raises(DemoFormatError, match="layout revision 1.*at revision 2.*il collect"):
        load_demos(path)
    _edit_attrs(path, obs_revision=2)
    assert load_demos(path, expect_task="reach").n_episodes == len(LENGTHS)


def test_missing_array_and_corrupt_chunks(tmp_path):
    path = _saved(tmp_path)
    shutil.rmtree(path / "data" / "state")
    with pytest.raises(DemoFormatError, match="'data/state' is missing"):
        load_demos(path)

    path = save_demos(tmp_path / "c.zarr", _demos())
    chunk = next(p for p in (path / "data" / "pointcloud").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])  # truncated chunk
    with pytest.raises(DemoFormatError, match="pointcloud"):
        load_demos(path)

    path = save_demos(tmp_path / "m.zarr", _demos())
    chunk = next(p for p in (path / "data" / "action").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.unlink()  # a missing chunk reads back as fill values: caught by the checksum
    with pytest.raises(DemoFormatError, match="checksum"):
        load_demos(path)


def test_inconsistent_lengths(tmp_path):
    path = _saved(tmp_path)
    root = zarr.open_group(str(path), mode="r+")
    del root["data/state"]
    root["data"].create_array("state", data=np.zeros((5, 9), np.float32))
    sums = dict(root.attrs["checksums"])
    sums.pop("data/state")
    root.attrs["checksums"] = sums
    with pytest.raises(DemoFormatError, match="inconsistent lengths"):
        load_demos(path)

    path = save_demos(tmp_path / "e.zarr", _demos())
    root = zarr.open_group(str(path), mode="r+")
    del root["meta/episode_ends"]
    root["meta"].create_array("episode_ends", data=np.array([3, 2, 13], np.int64))
    root.attrs["checksums"] = {k: v for k, v in root.attrs["checksums"].items() if k != "meta/episode_ends"}
    with pytest.raises(DemoFormatError, match="episode_ends"):
        load_demos(path)


def test_demo_data_validation():
    d = _demos()
    with pytest.raises(DemoFormatError, match="steps"):
        DemoData(obs={"state": d.obs["state"][:-1]}, action=d.action, episode_ends=d.episode_ends)
    with pytest.raises(DemoFormatError, match="episode_ends"):
        DemoData(obs={"state": d.obs["state"]}, action=d.action, episode_ends=[3, 3, 13])
