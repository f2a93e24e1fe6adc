"""The per-request bookkeeping database: audit trail and replay state, beside the registry's.

On SQLite these tables live in a file of their own (``Settings.audit_db_url``). SQLite empties the
page cache of every connection to a file whenever any other connection commits to it; with an
audit row committed per request in the registry's file, every FindDocuments read its pages afresh
and cost about twice the CPU (see README, Benchmarks). In a file of their own, the writes leave
the registry's cache warm. On PostgreSQL both are the one database.

A database from before this split keeps its rows in the registry's file: :func:`adopt` moves them
at start, so the accounting of disclosures and the replay entries carry over.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, Table, delete, select, tuple_

from xds_node.audit.store import audit_events
from xds_node.security.replay import replay_entries, replay_quota

log = logging.getLogger("xds_node.audit")

#: The tables that live in the bookkeeping database, each with its primary key columns.
TABLES: tuple[Table, ...] = (audit_events, replay_entries, replay_quota)
_BATCH = 1000


def _insert_ignoring(engine: Engine, table: Table):
    """INSERT that skips rows already there (a second worker may move the same rows at once)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()


def adopt(main: Engine, side: Engine) -> int:
    """Move bookkeeping rows left in ``main`` (an older layout) into ``side``; returns how many.

    Each batch is inserted (duplicates skipped) and committed in ``side`` before it is deleted
    from ``main``: a crash in between leaves a row in both, never in neither, and the next start
    finishes the move."""
    moved = 0
    for table in TABLES:
        key = list(table.primary_key.columns)
        while True:
            with main.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(select(table).limit(_BATCH))]
            if not rows:
                break
            with side.begin() as conn:
                conn.execute(_insert_ignoring(side, table), rows)
            with main.begin() as conn:
                conn.execute(delete(table).where(tuple_(*key).in_([tuple(r[c.name] for c in key) for r in rows])))
            moved += len(rows)
    if moved:
        log.warning("moved %d audit and replay rows into the bookkeeping database %s", moved,
                    side.url.render_as_string(hide_password=True))
    return moved


def refresh_statistics(engine: Engine) -> None:
    """SQLite: refresh the planner's statistics of the bookkeeping file at start (an approximate
    ANALYZE, a few ms at a million rows). Only the console and the CLI read this file, with filters
    the planner picks indexes for by these statistics: without them, a 1M-row trail made the audit
    page's partner filter take 226 ms instead of 10 ms. Housekeeping: a failure is only logged."""
    if engine.dialect.name != "sqlite":
        return  # PostgreSQL's autovacuum keeps its statistics
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA analysis_limit=1000")
            conn.exec_driver_sql("ANALYZE")
    except Exception:
        log.warning("could not refresh the audit file's planner statistics", exc_info=True)
