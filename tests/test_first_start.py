"""The first minutes on an unfriendly machine: a umask that makes files world-readable, a terminal that is not
UTF-8, a database path that names something else than a database, an old Python. Each runs the real command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def fake_python(folder: Path, version: str) -> Path:
    """A ``python3`` that is an older Python as far as the Makefile can tell."""
    folder.mkdir()
    script = folder / "python3"
    script.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "Python {version}" && exit 0\nexit 1\n')
    script.chmod(0o755)
    return folder


def test_make_says_which_python_it_needs(tmp_path: Path) -> None:
    path = f"{fake_python(tmp_path / 'bin', '3.10.12')}:{os.environ['PATH']}"
    made = subprocess.run(["make", "-C", str(REPO), "install", f"VENV={tmp_path / 'venv'}"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PATH": path}, check=False)
    assert made.returncode != 0
    assert "Portrait needs Python 3.11 or newer (python3: Python 3.10.12)" in made.stderr, made.stderr
    assert not (tmp_path / "venv").exists()


def test_make_run_takes_the_port_and_host_from_portraits_settings(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(sys.executable, venv / "bin" / "python")  # present: make does not create the venv (dry run anyway)
    env = {**os.environ, "PORTRAIT_PORT": "8123", "PORTRAIT_HOST": "0.0.0.0"}
    planned = subprocess.run(["make", "-n", "-C", str(REPO), "run", f"VENV={venv}"], capture_output=True, text=True,
                             timeout=60, env=env, check=False)
    assert planned.returncode == 0, planned.stderr
    assert f"{venv}/bin/portrait serve --host 0.0.0.0 --port 8123" in planned.stdout
    explicit = subprocess.run(["make", "-n", "-C", str(REPO), "run", f"VENV={venv}", "PORT=9000"],
                              capture_output=True, text=True, timeout=60, env=env, check=False)
    assert "--port 9000" in explicit.stdout
