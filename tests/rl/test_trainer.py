"""Trainer: a killed-then-resumed run logs exactly the rows of an uninterrupted one; registry errors."""

import csv
from pathlib import Path

import pytest
import torch

from difftori.rl.config import RLConfig
from difftori.rl.trainer import CHECKPOINT_NAME, Trainer, agent_class
from difftori.utils.io import CorruptFileError

TINY = dict(
    task="cartpole-swingup", agent="tdmpc", episode_length=96, steps=576, seed_steps=12, schedule_steps=50,
    checkpoint_freq=200, eval_freq=192, eval_episodes=1, latent_dim=8, mlp_dim=32, enc_dim=16, batch_size=16,
    horizon=3, num_samples=16, num_elites=4, iterations=2, device="cpu", progress=False,
)


def _rows(run: Path, kind: str) -> list[dict]:
    with (run / f"{kind}.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    cfg = RLConfig(**TINY)
    Trainer.new(cfg, tmp_path / "full").train()

    # Interrupted run: dies at the start of episode 5 (rows at 384 logged, last checkpoint at 288).
    killed = Trainer.new(cfg, tmp_path / "killed")
    original = Trainer.run_episode

    def dying(self, on_step=None):
        if self.episode == 4:
            raise KeyboardInterrupt
        return original(self, on_step)

    monkeypatch.setattr(Trainer, "run_episode", dying)
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert [r["step"] for r in _rows(tmp_path / "killed", "train")] == ["96", "192", "288", "384"]
    monkeypatch.setattr(Trainer, "run_episode", original)

    resumed = Trainer.from_run_dir(tmp_path / "killed")
    assert resumed.env_step == 288 and resumed.episode == 3
    resumed.train()
    for kind in ("train", "eval"):
        full, res = _rows(tmp_path / "full", kind), _rows(tmp_path / "killed", kind)
        steps = [int(r["step"]) for r in res]
        assert steps == sorted(set(steps)), f"{kind}.csv rows duplicated or out of order: {steps}"
        assert steps == [int(r["step"]) for r in full]
        # Same RNG streams, env seeds, buffer and optimizer state: the same numbers.
        for a, b in zip(full, res):
            assert float(a["episode_return"]) == pytest.approx(float(b["episode_return"]), rel=1e-4, abs=1e-4)
    assert [int(r["step"]) for r in _rows(tmp_path / "full", "train")] == list(range(96, 577, 96))
    assert (tmp_path / "killed" / "plot.png").exists() and (tmp_path / "killed" / "final.json").exists()

    # A corrupt checkpoint is a clear error, not a crash deep inside torch.
    (tmp_path / "killed" / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="corrupt"):
        Trainer.from_run_dir(tmp_path / "killed")


def test_agent_registry_errors():
    with pytest.raises(ValueError, match="unknown agent 'sac'.*tdmpc"):
        agent_class("sac")
    from difftori.rl.tdmpc import TDMPC

    assert agent_class("tdmpc") is TDMPC
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Trainer.from_run_dir(Path("/nonexistent/run"))
