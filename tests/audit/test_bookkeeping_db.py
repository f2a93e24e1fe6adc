"""The audit trail and replay state in their own SQLite file: rows land there (never in the
registry's file), rows an older version left in the registry's file are moved over at start, and
PostgreSQL keeps everything in the one database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from tests.conftest import _database_url
from xds_node.audit.events import AuditEvent
from xds_node.audit.store import _event_row, audit_events
from xds_node.config import load_settings
from xds_node.db import insert_rows, make_engine
from xds_node.security.replay import ReplayKey, replay_entries


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_sqlite_bookkeeping_lives_beside_the_registry(tmp_path):
    from xds_node.node import Node

    settings = load_settings(env={}, data_dir=tmp_path)
    assert settings.audit_db_url.endswith("registry-audit.db")
    node = Node(settings)
    try:
        node.audit.record(AuditEvent(transaction="ITI-18", outcome="success"))
        now = datetime.now(UTC)
        node.replay.admit("partner-a", [ReplayKey("sig:1", now + timedelta(minutes=5))], "d" * 64, now)
        assert _count(node.audit_engine, audit_events) == 1 and _count(node.audit_engine, replay_entries) == 1
        assert _count(node.engine, audit_events) == 0 and _count(node.engine, replay_entries) == 0
        assert (tmp_path / "registry-audit.db").exists()
    finally:
        node.close()


def test_rows_left_in_the_registry_file_are_moved_at_start(tmp_path):
    """An upgrade from the single-file layout: the accounting of disclosures and live replay
    entries carry over, none is lost or left behind, and a second start moves nothing twice."""
    from xds_node.node import Node

    settings = load_settings(env={}, data_dir=tmp_path)
    Node(settings).close()  # both files at the current schema
    old = make_engine(settings.db_url)
    events = [AuditEvent(transaction="ITI-39", outcome="success", direction="inbound",
                         patient_id=f"p{i}^^^&1.2.3&ISO", document_ids=[f"1.2.{i}"]) for i in range(2500)]
    with old.begin() as conn:  # what an older version wrote into the registry's file
        insert_rows(conn, audit_events, [_event_row(e) for e in events])
        insert_rows(conn, replay_entries, [{"partner": "partner-a", "key_digest": "k" * 64, "expires_at": 9e9,
                                            "first_seen": 1.0, "request_digest": "", "resends": 0}])
    old.dispose()
    for _ in range(2):
        node = Node(settings)
        try:
            assert _count(node.engine, audit_events) == 0 and _count(node.engine, replay_entries) == 0
            assert _count(node.audit_engine, audit_events) == 2500
            assert _count(node.audit_engine, replay_entries) == 1
            assert [r["documents"] for r in node.audit.accounting_of_disclosures("p7^^^&1.2.3&ISO")] == [["1.2.7"]]
        finally:
            node.close()


def test_postgres_keeps_one_database(tmp_path):
    url = _database_url("sqlite", tmp_path).replace("sqlite:///", "postgresql://u@h/")
    settings = load_settings(env={}, data_dir=tmp_path, database_url=url)
    assert settings.audit_db_url == settings.db_url
    explicit = load_settings(env={}, data_dir=tmp_path, audit_database_url=f"sqlite:///{tmp_path / 'a.db'}")
    assert explicit.audit_db_url == f"sqlite:///{tmp_path / 'a.db'}"
