"""Scripted-expert demo collection (placeholder until implemented)."""


def register_cli(sub) -> None:
    pass
