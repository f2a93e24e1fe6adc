"""The Document Repository actor: ITI-41 provide-and-register and ITI-43 retrieve.

Provide-and-register keeps three promises: an acknowledged document's bytes stay retrievable
whatever runs concurrently; if registration fails no document bytes stay behind (unless another
entry or request shares them); and if storing fails nothing is registered.

Where the bytes go (``document_store``): into the database (:mod:`~xds_node.repository.dbstore`,
the default on PostgreSQL), in the same transaction as the metadata and the repository index, so
all three commit or none does; or into the folder store, where bytes are written first
(content-addressed, so a retry is harmless) and pinned by a lease (see ``ContentStore``), the
metadata and the repository index then commit in one database transaction with the co-located
registry, or the repository index is written after a remote registry says Success; on failure the
leases are dropped and ``collect`` removes a file only when nothing else holds or names it.
Entries keep naming where their bytes went ("store" or "db"), so changing the setting leaves every
earlier document readable.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Connection, Engine, select, update

from xds_node.db import Sql, read
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError, RegistryResponse, Submission
from xds_node.repository import tables as t
from xds_node.repository.dbstore import ContentCollision, DatabaseStore
from xds_node.repository.sources import ContentStore, Lease, Located, SourceSystem

log = logging.getLogger(__name__)
E = v.ErrorCode

#: Registers metadata: the co-located Registry (``also`` joins its transaction) or a remote one.
RegisterFn = Callable[[Submission, Callable[[Connection], None] | None], Awaitable[RegistryResponse]]


@dataclass
class Retrieved:
    """One DocumentResponse: a file to stream, or an error for that document."""

    repository_unique_id: str
    document_unique_id: str
    mime_type: str | None = None
    located: Located | None = None
    error: RegistryError | None = None
    home: str | None = None


@dataclass
class RetrieveOutcome:
    status: str
    documents: list[Retrieved] = field(default_factory=list)
    #: document uniqueId -> its patient in the co-located registry (asked for with ``owners=True``)
    owners: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[RegistryError]:
        return [d.error for d in self.documents if d.error is not None]


class _Row(NamedTuple):
    """What a retrieve reads of a repository index row (and the registry's patient, when asked)."""

    unique_id: str
    source: str
    locator: str
    mime_type: str
    size: int
    sha1: str
    mtime_ns: int | None
    state: str
    patient_id: str | None


#: One indexed read per retrieve: the index rows and, from the co-located registry's table in the
#: same database, each document's patient (for consent and the audit row), in driver-level SQL.
_RETRIEVE_SELECT = "SELECT d.unique_id, d.source, d.locator, d.mime_type, d.size, d.sha1, d.mtime_ns, d.state, "
_OWNER = "(SELECT x.patient_id FROM xds_document x WHERE x.unique_id = d.unique_id LIMIT 1)"


def _err(code: str, context: str, location: str | None = None) -> RegistryError:
    return RegistryError(code=code, context=context, location=location)


def _index(conn: Connection, rows: list[dict]) -> None:
    """Index stored documents by uniqueId. An identical resubmission (a new entry, the same uniqueId
    and hash: accepted, ITI TF-3 Table 4.2.4.1-2) finds its uniqueId indexed with the same bytes
    already: that row stays, as it would for a concurrent one (PostgreSQL waits for its outcome)."""
    named = conn.dialect.paramstyle in ("qmark", "named", "numeric")
    cols = [c.name for c in t.documents.columns]
    marks = ", ".join((f":{c}" if named else f"%({c})s") for c in cols)
    quote = conn.dialect.identifier_preparer.quote
    conn.exec_driver_sql(f"INSERT INTO repo_document ({', '.join(quote(c) for c in cols)}) VALUES ({marks}) "
                         "ON CONFLICT (unique_id) DO NOTHING", sorted(rows, key=lambda r: r["unique_id"]))


class Repository:
    def __init__(self, engine: Engine, store: ContentStore, *, repository_unique_id: str,
                 sources: dict[str, SourceSystem] | None = None, reader: Engine | None = None,
                 documents_in_database: bool = False):
        self.engine = engine
        #: read-only queries (retrieve lookups): the autocommit read engine on PostgreSQL
        self.reader = reader or engine
        self.store = store
        #: pushed bytes in the database; always a source, so entries written there stay readable
        #: whatever ``documents_in_database`` says now
        self.database = DatabaseStore(engine, self.reader)
        self.documents_in_database = documents_in_database
        self.unique_id = repository_unique_id
        self.sources: dict[str, SourceSystem] = {store.name: store, self.database.name: self.database,
                                                 **(sources or {})}

    def add_source(self, source: SourceSystem) -> None:
        self.sources[source.name] = source

    # --- ITI-41 -----------------------------------------------------------------------------
    def check_documents(self, sub: Submission, documents: dict[str, bytes]) -> list[RegistryError]:
        """Pair documents with entries, fill or check size/hash, set repositoryUniqueId.

        A repositoryUniqueId the source supplied is replaced with ours, never refused: the
        Repository "adds or replaces" it before registering (ITI TF-2b 3.41.4.1.3); a stale or
        foreign value would otherwise send consumers to another repository.
        """
        errors: list[RegistryError] = []
        entries = {de.id: de for de in sub.documents}
        for doc_id in documents:
            if doc_id not in entries:
                errors.append(_err(E.MISSING_DOCUMENT_METADATA,
                                   f"Document {doc_id} has no DocumentEntry in the metadata"))
        for de in sub.documents:
            if de.on_demand:
                continue
            data = documents.get(de.id)
            if data is None:
                errors.append(_err(E.MISSING_DOCUMENT, f"DocumentEntry {de.id} has no Document attached"))
                continue
            digest = hashlib.sha1(data).hexdigest()
            if de.hash is not None and de.hash.lower() != digest:
                errors.append(_err(E.REPOSITORY_METADATA_ERROR,
                                   f"DocumentEntry {de.id}: hash {de.hash} does not match the document ({digest})"))
            if de.size is not None and de.size != len(data):
                errors.append(_err(E.REPOSITORY_METADATA_ERROR,
                                   f"DocumentEntry {de.id}: size {de.size} does not match the document "
                                   f"({len(data)} bytes)"))
            if de.repository_unique_id not in (None, self.unique_id):
                log.info("DocumentEntry %s: repositoryUniqueId %s replaced with ours (%s)",
                         de.id, de.repository_unique_id, self.unique_id)
            de.hash, de.size, de.repository_unique_id = digest, len(data), self.unique_id
        return errors

    async def provide_and_register(self, sub: Submission, documents: dict[str, bytes],
                                   register: RegisterFn, *, co_located: bool = True) -> RegistryResponse:
        errors = self.check_documents(sub, documents)
        if errors:
            return RegistryResponse.from_errors(errors)
        if not co_located:
            # a remote registry would assign entry UUIDs we never see: assign them here, in the
            # metadata we send, so our index records the ids the registry will hold
            from xds_node.ebxml.validation import assign_uuids

            renamed = assign_uuids(sub)
            documents = {renamed.get(k, k): data for k, data in documents.items()}
        if self.documents_in_database:
            return await self._provide_in_database(sub, documents, register, co_located=co_located)
        leases: list[tuple[Lease, bytes]] = []
        rows = []
        try:
            for de in sub.documents:
                data = documents.get(de.id)
                if data is None:
                    continue
                locator, lease = self.store.put(data, de.hash)
                leases.append((lease, data))
                rows.append({"unique_id": de.unique_id, "repository_unique_id": self.unique_id,
                             "entry_uuid": de.id, "source": self.store.name, "locator": locator,
                             "mime_type": de.mime_type or "application/octet-stream", "size": de.size,
                             "sha1": de.hash, "mtime_ns": None, "state": "current", "version": 1})
        except OSError as exc:
            self._abandon(leases)
            log.error("document store failed: %s", exc)
            return RegistryResponse.from_errors(
                [_err(E.REPOSITORY_ERROR, "The repository could not store the documents")])

        def record(conn: Connection) -> None:
            # entry ids are final here: the registry assigned UUIDs before opening its transaction
            by_uid = {de.unique_id: de.id for de in sub.documents}
            for row in rows:
                row["entry_uuid"] = by_uid.get(row["unique_id"], row["entry_uuid"])
            _index(conn, rows)

        try:
            if co_located:
                response = await register(sub, record)
            else:
                response = await register(sub, None)
                if response.status == v.ResponseStatus.SUCCESS:
                    with self.engine.begin() as conn:
                        record(conn)
        except Exception:
            self._abandon(leases)  # the registration raised: its transaction rolled back
            raise
        except BaseException:
            # cancelled (the client went away) while the registration may still commit in its
            # worker thread: keep the leases so the bytes stay whatever it decides; `serve` and
            # `fsck --repair` clear them after the grace period, and an unused file with them
            raise
        if response.status != v.ResponseStatus.SUCCESS:
            from xds_node.transactions import blocking  # database work off the event loop

            await blocking(self._abandon, leases)
        else:
            for lease, data in leases:
                try:
                    self.store.release(lease, data)
                except OSError as exc:  # committed already; `xds-node fsck` will name what is missing
                    log.error("document %s: could not release its lease: %s", lease.sha1, exc)
        return response

    async def _provide_in_database(self, sub: Submission, documents: dict[str, bytes], register: RegisterFn, *,
                                   co_located: bool) -> RegistryResponse:
        """Bytes, metadata and index in one transaction: nothing to clean up whatever fails."""
        contents: dict[str, bytes] = {}
        rows = []
        for de in sub.documents:
            data = documents.get(de.id)
            if data is None:
                continue
            contents[de.hash] = data
            rows.append({"unique_id": de.unique_id, "repository_unique_id": self.unique_id,
                         "entry_uuid": de.id, "source": self.database.name, "locator": de.hash,
                         "mime_type": de.mime_type or "application/octet-stream", "size": de.size,
                         "sha1": de.hash, "mtime_ns": None, "state": "current", "version": 1})

        def record(conn: Connection) -> None:
            for sha1 in sorted(contents):  # one order everywhere: racing submissions never deadlock
                self.database.write(conn, contents[sha1], sha1)
            by_uid = {de.unique_id: de.id for de in sub.documents}
            for row in rows:
                row["entry_uuid"] = by_uid.get(row["unique_id"], row["entry_uuid"])
            _index(conn, rows)

        try:
            if co_located:
                return await register(sub, record)
            response = await register(sub, None)
            if response.status == v.ResponseStatus.SUCCESS:
                from xds_node.transactions import blocking  # database work off the event loop

                def commit() -> None:
                    with self.engine.begin() as conn:
                        record(conn)

                await blocking(commit)
            return response
        except ContentCollision:
            return RegistryResponse.from_errors([_err(
                E.REPOSITORY_ERROR, "A document's bytes collide with other stored bytes under the same SHA-1; "
                                    "nothing was stored")])

    def _abandon(self, leases: list[tuple[Lease, bytes]]) -> None:
        """A failed request: drop its leases, then remove the files nobody else holds or names."""
        for lease, _ in leases:
            self.store.drop(lease)
        try:
            self.collect({lease.sha1 for lease, _ in leases})
        except Exception as exc:  # the answer stands; what is left is an orphan for `xds-node fsck`
            log.warning("could not remove the files of a failed submission: %s", exc)

    # --- removal of unreferenced content ---------------------------------------------------------
    def referenced(self, sha1s: Iterable[str]) -> set[str]:
        """Which of these content files a committed repository entry names (any state)."""
        wanted = sorted(set(sha1s))
        found: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                found.update(conn.execute(select(t.documents.c.locator).where(
                    t.documents.c.source == self.store.name,
                    t.documents.c.locator.in_(wanted[i:i + 500]))).scalars())
        return found

    def collect(self, sha1s: Iterable[str]) -> list[str]:
        """Delete the content files among ``sha1s`` that no committed entry and no lease holds.

        Order matters: the database is asked again *after* the file is renamed out of reach, so an
        entry committed at any moment is either seen here or re-links its bytes in ``release``;
        a lease taken before the rename shows as a second link. Safe to run from any number of
        processes and hosts at once. Returns what was deleted.
        """
        candidates = set(sha1s)
        candidates -= self.referenced(candidates)  # cheap first pass: never touch a named file
        deleted: list[str] = []
        for sha1 in sorted(candidates):
            q = self.store.quarantine(sha1)
            if q is None:
                continue
            if self.store.has_other_links(q) or self.referenced([sha1]):
                self.store.restore(q)
                continue
            q.unlink(missing_ok=True)
            deleted.append(sha1)
        return deleted

    # --- index maintenance (folder adapter) --------------------------------------------------------
    def row_for_locator(self, source: str, locator: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.documents).where(t.documents.c.source == source,
                                                         t.documents.c.locator == locator,
                                                         t.documents.c.state == "current")).mappings().first()
        return dict(row) if row else None

    def row_for_uid(self, unique_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.documents).where(t.documents.c.unique_id == unique_id)).mappings().first()
        return dict(row) if row else None

    def rows_for_source(self, source: str) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(t.documents).where(
                t.documents.c.source == source, t.documents.c.state == "current")).mappings()]

    @staticmethod
    def set_state(conn: Connection, unique_id: str, state: str) -> None:
        conn.execute(update(t.documents).where(t.documents.c.unique_id == unique_id).values(state=state))

    # --- ITI-43 -----------------------------------------------------------------------------
    def _rows(self, conn: Connection, uids: list[str], owners: bool) -> dict[str, _Row]:
        """The index rows (and, with ``owners``, each document's patient) in one driver-level read:
        no per-row result wrapping (two SQLAlchemy queries cost more than the rest of a 10 KB retrieve)."""
        sql = Sql(conn.dialect.paramstyle)
        sql += _RETRIEVE_SELECT + (_OWNER if owners else "NULL") + " FROM repo_document d WHERE d.unique_id IN "
        sql += sql.in_(list(dict.fromkeys(uids)))
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql.text, sql.bound)
            return {r[0]: _Row(*r) for r in cursor.fetchall()}
        finally:
            cursor.close()

    def retrieve(self, requests: list[tuple[str | None, str, str | None]], *, location: str | None = None,
                 check_home: Callable[[str | None], RegistryError | None] | None = None,
                 owners: bool = False) -> RetrieveOutcome:
        """requests: (repositoryUniqueId, documentUniqueId, homeCommunityId) triples. ``owners``:
        also read each found document's patient from the co-located registry (same query)."""
        out: list[Retrieved] = []
        uids = [doc for _, doc, _ in requests]

        def lookup(conn: Connection) -> tuple[dict[str, _Row], dict[str, Located]]:
            found = self._rows(conn, uids, owners)
            held = [r.locator for r in found.values() if r.source == self.database.name]
            return found, self.database.locate_many(held, conn) if held else {}

        rows, in_database = read(self.reader, lookup) if uids else ({}, {})
        for repo_uid, doc_uid, home in requests:
            item = Retrieved(repo_uid or "", doc_uid, home=home)
            out.append(item)
            if check_home is not None and (problem := check_home(home)) is not None:
                item.error = problem
                continue
            if repo_uid != self.unique_id:
                item.error = _err(E.UNKNOWN_REPOSITORY_ID, f"Unknown repositoryUniqueId {repo_uid}", location)
                continue
            row = rows.get(doc_uid)
            if row is None or row.state == "removed":
                item.error = _err(E.DOCUMENT_UNIQUE_ID_ERROR, f"No document with uniqueId {doc_uid}", location)
                continue
            located = self._verified(row, in_database)
            if located is None:
                item.error = _err(E.DOCUMENT_UNIQUE_ID_ERROR,
                                  f"Document {doc_uid} is no longer available from its source", location)
                continue
            item.mime_type, item.located = row.mime_type, located
        ok = sum(1 for d in out if d.error is None)
        if ok == len(out) and out:
            status = v.ResponseStatus.SUCCESS
        elif ok:
            status = v.ResponseStatus.PARTIAL_SUCCESS
        else:
            status = v.ResponseStatus.FAILURE
        return RetrieveOutcome(status, out, {u: r.patient_id for u, r in rows.items() if r.patient_id is not None})

    def source_for(self, name: str) -> SourceSystem | None:
        """The SourceSystem an index row names (a folder indexed by an earlier `xds-node load` too)."""
        source = self.sources.get(name)
        if source is None and name.startswith("folder:"):
            from xds_node.repository.sources import FolderSource

            source = self.sources[name] = FolderSource(Path(name.removeprefix("folder:")))
        return source

    def _verified(self, row, in_database: dict[str, Located] | None = None) -> Located | None:
        """The file, if it still holds what was registered (never serve changed bytes as the old document)."""
        if row.source == self.database.name:
            located = (in_database or {}).get(row.locator)
            return located if located is not None and located.size == row.size else None
        source = self.source_for(row.source)
        if source is None:
            log.warning("document %s is in unknown source %s", row.unique_id, row.source)
            return None
        located = source.locate(row.locator)
        if located is None or located.size != row.size:
            return None
        if row.mtime_ns is not None and located.mtime_ns != row.mtime_ns:
            sha1, size = source.digest(row.locator)  # touched: only the content decides
            if sha1 != row.sha1 or size != row.size:
                log.warning("document %s changed at its source; not served", row.unique_id)
                return None
        return located
