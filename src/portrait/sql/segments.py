"""Statements for segments: definitions, materialized membership and its history, and the Python engine's reads.

Membership changes are computed as a set difference between a freshly computed ``seg_new`` (profile ids) and the
stored members, for one segment and a scope of profiles (all of them at a recount, the touched ones in real time).
"""

from __future__ import annotations

from sqlglot import exp

from portrait.sql import param, parse

COLUMNS = ("id", "name", "kind", "condition", "description", "created_at", "updated_at", "counted_at")
INSERT = parse("INSERT INTO segments (name, kind, condition, description, created_at, updated_at) "
               "VALUES (?, ?, ?, ?, ?, ?) RETURNING id")
LIST = parse("""
SELECT s.id, s.name, s.kind, s.condition, s.description, s.created_at, s.updated_at, s.counted_at,
       (SELECT count(*) FROM segment_members AS m WHERE m.segment_id = s.id) AS size
FROM segments AS s ORDER BY s.name
""")
BY_ID = exp.select(*COLUMNS).from_("segments").where(exp.column("id").eq(param()))
BY_NAME = exp.select(*COLUMNS).from_("segments").where(exp.column("name").eq(param()))
NAMES = exp.select("name").from_("segments").order_by("id")
SIZE = parse("SELECT count(*) FROM segment_members WHERE segment_id = ?")
DELETE = [parse("DELETE FROM segment_members WHERE segment_id = ?"),
          parse("DELETE FROM static_segment_identities WHERE segment_id = ?"),
          parse("DELETE FROM segment_sizes WHERE segment_id = ?"),
          parse("DELETE FROM segments WHERE id = ?")]


def update(columns: list[str]) -> exp.Expr:
    assert set(columns) <= {"name", "condition", "description", "updated_at"}, columns
    return exp.update("segments", {c: param() for c in columns}, where=exp.column("id").eq(param()))


ADD_IDENTITY = parse("INSERT INTO static_segment_identities (segment_id, identity_key) VALUES (?, ?)")
CLEAR_IDENTITIES = parse("DELETE FROM static_segment_identities WHERE segment_id = ?")
# Params: segment id. Members of a static segment: the profiles that hold any of its identities now.
STATIC_MEMBERS = parse("""
SELECT DISTINCT i.profile_id FROM static_segment_identities AS s JOIN identities AS i ON i.identity_key = s.identity_key
WHERE s.segment_id = ?
""")
COUNT_IDENTITIES = parse("SELECT count(*) FROM static_segment_identities WHERE segment_id = ?")

# -- applying a new membership ----------------------------------------------------------------------------------
NEW_MEMBERS_TABLE = parse("CREATE OR REPLACE TEMP TABLE seg_new (profile_id VARCHAR)")
INSERT_FOUND = parse("INSERT INTO seg_new SELECT profile_id FROM seg_found")
IS_MEMBER = parse("SELECT 1 FROM segment_members WHERE segment_id = ? AND profile_id = ?")


def new_members(members: exp.Expr) -> exp.Expr:
    """``INSERT INTO seg_new <a query of profile ids>``."""
    return exp.insert(members, "seg_new")
# The statements a write runs paused look the big tables (profiles, the segment's members, its outbox) up from the
# write's own small ones (seg_new, seg_scope, seg_exited...: a chunk of 20,000 profiles at most) with NOT EXISTS or a
# join, never `x NOT IN (SELECT ... FROM <big table>)`: NOT IN builds its hash table on the subquery (1M profiles
# at 1M), NOT EXISTS lets DuckDB build it on the chunk. The same rows: profile ids are never NULL. (`x IN (SELECT
# ... FROM <small table>)` already builds on the small side, and was as fast or faster than EXISTS there: left as
# it is.) See docs/performance.md, "Large membership writes".
# Profiles erased or merged away since the scope's members were evaluated (outside the pause) get no membership.
KEEP_EXISTING = parse("DELETE FROM seg_new WHERE NOT EXISTS "
                      "(SELECT 1 FROM profiles AS p WHERE p.profile_id = seg_new.profile_id)")
