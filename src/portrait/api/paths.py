"""Profile paths: an identifier such as ``user_id:team/42`` may hold slashes.

Servers decode ``%2F`` before routing, so an identifier with a ``/`` reaches the router as several path segments
whichever way the client sent it. The sub-resource routes (``/profiles/{identity:path}/events``...) take everything
before their suffix; the profile itself (``/profiles/{identity:identity}``) takes the rest of the path unless it ends
in one of those suffixes. So an identifier that itself ends in ``/events`` reads as that sub-resource of a shorter
one (no standard identifier does).
"""

from __future__ import annotations

import re

from starlette.convertors import Convertor, register_url_convertor

PROFILE_SUBRESOURCES = ("traits", "identities", "events", "consent", "segments")
_SUFFIX = "|".join(PROFILE_SUBRESOURCES)


class IdentityConvertor(Convertor[str]):
    # Anything non-empty that does not end in one of the sub-resources (the route regex is anchored at the end).
    regex = rf"(?!.*/(?:{_SUFFIX})$).+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("identity", IdentityConvertor())

# The profile part of a request path, for masking it in the audit log: up to a sub-resource or the end.
PROFILE_IN_PATH = re.compile(rf"(/profiles/)(.+?)(?=/(?:{_SUFFIX})$|$)")
