"""Profile paths: an identifier such as ``user_id:team/42`` may hold slashes (or any other character).

Servers decode ``%2F`` before routing, so an identifier with a ``/`` reaches the router as several path segments
whichever way the client sent it. The sub-resource routes (``/profiles/{identity:identity_prefix}/events``...) take
everything before their suffix; the profile itself (``/profiles/{identity:identity}``) takes the rest of the path
unless it ends in one of those suffixes, with or without a trailing slash (``.../events/`` matches no route, so the
router redirects it to ``.../events``, as it does ``/api/status/``). So an identifier that itself ends in
``/events`` reads as that sub-resource of a shorter one (no standard identifier does). Both match newlines too
(Starlette's ``path`` does not).
"""

from __future__ import annotations

import re

from starlette.convertors import Convertor, register_url_convertor

PROFILE_SUBRESOURCES = ("traits", "identities", "events", "consent", "segments")
_SUFFIX = "|".join(PROFILE_SUBRESOURCES)


class _Text(Convertor[str]):
    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class IdentityConvertor(_Text):
    # Anything non-empty that does not end in one of the sub-resources, or one and a slash (the route regex is
    # anchored at the end).
    regex = rf"(?![\s\S]*/(?:{_SUFFIX})/?$)[\s\S]+"


class IdentityPrefixConvertor(_Text):
    regex = r"[\s\S]+"


register_url_convertor("identity", IdentityConvertor())
register_url_convertor("identity_prefix", IdentityPrefixConvertor())

# The profile part of a request path, for masking it in the audit log: up to a sub-resource or the end.
PROFILE_IN_PATH = re.compile(rf"(/profiles/)([\s\S]+?)(?=/(?:{_SUFFIX})\Z|\Z)")
