"""The README is executable: every ``difftori ...`` command in its ``bash`` blocks runs as written.

Commands run in order, in one empty working directory (so ``data/...`` and ``runs/...`` written
by one command are read by the next), with the tiny-budget options of :data:`TINY` appended
(argparse keeps the last value of an option, so these override the README's budgets). A
command whose subcommand has no entry in :data:`TINY` fails the test: decide its budget here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from difftori.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

_RL_NETS = [
    "--latent-dim", "8", "--mlp-dim", "32", "--enc-dim", "16", "--batch-size", "16", "--horizon", "3",
    "--num-samples", "16", "--num-elites", "4", "--iterations", "2", "--buffer-size", "2000",
]  # fmt: skip
_QUIET = ["--progress", "false", "--num-threads", "1"]

TINY: dict[str, list[str]] = {
    "rl train": [
        "--steps", "96", "--episode-length", "96", "--seed-steps", "12", "--eval-episodes", "1", "--eval-freq", "96",
        "--checkpoint-freq", "96", "--device", "cpu", *_RL_NETS, *_QUIET,
    ],
    "rl train --resume": ["--steps", "192", *_QUIET],  # one more episode
    "rl eval": ["--episodes", "1", "--device", "cpu", "--num-threads", "1"],
    "rl demo": ["--steps", "96", *_QUIET],
    "plot": [],
    "il collect": ["--episodes", "1", "--progress", "false"],
    "il train": [
        "--steps", "2", "--batch-size", "4", "--eval-episodes", "1", "--eval-max-steps", "4", "--device", "cpu",
        "--diffusion.down-dims", "16", "32", "--diffusion.step-embed-dim", "16", "--difftori.solver.max-iters", "3", *_QUIET,
    ],
    "il eval": ["--episodes", "1", "--max-steps", "4", "--device", "cpu", "--num-threads", "1"],
    "sweep rl": [  # one tiny cell on a 2-CPU local Ray cluster (threads, device and progress are the runner's)
        "--tasks", "cartpole-balance", "--agents", "tdmpc", "--seeds", "1", "--steps", "96", "--num-cpus", "2",
        "--episode-length", "96", "--seed-steps", "12", "--eval-episodes", "1", "--eval-freq", "96", "--checkpoint-freq", "96",
        *_RL_NETS,
    ],
    "sweep report": [],
}  # fmt: skip
"""Options appended to each README command, by subcommand (``--help`` commands run unchanged)."""


def readme_commands(text: str) -> list[list[str]]:
    """argv (without the leading ``difftori``) of every ``difftori`` line in the README's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "difftori":
                commands.append(argv[1:])
    return commands


def _key(argv: list[str]) -> str:
    key = " ".join(argv[:2]) if argv[0] in ("rl", "il", "sweep") else argv[0]
    return f"{key} --resume" if "--resume" in argv else key


def test_readme_parser_finds_the_commands():
    cmds = readme_commands("x\n```bash\ndifftori a b --c 1 \\\n    --d 2   # note\nmake x\n```\n`difftori no`\n")
    assert cmds == [["a", "b", "--c", "1", "--d", "2"]]


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = readme_commands(README.read_text())
    assert len(commands) >= 8, "the README lost its command examples"
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        shown = "difftori " + shlex.join(argv)
        if "--help" in argv:
            with pytest.raises(SystemExit) as exc:
                main(argv)
            assert exc.value.code == 0, shown
            continue
        key = _key(argv)
        assert key in TINY, f"README command without a test budget: {shown}; add {key!r} to TINY in {__file__}"
        rc = main(argv + TINY[key])
        err = capsys.readouterr().err
        assert rc == 0, f"{shown} exited with {rc}: {err.strip().splitlines()[-1:] if err.strip() else ''}"
