"""RFC 7240's ``Prefer: respond-async``: long work answered 202 with a job to poll, instead of an open request.

Long work -- an import, a backup -- answers once done by default, as it always has, so a script that waits for the
answer and then uses the result goes on working. A client that sends the preference gets ``202 Accepted`` at once,
with the job and its ``Location``, and polls it for progress: the CLI and the console do, and any client that would
otherwise wait longer than its timeout (a multi-GB backup under traffic took minutes) should.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

ASYNC = "respond-async"


def prefers_async(request: Request) -> bool:
    """Whether the request asked for a job to poll (``Prefer: respond-async``, among other preferences or not)."""
    wanted = (part.split(";")[0].strip().lower() for part in request.headers.get("prefer", "").split(","))
    return ASYNC in wanted


def job_accepted(job: dict[str, Any], location: str) -> JSONResponse:
    """The 202 that starts a job: where to poll it, and that the preference was honoured."""
    return JSONResponse(job, status_code=202, headers={"Location": location, "Preference-Applied": ASYNC})
