"""Placeholder until this command group lands."""


def add_parser(subparsers) -> None:  # noqa: ARG001
    return None
