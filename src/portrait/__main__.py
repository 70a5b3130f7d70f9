"""``python -m portrait`` runs the CLI."""

from portrait.cli import app

app()
