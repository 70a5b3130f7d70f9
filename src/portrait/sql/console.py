"""Statements for the web console's pages: the overview's counts and charts, and customer search."""

from __future__ import annotations

from portrait.sql import parse

# Params: since (naive UTC). Events per day (by event time) and the most frequent events (a page view and a
# track of the same name apart).
EVENTS_PER_DAY = parse("""
SELECT CAST(timestamp AS DATE) AS day, count(*) FROM event_profiles WHERE timestamp >= ? GROUP BY 1 ORDER BY 1
""")
TOP_EVENTS = parse("""
SELECT event_type, event, count(*) AS n FROM event_profiles WHERE timestamp >= ?
GROUP BY 1, 2 ORDER BY n DESC, coalesce(event, event_type), event_type LIMIT 8
""")
REJECTED_SINCE = parse("SELECT count(*) FROM rejected_events WHERE received_at >= ?")
QUALITY_SINCE = parse("SELECT count(*) FROM data_quality WHERE detected_at >= ?")
# Params: lower-cased text, the identifier types and trait codes not to search (lists), a limit, and whether
# identifiers that may be emails or phones (an @, a leading +: a superset of portrait.privacy.personal_identifier)
# are searched. Profiles with an identifier starting with the text, or a text trait equal to it: exact matches first
# (user-10 before user-101), then shorter identifiers.
SEARCH = parse("""
SELECT profile_id FROM (
    SELECT profile_id, CASE WHEN lower(value) = $1 THEN 0 ELSE 1 END AS rank, length(value) AS size
    FROM identities
    WHERE starts_with(lower(value), $1) AND NOT list_contains(CAST($2 AS VARCHAR[]), type)
        AND ($5 OR NOT (contains(value, '@') OR starts_with(ltrim(value), '+')))
    UNION ALL
    SELECT profile_id, 0, 0 FROM profile_traits WHERE NOT list_contains(CAST($3 AS VARCHAR[]), key)
        AND lower(json_extract_string(value, '$')) = $1
)
GROUP BY profile_id ORDER BY min(rank), min(size), profile_id LIMIT $4
""")
