"""The processor's statements: event-log micro-batch -> identities, profiles, traits, event ownership.

The common case -- every identifier of an event already belongs to one profile -- is decided entirely in SQL
(``fast``). Only events that create, extend or merge profiles go through the sequential resolver in Python.
Parameters marked ``lo``/``hi`` are the batch's sequence range (lo exclusive, hi inclusive).
"""

from __future__ import annotations

from sqlglot import exp

from portrait.attributes import INFERRED_TYPES, PERSONAL_CODE
from portrait.conditions.evaluate import DATE_TEXT, DATETIME_TEXT
from portrait.identity import WHITESPACE
from portrait.sql import READ_DIALECT, insert_from, parse, parse_many


def trimmed(column: str) -> str:
    """SQL for ``column`` trimmed as identifiers are in Python (str.strip(): tabs and line breaks too).

    trim() with those characters named costs ~20% of the processor's time (measured on 200,000 events), so it is
    kept for values that still begin or end with something other than printable ASCII once plain trim() has taken
    the spaces: almost every id goes the fast way, and the result is the same."""
    spaces = f"trim({column})"
    every = f"trim({spaces}, {exp.Literal.string(WHITESPACE).sql(READ_DIALECT)})"
    return (f"CASE WHEN ascii({spaces}) BETWEEN 33 AND 126 AND ascii(right({spaces}, 1)) BETWEEN 33 AND 126 "
            f"THEN {spaces} ELSE {every} END")


BATCH_RANGE = parse(
    "SELECT coalesce(max(seq), 0), count(*) FROM (SELECT seq FROM events WHERE seq > ? ORDER BY seq LIMIT ?)"
)

# Identifiers of every event in (lo, hi]: user_id, anonymous_id, and the raw email/phone/custom identifiers the
# ingestion found (events.identity_hints, see identity.identity_hints). Phones are normalized afterwards in Python
# (phonenumbers). Params: lo, hi, blocked values (lower case).
STAGE_IDENTIFIERS = parse(f"""
CREATE OR REPLACE TEMP TABLE b_ids_raw AS
WITH e AS (
    SELECT seq, user_id, anonymous_id, identity_hints FROM events WHERE seq > ? AND seq <= ?
), hints AS (
    SELECT seq, unnest(string_split(identity_hints, chr(30))) AS hint FROM e WHERE identity_hints IS NOT NULL
), found AS (
    SELECT seq, 'user_id' AS id_type, {trimmed('user_id')} AS value FROM e WHERE user_id IS NOT NULL
    UNION ALL
    SELECT seq, 'anonymous_id', {trimmed('anonymous_id')} FROM e WHERE anonymous_id IS NOT NULL
    UNION ALL
    SELECT seq, split_part(hint, chr(31), 1), split_part(hint, chr(31), 2) FROM hints
)
SELECT DISTINCT seq, id_type, CASE WHEN id_type = 'email' THEN lower(value) ELSE value END AS value FROM found
WHERE value IS NOT NULL AND value <> '' AND id_type <> ''
  AND lower(value) NOT IN (SELECT unnest(CAST(? AS VARCHAR[])))
  AND (id_type <> 'email' OR value LIKE '%_@_%')
""")
RAW_PHONES = parse("SELECT DISTINCT value FROM b_ids_raw WHERE id_type = 'phone'")
# phone_map(raw, e164): e164 NULL where the raw value is not a possible phone number.
# An erased person's identifiers (suppressed_identities: SHA-256 of the key) that no profile holds are not
# identifiers either: ingestion drops messages naming them, but other people's events logged before the erasure
# may carry them too (Bob on Alice's tablet), and applying those again (a profile rebuild) must not give them to
# anyone. While the erasure runs they still belong to her profile, so the events it catches up on join it and go.
STAGE_OWNERS = parse("""
CREATE OR REPLACE TEMP TABLE b_owned AS
WITH ids AS (
    SELECT DISTINCT r.seq, r.id_type, coalesce(p.e164, r.value) AS value
    FROM b_ids_raw AS r LEFT JOIN phone_map AS p ON r.id_type = 'phone' AND p.raw = r.value
    WHERE r.id_type <> 'phone' OR p.e164 IS NOT NULL
)
SELECT ids.seq, ids.id_type, ids.value, i.profile_id,
       count(*) OVER (PARTITION BY ids.id_type, ids.value) AS key_events  -- events of the batch with this id
FROM ids LEFT JOIN identities AS i ON i.identity_key = ids.id_type || ':' || ids.value
WHERE i.profile_id IS NOT NULL
   OR sha256(ids.id_type || ':' || ids.value) NOT IN (SELECT key_hash FROM suppressed_identities)
""")
# Every event of the batch takes one of four paths:
# - fast:   all its identifiers already belong to one profile -> assigned here, in SQL;
# - new:    none of its identifiers is known (nor named by an alias's previousId) -> a candidate, confirmed by
#           STAGE_NEW when its group of events forms one new customer (see there) or sent slow;
# - attach: a known customer with new identifiers (a new device's anonymousId, a first email): some identifiers
#           belong to one profile, the others to none and appear in no other event of the batch -> a candidate,
#           confirmed by STAGE_ATTACH (limits, no other event of the batch touching that profile) or sent slow;
# - slow:   everything else (alias, merges, shared identifiers) -> the sequential resolver in Python.
# Params: lo, hi, lo, hi.
STAGE_EVENTS = parse(f"""
CREATE OR REPLACE TEMP TABLE b_events AS
WITH aliased AS (  -- previousIds of the batch's alias calls: they may name identifiers of other events
    SELECT DISTINCT {trimmed('previous_id')} AS value FROM events
    WHERE seq > ? AND seq <= ? AND type = 'alias' AND previous_id IS NOT NULL
), owners AS (  -- per event: what its identifiers say (grouped by seq alone: cheaper than by every column)
    SELECT o.seq, min(o.profile_id) AS owner, count(o.value) AS ids, count(o.profile_id) AS owned,
           count(DISTINCT o.profile_id) AS profiles, max(o.key_events) AS key_events,
           max(o.key_events) FILTER (WHERE o.profile_id IS NULL) AS unowned_key_events,
           count(DISTINCT o.id_type) AS types, count(a.value) AS aliased
    FROM b_owned AS o LEFT JOIN aliased AS a ON a.value = o.value AND o.id_type IN ('user_id', 'anonymous_id')
    GROUP BY o.seq
)
SELECT e.seq, e.message_id, e.type, e.event, e.timestamp, e.user_id, e.anonymous_id, e.previous_id, o.owner,
       e.context LIKE '%"consent"%' AS consent_hint,  -- STAGE_CONSENT runs only for batches with some
       CASE WHEN e.type = 'alias' OR coalesce(o.ids, 0) = 0 THEN 'slow'
            WHEN o.owned = o.ids AND o.profiles = 1 THEN 'fast'
            WHEN o.owned = 0 AND o.aliased = 0 THEN 'new'
            WHEN o.profiles = 1 AND o.unowned_key_events = 1 AND o.aliased = 0 THEN 'attach'
            ELSE 'slow' END AS path
FROM events AS e LEFT JOIN owners AS o ON o.seq = e.seq
WHERE e.seq > ? AND e.seq <= ?
""")
# How many events of the batch need the sequential resolver, are identify calls (traits), create profiles,
# may carry consent statements, and may attach identifiers to a known profile.
BATCH_SHAPE = parse("""
SELECT count(*) FILTER (WHERE path = 'slow'), count(*) FILTER (WHERE type = 'identify'),
       count(*) FILTER (WHERE path = 'new'), count(*) FILTER (WHERE consent_hint),
       count(*) FILTER (WHERE path = 'attach'), count(*) FILTER (WHERE path = 'fast')
FROM b_events
""")
# Attach candidates the resolver would attach in full, decided at once: the resolver gives the event to its one
# profile and attaches the new identifiers when the profile's identifiers plus the new ones stay within every
# per-type limit (otherwise it drops some: left to it). Equivalence with the sequential order needs that nothing
# else in the batch changes that profile first: no other event of the batch that is not fast names one of its
# identifiers, and the batch has no alias call (an alias can merge a profile through a previousId alone).
# Params: limit values, their identifier types (lists), the default limit.
STAGE_ATTACH = parse("""
CREATE OR REPLACE TEMP TABLE b_attach AS
WITH candidates AS (
    SELECT seq, owner, timestamp FROM b_events
    WHERE path = 'attach' AND NOT EXISTS (SELECT 1 FROM b_events WHERE type = 'alias')
), exclusive AS (  -- profiles named by exactly one event of the batch that is not fast
    SELECT o.profile_id FROM b_owned AS o JOIN b_events AS b ON b.seq = o.seq
    WHERE b.path <> 'fast' AND o.profile_id IS NOT NULL
    GROUP BY o.profile_id HAVING count(DISTINCT o.seq) = 1
), chosen AS (
    SELECT c.seq, c.owner, c.timestamp FROM candidates AS c JOIN exclusive AS x ON x.profile_id = c.owner
), counted AS (  -- per event and type: the profile's identifiers plus the event's new ones
    SELECT c.seq, i.type AS id_type, count(*) AS n FROM chosen AS c JOIN identities AS i ON i.profile_id = c.owner
    GROUP BY c.seq, i.type
    UNION ALL
    SELECT o.seq, o.id_type, count(*) FROM b_owned AS o JOIN chosen AS c ON c.seq = o.seq
    WHERE o.profile_id IS NULL GROUP BY o.seq, o.id_type
), over_limit AS (
    SELECT seq FROM counted GROUP BY seq, id_type
    HAVING sum(n) > coalesce(CAST(? AS INTEGER[])[list_position(CAST(? AS VARCHAR[]), id_type)], ?)
)
SELECT seq, timestamp, owner AS profile_id FROM chosen WHERE seq NOT IN (SELECT seq FROM over_limit)
""")
UNCONFIRMED_ATTACH = parse(
    "UPDATE b_events SET path = 'slow' WHERE path = 'attach' AND seq NOT IN (SELECT seq FROM b_attach)"
)