# A recount leaves the profiles processed since it began (seg_touched) to the real-time refresh: out of the chunk it
# is about to write, and (seg_left, read by CHUNK_SCOPE unpaused) out of the chunks after it -- deleting them from
# seg_candidates, every candidate, would scan those while paused.
FORGET_TOUCHED = [*(parse(f"DELETE FROM {table} WHERE profile_id IN (SELECT profile_id FROM seg_touched)")
                    for table in ("seg_scope", "seg_new")),
                  parse("INSERT INTO seg_left SELECT profile_id FROM seg_touched")]
LEFT_TABLE = parse("CREATE OR REPLACE TEMP TABLE seg_left (profile_id VARCHAR)")
# Params: segment id (twice), profiles per chunk. A recount's candidates, found before it pauses anything: the
# profiles whose evaluated membership differs from the stored one, each with the chunk it is written in (one paused
# transaction per chunk: see Segments._write_in_chunks). A merged-away profile goes in its survivor's chunk, so that
# the survivor can take its membership over (INHERITED needs both in one write). Then seg_entering keeps the
# candidates that enter.
CANDIDATES = parse("""
CREATE OR REPLACE TEMP TABLE seg_candidates AS
WITH differing AS (
    SELECT n.profile_id FROM seg_new AS n
    WHERE n.profile_id NOT IN (SELECT profile_id FROM segment_members WHERE segment_id = ?)
    UNION
    SELECT m.profile_id FROM segment_members AS m
    WHERE m.segment_id = ? AND m.profile_id NOT IN (SELECT profile_id FROM seg_new)
), people AS (
    SELECT d.profile_id, coalesce(a.profile_id, d.profile_id) AS person
    FROM differing AS d LEFT JOIN profile_aliases AS a ON a.merged_id = d.profile_id
)
SELECT profile_id, CAST(floor((dense_rank() OVER (ORDER BY person) - 1) / ?) AS BIGINT) AS chunk FROM people
""")
CHUNKS = parse("SELECT coalesce(max(chunk) + 1, 0) FROM seg_candidates")
ENTERING = parse("CREATE OR REPLACE TEMP TABLE seg_entering AS SELECT profile_id FROM seg_new "
                 "WHERE profile_id IN (SELECT profile_id FROM seg_candidates)")
# Params: chunk. One chunk's candidates, less those left to the refresh, become the write's scope, and those of
# them entering its seg_new.
CHUNK_SCOPE = parse("INSERT INTO seg_scope SELECT c.profile_id FROM seg_candidates AS c WHERE c.chunk = ? "
                    "AND NOT EXISTS (SELECT 1 FROM seg_left AS l WHERE l.profile_id = c.profile_id)")
CHUNK_ENTERING = parse("INSERT INTO seg_new SELECT profile_id FROM seg_entering "
                       "WHERE profile_id IN (SELECT profile_id FROM seg_scope)")
SCOPE_TABLE = parse("CREATE OR REPLACE TEMP TABLE seg_scope (profile_id VARCHAR)")
# Params (each): segment id, now. Entries and exits within the scope, then the members table follows.
ENTERED = parse("""
CREATE OR REPLACE TEMP TABLE seg_entered AS
SELECT DISTINCT n.profile_id FROM seg_new AS n
WHERE NOT EXISTS (SELECT 1 FROM segment_members AS m WHERE m.segment_id = ? AND m.profile_id = n.profile_id)
""")
EXITED = parse("""
CREATE OR REPLACE TEMP TABLE seg_exited AS
SELECT m.profile_id FROM segment_members AS m
WHERE m.segment_id = ? AND m.profile_id IN (SELECT profile_id FROM seg_scope)
  AND m.profile_id NOT IN (SELECT profile_id FROM seg_new)
""")
RECORD_ENTERED = parse("INSERT INTO segment_history (segment_id, profile_id, change, at) "
                       "SELECT ?, profile_id, 'entered', ? FROM seg_entered")
