"""Every ``difftori`` subcommand prints its ``--help`` (field docstrings) without error."""

import pytest

from difftori.cli import main


@pytest.mark.parametrize(
    "argv",
    [[], ["rl", "train"], ["rl", "eval"], ["rl", "demo"], ["il", "collect"], ["il", "train"], ["il", "eval"], ["plot"],
     ["sweep", "rl"], ["sweep", "il"], ["sweep", "report"]],
)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: difftori" in capsys.readouterr().out


def test_unknown_task_is_a_clear_error(capsys):
    assert main(["rl", "train", "--task", "no-such-task", "--steps", "10"]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and "no-such-task" in err and "cartpole-swingup" in err
