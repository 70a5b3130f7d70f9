"""Statements for import jobs (:mod:`portrait.import_jobs`): their record, which outlives a restart."""

from __future__ import annotations

from portrait.sql import parse

JOB_COLUMNS = ("id", "owner", "filename", "dry_run", "status", "created_at", "started_at", "finished_at",
               "bytes_total", "bytes_read", "rows", "rows_total", "stored", "upload", "report", "error")
# Params: id, owner, filename, dry_run, status, created_at, bytes_total, upload.
ADD_JOB = parse("INSERT INTO import_jobs (id, owner, filename, dry_run, status, created_at, bytes_total, upload, rows, "
                "stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0)")
# Params: started_at, id.
START_JOB = parse("UPDATE import_jobs SET status = 'running', started_at = ? WHERE id = ?")
# Params: rows, rows_total, bytes_read, stored, id.
PROGRESS = parse("UPDATE import_jobs SET rows = ?, rows_total = ?, bytes_read = ?, stored = ? WHERE id = ?")
# Params: status, finished_at, rows, rows_total, bytes_read, stored, report, error, id.
FINISH_JOB = parse("UPDATE import_jobs SET status = ?, finished_at = ?, rows = ?, rows_total = ?, bytes_read = ?, "
                   "stored = ?, report = ?, error = ?, upload = NULL WHERE id = ?")
GET_JOB = parse("SELECT id, owner, filename, dry_run, status, created_at, started_at, finished_at, bytes_total, "
                "bytes_read, rows, rows_total, stored, upload, report, error FROM import_jobs WHERE id = ?")
# Jobs a server left queued or running when it stopped without ending them (killed, a power cut).
UNFINISHED = parse("SELECT id, owner, filename, dry_run, status, created_at, started_at, finished_at, bytes_total, "
                   "bytes_read, rows, rows_total, stored, upload, report, error FROM import_jobs "
                   "WHERE status IN ('queued', 'running')")
# Finished jobs older than a time (param), and beyond the newest n (param) finished ones.
FORGET_BEFORE = parse("DELETE FROM import_jobs WHERE finished_at IS NOT NULL AND finished_at < ?")
FORGET_BEYOND = parse("DELETE FROM import_jobs WHERE id IN (SELECT id FROM import_jobs WHERE finished_at IS NOT NULL "
                      "ORDER BY finished_at DESC, id DESC OFFSET ?)")
