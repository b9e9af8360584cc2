"""CLI command groups; each module has ``add_parser(subparsers)`` and sets ``func`` on its parser."""

__all__ = []