def _give_new_identifiers(source: str) -> exp.Expr:
    """The unowned identifiers of the events in ``source(seq, timestamp, profile_id)`` join that profile."""
    return parse(
        "INSERT INTO identities (identity_key, type, value, profile_id, first_seen, seq) "
        "SELECT o.id_type || ':' || o.value, o.id_type, o.value, s.profile_id, s.timestamp, s.seq "
        f"FROM b_owned AS o JOIN {source} AS s ON s.seq = o.seq WHERE o.profile_id IS NULL"
    )


def _assign(source: str) -> exp.Expr:
    """The events of ``source(seq, profile_id)`` belong to those profiles in this batch."""
    return parse(f"INSERT INTO b_assign (seq, profile_id) SELECT seq, profile_id FROM {source}")


ATTACH_IDENTITIES = _give_new_identifiers("b_attach")
ATTACH_ASSIGN = _assign("b_attach")
COUNT_ATTACHED = parse("SELECT count(*) FROM b_attach")
# Which profile each event of the batch belongs to. Each path adds its events only when it has some: DuckDB 1.5.5
# loses every row of an INSERT of 110,592 rows or more into a table created in the same transaction when an INSERT
# (or the CREATE ... AS) before it wrote no rows (a batch of only new customers lost all its events' profile rows
# with processor_max_batch_size above that).
NEW_BATCH_ASSIGN = parse("CREATE OR REPLACE TEMP TABLE b_assign (seq BIGINT, profile_id VARCHAR)")
FAST_ASSIGN = parse("INSERT INTO b_assign (seq, profile_id) SELECT seq, owner FROM b_events WHERE path = 'fast'")
# New customers, decided at once. The candidates ('new': no identifier known) fall into groups: each event takes as
# its hub the identifier that most events of the batch carry (ties: the smallest), and the events with the same hub
# are one group. A group is one new customer -- what the resolver, going through the batch in order, would make --
# when every event carrying one of its identifiers is in it, its hub is in all of them, and it has at most one
# identifier per type: then its first event finds nothing and creates the profile with its identifiers, and each
# later one finds that profile alone through the hub and attaches its new identifiers (no limit can be reached, as
# every limit is at least one). Anything else (an identifier shared with an event of another path, two emails...)
# goes to the resolver. One event with identifiers found in no other event is a group of its own: the first visit
# of a customer whose events all arrive in one batch (a session's page views, an import) is one group.
# The profile id derives from the creating event's sequence number: md5, written like a UUID
# (pipeline.profile_id_for computes the same in Python, and says why).
STAGE_NEW = parse("""
CREATE OR REPLACE TEMP TABLE b_new AS
WITH hubs AS (
    SELECT o.seq, first(o.id_type || ':' || o.value ORDER BY o.key_events DESC, o.id_type || ':' || o.value) AS hub
    FROM b_owned AS o JOIN b_events AS b ON b.seq = o.seq WHERE b.path = 'new'
    GROUP BY o.seq
), keys AS (  -- per group and identifier: events of the batch carrying it, and those of the group
    SELECT h.hub, o.id_type, o.value, max(o.key_events) AS key_events, count(*) AS carriers
    FROM b_owned AS o JOIN hubs AS h ON h.seq = o.seq
    GROUP BY h.hub, o.id_type, o.value
), whole AS (
    SELECT k.hub FROM keys AS k GROUP BY k.hub
    HAVING bool_and(k.key_events = k.carriers) AND count(*) = count(DISTINCT k.id_type)
), members AS (
    SELECT h.seq, h.hub, b.timestamp, min(h.seq) OVER (PARTITION BY h.hub) AS creator
    FROM hubs AS h JOIN whole AS w ON w.hub = h.hub JOIN b_events AS b ON b.seq = h.seq
)
SELECT seq, timestamp, seq = creator AS creates,
       lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) || '-' ||
             substr(h, 17, 4) || '-' || substr(h, 21, 12)) AS profile_id
FROM (SELECT *, md5('portrait-profile:' || CAST(creator AS VARCHAR)) AS h FROM members)
""")
UNCONFIRMED_NEW = parse("UPDATE b_events SET path = 'slow' WHERE path = 'new' AND seq NOT IN (SELECT seq FROM b_new)")
COUNT_NEW = parse("SELECT count(*) FROM b_new")
# Params: processed-at time.
NEW_PROFILES = parse(
    "INSERT INTO profiles (profile_id, created_seq, created_at) SELECT profile_id, seq, ? FROM b_new WHERE creates"
)
# Each identifier of a new customer is first seen with the earliest event of the group that carries it.
NEW_IDENTITIES = parse("""
INSERT INTO identities (identity_key, type, value, profile_id, first_seen, seq)
SELECT o.id_type || ':' || o.value, o.id_type, o.value, min(s.profile_id), arg_min(s.timestamp, s.seq), min(s.seq)
FROM b_owned AS o JOIN b_new AS s ON s.seq = o.seq
GROUP BY o.id_type, o.value
""")
NEW_ASSIGN = _assign("b_new")
SLOW_EVENTS = parse("""
SELECT b.seq, b.message_id, b.type, b.timestamp, b.previous_id, o.id_type, o.value, o.profile_id
FROM b_events AS b LEFT JOIN b_owned AS o ON o.seq = b.seq
WHERE b.path = 'slow'
ORDER BY b.seq
""")
# Which of these identity-key hashes are an erased person's (a list param).
SUPPRESSED_AMONG = parse(
    "SELECT key_hash FROM suppressed_identities WHERE key_hash IN (SELECT UNNEST(CAST(? AS VARCHAR[])))"
)
IDENTITIES_BY_KEYS = parse(
    "SELECT identity_key, profile_id FROM identities WHERE identity_key IN (SELECT UNNEST(CAST(? AS VARCHAR[])))"
)
# Every identifier of the profiles named in wanted_profiles(profile_id) (a loaded table: binding thousands of ids
# as one list parameter took twice as long).
MEMBERS_OF_PROFILES = parse("""
SELECT p.profile_id, p.created_seq, i.type, i.value FROM wanted_profiles AS w
JOIN profiles AS p ON p.profile_id = w.profile_id
LEFT JOIN identities AS i ON i.profile_id = p.profile_id
""")
INSERT_SLOW_ASSIGN = _assign("slow_assign")
INSERT_PROFILES = insert_from(
    "profiles", "new_profiles", ("profile_id", "created_seq", "created_at")
)
INSERT_IDENTITIES = insert_from(
    "identities", "new_identities", ("identity_key", "type", "value", "profile_id", "first_seen", "seq")
)

