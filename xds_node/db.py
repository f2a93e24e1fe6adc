"""Database plumbing shared by every store: one MetaData, one engine factory.

SQLite is the embedded default (WAL so readers never block the writer, foreign keys on, a busy
timeout instead of instant "database is locked" errors); PostgreSQL is reached with a
``postgresql+psycopg://`` URL through exactly the same SQLAlchemy Core code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    SmallInteger,
    String,
    create_engine,
    event,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

T = TypeVar("T")

#: Every table of the node registers itself here: the migrations are checked against it (tests/test_migrations.py)
#: and unit tests build a schema from it with ``create_all``.
metadata = MetaData()


#: Integer ranges every supported backend can store (PostgreSQL's are the narrowest).
_INT_RANGES: tuple[tuple[type, int], ...] = ((BigInteger, 63), (SmallInteger, 15), (Integer, 31))


def column_bound(column: Column) -> tuple[int | None, int | None, int | None]:
    """(max characters, min, max) a column can hold on SQLite and PostgreSQL alike; None: unbounded.

    SQLite would store an over-long string (it ignores VARCHAR lengths) and PostgreSQL would
    refuse it: validating against the column keeps both backends answering the same.
    """
    ctype = column.type
    if isinstance(ctype, String):
        return ctype.length, None, None
    for kind, bits in _INT_RANGES:
        if isinstance(ctype, kind):
            return None, -(2**bits), 2**bits - 1
    return None, None, None


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine with the pragmas and pool settings each backend needs."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if not path or path == ":memory:":
            from sqlalchemy.pool import StaticPool

            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, echo=echo, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA cache_size=-65536")
            # checkpoint every ~40 MB of WAL rather than 4 MB: fewer fsyncs while loading in bulk
            cur.execute("PRAGMA wal_autocheckpoint=10000")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


#: Connections of a worker's read pool: reads run on the default thread pool (min(32, cores + 4)
#: threads), so a few more than that would never be used.
READ_POOL_SIZE = 8


def make_read_engine(engine: Engine) -> Engine:
    """The engine every read-only query runs on (stored queries, retrieve lookups, consent and
    patient reads); never used for writes, so registration stays one atomic transaction.

    On PostgreSQL it is a separate pool of autocommit connections whose sessions are read-only
    (``default_transaction_read_only``: a write through it is refused by the server): one round
    trip per read, where the default engine spends four (pool ping, BEGIN, the query, ROLLBACK).
    No ping on checkout: a connection found dead is replaced and the read retried
    (:func:`read`). SQLite reads already run without a transaction and share the one engine.

    Reads stay synchronous, on the worker's thread pool (``transactions.blocking``), rather than on
    psycopg 3's asyncio connections: measured with ``bench.bench_pg_reads`` (FindDocuments SELECT,
    100k documents, one event loop, best of 3 rounds, 2-core machine at load 8), against the old
    pooled transaction per read = 1.00:

    ================================  ===========  ==========  ===========  ==========
    16 / 32 concurrent tasks           queries/s    CPU/query   queries/s    CPU/query
    ================================  ===========  ==========  ===========  ==========
    autocommit, thread per query       1.48x        0.59x       1.22x        0.66x
    AsyncConnectionPool on the loop    1.36x        0.82x       0.79x        1.01x
    autocommit on the loop, no thread  0.86x        0.54x       0.42x        0.79x
    ================================  ===========  ==========  ===========  ==========

    (absolute: 293 us of CPU per query on a thread, 406-448 us async, 443-493 us before). The
    asyncio path spends more CPU per query than the thread hand-off it saves, and CPU is what a
    2-core node runs out of first; running reads on the loop without a thread serialises them.
    """
    if engine.dialect.name != "postgresql":
        return engine
    return create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_pre_ping=False,
                         pool_reset_on_return=None, pool_size=READ_POOL_SIZE, max_overflow=READ_POOL_SIZE,
                         connect_args={"options": "-c default_transaction_read_only=on",
                                       "application_name": "xds-node read"})


def _dead(conn: Connection, exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself is gone (server restart, fail-over, idle kill)."""
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    raw = getattr(conn.connection, "dbapi_connection", None)
    return bool(getattr(raw, "broken", False) or getattr(raw, "closed", False))


