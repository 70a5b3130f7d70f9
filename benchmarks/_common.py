"""Shared helpers for the benchmark scripts: machine info, result files, starting and stopping local servers.

Every server a benchmark starts listens on 127.0.0.1 only, runs in its own process group with its output going to a
log file, and is stopped (SIGTERM, then SIGKILL after a grace period) in a ``finally`` by whoever started it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
ERROR_PATTERN = re.compile(r"Traceback|ERROR|Exception|CRITICAL", re.IGNORECASE)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPUs, CPU model, Python, DuckDB and Portrait versions, and the date."""
    import duckdb

    try:
        from portrait import __version__ as portrait_version
    except ImportError:  # pragma: no cover - benchmarks run in the project venv
        portrait_version = "unknown"
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "portrait": portrait_version,
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/NAME.json`` (machine info included) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine_info(), **data}, indent=2, default=str) + "\n")
    return path


def percentiles(values: list[float], points: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles plus max and mean; empty input gives an empty dict."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {}
    for p in points:
        rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
        out[f"p{p:g}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    out["mean"] = sum(ordered) / len(ordered)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A server process we started, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_problems(self, limit: int = 40) -> list[str]:
        """Lines of the server's output that look like errors (tracebacks, ERROR logs)."""
        lines = self.log_text().splitlines()
        return [line for line in lines if ERROR_PATTERN.search(line)][:limit]


def start_server(name: str, args: list[str], url: str, log_path: Path, env: dict[str, str] | None = None,
                 ready_path: str | None = None, timeout: float = 30.0) -> Server:
    """Start ``args`` in its own process group and wait until it answers: ``GET url + ready_path`` (any HTTP
    status) or, without a ready_path, a TCP connection to the URL's port."""
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
    finally:
        log_file.close()
    server = Server(name, process, url, log_path)
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=2.0) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {process.returncode} before answering:\n"
                                       f"{server.log_text()[-2000:]}")
                if _answers(client, url, ready_path):
                    return server
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer on {url} within {timeout:.0f} s")
                time.sleep(0.1)
    except BaseException:
        stop_server(server)
        raise


def _answers(client: httpx.Client, url: str, ready_path: str | None) -> bool:
    try:
        if ready_path is None:
            parsed = httpx.URL(url)
            with socket.create_connection((parsed.host, parsed.port or 80), timeout=1.0):
                return True
        client.get(url + ready_path)
        return True
    except (httpx.TransportError, OSError):
        return False


def stop_server(server: Server, grace: float = 30.0) -> int | None:
    """SIGTERM the server's process group, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
    process = server.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return process.returncode


def portrait_server_args(db_path: Path, port: int) -> list[str]:
    return [str(VENV_BIN / "portrait"), "serve", "--db", str(db_path), "--host", "127.0.0.1", "--port", str(port)]


def portrait_env(write_key: str, admin_key: str) -> dict[str, str]:
    return {"PORTRAIT_WRITE_KEY": write_key, "PORTRAIT_ADMIN_KEY": admin_key, "PORTRAIT_NO_PROGRESS": "1"}


def wait_for_drain(url: str, admin_key: str, timeout: float, interval: float = 0.05) -> tuple[dict[str, Any], float]:
    """Poll /api/status until lag == 0 (or ``timeout`` s); returns the last status and the seconds it took."""
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {admin_key}"}
    status: dict[str, Any] = {}
    with httpx.Client(timeout=30.0, headers=headers) as client:
        while True:
            response = client.get(f"{url}/api/status")
            response.raise_for_status()
            status = response.json()
            elapsed = time.monotonic() - start
            if status["lag"] == 0 or elapsed > timeout:
                return status, elapsed
            time.sleep(interval)


def get_status(url: str, admin_key: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/status", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30.0)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result