# -- merges: batch_merges(merged_id, profile_id) maps every profile merged away in this batch to its survivor.
REMAP_ASSIGN = parse(
    "UPDATE b_assign SET profile_id = m.profile_id FROM batch_merges AS m WHERE b_assign.profile_id = m.merged_id"
)
REASSIGN_IDENTITIES = parse(
    "UPDATE identities SET profile_id = m.profile_id FROM batch_merges AS m WHERE identities.profile_id = m.merged_id"
)
REASSIGN_EVENTS = parse(
    "UPDATE event_profiles SET profile_id = m.profile_id FROM batch_merges AS m "
    "WHERE event_profiles.profile_id = m.merged_id"
)
REASSIGN_ALIASES = parse(
    "UPDATE profile_aliases SET profile_id = m.profile_id FROM batch_merges AS m "
    "WHERE profile_aliases.profile_id = m.merged_id"
)
# The merges, identity conflicts, consent statements and data-quality issues recorded on a profile merged away belong
# to its survivor's history.
REASSIGN_HISTORY = [parse(f"UPDATE {table} SET profile_id = m.profile_id FROM batch_merges AS m "
                          f"WHERE {table}.profile_id = m.merged_id")
                    for table in ("merges", "identity_conflicts", "consent_records", "data_quality")]