RECORD_EXITED = parse("INSERT INTO segment_history (segment_id, profile_id, change, at) "
                      "SELECT ?, profile_id, 'exited', ? FROM seg_exited")
# Params: segment id (twice). Profiles entering because a member was merged into them: the person was in the
# segment already -- the member's Audience Entered went to the survivor's timeline with its events -- so the
# survivor takes over that membership (since when, no second Entered). Not while that Entered is still unsent: a
# merged profile's unsent events are dropped, and the survivor's would then be its only one.
INHERITED = parse("""
CREATE OR REPLACE TEMP TABLE seg_inherited AS
SELECT a.profile_id, min(m.entered_at) AS entered_at
FROM seg_exited AS x JOIN profile_aliases AS a ON a.merged_id = x.profile_id
JOIN segment_members AS m ON m.profile_id = a.merged_id AND m.segment_id = ?
WHERE a.profile_id IN (SELECT profile_id FROM seg_entered)
  AND NOT EXISTS (SELECT 1 FROM audience_outbox AS o
                  WHERE o.segment_id = ? AND o.change = 'entered' AND o.profile_id = a.merged_id)
GROUP BY a.profile_id
""")
ADD_MEMBERS = parse("INSERT INTO segment_members (segment_id, profile_id, entered_at) "
                    "SELECT ?, e.profile_id, coalesce(i.entered_at, ?) FROM seg_entered AS e "
                    "LEFT JOIN seg_inherited AS i ON i.profile_id = e.profile_id")
REMOVE_MEMBERS = parse("DELETE FROM segment_members WHERE segment_id = ? "
                       "AND profile_id IN (SELECT profile_id FROM seg_exited)")
CHANGES = parse("SELECT 'entered', profile_id FROM seg_entered UNION ALL SELECT 'exited', profile_id FROM seg_exited")
# The changes' Audience events, to be written to the log (none for a membership taken over). Params: segment id,
# now, segment id, name, now (entered), the same again (exited). The messageId is fixed here, so a second sending
# after a crash is a duplicate.
_OUTBOX_ROW = ("SELECT 'audience-' || CAST(? AS VARCHAR) || '-{0}-' || profile_id || '-' || CAST(epoch_us(CAST(? AS "
               "TIMESTAMP)) AS VARCHAR), ?, ?, '{0}', profile_id, ? FROM seg_{0} "
               "WHERE profile_id NOT IN (SELECT profile_id FROM seg_inherited)")
TO_OUTBOX = parse("INSERT INTO audience_outbox (message_id, segment_id, segment, change, profile_id, at) "
                  + _OUTBOX_ROW.format("entered") + " UNION ALL " + _OUTBOX_ROW.format("exited")
                  + " ON CONFLICT DO NOTHING")
OUTBOX = parse("SELECT message_id, segment_id, segment, change, profile_id, at FROM audience_outbox "
               "ORDER BY at, message_id LIMIT ?")
