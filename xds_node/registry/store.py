"""The registry's storage: atomic registration and the lookups validation and queries need.

This is the narrow interface the rest of the node sees; SQLite and PostgreSQL differ only in the
engine handed in. ``register`` writes a whole submission in one transaction: a validation failure
happens before it starts, and anything that fails inside it (a unique index catching a concurrent
duplicate, a crash) rolls everything back, so a registry is never half written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lxml import etree
from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from xds_node.db import Sql, insert_rows, metadata, read
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Association, DocumentEntry, Folder, Submission, SubmissionSet
from xds_node.ebxml.query import pad_time
from xds_node.registry import tables as t

_CHUNK = 500  # bound IN-lists (SQLite's variable limit, planner sanity)


class DuplicateError(Exception):
    """A constraint rejected the submission: something registered concurrently (an entryUUID, a
    SubmissionSet/Folder uniqueId, or a DocumentEntry uniqueId with other content) got there first."""


class UniqueIdTaken(DuplicateError):
    """A DocumentEntry uniqueId stands for other content (or another patient) already: committed,
    or written earlier in the caller's own transaction (bulk loading), never a rolled-back race."""


@dataclass(slots=True)
class Row:
    """One stored object as queries see it."""

    kind: str  # "doc" | "ss" | "folder" | "assoc"
    id: str
    patient_id: str | None
    rim: bytes
    status: str


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _pad(value: str | None) -> str | None:
    return pad_time(value) if value else None


