"""Statements for analytics: funnels and segment breakdowns."""

from __future__ import annotations

from sqlglot import exp

from portrait.sql import parse
from portrait.sql.attributes import numbers


def funnel(steps: int, *, segment: bool) -> exp.Expr:
    """Profiles reaching each step, in order, within the window from their first step.

    Params: $s0..$s{n-1} (event names), $start, $end (first step between them), $window (an interval), and $segment
    when ``segment``. Each profile enters at its first step-1 event in the range; step k is its first step-k event
    after step k-1's and no later than the window allows from the entry. Events are ordered by time, then log order
    (seq): one event fills one step, so a repeated step ("Product Viewed" twice) needs two events.
    """
    first = "min(ep.timestamp) AS t, arg_min(ep.seq, (ep.timestamp, ep.seq)) AS seq"
    ctes = [
        f"f0 AS (SELECT ep.profile_id, min(ep.timestamp) AS entered, {first} FROM event_profiles AS ep "
        "WHERE ep.event = $s0 AND ep.timestamp >= $start AND ep.timestamp < $end"
        + (" AND ep.profile_id IN (SELECT m.profile_id FROM segment_members AS m WHERE m.segment_id = $segment)"
           if segment else "")
        + " GROUP BY ep.profile_id)"
    ]
    for k in range(1, steps):
        ctes.append(
            f"f{k} AS (SELECT p.profile_id, p.entered, {first} FROM f{k - 1} AS p "
            f"JOIN event_profiles AS ep ON ep.profile_id = p.profile_id AND ep.event = $s{k} "
            f"AND (ep.timestamp > p.t OR (ep.timestamp = p.t AND ep.seq > p.seq)) "
            f"AND ep.timestamp <= p.entered + $window GROUP BY p.profile_id, p.entered)")
    counts = " UNION ALL ".join(f"SELECT {k} AS step, count(*) AS profiles FROM f{k}" for k in range(steps))
    return parse(f"WITH {', '.join(ctes)} {counts} ORDER BY step")


# Params: segment id, attribute code, how many values. A segment's members by the value of one attribute.
BREAKDOWN = parse("""
SELECT CAST(t.value AS VARCHAR) AS value, count(*) AS profiles
FROM segment_members AS m JOIN profile_traits AS t ON t.profile_id = m.profile_id AND t.key = ?
WHERE m.segment_id = ? AND t.value IS NOT NULL
GROUP BY 1 ORDER BY profiles DESC, value LIMIT ?
""")
# The same for a number attribute: 10 and 10.0 are one value, as in attribute analytics. Params as BREAKDOWN.
_MEMBER_VALUES = """
SELECT CAST(t.value AS VARCHAR) AS v
FROM segment_members AS m JOIN profile_traits AS t ON t.profile_id = m.profile_id AND t.key = ?
WHERE m.segment_id = ? AND t.value IS NOT NULL
"""
BREAKDOWN_NUMBERS = parse(f"SELECT x, whole, count(*) AS profiles FROM ({numbers(_MEMBER_VALUES)}) "
                          "GROUP BY x, whole ORDER BY profiles DESC, x, whole LIMIT ?")
SEGMENT_SIZE = parse("SELECT count(*) FROM segment_members WHERE segment_id = ?")
# Params: attribute code, segment id. Members with a value of the attribute.
WITH_VALUE = parse("""
SELECT count(*) FROM segment_members AS m JOIN profile_traits AS t ON t.profile_id = m.profile_id AND t.key = ?
WHERE m.segment_id = ? AND t.value IS NOT NULL
""")

# Params: a list of event names. Those of them some event has had (a track's event, a page's or screen's name).
SEEN_EVENT_NAMES = parse("SELECT DISTINCT event FROM event_profiles WHERE list_contains(CAST(? AS VARCHAR[]), event)")
# Of those names, the ones only events not yet processed (past the processor's watermark) have had: received, so
# not unknown, but not counted yet. The log's tail past the watermark is what the lag is: small when caught up.
RECEIVED_UNPROCESSED_EVENT_NAMES = parse("""
SELECT DISTINCT event FROM events
WHERE seq > (SELECT value FROM processor_state WHERE name = 'watermark')
  AND list_contains(CAST(? AS VARCHAR[]), event)
""")
# Every event name with how many events had it, the most frequent first: what a mistyped name is compared with.
KNOWN_EVENT_NAMES = parse("""
SELECT event, count(*) AS n FROM event_profiles WHERE event IS NOT NULL GROUP BY event ORDER BY n DESC, event
LIMIT 1000
""")

# Params: an attribute code, lowered texts. The code's text values equal to one of the texts but for case (lower()
# as the conditions' own), with the profiles holding each: what a condition's exact value missed. (One code a
# query: `key = ?` reads the column about twice as fast as list_contains over several.)
TEXT_VALUES_IGNORING_CASE = parse("""
SELECT text, count(*) AS n
FROM (SELECT json_extract_string(value, '$') AS text FROM profile_traits
      WHERE key = ? AND starts_with(CAST(value AS VARCHAR), '"'))
WHERE list_contains(CAST(? AS VARCHAR[]), lower(text))
GROUP BY text
""")
# Params: an attribute code. Its most frequent text values, for the closest to one no profile has.
FREQUENT_TEXT_VALUES = parse("""
SELECT json_extract_string(value, '$') AS text, count(*) AS n FROM profile_traits
WHERE key = ? AND starts_with(CAST(value AS VARCHAR), '"')
GROUP BY text ORDER BY n DESC, text LIMIT 1000
""")
