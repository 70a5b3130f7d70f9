"""The schema: numbered migrations, applied in order at start (never edit a released one: add the next number),
and the few statements the store itself runs."""

from __future__ import annotations

from sqlglot import exp

from portrait.sql import parse, parse_many

# Each version runs in one transaction and the store checkpoints after migrating. DuckDB 1.5.5 cannot replay an
# ALTER TABLE ... ADD COLUMN from its write-ahead log on a table with a nextval() default (rejected_events,
# segments...): copy such a table instead, as migration 15 does for the event log.
# Trait name -> attribute code as migration 17 computed it (a copy, not sql.processor's: a migration is a snapshot).
_CODE_17 = ("trim(regexp_replace(lower(regexp_replace(strip_accents(replace({0}, 'ß', 'ss')), '([a-z0-9])([A-Z])', "
            "'\\1_\\2', 'g')), '[^a-z0-9_]+', '_', 'g'), '_')")
MIGRATIONS: dict[int, list[exp.Expr]] = {
    1: parse_many(
        """
        CREATE SEQUENCE IF NOT EXISTS event_seq START 1;
        CREATE TABLE IF NOT EXISTS events (
            seq BIGINT NOT NULL DEFAULT nextval('event_seq'),
            message_id VARCHAR PRIMARY KEY,
            type VARCHAR NOT NULL,
            event VARCHAR,
            user_id VARCHAR,
            anonymous_id VARCHAR,
            previous_id VARCHAR,
            group_id VARCHAR,
            timestamp TIMESTAMP NOT NULL,
            original_timestamp TIMESTAMP,
            sent_at TIMESTAMP,
            received_at TIMESTAMP NOT NULL,
            -- JSON text, stored as VARCHAR: a JSON column would parse every value again on insert.
            properties VARCHAR,
            traits VARCHAR,
            context VARCHAR,
            source VARCHAR NOT NULL,
            ip VARCHAR,  -- the sender's address; shown as context.ip when the message carried none
            identity_hints VARCHAR  -- raw email/phone/custom identifiers found at ingestion (see identity.py)
        );
        CREATE INDEX IF NOT EXISTS events_seq ON events (seq);
        CREATE SEQUENCE IF NOT EXISTS rejected_seq START 1;
        CREATE TABLE IF NOT EXISTS rejected_events (
            id BIGINT NOT NULL DEFAULT nextval('rejected_seq'),
            received_at TIMESTAMP NOT NULL,
            code VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            source VARCHAR,
            message_id VARCHAR,
            payload VARCHAR
        );
        CREATE TABLE IF NOT EXISTS profiles (
            profile_id VARCHAR PRIMARY KEY,
            created_seq BIGINT NOT NULL,
            created_at TIMESTAMP NOT NULL  -- when Portrait created it; first/last seen come from its events
        );
        CREATE TABLE IF NOT EXISTS identities (
            identity_key VARCHAR PRIMARY KEY,
            type VARCHAR NOT NULL,
            value VARCHAR NOT NULL,
            profile_id VARCHAR NOT NULL,
            first_seen TIMESTAMP,
            seq BIGINT
        );
        CREATE INDEX IF NOT EXISTS identities_profile ON identities (profile_id);
        CREATE TABLE IF NOT EXISTS profile_traits (
            profile_id VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            value JSON,
            updated_at TIMESTAMP NOT NULL,
            seq BIGINT NOT NULL,
            PRIMARY KEY (profile_id, key)
        );
        CREATE INDEX IF NOT EXISTS profile_traits_profile ON profile_traits (profile_id);
        CREATE TABLE IF NOT EXISTS event_profiles (
            seq BIGINT NOT NULL,
            profile_id VARCHAR NOT NULL,
            timestamp TIMESTAMP NOT NULL,
            event_type VARCHAR NOT NULL,
            event VARCHAR
        );
        CREATE INDEX IF NOT EXISTS event_profiles_profile ON event_profiles (profile_id);
        CREATE TABLE IF NOT EXISTS profile_aliases (
            merged_id VARCHAR PRIMARY KEY,
            profile_id VARCHAR NOT NULL
        );
        CREATE TABLE IF NOT EXISTS merges (
            profile_id VARCHAR NOT NULL,
            merged_id VARCHAR NOT NULL,
            seq BIGINT NOT NULL,
            message_id VARCHAR NOT NULL,
            identifiers JSON,
            merged_at TIMESTAMP,
            processed_at TIMESTAMP
        );
        CREATE INDEX IF NOT EXISTS merges_profile ON merges (profile_id);
        CREATE TABLE IF NOT EXISTS identity_conflicts (
            seq BIGINT NOT NULL,
            message_id VARCHAR NOT NULL,
            profile_id VARCHAR,
            dropped JSON,
            processed_at TIMESTAMP
        );
        CREATE INDEX IF NOT EXISTS identity_conflicts_profile ON identity_conflicts (profile_id);
        CREATE TABLE IF NOT EXISTS counters (
            name VARCHAR PRIMARY KEY,
            value BIGINT NOT NULL
        );
        INSERT INTO counters (name, value) VALUES ('events_received', 0), ('events_rejected', 0);
        -- The processor's own counters (watermark, events processed): a separate table, so the writer's and the
        -- processor's commits never touch the same table.
        CREATE TABLE IF NOT EXISTS processor_state (
            name VARCHAR PRIMARY KEY,
            value BIGINT NOT NULL
        );
        INSERT INTO processor_state (name, value) VALUES ('watermark', 0), ('events_processed', 0);
        CREATE TABLE IF NOT EXISTS api_keys (
            key_hash VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        """
    ),
    2: parse_many(
        """
        CREATE TABLE IF NOT EXISTS attributes (
            code VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL,
            type VARCHAR NOT NULL,
            description VARCHAR NOT NULL DEFAULT '',
            unit VARCHAR,
            is_personal_info BOOLEAN NOT NULL DEFAULT FALSE,
            calculate_analytics BOOLEAN NOT NULL DEFAULT FALSE,
            calculated BOOLEAN NOT NULL DEFAULT FALSE,
            standard BOOLEAN NOT NULL DEFAULT FALSE,
            merge_strategy VARCHAR NOT NULL DEFAULT 'latest',
            validation VARCHAR NOT NULL DEFAULT '{}',
            status VARCHAR NOT NULL DEFAULT 'active',
            auto_created BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL
        );
        """
    ),
    3: parse_many(
        """
        CREATE SEQUENCE IF NOT EXISTS data_quality_seq START 1;
        CREATE TABLE IF NOT EXISTS data_quality (
            id BIGINT NOT NULL DEFAULT nextval('data_quality_seq'),
            profile_id VARCHAR,
            attribute VARCHAR NOT NULL,
            raw_value VARCHAR,
            reason VARCHAR NOT NULL,
            seq BIGINT,
            message_id VARCHAR,
            source VARCHAR,
            detected_at TIMESTAMP NOT NULL
        );
        """
    ),
    4: parse_many(
        """
        CREATE TABLE IF NOT EXISTS sources (
            name VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,
            url VARCHAR NOT NULL,
            query VARCHAR NOT NULL,
            cursor_column VARCHAR,
            every_seconds INTEGER,
            mapping VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            cursor_value VARCHAR,
            status VARCHAR NOT NULL DEFAULT 'never',
            last_started_at TIMESTAMP,
            last_finished_at TIMESTAMP,
            last_error VARCHAR,
            last_rows BIGINT NOT NULL DEFAULT 0,
            total_rows BIGINT NOT NULL DEFAULT 0
        );
        """
    ),
    5: parse_many(
        """
        CREATE SEQUENCE IF NOT EXISTS segment_seq START 1;
        CREATE TABLE IF NOT EXISTS segments (
            id BIGINT PRIMARY KEY DEFAULT nextval('segment_seq'),
            name VARCHAR NOT NULL UNIQUE,
            kind VARCHAR NOT NULL,  -- dynamic (a condition) or static (an uploaded list of identities)
            condition VARCHAR,  -- the JSON form, for dynamic segments
            description VARCHAR NOT NULL DEFAULT '',
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            counted_at TIMESTAMP  -- last full recount
        );
        -- Current members; history keeps every entry and exit; sizes keep the size at each recount.
        CREATE TABLE IF NOT EXISTS segment_members (
            segment_id BIGINT NOT NULL,
            profile_id VARCHAR NOT NULL,
            entered_at TIMESTAMP NOT NULL,
            PRIMARY KEY (segment_id, profile_id)
        );
        CREATE INDEX IF NOT EXISTS segment_members_profile ON segment_members (profile_id);
        CREATE SEQUENCE IF NOT EXISTS segment_history_seq START 1;
        CREATE TABLE IF NOT EXISTS segment_history (
            id BIGINT NOT NULL DEFAULT nextval('segment_history_seq'),
            segment_id BIGINT NOT NULL,
            profile_id VARCHAR NOT NULL,
            change VARCHAR NOT NULL,  -- entered or exited
            at TIMESTAMP NOT NULL
        );
        CREATE INDEX IF NOT EXISTS segment_history_profile ON segment_history (profile_id);
        CREATE TABLE IF NOT EXISTS segment_sizes (
            segment_id BIGINT NOT NULL,
            at TIMESTAMP NOT NULL,
            size BIGINT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS static_segment_identities (
            segment_id BIGINT NOT NULL,
            identity_key VARCHAR NOT NULL  -- type:value, normalized as identities are
        );
        -- The segment thread's own state (its own table: its commits never touch the processor's).
        CREATE TABLE IF NOT EXISTS segment_state (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL);
        INSERT INTO segment_state (name, value) VALUES ('watermark', 0);
        """
    ),
    6: parse_many(
        """
        -- Calculated attributes keep their definition (the text form, see conditions/calculations.py).
        ALTER TABLE attributes ADD COLUMN definition VARCHAR;
        """
    ),
    7: parse_many(
        """
        -- Keys get a public id (to list, revoke and rotate them by), scopes, and a revocation time.
        ALTER TABLE api_keys ADD COLUMN id VARCHAR;
        ALTER TABLE api_keys ADD COLUMN scopes VARCHAR;
        ALTER TABLE api_keys ADD COLUMN revoked_at TIMESTAMP;
        UPDATE api_keys SET id = substr(key_hash, 1, 12),
            scopes = CASE kind WHEN 'admin' THEN 'read,admin,pii:read' WHEN 'write' THEN 'ingest' ELSE 'read' END;
        -- Append-only: Portrait never updates or deletes a row of it.
        CREATE SEQUENCE IF NOT EXISTS audit_seq START 1;
        CREATE TABLE IF NOT EXISTS audit_log (
            id BIGINT NOT NULL DEFAULT nextval('audit_seq'),
            at TIMESTAMP NOT NULL,
            key_id VARCHAR,
            key_name VARCHAR,
            action VARCHAR NOT NULL,
            target VARCHAR,
            profile_id VARCHAR,
            status INTEGER,
            detail VARCHAR
        );
        """
    ),
    8: parse_many(
        """
        -- Consent statements found in events (context.consent): one row per purpose per event. Whose they are
        -- comes from event_profiles (kept right through merges); the latest by event time is the current status.
        CREATE TABLE IF NOT EXISTS consent_records (
            seq BIGINT NOT NULL,
            purpose VARCHAR NOT NULL,
            status VARCHAR NOT NULL,  -- granted or denied
            legal_basis VARCHAR,
            at TIMESTAMP NOT NULL,
            source VARCHAR
        );
        CREATE INDEX IF NOT EXISTS consent_records_seq ON consent_records (seq);
        """
    ),
    9: parse_many(
        """
        -- Data-subject requests (access, erase): they survive restarts; an erase request keeps only a hash of the
        -- identity it named, so the request itself is no trace of the person.
        CREATE TABLE IF NOT EXISTS privacy_requests (
            id VARCHAR PRIMARY KEY,
            type VARCHAR NOT NULL,
            identity VARCHAR,
            identity_hash VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            requested_by VARCHAR,
            created_at TIMESTAMP NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            result VARCHAR,
            error VARCHAR
        );
        -- Identifiers of erased people, hashed: later events carrying one are dropped (and counted), not stored.
        CREATE TABLE IF NOT EXISTS suppressed_identities (
            key_hash VARCHAR PRIMARY KEY,
            request_id VARCHAR,
            suppressed_at TIMESTAMP NOT NULL
        );
        INSERT INTO counters (name, value) VALUES ('events_suppressed', 0);
        """
    ),
    10: parse_many(
        """
        -- The event log without indexes: DuckDB rewrites every index in full at each checkpoint and slows appends
        -- as an index grows, so duplicates are now found by the writer (portrait.dedup) instead of a primary key
        -- on message_id, and batches are found by seq through the row groups' min/max, which needs no index.
        CREATE TABLE events_unindexed (
            seq BIGINT NOT NULL DEFAULT nextval('event_seq'),
            message_id VARCHAR NOT NULL,
            type VARCHAR NOT NULL,
            event VARCHAR,
            user_id VARCHAR,
            anonymous_id VARCHAR,
            previous_id VARCHAR,
            group_id VARCHAR,
            timestamp TIMESTAMP NOT NULL,
            original_timestamp TIMESTAMP,
            sent_at TIMESTAMP,
            received_at TIMESTAMP NOT NULL,
            properties VARCHAR,
            traits VARCHAR,
            context VARCHAR,
            source VARCHAR NOT NULL,
            ip VARCHAR,
            identity_hints VARCHAR
        );
        INSERT INTO events_unindexed SELECT * FROM events ORDER BY seq;
        DROP TABLE events;
        ALTER TABLE events_unindexed RENAME TO events;
        """
    ),
    11: parse_many(
        """
        -- What retention keeps of the raw events it deletes: their messageIds, so that an SDK retry, a re-imported
        -- file or a source re-read of an expired event is still a duplicate and is not stored and applied again.
        CREATE TABLE IF NOT EXISTS expired_events (
            seq BIGINT NOT NULL,
            message_id VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL
        );
        """
    ),
    12: parse_many(
        """
        -- Audience Entered/Exited events waiting to be written to the log: recorded in the transaction that changes
        -- membership, removed once the events are committed, so a crash between the two loses none (the messageId
        -- is fixed here, so sending them again after a crash stores no duplicate).
        CREATE TABLE IF NOT EXISTS audience_outbox (
            message_id VARCHAR PRIMARY KEY,
            segment_id BIGINT NOT NULL,
            segment VARCHAR NOT NULL,
            change VARCHAR NOT NULL,
            profile_id VARCHAR NOT NULL,
            at TIMESTAMP NOT NULL
        );
        """
    ),
    13: parse_many(
        """
        -- Merges and identity conflicts recorded on a profile that was merged away later were left filed under its
        -- old id, so the survivor did not list them; new merges now move them along (REASSIGN_HISTORY).
        UPDATE merges SET profile_id = a.profile_id FROM profile_aliases AS a WHERE merges.profile_id = a.merged_id;
        UPDATE identity_conflicts SET profile_id = a.profile_id FROM profile_aliases AS a
        WHERE identity_conflicts.profile_id = a.merged_id;
        """
    ),
    14: parse_many(
        """
        -- Consent statements filed under their profile, so that reading one profile's consents is an index lookup
        -- (through event_profiles it scanned every statement); merges move them along (REASSIGN_HISTORY).
        -- (The index comes first: DuckDB creates no index over outstanding updates in the same transaction.)
        ALTER TABLE consent_records ADD COLUMN profile_id VARCHAR;
        CREATE INDEX IF NOT EXISTS consent_records_profile ON consent_records (profile_id);
        UPDATE consent_records SET profile_id = ep.profile_id FROM event_profiles AS ep
        WHERE ep.seq = consent_records.seq;
        """
    ),
    15: parse_many(
        """
        -- The top-level fields of a message without a column of their own (integrations, channel, a page's
        -- category...), as JSON: nothing a client sends is dropped. The log is copied rather than altered: DuckDB
        -- 1.5 cannot replay an ALTER TABLE ... ADD COLUMN from its write-ahead log when the table has a
        -- nextval() default, so a crash before the next checkpoint left a database that would not open. The
        -- writer numbers events itself, so the copy has no default (and later changes can alter it).
        CREATE TABLE events_v15 (
            seq BIGINT NOT NULL,
            message_id VARCHAR NOT NULL,
            type VARCHAR NOT NULL,
            event VARCHAR,
            user_id VARCHAR,
            anonymous_id VARCHAR,
            previous_id VARCHAR,
            group_id VARCHAR,
            timestamp TIMESTAMP NOT NULL,
            original_timestamp TIMESTAMP,
            sent_at TIMESTAMP,
            received_at TIMESTAMP NOT NULL,
            properties VARCHAR,
            traits VARCHAR,
            context VARCHAR,
            source VARCHAR NOT NULL,
            ip VARCHAR,
            identity_hints VARCHAR,
            extra VARCHAR
        );
        INSERT INTO events_v15 SELECT *, NULL FROM events ORDER BY seq;
        DROP TABLE events;
        ALTER TABLE events_v15 RENAME TO events;
        """
    ),
    16: parse_many(
        """
        -- When a profile was first and last seen and how many events it has, kept up to date by the processor
        -- (and merges, and erasure) so that reading a profile is one row: computed from event_profiles on every
        -- read, it read every event of the profile (a scan of the whole table for a profile with thousands).
        CREATE TABLE IF NOT EXISTS profile_activity (
            profile_id VARCHAR PRIMARY KEY,
            first_seen TIMESTAMP NOT NULL,
            last_seen TIMESTAMP NOT NULL,
            events BIGINT NOT NULL
        );
        INSERT INTO profile_activity
        SELECT profile_id, min(timestamp), max(timestamp), count(*) FROM event_profiles GROUP BY profile_id;
        """
    ),
    17: parse_many(
        f"""
        -- Which trait codes came from nesting under which trait (address_city under address): sending the whole
        -- object as null removes its parts. Filled from the identify events already in the log.
        CREATE TABLE IF NOT EXISTS trait_parents (
            code VARCHAR NOT NULL,
            parent VARCHAR NOT NULL,
            PRIMARY KEY (code, parent)
        );
        INSERT INTO trait_parents
        SELECT DISTINCT code, parent FROM (
            SELECT {_CODE_17.format("j.key || '.' || n.key")} AS code, {_CODE_17.format('j.key')} AS parent
            FROM events AS e, json_each(e.traits) AS j, json_each(j.value) AS n
            WHERE e.type = 'identify' AND j.type = 'OBJECT'
        ) WHERE code <> '' AND parent <> '' AND code <> parent;
        """
    ),
    18: parse_many(
        """
        -- An identify's traits are its traits over its context.traits (spec.MessageReader), where RudderStack's SDKs
        -- send them. Identify events logged before carry them in context.traits only: the log's traits column
        -- takes them (context stays as sent). `portrait attributes recheck` then applies them to profiles.
        UPDATE events SET traits = CAST(json_extract(context, '$.traits') AS VARCHAR)
        WHERE type = 'identify' AND (traits IS NULL OR traits = '{}') AND json_type(context, '$.traits') = 'OBJECT'
          AND CAST(json_extract(context, '$.traits') AS VARCHAR) <> '{}';
        """
    ),
    19: parse_many(
        """
        -- Data-quality issues stayed filed under the profile they were found on after it was merged away, so the
        -- list named a profile id that no longer exists; merges now move them along too (REASSIGN_HISTORY).
        UPDATE data_quality SET profile_id = a.profile_id FROM profile_aliases AS a
        WHERE data_quality.profile_id = a.merged_id;
        """
    ),
    20: parse_many(
        f"""
        -- Migration 17 as first released keyed trait_parents by code alone (one parent per code, the others
        -- dropped), and was changed in place afterwards, so databases that ran that first version kept the old key.
        -- Rebuilt with the (code, parent) key everywhere, from what it holds and from the log.
        CREATE TABLE trait_parents_20 (code VARCHAR NOT NULL, parent VARCHAR NOT NULL, PRIMARY KEY (code, parent));
        INSERT INTO trait_parents_20
        SELECT DISTINCT code, parent FROM (
            SELECT code, parent FROM trait_parents
            UNION ALL
            SELECT {_CODE_17.format("j.key || '.' || n.key")} AS code, {_CODE_17.format('j.key')} AS parent
            FROM events AS e, json_each(e.traits) AS j, json_each(j.value) AS n
            WHERE e.type = 'identify' AND j.type = 'OBJECT'
        ) WHERE code <> '' AND parent <> '' AND code <> parent;
        DROP TABLE trait_parents;
        ALTER TABLE trait_parents_20 RENAME TO trait_parents;
        """
    ),
    21: parse_many(
        """
        -- Migration 18 gave context.traits to identify events logged with no traits of their own; events logged
        -- with both (before both applied) get them merged too: traits over context.traits, one level, as
        -- spec.MessageReader reads them now. `portrait attributes recheck` then applies them to profiles.
        UPDATE events SET traits = m.merged
        FROM (
            SELECT seq, CAST(to_json(map_from_entries(list((key, value) ORDER BY side, pos))) AS VARCHAR) AS merged
            FROM (
                SELECT e.seq, c.key, c.value, 0 AS side, c.id AS pos
                FROM events AS e, json_each(json_extract(e.context, '$.traits')) AS c
                WHERE e.type = 'identify' AND json_type(e.context, '$.traits') = 'OBJECT'
                  AND json_type(e.traits) = 'OBJECT' AND c.key NOT IN (SELECT t.key FROM json_each(e.traits) AS t)
                UNION ALL
                SELECT e.seq, t.key, t.value, 1 AS side, t.id AS pos
                FROM events AS e, json_each(e.traits) AS t
                WHERE e.type = 'identify' AND json_type(e.context, '$.traits') = 'OBJECT'
                  AND json_type(e.traits) = 'OBJECT'
            ) GROUP BY seq HAVING bool_or(side = 0)
        ) AS m
        WHERE events.seq = m.seq;
        """
    ),
    22: parse_many(
        """
        -- Messages left out as copies of one the log holds (same messageId): counted, so that a different message
        -- sent with a used id is not gone without a trace.
        INSERT INTO counters (name, value) VALUES ('events_duplicate', 0);
        """
    ),
    23: parse_many(
        """
        -- A database that already holds events was written by an earlier Portrait: its profiles' traits were
        -- derived by the rules of that version (trait codes with accents, objects removed by a null, identify
        -- traits in context.traits...), and stay so until `portrait attributes recheck` (or a profile rebuild)
        -- derives them again; /api/status and the server's start say so meanwhile. A later migration that changes
        -- what the rules derive from events already logged sets it to 1 again.
        INSERT INTO counters (name, value)
        SELECT 'traits_recheck_due', CASE WHEN EXISTS (SELECT 1 FROM events) THEN 1 ELSE 0 END;
        """
    ),
    24: parse_many(
        """
        -- Earlier versions let a recount or real-time refresh that had read a segment before it was deleted write
        -- members back for it (fixed since: tests/test_segments.py, a segment deleted while it is counted): rows of
        -- a segment that no longer exists. Those members go, with what the same write recorded beside them -- the
        -- history's entry and the Audience Entered still waiting in the outbox, both at the member's entry time --
        -- and the sizes (a deletion removes a segment's sizes, so any left are the race's). The history of a segment
        -- deleted the ordinary way stays, as deleting promises (docs/cli.md).
        DELETE FROM segment_history AS h
        WHERE h.change = 'entered' AND h.segment_id NOT IN (SELECT id FROM segments) AND EXISTS (
            SELECT 1 FROM segment_members AS m
            WHERE m.segment_id = h.segment_id AND m.profile_id = h.profile_id AND m.entered_at = h.at);
        DELETE FROM audience_outbox AS o
        WHERE o.change = 'entered' AND o.segment_id NOT IN (SELECT id FROM segments) AND EXISTS (
            SELECT 1 FROM segment_members AS m
            WHERE m.segment_id = o.segment_id AND m.profile_id = o.profile_id AND m.entered_at = o.at);
        DELETE FROM segment_members WHERE segment_id NOT IN (SELECT id FROM segments);
        DELETE FROM segment_sizes WHERE segment_id NOT IN (SELECT id FROM segments);
        """
    ),
    25: parse_many(
        """
        -- Import jobs (files sent to the server, imported in a thread; portrait.import_jobs), kept here so that a
        -- server restarted during one still answers for it: how far it got before it stopped. report and error are
        -- JSON; a report is kept without its first rejected rows (personal data an erasure would not find here).
        CREATE TABLE IF NOT EXISTS import_jobs (
            id VARCHAR PRIMARY KEY,
            owner VARCHAR NOT NULL,
            filename VARCHAR NOT NULL,
            dry_run BOOLEAN NOT NULL,
            status VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            bytes_total BIGINT NOT NULL,
            bytes_read BIGINT,
            rows BIGINT NOT NULL,
            rows_total BIGINT,
            stored BIGINT NOT NULL,
            upload VARCHAR,
            report VARCHAR,
            error VARCHAR
        );
        """
    ),
}

