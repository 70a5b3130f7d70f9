"""Statements for API keys and the audit log."""

from __future__ import annotations

from portrait.sql import parse

# Params: key hash, kind, name, created_at, id, scopes. A key already known (same secret) is left as it is.
INSERT_KEY = parse("INSERT INTO api_keys (key_hash, kind, name, created_at, id, scopes) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT DO NOTHING")
ALL_KEYS = parse("SELECT key_hash, kind, name, id, scopes, revoked_at, created_at FROM api_keys "
                 "ORDER BY created_at, id")
# A restore keeps the keys of the database it replaces (created, rotated and revoked since the backup).
KEY_ROWS = parse("SELECT key_hash, kind, name, created_at, id, scopes, revoked_at FROM api_keys ORDER BY created_at")
DROP_KEYS = parse("DELETE FROM api_keys WHERE key_hash IN (SELECT UNNEST(CAST(? AS VARCHAR[])))")
INSERT_KEY_ROW = parse("INSERT INTO api_keys (key_hash, kind, name, created_at, id, scopes, revoked_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)")
REVOKE = parse("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")

# Params: at, key id, key name, action, target, profile id, status, detail.
AUDIT = parse("INSERT INTO audit_log (at, key_id, key_name, action, target, profile_id, status, detail) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
AUDIT_COLUMNS = ("id", "at", "key_id", "key_name", "action", "target", "profile_id", "status", "detail")
# Params: before id (0 = from the newest), the same again, limit; newest first.
AUDIT_PAGE = parse("SELECT id, at, key_id, key_name, action, target, profile_id, status, detail FROM audit_log "
                   "WHERE ? = 0 OR id < ? ORDER BY id DESC LIMIT ?")
# A restore appends the entries written since the backup was made (numbered anew after the backup's own).
LAST_AUDIT_ID = parse("SELECT coalesce(max(id), 0) FROM audit_log")
AUDIT_AFTER = parse("SELECT at, key_id, key_name, action, target, profile_id, status, detail FROM audit_log "
                    "WHERE id > ? ORDER BY id")
