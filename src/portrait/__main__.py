"""``python -m portrait`` and the ``portrait`` command: the CLI."""

import sys


def main() -> None:
    """Run the CLI. Its imports (DuckDB, pyarrow, FastAPI...) take a second or two before click handles Ctrl-C:
    pressed then, it printed a long traceback of whichever module was loading."""
    try:
        from portrait.cli import app
    except KeyboardInterrupt:
        print("Interrupted while starting: nothing was done.", file=sys.stderr)
        raise SystemExit(130) from None
    app()


if __name__ == "__main__":
    main()
