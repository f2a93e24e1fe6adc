"""Pushed documents' bytes in the database itself (the default on PostgreSQL).

Why: with bytes in a folder under one host's data directory, a document pushed through one host
cannot be retrieved through another; with them in the database, adding a host needs nothing but
the database URL. Content-addressed like the folder store (one row per SHA-1, shared by every entry
with those bytes), but written **inside the registration's transaction** (``write`` runs in the
registry's ``also`` hook), so the all-or-nothing promise needs no leases: a rolled-back registration
leaves no bytes, a committed one always has them.

Large documents (up to the 64 MiB body cap) are split into chunks of :data:`CHUNK` bytes
(``repo_content_chunk``): writing sends slices of the request's buffer (no copy of the whole), and
a retrieve streams chunk by chunk, one short read each, so a 64 MiB answer never sits in memory and
never holds a connection while a slow client reads. Small documents (up to :data:`INLINE_BYTES`)
come back with the retrieve lookup itself, in the same round trip.

Removal is only ever of orphans (``fsck --repair``): :meth:`remove_orphan` locks the row, then asks
whether any committed entry names it, in that order; a registration reusing stored bytes takes a
``FOR KEY SHARE`` lock on the row first, so either the registration waits and then writes the bytes
again, or the removal waits and then sees the entry.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from xds_node.db import read
from xds_node.repository.sources import Located

#: Bytes per chunk row. PostgreSQL TOASTs each value anyway; 1 MiB keeps a retrieve's memory and
#: each round trip small while a 64 MiB document is 64 rows.
CHUNK = 1 << 20

#: Documents up to this size are returned with the retrieve lookup (one round trip) and sent from
#: memory; larger ones are streamed chunk by chunk. Same bound as soap.mtom.INLINE_READ_LIMIT, up to
#: which a response's parts are read on the event loop's thread.
INLINE_BYTES = 4 * CHUNK

#: At most this many bytes of one retrieve's documents come back with the lookup; the rest of a
#: retrieve asking for many documents is streamed like a large one (memory stays bounded).
INLINE_TOTAL = 4 * INLINE_BYTES

NAME = "db"

log = logging.getLogger(__name__)


class ContentCollision(Exception):
    """Other bytes with this SHA-1 are stored already (a SHA-1 collision): the push is refused."""


@dataclass(frozen=True)
class StoredContent:
    """What the database holds for one SHA-1 (fsck's view)."""

    sha1: str
    size: int
    chunks: int


def _marks(conn: Connection) -> tuple[str, str]:
    """(prefix, suffix) of a named placeholder in the connection's DBAPI paramstyle."""
    named = conn.dialect.paramstyle in ("qmark", "named", "numeric")
    return (":", "") if named else ("%(", ")s")


def _cursor(conn: Connection):
    """A DBAPI cursor; on PostgreSQL one that receives bytea in binary (hex text would double it)."""
    raw = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        return raw.cursor(binary=True)
    return raw.cursor()


class DatabaseStore:
    """A :class:`~xds_node.repository.sources.SourceSystem` whose locators are SHA-1s of rows in
    ``repo_content``; writes join the caller's transaction, reads go through the read engine."""

    name = NAME

    def __init__(self, engine: Engine, reader: Engine | None = None):
        self.engine = engine
        self.reader = reader or engine

    # --- writing (inside the registration's transaction) ------------------------------------------
    def write(self, conn: Connection, data: bytes, sha1: str) -> None:
        """Make ``data`` (whose SHA-1 is ``sha1``) part of ``conn``'s transaction unless it is stored.

        A concurrent transaction writing the same bytes makes PostgreSQL wait for its outcome (the
        primary key), so exactly one copy commits whoever wins. Stored bytes are locked against
        ``remove_orphan`` until this transaction ends. Bytes already stored under this SHA-1 must
        also have the same SHA-256 and size, or :class:`ContentCollision` is raised (and the
        registration rolls back): SHA-1 collisions can be made, and an entry must never be given
        someone else's bytes.
        """
        p, s = _marks(conn)
        size = len(data)
        count = max(1, -(-size // CHUNK))
        sha256 = hashlib.sha256(data).hexdigest()
        lock = " FOR KEY SHARE" if conn.dialect.name == "postgresql" else ""  # SQLite: one writer at a time
        while True:
            created = conn.exec_driver_sql(
                f"INSERT INTO repo_content (sha1, size, chunks, sha256) VALUES ({p}sha1{s}, {p}size{s}, {p}chunks{s}, "
                f"{p}sha256{s}) ON CONFLICT (sha1) DO NOTHING RETURNING sha1",
                {"sha1": sha1, "size": size, "chunks": count, "sha256": sha256}).first()
            if created is not None:
                view = memoryview(data)
                for first in range(0, count, 8):  # a few MiB per round trip, never the whole body again
                    conn.exec_driver_sql(
                        f"INSERT INTO repo_content_chunk (sha1, seq, data) VALUES ({p}sha1{s}, {p}seq{s}, {p}data{s})",
                        [{"sha1": sha1, "seq": i, "data": view[i * CHUNK:(i + 1) * CHUNK]}
                         for i in range(first, min(count, first + 8))])
                return
            held = conn.exec_driver_sql(f"SELECT size, sha256 FROM repo_content WHERE sha1 = {p}sha1{s}{lock}",
                                        {"sha1": sha1}).first()
            if held is not None:
                if (held[0], held[1]) != (size, sha256):
                    log.error("document content %s: other bytes with the same SHA-1 are stored (SHA-256 %s, "
                              "%d bytes; pushed: SHA-256 %s, %d bytes): refused", sha1, held[1], held[0], sha256, size)
                    raise ContentCollision(sha1)
                return
            # removed as an orphan between our INSERT and SELECT: write it again

    # --- reading ------------------------------------------------------------------------------------
    def locate_many(self, sha1s: Iterable[str], conn: Connection | None = None) -> dict[str, Located]:
        """SHA-1 -> :class:`Located` for the stored ones: small documents with their bytes, larger
        ones as a chunk stream. One query (on ``conn`` when given: the retrieve's own lookup)."""
        wanted = sorted(set(sha1s))
        if not wanted:
            return {}
        if conn is None:
            return read(self.reader, lambda c: self.locate_many(wanted, c))
        p, s = _marks(conn)
        params = {f"h{i}": h for i, h in enumerate(wanted)}
        marks = ", ".join(f"{p}h{i}{s}" for i in range(len(wanted)))
        cur = _cursor(conn)
        try:
            # small documents' bytes join the lookup while their running total stays within
            # INLINE_TOTAL (a window sum: one statement, same text on SQLite and PostgreSQL)
            inline = f"c.size <= {INLINE_BYTES} AND c.running <= {INLINE_TOTAL}"
            cur.execute(f"SELECT c.sha1, c.size, c.chunks, {inline}, ch.data FROM (SELECT sha1, size, chunks, "
                        f"SUM(CASE WHEN size <= {INLINE_BYTES} THEN size ELSE 0 END) OVER (ORDER BY sha1) AS running "
                        f"FROM repo_content WHERE sha1 IN ({marks})) c LEFT JOIN repo_content_chunk ch "
                        f"ON ch.sha1 = c.sha1 AND {inline} ORDER BY c.sha1, ch.seq", params)
            rows = cur.fetchall()
        finally:
            cur.close()
        parts: dict[str, list[bytes]] = {}
        heads: dict[str, tuple[int, int, bool]] = {}
        for sha1, size, chunks, inlined, data in rows:
            heads[sha1] = (size, chunks, bool(inlined))
            if data is not None:
                parts.setdefault(sha1, []).append(bytes(data))
        out: dict[str, Located] = {}
        for sha1, (size, chunks, inlined) in heads.items():
            if inlined:
                data = b"".join(parts.get(sha1, ()))
                # never serve changed bytes as the registered document (a few us for a C-CDA);
                # damaged or incomplete content counts as gone, and fsck names it
                if len(data) != size or hashlib.sha1(data).hexdigest() != sha1:
                    log.warning("document content %s in the database is damaged; not served", sha1)
                    continue
                out[sha1] = Located(None, size, 0, data=data)
            else:
                out[sha1] = Located(None, size, 0, stream=_Stream(self, sha1, chunks, size))
        return out

    def locate(self, locator: str) -> Located | None:
        return self.locate_many([locator]).get(locator)

    def iter_chunks(self, sha1: str, chunks: int, *, verify: bool = False) -> Iterator[bytes]:
        """The bytes, one short read of the read engine per chunk (no connection held in between).

        With ``verify`` the SHA-1 is checked as the bytes go: a mismatch raises after the last chunk,
        which aborts a response being streamed, so a client sees a broken answer, never wrong bytes
        passed off as the registered document."""
        h = hashlib.sha1() if verify else None
        for seq in range(chunks):
            chunk = self._chunk(sha1, seq)
            if h is not None:
                h.update(chunk)
                if seq == chunks - 1 and h.hexdigest() != sha1:
                    log.error("document content %s in the database is damaged; answer aborted", sha1)
                    raise OSError(f"document {sha1}: the stored bytes do not match their SHA-1")
            yield chunk

    def _chunk(self, sha1: str, seq: int) -> bytes:
        def one(conn: Connection) -> bytes:
            p, s = _marks(conn)
            cur = _cursor(conn)
            try:
                cur.execute(f"SELECT data FROM repo_content_chunk WHERE sha1 = {p}sha1{s} AND seq = {p}seq{s}",
                            {"sha1": sha1, "seq": seq})
                row = cur.fetchone()
            finally:
                cur.close()
            if row is None:
                raise OSError(f"document {sha1}: chunk {seq} is missing from the database")
            return bytes(row[0])

        return read(self.reader, one)

    def digest(self, locator: str) -> tuple[str, int]:
        """(SHA-1, size) of what is stored, streamed chunk by chunk (fsck)."""
        head = self.content(locator)
        if head is None:
            raise FileNotFoundError(locator)
        h = hashlib.sha1()
        size = 0
        for chunk in self.iter_chunks(locator, head.chunks):
            h.update(chunk)
            size += len(chunk)
        return h.hexdigest(), size

    # --- inventory and removal (fsck) --------------------------------------------------------------
    def content(self, sha1: str) -> StoredContent | None:
        def one(conn: Connection) -> StoredContent | None:
            p, s = _marks(conn)
            row = conn.exec_driver_sql(f"SELECT sha1, size, chunks FROM repo_content WHERE sha1 = {p}sha1{s}",
                                       {"sha1": sha1}).first()
            return StoredContent(*row) if row is not None else None

        return read(self.reader, one)

    def contents(self) -> list[StoredContent]:
        """Every stored content (tests and reports; a listing, not for the request path)."""
        return read(self.reader, lambda c: [StoredContent(*r) for r in c.exec_driver_sql(
            "SELECT sha1, size, chunks FROM repo_content ORDER BY sha1")])

    def count(self) -> int:
        return read(self.reader, lambda c: c.exec_driver_sql("SELECT COUNT(*) FROM repo_content").scalar() or 0)

    def orphans(self) -> list[StoredContent]:
        """Stored contents that no repository entry names (any state): nothing can retrieve them."""
        sql = ("SELECT c.sha1, c.size, c.chunks FROM repo_content c WHERE NOT EXISTS (SELECT 1 FROM repo_document d "
               f"WHERE d.source = '{NAME}' AND d.locator = c.sha1) ORDER BY c.sha1")
        return read(self.reader, lambda c: [StoredContent(*r) for r in c.exec_driver_sql(sql)])

    def remove_orphan(self, sha1: str) -> bool:
        """Delete the content if, once it is locked, still no committed entry names it."""
        referenced = (f"SELECT 1 FROM repo_document WHERE source = '{NAME}' AND locator = ")
        with self.engine.begin() as conn:
            p, s = _marks(conn)
            if conn.dialect.name == "postgresql":
                # lock first, then look: this statement's snapshot is taken after any registration
                # holding the row (FOR KEY SHARE) committed, so its entry is seen
                if conn.exec_driver_sql(f"SELECT sha1 FROM repo_content WHERE sha1 = {p}sha1{s} FOR UPDATE",
                                        {"sha1": sha1}).first() is None:
                    return False
                if conn.exec_driver_sql(referenced + f"{p}sha1{s}", {"sha1": sha1}).first() is not None:
                    return False
                conn.exec_driver_sql(f"DELETE FROM repo_content WHERE sha1 = {p}sha1{s}", {"sha1": sha1})
                return True
            # SQLite: one statement under the single write lock a registration also holds
            done = conn.exec_driver_sql(f"DELETE FROM repo_content WHERE sha1 = {p}sha1{s} AND NOT EXISTS ("
                                        + referenced + f"{p}sha1{s})", {"sha1": sha1})
            if done.rowcount:
                conn.exec_driver_sql(f"DELETE FROM repo_content_chunk WHERE sha1 = {p}sha1{s}", {"sha1": sha1})
            return bool(done.rowcount)

    def check(self, sha1: str, size: int) -> str | None:
        """What is wrong with the stored copy of an entry's bytes (None: complete and intact)."""
        head = self.content(sha1)
        if head is None:
            return "missing"
        try:
            digest, actual = self.digest(sha1)
        except OSError as exc:
            return f"damaged: {exc}"
        if actual != size or head.size != size:
            return f"damaged: {actual} bytes, registered as {size}"
        if digest != sha1:
            return f"damaged: SHA-1 {digest}, registered as {sha1}"
        return None


class _Stream:
    """A large stored document as a retrieve sends it: size known, bytes read while they are sent."""

    def __init__(self, store: DatabaseStore, sha1: str, chunks: int, size: int):
        self.store, self.sha1, self.chunks, self.size = store, sha1, chunks, size

    def __call__(self) -> Iterator[bytes]:
        return self.store.iter_chunks(self.sha1, self.chunks, verify=True)
