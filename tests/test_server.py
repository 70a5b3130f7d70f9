"""The real server process over loopback: official SDKs, durability across kill -9, the CLI beside a server."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient
from tests.conftest import ADMIN_KEY, WRITE_KEY, Server, start_server

from portrait.client import server_file
from portrait.errors import PortraitError


def test_segment_sdk_events_land_on_the_profile(server: Server) -> None:
    errors: list[Any] = []
    for gzip in (False, True):
        client = SegmentClient(write_key=WRITE_KEY, host=server.url, gzip=gzip, max_retries=1,
                               on_error=lambda error, batch: errors.append(error))
        user = f"seg-{gzip}"
        client.identify(user, {"email": f"{user}@example.com", "name": "Ann"}, anonymous_id=f"anon-{user}")
        for i in range(30):
            client.track(user, "Order Completed", {"order_id": i, "revenue": 10 + i})
        client.page(anonymous_id=f"anon-{user}", name="Home")
        client.flush()
        client.shutdown()
    assert errors == []
    server.wait_caught_up()
    with server.admin() as admin:
        profile = admin.get("/api/profiles/email:seg-true@example.com").json()
        assert profile["traits"] == {"email": "seg-True@example.com", "name": "Ann"}
        events = admin.get("/api/profiles/anonymous_id:anon-seg-True/events", params={"limit": 100}).json()
        assert len(events["events"]) == 32
        assert {e["context"]["library"]["name"] for e in events["events"]} == {"analytics-python"}


def test_rudder_sdk_basic_auth_and_gzip(server: Server) -> None:
    errors: list[Any] = []
    client = RudderClient(write_key=WRITE_KEY, host=server.url, on_error=lambda error, batch: errors.append(error))
    assert client.gzip  # the SDK's default, exercised here as sent
    # The SDK sends an identify's traits in context.traits only (none at the top level): they must still land.
    client.identify(user_id="rudder-1", traits={"email": "r@example.com", "plan": "gold", "firstName": "Ros"})
    client.track(user_id="rudder-1", event="Product Added", properties={"sku": "A-1"})
    client.flush()
    client.shutdown()
    assert errors == []
    server.wait_caught_up()
    with server.admin() as admin:
        events = admin.get("/api/profiles/email:r@example.com/events").json()["events"]
        assert [e["event"] for e in events if e["type"] == "track"] == ["Product Added"]
        traits = admin.get("/api/profiles/user_id:rudder-1/traits").json()
        assert {k: traits.get(k) for k in ("email", "plan", "first_name")} == {
            "email": "r@example.com", "plan": "gold", "first_name": "Ros"}


def test_sdk_with_a_wrong_key_is_told_401(server: Server) -> None:
    errors: list[Any] = []
    client = SegmentClient(write_key="not-a-key", host=server.url, max_retries=0,
                           on_error=lambda error, batch: errors.append(error))
    client.track("u", "X")
    client.flush()
    client.shutdown()
    assert [getattr(e, "status", None) for e in errors] == [401]


def test_acknowledged_events_survive_kill_9(server: Server, tmp_path: Path) -> None:
    """Every batch answered 200 is in the log after the process is killed hard, and processing resumes."""
    acknowledged = 0
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        for request in range(60):
            batch = [{"type": "identify" if i == 0 else "track", "event": "Product Viewed",
                      "userId": f"user-{(request * 7 + i) % 40}", "messageId": f"kill-{request}-{i}"}
                     for i in range(100)]
            assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
            acknowledged += 100
    server.stop(kill=True)
    assert server.process.returncode == -9
    restarted = start_server(server.db_path, tmp_path / "restart.log")
    try:
        status = restarted.wait_caught_up()
        assert status["events_received"] == acknowledged
        assert status["events_processed"] == acknowledged
        with restarted.admin() as admin:
            total = sum(len(admin.get(f"/api/profiles/user_id:user-{u}/events", params={"limit": 1000}).json()
                            ["events"]) for u in range(40))
        assert total == acknowledged
    finally:
        restarted.stop()


def test_retry_of_an_acknowledged_batch_is_not_duplicated(server: Server) -> None:
    batch = {"batch": [{"type": "track", "userId": "r", "event": "E", "messageId": f"dup-{i}"} for i in range(50)]}
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        for retry in range(3):
            response = client.post("/v1/batch", json=batch, headers={"X-Retry-Count": str(retry)})
            assert response.status_code == 200
    assert server.wait_caught_up()["events_received"] == 50


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    full_env.update(env or {})
    full_env["PORTRAIT_NO_PROGRESS"] = "1"
    return subprocess.run([sys.executable, "-m", "portrait", *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


def test_cli_beside_a_running_server(server: Server) -> None:
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        client.post("/v1/identify", json={"userId": "cli-user", "traits": {"email": "cli@example.com"}})
        for user_id in ("ord", "ord#2"):  # '#' would end the URL's path if sent as it is
            client.post("/v1/identify", json={"userId": user_id, "traits": {"name": f"name of {user_id}"}})
    server.wait_caught_up()
    hashed = run_cli("profiles", "get", "user_id:ord#2", "--db", server.db_path, "--json",
                     env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
    assert hashed.returncode == 0, hashed.stderr
    assert json.loads(hashed.stdout)["traits"] == {"name": "name of ord#2"}
    refused = run_cli("status", "--db", server.db_path)
    assert refused.returncode == 1
    assert "in use" in refused.stderr and server.url in refused.stderr and "--admin-key" in refused.stderr
    assert "Traceback" not in refused.stderr
    sender = run_cli("demo", "--profiles", "1", "--db", server.db_path, env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
    assert sender.returncode == 1  # demo sends events: it names the write key it needs, not the admin key
    assert "pass --write-key (or set PORTRAIT_WRITE_KEY)" in sender.stderr and "Traceback" not in sender.stderr
    through = run_cli("profiles", "get", "email:cli@example.com", "--db", server.db_path, "--json",
                      env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
    assert through.returncode == 0, through.stderr
    assert '"cli@example.com"' in through.stdout


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_the_server_cleanly(server: Server, stop_signal: signal.Signals) -> None:
    """docker stop / systemd send SIGTERM, a terminal Ctrl-C SIGINT: the database is closed (checkpointed), the
    server file removed, exit code 0."""
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        assert client.post("/v1/identify", json={"userId": "term", "traits": {"plan": "pro"}}).status_code == 200
    server.wait_caught_up()
    assert server_file(server.db_path).exists()
    server.process.send_signal(stop_signal)
    server.process.wait(timeout=30)
    assert server.process.returncode == 0, server.log_path.read_text()
    assert not server_file(server.db_path).exists()
    assert not Path(server.db_path + ".wal").exists()  # closed: everything checkpointed into the file
    assert "Traceback" not in server.log_path.read_text()


def test_a_stopping_server_leaves_a_server_file_another_process_wrote(server: Server) -> None:
    """A stopping server removed <db>.server.json whoever wrote it: a server started on the database as this one
    closed it (its lock released before the file was removed) lost its note, and the CLI no longer found it."""
    noted = json.dumps({"url": "http://127.0.0.1:1", "pid": os.getpid()})  # a live process's, not the server's
    server_file(server.db_path).write_text(noted)
    server.stop()
    assert server.process.returncode == 0, server.log_path.read_text()
    assert server_file(server.db_path).read_text() == noted


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _waits_for_a_file_lock(pid: int) -> bool:
    return any(line.split()[1:3] == ["->", "FLOCK"] and line.split()[5] == str(pid)
               for line in Path("/proc/locks").read_text().splitlines())


def _wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _server_after_an_erasure(tmp_path: Path) -> tuple[str, Any, Server]:
    """A server on a demo database (1,000 customers: a rewrite that takes a moment) that has erased user-7, so it
    rewrites the file when it stops; with the count of the events it keeps."""
    db = str(tmp_path / "race.duckdb")
    keys = {"PORTRAIT_WRITE_KEY": WRITE_KEY, "PORTRAIT_ADMIN_KEY": ADMIN_KEY}
    loaded = run_cli("demo", "--profiles", "1000", "--db", db, env=keys)
    assert loaded.returncode == 0, loaded.stderr
    with duckdb.connect(db, read_only=True) as before:
        kept = before.execute("SELECT count(*) FROM events WHERE user_id <> 'user-7'").fetchone()
    server = start_server(db, tmp_path / "server.log")
    with server.admin() as admin:
        erasure = admin.post("/api/privacy/requests", json={"type": "erase", "identity": "user_id:user-7"})
        assert erasure.status_code == 202, erasure.text
        assert _wait_for(lambda: admin.get(f"/api/privacy/requests/{erasure.json()['id']}").json()["status"]
                         == "done", 30)
    return db, kept, server


def test_a_second_ctrl_c_does_not_cut_the_rewrite_after_an_erasure_short(tmp_path: Path) -> None:
    """Ctrl-C pressed again while the stopping server rewrites the file interrupted the rewrite ('Query
    interrupted', exit 1, the copy and the marker left behind): it is now only answered with a line."""
    db, kept, server = _server_after_an_erasure(tmp_path)
    try:
        server.process.send_signal(signal.SIGINT)
        assert _wait_for(Path(db + ".compacting").exists, 30), server.log_path.read_text()
        for _ in range(3):
            server.process.send_signal(signal.SIGINT)
            time.sleep(0.01)
        assert server.process.wait(timeout=60) == 0, server.log_path.read_text()
    finally:
        server.stop(kill=True)
    assert "closing the database" in server.log_path.read_text()
    assert not Path(db + ".compacting").exists() and not Path(db + ".compact-pending").exists()
    with duckdb.connect(db, read_only=True) as after:
        assert after.execute("SELECT count(*) FROM events WHERE user_id <> 'user-7'").fetchone() == kept
        assert after.execute("SELECT count(*) FROM events WHERE user_id = 'user-7'").fetchone() == (0,)


@pytest.mark.parametrize("errors_into", ["the log", "a closed pipe"])
def test_a_stop_that_rewrites_the_file_after_an_erasure_says_so(tmp_path: Path, errors_into: str) -> None:
    """After an erasure the stop rewrites the database file, 10-25 s for a 440 MB one, and said nothing meanwhile:
    a server that does not end on Ctrl-C looks hung, and gets killed. It says what it is doing, and that waiting is
    safe. Saying it must not stop the closing: with its errors into a pipe whose reader is gone (`serve 2>&1 | tee`,
    both ended by Ctrl-C) the message's broken pipe ended the server mid-stop, the database not closed, the file
    not rewritten and <db>.server.json left behind."""
    reading, writing = os.pipe()
    db = tmp_path / "erased.duckdb"
    server = start_server(str(db), tmp_path / "erased.log",
                          stderr=writing if errors_into == "a closed pipe" else subprocess.STDOUT)
    os.close(writing)
    try:
        sent = httpx.post(f"{server.url}/v1/batch", auth=(WRITE_KEY, ""), json={"batch": [
            {"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com"}}]})
        assert sent.status_code == 200, sent.text
        server.wait_caught_up()
        with server.admin() as admin:
            erasure = admin.post("/api/privacy/requests", json={"type": "erase", "identity": "user_id:u1"})
            assert erasure.status_code == 202, erasure.text
            assert _wait_for(lambda: admin.get(f"/api/privacy/requests/{erasure.json()['id']}").json()["status"]
                             == "done", 30)
        os.close(reading)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log_path.read_text()
    finally:
        server.stop(kill=True)
    assert not server_file(str(db)).exists() and not Path(f"{db}.compact-pending").exists()
    if errors_into == "the log":
        said = " ".join(server.log_path.read_text().split())
        assert ("Stopping: rewriting the database file after an erasure, so that nothing of the people erased "
                "stays on disk; it is safe to wait") in said, said