MIGRATION_TABLE = parse(
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT now())"
)
APPLIED = parse("SELECT version FROM schema_migrations")
# The tables of the open database: one with tables but no schema_migrations was not made by Portrait.
TABLE_NAMES = parse("SELECT table_name FROM duckdb_tables() WHERE NOT temporary AND database_name = current_database()")
RECORD = parse("INSERT INTO schema_migrations (version) VALUES (?)")
CHECKPOINT = parse("CHECKPOINT")
# Tables with an index of their own (CREATE INDEX; see store.duckdb.LARGE_WRITE_ROWS), not temporary ones.
INDEXED_TABLES = parse(
    "SELECT DISTINCT table_name FROM duckdb_indexes() WHERE schema_name <> 'temp' AND database_name <> 'temp'"
)
_CHECKPOINT_THRESHOLD = parse("SET checkpoint_threshold = '256MB'")


def _with_text(template: exp.Expr, text: str) -> exp.Expr:
    """A copy of ``template`` with its first literal replaced by ``text``, quoted (a size, a path)."""
    statement = template.copy()
    statement.find(exp.Literal).replace(exp.Literal.string(text))  # type: ignore[union-attr]
    return statement


def checkpoint_threshold(megabytes: int) -> exp.Expr:
    """How large the write-ahead log may grow before DuckDB writes it into the database file.

    A checkpoint also rewrites every index in full (duckdb/duckdb#24848), so fewer, larger ones cost less overall
    than DuckDB's default of one per 16 MB."""
    return _with_text(_CHECKPOINT_THRESHOLD, f"{int(megabytes)}MB")


