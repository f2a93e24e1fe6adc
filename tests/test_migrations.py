"""Schema migrations: fresh databases, 0.1.0 databases, concurrent starts, refusals; both backends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert, inspect, select, text

from tests.conftest import BACKENDS, POSTGRES_URL, ROOT, LiveNode, free_port
from xds_node import migrations
from xds_node.config import load_settings
from xds_node.db import make_engine, make_test_engine
from xds_node.migrations import baseline


def _empty_database(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_test_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:  # our own test database: start from nothing at all
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return POSTGRES_URL


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    return _empty_database(request.param, tmp_path)


@pytest.fixture
def engine(db_url):
    e = make_engine(db_url)
    yield e
    e.dispose()


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xds_node.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_migrated_schema_is_exactly_the_tables(engine):
    """A table changed without a migration fails here (Alembic's autogenerate comparison)."""
    assert migrations.upgrade(engine) == (None, migrations.head())
    assert migrations.check(engine) == []
    assert migrations.current(engine) == migrations.head()


def test_upgrade_is_idempotent(db_url, tmp_path):
    env = {"XDS_DATABASE_URL": db_url, "XDS_DATA_DIR": str(tmp_path)}
    first = cli("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert "was empty" in first.stdout
    again = cli("db", "upgrade", env=env)
    assert again.returncode == 0 and again.stdout.strip() == f"schema at {migrations.head()}", again.stdout
    check = cli("db", "check", env=env)
    assert check.returncode == 0 and "schema is current" in check.stdout
    current = cli("db", "current", env=env)
    assert current.stdout.startswith(migrations.head())


def test_database_of_the_previous_release_is_adopted_and_upgraded(engine, db_url, tmp_path):
    """0.1.0 made its tables with metadata.create_all and kept no version: matched, stamped, upgraded."""
    baseline.metadata.create_all(engine)
    documents = baseline.metadata.tables["xds_document"]
    with engine.begin() as conn:
        conn.execute(insert(documents).values(id="urn:uuid:0b5e6c1e-0000-4000-8000-000000000001", unique_id="1.2.3",
                                              patient_id="P^^^&1.2&ISO", status="Approved", object_type="x",
                                              size=12345, rim=b"<x/>"))
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=tmp_path, database_url=db_url))
    node.close()
    assert migrations.current(engine) == migrations.head()
    assert migrations.check(engine) == []
    with engine.begin() as conn:  # the data survived, and the column now holds documents past 2 GiB
        assert conn.scalar(select(documents.c.size)) == 12345
        conn.execute(text("UPDATE xds_document SET size = :s"), {"s": 2**40})
        assert conn.scalar(select(documents.c.size)) == 2**40


def test_partial_previous_release_database_is_completed(engine):
    """0.1.0 created tables store by store: a database with only some of them is completed."""
    baseline.metadata.create_all(engine, tables=[baseline.metadata.tables["patient"]])
    migrations.upgrade(engine)
    assert migrations.check(engine) == []


def test_unversioned_tables_of_unknown_shape_are_refused(engine):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE xds_document (id VARCHAR(80) PRIMARY KEY, surprise TEXT)"))
    with pytest.raises(migrations.SchemaError, match="match no known schema"):
        migrations.upgrade(engine)
    assert migrations.current(engine) is None  # not stamped, not touched
    assert {c["name"] for c in inspect(engine).get_columns("xds_document")} == {"id", "surprise"}


