"""Schema migrations (Alembic), run by ``xds-node db upgrade`` and by every process at start.

One path brings any database to the schema this code needs: :func:`upgrade` takes a lock
(PostgreSQL: ``pg_advisory_lock``; SQLite: an exclusive lock on ``<database>.lock``), reads the
revision, and upgrades to head, so many workers or hosts starting at once migrate exactly once.
A database this code does not know (a newer revision) is refused with a one-line
:class:`SchemaError`, as is an older one when automatic upgrades are off.

A database created by 0.1.0 (``metadata.create_all``, no ``alembic_version``) is adopted: its
tables are compared with the frozen baseline (``baseline.py``); if they match, revision ``0001``
runs (creating only missing tables) and the upgrade goes on like any other. Tables made by this
code's own ``create_all`` (unit tests) are stamped head when they match it exactly.

Adding a revision: see "Schema migrations" in the README.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
#: pg_advisory_lock key shared by every xds-node process on a database ("XDSM").
PG_LOCK_KEY = 0x5844534D


class SchemaError(RuntimeError):
    """The database schema is not one this code can run on (the message is one line)."""


def target_metadata() -> MetaData:
    """``xds_node.db.metadata`` with every module that defines tables imported (a module missing
    here leaves its tables out, which tests/test_migrations.py reports as a schema difference)."""
    import xds_node.audit.store
    import xds_node.console.tables
    import xds_node.patients.tables
    import xds_node.registry.tables
    import xds_node.repository.tables
    import xds_node.security.consent
    import xds_node.security.replay  # noqa: F401
    from xds_node.db import metadata

    return metadata


def config(connection: Connection | None = None) -> Config:
    """An Alembic config for the migrations shipped in this package, bound to ``connection``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    rev = script().get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    """The database's revision; None when it has no ``alembic_version`` (new, or made by 0.1.0)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, *, auto: bool = True) -> tuple[str | None, str]:
    """Bring the schema to head (``auto=False``: only check it is there); (before, after) revisions.

    Raises SchemaError for a revision this code does not know, for an older one when ``auto`` is
    off, and for a database with node tables that match no known schema.
    """
    target = head()
    before = current(engine)
    if before == target:  # the common case: no lock, one read
        return before, target
    _refuse(before, target, auto)
    with _locked(engine) as conn:
        before = MigrationContext.configure(conn).get_current_revision()  # another process may have won
        if before == target:
            return before, target
        _refuse(before, target, auto)
        cfg = config(conn)
        if before is None and _node_tables(conn):
            adopted = _adopt(conn)
            log.warning("database without schema version: its tables match revision %s; adopting it", adopted)
            if adopted != BASELINE:  # 0001 itself runs: it creates only the tables that are missing
                command.stamp(cfg, adopted)
                conn.commit()
        command.upgrade(cfg, "head")
        conn.commit()
    log.info("database schema upgraded from %s to %s", before or "nothing", target)
    return before, target


def check(engine: Engine) -> list[str]:
    """What keeps this database from being exactly the schema this code needs; [] when all is well."""
    rev, target = current(engine), head()
    if rev != target:
        return [f"schema revision is {rev or 'none'}, this code needs {target}"]
    with engine.connect() as conn:
        return [_describe(d) for d in _diffs(conn, target_metadata())]


def _refuse(rev: str | None, target: str, auto: bool) -> None:
    known = {s.revision for s in script().walk_revisions()}
    if rev is not None and rev not in known:
        raise SchemaError(f"database schema revision {rev} is newer than this xds-node (it knows up to {target}); "
                          "run the release that created it, or restore a backup")
    if not auto:
        raise SchemaError(f"database schema is at revision {rev or 'none'}, this xds-node needs {target}: "
                          "run `xds-node db upgrade` (or set db_auto_upgrade = true)")


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection held under the cross-process migration lock."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({PG_LOCK_KEY})")
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({PG_LOCK_KEY})")
                conn.commit()
        return
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        with engine.connect() as conn:
            yield conn
        return
    import fcntl

    with open(path + ".lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _node_tables(conn: Connection) -> set[str]:
    from xds_node.migrations import baseline

    known = set(baseline.metadata.tables) | set(target_metadata().tables)
    return set(inspect(conn).get_table_names()) & known


def _adopt(conn: Connection) -> str:
    """The revision an unversioned database's tables match: head (made by this code's create_all,
    complete) or the baseline (made by 0.1.0, missing tables allowed: 0001 creates them)."""
    from xds_node.migrations import baseline

    if not _diffs(conn, target_metadata()):
        return head()
    diffs = _diffs(conn, baseline.metadata)
    missing = {d[1].name for d in diffs if d[0] == "add_table"}  # with their indexes: 0001 creates them
    problems = [d for d in diffs if d[0] != "add_table"
                and not (d[0] == "add_index" and d[1].table.name in missing)]
    if not problems:
        return BASELINE
    raise SchemaError("database has xds-node tables but no schema version, and they match no known schema "
                      f"({_describe(problems[0])}); refusing to touch it")


def _diffs(conn: Connection, metadata: MetaData) -> list:
    """Alembic's comparison of the database with ``metadata``, limited to ``metadata``'s tables."""

    def include(obj, name, type_, reflected, compare_to) -> bool:
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in metadata.tables

    ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": include})
    out = []
    for diff in compare_metadata(ctx, metadata):
        out.extend(diff if isinstance(diff, list) else [diff])  # column modifications come as lists
    return out


def _describe(diff) -> str:
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return f"{kind} {diff[1].name}"
    if kind in ("add_index", "remove_index"):
        return f"{kind} {diff[1].name} on {diff[1].table.name}"
    if kind in ("add_column", "remove_column"):
        return f"{kind} {diff[2]}.{diff[3].name}"
    if kind.startswith("modify_"):
        return f"{kind} {diff[2]}.{diff[3]}: {diff[5]!r} -> {diff[6]!r}"
    return " ".join(str(x) for x in diff)
