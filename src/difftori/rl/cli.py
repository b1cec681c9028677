"""`difftori rl ...` subcommands (placeholder until the rl trainer lands)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("rl", help="rl commands")
    p.add_subparsers(dest="cmd", required=True)
