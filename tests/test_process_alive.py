"""client.process_alive: whether a process id names a running process (the export folders' sweep, the CLI's stale
.partial files, the server note's process)."""

from __future__ import annotations

import os

import pytest

from portrait.client import process_alive


def test_this_process_is_alive() -> None:
    assert process_alive(os.getpid())


@pytest.mark.parametrize("pid", [0, -1, -os.getpid(), 2**70], ids=["0", "-1", "minus this pid", "2**70"])
def test_an_id_no_process_has_is_not_alive(pid: int) -> None:
    """kill(0) and kill(-n) signal a process group, every process for -1: they succeeded, so a note or a file name
    naming 0 or -1 counted as a live process (a `.server.json` saying pid 0 was told as 'kill 0')."""
    assert not process_alive(pid)