def _stamp(engine, revision: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_newer_database_is_refused_at_start_with_one_line(engine, db_url, tmp_path):
    migrations.upgrade(engine)
    _stamp(engine, "9999")
    run = cli("serve", "--port", str(free_port()), env={"XDS_DATABASE_URL": db_url, "XDS_DATA_DIR": str(tmp_path)})
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert errors == [f"xds-node: database schema revision 9999 is newer than this xds-node (it knows up to "
                      f"{migrations.head()}); run the release that created it, or restore a backup"], run.stderr
    assert migrations.current(engine) == "9999"


def test_older_database_is_refused_when_auto_upgrade_is_off(engine, db_url, tmp_path):
    migrations.upgrade(engine)
    _stamp(engine, migrations.BASELINE)
    env = {"XDS_DATABASE_URL": db_url, "XDS_DATA_DIR": str(tmp_path), "XDS_DB_AUTO_UPGRADE": "false"}
    run = cli("serve", "--port", str(free_port()), "--workers", "2", env=env)
    assert run.returncode == 1
    assert [line for line in run.stderr.splitlines() if line.strip()] == [
        f"xds-node: database schema is at revision {migrations.BASELINE}, this xds-node needs {migrations.head()}: "
        "run `xds-node db upgrade` (or set db_auto_upgrade = true)"]


_RACER = """
import sys, time
from pathlib import Path
from xds_node import migrations
from xds_node.db import make_engine
engine = make_engine(sys.argv[1])
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
print(migrations.upgrade(engine))
"""


def test_many_processes_upgrading_at_once_migrate_once(engine, db_url, tmp_path):
    """What many workers or hosts do at start: all succeed, the schema is built once and is exact."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, db_url, str(go)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    time.sleep(2)  # let every racer finish importing; the barrier makes them start together
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-600:] for _, err in results]
    migrated = [out for out, _ in results if out.startswith("(None,")]
    assert len(migrated) <= 1  # the others found it done (or waited on the lock, then found it done)
    assert migrations.check(engine) == []


@pytest.mark.server
def test_serve_with_two_workers_on_an_empty_database(db_url, tmp_path):
    node = LiveNode(tmp_path, {"XDS_DATABASE_URL": db_url}, ["--workers", "2"])
    try:
        children = _children(node.proc.pid)
        assert len(children) == 2, children
        for _ in range(20):  # fresh connections land on both workers
            assert httpx.get(node.url + "/health", timeout=5).status_code == 200
        assert _children(node.proc.pid) == children  # neither worker died and was replaced
    finally:
        node.stop()
    out = node.proc.stdout.read().decode(errors="replace")
    assert "Traceback" not in out and "Error" not in out, out[-2000:]
    assert migrations.current(make_test_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))) \
        == migrations.head()


def _children(pid: int) -> set[int]:
    """Worker processes of the uvicorn supervisor (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(c) for c in (task / "children").read_text().split()}
    return {c for c in out if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()}  # not the resource tracker


def test_tables_made_by_this_codes_create_all_are_stamped_current(engine):
    """Unit tests build schemas with the stores' create_schema; a node started on one adopts it as head."""
    from xds_node.db import metadata

    migrations.target_metadata()
    metadata.create_all(engine)
    assert migrations.upgrade(engine) == (None, migrations.head())
    assert migrations.check(engine) == []


def test_migrations_ship_inside_the_package():
    """The wheel carries the revisions and the template `xds-node db revision` writes them with."""
    here = Path(migrations.__file__).parent
    assert (here / "script.py.mako").is_file() and (here / "env.py").is_file()
    revisions = {s.revision for s in migrations.script().walk_revisions()}
    assert {"0001", migrations.head()} <= revisions
    assert len(migrations.script().get_heads()) == 1, "two heads: merge them (alembic merge) before release"


def test_0005_backfills_document_uniqueids_and_lets_a_uniqueid_repeat(engine):
    """Migration 0005 (issue 12, rule 1): registered documents get their xds_document_uid claim
    (hash, or the entryUUID of an On-Demand entry, and the patient), and xds_document.unique_id is
    no longer unique, so an identical resubmission can be stored (ITI TF-3 Table 4.2.4.1-2)."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(migrations.config(conn), "0004")
    doc = {"unique_id": "1.2.3.4^D1", "patient_id": "P1^^^&1.2.3&ISO", "status": "Approved",
           "object_type": "stable", "rim": b"<x/>"}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO xds_document (id, unique_id, patient_id, status, object_type, hash, rim) "
                          "VALUES ('urn:uuid:1', :unique_id, :patient_id, :status, :object_type, 'ABCDEF', :rim)"),
                     doc)
        conn.execute(text("INSERT INTO xds_document (id, unique_id, patient_id, status, object_type, rim) "
                          "VALUES ('urn:uuid:2', '1.2.3.4^OD', :patient_id, :status, :object_type, :rim)"), doc)
    migrations.upgrade(engine)
    assert migrations.check(engine) == []
    with engine.begin() as conn:
        claims = sorted(conn.execute(text("SELECT unique_id, fingerprint, patient_id FROM xds_document_uid")).all())
        assert claims == [("1.2.3.4^D1", "abcdef", doc["patient_id"]), ("1.2.3.4^OD", "urn:uuid:2", doc["patient_id"])]
        conn.execute(text("INSERT INTO xds_document (id, unique_id, patient_id, status, object_type, hash, rim) "
                          "VALUES ('urn:uuid:3', :unique_id, :patient_id, :status, :object_type, 'abcdef', :rim)"),
                     doc)