UTC_SESSION = parse("SET TimeZone = 'UTC'")
# DuckDB draws a progress bar on standard output for a statement running over 2 s (a rewrite after an erasure, a
# large export): into the server's log, and into a CLI command's answer. Its cursors inherit the setting.
NO_PROGRESS_BAR = parse("SET enable_progress_bar = false")
# What DuckDB holds in memory (its buffer pool: cached blocks of the database, query work, the write-ahead log's
# pending data), and the most it may hold before it evicts cached blocks and spills query work to disk.
DATABASE_MEMORY = parse("SELECT coalesce(sum(memory_usage_bytes), 0), current_setting('memory_limit') "
                        "FROM duckdb_memory()")
_MEMORY_LIMIT = parse("SET memory_limit = '1MB'")


def memory_limit(megabytes: int) -> exp.Expr:
    """The most memory DuckDB may use: to stay under it, it evicts cached blocks of the database and spills the
    work of large queries (joins, sorts, aggregates) into a temporary folder beside the database."""
    return _with_text(_MEMORY_LIMIT, f"{int(megabytes)}MB")


# Rewriting the whole database into a fresh file (after an erasure: rows deleted from DuckDB leave their old bytes in
# freed blocks until those are reused). Sequences, constraints and indexes come along.
COPY_DATABASE = exp.Command(this="COPY", expression=exp.Literal.string("FROM DATABASE old TO new").this)
# A backup: a copy of the open database, in one snapshot, into a file attached as ``backup_copy``.
CURRENT_DATABASE = parse("SELECT current_database()")
BACKUP_ALIAS = "backup_copy"
DETACH_BACKUP = parse(f"DETACH DATABASE IF EXISTS {BACKUP_ALIAS}")