def test_a_command_run_while_the_stopping_server_rewrites_the_file_cannot_empty_it(tmp_path: Path) -> None:
    """After an erasure a stopping server rewrites the file (<db>.compacting, then put in its place). A CLI command
    (or a restarted server) opening the file meanwhile rewrote it too: it deleted the server's copy and began its own
    under the same name, which the server then put in place of the database while it was still being written. The
    command interrupted there (Ctrl-C, killed) left an empty database: every event gone, new keys on the next
    start. Both processes are frozen (SIGSTOP) at those moments to make the interleaving certain."""
    db, kept, server = _server_after_an_erasure(tmp_path)
    try:
        copy = Path(db + ".compacting")
        server.process.send_signal(signal.SIGINT)
        assert _wait_for(copy.exists, 30), server.log_path.read_text()
        server.process.send_signal(signal.SIGSTOP)  # the server is writing its copy
        first_copy = _inode(copy)
        assert first_copy is not None, "the server finished its copy before it could be stopped: a larger demo"
        command = subprocess.Popen([sys.executable, "-m", "portrait", "status", "--db", db, "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**{k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")},
                                        "PORTRAIT_NO_PROGRESS": "1"})
        try:
            assert _wait_for(lambda: _inode(copy) not in (None, first_copy) or _waits_for_a_file_lock(command.pid),
                             30), command.poll()
            second_copy = _inode(copy) != first_copy
            if second_copy:  # the command writes its own copy where the server's was: frozen there
                command.send_signal(signal.SIGSTOP)
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert server.process.wait(timeout=60) == 0, server.log_path.read_text()
        if second_copy:
            command.kill()  # interrupted before it finished, as a Ctrl-C would
        out, err = command.communicate(timeout=60)
    finally:
        server.stop(kill=True)
    assert Path(db).exists()
    with duckdb.connect(db, read_only=True) as after:
        assert after.execute("SELECT count(*) FROM events WHERE user_id <> 'user-7'").fetchone() == kept
        assert after.execute("SELECT count(*) FROM events WHERE user_id = 'user-7'").fetchone() == (0,)
    assert command.returncode == 0, err  # it waited for the server's rewrite, then read the rewritten file
    assert json.loads(out)["events_received"] > 0
    assert not Path(db + ".compact-pending").exists() and not copy.exists()


KILLED_AFTER_THE_REPLACE = """
import os, sys
from portrait.store import duckdb as store

replace = os.replace
def replace_then_die(source, target):
    replace(source, target)
    os._exit(9)  # killed (or the power cut) right after the new file is in place
store.os.replace = replace_then_die
store.compact_if_marked(sys.argv[1])
"""


