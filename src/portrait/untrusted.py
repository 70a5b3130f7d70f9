"""Text that senders chose (names, identifiers, event names, property keys and values), as people are shown it.

Some characters do not show but change what is shown: C0 and C1 controls (an ESC sequence clears or retitles a
terminal; HTML drops a NUL, so "twin" + NUL reads as another customer's "twin"), bidirectional overrides and
isolates (U+202E turns the text after it around: "gpj.exe" reads "exe.jpg"), zero-width characters, the soft
hyphen, line and paragraph separators and the byte-order mark. Wherever such text is shown inline (the console's
pages, the command line) they are written as their code point, ``U+202E``, rather than obeyed.
"""

from __future__ import annotations

import codecs
import re

# What JSON leaves as it is among them (it escapes C0 controls itself).
INVISIBLE_IN_JSON = re.compile("[\u0080-\u009f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
# In plain text: those, C0 controls but for tab and line feed, and DEL.
INVISIBLE = re.compile("[\u0000-\u0008\u000b-\u001f\u007f" + INVISIBLE_IN_JSON.pattern[1:])


def code_point(character: str) -> str:
    return f"U+{ord(character):04X}"


def with_code_points(text: str) -> str:
    """``text`` with each invisible character written as its code point (``Ann U+202E``)."""
    return INVISIBLE.sub(lambda found: code_point(found.group()), text)


# The error handler that writes what an encoding cannot hold as JSON's escapes (``Zo\u00eb``): a terminal that is
# not UTF-8 then shows a readable name, and ``--json`` output stays valid JSON.
UNICODE_ESCAPES = "portrait-unicode-escape"


def _unicode_escapes(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    units = error.object[error.start:error.end].encode("utf-16-be")  # above U+FFFF: two units, a surrogate pair
    escaped = "".join(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2))
    return escaped, error.end


codecs.register_error(UNICODE_ESCAPES, _unicode_escapes)


def encodable(text: str, encoding: str) -> str:
    """``text`` as a terminal of ``encoding`` can show it: each character it has no byte for escaped."""
    return text.encode(encoding, errors=UNICODE_ESCAPES).decode(encoding)
