"""IL trainer (placeholder until implemented)."""


def register_cli(sub) -> None:
    pass