# The activity of profiles merged away adds to their survivor's (before this batch's own events, ADD_ACTIVITY).
_ACTIVITY_UPSERT = (
    "ON CONFLICT (profile_id) DO UPDATE SET first_seen = least(profile_activity.first_seen, excluded.first_seen), "
    "last_seen = greatest(profile_activity.last_seen, excluded.last_seen), "
    "events = profile_activity.events + excluded.events"
)
MERGE_ACTIVITY = parse(
    "INSERT INTO profile_activity (profile_id, first_seen, last_seen, events) "
    "SELECT m.profile_id, min(a.first_seen), max(a.last_seen), sum(a.events) "
    "FROM profile_activity AS a JOIN batch_merges AS m ON a.profile_id = m.merged_id GROUP BY m.profile_id "
    + _ACTIVITY_UPSERT
)
DELETE_MERGED_ACTIVITY = parse(
    "DELETE FROM profile_activity WHERE profile_id IN (SELECT merged_id FROM batch_merges)"
)
INSERT_ALIASES = parse(
    "INSERT INTO profile_aliases (merged_id, profile_id) SELECT merged_id, profile_id FROM batch_merges"
)
# Fold merged profiles' traits into the survivor with each attribute's merge strategy (see UPSERT_BY_STRATEGY).
MERGE_TRAIT_INPUT = parse("""
CREATE OR REPLACE TEMP TABLE trait_input AS
SELECT m.profile_id, t.key AS code, CAST(t.value AS VARCHAR) AS value, t.updated_at, t.seq,
       coalesce(a.merge_strategy, 'latest') AS strategy
FROM profile_traits AS t JOIN batch_merges AS m ON t.profile_id = m.merged_id
LEFT JOIN attributes AS a ON a.code = t.key
""")
# After a merge, a part older than its object's removal ({"address": null}) on the survivor -- the two coming from
# either side -- is removed at the removal's time, as if both profiles' events had come to one (calculated parts
# and merge strategies other than latest keep their values, as on one profile).
APPLY_PARENT_REMOVALS = parse("""
UPDATE profile_traits SET value = NULL, updated_at = r.updated_at, seq = r.seq
FROM (
    SELECT t.profile_id, t.key, max(p.updated_at) AS updated_at, arg_max(p.seq, (p.updated_at, p.seq)) AS seq
    FROM profile_traits AS t JOIN trait_parents AS tp ON tp.code = t.key
    JOIN profile_traits AS p ON p.profile_id = t.profile_id AND p.key = tp.parent AND p.value IS NULL
    LEFT JOIN attributes AS a ON a.code = t.key
    WHERE t.profile_id IN (SELECT profile_id FROM batch_merges) AND t.value IS NOT NULL
      AND (p.updated_at > t.updated_at OR (p.updated_at = t.updated_at AND p.seq > t.seq))
      AND coalesce(a.merge_strategy, 'latest') = 'latest' AND NOT coalesce(a.calculated, FALSE)
    GROUP BY t.profile_id, t.key
) AS r
WHERE profile_traits.profile_id = r.profile_id AND profile_traits.key = r.key
""")
DELETE_MERGED_TRAITS = parse("DELETE FROM profile_traits WHERE profile_id IN (SELECT merged_id FROM batch_merges)")
DELETE_MERGED_PROFILES = parse("DELETE FROM profiles WHERE profile_id IN (SELECT merged_id FROM batch_merges)")
INSERT_MERGES = insert_from(
    "merges", "batch_merge_log",
    ("profile_id", "merged_id", "seq", "message_id", "identifiers", "merged_at", "processed_at"),
)
INSERT_CONFLICTS = insert_from(
    "identity_conflicts", "batch_conflicts", ("seq", "message_id", "profile_id", "dropped", "processed_at")
)

# -- per-batch writes from b_assign. Params of TRAITS: lo, hi.
INSERT_EVENT_PROFILES = parse("""
INSERT INTO event_profiles (seq, profile_id, timestamp, event_type, event)
SELECT a.seq, a.profile_id, b.timestamp, b.type, b.event FROM b_assign AS a JOIN b_events AS b ON b.seq = a.seq
""")
# The same events counted into their profiles' activity (first/last seen, number of events).
ADD_ACTIVITY = parse(
    "INSERT INTO profile_activity (profile_id, first_seen, last_seen, events) "
    "SELECT a.profile_id, min(b.timestamp), max(b.timestamp), count(*) "
    "FROM b_assign AS a JOIN b_events AS b ON b.seq = a.seq GROUP BY a.profile_id "
    + _ACTIVITY_UPSERT
)
# Consent statements of the batch's events (docs/consent.md): context.consent.<purpose> as "granted"/"denied" (or
# yes/no, true/false, opted_in/opted_out...) or {"status": ..., "legalBasis": ...}, and Segment's
# context.consent.categoryPreferences {<purpose>: true/false}. Anything else is not a consent statement. Each is
# filed under the event's profile (b_assign, after this batch's merges), for the profile read. One message says one
# thing per purpose: when it names a purpose twice (as a key and in categoryPreferences) and the two disagree, the
# denial is kept (the statements share a time and a seq, so no order could tell which is current). Params: lo, hi.
_CONSENT_STATUS = """CASE
    WHEN lower({0}) IN ('granted', 'true', 'yes', 'y', '1', 'opt_in', 'opted_in', 'opt-in', 'accepted') THEN 'granted'
    WHEN lower({0}) IN ('denied', 'false', 'no', 'n', '0', 'opt_out', 'opted_out', 'opt-out',
    'withdrawn', 'rejected', 'declined') THEN 'denied' END"""
_STATUS_TEXT = ("coalesce(json_extract_string(k.value, '$.status'), CASE WHEN json_type(k.value) <> 'OBJECT' "
                "THEN json_extract_string(k.value, '$') END)")