def copy_database_to_backup(source: str) -> exp.Expr:
    """``COPY FROM DATABASE <source> TO backup_copy`` (a Command: SQLGlot has no tree for it), the name quoted."""
    name = exp.to_identifier(source, quoted=True).sql("duckdb")
    return exp.Command(this="COPY", expression=f"FROM DATABASE {name} TO {BACKUP_ALIAS}")


CHECKPOINT_OLD = exp.Command(this="CHECKPOINT", expression=exp.Literal.string("old").this)
_ATTACH = parse("ATTACH 'path' AS old")
_ATTACH_READ_ONLY = parse("ATTACH 'path' AS old (READ_ONLY)")


def attach(path: str, alias: str, *, read_only: bool = False) -> exp.Expr:
    """``ATTACH '<path>' AS <alias>`` with the path as a quoted literal."""
    statement = _with_text(_ATTACH_READ_ONLY if read_only else _ATTACH, path)
    statement.find(exp.Identifier).replace(exp.to_identifier(alias))  # type: ignore[union-attr]
    return statement

USE_PORTRAIT = parse("USE portrait")
# Where DuckDB spills query work that does not fit in memory_limit. An encrypted database is attached to an
# in-memory one, whose spill folder is ``.tmp`` in the server's working folder, written in plain text: rows of
# customers' personal data on disk, unencrypted, somewhere nobody looks. So it spills beside the database, encrypted.
# DuckDB refuses to turn encryption on while its spill folder holds files -- files a crash left in <db>.tmp/, or
# the plain ones of an older Portrait in the working folder's .tmp/ -- so it is turned on with no folder set.
_TEMP_DIRECTORY = parse("SET temp_directory = 'path'")
NO_TEMP_DIRECTORY = parse("SET temp_directory = ''")
ENCRYPT_SPILLS = parse("SET temp_file_encryption = true")


def temp_directory(path: str) -> exp.Expr:
    return _with_text(_TEMP_DIRECTORY, path)


_ATTACH_ENCRYPTED = parse("ATTACH 'path' AS old (ENCRYPTION_KEY 'key')")
_ATTACH_ENCRYPTED_READ_ONLY = parse("ATTACH 'path' AS old (READ_ONLY, ENCRYPTION_KEY 'key')")


def attach_encrypted(path: str, alias: str, key: str, *, read_only: bool = False) -> exp.Expr:
    """``ATTACH`` of an encrypted database file; path and key are quoted literals (this text is never logged)."""
    statement = (_ATTACH_ENCRYPTED_READ_ONLY if read_only else _ATTACH_ENCRYPTED).copy()
    literals = list(statement.find_all(exp.Literal))
    literals[0].replace(exp.Literal.string(path))
    literals[-1].replace(exp.Literal.string(key))
    statement.find(exp.Identifier).replace(exp.to_identifier(alias))  # type: ignore[union-attr]
    return statement
