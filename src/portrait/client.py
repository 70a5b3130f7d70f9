"""A small HTTP client for a running Portrait server, with the same read methods as the service.

The CLI uses it when the embedded database is held by a running server (DuckDB allows one read-write process).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from portrait.errors import BadRequest, Conflict, Forbidden, NotFound, PortraitError, ServerUnreachable, Unauthorized


def server_file(db_path: str) -> Path:
    """Where ``portrait serve`` records its address next to the database, so the CLI can find it."""
    return Path(f"{db_path}.server.json")


def write_server_file(db_path: str, url: str) -> None:
    path = server_file(db_path)
    try:
        path.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    except OSError as exc:
        raise PortraitError(f"cannot write {path}: {exc.strerror or exc} (the server notes its address beside the "
                            "database for the CLI, and DuckDB its write-ahead log: that folder must be writable)",
                            code="folder_not_writable") from exc


def remove_server_file(db_path: str) -> None:
    """Remove ``<db>.server.json`` if this process wrote it. Another's is left: a server started on the database
    as this one stopped (the database's lock is released before the note goes) has written its own there."""
    path = server_file(db_path)
    try:
        noted = json.loads(path.read_text())
    except (OSError, ValueError):  # gone already, or not a note of ours to read
        return
    if isinstance(noted, dict) and noted.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def running_server_url(db_path: str) -> str | None:
    try:
        info = json.loads(server_file(db_path).read_text())
    except (OSError, ValueError):
        return None
    url = info.get("url")
    return url if isinstance(url, str) else None


def server_answers(url: str) -> bool:
    """Whether a Portrait server answers its health check at ``url`` (a ``<db>.server.json`` a killed server left
    names a server that does not)."""
    try:
        return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def portrait_version_at(url: str) -> str | None:
    """The version of the Portrait server answering at ``url``, or None when what answers is not one (or nothing
    does). /healthz says so without a key; a server from before it did is known by its API document, public too."""
    try:
        health = httpx.get(f"{url}/healthz", timeout=2.0).json()
        if isinstance(health, dict) and health.get("service") == "portrait":
            return str(health.get("version", "?"))
        info = httpx.get(f"{url}/openapi.json", timeout=5.0).json().get("info", {})
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return str(info.get("version", "?")) if isinstance(info, dict) and info.get("title") == "Portrait" else None


def server_process(db_path: str) -> int | None:
    """The process id ``<db>.server.json`` names, when that process is alive."""
    try:
        pid = json.loads(server_file(db_path).read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and process_alive(pid) else None


def process_alive(pid: int) -> bool:
    """Whether a process of that id runs on this machine (another user's counts: it is not ours to signal)."""
    if pid <= 0:  # kill() takes these for a process group (all processes for -1), which it then finds alive
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError):  # no such process (ProcessLookupError), or no such id at all
        return False
    return True


def profile_path(reference: str, *parts: str) -> str:
    """``/api/profiles/<reference>[/part...]`` with the reference percent-encoded: an identifier may hold ``#``,
    ``?``, ``%`` or ``/``, which would otherwise end or split the path."""
    return "/".join(("/api/profiles", quote(reference, safe=":@"), *parts))


class _Http(httpx.Client):
    """An httpx client whose failures to talk to the server are PortraitErrors (the CLI prints them plainly)."""

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        try:
            return super().send(request, **kwargs)
        except httpx.TransportError as exc:
            raise transport_problem(str(self.base_url), exc) from exc


def transport_problem(url: str, exc: httpx.TransportError) -> ServerUnreachable:
    """What went wrong talking to the server at ``url``, said so that the user knows whether it got the request."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return ServerUnreachable(f"the Portrait server at {url} did not answer in time ({detail}); it may still "
                                 "finish what was asked")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ServerUnreachable(f"the Portrait server at {url} broke off its answer ({detail}); it may have "
                                 "stopped")
    return ServerUnreachable(f"cannot reach the Portrait server at {url}: {detail}")


class RemotePortrait:
    """Reads and ingestion over HTTP."""

    def __init__(self, url: str, *, admin_key: str | None = None, write_key: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._admin = admin_key
        self._write = write_key
        try:
            self._http = _Http(base_url=self.url, timeout=timeout)
        except httpx.InvalidURL as exc:
            raise ServerUnreachable(f"{url!r} is not a server URL: {exc}") from exc

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        if not self._admin:
            raise Unauthorized("an admin key is needed to read from the server: set PORTRAIT_ADMIN_KEY or --admin-key")
        response = self._http.get(path, params={k: v for k, v in (params or {}).items() if v is not None},
                                  headers={"Authorization": f"Bearer {self._admin}"})
        return _checked(response)

    def status(self) -> dict[str, Any]:
        return dict(self._get("/api/status"))

    def profile(self, reference: str) -> dict[str, Any]:
        return dict(self._get(profile_path(reference)))

    def events(self, reference: str, *, event: str | None = None, cursor: str | None = None,
               limit: int = 50) -> dict[str, Any]:
        return dict(self._get(profile_path(reference, "events"), {"event": event, "cursor": cursor,
                                                                    "limit": limit}))

    def rejected(self, *, limit: int = 100, before_id: int | None = None, code: str | None = None) -> dict[str, Any]:
        return dict(self._get("/api/events/rejected", {"limit": limit, "before": before_id, "code": code}))

    def recent_events(self, after_seq: int, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._get("/api/events/recent", {"after": after_seq, "limit": limit})["events"])

    def data_quality(self, *, limit: int = 100, attribute: str | None = None) -> dict[str, Any]:
        return dict(self._get("/api/data-quality", {"limit": limit, "attribute": attribute}))

    def attributes_list(self, standard: bool | None = None) -> list[dict[str, Any]]:
        return list(self._get("/api/attributes", {"standard": standard})["attributes"])

    def attribute(self, code: str) -> dict[str, Any]:
        return dict(self._get(f"/api/attributes/{code}"))

    def attribute_analytics(self, code: str) -> dict[str, Any]:
        return dict(self._get(f"/api/attributes/{code}/analytics"))

    def attribute_create(self, fields: dict[str, Any]) -> dict[str, Any]:
        return dict(self._send("POST", "/api/attributes", fields))

    def attribute_update(self, code: str, changes: dict[str, Any]) -> dict[str, Any]:
        return dict(self._send("PATCH", f"/api/attributes/{code}", changes))

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """Any admin GET (the CLI's generic remote path)."""
        return self._get(path, params)

    def send_json(self, method: str, path: str, body: dict[str, Any], *, as_job: bool = False) -> Any:
        """``as_job``: ask for long work as a job to poll (``Prefer: respond-async``, see portrait.api.prefer)."""
        return self._send(method, path, body, timeout=None, headers={"Prefer": "respond-async"} if as_job else None)

    # -- SQL sources (the same names as on Portrait and its SourceRegistry) --
    def sources_all(self) -> list[dict[str, Any]]:
        return list(self._get("/api/sources")["sources"])

    def source_state(self, name: str) -> dict[str, Any]:
        return dict(self._get(f"/api/sources/{quote(name, safe='')}"))

    def add_source(self, fields: dict[str, Any], *, check: bool = True) -> dict[str, Any]:
        return dict(self._send("POST", f"/api/sources?check={str(check).lower()}", fields, timeout=60.0))

    def remove_source(self, name: str) -> None:
        self._send("DELETE", f"/api/sources/{quote(name, safe='')}", {})

    def sync_source(self, name: str, *, full: bool = False) -> dict[str, Any]:
        path = f"/api/sources/{quote(name, safe='')}/sync?full={str(full).lower()}"
        return dict(self._send("POST", path, {}, timeout=None))

    def rebuild_profiles(self) -> dict[str, int]:
        return dict(self._send("POST", "/api/rebuild", {}, timeout=None))

    def rebuild_traits(self) -> dict[str, int]:
        return dict(self._send("POST", "/api/attributes/recheck", {}, timeout=None))

    def _send(self, method: str, path: str, body: dict[str, Any], *, timeout: float | None = 30.0,
              headers: dict[str, str] | None = None) -> Any:
        if not self._admin:
            raise Unauthorized("an admin key is needed: set PORTRAIT_ADMIN_KEY or --admin-key")
        response = self._http.request(method, path, json=body, timeout=timeout,
                                      headers={"Authorization": f"Bearer {self._admin}", **(headers or {})})
        return _checked(response)

    def export_profiles(self, output: Path, file_format: str, attributes: list[str] | None,
                        include_personal: bool, segment: str | None = None, purpose: str | None = None,
                        ignore_consent: bool = False, *,
                        on_progress: Callable[[dict[str, Any]], None] = lambda job: None,
                        on_downloaded: Callable[[int, int | None], None] = lambda done, total: None,
                        poll_seconds: float = 0.25) -> dict[str, Any]:
        """Export as a job of the server's (POST /api/exports, telling ``on_progress`` the job as it runs), download
        its file into ``output`` (telling ``on_downloaded`` the bytes so far, of the file's size), then remove the job
        and its file from the server; returns the report. Interrupted (Ctrl-C) or failed on the way, the server's
        job is cancelled (or removed) too.

        A server from before export jobs (no POST /api/exports) streams GET /api/exports/profiles instead."""
        if not self._admin:
            raise Unauthorized("an admin key is needed to export through the server: set PORTRAIT_ADMIN_KEY")
        auth = {"Authorization": f"Bearer {self._admin}"}
        body = {"format": file_format, "include_personal": include_personal, "attributes": attributes,
                "segment": segment, "purpose": purpose, "ignore_consent": ignore_consent}
        response = self._http.post("/api/exports", json={k: v for k, v in body.items() if v}, timeout=None,
                                   headers={**auth, "Prefer": "respond-async"})
        if response.status_code in (404, 405) and _error_code(response) in ("not_found", "method_not_allowed", None):
            return self._export_in_the_request(output, body, auth, on_downloaded)
        job = dict(_checked(response))
        try:
            while job["status"] in ("queued", "running"):  # queued: the server runs a few at a time
                on_progress(job)
                time.sleep(poll_seconds)
                job = dict(_checked(self._http.get(f"/api/exports/{job['id']}", headers=auth)))
            on_progress(job)
            if job["status"] == "failed":
                error = job["error"]
                raise _ERRORS.get(error["status"], PortraitError)(error["message"], code=error["code"])
            with self._http.stream("GET", f"/api/exports/{job['id']}/file", headers=auth, timeout=None) as answer:
                return self._downloaded(answer, output, on_downloaded)
        finally:  # running: cancelled; ended: its file is not left on the server for an hour
            with contextlib.suppress(PortraitError):
                self._http.delete(f"/api/exports/{job['id']}", headers=auth, timeout=10.0)

    def _export_in_the_request(self, output: Path, body: dict[str, Any], auth: dict[str, str],
                               on_downloaded: Callable[[int, int | None], None]) -> dict[str, Any]:
        """GET /api/exports/profiles streamed into ``output`` (a server from before export jobs)."""
        params = {**body, "attributes": ",".join(body["attributes"]) if body["attributes"] else None}
        with self._http.stream("GET", "/api/exports/profiles", params={k: v for k, v in params.items() if v},
                               headers=auth, timeout=None) as response:
            return self._downloaded(response, output, on_downloaded)

    def _downloaded(self, response: httpx.Response, output: Path,
                    on_downloaded: Callable[[int, int | None], None]) -> dict[str, Any]:
        """An export's file answer written into ``output``; its report (the X-Portrait-Export header)."""
        if response.status_code != 200:
            response.read()
            _checked(response)
        size = response.headers.get("content-length")
        total = int(size) if size and size.isdigit() else None
        done = 0
        with output.open("wb") as handle:
            try:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
                    done += len(chunk)
                    on_downloaded(done, total)
            except httpx.TransportError as exc:
                raise transport_problem(self.url, exc) from exc
        return dict(json.loads(response.headers["x-portrait-export"]))

    def import_file(self, path: Path, params: dict[str, Any],
                    on_sent: Callable[[int], None] = lambda sent: None,
                    on_progress: Callable[[dict[str, Any]], None] = lambda progress: None,
                    poll_seconds: float = 0.25) -> dict[str, Any]:
        """POST a file to /api/imports (streamed, telling ``on_sent`` the bytes sent so far) as an import job, poll
        it (telling ``on_progress`` the job's progress: rows, rows_total, bytes_read, bytes_total, and its
        queue_place while it waits for the server's other imports) until it ends,
        and return the server's report. Interrupted (Ctrl-C), the job is asked to stop after its chunk.

        A server from before import jobs ignores ``Prefer: respond-async`` and answers with the report itself."""
        if not self._admin:
            raise Unauthorized("an admin key is needed to import through the server: set PORTRAIT_ADMIN_KEY or "
                               "--admin-key")
        auth = {"Authorization": f"Bearer {self._admin}"}

        def chunks(handle: BinaryIO) -> Iterator[bytes]:
            sent = 0
            while chunk := handle.read(1 << 20):
                yield chunk
                sent += len(chunk)
                on_sent(sent)

        with path.open("rb") as handle:
            response = self._http.post("/api/imports", content=chunks(handle), timeout=None,
                                       params={k: v for k, v in params.items() if v is not None},
                                       headers={**auth, "Content-Type": "application/octet-stream",
                                                "Prefer": "respond-async"})
        if response.status_code != 202:
            return dict(_checked(response))
        job = dict(response.json())
        try:
            while job["status"] in ("queued", "running"):
                on_progress({**job["progress"], "queue_place": job.get("queue_place")})
                time.sleep(poll_seconds)
                job = dict(_checked(self._http.get(f"/api/imports/{job['id']}", headers=auth)))
        except BaseException:
            if job["status"] in ("queued", "running"):  # the user stopped the command: the server's import too
                self._http.delete(f"/api/imports/{job['id']}", headers=auth)
            raise
        on_progress({**job["progress"], "queue_place": None})
        if job["status"] == "failed":
            error = job["error"]
            raise _ERRORS.get(error["status"], PortraitError)(error["message"], code=error["code"])
        return dict(job["report"])

    def send_batch(self, messages: list[dict[str, Any]]) -> None:
        if not self._write:
            raise Unauthorized("a write key is needed to send events: set PORTRAIT_WRITE_KEY or --write-key")
        response = self._http.post("/v1/batch", json={"batch": messages, "writeKey": self._write})
        _checked(response)


def _error_code(response: httpx.Response) -> str | None:
    """The ``code`` of an error answer, when it is Portrait's own."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def _checked(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    if response.status_code in (200, 201, 202):  # 202: accepted and queued (privacy requests), to be polled
        return response.json()
    error = _ERRORS.get(response.status_code, PortraitError)
    try:  # Portrait's own error: its message, worded as the same command says it without a server
        body = response.json()
        message, code = str(body["message"]), str(body["code"])
    except (ValueError, KeyError, TypeError):  # something else answered (a proxy, another program)
        raise error(f"server answered {response.status_code}: {response.text[:500]}") from None
    raise error(message, code=code)


_ERRORS: dict[int, type[PortraitError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                           409: Conflict}
