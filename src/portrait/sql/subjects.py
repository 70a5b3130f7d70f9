"""Statements for data-subject requests: the request queue, the access export, the erasure, suppression."""

from __future__ import annotations

from portrait.sql import parse
from portrait.sql.processor import trimmed

REQUEST_COLUMNS = ("id", "type", "identity", "identity_hash", "status", "requested_by", "created_at", "started_at",
                   "finished_at", "result", "error")
INSERT_REQUEST = parse("INSERT INTO privacy_requests (id, type, identity, identity_hash, status, requested_by, "
                       "created_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)")
GET_REQUEST = parse("SELECT id, type, identity, identity_hash, status, requested_by, created_at, started_at, "
                    "finished_at, result, error FROM privacy_requests WHERE id = ?")
LIST_REQUESTS = parse("SELECT id, type, identity, identity_hash, status, requested_by, created_at, started_at, "
                      "finished_at, NULL, error FROM privacy_requests ORDER BY created_at DESC, id DESC LIMIT ?")
# The page after request ``before`` (newest first). Params: before, before, before, limit.
LIST_REQUESTS_BEFORE = parse(
    "SELECT id, type, identity, identity_hash, status, requested_by, created_at, started_at, finished_at, NULL, "
    "error FROM privacy_requests WHERE created_at < (SELECT created_at FROM privacy_requests WHERE id = ?) "
    "OR (created_at = (SELECT created_at FROM privacy_requests WHERE id = ?) AND id < ?) "
    "ORDER BY created_at DESC, id DESC LIMIT ?")
PENDING = parse("SELECT id FROM privacy_requests WHERE status = 'pending' ORDER BY created_at")
# A request cut off by a stop runs again from the start (both kinds are safe to repeat).
RESUME = parse("UPDATE privacy_requests SET status = 'pending' WHERE status = 'running'")
START = parse("UPDATE privacy_requests SET status = 'running', started_at = ? WHERE id = ?")
# Params: status, finished_at, result, error, id.
FINISH = parse("UPDATE privacy_requests SET status = ?, finished_at = ?, result = ?, error = ? WHERE id = ?")
FORGET_IDENTITY = parse("UPDATE privacy_requests SET identity = NULL WHERE id = ?")
# An erased person's earlier access exports go too, whichever identifier (or profile id) they named, and so does
# the error of a request about her that failed ("no profile has the identity email:..."). Params: the identity
# hashes (a list).
DROP_EXPORTS = parse("UPDATE privacy_requests SET result = NULL, identity = NULL, "
                     "error = CASE WHEN error IS NULL THEN NULL ELSE '(not kept: the person was erased)' END "
                     "WHERE list_contains(CAST(? AS VARCHAR[]), identity_hash)")
# ... her identifiers that other profiles' merge records and identity conflicts list (Bob merged his phone's profile
# with an identify also giving the family email, which is hers: dropped, and named by the merge) leave those lists,
# and a conflict left with none goes: what a rebuild, which reads an erased identifier as none, records. Params:
# identity keys (a list), twice.
_KEY_OF = "concat({0} ->> 'type', ':', {0} ->> 'value')"
_WITHOUT_KEYS = ("UPDATE {table} SET {column} = to_json(list_filter(CAST({column} AS JSON[]), "
                 f"lambda d: NOT list_contains(CAST(? AS VARCHAR[]), {_KEY_OF.format('d')}))) "
                 "WHERE list_has_any(CAST(? AS VARCHAR[]), list_transform(CAST({column} AS JSON[]), "
                 f"lambda d: {_KEY_OF.format('d')}))")
DROP_NAMED_IDENTIFIERS = [
    parse(_WITHOUT_KEYS.format(table="merges", column="identifiers")),
    parse(_WITHOUT_KEYS.format(table="identity_conflicts", column="dropped")),
]
DROP_EMPTY_CONFLICTS = parse("DELETE FROM identity_conflicts WHERE json_array_length(dropped) = 0")
# ... and her identifier values in saved conditions: segments' (JSON) and calculated attributes' definitions (text),
# read whole and rewritten through the condition tree (conditions/erasing.py). Params: the new form, the time, the
# segment's id (the attribute's code).
SAVED_CONDITIONS = parse("SELECT id, condition FROM segments WHERE condition IS NOT NULL ORDER BY id")
REWRITE_CONDITION = parse("UPDATE segments SET condition = ?, updated_at = ? WHERE id = ?")
SAVED_DEFINITIONS = parse("SELECT code, definition FROM attributes WHERE definition IS NOT NULL ORDER BY code")
IDENTITY_TYPES = parse("SELECT DISTINCT type FROM identities")
REWRITE_DEFINITION = parse("UPDATE attributes SET definition = ?, updated_at = ? WHERE code = ?")
# ... and the person's identifiers on uploaded (static) segment lists. Params: identity keys (a list).
DROP_STATIC_IDENTITIES = parse("DELETE FROM static_segment_identities "
                               "WHERE list_contains(CAST(? AS VARCHAR[]), identity_key)")