STAGE_CONSENT = parse(f"""
INSERT INTO consent_records (seq, purpose, status, legal_basis, at, source, profile_id)
WITH c AS (
    -- a statement is never later than its arrival: one dated ahead (a fast clock) would outrank every statement
    -- made after it until that time, a withdrawal too
    SELECT seq, least(timestamp, received_at) AS timestamp, source, json_extract(context, '$.consent') AS consent
    FROM events
    WHERE seq > ? AND seq <= ? AND context LIKE '%"consent"%'
), statements AS (
    SELECT c.seq, k.key AS purpose, {_CONSENT_STATUS.format(_STATUS_TEXT)} AS status,
           coalesce(json_extract_string(k.value, '$.legalBasis'), json_extract_string(k.value, '$.legal_basis'))
               AS legal_basis, c.timestamp, c.source
    FROM c, json_each(c.consent) AS k WHERE json_type(c.consent) = 'OBJECT' AND k.key <> 'categoryPreferences'
    UNION ALL
    SELECT c.seq, k.key, {_CONSENT_STATUS.format("json_extract_string(k.value, '$')")}, NULL, c.timestamp, c.source
    FROM c, json_each(c.consent, '$.categoryPreferences') AS k
    WHERE json_type(c.consent, '$.categoryPreferences') = 'OBJECT'
)
SELECT s.seq, s.purpose, s.status, s.legal_basis, s.timestamp, s.source, a.profile_id
FROM statements AS s LEFT JOIN b_assign AS a ON a.seq = s.seq
WHERE s.status IS NOT NULL AND s.purpose <> ''
QUALIFY row_number() OVER (PARTITION BY s.seq, s.purpose ORDER BY s.status, s.legal_basis NULLS LAST) = 1
""")
# Trait names become attribute codes (attributes.code_for, in SQL): accents dropped (prénom -> prenom, ß -> ss),
# camelCase -> snake_case, one level of nesting flattened with "_" (address.city -> address_city, whose parent is
# address). A name with nothing left (名前) has the code '' and is listed as a data-quality issue.
# An object whose code names an attribute of type object is that attribute's value, kept whole: flattened, a
# `prefs` object attribute could never be set (its value landed on prefs_colors, prefs_size...). Except the form
# {"": value}, Portrait's import of its own exports (mapping._WHOLE_KEY), which flattens onto the code itself and
# must keep doing so (its message ids are derived from it). Only the batch's objects are looked up in the registry,
# so the cost stays with the events that send objects. Params: lo, hi.
_CODE = ("trim(regexp_replace(lower(regexp_replace(strip_accents(replace({0}, 'ß', 'ss')), '([a-z0-9])([A-Z])', "
         "'\\1_\\2', 'g')), '[^a-z0-9_]+', '_', 'g'), '_')")
# pos/sub: where the value stands in the message (document order), for names that map to the same code
# (firstName and first_name, address.city and address_city): the last one in the message is applied, the others are
# listed (shadowed_by: the name applied instead).
STAGE_TRAITS = parse(f"""
CREATE OR REPLACE TEMP TABLE b_trait_values AS
WITH top AS (
    SELECT a.profile_id, e.timestamp, e.seq, j.key, j.value, j.type, j.id AS pos
    FROM events AS e JOIN b_assign AS a ON a.seq = e.seq, json_each(e.traits) AS j
    WHERE e.seq > ? AND e.seq <= ? AND e.type = 'identify'
), objects AS (
    SELECT *, {_CODE.format('key')} AS code FROM top WHERE type = 'OBJECT'
), whole AS (  -- each object, and whether it is an object attribute's value
    SELECT o.*, o.code IN (SELECT code FROM attributes WHERE type = 'object') AND json_keys(o.value) <> ['']
                AS kept
    FROM objects AS o
), named AS (
    SELECT profile_id, timestamp, seq, {_CODE.format('key')} AS code, value, type, NULL AS parent, key AS name,
           pos, -1 AS sub
    FROM top WHERE type <> 'OBJECT'
    UNION ALL
    SELECT profile_id, timestamp, seq, code, value, type, NULL, key, pos, -1 FROM whole WHERE kept
    UNION ALL
    SELECT t.profile_id, t.timestamp, t.seq, {_CODE.format("t.key || '.' || n.key")}, n.value, n.type,
           t.code, t.key || '.' || n.key, t.pos, n.id
    FROM whole AS t, json_each(t.value) AS n WHERE NOT t.kept
)
SELECT *, CASE WHEN row_number() OVER last_first > 1 THEN first_value(name) OVER last_first END AS shadowed_by
FROM named WINDOW last_first AS (PARTITION BY seq, profile_id, code ORDER BY pos DESC, sub DESC)
""")
# A trait whose name leaves no attribute code, or whose code a later name in the same message also gives, is not
# applied, and is listed (with its value) rather than lost. Params: detected-at time.
RECORD_UNUSABLE_TRAIT_NAMES = parse("""
INSERT INTO data_quality (profile_id, attribute, raw_value, reason, seq, message_id, source, detected_at)
SELECT b.profile_id, CASE WHEN b.code = '' THEN b.name ELSE b.code END, b.value,
       CASE WHEN b.code = ''
            THEN 'the trait name ' || b.name || ' leaves no attribute code (letters a-z, digits and _ once accents '
                 || 'are dropped): not applied; send it under a name in Latin letters'
            ELSE 'the traits ' || b.name || ' and ' || b.shadowed_by || ' of one message both give the attribute '
                 || b.code || ': this value is not applied, the later one in the message (' || b.shadowed_by
                 || ') stands for it' END,
       b.seq, e.message_id, e.source, ?
FROM b_trait_values AS b JOIN events AS e ON e.seq = b.seq
WHERE (b.code = '' OR b.shadowed_by IS NOT NULL)
  AND e.seq IN (SELECT seq FROM b_trait_values WHERE code = '' OR shadowed_by IS NOT NULL)
""")
# Which codes came from nesting under which trait (address_city under address), so that sending the whole object
# as null removes its parts. Whichever profile sent it; a code may have several parents (a_b.c and a.b_c).
RECORD_TRAIT_PARENTS = parse("""
INSERT INTO trait_parents (code, parent)
SELECT DISTINCT code, parent FROM b_trait_values
WHERE parent IS NOT NULL AND parent <> '' AND code <> '' AND code <> parent
ON CONFLICT DO NOTHING
""")
# The batch's trait values, where an object sent as null has the last word over its parts:
# - a removal of every known part of an object sent as null ({"address": null} removes address_city...) at that
#   event's time, unless the same event names the part too, or the part is calculated (never set by events);
# - a part older than its object's removal already on the profile (a late event) is left out, so that it does not
#   come back (whether the part was known at the removal or not: the log read in any order gives one result).
STAGE_TRAIT_CHANGES = parse("""
CREATE OR REPLACE TEMP TABLE b_traits AS
SELECT v.profile_id, v.timestamp, v.seq, v.code, v.value, v.type FROM b_trait_values AS v
WHERE v.code <> '' AND v.shadowed_by IS NULL AND (v.parent IS NULL OR NOT EXISTS (
    SELECT 1 FROM profile_traits AS t WHERE t.profile_id = v.profile_id AND t.key = v.parent AND t.value IS NULL
      AND (t.updated_at > v.timestamp OR (t.updated_at = v.timestamp AND t.seq > v.seq))))
UNION ALL
SELECT v.profile_id, v.timestamp, v.seq, p.code, CAST('null' AS JSON), 'NULL'
FROM b_trait_values AS v JOIN trait_parents AS p ON p.parent = v.code
WHERE v.type = 'NULL' AND v.parent IS NULL AND v.code <> '' AND v.shadowed_by IS NULL
  AND NOT EXISTS (SELECT 1 FROM b_trait_values AS o WHERE o.seq = v.seq AND o.code = p.code)
  AND p.code NOT IN (SELECT code FROM attributes WHERE calculated)
""")
# Each trait value checked against its attribute: coerced to the attribute's type ("42" into an integer is fine,
# "abc" is not) and its validation (enum values, min/max, max_length, regex). ``problem`` says why a value is not
# applied; ``coerced`` is the JSON text stored. A null (removal) is always fine.
# Text is read as a number only when it is written as one in decimals: DuckDB's own casts also take "nan", "inf"
# (and "1e400" as inf), which are no JSON and left the profile unreadable, and round "12.5" into the integer 13.
# A whole double is an integer (JSON does not tell 10.0 from 10; pandas writes an integer column with a gap as
# floats) up to 2^53, past which a double no longer holds every integer.
_TEXT = "json_extract_string(t.value, '$')"
_DOUBLE = f"TRY_CAST({_TEXT} AS DOUBLE)"
_WHOLE_TEXT = f"regexp_full_match(trim({_TEXT}), '[+-]?[0-9]+([.]0*)?')"
_NUMBER_TEXT = f"regexp_full_match(trim({_TEXT}), '[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?')"
# Whole text up to JSON's largest integer, 2^64 - 1, as the number itself takes it (a 20-digit order number in a
# CSV, or Portrait's own export of one, is text): read as a HUGEINT, as a BIGINT would stop at 2^63 - 1.
_HUGE = f"TRY_CAST(split_part(trim({_TEXT}), '.', 1) AS HUGEINT)"
_WHOLE_FROM_TEXT = (f"CASE WHEN {_HUGE} BETWEEN -9223372036854775808 AND 18446744073709551615 "
                    f"THEN CAST({_HUGE} AS VARCHAR) END")