def test_a_crash_right_after_the_rewrite_replaced_the_file_leaves_a_database_that_opens(tmp_path: Path) -> None:
    """A server killed after an erasure leaves the write-ahead log and the request for a rewrite; the next opening
    rewrites the file. Killed between putting the new file in place and removing the old log, DuckDB replayed that
    log into the new file at the following start: every event of it twice, and a database that no longer opened
    (duplicate keys)."""
    db = str(tmp_path / "crash.duckdb")
    server = start_server(db, tmp_path / "server.log")
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        for user_id in ("ann", "bob"):
            batch = [{"type": "track", "userId": user_id, "event": "Viewed", "messageId": f"{user_id}-{i}"}
                     for i in range(100)]
            assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
    server.wait_caught_up()
    with server.admin() as admin:
        erasure = admin.post("/api/privacy/requests", json={"type": "erase", "identity": "user_id:bob"})
        assert _wait_for(lambda: admin.get(f"/api/privacy/requests/{erasure.json()['id']}").json()["status"]
                         == "done", 30)
    server.stop(kill=True)
    assert Path(db + ".wal").exists() and Path(db + ".compact-pending").exists()
    rewrite = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_REPLACE, db], capture_output=True, text=True,
                             timeout=120)
    assert rewrite.returncode == 9, rewrite.stderr
    status = run_cli("status", "--db", db, "--json", env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["profiles"] == 1
    with duckdb.connect(db, read_only=True) as after:
        assert after.execute("SELECT count(*), count(DISTINCT message_id) FROM events").fetchone() == (100, 100)


def test_server_refuses_a_database_already_served(server: Server, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="in use"):
        start_server(server.db_path, tmp_path / "second.log")


def test_serve_on_a_port_in_use_says_so_before_opening_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "never.duckdb"
        refused = run_cli("serve", "--db", str(db), "--port", str(port))
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"error: cannot listen on 127.0.0.1:{port}: another program is listening "
                                      "there: stop it or choose another port with --port or PORTRAIT_PORT "
                                      f"(make run PORT={port + 1})")  # what `make run` users type
    assert refused.stdout == "" and not db.exists()  # no database made, no keys generated and printed


def test_serve_on_port_0_listens_where_the_system_picks_and_says_where(server: Server) -> None:
    """``--port 0`` (what the tests' servers use: a port looked up as free and passed in could be taken before the
    server bound it): the server says the port it got, and notes it for the CLI."""
    port = int(server.url.rsplit(":", 1)[1])
    assert port > 0
    with httpx.Client(base_url=server.url) as anyone:
        assert anyone.get("/healthz").json()["service"] == "portrait"
    assert f" on http://127.0.0.1:{port} (ingestion: http://127.0.0.1:{port}/v1/batch" in server.log_path.read_text()
    assert json.loads(server_file(server.db_path).read_text())["url"] == f"http://127.0.0.1:{port}"


def test_a_server_on_an_ipv6_address_notes_an_address_the_cli_can_reach(tmp_path: Path) -> None:
    """``--host ::1`` was printed and noted as ``http://::1:<port>``, which is no URL: every command beside the server
    failed ("'http://::1:40595' is not a server URL: Invalid port"). An IPv6 address goes in brackets."""
    served = start_server(str(tmp_path / "v6.duckdb"), tmp_path / "v6.log", host="::1")
    try:
        port = int(served.url.rsplit(":", 1)[1])
        assert served.url == f"http://[::1]:{port}"
        assert f" on http://[::1]:{port} (ingestion: http://[::1]:{port}/v1/batch" in served.log_path.read_text()
        status = run_cli("status", "--db", served.db_path, "--json", env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
        assert status.returncode == 0, status.stderr
    finally:
        served.stop()


def test_port_0_gives_every_address_of_the_host_the_same_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that resolves to two addresses (``localhost``: 127.0.0.1 and ::1) is listened on at one port, the
    one the system picked for the first: the server has one address to print."""
    from portrait.cli.server import _listen

    two = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0)) for address in ("127.0.0.1", "127.0.0.2")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: two)
    listening = _listen("localhost", 0, "unused.duckdb")
    try:
        ports = {sock.getsockname()[1] for sock in listening}
        assert len(listening) == 2 and len(ports) == 1 and 0 not in ports
    finally:
        for sock in listening:
            sock.close()


class _TakenOnTheSecond:
    """Another program taking, on 127.0.0.2, each port the system picks for 127.0.0.1 right after it is picked (the
    first ``times`` picks): the window between the server's binds, forced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, times: int) -> None:
        self.taken: list[socket.socket] = []
        two = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0)) for address in ("127.0.0.1", "127.0.0.2")]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: two)
        real_bind = socket.socket.bind

        def bind(sock: socket.socket, address: Any) -> None:
            real_bind(sock, address)
            if address[:2] == ("127.0.0.1", 0) and len(self.taken) < times:
                other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                real_bind(other, ("127.0.0.2", sock.getsockname()[1]))
                other.listen()
                self.taken.append(other)

        monkeypatch.setattr(socket.socket, "bind", bind)

    def ports(self) -> set[int]:
        return {sock.getsockname()[1] for sock in self.taken}

    def close(self) -> None:
        for sock in self.taken:
            sock.close()


def test_port_0_picks_again_when_the_picked_port_is_taken_on_another_address(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    """--port 0 on a host of two addresses: the port the system picked for the first was taken on the second, and
    the server refused to start ("port P in use") though any port would do. It picks again."""
    from portrait.cli.server import _listen

    taken = _TakenOnTheSecond(monkeypatch, times=2)
    try:
        listening = _listen("localhost", 0, "unused.duckdb")
        ports = {sock.getsockname()[1] for sock in listening}
        assert len(listening) == 2 and len(ports) == 1 and 0 not in ports
        assert len(taken.ports()) == 2 and not ports & taken.ports()  # two picks taken, the third served
        _close_all(listening)
    finally:
        taken.close()


def test_port_0_gives_up_saying_why_after_a_few_picks_all_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    from portrait.cli.server import PORT_PICKS, _listen

    taken = _TakenOnTheSecond(monkeypatch, times=1000)
    try:
        with pytest.raises(PortraitError) as refused:
            _listen("localhost", 0, "unused.duckdb")
        assert len(taken.ports()) == PORT_PICKS
        assert refused.value.message.startswith(f"cannot listen on localhost:0: each of the {PORT_PICKS} ports the "
                                                "system picked for 127.0.0.1 was in use on 127.0.0.2")
    finally:
        taken.close()


def test_a_port_asked_for_and_in_use_is_not_picked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only port 0 is picked again: a port asked for by number is that one or none."""
    from portrait.cli.server import _listen

    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.2", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    two = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in ("127.0.0.1", "127.0.0.2")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: two)
    try:
        with pytest.raises(PortraitError, match=f"cannot listen on localhost:{port}: another program"):
            _listen("localhost", port, "unused.duckdb")
    finally:
        blocker.close()


# Loaded by a server process (PYTHONPATH): ``localhost`` resolves to two addresses, 127.0.0.1 and 127.0.0.2 (the
# machine's own resolves it to one), and the server waits, once it has bound the first port the system picked, for
# the test to take that port on the second address.
_TWO_ADDRESSES = """
import os, pathlib, socket, time

folder = pathlib.Path(os.environ["TEST_TWO_ADDRESSES"])
real_getaddrinfo, real_bind = socket.getaddrinfo, socket.socket.bind

def getaddrinfo(host, port, *args, **kwargs):
    if host == "localhost":
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("127.0.0.1", "127.0.0.2")]
    return real_getaddrinfo(host, port, *args, **kwargs)

