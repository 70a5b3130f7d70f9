"""Statements for segments: loading profiles for the Python engine, and (later) membership."""

from __future__ import annotations

from portrait.sql import parse

# Every profile's traits / events, for the Python engine (tests, and re-evaluating touched profiles).
ALL_TRAITS = parse("SELECT profile_id, key, CAST(value AS VARCHAR) FROM profile_traits")
ALL_EVENTS = parse("""
SELECT ep.profile_id, ep.seq, ep.event, ep.timestamp, e.properties
FROM event_profiles AS ep JOIN events AS e ON e.seq = ep.seq
""")
ALL_PROFILES = parse("SELECT profile_id FROM profiles")