# Only what segment conditions read (constants: no quotes in them). A date is normalized first: the database writes
# year 0 as "0001-01-01 (BC)" and year 10000 with five digits, which conditions read as missing.
_DATE = DATE_TEXT.pattern[1:-1]
_DATETIME = DATETIME_TEXT.pattern[1:-1]
_COERCED = f"""CASE WHEN t.type = 'NULL' THEN NULL
    WHEN a.type IS NULL OR a.type = 'object' THEN t.value
    WHEN a.type IN ('string', 'enum') THEN CASE WHEN t.type = 'VARCHAR' THEN t.value
        WHEN t.type IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'BOOLEAN') AND a.type = 'string'
        THEN CAST(to_json({_TEXT}) AS VARCHAR) END
    WHEN a.type = 'integer' THEN CASE WHEN t.type IN ('BIGINT', 'UBIGINT') THEN t.value
        WHEN t.type = 'DOUBLE' AND {_DOUBLE} = floor({_DOUBLE}) AND abs({_DOUBLE}) <= 9007199254740992
        THEN CAST(CAST({_DOUBLE} AS BIGINT) AS VARCHAR)
        WHEN t.type = 'VARCHAR' AND {_WHOLE_TEXT} THEN {_WHOLE_FROM_TEXT} END
    WHEN a.type = 'number' THEN CASE WHEN t.type IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN t.value
        WHEN t.type = 'VARCHAR' AND {_NUMBER_TEXT} AND isfinite(TRY_CAST(trim({_TEXT}) AS DOUBLE))
        THEN CAST(TRY_CAST(trim({_TEXT}) AS DOUBLE) AS VARCHAR) END
    WHEN a.type = 'boolean' THEN CASE WHEN t.type = 'BOOLEAN' THEN t.value
        WHEN lower(trim({_TEXT})) IN ('true', 'yes', '1') THEN 'true'
        WHEN lower(trim({_TEXT})) IN ('false', 'no', '0') THEN 'false' END
    WHEN a.type = 'date' THEN CASE WHEN t.type = 'VARCHAR'
        AND regexp_full_match(CAST(TRY_CAST({_TEXT} AS DATE) AS VARCHAR), '{_DATE}')
        THEN CAST(to_json(CAST(TRY_CAST({_TEXT} AS DATE) AS VARCHAR)) AS VARCHAR) END
    WHEN a.type = 'datetime' THEN CASE WHEN t.type = 'VARCHAR' AND regexp_full_match({_TEXT}, '{_DATETIME}')
        AND year(CAST(TRY_CAST({_TEXT} AS TIMESTAMPTZ) AS TIMESTAMP)) BETWEEN 1 AND 9999 THEN t.value END
    WHEN a.type = 'list' THEN CASE WHEN t.type = 'ARRAY' THEN t.value END
    END"""
