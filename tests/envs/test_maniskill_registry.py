"""ManiSkill3 task names and errors that need no ManiSkill install (run in the default venv too)."""

import sys

import pytest

from difftori.data.collect import CollectConfig, default_out
from difftori.envs import MissingDependencyError, UnknownTaskError
from difftori.envs import maniskill as ms


def test_task_names_without_maniskill():
    assert ms.canonical("pick-cube") == "pick-cube"
    assert ms.canonical("PickCube-v1") == "pick-cube"
    assert ms.canonical("PegInsertionSide") == "peg-insertion-side"
    assert ms.canonical("plug_charger") == "plug-charger"
    assert ms.canonical("door-open") is None and ms.canonical("cartpole-swingup") is None
    assert set(ms.EPISODE_LENGTHS) == set(ms.TASKS) == set(ms.ENV_IDS)
    with pytest.raises(UnknownTaskError, match="pick-cube"):
        ms.make("pick-cub")


def test_missing_dependency_has_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "mani_skill.envs", None)  # makes `import mani_skill.envs` fail
    with pytest.raises(MissingDependencyError, match="make maniskill"):
        ms.make("pick-cube", obs_type="state")


def test_collect_resolves_maniskill_tasks():
    assert default_out("PickCube-v1", "pointcloud", 10).name == "maniskill_pick-cube_pointcloud_10.zarr"
    assert default_out("door-open", "state", 5).name == "metaworld_door-open_state_5.zarr"
    assert CollectConfig(task="stack-cube").episode_length == ms.EPISODE_LENGTHS["stack-cube"]
    assert CollectConfig(task="door-open").episode_length == 200  # MetaWorld's default (sweep cell hashes unchanged)
    with pytest.raises(ValueError, match="unknown IL task"):
        CollectConfig(task="stack-cubes")


def test_vulkan_configure_respects_the_users_choice(monkeypatch, tmp_path):
    from difftori.envs import vulkan

    monkeypatch.setattr(vulkan, "_configured", False)
    monkeypatch.setenv("DIFFTORI_VULKAN_DIR", str(tmp_path))
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    monkeypatch.delenv("VK_ICD_FILENAMES", raising=False)
    monkeypatch.delenv("DIFFTORI_VULKAN", raising=False)
    assert not vulkan.configure()  # nothing fetched there
    vulkan.icd_file().write_text("{}")
    monkeypatch.setenv("DIFFTORI_VULKAN", "system")
    assert not vulkan.configure()
    monkeypatch.delenv("DIFFTORI_VULKAN")
    monkeypatch.setenv("VK_ICD_FILENAMES", "/mine.json")
    assert not vulkan.configure()
    monkeypatch.delenv("VK_ICD_FILENAMES")
    assert vulkan.configure()
    import os

    assert os.environ["VK_ICD_FILENAMES"] == str(tmp_path / vulkan.ICD_NAME)
    assert os.environ["LD_LIBRARY_PATH"].startswith(str(tmp_path)) and os.environ["LD_LIBRARY_PATH"].endswith(":/somewhere")


def test_il_training_checks_mujoco_rendering_only_for_mujoco_suites(monkeypatch):
    """`il train` on a ManiSkill task (own venv, no MuJoCo) must not probe MuJoCo's GL context before training."""
    from difftori.il import train

    assert [train._renderer(t) for t in ("pick-cube", "door-open", "lift", "no-such-task")] == ["sapien", "mujoco", "mujoco", None]
    monkeypatch.setitem(sys.modules, "mujoco", None)  # as in .venv-maniskill: importing it fails
    from difftori.il.config import ILConfig

    cfg = ILConfig(task="pick-cube", obs_type="pointcloud", policy="bc", dataset="/nonexistent.zarr", eval_episodes=1)
    with pytest.raises((FileNotFoundError, ValueError)) as exc:  # gets as far as the dataset, not a MuJoCo import error
        train.train(cfg)
    assert "mujoco" not in str(exc.value).lower()


def test_require_suite_fails_up_front_without_the_suite(monkeypatch):
    from difftori.envs import require_suite

    monkeypatch.setitem(sys.modules, "mani_skill.envs", None)
    with pytest.raises(MissingDependencyError, match="make maniskill"):
        require_suite("pick-cube")
    with pytest.raises(UnknownTaskError, match="pick-cube"):
        require_suite("pick-cub")