def bind(sock, address):
    real_bind(sock, address)
    if address[:2] == ("127.0.0.1", 0) and not (folder / "picked").exists():
        (folder / "picking").write_text(str(sock.getsockname()[1]))
        (folder / "picking").rename(folder / "picked")  # whole once there
        deadline = time.monotonic() + 30
        while not (folder / "taken").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

socket.getaddrinfo, socket.socket.bind = getaddrinfo, bind
"""


def test_a_server_on_port_0_starts_on_another_port_when_another_program_takes_the_first(tmp_path: Path) -> None:
    """The real server: another program takes, on the host's second address, the port the system picked for the
    first, as the server is between its binds; the server starts on another port (it refused to start before)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_TWO_ADDRESSES)
    env = {"PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
           "TEST_TWO_ADDRESSES": str(hooks)}
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taker = threading.Thread(target=_take_the_picked_port, args=(hooks, other))
    taker.start()
    try:
        served = start_server(str(tmp_path / "two.duckdb"), tmp_path / "two.log", extra_env=env, host="localhost")
        taker.join(30)
        try:
            picked = int((hooks / "picked").read_text())
            assert other.getsockname() == ("127.0.0.2", picked)  # the other program has it
            port = int(served.url.rsplit(":", 1)[1])
            assert port != picked and served.url == f"http://localhost:{port}"
            with httpx.Client(base_url=served.url, timeout=10) as client:
                assert client.get("/healthz").status_code == 200
        finally:
            served.stop()
    finally:
        taker.join(30)
        other.close()


def _take_the_picked_port(hooks: Path, other: socket.socket) -> None:
    deadline = time.monotonic() + 30
    while not (hooks / "picked").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    other.bind(("127.0.0.2", int((hooks / "picked").read_text())))
    other.listen()
    (hooks / "taken").touch()


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def test_serve_on_a_port_a_portrait_holds_says_which_and_how_on(server: Server, tmp_path: Path) -> None:
    """A second `make run` was told "another program is listening there" when that program was Portrait. It is
    now told so: for the same database, which process serves it and how to stop it; for another database, that it
    is one (which one is for a key to ask, not said to anyone who asks /healthz) and how to take another port."""
    port = int(server.url.rsplit(":", 1)[1])
    with httpx.Client(base_url=server.url) as anyone:  # no key: it says what it is, never which database
        health = anyone.get("/healthz").json()
    assert health["service"] == "portrait" and set(health) == {"status", "service", "version"}
    pid = json.loads(server_file(server.db_path).read_text())["pid"]
    same = run_cli("serve", "--db", server.db_path, "--port", str(port))
    assert same.returncode == 1
    assert " ".join(same.stderr.split()) == (
        f"error: cannot listen on 127.0.0.1:{port}: Portrait {health['version']} already serves this database "
        f"({os.path.abspath(server.db_path)}) there, process {pid}: use it as it is (the CLI goes through it: "
        f"portrait status --db {server.db_path}), or stop it first (Ctrl-C where it runs, or kill {pid})")
    other = tmp_path / "other.duckdb"
    elsewhere = run_cli("serve", "--db", str(other), "--port", str(port))
    assert elsewhere.returncode == 1 and not other.exists()
    assert " ".join(elsewhere.stderr.split()) == (
        f"error: cannot listen on 127.0.0.1:{port}: a Portrait server ({health['version']}) is listening there, on "
        f"another database (portrait status --url http://127.0.0.1:{port} with its admin key says which): stop it "
        f"(Ctrl-C where it runs) or choose another port with --port or PORTRAIT_PORT (make run PORT={port + 1})")


def test_server_logs_hold_no_personal_data(server: Server) -> None:
    secret = f"{uuid.uuid4().hex}@example.com"
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        client.post("/v1/identify", json={"userId": "p", "traits": {"email": secret}})
        client.post("/v1/batch", content=b"{broken " + secret.encode())
    server.wait_caught_up()
    logging.shutdown()
    assert secret not in server.log_path.read_text()