_RULE = "json_extract_string(c.validation, '$.{0}')"
_PROBLEM = f"""CASE WHEN c.calculated THEN c.code || ' is calculated by Portrait; values sent in events are not applied'
    WHEN c.type = 'NULL' THEN NULL
    WHEN c.attribute_type IS NULL
        THEN 'no attribute ' || c.code || ' is defined (unknown traits are not applied in strict mode)'
    WHEN c.coerced IS NULL THEN 'expected ' || c.attribute_type || ', got ' || lower(c.type)
    WHEN {_RULE.format('values')} IS NOT NULL
         AND NOT list_contains(CAST(json_extract(c.validation, '$.values') AS VARCHAR[]),
                               json_extract_string(c.coerced, '$'))
        THEN 'not one of the allowed values ' || {_RULE.format('values')}
    WHEN {_RULE.format('min')} IS NOT NULL AND TRY_CAST(c.coerced AS DOUBLE) < CAST({_RULE.format('min')} AS DOUBLE)
        THEN 'below the minimum ' || {_RULE.format('min')}
    WHEN {_RULE.format('max')} IS NOT NULL AND TRY_CAST(c.coerced AS DOUBLE) > CAST({_RULE.format('max')} AS DOUBLE)
        THEN 'above the maximum ' || {_RULE.format('max')}
    WHEN {_RULE.format('max_length')} IS NOT NULL
         AND length(json_extract_string(c.coerced, '$')) > CAST({_RULE.format('max_length')} AS INTEGER)
        THEN 'longer than ' || {_RULE.format('max_length')} || ' characters'
    WHEN {_RULE.format('regex')} IS NOT NULL
         AND NOT regexp_full_match(json_extract_string(c.coerced, '$'), {_RULE.format('regex')})
        THEN 'does not match ' || {_RULE.format('regex')}
    END"""
CHECK_TRAITS = parse(f"""
CREATE OR REPLACE TEMP TABLE b_checked AS
WITH c AS (
    SELECT t.*, a.type AS attribute_type, a.validation, coalesce(a.merge_strategy, 'latest') AS strategy,
           coalesce(a.calculated AND a.definition IS NOT NULL, FALSE) AS calculated, {_COERCED} AS coerced
    FROM b_traits AS t LEFT JOIN attributes AS a ON a.code = t.code
)
SELECT c.*, {_PROBLEM} AS problem FROM c
""")
# Trait values to combine into profile_traits, from a batch (checked values) or from profiles merged away:
# trait_input(profile_id, code, value, updated_at, seq, strategy). Each attribute's merge strategy says how a new
# value combines with the stored one; the same combination folds a merged profile's values into the survivor.
BATCH_TRAIT_INPUT = parse("""
CREATE OR REPLACE TEMP TABLE trait_input AS
SELECT profile_id, code, coerced AS value, timestamp AS updated_at, seq, strategy FROM b_checked WHERE problem IS NULL
""")
_COMBINE_INTO = "INSERT INTO profile_traits (profile_id, key, value, updated_at, seq) "
_NEWER = (
    "ON CONFLICT (profile_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
    "seq = excluded.seq WHERE excluded.updated_at > profile_traits.updated_at "
    "OR (excluded.updated_at = profile_traits.updated_at AND excluded.seq > profile_traits.seq)"
)
_NUM = "TRY_CAST(CAST({0} AS VARCHAR) AS {1})"
STRATEGIES_PRESENT = parse("SELECT DISTINCT strategy FROM trait_input")
STRATEGY_ORDER = ("latest", "earliest", "max", "min", "sum", "union")  # the order of UPSERT_BY_STRATEGY
UPSERT_BY_STRATEGY = [
    # latest (default): the value with the latest event time wins; null removes.
    parse(_COMBINE_INTO + "SELECT profile_id, code, arg_max_null(value, (updated_at, seq)), max(updated_at), "
          "arg_max(seq, (updated_at, seq)) FROM trait_input WHERE strategy = 'latest' GROUP BY profile_id, code "
          + _NEWER),
    # earliest: the first value ever seen stays.
    parse(_COMBINE_INTO + "SELECT profile_id, code, arg_min(value, (updated_at, seq)), min(updated_at), "
          "arg_min(seq, (updated_at, seq)) FROM trait_input WHERE strategy = 'earliest' AND value IS NOT NULL "
          "GROUP BY profile_id, code ON CONFLICT (profile_id, key) DO UPDATE SET value = excluded.value, "
          "updated_at = excluded.updated_at, seq = excluded.seq WHERE profile_traits.value IS NULL "
          "OR excluded.updated_at < profile_traits.updated_at "
          "OR (excluded.updated_at = profile_traits.updated_at AND excluded.seq < profile_traits.seq)"),
    # max / min: the largest / smallest number seen.
    *[parse(_COMBINE_INTO + f"SELECT profile_id, code, arg_{fn}(value, {_NUM.format('value', 'DOUBLE')}), "
            "max(updated_at), max(seq) FROM trait_input "
            f"WHERE strategy = '{fn}' AND {_NUM.format('value', 'DOUBLE')} IS NOT NULL GROUP BY profile_id, code "
            "ON CONFLICT (profile_id, key) DO UPDATE SET value = CASE WHEN profile_traits.value IS NULL OR "
            f"{_NUM.format('excluded.value', 'DOUBLE')} {op} {_NUM.format('profile_traits.value', 'DOUBLE')} "
            "THEN excluded.value ELSE profile_traits.value END, "
            "updated_at = greatest(excluded.updated_at, profile_traits.updated_at), "
            "seq = greatest(excluded.seq, profile_traits.seq)")
      for fn, op in (("max", ">"), ("min", "<"))],
    # sum: values add up (integers stay integers).
    parse(_COMBINE_INTO + "SELECT profile_id, code, CASE WHEN count(TRY_CAST(value AS BIGINT)) = count(value) "
          "THEN CAST(sum(TRY_CAST(value AS BIGINT)) AS VARCHAR) ELSE CAST(sum(TRY_CAST(value AS DOUBLE)) AS VARCHAR) "
          "END, max(updated_at), max(seq) FROM trait_input WHERE strategy = 'sum' AND "
          "TRY_CAST(value AS DOUBLE) IS NOT NULL GROUP BY profile_id, code "
          "ON CONFLICT (profile_id, key) DO UPDATE SET value = coalesce("
          f"CAST({_NUM.format('profile_traits.value', 'BIGINT')} + {_NUM.format('excluded.value', 'BIGINT')} "
          "AS VARCHAR), "
          f"CAST({_NUM.format('profile_traits.value', 'DOUBLE')} + {_NUM.format('excluded.value', 'DOUBLE')} "
          "AS VARCHAR), CAST(excluded.value AS VARCHAR)), "
          "updated_at = greatest(excluded.updated_at, profile_traits.updated_at), "
          "seq = greatest(excluded.seq, profile_traits.seq)"),
    # union: lists collect every distinct element seen (sorted).
    parse(_COMBINE_INTO + "SELECT profile_id, code, CAST(to_json(list_sort(list_distinct(flatten(list("
          "TRY_CAST(CAST(value AS JSON) AS VARCHAR[])))))) AS VARCHAR), max(updated_at), max(seq) FROM trait_input "
          "WHERE strategy = 'union' AND TRY_CAST(CAST(value AS JSON) AS VARCHAR[]) IS NOT NULL "
          "GROUP BY profile_id, code ON CONFLICT (profile_id, key) DO UPDATE SET value = CAST(to_json(list_sort("
          "list_distinct(list_concat(coalesce(TRY_CAST(profile_traits.value AS VARCHAR[]), []), "
          "TRY_CAST(excluded.value AS VARCHAR[]))))) AS VARCHAR), "
          "updated_at = greatest(excluded.updated_at, profile_traits.updated_at), "
          "seq = greatest(excluded.seq, profile_traits.seq)"),
]
# Values that break their attribute's rules are not applied but listed (the event stays in the log, so they can be
# reprocessed once the schema is fixed). Params: detected-at time.
RECORD_QUALITY = parse("""
INSERT INTO data_quality (profile_id, attribute, raw_value, reason, seq, message_id, source, detected_at)
SELECT b.profile_id, b.code, b.value, b.problem, b.seq, e.message_id, e.source, ?
FROM b_checked AS b JOIN events AS e ON e.seq = b.seq WHERE b.problem IS NOT NULL AND e.seq IN (
    SELECT seq FROM b_checked WHERE problem IS NOT NULL)
""")
COUNT_PROBLEMS = parse("SELECT count(*) FROM b_checked WHERE problem IS NOT NULL")
# A trait no attribute describes yet becomes a custom attribute, typed from its first value (policy "infer").
# Params: created-at time (twice).
_INFER = "CASE arg_min(type, seq) " + " ".join(
    f"WHEN '{json_type}' THEN '{kind}'" for json_type, kind in INFERRED_TYPES.items()) + " ELSE 'string' END"
