"""``difftori il collect|train|eval``: each subcommand is registered by the module that owns it."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("il", help="imitation learning on MetaWorld and robosuite: collect demos, train and evaluate policies")
    il_sub = p.add_subparsers(dest="cmd", required=True)
    from difftori.data.collect import register_cli as register_collect
    from difftori.il.train import register_cli as register_train

    register_collect(il_sub)  # difftori il collect
    register_train(il_sub)  # difftori il train / difftori il eval
