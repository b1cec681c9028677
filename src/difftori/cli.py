"""``difftori`` command line: ``rl train|eval``, ``il collect|train|eval``, ``sweep rl|il|report``, ``plot``.

Each area registers its own subcommands (``difftori.rl.cli.register``,
``difftori.il.cli.register``); heavy imports happen inside the command handlers, so
``difftori --help`` is fast and a missing optional dependency only affects its command.
Rendering is headless: without ``MUJOCO_GL`` an installed backend is picked (EGL, else OSMesa).
Expected failures (bad options, missing files, no GL) print one ``difftori: error:`` line and
exit with status 2 (``DIFFTORI_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _plot(args: argparse.Namespace) -> int:
    from difftori.utils.plotting import plot_runs

    out = plot_runs(args.runs, args.out, metric=args.metric)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="difftori", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="area", required=True)

    from difftori.il import cli as il_cli
    from difftori.rl import cli as rl_cli
    from difftori.sweep import cli as sweep_cli

    rl_cli.register(sub)
    il_cli.register(sub)
    sweep_cli.register(sub)

    p = sub.add_parser("plot", help="learning curves of one or many runs (mean and spread over seeds, one line per variant) as PNG")
    p.add_argument("runs", nargs="+", help="run directories, or folders containing runs")
    p.add_argument("--out", type=Path, default=Path("curves.png"), help="output PNG path")
    p.add_argument("--metric", default=None, help="eval.csv column to plot (default: episode_return or success_rate)")
    p.set_defaults(func=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    from difftori.utils.gl import configure_gl

    configure_gl()  # before anything imports mujoco
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:
        from difftori.sweep.cli import split_lists

        argv = split_lists(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # only the sweep commands pass unknown options on (to every run, checked there)
        if not getattr(args, "overrides_ok", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        again = "run the same command again to resume" if args.area == "sweep" else "resume with --resume RUN_DIR"
        print(f"interrupted; {again}", file=sys.stderr)
        return 130
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        # Expected user-facing failures: one clear line, no traceback (set DIFFTORI_DEBUG=1 for it).
        import os

        if os.environ.get("DIFFTORI_DEBUG"):
            raise
        print(f"difftori: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