# Traits whose codes read as personal data (attributes.PERSONAL_CODE) become attributes marked personal.
# Params: the configured identity traits' codes, created-at, updated-at.
# From every usable trait value of the batch, also a part left out as older than its object's removal (see
# STAGE_TRAIT_CHANGES): read from b_traits, whether such a part made its attribute depended on the batching (in one
# batch with the removal it did, in a later one it did not; found by the processor's property tests).
AUTO_CREATE_ATTRIBUTES = parse(f"""
INSERT INTO attributes (code, name, type, description, is_personal_info, standard, auto_created, created_at,
                        updated_at)
SELECT code, code, {_INFER}, 'Created automatically from incoming traits',
       regexp_matches(code, '{PERSONAL_CODE}') OR list_contains(CAST(? AS VARCHAR[]), code), FALSE, TRUE, ?, ?
FROM b_trait_values WHERE type <> 'NULL' AND code <> '' AND shadowed_by IS NULL
  AND code NOT IN (SELECT code FROM attributes)
GROUP BY code
ON CONFLICT DO NOTHING
""")
# Events none of whose identifiers is usable (all empty or blocked) are kept in the log and listed as rejected.
# Params: processed-at time.
REJECT_UNIDENTIFIED = parse("""
INSERT INTO rejected_events (received_at, code, reason, source, message_id, payload)
SELECT ?, 'no_identifier', 'every identifier of the message is empty or a blocked value', 'processor',
       b.message_id, json_object('seq', b.seq, 'userId', b.user_id, 'anonymousId', b.anonymous_id,
                                 'previousId', b.previous_id)::VARCHAR
FROM b_events AS b WHERE b.seq NOT IN (SELECT seq FROM b_assign)
""")
DROP_BATCH_TABLES = parse_many(
    "DROP TABLE IF EXISTS b_ids_raw; DROP TABLE IF EXISTS b_owned; DROP TABLE IF EXISTS b_events; "
    "DROP TABLE IF EXISTS b_assign; DROP TABLE IF EXISTS b_traits; DROP TABLE IF EXISTS b_trait_values; "
    "DROP TABLE IF EXISTS b_checked; "
    "DROP TABLE IF EXISTS trait_input; DROP TABLE IF EXISTS b_new; DROP TABLE IF EXISTS b_attach"
)
# An event the processor cannot handle is set aside: listed as rejected with the error, kept in the log.
# Params: processed-at time, reason, seq.
REJECT_FAILED = parse("""
INSERT INTO rejected_events (received_at, code, reason, source, message_id, payload)
SELECT ?, 'processing_failed', ?, 'processor', message_id,
       json_object('seq', seq, 'type', type, 'userId', user_id, 'anonymousId', anonymous_id)::VARCHAR
FROM events WHERE seq = ?
""")

# Rebuilding every profile's traits from the log (after an attribute's type or rules changed): the events'
# current owners stand in for the batch assignment, then the usual trait statements run over the whole log.
REBUILD_ASSIGN = parse("CREATE OR REPLACE TEMP TABLE b_assign AS SELECT seq, profile_id FROM event_profiles")
# Calculated values are not read from the log, so a recheck leaves them: the active ones are computed again after
# it; a deprecated one keeps its last values (docs/calculated.md), as does one that cannot be computed now.
CLEAR_TRAITS = parse("DELETE FROM profile_traits WHERE key NOT IN (SELECT code FROM attributes WHERE calculated)")
CLEAR_QUALITY = parse("DELETE FROM data_quality")
COUNT_CHECKED = parse("SELECT count(*) FROM b_trait_values")  # the values read (not the removals they imply)
