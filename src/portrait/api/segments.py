"""Segments under /api/segments (and a profile's segments). Admin key required.

A segment is named in paths by its id or its name. Conditions come as their text form (a string) or JSON form (an
object) in ``condition``; answers carry both, plus the English description.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from portrait.api import paths  # noqa: F401  (registers the {identity:identity} path convertor)
from portrait.api import schemas_profiles as profile_shapes
from portrait.api import schemas_segments as shapes
from portrait.api.auth import authorizer, caller
from portrait.api.query import known_query
from portrait.api.schemas import HistoryPage, MembersPage, SizesPage, answer, page
from portrait.errors import BadRequest
from portrait.service import Portrait
from portrait.viewer import Viewer


def router(portrait: Portrait) -> APIRouter:
    api = APIRouter(prefix="/api", dependencies=[Depends(authorizer(portrait)), Depends(known_query)],
                    tags=["segments"])
    segments = portrait.segments

    @api.get("/segments", summary="Every segment with its size",
             **answer(shapes.Segments, "The segments"))
    async def listing(request: Request) -> dict[str, Any]:
        return {"segments": Viewer(portrait, caller(request)).segments(await run_in_threadpool(segments.all))}

    @api.post("/segments", status_code=201, summary="Create a dynamic (condition) or static (identities) segment",
              **answer(shapes.SavedSegment, "The segment, counted", 201))
    async def create(payload: Annotated[dict[str, Any], Body()], request: Request) -> dict[str, Any]:
        if "condition" in payload:
            await run_in_threadpool(Viewer(portrait, caller(request)).check_condition, payload["condition"])
        return Viewer(portrait, caller(request)).segment(await run_in_threadpool(portrait.create_segment, payload))

    @api.post("/segments/preview", summary="Count and sample the profiles an unsaved condition selects",
              **answer(shapes.Preview, "The count and a sample"))
    async def preview(payload: Annotated[dict[str, Any], Body()], request: Request) -> dict[str, Any]:
        if "condition" not in payload:
            raise BadRequest('send {"condition": "<text form>"} or {"condition": {<JSON form>}}',
                             code="invalid_condition")
        viewer = Viewer(portrait, caller(request))
        await run_in_threadpool(viewer.check_condition, payload["condition"])
        return await run_in_threadpool(viewer.preview, await run_in_threadpool(segments.preview, payload["condition"]))

    @api.get("/segments/{segment}", summary="One segment: condition (text, JSON, English) and size",
             **answer(shapes.Segment, "The segment"))
    async def one(segment: str, request: Request) -> dict[str, Any]:
        return Viewer(portrait, caller(request)).segment(await run_in_threadpool(segments.get, segment))

    @api.patch("/segments/{segment}", summary="Change name, description, condition or identities (recounts)",
               **answer(shapes.SavedSegment, "The segment changed"))
    async def update(segment: str, payload: Annotated[dict[str, Any], Body()], request: Request) -> dict[str, Any]:
        if "condition" in payload:
            await run_in_threadpool(Viewer(portrait, caller(request)).check_condition, payload["condition"])
        changed = await run_in_threadpool(portrait.update_segment, segment, payload)
        return Viewer(portrait, caller(request)).segment(changed)

    @api.delete("/segments/{segment}", status_code=204, summary="Delete a segment (not while others refer to it)",
                responses={204: {"description": "Deleted; no body"}})
    async def delete(segment: str) -> Response:
        await run_in_threadpool(segments.delete, segment)
        return Response(status_code=204)

    @api.post("/segments/{segment}/recount", summary="Recount the segment now, in SQL",
              **answer(shapes.Recounted, "The segment, with who entered and left"))
    async def recount(segment: str, request: Request) -> dict[str, Any]:
        return Viewer(portrait, caller(request)).segment(await run_in_threadpool(portrait.recount_segment, segment))

    @api.get("/segments/{segment}/members", summary="Members in profile-id order; pass `next` as `after`",
             **page(MembersPage))
    async def members(segment: str, request: Request, after: str = "",
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        found = await run_in_threadpool(lambda: segments.members(segment, after=after, limit=limit))
        return Viewer(portrait, caller(request)).members(found)

    @api.get("/segments/{segment}/history", summary="Entries and exits, newest first; pass `next` as `before`",
             **page(HistoryPage))
    async def history(segment: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      before: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
        return await run_in_threadpool(lambda: segments.history(segment, limit=limit, before=before))

    @api.get("/segments/{segment}/sizes", summary="The segment's size at each recount, oldest first; pass `next` "
             "as `after`", **page(SizesPage))
    async def sizes(segment: str, after: Annotated[int | None, Query(ge=0)] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> dict[str, Any]:
        return await run_in_threadpool(lambda: segments.sizes(segment, after=after, limit=limit))

    @api.get("/segments/{segment}/explain/{identity:identity_prefix}",
             summary="Which parts of the condition hold for a profile",
             **answer(shapes.DynamicExplanation | shapes.StaticExplanation,
                      "Why the profile is in the segment or not (a static segment: the second form)"))
    async def explain(segment: str, identity: str, request: Request) -> dict[str, Any]:
        found = await run_in_threadpool(portrait.explain_segment, segment, identity)
        return await run_in_threadpool(Viewer(portrait, caller(request)).explanation, found)

    @api.get("/segments/{segment}/breakdown", summary="The segment's members by the value of one attribute",
             **answer(shapes.Breakdown, "The breakdown"))
    async def breakdown(segment: str, attribute: str, request: Request,
                        top: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
        found = await run_in_threadpool(portrait.segment_breakdown, segment, attribute, top)
        return await run_in_threadpool(Viewer(portrait, caller(request)).breakdown, found)

    @api.post("/analytics/funnel", summary="Profiles reaching each step in order, within a conversion window",
              **answer(shapes.Funnel, "The funnel"))
    async def funnel(payload: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return await run_in_threadpool(portrait.funnel, payload)

    @api.get("/profiles/{identity:identity_prefix}/segments", summary="The segments a profile is in, and since when",
             **answer(profile_shapes.ProfileSegments, "The segments"))
    async def of_profile(identity: str) -> dict[str, Any]:
        return await run_in_threadpool(portrait.profile_segments, identity)

    return api
