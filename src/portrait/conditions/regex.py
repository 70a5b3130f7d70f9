"""Regular expressions both engines read the same way: the SQL engine matches with the database's RE2, the Python
engine with ``re`` (in ASCII mode, so ``\\d``, ``\\w`` and ``\\b`` mean what they mean in RE2).

:func:`unportable` names what the two would read differently, or what RE2 refuses (a saved condition RE2 refuses
failed every recount of its segment); :func:`compile_portable` compiles a checked pattern for the Python engine
with RE2's meaning of ``$``.
"""

from __future__ import annotations

import re

_FLAGS = set("ims")  # inline flags both have (RE2 also has U, which re refuses)
_GROUPS = {"=": "lookarounds", "!": "lookarounds", "<": "lookarounds", ">": "atomic groups", "#": "comments",
           "(": "conditionals"}
_ESCAPES = {"N": "\\N{...}", "u": "\\u", "U": "\\U", "Z": "\\Z"}
MAX_REPEAT = 1000  # RE2 refuses counted repetitions above this
_COUNT = re.compile(r"\{(\d*)(,?)(\d*)\}")


def unportable(pattern: str) -> str | None:
    """What in ``pattern`` the engines would not read alike (a short description), or None."""
    return _scan(pattern)[0]


def compile_portable(pattern: str) -> re.Pattern[str]:
    """The checked ``pattern`` for the Python engine. Without the ``m`` flag, ``$`` in RE2 is the end of the text
    only, while in ``re`` it also matches before a final newline: it is written ``\\Z`` (which ``re`` reads as
    RE2 reads ``$``), so ``"abc\\n"`` does not match ``c$`` in either engine."""
    problem, dollars = _scan(pattern)
    assert problem is None, problem
    text = pattern
    for position in reversed(dollars):
        text = text[:position] + "\\Z" + text[position + 1:]
    return re.compile(text, re.ASCII)


def _scan(pattern: str) -> tuple[str | None, list[int]]:
    """The first unportable construct (or None) and where ``$`` stands for the end of the text."""
    dollars: list[int] = []
    multiline = False
    i, n = 0, len(pattern)
    after_atom = False  # a quantifier may follow
    while i < n:
        char = pattern[i]
        if char == "\\":
            escaped = pattern[i + 1:i + 2]
            if escaped in _ESCAPES:
                return f"{_ESCAPES[escaped]}, which RE2 does not have", []
            if escaped in "123456789" and escaped:
                return "back-references", []
            i, after_atom = i + 2, True
        elif char == "[":
            end, problem = _class_end(pattern, i)
            if problem:
                return problem, []
            i, after_atom = end, True
        elif char == "(" and pattern[i + 1:i + 2] == "?":
            problem, flags = _group(pattern, i + 2)
            if problem:
                return problem, []
            multiline |= "m" in flags
            i, after_atom = i + 2, False
        elif char in "*+?{":
            end, problem = _quantifier(pattern, i, after_atom)
            if problem:
                return problem, []
            i, after_atom = end, False
        else:
            if char == "$":
                dollars.append(i)
            i, after_atom = i + 1, char not in "(|^$"
    return None, [] if multiline else dollars


def _group(pattern: str, start: int) -> tuple[str | None, str]:
    """``(?`` at ``start - 2``: a problem, or the inline flags it sets."""
    head = pattern[start:start + 1]
    if pattern.startswith("P<", start) or head == ":":
        return None, ""
    if pattern.startswith("P=", start):
        return "back-references", ""
    if head in _GROUPS:
        return f"{_GROUPS[head]}, which RE2 does not have", ""
    flags = re.match(r"[A-Za-z]*(?:-[A-Za-z]*)?", pattern[start:])
    letters = flags.group(0).replace("-", "") if flags else ""
    unknown = set(letters) - _FLAGS
    if unknown:
        return f"the flag {''.join(sorted(unknown))!r} (RE2 has i, m and s)", ""
    if "i" in letters and not pattern.isascii():
        return ("the flag i with letters beyond ASCII (the engines fold their case differently: write both cases, "
                "e.g. [łŁ])"), ""
    return None, letters


def _class_end(pattern: str, start: int) -> tuple[int, str | None]:
    """The index after the character class opened at ``start``, or a problem inside it."""
    i = start + 1
    if pattern[i:i + 1] == "^":
        i += 1
    if pattern[i:i + 1] == "]":
        i += 1  # a leading ] is itself
    while i < len(pattern) and pattern[i] != "]":
        if pattern[i] == "\\":
            escaped = pattern[i + 1:i + 2]
            if escaped in _ESCAPES:
                return i, f"{_ESCAPES[escaped]}, which RE2 does not have"
            i += 2
            continue
        if pattern[i] == "[":
            return i, "'[' inside [...]: RE2 reads [:alpha:] there as a class of letters, re as characters (write \\[)"
        i += 1
    return i + 1, None


def _quantifier(pattern: str, start: int, after_atom: bool) -> tuple[int, str | None]:
    """The index after the quantifier at ``start`` (and a lazy ``?``), or a problem with it."""
    end = start + 1
    if pattern[start] == "{":
        count = _COUNT.match(pattern, start)
        if count is None:
            return end, None  # a literal {
        low, comma, high = count.groups()
        if not low and comma:
            return end, "{,n}: re reads it as {0,n}, RE2 as the text itself (write {0,n})"
        if not low:
            return end, None
        if max(int(low), int(high or 0)) > MAX_REPEAT:
            return end, f"a repetition count above {MAX_REPEAT}, which RE2 refuses"
        end = count.end()
    if not after_atom:
        return end, None  # re refuses a quantifier with nothing before it when the pattern is compiled
    if pattern[end:end + 1] == "+":
        return end, "possessive quantifiers (*+, ++, ?+), which RE2 does not have"
    return end + (pattern[end:end + 1] == "?"), None
