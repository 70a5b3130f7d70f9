"""SQL of rebuilding profiles from the event log (see :mod:`portrait.rebuild`)."""

from __future__ import annotations

from portrait.sql import parse, parse_many

# Params: after seq, how many. What an event's identity hints are read from (identity.identity_hints).
HINT_SOURCES = parse("""
SELECT seq, type, CASE WHEN type = 'identify' THEN traits END, context, identity_hints
FROM events WHERE seq > ? ORDER BY seq LIMIT ?
""")
# Table rehinted (seq, hints): the hints of the events whose hints the current settings read otherwise.
SET_HINTS = parse("""
UPDATE events SET identity_hints = r.hints FROM rehinted AS r WHERE events.seq = r.seq
""")

# What the derived state was, for what must outlive the rebuild: profile ids others may hold (exports, Audience
# events, links), each with the event that created it, and when Portrait created it. Real tables, written in the
# transaction that empties the derived state: a rebuild cut short by a crash keeps them for the next one to finish
# with (IF NOT EXISTS: the state is half rebuilt by then, and they still hold what came before).
SNAPSHOT = parse_many("""
CREATE TABLE IF NOT EXISTS rebuild_old_profiles AS
SELECT p.profile_id, p.created_at, p.created_seq FROM profiles AS p;
CREATE TABLE IF NOT EXISTS rebuild_old_aliases AS SELECT merged_id, profile_id FROM profile_aliases;
CREATE TABLE IF NOT EXISTS rebuild_old_calculated AS
SELECT t.profile_id, t.key, t.value, t.updated_at, t.seq FROM profile_traits AS t
WHERE t.key IN (SELECT code FROM attributes WHERE calculated);
""")
INTERRUPTED = parse("SELECT count(*) FROM information_schema.tables WHERE table_name = 'rebuild_old_profiles'")
DROP_SNAPSHOT = parse_many("""
DROP TABLE IF EXISTS rebuild_old_profiles;
DROP TABLE IF EXISTS rebuild_old_aliases;
DROP TABLE IF EXISTS rebuild_old_calculated;
""")

# Everything the processor derives from the log, emptied; it then starts again from the log's first event.
# (Segment membership is recounted afterwards; attributes, trait nesting, keys, segments, sources, consent
# requests and the audit log are not derived from events.) The count of events processed goes back by the events
# to apply again (not to 0: it also counted events erased since), so that it is right again once they are, even
# after a crash half-way.
CLEAR = parse_many("""
UPDATE processor_state SET value = value - (SELECT count(*) FROM events WHERE seq <= (
    SELECT value FROM processor_state WHERE name = 'watermark'))
WHERE name = 'events_processed';
UPDATE processor_state SET value = 0 WHERE name = 'watermark';
DELETE FROM profiles;
DELETE FROM identities;
DELETE FROM profile_traits;
DELETE FROM event_profiles;
DELETE FROM profile_aliases;
DELETE FROM merges;
DELETE FROM identity_conflicts;
DELETE FROM data_quality;
DELETE FROM consent_records;
DELETE FROM profile_activity;
DELETE FROM rejected_events WHERE source = 'processor';
""")

KEEP_CREATED_AT = parse("""
UPDATE profiles SET created_at = o.created_at FROM rebuild_old_profiles AS o WHERE profiles.profile_id = o.profile_id
""")
# A profile id that no longer names a profile (the rules now group its events otherwise) keeps resolving: to the
# profile now holding the event that created it, or, for an id merged away before, to where its survivor went.
ALIAS_VANISHED = parse_many("""
INSERT INTO profile_aliases (merged_id, profile_id)
SELECT o.profile_id, min(e.profile_id)
FROM rebuild_old_profiles AS o JOIN event_profiles AS e ON e.seq = o.created_seq
WHERE o.profile_id NOT IN (SELECT profile_id FROM profiles)
  AND o.profile_id NOT IN (SELECT merged_id FROM profile_aliases)
GROUP BY o.profile_id;
INSERT INTO profile_aliases (merged_id, profile_id)
SELECT a.merged_id, coalesce(p.profile_id, n.profile_id)
FROM rebuild_old_aliases AS a
LEFT JOIN profiles AS p ON p.profile_id = a.profile_id
LEFT JOIN profile_aliases AS n ON n.merged_id = a.profile_id
WHERE a.merged_id NOT IN (SELECT profile_id FROM profiles)
  AND a.merged_id NOT IN (SELECT merged_id FROM profile_aliases)
  AND coalesce(p.profile_id, n.profile_id) IS NOT NULL;
""")
# Calculated values are not in the log: the processor cannot derive them again. Each goes back to the profile now
# holding its old profile (when the new rules joined several, the latest value, at equal times the one the profile
# keeping its id had); the active definitions are computed again in the recount after the rebuild, while a
# deprecated one -- no longer computed -- keeps its last values, as it does through a recheck (docs/calculated.md).
# Run after ALIAS_VANISHED, which says where vanished ids went.
KEEP_CALCULATED = parse("""
INSERT INTO profile_traits (profile_id, key, value, updated_at, seq)
SELECT k.owner, k.key, arg_max(k.value, (k.updated_at, k.own)), max(k.updated_at), arg_max(k.seq, (k.updated_at, k.own))
FROM (SELECT coalesce(p.profile_id, a.profile_id) AS owner, o.profile_id = coalesce(p.profile_id, a.profile_id) AS own,
             o.key, o.value, o.updated_at, o.seq
      FROM rebuild_old_calculated AS o
      LEFT JOIN profiles AS p ON p.profile_id = o.profile_id
      LEFT JOIN profile_aliases AS a ON a.merged_id = o.profile_id) AS k
WHERE k.owner IS NOT NULL AND k.key IN (SELECT code FROM attributes WHERE calculated)
  AND NOT EXISTS (SELECT 1 FROM profile_traits AS t WHERE t.profile_id = k.owner AND t.key = k.key)
GROUP BY k.owner, k.key
""")

# An erasure while a rebuild is cut short: the person's kept calculated values go too (they may be personal).
KEEPING_CALCULATED = parse("SELECT count(*) FROM information_schema.tables WHERE table_name = 'rebuild_old_calculated'")
ERASE_KEPT = parse("""
DELETE FROM rebuild_old_calculated WHERE profile_id IN (SELECT profile_id FROM erase_profiles)
""")
COUNT_VANISHED = parse("""
SELECT count(*) FROM rebuild_old_profiles WHERE profile_id NOT IN (SELECT profile_id FROM profiles)
""")
COUNT_PROFILES = parse("SELECT count(*) FROM profiles")
COUNT_OLD_PROFILES = parse("SELECT count(*) FROM rebuild_old_profiles")
COUNT_EVENTS = parse("SELECT count(*) FROM events")
LAST_SEQ = parse("SELECT coalesce(max(seq), 0) FROM events")
WATERMARK = parse("SELECT value FROM processor_state WHERE name = 'watermark'")
