"""Tiny RL cells for the sweep tests: a run is a few seconds (mostly imports) on one thread."""

from __future__ import annotations

TINY_RL = [
    "--episode-length", "48", "--seed-steps", "6", "--eval-episodes", "1", "--eval-freq", "96", "--checkpoint-freq", "48",
    "--latent-dim", "8", "--mlp-dim", "32", "--enc-dim", "16", "--batch-size", "16", "--horizon", "3",
    "--num-samples", "16", "--num-elites", "4", "--iterations", "2", "--buffer-size", "2000",
    "--difftori.max-iters", "3", "--difftori.pg-start-step", "6",
]  # fmt: skip
"""rl train options of a tiny run (cartpole: action repeat 8, so an episode is 6 agent steps)."""
