"""The 14 ITI-18 stored queries and the two ITI-51 ones as explicit SQL over the registry tables.

Each query is one small function from typed :class:`Params` to the rows it returns; the
dispatcher at the bottom picks it by query id. Filters are built with SQLAlchemy Core so the
same code runs on SQLite and PostgreSQL, and every filter uses an index (patient+status,
scheme+code, unique ids, association source/target).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import Connection, Select, and_, or_, select

from xds_node.db import Sql, read
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.query import Params, pad_time
from xds_node.ebxml.vocabulary import StoredQueryId as Q
from xds_node.registry import tables as t
from xds_node.registry.store import RegistryStore, Row

DocFilter = Callable[[Select], Select]


class TooManyResults(Exception):
    pass


def _code_filter(stmt: Select, table, params: Params, name: str, scheme: str) -> Select:
    """AND across Slot occurrences, OR within one: ``id IN (codes with scheme/key in group)``."""
    for group in params.groups(name):
        sub = select(t.codes.c.obj_id).where(t.codes.c.scheme == scheme, t.codes.c.key.in_(group))
        stmt = stmt.where(table.c.id.in_(sub))
    return stmt


def _time_filter(stmt: Select, column, params: Params, from_name: str, to_name: str) -> Select:
    lo, hi = params.one(from_name), params.one(to_name)
    if lo is not None:
        stmt = stmt.where(column >= pad_time(lo))
    if hi is not None:
        stmt = stmt.where(column < pad_time(hi))
    return stmt


def _author_filter(stmt: Select, table, patterns: list[str]) -> Select:
    if not patterns:
        return stmt
    sub = select(t.authors.c.obj_id).where(or_(*(t.authors.c.person.like(p) for p in patterns)))
    return stmt.where(table.c.id.in_(sub))


def _doc_type_filter(stmt: Select, params: Params) -> Select:
    types = params.flat("$XDSDocumentEntryType") or [v.STABLE_DOCUMENT_ENTRY]
    return stmt.where(t.documents.c.object_type.in_(types))


def _doc_content_filters(stmt: Select, params: Params) -> Select:
    """Format / confidentiality / type filters shared by GetAll and the *AndContents queries."""
    d = t.documents
    stmt = _code_filter(stmt, d, params, "$XDSDocumentEntryFormatCode", v.DOC_FORMAT_CODE)
    stmt = _code_filter(stmt, d, params, "$XDSDocumentEntryConfidentialityCode", v.DOC_CONFIDENTIALITY_CODE)
    return _doc_type_filter(stmt, params)


_DOC_COLS = (t.documents.c.id, t.documents.c.patient_id, t.documents.c.rim, t.documents.c.status)


_FIND_DOCUMENT_CODES = (
    ("$XDSDocumentEntryClassCode", v.DOC_CLASS_CODE),
    ("$XDSDocumentEntryTypeCode", v.DOC_TYPE_CODE),
    ("$XDSDocumentEntryPracticeSettingCode", v.DOC_PRACTICE_SETTING_CODE),
    ("$XDSDocumentEntryHealthcareFacilityTypeCode", v.DOC_HEALTHCARE_FACILITY_TYPE_CODE),
    ("$XDSDocumentEntryEventCodeList", v.DOC_EVENT_CODE),
    ("$XDSDocumentEntryFormatCode", v.DOC_FORMAT_CODE),
    ("$XDSDocumentEntryConfidentialityCode", v.DOC_CONFIDENTIALITY_CODE),
)
_FIND_DOCUMENT_TIMES = (
    ("creation_time", "CreationTime"),
    ("service_start_time", "ServiceStartTime"),
    ("service_stop_time", "ServiceStopTime"),
)


class QueryRunner:
    """Runs parsed stored queries against a :class:`RegistryStore`."""

    def __init__(self, store: RegistryStore, *, max_results: int = 5000):
        self.store = store
        self.max_results = max_results
        self._dispatch: dict[str, Callable[[Params], list[Row]]] = {
            Q.FIND_DOCUMENTS: self.find_documents,
            Q.FIND_DOCUMENTS_BY_REFERENCE_ID: self.find_documents,
            Q.FIND_SUBMISSION_SETS: self.find_submission_sets,
            Q.FIND_FOLDERS: self.find_folders,
            Q.GET_ALL: self.get_all,
            Q.GET_DOCUMENTS: self.get_documents,
            Q.GET_FOLDERS: self.get_folders,
            Q.GET_ASSOCIATIONS: self.get_associations,
            Q.GET_DOCUMENTS_AND_ASSOCIATIONS: self.get_documents_and_associations,
            Q.GET_SUBMISSION_SETS: self.get_submission_sets,
            Q.GET_SUBMISSION_SET_AND_CONTENTS: self.get_submission_set_and_contents,
            Q.GET_FOLDER_AND_CONTENTS: self.get_folder_and_contents,
            Q.GET_FOLDERS_FOR_DOCUMENT: self.get_folders_for_document,
            Q.GET_RELATED_DOCUMENTS: self.get_related_documents,
            # ITI-51: the same SQL, keyed by a (possibly empty) list of patients
            Q.FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS: self.find_documents,
            Q.FIND_FOLDERS_FOR_MULTIPLE_PATIENTS: self.find_folders,
        }

    def run(self, params: Params) -> list[Row]:
        rows = self._dispatch[params.query.query_id](params)
        if len(rows) > self.max_results:
            raise TooManyResults(f"{params.spec.name} matched {len(rows)} objects, more than the "
                                 f"{self.max_results} this registry returns in one response")
        return rows

    # --- helpers --------------------------------------------------------------------------------
    def _rows(self, kind: str, stmt: Select) -> list[Row]:
        with self.store.reader.connect() as conn:
            return [Row(kind, r[0], r[1], r[2], r[3]) for r in conn.execute(stmt.limit(self.max_results + 1))]

    def _assoc_rows(self, stmt: Select) -> list[Row]:
        a = t.associations
        with self.store.reader.connect() as conn:
            return [Row("assoc", r.id, None, r.rim, r.status)
                    for r in conn.execute(stmt.with_only_columns(a.c.id, a.c.rim, a.c.status))]

    def _ids_by_unique(self, table, unique_ids: list[str]) -> list[str]:
        with self.store.reader.connect() as conn:
            return list(conn.scalars(select(table.c.id).where(table.c.unique_id.in_(unique_ids))))

    def _doc_ids(self, params: Params) -> list[str]:
        if params.has("$XDSDocumentEntryEntryUUID"):
            return params.flat("$XDSDocumentEntryEntryUUID")
        return self._ids_by_unique(t.documents, params.flat("$XDSDocumentEntryUniqueId"))

    def _associations_touching(self, ids: Iterable[str], *, both_ends: set[str] | None = None,
                               types: list[str] | None = None) -> list[Row]:
        ids = list(ids)
        if not ids:
            return []
        a = t.associations
        stmt = select(a.c.id).where(or_(a.c.source.in_(ids), a.c.target.in_(ids)))
        if types:
            stmt = stmt.where(a.c.type.in_(types))
        if both_ends is not None:
            stmt = stmt.where(and_(a.c.source.in_(both_ends), a.c.target.in_(both_ends)))
        return self._assoc_rows(stmt)

    # --- Find* ----------------------------------------------------------------------------------
    def find_documents(self, params: Params) -> list[Row]:
        """FindDocuments / FindDocumentsByReferenceId / FindDocumentsForMultiplePatients, as one
        SELECT in driver-level SQL (indexed by patient+status when patients are given)."""
        sql = Sql(self.store.engine.dialect.paramstyle)
        sql += "SELECT id, patient_id, rim, status FROM xds_document WHERE "
        patients = list(dict.fromkeys(params.flat("$XDSDocumentEntryPatientId")))
        if len(patients) == 1:
            sql += "patient_id = " + sql.p(patients[0]) + " AND "
        elif patients:
            sql += "patient_id IN " + sql.in_(patients) + " AND "
        sql += "status IN " + sql.in_(params.flat("$XDSDocumentEntryStatus"))
        types = params.flat("$XDSDocumentEntryType") or [v.STABLE_DOCUMENT_ENTRY]
        sql += " AND object_type IN " + sql.in_(types)
        for name, scheme in _FIND_DOCUMENT_CODES:
            for group in params.groups(name):
                sql += (" AND id IN (SELECT obj_id FROM xds_code WHERE scheme = " + sql.p(scheme)
                        + " AND key IN " + sql.in_(group) + ")")
        for column, prefix in _FIND_DOCUMENT_TIMES:
            lo, hi = params.one(f"$XDSDocumentEntry{prefix}From"), params.one(f"$XDSDocumentEntry{prefix}To")
            if lo is not None:
                sql += f" AND {column} >= " + sql.p(pad_time(lo))
            if hi is not None:
                sql += f" AND {column} < " + sql.p(pad_time(hi))
        authors = params.flat("$XDSDocumentEntryAuthorPerson")
        if authors:
            sql += (" AND id IN (SELECT obj_id FROM xds_author WHERE "
                    + " OR ".join("person LIKE " + sql.p(a) for a in authors) + ")")
        for group in params.groups("$XDSDocumentEntryReferenceIdList"):
            sql += " AND id IN (SELECT doc_id FROM xds_reference_id WHERE value IN " + sql.in_(group) + ")"
        sql += f" LIMIT {self.max_results + 1}"

        def run(conn: Connection) -> list[Row]:
            cursor = conn.connection.cursor()  # the DBAPI cursor: no per-row result wrapping
            try:
                cursor.execute(sql.text, sql.bound)
                return [Row("doc", r[0], r[1], bytes(r[2]), r[3]) for r in cursor.fetchall()]
            finally:
                cursor.close()

        return read(self.store.reader, run)

    def find_submission_sets(self, params: Params) -> list[Row]:
        s = t.submission_sets
        stmt = select(s.c.id, s.c.patient_id, s.c.rim, s.c.status).where(
            s.c.patient_id == params.one("$XDSSubmissionSetPatientId"),
            s.c.status.in_(params.flat("$XDSSubmissionSetStatus")))
        if params.has("$XDSSubmissionSetSourceId"):
            stmt = stmt.where(s.c.source_id.in_(params.flat("$XDSSubmissionSetSourceId")))
        stmt = _time_filter(stmt, s.c.submission_time, params, "$XDSSubmissionSetSubmissionTimeFrom",
                            "$XDSSubmissionSetSubmissionTimeTo")
        stmt = _author_filter(stmt, s, params.flat("$XDSSubmissionSetAuthorPerson"))
        stmt = _code_filter(stmt, s, params, "$XDSSubmissionSetContentType", v.SS_CONTENT_TYPE_CODE)
        return self._rows("ss", stmt)

    def find_folders(self, params: Params) -> list[Row]:
        """FindFolders (one patient) and FindFoldersForMultiplePatients (a list, or none: all)."""
        f = t.folders
        stmt = select(f.c.id, f.c.patient_id, f.c.rim, f.c.status).where(
            f.c.status.in_(params.flat("$XDSFolderStatus")))
        patients = list(dict.fromkeys(params.flat("$XDSFolderPatientId")))
        if patients:
            stmt = stmt.where(f.c.patient_id.in_(patients))
        stmt = _time_filter(stmt, f.c.last_update_time, params, "$XDSFolderLastUpdateTimeFrom",
                            "$XDSFolderLastUpdateTimeTo")
        stmt = _code_filter(stmt, f, params, "$XDSFolderCodeList", v.FOLDER_CODE_LIST)
        return self._rows("folder", stmt)

    def get_all(self, params: Params) -> list[Row]:
        pid = params.one("$patientId")
        d, s, f = t.documents, t.submission_sets, t.folders
        docs = self._rows("doc", _doc_content_filters(
            select(*_DOC_COLS).where(d.c.patient_id == pid, d.c.status.in_(params.flat("$XDSDocumentEntryStatus"))),
            params))
        sets = self._rows("ss", select(s.c.id, s.c.patient_id, s.c.rim, s.c.status).where(
            s.c.patient_id == pid, s.c.status.in_(params.flat("$XDSSubmissionSetStatus"))))
        fols = self._rows("folder", select(f.c.id, f.c.patient_id, f.c.rim, f.c.status).where(
            f.c.patient_id == pid, f.c.status.in_(params.flat("$XDSFolderStatus"))))
        ids = {r.id for r in (*docs, *sets, *fols)}
        if not ids:
            return []
        a = t.associations
        assocs = self._assoc_rows(select(a.c.id).where(a.c.source.in_(ids), a.c.target.in_(ids)))
        # a submission set's HasMember to a folder->document association belongs to the result too
        second = self._assoc_rows(select(a.c.id).where(
            a.c.source.in_([r.id for r in sets]), a.c.target.in_([r.id for r in assocs]))) if assocs else []
        return [*sets, *docs, *fols, *assocs, *second]

    # --- Get* by id -----------------------------------------------------------------------------
    def get_documents(self, params: Params) -> list[Row]:
        return self.store.fetch("doc", self._doc_ids(params))

    def get_folders(self, params: Params) -> list[Row]:
        if params.has("$XDSFolderEntryUUID"):
            ids = params.flat("$XDSFolderEntryUUID")
        else:
            ids = self._ids_by_unique(t.folders, params.flat("$XDSFolderUniqueId"))
        return self.store.fetch("folder", ids)

    def get_associations(self, params: Params) -> list[Row]:
        return self._associations_touching(params.flat("$uuid"))

    def get_documents_and_associations(self, params: Params) -> list[Row]:
        docs = self.store.fetch("doc", self._doc_ids(params))
        return [*docs, *self._associations_touching([d.id for d in docs])]

    def get_submission_sets(self, params: Params) -> list[Row]:
        a = t.associations
        members = params.flat("$uuid")
        stmt = select(a.c.id).where(a.c.type == v.AssociationType.HAS_MEMBER, a.c.target.in_(members),
                                    a.c.source.in_(select(t.submission_sets.c.id)))
        assocs = self._assoc_rows(stmt)
        with self.store.reader.connect() as conn:
            ss_ids = list(dict.fromkeys(conn.scalars(select(a.c.source).where(a.c.id.in_([x.id for x in assocs])))))
        return [*self.store.fetch("ss", ss_ids), *assocs]

    def _package_contents(self, package_id: str, params: Params, *, kinds: tuple[str, ...]) -> list[Row]:
        """Members of a submission set or folder (HasMember targets), filtered, with the associations."""
        a = t.associations
        with self.store.reader.connect() as conn:
            links = conn.execute(select(a.c.id, a.c.target).where(
                a.c.source == package_id, a.c.type == v.AssociationType.HAS_MEMBER)).all()
        targets = [link.target for link in links]
        d = t.documents
        docs = self._rows("doc", _doc_content_filters(select(*_DOC_COLS).where(d.c.id.in_(targets)), params)) \
            if targets else []
        kept = {r.id for r in docs}
        fols: list[Row] = []
        if "folder" in kinds and targets:
            fols = self.store.fetch("folder", targets)
            kept.update(r.id for r in fols)
        # associations the package holds: HasMember to kept members, and (submission sets)
        # HasMember to folder->document associations whose document is kept
        member_assocs = self.store.fetch("assoc", targets)
        member_assoc_ids = set()
        if member_assocs:
            with self.store.reader.connect() as conn:
                for r in conn.execute(select(a.c.id, a.c.target).where(a.c.id.in_([m.id for m in member_assocs]))):
                    if r.target in kept:
                        member_assoc_ids.add(r.id)
        link_ids = [link.id for link in links if link.target in kept or link.target in member_assoc_ids]
        assocs = self.store.fetch("assoc", [*link_ids, *member_assoc_ids])
        return [*docs, *fols, *assocs]

    def get_submission_set_and_contents(self, params: Params) -> list[Row]:
        if params.has("$XDSSubmissionSetEntryUUID"):
            ids = [params.one("$XDSSubmissionSetEntryUUID")]
        else:
            ids = self._ids_by_unique(t.submission_sets, [params.one("$XDSSubmissionSetUniqueId")])
        sets = self.store.fetch("ss", ids)
        if not sets:
            return []
        return [*sets, *self._package_contents(sets[0].id, params, kinds=("doc", "folder"))]

    def get_folder_and_contents(self, params: Params) -> list[Row]:
        if params.has("$XDSFolderEntryUUID"):
            ids = [params.one("$XDSFolderEntryUUID")]
        else:
            ids = self._ids_by_unique(t.folders, [params.one("$XDSFolderUniqueId")])
        fols = self.store.fetch("folder", ids)
        if not fols:
            return []
        return [*fols, *self._package_contents(fols[0].id, params, kinds=("doc",))]

    def get_folders_for_document(self, params: Params) -> list[Row]:
        doc_ids = self._doc_ids(params)
        if not doc_ids:
            return []
        a = t.associations
        with self.store.reader.connect() as conn:
            folder_ids = list(conn.scalars(select(a.c.source).where(
                a.c.target.in_(doc_ids), a.c.type == v.AssociationType.HAS_MEMBER,
                a.c.source.in_(select(t.folders.c.id)))))
        return self.store.fetch("folder", folder_ids)

    def get_related_documents(self, params: Params) -> list[Row]:
        doc_ids = self._doc_ids(params)
        if not doc_ids:
            return []
        types = [_assoc_type(x) for x in params.flat("$AssociationTypes")]
        assocs = self._associations_touching(doc_ids, types=types)
        if not assocs:
            return []
        a = t.associations
        with self.store.reader.connect() as conn:
            ends = {r.id: (r.source, r.target) for r in conn.execute(
                select(a.c.id, a.c.source, a.c.target).where(a.c.id.in_([x.id for x in assocs])))}
        # only document-to-document relationships count (a submission set's HasMember does not)
        candidates = {e for pair in ends.values() for e in pair} | set(doc_ids)
        d = t.documents
        stmt = select(*_DOC_COLS).where(d.c.id.in_(candidates))
        if params.has("$XDSDocumentEntryType"):
            stmt = _doc_type_filter(stmt, params)
        docs = self._rows("doc", stmt)
        kept = {r.id for r in docs}
        assocs = [x for x in assocs if ends[x.id][0] in kept and ends[x.id][1] in kept]
        if not assocs:
            return []  # no related documents: the original is not returned on its own
        return [*docs, *assocs]


def _assoc_type(value: str) -> str:
    """Accept short association type names (RPLC, HasMember) as well as URNs."""
    if value.startswith("urn:"):
        return value
    for member in v.AssociationType:
        if member.value.rsplit(":", 1)[1] == value:
            return member.value
    return value