class RegistryStore:
    def __init__(self, engine: Engine, reader: Engine | None = None):
        self.engine = engine
        #: Every read-only query (lookups, stored queries, consent's patient lookups) runs here: on
        #: PostgreSQL an autocommit, read-only pool (db.make_read_engine); writes never do.
        self.reader = reader or engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    # --- RegistryLookup (what validation needs) -------------------------------------------------
    # Each lookup is one UNION query in driver-level SQL: registration calls them for every
    # submission, and building SQLAlchemy statements per table cost more than running them.
    def _lookup(self, ids: Iterable[str], write: Callable[[Sql, Sequence[str]], None]) -> list[tuple]:
        """Run ``write(sql, chunk)`` for each chunk of ``ids`` on one connection; all rows."""
        ids = sorted(set(ids))
        rows: list[tuple] = []
        if not ids:
            return rows
        with self.reader.connect() as conn:
            for chunk in _chunks(ids):
                sql = Sql(self.engine.dialect.paramstyle)
                write(sql, chunk)
                rows.extend(conn.exec_driver_sql(sql.text, sql.bound).all())
        return rows

    def existing_unique_ids(self, unique_ids: Iterable[str]) -> dict[str, tuple[str, str | None, str, int | None]]:
        """uniqueId -> (entryUUID, hash, patientId, size) of one object registered with it.
        DocumentEntries sharing a uniqueId share hash and patient (``xds_document_uid``) and size
        (validated), so any one of them speaks for all."""
        def write(sql: Sql, chunk: Sequence[str]) -> None:
            tables = (("xds_document", "hash", "size"), ("xds_submission_set", "NULL", "NULL"),
                      ("xds_folder", "NULL", "NULL"))
            sql += " UNION ALL ".join(f"SELECT unique_id, id, {digest}, patient_id, {size} FROM {table} "
                                      "WHERE unique_id IN " + sql.in_(chunk) for table, digest, size in tables)

        return {uid: (obj_id, digest, pid, size) for uid, obj_id, digest, pid, size in self._lookup(unique_ids, write)}

    def existing_ids(self, uuids: Iterable[str]) -> set[str]:
        def write(sql: Sql, chunk: Sequence[str]) -> None:
            sql += " UNION ALL ".join(f"SELECT id FROM {table} WHERE id IN " + sql.in_(chunk) for table in
                                      ("xds_document", "xds_submission_set", "xds_folder", "xds_association"))

        return {row[0] for row in self._lookup(uuids, write)}

    def document_status(self, uuids: Iterable[str]) -> dict[str, tuple[str, str, str | None]]:
        """entryUUID -> (status, patient id, kind) for registered documents, folders, submission sets."""
        def write(sql: Sql, chunk: Sequence[str]) -> None:
            sql += " UNION ALL ".join(f"SELECT id, status, patient_id, '{kind}' FROM {table} WHERE id IN "
                                      + sql.in_(chunk) for kind, table in
                                      (("DocumentEntry", "xds_document"), ("Folder", "xds_folder"),
                                       ("SubmissionSet", "xds_submission_set")))

        return {obj_id: (status, pid, kind) for obj_id, status, pid, kind in self._lookup(uuids, write)}

    def known_patient(self, patient_id: str) -> bool:
        with self.reader.connect() as conn:
            return conn.scalar(select(t.patients.c.patient_id)
                               .where(t.patients.c.patient_id == patient_id)) is not None

    def add_patients(self, patient_ids: Iterable[str]) -> int:
        """Patient identity feed: record ids the registry accepts. Returns how many were new."""
        new = 0
        with self.engine.begin() as conn:
            for pid in set(patient_ids):
                exists = conn.scalar(select(t.patients.c.patient_id).where(t.patients.c.patient_id == pid))
                if exists is None:
                    conn.execute(insert(t.patients).values(patient_id=pid))
                    new += 1
        return new

    # --- registration ---------------------------------------------------------------------------
    def register(self, sub: Submission, *, deprecate: Sequence[str] = (),
                 touched_folders: Sequence[str] = (), now: str | None = None,
                 replacements: Sequence[tuple[str, str]] = (),
                 also: Callable[[Connection], None] | None = None, conn: Connection | None = None) -> list[Association]:
        """Store a validated submission, deprecate replaced entries, bump folders; all or nothing.

        ``replacements`` are (replacement, original) entryUUID pairs (RPLC, XFRM_RPLC): each
        replacement joins every Folder its original is a member of (ITI TF-2a 3.42.4.1.3.5, TF-3
        4.2.2.2.3); the HasMember associations the registry creates for that are returned.
        ``also`` runs inside the same transaction: a co-located repository records its documents
        there, so metadata and content index commit (or roll back) together. With ``conn`` the
        submission is written under a savepoint of the caller's transaction (bulk loading).
        """
        doc_rows, ss_rows, folder_rows, assoc_rows = [], [], [], []
        code_rows, author_rows, refid_rows, uid_rows = [], [], [], []
        for de in sub.documents:
            doc_rows.append(_document_row(de))
            uid_rows.append({"unique_id": de.unique_id or "", "patient_id": de.patient_id or "",
                             "fingerprint": de.hash.lower() if de.hash and not de.on_demand else de.id})
            code_rows.extend(_document_codes(de))
            author_rows.extend({"obj_id": de.id, "person": a.person} for a in de.authors if a.person)
            refid_rows.extend({"doc_id": de.id, "value": r} for r in de.reference_ids)
        if sub.submission_set is not None:
            ss = sub.submission_set
            ss_rows.append(_submission_set_row(ss))
            if ss.content_type_code is not None:
                code_rows.append({"obj_id": ss.id, "scheme": v.SS_CONTENT_TYPE_CODE,
                                  "key": ss.content_type_code.key()})
            author_rows.extend({"obj_id": ss.id, "person": a.person} for a in ss.authors if a.person)
        for fd in sub.folders:
            folder_rows.append(_folder_row(fd))
            code_rows.extend({"obj_id": fd.id, "scheme": v.FOLDER_CODE_LIST, "key": c.key()} for c in fd.codes)
        for assoc in sub.associations:
            assoc_rows.append(_association_row(assoc))
        tables = ((t.documents, doc_rows), (t.submission_sets, ss_rows), (t.folders, folder_rows),
                  (t.associations, assoc_rows), (t.codes, code_rows), (t.authors, author_rows),
                  (t.reference_ids, refid_rows))

        created: list[Association] = []

        def write(c: Connection) -> None:
            if uid_rows:  # first: on SQLite this write takes the database's write lock
                try:
                    # in one order everywhere: two submissions claiming the same uniqueIds wait
                    # for each other instead of deadlocking
                    _claim_unique_ids(c, sorted(uid_rows, key=lambda r: r["unique_id"]))
                except IntegrityError as exc:
                    raise UniqueIdTaken(str(exc.orig) if exc.orig else str(exc)) from exc
            for table, rows in tables:
                if rows:
                    insert_rows(c, table, rows)
            created[:] = self._join_folders_of_originals(c, sub, replacements)
            if created:
                insert_rows(c, t.associations, [_association_row(a) for a in created])
            for doc_id in deprecate:
                self._set_status(c, t.documents, doc_id, v.Status.DEPRECATED)
            if now:
                for folder_id in sorted({*touched_folders, *(a.source for a in created)}):
                    self._touch_folder(c, folder_id, now)
            if also is not None:
                also(c)

        try:
            if conn is None:
                with self.engine.begin() as own:
                    write(own)
            else:
                with conn.begin_nested():
                    write(conn)
        except IntegrityError as exc:
            raise DuplicateError(str(exc.orig) if exc.orig else str(exc)) from exc
        return created

    @staticmethod
    def _join_folders_of_originals(conn: Connection, sub: Submission,
                                   replacements: Sequence[tuple[str, str]]) -> list[Association]:
        """New Folder -> replacement HasMember associations, one per Folder holding the original.

        Read inside the registering transaction, so a membership committed just before is seen.
        A Folder the submission itself already links to the replacement is left alone.
        """
        if not replacements:
            return []
        a, fd = t.associations, t.folders
        originals = sorted({orig for _, orig in replacements})
        member_of: dict[str, list[str]] = {}
        for chunk in _chunks(originals):
            rows = conn.execute(select(a.c.source, a.c.target).join(fd, fd.c.id == a.c.source).where(
                a.c.type == v.AssociationType.HAS_MEMBER, a.c.target.in_(chunk),
                a.c.status == v.Status.APPROVED)).all()
            for source, target in rows:
                member_of.setdefault(target, []).append(source)
        linked = {(x.source, x.target) for x in sub.associations
                  if x.association_type == v.AssociationType.HAS_MEMBER}
        created: list[Association] = []
        for new, orig in replacements:
            for folder_id in sorted(set(member_of.get(orig, ()))):
                if (folder_id, new) not in linked:
                    linked.add((folder_id, new))
                    created.append(Association(id=rim.new_uuid(), association_type=v.AssociationType.HAS_MEMBER,
                                               source=folder_id, target=new, status=v.Status.APPROVED))
        return created

    @staticmethod
    def _set_status(conn, table, obj_id: str, status: str) -> None:
        row = conn.execute(select(table.c.rim).where(table.c.id == obj_id)).first()
        if row is None:
            return
        el = etree.fromstring(row.rim)
        el.set("status", status)
        conn.execute(update(table).where(table.c.id == obj_id).values(status=status, rim=rim.to_bytes(el)))

    @staticmethod
    def _touch_folder(conn, folder_id: str, now: str) -> None:
        row = conn.execute(select(t.folders.c.rim).where(t.folders.c.id == folder_id)).first()
        if row is None:
            return
        folder = rim.read_folder(etree.fromstring(row.rim))
        folder.last_update_time = now
        conn.execute(update(t.folders).where(t.folders.c.id == folder_id)
                     .values(last_update_time=pad_time(now), rim=rim.render(folder)))

    def set_document_status(self, doc_id: str, status: str) -> bool:
        with self.engine.begin() as conn:
            exists = conn.scalar(select(t.documents.c.id).where(t.documents.c.id == doc_id))
            if exists is None:
                return False
            self._set_status(conn, t.documents, doc_id, status)
        return True

    def delete_all(self) -> None:
        """Empty the registry (tests and ``xds-node demo --fresh``)."""
        with self.engine.begin() as conn:
            for table in (t.codes, t.authors, t.reference_ids, t.associations, t.documents,
                          t.document_unique_ids, t.folders, t.submission_sets, t.patients):
                conn.execute(delete(table))

    # --- reads used by stored queries ------------------------------------------------------------
    def fetch(self, kind: str, ids: Iterable[str]) -> list[Row]:
        table = _TABLES[kind]
        ids = list(dict.fromkeys(ids))
        out: dict[str, Row] = {}
        with self.reader.connect() as conn:
            for chunk in _chunks(ids):
                cols = [table.c.id, table.c.rim, table.c.status]
                cols.append(table.c.patient_id if kind != "assoc" else table.c.source)
                for row in conn.execute(select(*cols).where(table.c.id.in_(chunk))):
                    pid = row[3] if kind != "assoc" else None
                    out[row.id] = Row(kind, row.id, pid, row.rim, row.status)
        return [out[i] for i in ids if i in out]

    def has_patient(self, patient_id: str) -> bool:
        """Whether any object of this patient is registered (XCA tells unknown patients apart)."""
        with self.reader.connect() as conn:
            return conn.scalar(select(t.documents.c.id).where(t.documents.c.patient_id == patient_id).limit(1)) \
                is not None

    def patients_of_documents(self, unique_ids: Iterable[str]) -> dict[str, str]:
        """document uniqueId -> patient id, for the consent check on retrieve."""
        ids = sorted(set(unique_ids))

        def lookup(conn: Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for chunk in _chunks(ids):
                for row in conn.execute(select(t.documents.c.unique_id, t.documents.c.patient_id)
                                        .where(t.documents.c.unique_id.in_(chunk))):
                    out[row.unique_id] = row.patient_id
            return out

        return read(self.reader, lookup) if ids else {}

    def patients_of_objects(self, ids: Iterable[str]) -> dict[str, frozenset[str]]:
        """entryUUID -> the patient ids an object reveals, for the consent check on queries.

        A document, submission set or folder reveals its own patient; an association reveals the
        patients of both its ends (an end that is itself an association, as when a submission set
        holds a folder->document link, is followed). An id not in the registry, or an association
        with an end not in the registry, is absent from the answer: callers must withhold it.
        """
        pending = set(ids)
        owners: dict[str, str] = {}
        ends: dict[str, tuple[str, str]] = {}
        with self.reader.connect() as conn:
            for _ in range(3):  # association -> association -> object: registration allows no deeper chain
                todo = sorted(pending - owners.keys() - ends.keys())
                if not todo:
                    break
                for chunk in _chunks(todo):
                    for table in (t.documents, t.submission_sets, t.folders):
                        for row in conn.execute(select(table.c.id, table.c.patient_id).where(table.c.id.in_(chunk))):
                            owners[row.id] = row.patient_id
                    a = t.associations
                    for row in conn.execute(select(a.c.id, a.c.source, a.c.target).where(a.c.id.in_(chunk))):
                        ends[row.id] = (row.source, row.target)
                pending = {e for pair in ends.values() for e in pair}

        def reveal(obj: str, depth: int = 0) -> frozenset[str] | None:
            if obj in owners:
                return frozenset((owners[obj],))
            if obj not in ends or depth > 2:
                return None
            parts = [reveal(e, depth + 1) for e in ends[obj]]
            return None if any(p is None for p in parts) else frozenset().union(*parts)  # type: ignore[arg-type]

        out: dict[str, frozenset[str]] = {}
        for obj in ids:
            found = reveal(obj)
            if found is not None:
                out[obj] = found
        return out

    def count(self, kind: str) -> int:
        from sqlalchemy import func

        with self.reader.connect() as conn:
            return conn.scalar(select(func.count()).select_from(_TABLES[kind])) or 0


#: Same text on SQLite (3.24+) and PostgreSQL; ``{p}`` becomes the DBAPI's placeholder.
_CLAIM = ("INSERT INTO xds_document_uid (unique_id, fingerprint, patient_id) VALUES ({p}unique_id{s}, "
          "{p}fingerprint{s}, {p}patient_id{s}) ON CONFLICT (unique_id) DO UPDATE SET fingerprint = NULL "
          "WHERE xds_document_uid.fingerprint <> excluded.fingerprint "
          "OR xds_document_uid.patient_id <> excluded.patient_id")


def _claim_unique_ids(conn: Connection, rows: list[dict]) -> None:
    """Record what each new DocumentEntry uniqueId stands for; fail if it already stands for else.

    One statement: a new uniqueId is inserted; a known one with the same fingerprint (hash) and
    patient is left as it is (an identical resubmission); a known one with other content is
    "updated" to NULL, which the NOT NULL column refuses, so the whole registration rolls back.
    A competing transaction's uncommitted claim makes PostgreSQL wait for its outcome (SQLite
    serialises writers), so two racing submissions of different content cannot both commit.
    Driver-level SQL, like ``insert_rows``: this runs on every registration.
    """
    named = conn.dialect.paramstyle in ("qmark", "named", "numeric")
    conn.exec_driver_sql(_CLAIM.format(p=":" if named else "%(", s="" if named else ")s"), rows)


_TABLES = {"doc": t.documents, "ss": t.submission_sets, "folder": t.folders, "assoc": t.associations}


def _document_row(de: DocumentEntry) -> dict:
    return {
        "id": de.id,
        "unique_id": de.unique_id or "",
        "lid": de.lid,
        "patient_id": de.patient_id or "",
        "status": de.status or v.Status.APPROVED,
        "object_type": de.object_type or v.STABLE_DOCUMENT_ENTRY,
        "mime_type": de.mime_type,
        "hash": de.hash.lower() if de.hash else None,
        "size": de.size,
        "repository_unique_id": de.repository_unique_id,
        "creation_time": _pad(de.creation_time),
        "service_start_time": _pad(de.service_start_time),
        "service_stop_time": _pad(de.service_stop_time),
        "rim": rim.render(de),
    }


def _document_codes(de: DocumentEntry) -> list[dict]:
    rows = []
    for scheme, code in (
        (v.DOC_CLASS_CODE, de.class_code),
        (v.DOC_TYPE_CODE, de.type_code),
        (v.DOC_FORMAT_CODE, de.format_code),
        (v.DOC_HEALTHCARE_FACILITY_TYPE_CODE, de.healthcare_facility_type_code),
        (v.DOC_PRACTICE_SETTING_CODE, de.practice_setting_code),
    ):
        if code is not None:
            rows.append({"obj_id": de.id, "scheme": scheme, "key": code.key()})
    rows.extend({"obj_id": de.id, "scheme": v.DOC_CONFIDENTIALITY_CODE, "key": c.key()}
                for c in de.confidentiality_codes)
    rows.extend({"obj_id": de.id, "scheme": v.DOC_EVENT_CODE, "key": c.key()} for c in de.event_codes)
    return rows


def _submission_set_row(ss: SubmissionSet) -> dict:
    return {
        "id": ss.id,
        "unique_id": ss.unique_id or "",
        "patient_id": ss.patient_id or "",
        "status": ss.status or v.Status.APPROVED,
        "source_id": ss.source_id,
        "submission_time": _pad(ss.submission_time),
        "rim": rim.render(ss),
    }


def _folder_row(fd: Folder) -> dict:
    return {
        "id": fd.id,
        "unique_id": fd.unique_id or "",
        "patient_id": fd.patient_id or "",
        "status": fd.status or v.Status.APPROVED,
        "last_update_time": _pad(fd.last_update_time),
        "rim": rim.render(fd),
    }


def _association_row(assoc: Association) -> dict:
    return {
        "id": assoc.id,
        "type": assoc.association_type,
        "source": assoc.source,
        "target": assoc.target,
        "status": assoc.status or v.Status.APPROVED,
        "rim": rim.render(assoc),
    }
