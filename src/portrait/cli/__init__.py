"""The ``portrait`` command. Parses arguments, calls the service (or a running server), prints.
Commands live in small modules by area; importing them registers them on :data:`app`.
"""

from portrait.cli import (  # noqa: F401  (registers the commands)
    analytics,
    attributes,
    backups,
    keys,
    privacy,
    reads,
    segments,
    server,
    sources,
    transfer,
)
from portrait.cli.common import app, reflow_help

__all__ = ["app", "main"]

reflow_help(app)


def main() -> None:  # pragma: no cover - console entry point
    app()