# Params: limit. A chunk of the outbox, in sending order, with the identifier each event names its profile by, all
# in one query (one lookup per event took ~2 ms each: 100,000 entries kept a segment's creation waiting minutes). The
# profile's own identifier as PROFILE_IDENTIFIER picks it; a profile with none was merged away (or erased). A merged
# profile's exit goes to its survivor, where its entry went with its events, unless that survivor is a member (its
# own membership stands: no exit, so the timeline does not show the person leaving). No identifier at all (erased,
# or merged into a member, which is evaluated on its own): id_type and id_value are NULL and no event is written.
OUTBOX_MESSAGES = parse("""
WITH chunk AS (
    SELECT message_id, segment_id, segment, change, profile_id, at FROM audience_outbox ORDER BY at, message_id LIMIT ?
), named AS (
    SELECT c.*, CASE WHEN c.profile_id IN (SELECT i.profile_id FROM identities AS i) THEN c.profile_id
                     WHEN c.change = 'exited' AND m.profile_id IS NULL THEN a.profile_id END AS named_id
    FROM chunk AS c
    LEFT JOIN profile_aliases AS a ON a.merged_id = c.profile_id
    LEFT JOIN segment_members AS m ON m.segment_id = c.segment_id AND m.profile_id = a.profile_id
), ranked AS (
    SELECT i.profile_id, i.type, i.value, row_number() OVER (
        PARTITION BY i.profile_id
        ORDER BY CASE i.type WHEN 'user_id' THEN 0 WHEN 'anonymous_id' THEN 1 ELSE 2 END, i.first_seen, i.value
    ) AS rank
    FROM identities AS i WHERE i.profile_id IN (SELECT named_id FROM named)
)
SELECT n.message_id, n.segment_id, n.segment, n.change, n.profile_id, n.at, r.type AS id_type, r.value AS id_value
FROM named AS n LEFT JOIN ranked AS r ON r.profile_id = n.named_id AND r.rank = 1
ORDER BY n.at, n.message_id
""")
SENT = parse("DELETE FROM audience_outbox WHERE message_id IN (SELECT UNNEST(CAST(? AS VARCHAR[])))")
RECORD_SIZE = parse("INSERT INTO segment_sizes (segment_id, at, size) "
                    "SELECT ?, ?, count(*) FROM segment_members WHERE segment_id = ?")
COUNTED = parse("UPDATE segments SET counted_at = ? WHERE id = ?")

# -- reads ------------------------------------------------------------------------------------------------------
# Params: segment id, after profile id, limit. Members in profile-id order (a keyset cursor).
# A preview's sampled profiles: their user id and the traits shown beside it (``?``: the ids, then the codes)
SAMPLE_USER_IDS = parse("""
SELECT profile_id, min(value) FROM identities
WHERE type = 'user_id' AND list_contains(CAST(? AS VARCHAR[]), profile_id) GROUP BY profile_id
""")
SAMPLE_TRAITS = parse("""
SELECT profile_id, key, value FROM profile_traits
WHERE list_contains(CAST(? AS VARCHAR[]), profile_id) AND list_contains(CAST(? AS VARCHAR[]), key)
  AND value IS NOT NULL
""")

MEMBERS_PAGE = parse("""
SELECT m.profile_id, m.entered_at,
       (SELECT min(i.value) FROM identities AS i WHERE i.profile_id = m.profile_id AND i.type = 'user_id') AS user_id
FROM segment_members AS m WHERE m.segment_id = ? AND m.profile_id > ? ORDER BY m.profile_id LIMIT ?
""")
PROFILE_SEGMENTS = parse("""
SELECT s.id, s.name, s.kind, m.entered_at FROM segment_members AS m JOIN segments AS s ON s.id = m.segment_id
WHERE m.profile_id = ? ORDER BY s.name
""")
# Params: segment id, the id to page before (newest first), limit.
HISTORY = parse("SELECT id, profile_id, change, at FROM segment_history WHERE segment_id = ? AND id < ? "
                "ORDER BY id DESC LIMIT ?")
PROFILE_HISTORY = parse("""
SELECT h.segment_id, s.name, h.change, h.at FROM segment_history AS h LEFT JOIN segments AS s ON s.id = h.segment_id
WHERE h.profile_id = ? ORDER BY h.id
""")
# Params: segment id, after this time, limit. Oldest first (a keyset cursor on the time of the recount).
SIZES = parse("SELECT at, size FROM segment_sizes WHERE segment_id = ? AND at > ? ORDER BY at LIMIT ?")
# Params: segment id, how many. The latest points, newest first (the console's trends).
LATEST_SIZES = parse("SELECT at, size FROM segment_sizes WHERE segment_id = ? ORDER BY at DESC LIMIT ?")
# Params: profile id. The identifier an audience event names its profile by: user id, else anonymous id, else any.
PROFILE_IDENTIFIER = parse("""
SELECT type, value FROM identities WHERE profile_id = ?
ORDER BY CASE type WHEN 'user_id' THEN 0 WHEN 'anonymous_id' THEN 1 ELSE 2 END, first_seen LIMIT 1
""")
GET_WATERMARK = parse("SELECT value FROM segment_state WHERE name = 'watermark'")
SET_WATERMARK = parse("UPDATE segment_state SET value = ? WHERE name = 'watermark'")
PROCESSED = parse("SELECT value FROM processor_state WHERE name = 'watermark'")
# Params: lo, hi (exclusive, inclusive). Profiles whose events or identities changed in that part of the log.
_TOUCHED = """
SELECT profile_id FROM event_profiles WHERE seq > ? AND seq <= ?
UNION SELECT merged_id FROM merges WHERE seq > ? AND seq <= ?
UNION SELECT profile_id FROM merges WHERE seq > ? AND seq <= ?
"""
TOUCHED = parse("INSERT INTO seg_scope " + _TOUCHED)
TOUCHED_TABLE = parse("CREATE OR REPLACE TEMP TABLE seg_touched AS " + _TOUCHED)