def read(engine: Engine, fn: Callable[[Connection], T]) -> T:
    """``fn(conn)`` on a connection of the read engine, retried on another connection while the
    one it got turns out to be dead (reads are idempotent; pooled read connections are not pinged,
    so after a database restart each would otherwise fail one request). Bounded by the pool: a
    database that is really down fails at connect, which is not retried."""
    attempts = READ_POOL_SIZE * 2 + 1
    for attempt in range(1, attempts + 1):
        with engine.connect() as conn:
            try:
                return fn(conn)
            except Exception as exc:
                if attempt == attempts or not _dead(conn, exc):
                    raise
                conn.invalidate()  # dropped from the pool; the next attempt takes another or a new one
    raise AssertionError("unreachable")


_INSERTS: dict[tuple[str, str], tuple[str, list]] = {}


def insert_rows(conn, table, rows: list[dict]) -> None:
    """executemany ``rows`` into ``table`` with cached driver-level INSERT text.

    Registration and auditing write a handful of small rows per request; SQLAlchemy's statement
    machinery costs more than the database takes to run them. Column types still convert values
    exactly as SQLAlchemy would (its bind processors), so rows read back the same either way.
    """
    if not rows:
        return
    dialect = conn.dialect
    key = (dialect.name + ":" + dialect.paramstyle, table.name)
    cached = _INSERTS.get(key)
    if cached is None:
        mark = ":{}" if dialect.paramstyle in ("qmark", "named", "numeric") else "%({})s"
        quote = dialect.identifier_preparer.quote  # some column names are SQL keywords
        cols = [c.name for c in table.columns]
        sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in cols)}) VALUES "
               f"({', '.join(mark.format(c) for c in cols)})")
        processors = [(c.name, p) for c in table.columns
                      if (p := c.type.dialect_impl(dialect).bind_processor(dialect)) is not None]
        cached = _INSERTS[key] = (sql, processors)
    sql, processors = cached
    if processors:
        rows = [dict(r) for r in rows]
        for r in rows:
            for name, proc in processors:
                if r.get(name) is not None:
                    r[name] = proc(r[name])
    defaults = {c.name: c.default.arg for c in table.columns if c.default is not None and not callable(c.default.arg)}
    if defaults:
        rows = [{**defaults, **r} for r in rows]
    conn.exec_driver_sql(sql, rows)


def make_test_engine(url: str) -> Engine:
    """An engine without pooling, for short-lived tools and tests that drop schemas."""
    return create_engine(url, poolclass=NullPool)


class Sql:
    """Driver-level SQL for the hottest queries: no statement objects, no cache-key work per call.

    SQLAlchemy Core costs ~0.5 ms per FindDocuments just to build and key the statement; this
    keeps the same SQL on both backends by emitting the DBAPI's own placeholder style.
    """

    __slots__ = ("named", "params", "parts")

    def __init__(self, paramstyle: str):
        self.named = paramstyle in ("pyformat", "named")
        self.params: list | dict = {} if self.named else []
        self.parts: list[str] = []

    def p(self, value) -> str:
        if self.named:
            key = f"p{len(self.params)}"
            self.params[key] = value
            return f"%({key})s"
        self.params.append(value)
        return "?"

    def in_(self, values) -> str:
        return "(" + ",".join(self.p(x) for x in values) + ")"

    def __iadd__(self, text: str) -> Sql:
        self.parts.append(text)
        return self

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def bound(self) -> tuple | dict:
        """Parameters as the DBAPI wants them for one execution (a list would mean executemany)."""
        return self.params if self.named else tuple(self.params)