# -- access (params: profile id) ----------------------------------------------------------------------------------
ALL_EVENTS = parse("""
SELECT e.seq, e.message_id, e.type, e.event, e.user_id, e.anonymous_id, e.timestamp, e.received_at, e.properties,
       e.traits, e.context, e.source, e.ip, e.previous_id, e.group_id, e.original_timestamp, e.sent_at, e.extra
FROM events AS e WHERE e.seq IN (SELECT seq FROM event_profiles WHERE profile_id = ?) ORDER BY e.seq
""")
# Params: profile id, twice (records made under the ids of profiles merged into it count too).
_OWN = "(SELECT ? UNION ALL SELECT merged_id FROM profile_aliases WHERE profile_id = ?)"
MEMBERSHIPS = parse(f"""
SELECT s.name, h.change, h.at FROM segment_history AS h LEFT JOIN segments AS s ON s.id = h.segment_id
WHERE h.profile_id IN {_OWN} ORDER BY h.id
""")
QUALITY = parse(f"SELECT attribute, raw_value, reason, source, detected_at FROM data_quality "
                f"WHERE profile_id IN {_OWN} ORDER BY id")
# What an erasure takes as the person's beyond her profile is in her export too: the events no profile holds that
# name her (into erase_seqs, by the ADD_UNLINKED statements below) and the rejected messages holding her values
# (by the rules of ERASE_REJECTED*) or rejecting those events.
SUBJECT_SEQS = parse("CREATE OR REPLACE TEMP TABLE erase_seqs (seq BIGINT)")
UNLINKED_EVENTS = parse("""
SELECT e.seq, e.message_id, e.type, e.event, e.user_id, e.anonymous_id, e.timestamp, e.received_at, e.properties,
       e.traits, e.context, e.source, e.ip, e.previous_id, e.group_id, e.original_timestamp, e.sent_at, e.extra
FROM events AS e WHERE e.seq IN (SELECT seq FROM erase_seqs) ORDER BY e.seq
""")
MERGED_IDS = parse("SELECT merged_id FROM profile_aliases WHERE profile_id = ?")
IDENTITY_KEYS = parse("SELECT identity_key, type, value FROM identities WHERE profile_id = ?")

# -- erasure (the profile id in erase_profiles(profile_id), its events' seqs in erase_seqs(seq)) --------------------
ERASE_SCOPE = [
    parse("CREATE OR REPLACE TEMP TABLE erase_profiles (profile_id VARCHAR)"),
    parse("CREATE OR REPLACE TEMP TABLE erase_seqs AS SELECT seq FROM event_profiles WHERE profile_id = ?"),
]
ADD_ERASE_PROFILE = parse("INSERT INTO erase_profiles VALUES (?)")
# Events no profile holds -- set aside by the processor (processing_failed) or without a usable identifier
# (no_identifier) -- are found through the processor's rejections, which name their seq. They are gathered once into
# ``unlinked_events`` (usually a handful) with the text the rules below search: searched in ``events`` itself, DuckDB
# read the text of every event in the log before keeping the set-aside ones -- 1.4 s per identifier on 1M events, an
# erasure of a customer with ten events took 5 s, ten queued ones a minute. Those naming the person join the
# erasure's scope: by one of her identifiers as their userId, anonymousId or previousId (whatever its length), or, as
# for rejected messages, by a value of 5+ characters anywhere in them, in any letter case, or her phone's national
# digits however it was punctuated. Param: the value (or the digits).
_SET_ASIDE_SEQ = "TRY_CAST(json_extract_string(payload, '$.seq') AS BIGINT)"
_EVENT_TEXT = ("concat_ws(' ', e.user_id, e.anonymous_id, e.previous_id, e.group_id, e.properties, e.traits, "
               "e.context, e.extra, e.identity_hints)")
UNLINKED_SCOPE = parse(
    f"CREATE OR REPLACE TEMP TABLE unlinked_events AS SELECT e.seq, {trimmed('e.user_id')} AS user_id, "
    f"{trimmed('e.anonymous_id')} AS anonymous_id, {trimmed('e.previous_id')} AS previous_id, {_EVENT_TEXT} AS text "
    f"FROM events AS e WHERE e.seq IN (SELECT {_SET_ASIDE_SEQ} FROM rejected_events WHERE source = 'processor') "
    "AND NOT EXISTS (SELECT 1 FROM event_profiles AS p WHERE p.seq = e.seq)")