def test_demo_loads_through_a_running_server(server: Server) -> None:
    loaded = run_cli("demo", "--profiles", "5", "--db", server.db_path, env={"PORTRAIT_WRITE_KEY": WRITE_KEY})
    assert loaded.returncode == 0, loaded.stderr
    status = server.wait_caught_up()
    assert status["events_received"] > 40 and status["events_rejected"] == 0
    tail = run_cli("events", "tail", "-n", "3", "--db", server.db_path, "--json",
                   env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.count('"message_id"') == 3


def test_cli_import_goes_through_a_running_server(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "crm.csv"
    source.write_text("id,mail,plan,card\n1,ann@example.com,pro,L-1\n2,,free,\n")
    mapping = tmp_path / "crm.json"  # JSON mapping files work as well as YAML ones
    mapping.write_text('{"identifiers": {"loyalty_card": "card"}, "traits": {"plan": "tier"}}')
    imported = run_cli("import", "profiles", str(source), "--mapping", str(mapping), "--user-id", "id", "--email",
                       "mail", "--db", server.db_path, env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
    assert imported.returncode == 0, imported.stderr
    assert "stored 2" in imported.stdout
    server.wait_caught_up()
    with server.admin() as admin:
        assert admin.get("/api/profiles/loyalty_card:L-1/traits").json() == {
            "tier": "pro", "email": "ann@example.com"}


def test_rejected_rows_past_the_first_100_are_said_to_be_where_they_are(server: Server, tmp_path: Path) -> None:
    """Through a server only the first 100 rejected rows come back into the rejects file. After an import the
    others are in `portrait events rejected`; after a dry run, which stores nothing, they are nowhere, and the
    note said they were listed there."""
    source = tmp_path / "orders.csv"
    source.write_text("cust,total\n" + "".join(f",{n}\n" for n in range(150)))  # no identifier: every row rejected
    args = ("import", "events", str(source), "--event", "Order Completed", "--user-id", "cust", "--db", server.db_path)
    env = {"PORTRAIT_ADMIN_KEY": ADMIN_KEY}
    dry = run_cli(*args, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert ("(the first 100 of the 150 rejected rows are in the rejects file; a dry run keeps none of them, so the "
            "others are not listed anywhere: import for real, or stop the server, to see them all)") in " ".join(
        dry.stdout.split())
    with server.admin() as admin:
        assert admin.get("/api/status").json()["events_rejected"] == 0
    real = run_cli(*args, env=env)
    assert ("(the first 100 of the 150 rejected rows are in the rejects file; all are listed by `portrait events "
            "rejected`)") in " ".join(real.stdout.split())
    with server.admin() as admin:
        assert admin.get("/api/status").json()["events_rejected"] == 150


def test_a_file_sent_to_the_server_reports_its_upload(server: Server, tmp_path: Path) -> None:
    """The CLI's progress bar through a server: the bytes sent, chunk by chunk, up to the whole file."""
    from portrait.client import RemotePortrait

    source = tmp_path / "big.ndjson"
    source.write_text("".join(f'{{"type": "track", "userId": "up-{n}", "event": "Uploaded", "messageId": "up-{n}"}}\n'
                              for n in range(30_000)))
    sent: list[int] = []
    client = RemotePortrait(server.url, admin_key=ADMIN_KEY)
    try:
        report = client.import_file(source, {"filename": source.name}, on_sent=sent.append)
    finally:
        client.close()
    assert report["stored"] == 30_000
    assert sent[-1] == source.stat().st_size and len(sent) >= 2 and sent == sorted(sent)


def test_an_import_through_a_server_shows_its_rows_and_rate(server: Server, tmp_path: Path) -> None:
    """Through a server the progress bar showed the upload, then only that the server was importing: no rows, for a
    multi-million-row file as for a small one. The server now imports as a job the CLI polls, and the bar shows the
    rows read of the rows in the file with the rate. Run on a terminal (a pty: progress is shown only there), its
    last frame shows every row read, whatever the machine's speed; and its clock runs while the server reads (it
    once stopped with the upload's, 0:00:00 through a 45 s import).

    The clock is checked against a stall the test makes, not against the server's reported time: the CLI's clock
    starts when the 202 arrives and shows whole seconds, so "at least half the server's 2.03 s" needed it to show
    0:00:02, a margin of a few hundredths of a second that a loaded box's delay of the 202 could take away (and an
    import under a second on a faster one needed 0:00:01 from a clock that had run less)."""
    source = tmp_path / "orders.csv"
    source.write_text("cust,total\n" + "".join(f"c{n},{n}\n" for n in range(100_000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    env.update(PORTRAIT_ADMIN_KEY=ADMIN_KEY, COLUMNS="150")
    leader, follower = pty.openpty()
    with subprocess.Popen([sys.executable, "-m", "portrait", "import", "events", str(source), "--event", "Order",
                           "--user-id", "cust", "--dry-run", "--db", server.db_path],
                          stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env) as importing:
        os.close(follower)
        screen = _Screen(leader)
        screen.read_until(lambda frame: " rows/s" in frame, "the import's first frame")
        # The server stops while it imports (as a loaded box can stall it): the CLI's poll waits, and its clock,
        # started before that first frame, must go on running meanwhile
        server.process.send_signal(signal.SIGSTOP)
        try:
            screen.read_until(lambda frame: " rows/s" in frame and _clock_seconds(frame) >= 3,
                              "the clock running to 0:00:03 while the server was stopped")
        finally:
            server.process.send_signal(signal.SIGCONT)
        shown = screen.read_until_closed()
        assert importing.wait(timeout=120) == 0, shown
    frames = [line for line in re.split(r"[\r\n]", shown) if " rows/s" in line]
    assert frames and "100,000 of 100,000 rows" in frames[-1], frames[-3:]
    assert _clock_seconds(frames[-1]) >= 3, frames[-1]  # not set back to the upload's when the import ended


def _clock_seconds(frame: str) -> int:
    """The seconds a frame's clock (rich's H:MM:SS) shows; -1 for a frame without one."""
    clock = re.search(r"(\d+):(\d\d):(\d\d)", frame)
    if clock is None:
        return -1
    hours, minutes, seconds = (int(part) for part in clock.groups())
    return hours * 3600 + minutes * 60 + seconds


class _Screen:
    """What a program writes to a pty, read as it comes; its text without the colours, frames split at carriage
    returns. Decoded whole each time: a chunk can end inside a character or an escape sequence."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor, self._written, self._closed = descriptor, b"", False

    @property
    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self._written.decode("utf-8", "replace"))

    def read_until(self, shown: Any, what: str, timeout: float = 60.0) -> None:
        """Read until a frame satisfies ``shown`` (failing, naming ``what``, if none does within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not any(shown(frame) for frame in re.split(r"[\r\n]", self.text)):
            assert not self._closed and time.monotonic() < deadline, f"never shown: {what}: {self.text[-2000:]}"
            if select.select([self.descriptor], [], [], max(0.0, deadline - time.monotonic()))[0]:
                self._read()

    def read_until_closed(self) -> str:
        while not self._closed:
            self._read()
        os.close(self.descriptor)
        return self.text

    def _read(self) -> None:
        try:
            chunk = os.read(self.descriptor, 65536)
        except OSError:  # EIO: the other end closed
            chunk = b""
        self._closed = not chunk
        self._written += chunk


def test_an_import_through_a_server_busy_with_another_says_it_waits_and_its_place(server: Server,
                                                                                  tmp_path: Path) -> None:
    """The server runs two imports at a time (PORTRAIT_IMPORTS_AT_ONCE): the CLI's, sent behind two others, shows
    that it waits and its place, then its rows once it runs (it crashed on the waiting job's missing report)."""
    big = tmp_path / "big.csv"
    big.write_text("cust,total\n" + "".join(f"b{n},{n}\n" for n in range(400_000)))
    source = tmp_path / "orders.csv"
    source.write_text("cust,total\n" + "".join(f"c{n},{n}\n" for n in range(1_000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    env.update(PORTRAIT_ADMIN_KEY=ADMIN_KEY, COLUMNS="150")
    with server.admin() as admin:
        blockers = [admin.post("/api/imports", params={"filename": big.name, "event": "Order", "user_id": "cust",
                                                       "dry_run": "true"},
                               content=big.read_bytes(), headers={"Prefer": "respond-async"}, timeout=60).json()
                    for _ in range(2)]
        assert [b["status"] for b in blockers] == ["running", "running"], blockers
        leader, follower = pty.openpty()
        with subprocess.Popen([sys.executable, "-m", "portrait", "import", "events", str(source), "--event",
                               "Order", "--user-id", "cust", "--dry-run", "--db", server.db_path],
                              stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env) as importing:
            os.close(follower)
            deadline = time.monotonic() + 60
            while admin.get(f"/api/imports/{blockers[0]['id']}").json()["status"] == "running":
                if "waiting for the server's other imports" in _read_some(leader) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            for blocker in blockers:
                admin.delete(f"/api/imports/{blocker['id']}")
            shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", _SEEN.pop(leader, "") + _read_until_closed(leader))
            assert importing.wait(timeout=120) == 0, shown
    assert "waiting for the server's other imports (queued, place 1: it runs next)" in shown, shown[-2000:]
    assert "1,000 of 1,000 rows" in shown, shown[-2000:]


_SEEN: dict[int, str] = {}  # what _read_some has read of a terminal, kept for the reader of the rest


def _read_some(descriptor: int) -> str:
    """What the terminal has shown so far (without the colours), without waiting for more."""
    while select.select([descriptor], [], [], 0)[0]:
        try:
            chunk = os.read(descriptor, 65536)
        except OSError:
            break
        if not chunk:
            break
        _SEEN[descriptor] = _SEEN.get(descriptor, "") + chunk.decode("utf-8", "replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", _SEEN.get(descriptor, ""))


def test_an_import_job_reports_its_progress_then_its_report(server: Server, tmp_path: Path) -> None:
    """``Prefer: respond-async``: 202 once the file is received, with the job to poll; its rows only grow, up to
    the rows in the file, and it ends with the report the synchronous import answers. Another key does not see it;
    a file the import refuses makes a failed job with the synchronous answer's status and message."""
    source = tmp_path / "orders.csv"
    source.write_text("cust,total\n" + "".join(f"j{n},{n}\n" for n in range(30_000)))
    params = {"filename": source.name, "event": "Order", "user_id": "cust", "dry_run": "true"}
    with server.admin() as admin:
        started = admin.post("/api/imports", params=params, content=source.read_bytes(),
                             headers={"Prefer": "respond-async", "Content-Type": "application/octet-stream"})
        assert started.status_code == 202, started.text
        job = started.json()
        assert started.headers["location"] == f"/api/imports/{job['id']}"
        assert job["progress"]["bytes_total"] == source.stat().st_size
        seen = [job["progress"]["rows"]]
        deadline = time.monotonic() + 120
        while job["status"] == "running" and time.monotonic() < deadline:
            job = admin.get(started.headers["location"]).json()
            seen.append(job["progress"]["rows"])
        assert job["status"] == "done", job
        assert seen == sorted(seen)
        assert job["progress"]["rows"] == job["progress"]["rows_total"] == 30_000
        synchronous = admin.post("/api/imports", params=params, content=source.read_bytes()).json()
        assert {**job["report"], "seconds": 0} == {**synchronous, "seconds": 0}
        other = admin.post("/api/keys", json={"kind": "admin", "name": "other"}).json()["key"]
        assert httpx.get(f"{server.url}{started.headers['location']}",
                         headers={"Authorization": f"Bearer {other}"}).status_code == 404
        refused = admin.post("/api/imports", params={**params, "user_id": "customer"}, content=source.read_bytes(),
                             headers={"Prefer": "respond-async"}).json()
        while refused["status"] == "running":
            refused = admin.get(f"/api/imports/{refused['id']}").json()
        plain = admin.post("/api/imports", params={**params, "user_id": "customer"}, content=source.read_bytes())
        assert refused["status"] == "failed"
        assert refused["error"] == {**plain.json(), "status": plain.status_code}


def _read_until_closed(descriptor: int) -> str:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(descriptor, 65536)
        except OSError:  # EIO: the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(descriptor)
    return b"".join(chunks).decode("utf-8", "replace")


def test_cli_export_through_a_running_server(server: Server, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        client.post("/v1/identify", json={"userId": "x1", "traits": {"plan": "pro", "email": "x1@example.com"}})
    server.wait_caught_up()
    out = tmp_path / "profiles.parquet"
    exported = run_cli("export", "profiles", "-o", str(out), "--db", server.db_path,
                       env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
    assert exported.returncode == 0, exported.stderr
    import pyarrow.parquet as pq
    rows = pq.read_table(out).to_pylist()
    assert [(r["user_id"], r["plan"]) for r in rows] == [("x1", "pro")] and "email" not in rows[0]


def test_attributes_recheck_runs_through_a_running_server(server: Server) -> None:
    with server.admin() as admin:
        created = admin.post("/api/attributes", json={"code": "shoe_size", "name": "Shoe size", "type": "integer"})
        assert created.status_code in (200, 201), created.text
        with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
            client.post("/v1/identify", json={"userId": "r1", "traits": {"shoeSize": "42 EU"}})
        server.wait_caught_up()
        assert "shoe_size" not in admin.get("/api/profiles/user_id:r1/traits").json()
        admin.patch("/api/attributes/shoe_size", json={"type": "string"}).raise_for_status()
        rechecked = run_cli("attributes", "recheck", "--db", server.db_path, env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
        assert rechecked.returncode == 0, rechecked.stderr
        assert "data-quality issues now: 0" in rechecked.stdout
        assert admin.get("/api/profiles/user_id:r1/traits").json()["shoe_size"] == "42 EU"


def test_profiles_rebuild_runs_through_a_running_server(server: Server) -> None:
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        client.post("/v1/batch", json={"batch": [
            {"type": "identify", "userId": "rb1", "traits": {"email": "rb@example.com", "plan": "pro"}},
            {"type": "track", "anonymousId": "rb-device", "event": "Viewed", "context": {"traits": {
                "email": "RB@example.com"}}}]}).raise_for_status()
    status = server.wait_caught_up()
    with server.admin() as admin:
        before = admin.get("/api/profiles/user_id:rb1").json()
        rebuilt = run_cli("profiles", "rebuild", "--db", server.db_path, env={"PORTRAIT_ADMIN_KEY": ADMIN_KEY})
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "Rebuilt 1 profiles (were 1) from 2 events" in rebuilt.stdout
        after = admin.get("/api/profiles/user_id:rb1").json()
        assert after["profile_id"] == before["profile_id"] and after["traits"] == before["traits"]
        assert admin.get("/api/status").json()["events_processed"] == status["events_processed"]
        assert any(e["action"] == "POST /api/rebuild" for e in admin.get("/api/audit").json()["entries"])


def test_privacy_requests_run_through_a_running_server(server: Server, tmp_path: Path) -> None:
    """The server answers 202 and works on the request; the CLI waits for it. An erasure marks the file for a
    rewrite, which must not stop later commands from going through the server."""
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        for user_id in ("ann", "bob"):
            client.post("/v1/track", json={"userId": user_id, "event": "Viewed", "properties": {"who": user_id}})
    server.wait_caught_up()
    admin = {"PORTRAIT_ADMIN_KEY": ADMIN_KEY}
    export = tmp_path / "ann.json"
    access = run_cli("privacy", "request", "--type", "access", "--identity", "user_id:ann", "-o", str(export),
                     "--db", server.db_path, env=admin)
    assert access.returncode == 0, access.stderr
    assert [e["properties"] for e in json.loads(export.read_text())["events"]] == [{"who": "ann"}]
    erased = run_cli("privacy", "request", "--type", "erase", "--identity", "user_id:bob", "--db", server.db_path,
                     env=admin)
    assert erased.returncode == 0, erased.stderr
    assert "done" in erased.stdout
    status = run_cli("status", "--db", server.db_path, "--json", env=admin)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["profiles"] == 1
    refused = run_cli("status", "--db", server.db_path)  # without the admin key: told to pass it, no raw error
    assert refused.returncode == 1 and "--admin-key" in refused.stderr and "Could not set lock" not in refused.stderr


def _resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def test_an_endless_body_is_refused_without_being_held(server: Server) -> None:
    """A 64 MB body (no key at all) is answered 400 body_too_large once it is past the limit, not read whole."""
    before = _resident_mb(server.process.pid)
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(1024):
            sent += 65536
            yield b"[" * 65536

    try:
        answer = httpx.post(f"{server.url}/v1/batch", content=chunks(), timeout=30)
        assert answer.status_code == 400 and answer.json()["code"] == "body_too_large", answer.text
    except httpx.TransportError:  # the server may close the connection while the client is still sending
        pass
    assert sent < 64 * 1024 * 1024  # it stopped reading long before the end
    assert _resident_mb(server.process.pid) - before < 32
    assert httpx.post(f"{server.url}/v1/track", auth=(WRITE_KEY, ""), json={"userId": "u", "event": "E"}
                      ).status_code == 200


@pytest.mark.parametrize("small_disk", ["24m"], indirect=True)  # the fixture is conftest's
def test_a_full_disk_refuses_events_with_503_and_loses_none(small_disk: Path, tmp_path: Path) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (8 << 20))  # taken back below, as an operator freeing space would
    running = start_server(str(small_disk / "p.duckdb"), tmp_path / "server.log")
    acknowledged: set[str] = set()
    refusal = None
    try:
        with httpx.Client(base_url=running.url, auth=(WRITE_KEY, ""), timeout=30) as client:
            for n in range(2000):
                batch = [{"type": "track", "userId": f"u{n}-{i}", "event": "Filled", "messageId": f"m{n}-{i}",
                          "properties": {"padding": "x" * 300}} for i in range(100)]
                answer = client.post("/v1/batch", json={"batch": batch})
                if answer.status_code != 200:
                    refusal = answer
                    break
                acknowledged.update(m["messageId"] for m in batch)
            assert refusal is not None, "the disk never filled"
            assert refusal.status_code == 503 and refusal.headers["retry-after"] == "10"
            assert refusal.json()["code"] == "storage_unavailable" and "No space left" in refusal.json()["message"]
            with running.admin() as admin:
                deadline = time.monotonic() + 20  # the processor, too, finds no room for what is still to apply
                while (status := admin.get("/api/status").json())["processing_error"] is None:
                    assert status["lag"] > 0 and time.monotonic() < deadline, status
                    time.sleep(0.2)
                assert "No space left" in status["processing_error"]
                filler.unlink()
                assert client.post("/v1/batch", json={"batch": [{"type": "track", "userId": "after", "event": "Room",
                                                                 "messageId": "after-1"}]}).status_code == 200
                status = running.wait_caught_up(timeout=60)
                deadline = time.monotonic() + 5  # the error is cleared just after the batch that succeeds commits
                while status["processing_error"] is not None and time.monotonic() < deadline:
                    time.sleep(0.05)
                    status = admin.get("/api/status").json()
                assert status["events_received"] == len(acknowledged) + 1 and status["processing_error"] is None
                assert admin.get("/api/events/rejected").json()["rejected"] == []  # none set aside for the disk
                sample = sorted(acknowledged)[-1].removeprefix("m").split("-")
                found = admin.get(f"/api/profiles/user_id:u{sample[0]}-{sample[1]}/events").json()["events"]
                assert [e["event"] for e in found] == ["Filled"]
    finally:
        running.stop()
    assert "Traceback" not in running.log_path.read_text()  # said in one line, not a stack every second


def _recorded_ip(server: Server, forwarded_for: str) -> str:
    """The context.ip of an event sent from 127.0.0.1 with X-Forwarded-For set."""
    user = f"proxied-{forwarded_for}"
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        sent = client.post("/v1/track", json={"userId": user, "event": "Via Proxy"},
                           headers={"X-Forwarded-For": forwarded_for})
        assert sent.status_code == 200
    server.wait_caught_up()
    with server.admin() as admin:
        events = admin.get(f"/api/profiles/user_id:{user}/events").json()["events"]
    return str(events[0]["context"]["ip"])


def test_the_client_address_comes_from_a_trusted_proxy_only(tmp_path: Path) -> None:
    """A proxy on the same machine (the default) gives the client's address; with no trusted proxy the header is
    ignored, so nobody can choose the address recorded for their events."""
    trusting = start_server(str(tmp_path / "a.duckdb"), tmp_path / "a.log")
    try:
        assert _recorded_ip(trusting, "203.0.113.9") == "203.0.113.9"
    finally:
        trusting.stop()
    wary = start_server(str(tmp_path / "b.duckdb"), tmp_path / "b.log", {"PORTRAIT_TRUSTED_PROXIES": ""})
    try:
        assert _recorded_ip(wary, "203.0.113.9") == "127.0.0.1"
    finally:
        wary.stop()


def test_a_body_sent_too_slowly_is_answered_408_and_its_connection_closed(tmp_path: Path) -> None:
    """uvicorn has no timeout for a request body: a client that never finished one held its connection (and its
    share of PORTRAIT_INGEST_PENDING_MB) for good, so a few hundred of them refused everyone else."""
    running = start_server(str(tmp_path / "slow.duckdb"), tmp_path / "slow.log",
                           {"PORTRAIT_BODY_TIMEOUT_SECONDS": "1"})
    try:
        host, port = running.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n{\"batch\":[")
            answer = b""
            while chunk := slow.recv(4096):  # until the server closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b'"code":"body_timeout"' in answer
    finally:
        running.stop()


def test_large_batches_plain_and_gzipped_are_read_in_the_worker_thread_and_stored(server: Server) -> None:
    """Bodies past INLINE_BODY_BYTES (once decompressed, as guessed) are read off the event loop: every event of
    them is stored and applied as for a small batch, and the loop answers /healthz meanwhile."""
    import gzip
    import secrets

    import orjson

    from portrait.api.ingest import INLINE_BODY_BYTES, _large

    def batch(tag: str) -> bytes:
        events = [{"type": "track", "userId": f"{tag}-{i % 50}", "event": "Big Batch", "messageId": f"{tag}-{i}",
                   "properties": {"note": secrets.token_hex(40)}} for i in range(1000)]
        return orjson.dumps({"batch": events})

    plain, zipped = batch("plain"), gzip.compress(batch("zipped"))
    assert _large(plain, None) and _large(zipped, "gzip") and len(zipped) < INLINE_BODY_BYTES
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=30) as client:
        assert client.post("/v1/batch", content=plain).status_code == 200
        assert client.post("/v1/batch", content=zipped, headers={"Content-Encoding": "gzip"}).status_code == 200
        assert client.get("/healthz").status_code == 200
    status = server.wait_caught_up()
    assert status["events_received"] == 2000 and status["profiles"] == 100


def test_the_readme_try_it_runs_as_written(server: Server) -> None:
    """README.md's first steps, run as a newcomer pastes them (only the address is this server's): the curl batch,
    the profile lookup, the Python SDK example."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    try_it = readme.split("## Try it", 1)[1].split("\n## ", 1)[0].replace("http://127.0.0.1:8000", server.url)
    send, look_up = re.findall(r"```sh\n(.*?)```", try_it, re.DOTALL)[1].strip().split("\n\n")
    python = re.search(r"```python\n(.*?)```", try_it, re.DOTALL)
    assert python is not None
    env = {**os.environ, "WRITE_KEY": WRITE_KEY, "ADMIN_KEY": ADMIN_KEY}
    sent = subprocess.run(["bash", "-c", send], env=env, capture_output=True, text=True, timeout=30)
    assert json.loads(sent.stdout) == {"success": True}, sent.stderr
    server.wait_caught_up()
    found = subprocess.run(["bash", "-c", look_up], env=env, capture_output=True, text=True, timeout=30)
    profile = json.loads(found.stdout)
    assert profile["traits"] == {"email": "ann@example.com", "name": "Ann"} and profile["events_count"] == 3
    ran = subprocess.run([sys.executable, "-c", python.group(1)], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    server.wait_caught_up()
    with server.admin() as admin:
        events = admin.get("/api/profiles/user_id:42/events").json()["events"]
    assert [e["event"] for e in events if e["type"] == "track"] == ["Product Viewed", "Order Completed"]


BLOCK_SIZE, HEADER_BYTES = 262_144, 3 * 4096  # DuckDB's default block size; the file header before block 0


@pytest.fixture(scope="module")
def small_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`portrait demo`'s shop with three customers, made once: each test damages a copy of its own."""
    path = tmp_path_factory.mktemp("shop") / "shop.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    made = subprocess.run([sys.executable, "-m", "portrait", "demo", "--profiles", "3", "--db", str(path)],
                          capture_output=True, text=True, env={**env, "PORTRAIT_NO_PROGRESS": "1"}, timeout=120,
                          check=False)
    assert made.returncode == 0, made.stderr
    return path


def _block_of(path: Path, table: str) -> int:
    """Where in the file the first data block of ``table`` starts."""
    with duckdb.connect(str(path), read_only=True) as db:
        blocks = db.execute("SELECT min(block_id) FROM pragma_storage_info(?) WHERE block_id >= 0", [table]).fetchall()
    return HEADER_BYTES + int(blocks[0][0]) * BLOCK_SIZE


def test_a_damaged_block_met_while_serving_is_a_clear_503_said_in_the_status_and_logged_once(
        small_shop: Path, tmp_path: Path) -> None:
    """A block of the profiles' traits damaged on disk (a bit flipped by a failing disk): the server starts, and
    the first read of that block fails DuckDB's checksum. Before: 500 internal_error, "safe to retry" (it is not:
    every retry fails the same way), the traceback logged at each request, and nothing in /api/status."""
    db = Path(shutil.copy(small_shop, tmp_path / "damaged.duckdb"))
    with db.open("r+b") as file:
        file.seek(_block_of(db, "profile_traits") + 64)
        file.write(b"garbage" * 4)
    server = start_server(str(db), tmp_path / "server.log")
    try:
        with server.admin() as admin:
            answers = [admin.get("/api/profiles/user_id:user-0/traits") for _ in range(3)]
            status = admin.get("/api/status")
    finally:
        server.stop()
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "database_damaged"
        assert answer.json()["message"].startswith("the database file is damaged (Corrupt database file: ")
        assert "restore a backup (`portrait restore`, docs/backups.md)" in answer.json()["message"]
    assert status.status_code == 200 and status.json()["database_damaged"] == answers[0].json()["message"]
    logged = server.log_path.read_text()
    assert logged.count("cannot be read: the database file is damaged") == 1, logged
    assert "internal_error" not in logged and "unexpected error" not in logged, logged


def test_a_database_file_cut_short_under_the_server_is_a_clear_503(small_shop: Path, tmp_path: Path) -> None:
    """The file truncated while the server runs (a disk or a careless `cp` over it): DuckDB's read of a block past
    the new end is an I/O error. Before: 500 internal_error."""
    db = Path(shutil.copy(small_shop, tmp_path / "cut.duckdb"))
    cut_at = _block_of(db, "identities")
    server = start_server(str(db), tmp_path / "server.log")
    try:
        os.truncate(db, cut_at)
        with server.admin() as admin:
            answer = admin.get("/api/profiles/user_id:user-0")
            status = admin.get("/api/status")
    finally:
        server.stop()
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "database_damaged"
    assert answer.json()["message"].startswith("the database file cannot be read (Could not read"), answer.text
    assert status.status_code == 200 and status.json()["database_damaged"] == answer.json()["message"]


def test_a_damaged_block_of_an_encrypted_database_is_the_same_clear_503(small_shop: Path, tmp_path: Path) -> None:
    """An encrypted database checks each block by its AES tag, not a checksum: a damaged block fails to decrypt
    ("Computed AES tag differs from read AES tag, are you using the right key?" -- the key is right: it opened the
    file and decrypts its other blocks). Before: 500 internal_error, "safe to retry", logged at each request, and
    nothing in /api/status."""
    key = "the damaged shop key"
    db = Path(shutil.copy(small_shop, tmp_path / "damaged.duckdb"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    encrypted = subprocess.run([sys.executable, "-m", "portrait", "encrypt", "--db", str(db)], capture_output=True,
                               text=True, env={**env, "PORTRAIT_ENCRYPTION_KEY": key}, timeout=120, check=False)
    assert encrypted.returncode == 0, encrypted.stderr
    with duckdb.connect() as reader:
        reader.load_extension(str(_httpfs()))
        reader.execute(f"ATTACH '{db}' AS shop (READ_ONLY, ENCRYPTION_KEY '{key}')")
        block = reader.execute("SELECT min(block_id) FROM pragma_storage_info('shop.profile_traits') "
                               "WHERE block_id >= 0").fetchall()[0][0]
    with db.open("r+b") as file:
        file.seek(HEADER_BYTES + int(block) * BLOCK_SIZE + 64)
        file.write(b"garbage" * 4)
    server = start_server(str(db), tmp_path / "server.log", {"PORTRAIT_ENCRYPTION_KEY": key})
    try:
        with server.admin() as admin:
            answers = [admin.get("/api/profiles/user_id:user-0/traits") for _ in range(2)]
            status = admin.get("/api/status")
    finally:
        server.stop()
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "database_damaged"
        assert answer.json()["message"].startswith("the database file is damaged ("), answer.text
    assert status.status_code == 200 and status.json()["database_damaged"] == answers[0].json()["message"]
    logged = server.log_path.read_text()
    assert logged.count("cannot be read: the database file is damaged") == 1, logged
    assert "internal_error" not in logged and "unexpected error" not in logged, logged


def _httpfs() -> Path:
    """DuckDB's httpfs extension, which brings the OpenSSL that encrypted files need (as Portrait loads it)."""
    import duckdb_extension_httpfs

    return sorted((Path(duckdb_extension_httpfs.__file__).parent / "extensions").glob("*/httpfs.duckdb_extension"))[-1]


def test_events_the_processor_meets_damage_with_are_not_set_aside_as_rejected(small_shop: Path, tmp_path: Path
                                                                              ) -> None:
    """The identities' block damaged: each event the processor applies reads it. The damage is not the events'
    fault (every one would fail alike, and a restore is what mends it), so processing pauses, saying why, as for a
    full disk. Before: each batch was retried one event at a time and every event set aside as rejected
    (processing_failed) and skipped -- walked past, never applied, even once the file was mended."""
    db = Path(shutil.copy(small_shop, tmp_path / "damaged.duckdb"))
    with db.open("r+b") as file:
        file.seek(_block_of(db, "identities") + 64)
        file.write(b"garbage" * 4)
    server = start_server(str(db), tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
            sent = sdk.post("/v1/batch", json={"batch": [
                {"type": "track", "userId": f"user-{n}", "event": "Came Back", "messageId": f"back-{n}"}
                for n in range(3)]})
        assert sent.status_code == 200, sent.text
        with server.admin() as admin:
            deadline = time.monotonic() + 20
            while (status := admin.get("/api/status").json())["processing_error"] is None and status["lag"]:
                assert time.monotonic() < deadline, status
                time.sleep(0.05)
            time.sleep(1.5)  # a second try, after the first pause
            rejected = admin.get("/api/events/rejected").json()["rejected"]
            status = admin.get("/api/status").json()
    finally:
        server.stop()
    assert [r for r in rejected if r.get("code") == "processing_failed"] == [], rejected
    assert status["lag"] >= 3, status
    assert status["processing_error"].startswith("the database file is damaged ("), status
    assert status["database_damaged"] == status["processing_error"], status


def test_events_refused_for_a_damaged_log_are_a_503_logged_once_not_a_traceback_each(small_shop: Path,
                                                                                      tmp_path: Path) -> None:
    """The event log's own block damaged: every append fails alike, so each request is a 503 the SDK sends again,
    and the damage is logged once by the store. Before: the writer logged 'event log append failed' with a
    traceback for every request (and retried a group's requests one by one, each failing the same way)."""
    db = Path(shutil.copy(small_shop, tmp_path / "damaged.duckdb"))
    with db.open("r+b") as file:
        file.seek(_block_of(db, "events") + 64)
        file.write(b"garbage" * 4)
    server = start_server(str(db), tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
            answers = [sdk.post("/v1/batch", json={"batch": [
                {"type": "track", "userId": f"user-{n}", "event": "Came Back", "messageId": f"back-{n}"}]})
                for n in range(3)]
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [503, 503, 503], [a.text for a in answers]
    assert {a.json()["code"] for a in answers} == {"database_damaged"}
    logged = server.log_path.read_text()
    assert logged.count("cannot be read: the database file is damaged") == 1, logged
    assert "event log append failed" not in logged and "Traceback" not in logged, logged
