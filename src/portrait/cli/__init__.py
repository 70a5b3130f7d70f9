"""The ``portrait`` command (started by :func:`portrait.__main__.main`). Parses arguments, calls the service (or a
running server), prints.
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
from portrait.cli.common import app, check_help_output, reflow_help

__all__ = ["app"]

reflow_help(app)
check_help_output(app)