_UNLINKED = "INSERT INTO erase_seqs SELECT u.seq FROM unlinked_events AS u WHERE "
ADD_UNLINKED_NAMING = parse(_UNLINKED + "? IN (u.user_id, u.anonymous_id, u.previous_id)")
ADD_UNLINKED_HOLDING = parse(_UNLINKED + "contains(lower(u.text), lower(?))")
ADD_UNLINKED_HOLDING_PHONE = parse(_UNLINKED + "contains(regexp_replace(u.text, '[\\s().\\-/]', '', 'g'), ?)")
DROP_UNLINKED_SCOPE = parse("DROP TABLE IF EXISTS unlinked_events")  # it holds the text of the person's events
COUNT_SCOPE = parse("SELECT count(DISTINCT seq) FROM erase_seqs")
ERASE = [
    parse("DELETE FROM events WHERE seq IN (SELECT seq FROM erase_seqs)"),
    parse("DELETE FROM expired_events WHERE seq IN (SELECT seq FROM erase_seqs)"),
    parse("DELETE FROM consent_records WHERE seq IN (SELECT seq FROM erase_seqs)"),
    parse("DELETE FROM event_profiles WHERE seq IN (SELECT seq FROM erase_seqs)"),
    # The processor's rejections of her set-aside events (their payload names a user id of any length).
    parse("DELETE FROM rejected_events WHERE source = 'processor' "
          f"AND {_SET_ASIDE_SEQ} IN (SELECT seq FROM erase_seqs)"),
    parse("DELETE FROM identities WHERE profile_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM profile_traits WHERE profile_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM profile_aliases WHERE profile_id IN (SELECT profile_id FROM erase_profiles) "
          "OR merged_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM merges WHERE profile_id IN (SELECT profile_id FROM erase_profiles) "
          "OR merged_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM identity_conflicts WHERE profile_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM segment_members WHERE profile_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM segment_history WHERE profile_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM audience_outbox WHERE profile_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM data_quality WHERE profile_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM profile_activity WHERE profile_id IN (SELECT profile_id FROM erase_profiles)"),
    parse("DELETE FROM profiles WHERE profile_id IN (SELECT profile_id FROM erase_profiles)"),
]
# Rejected messages are not linked to profiles: those holding one of the person's identifier values go, however the
# message wrote it (identifiers are stored normalized: an email lower-cased, "Ann@Example.com" in a message). Param:
# value.
_HOLDING = "contains(lower(payload), lower(?))"
ERASE_REJECTED = parse(f"DELETE FROM rejected_events WHERE {_HOLDING}")
# A phone number is stored as +48601234567 but written "+48 601 234 567" or "(415) 555-0142": messages holding its
# national digits once spaces, brackets, dots, dashes and slashes are left out go too. Param: the digits.
_HOLDING_PHONE = "contains(regexp_replace(payload, '[\\s().\\-/]', '', 'g'), ?)"
ERASE_REJECTED_PHONE = parse(f"DELETE FROM rejected_events WHERE {_HOLDING_PHONE}")
# The same, read for an access export (params as above; the last, none: those rejecting events in erase_seqs).
_REJECTED = "SELECT id, received_at, code, reason, source, message_id, payload FROM rejected_events WHERE "
REJECTED_HOLDING = parse(_REJECTED + _HOLDING)
REJECTED_HOLDING_PHONE = parse(_REJECTED + _HOLDING_PHONE)
REJECTED_SET_ASIDE = parse(_REJECTED + f"source = 'processor' AND {_SET_ASIDE_SEQ} IN (SELECT seq FROM erase_seqs)")
SUPPRESS = parse("INSERT INTO suppressed_identities (key_hash, request_id, suppressed_at) VALUES (?, ?, ?) "
                 "ON CONFLICT DO NOTHING")
ALL_SUPPRESSED = parse("SELECT key_hash FROM suppressed_identities")
# A restore carries the erasures made after its backup was taken: the identifiers suppressed since, and the
# profiles of the restored database holding one of them (hashed as the processor hashes them, STAGE_OWNERS).
SUPPRESSED_ROWS = parse("SELECT key_hash, request_id, suppressed_at FROM suppressed_identities")
PROFILES_HOLDING = parse(
    "SELECT DISTINCT profile_id FROM identities "
    "WHERE sha256(type || ':' || value) IN (SELECT UNNEST(CAST(? AS VARCHAR[]))) ORDER BY profile_id"
)
UNSUPPRESS = parse("DELETE FROM suppressed_identities WHERE request_id = ?")
# Retention. Params: the cut-off time. Raw events (their payloads) older than it go; which profile did what, and
# when (event_profiles), and consent statements stay.
# Only events the processor has applied: a historical import older than the window still reaches the profiles.
_EXPIRING = "FROM events WHERE timestamp < ? AND seq <= (SELECT value FROM processor_state WHERE name = 'watermark')"
EXPIRED = parse(f"SELECT count(*) {_EXPIRING}")
# Their messageIds are kept (duplicates stay duplicates), then the rows go.
EXPIRE = [
    parse(f"INSERT INTO expired_events (seq, message_id, received_at) SELECT seq, message_id, received_at {_EXPIRING}"),
    parse(f"DELETE {_EXPIRING}"),
]
COUNT_EXPIRED = parse("SELECT count(*) FROM expired_events")
# Rejected messages keep what was sent (names, emails) for someone to look at: retention takes them by when they
# were received. Params: the cut-off time.
EXPIRE_REJECTED = parse("DELETE FROM rejected_events WHERE received_at < ?")