# -- the Python engine's reads ----------------------------------------------------------------------------------
# Events are left-joined to the raw log: retention deletes raw events but keeps who did what and when
# (event_profiles), so an expired event still counts, with no properties -- as in the SQL engine.
ALL_TRAITS = parse("SELECT profile_id, key, CAST(value AS VARCHAR) FROM profile_traits")
ALL_EVENTS = parse("""
SELECT ep.profile_id, ep.seq, ep.event, ep.timestamp, e.properties
FROM event_profiles AS ep LEFT JOIN events AS e ON e.seq = ep.seq
""")
ALL_PROFILES = parse("SELECT profile_id FROM profiles")
# The scope's profiles that still exist: those merged away since the last refresh are in the scope only to leave
# their segments. (Checking the scope against profiles instead cost a scan of them: ~40 ms at 1M profiles, per
# refresh and per calculated attribute.) Params: the last refresh's watermark.
LIVE_SCOPE = parse("CREATE OR REPLACE TEMP TABLE seg_live AS SELECT DISTINCT profile_id FROM seg_scope "
                   "WHERE profile_id NOT IN (SELECT merged_id FROM merges WHERE seq > ?)")
LIVE_SCOPE_TABLE = "seg_live"
COUNT_PROFILES = parse("SELECT count(*) FROM profiles")
SCOPE_PROFILES = parse("SELECT profile_id FROM seg_live")
SCOPE_TRAITS = parse("SELECT profile_id, key, CAST(value AS VARCHAR) FROM profile_traits "
                     "WHERE profile_id IN (SELECT profile_id FROM seg_live)")
# Params: event names (a list). Only the events the conditions look at.
SCOPE_EVENTS = parse("""
SELECT ep.profile_id, ep.seq, ep.event, ep.timestamp, e.properties
FROM event_profiles AS ep LEFT JOIN events AS e ON e.seq = ep.seq
WHERE ep.profile_id IN (SELECT profile_id FROM seg_live) AND list_contains(CAST(? AS VARCHAR[]), ep.event)
""")
ONE_PROFILE_TRAITS = parse("SELECT profile_id, key, CAST(value AS VARCHAR) FROM profile_traits WHERE profile_id = ?")
ONE_PROFILE_EVENTS = parse("""
SELECT ep.profile_id, ep.seq, ep.event, ep.timestamp, e.properties
FROM event_profiles AS ep LEFT JOIN events AS e ON e.seq = ep.seq WHERE ep.profile_id = ?
""")
# Consent statements with their owner, for the Python engine: all, the scope's, one profile's.
_CONSENTS = ("SELECT ep.profile_id, c.purpose, c.status, c.at, c.seq FROM consent_records AS c "
             "JOIN event_profiles AS ep ON ep.seq = c.seq")
ALL_CONSENTS = parse(_CONSENTS)
SCOPE_CONSENTS = parse(_CONSENTS + " WHERE ep.profile_id IN (SELECT profile_id FROM seg_live)")
ONE_PROFILE_CONSENTS = parse(_CONSENTS + " WHERE ep.profile_id = ?")
