"""The checking engine: decides *whether* each catalogued rule is broken by a submission."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from xds_node.ebxml import model as m
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.validation.base import (
    _ACTOR_CODES,
    _APPROVED,
    _DEPRECATED,
    ASSOCIATION,
    DOCUMENT_ENTRY,
    FOLDER,
    ITI42,
    SUBMISSION_SET,
    TRANSACTIONS,
    Violation,
)
from xds_node.ebxml.validation.catalogue import RULES_BY_ID
from xds_node.ebxml.validation.fields import _DE_CODES, _KIND_TABLES
from xds_node.ebxml.validation.formats import (
    _CX_PID,
    _CX_SOURCE,
    _HASH,
    _HOME,
    _KNOWN_ASSOCIATIONS,
    _LANGUAGE,
    _MIME,
    _NEEDS_REGISTERED_TARGET,
    _PID_INFO,
    _SS_STATUSES,
    _URN_UUID,
    _is_uuid_id,
    _missing,
    _show,
    _xcn_ok,
    _xon_ok,
    valid_document_unique_id,
    valid_dtm,
    valid_oid,
)
from xds_node.ebxml.validation.limits import FieldLimits, check_limits


# --- what validation needs to know about the registry -------------------------------------------------
class RegistryLookup(Protocol):
    """Read-only questions about what is already registered (``registry.store`` implements it)."""

    def existing_unique_ids(self, unique_ids: Iterable[str]) -> dict[str, tuple]:
        """uniqueId -> (entryUUID, hash, patientId[, size]) of an object registered with it (see
        :class:`Registered`); hash and size are None for SubmissionSets, Folders, On-Demand entries."""
        ...

    def existing_ids(self, uuids: Iterable[str]) -> set[str]:
        """The entryUUIDs (of any object, associations included) that are registered."""
        ...

    def document_status(self, uuids: Iterable[str]) -> dict[str, tuple[str, str, str | None]]:
        """entryUUID -> (status URN, patientId, kind) for DocumentEntries, Folders, SubmissionSets."""
        ...

    def known_patient(self, patient_id: str) -> bool | None:
        """False: unknown patient; None: no patient identity source configured (skip the check)."""
        ...


class Registered(NamedTuple):
    """What validation compares a resubmitted uniqueId with (a lookup may leave out ``size``)."""

    entry_uuid: str
    hash: str | None
    patient_id: str | None
    size: int | None = None


@dataclass(slots=True)
class ValidationContext:
    transaction: str = ITI42  # ITI41 or ITI42
    lookup: RegistryLookup | None = None  # None: skip every check that needs the registry
    home_community_id: str | None = None  # reported as RegistryError.location
    actor: str = "registry"  # "repository": a stand-alone Repository checking an ITI-41
    limits: FieldLimits | None = None  # what the storage can hold per field; None: not checked


# --- the checker ---------------------------------------------------------------------------------------
class _Out:
    __slots__ = ("codes", "items", "tx")

    def __init__(self, ctx: ValidationContext):
        self.tx = ctx.transaction
        self.codes = _ACTOR_CODES[ctx.actor]
        self.items: list[Violation] = []

    def add(self, rule_id: str, obj_id: str | None, **fields: object) -> None:
        rule = RULES_BY_ID[rule_id]
        if not rule.applies(self.tx):
            return
        shown = {k: _show(x) if isinstance(x, str) else x for k, x in fields.items()}
        message = rule.message.format(obj=_show(obj_id) if obj_id is not None else "", **shown)
        self.items.append(Violation(rule, self.codes.get(rule.code, rule.code), obj_id, message))


def _objects(sub: m.Submission) -> Iterator[tuple[str, m.RegistryObject]]:
    if sub.submission_set is not None:
        yield SUBMISSION_SET, sub.submission_set
    for d in sub.documents:
        yield DOCUMENT_ENTRY, d
    for f in sub.folders:
        yield FOLDER, f
    for a in sub.associations:
        yield ASSOCIATION, a


def _check_common(kind: str, o: m.RegistryObject, tx: str, out: _Out) -> None:
    """Required attributes and single-valued cardinality, straight from the tables."""
    required, slots, schemes, prefix = _KIND_TABLES[kind]
    on_demand = kind == DOCUMENT_ENTRY and o.object_type == v.ON_DEMAND_DOCUMENT_ENTRY
    for attr, rule_id, stable_only in required[tx]:
        if (
            _missing(getattr(o, attr))
            and not (stable_only and on_demand)
            and not (attr == "size" and o.slot("size") is not None)  # present but unreadable
        ):
            out.add(rule_id, o.id)
    single = f"{prefix}-single-valued"
    for s in o.extra_slots:
        if s.name == "size" and isinstance(o, m.DocumentEntry) and o.size is None:
            # The codec keeps a size it cannot read as an integer here, with no named value.
            out.add("DE-size-format", o.id, value=s.values[0] if s.values else "(empty)")
        elif s.name in slots:
            out.add(single, o.id, attr=slots[s.name])
    for c in o.extra_classifications:
        if c.scheme in schemes:
            out.add(single, o.id, attr=schemes[c.scheme])
    for e in o.extra_identifiers:
        if e.scheme in schemes:
            out.add(single, o.id, attr=schemes[e.scheme])
    if o.home is not None and not _HOME.fullmatch(o.home):
        out.add("HOME-format", o.id, kind=kind, value=o.home)
    if getattr(o, "limited_metadata", False):
        out.add("LIMITED-metadata", o.id, kind=kind)


def _check_time(kind: str, o: m.RegistryObject, attr: str, value: str | None, out: _Out) -> None:
    if value and not valid_dtm(value):
        out.add("DTM-format", o.id, kind=kind, attr=attr, value=value)


def _check_oid(kind: str, o: m.RegistryObject, attr: str, value: str | None, out: _Out) -> None:
    if value and not valid_oid(value):
        out.add("OID-format", o.id, kind=kind, attr=attr, value=value)


def _check_pid(kind: str, o: m.RegistryObject, value: str | None, out: _Out) -> None:
    if value and not (len(value) <= 256 and (mt := _CX_PID.fullmatch(value)) and len(mt.group(2)) <= 64):
        out.add("CX-patientId-format", o.id, kind=kind, attr="patientId", value=value)


def _check_code(kind: str, o: m.RegistryObject, attr: str, code: m.Code | None, out: _Out) -> None:
    if code is not None and not (code.code and code.code.strip() and code.scheme and code.scheme.strip()):
        out.add("CODE-incomplete", o.id, kind=kind, attr=attr, value=f"{code.code}^^{code.scheme}")


def _check_authors(kind: str, o: m.RegistryObject, authors: list[m.Author], out: _Out) -> None:
    for a in authors:
        if not (a.person or a.institutions or a.telecoms):
            out.add("AUTHOR-incomplete", o.id, kind=kind)
        if a.person and not _xcn_ok(a.person):
            out.add("XCN-format", o.id, kind=kind, attr="authorPerson", value=a.person)
        for inst in a.institutions:
            if not _xon_ok(inst):
                out.add("XON-format", o.id, kind=kind, attr="authorInstitution", value=inst)


def _check_document(d: m.DocumentEntry, tx: str, out: _Out) -> None:
    K = DOCUMENT_ENTRY
    _check_common(K, d, tx, out)
    if d.object_type not in v.DOCUMENT_ENTRY_TYPES:
        out.add("DE-objectType", d.id, value=str(d.object_type))
    for attr, value in (
        ("creationTime", d.creation_time),
        ("serviceStartTime", d.service_start_time),
        ("serviceStopTime", d.service_stop_time),
    ):
        _check_time(K, d, attr, value, out)
    if d.object_type == v.ON_DEMAND_DOCUMENT_ENTRY:
        if d.hash is not None:
            out.add("DE-on-demand-hash-size", d.id, attr="hash")
        if d.size is not None:
            out.add("DE-on-demand-hash-size", d.id, attr="size")
    if d.hash is not None and not _HASH.fullmatch(d.hash):
        out.add("DE-hash-format", d.id, value=d.hash)
    if d.size is not None and (type(d.size) is not int or d.size < 0):
        out.add("DE-size-format", d.id, value=str(d.size))
    if d.unique_id and not valid_document_unique_id(d.unique_id):
        out.add("DE-uniqueId-format", d.id, value=d.unique_id)
    _check_oid(K, d, "repositoryUniqueId", d.repository_unique_id, out)
    _check_pid(K, d, d.patient_id, out)
    if d.source_patient_id and not _CX_SOURCE.match(d.source_patient_id):
        out.add("DE-sourcePatientId-format", d.id, value=d.source_patient_id)
    for info in d.source_patient_info:
        if not _PID_INFO.fullmatch(info):
            out.add("DE-sourcePatientInfo-format", d.id, value=info)
    if d.mime_type and not _MIME.fullmatch(d.mime_type):
        out.add("DE-mimeType-format", d.id, value=d.mime_type)
    if d.language_code and not _LANGUAGE.fullmatch(d.language_code):
        out.add("DE-languageCode-format", d.id, value=d.language_code)
    for attr, name in _DE_CODES:
        _check_code(K, d, name, getattr(d, attr), out)
    for c in d.confidentiality_codes:
        _check_code(K, d, "confidentialityCode", c, out)
    for c in d.event_codes:
        _check_code(K, d, "eventCodeList", c, out)
    _check_authors(K, d, d.authors, out)
    if d.legal_authenticator and not _xcn_ok(d.legal_authenticator):
        out.add("XCN-format", d.id, kind=K, attr="legalAuthenticator", value=d.legal_authenticator)


def _check_submission_set(ss: m.SubmissionSet, tx: str, out: _Out) -> None:
    K = SUBMISSION_SET
    _check_common(K, ss, tx, out)
    _check_time(K, ss, "submissionTime", ss.submission_time, out)
    _check_oid(K, ss, "uniqueId", ss.unique_id, out)
    _check_oid(K, ss, "sourceId", ss.source_id, out)
    _check_pid(K, ss, ss.patient_id, out)
    _check_code(K, ss, "contentTypeCode", ss.content_type_code, out)
    _check_authors(K, ss, ss.authors, out)


def _check_folder(f: m.Folder, tx: str, out: _Out) -> None:
    K = FOLDER
    _check_common(K, f, tx, out)
    _check_time(K, f, "lastUpdateTime", f.last_update_time, out)
    _check_oid(K, f, "uniqueId", f.unique_id, out)
    _check_pid(K, f, f.patient_id, out)
    for c in f.codes:
        _check_code(K, f, "codeList", c, out)


def check_submission(sub: m.Submission, ctx: ValidationContext) -> list[Violation]:
    """Every rule violation in ``sub``, in discovery order ([] when the submission is valid)."""
    tx = ctx.transaction
    if tx not in TRANSACTIONS:
        raise ValueError(f"metadata validation serves {TRANSACTIONS}, not {tx!r}")
    out = _Out(ctx)
    lookup = ctx.lookup
    ss = sub.submission_set
    docs = {d.id: d for d in sub.documents}
    folders = {f.id: f for f in sub.folders}

    # --- one SubmissionSet; entryUUIDs ------------------------------------------------------------
    others = [c for c in sub.extra_objects if c.node == v.SUBMISSION_SET_NODE
              and (ss is None or c.classified_object != ss.id)]
    if ss is None or others:
        out.add("SUB-one-submission-set", None, count=len(others) + (ss is not None))
    local: dict[str, str] = {}  # entryUUID -> kind, for every object in the submission
    for kind, o in _objects(sub):
        if not o.id:  # an id-less (ebRS 2.1 style) association: assign_uuids gives it one
            continue
        if o.id in local:
            out.add("ID-duplicate-in-submission", o.id, kind=kind)
        else:
            local[o.id] = kind
        if _is_uuid_id(o.id) and not _URN_UUID.fullmatch(o.id):
            out.add("ID-invalid-uuid", o.id, kind=kind)

    # --- per-object attributes ------------------------------------------------------------------------
    if ss is not None:
        _check_submission_set(ss, tx, out)
    for d in sub.documents:
        _check_document(d, tx, out)
    for f in sub.folders:
        _check_folder(f, tx, out)
    for a in sub.associations:
        if a.home is not None and not _HOME.fullmatch(a.home):
            out.add("HOME-format", a.id, kind=ASSOCIATION, value=a.home)
    if ctx.limits:
        for rule_id, obj_id, fields in check_limits(_objects(sub), ctx.limits):
            out.add(rule_id, obj_id, **fields)

    # --- patient consistency -------------------------------------------------------------------------
    ss_pid = ss.patient_id if ss is not None else None
    if ss_pid:
        for kind, objs in ((DOCUMENT_ENTRY, sub.documents), (FOLDER, sub.folders)):
            for o in objs:
                if o.patient_id and o.patient_id != ss_pid:
                    out.add("PID-mismatch", o.id, kind=kind, value=o.patient_id, expected=ss_pid)

    # --- what the registry knows (a few batched calls) ------------------------------------------------
    external = {r for a in sub.associations for r in (a.source, a.target) if r and r not in local}
    if lookup is not None:
        asked = external | {i for i in local if _is_uuid_id(i)}
        existing = lookup.existing_ids(asked) if asked else set()
        for i in sorted(existing & local.keys()):
            out.add("ID-already-registered", i, kind=local[i])
        resolved = external & existing
        status: dict[str, tuple[str, str, str | None]] | None = (
            lookup.document_status(resolved) if resolved else {}
        )
    else:  # no registry at hand: only symbolic references are surely unresolvable
        resolved = {r for r in external if _is_uuid_id(r)}
        status = None

    # --- associations --------------------------------------------------------------------------------
    linked: set[str] = set()
    for a in sub.associations:
        atype = a.association_type
        if atype not in _KNOWN_ASSOCIATIONS:
            out.add("ASSOC-unknown-type", a.id, value=atype)
            continue
        is_rel = atype != v.AssociationType.HAS_MEMBER
        for end, ref in (("sourceObject", a.source), ("targetObject", a.target)):
            if (not ref or (ref not in local and ref not in resolved)) and not (
                is_rel and end == "targetObject"
            ):
                out.add("ASSOC-unresolved", a.id, end=end, value=ref or "(empty)")
        if is_rel:
            _check_relationship(a, docs, local, resolved, status, out)
        else:
            _check_has_member(a, ss, docs, folders, local, status or {}, linked, out)
    if ss is not None:
        for kind, objs in ((DOCUMENT_ENTRY, sub.documents), (FOLDER, sub.folders)):
            for o in objs:
                if o.id not in linked:
                    out.add("SUB-hasmember-missing", o.id, kind=kind)

    # --- uniqueIds -----------------------------------------------------------------------------------
    by_uid: dict[str, tuple[str, m.RegistryObject]] = {}
    for kind, o in _objects(sub):
        uid = getattr(o, "unique_id", None)
        if not uid:
            continue
        if uid in by_uid:
            out.add("UID-duplicate-in-submission", o.id, kind=kind, value=uid)
        else:
            by_uid[uid] = (kind, o)
    if lookup is not None and by_uid:
        for uid, found in lookup.existing_unique_ids(by_uid.keys()).items():
            entry_uuid, known_hash, known_pid, known_size = Registered(*found)
            if uid not in by_uid:
                continue
            kind, d = by_uid[uid]
            if entry_uuid == d.id:  # the very object (reported as ID-already-registered)
                continue
            if not isinstance(d, m.DocumentEntry):
                out.add("UID-already-registered", d.id, kind=kind, value=uid)
                continue
            if known_hash is None or d.object_type == v.ON_DEMAND_DOCUMENT_ENTRY:
                out.add("UID-registered-not-comparable", d.id, value=uid)
            elif d.hash is not None and d.hash.lower() != known_hash.lower():
                out.add("UID-nonidentical-hash", d.id, value=uid)
            elif d.size is not None and known_size is not None and d.size != known_size:
                out.add("UID-nonidentical-size", d.id, value=uid)
            elif d.patient_id and known_pid and d.patient_id != known_pid:
                out.add("UID-other-patient", d.id, value=uid, expected=known_pid)
            # same hash (or none yet: ITI-41 before the Repository computed it): the same document,
            # registered again under a new entryUUID, is accepted

    # --- known patients ------------------------------------------------------------------------------
    if lookup is not None:
        seen: set[str] = set()
        for kind, o in _objects(sub):
            pid = getattr(o, "patient_id", None)
            if pid and pid not in seen:
                seen.add(pid)
                if lookup.known_patient(pid) is False:
                    out.add("PID-unknown", o.id, kind=kind, value=pid)
    return out.items


def _check_has_member(
    a: m.Association,
    ss: m.SubmissionSet | None,
    docs: dict[str, m.DocumentEntry],
    folders: dict[str, m.Folder],
    local: dict[str, str],
    status: dict[str, tuple[str, str, str | None]],
    linked: set[str],
    out: _Out,
) -> None:
    src, tgt = a.source, a.target
    _, old_doc_pid, tgt_kind = status.get(tgt, ("", "", None))
    if ss is not None and src == ss.id:
        linked.add(tgt)
        tgt_is_new_doc = tgt in docs
        tgt_is_old_doc = tgt_kind == DOCUMENT_ENTRY
        if not (tgt_is_new_doc or tgt_is_old_doc):
            return
        sss = a.submission_set_status
        if not sss:
            out.add("ASSOC-ss-status-missing", a.id)
        elif sss not in _SS_STATUSES:
            out.add("ASSOC-ss-status-invalid", a.id, value=sss)
        elif (sss == "Original") != tgt_is_new_doc:
            out.add("ASSOC-ss-status-mismatch", a.id, value=sss, target=tgt)
        if tgt_is_old_doc and ss.patient_id and old_doc_pid and old_doc_pid != ss.patient_id:
            out.add("PID-mismatch-reference", a.id, target=tgt, value=old_doc_pid, expected=ss.patient_id)
        return
    ext_src = status.get(src)
    if src in folders:
        folder_pid = folders[src].patient_id
    elif ext_src is not None and ext_src[2] == FOLDER:
        folder_pid = ext_src[1]
    else:
        if src in local or ext_src is not None:  # resolved, but not something that has members
            out.add("ASSOC-hasmember-source", a.id, value=src)
        return
    if tgt in docs:
        doc_pid = docs[tgt].patient_id
    elif tgt_kind == DOCUMENT_ENTRY:
        doc_pid = old_doc_pid
    else:
        return
    if folder_pid and doc_pid and folder_pid != doc_pid:
        out.add("PID-mismatch-folder-member", a.id, target=tgt, source=src, value=doc_pid,
                expected=folder_pid)


def _check_relationship(
    a: m.Association,
    docs: dict[str, m.DocumentEntry],
    local: dict[str, str],
    resolved: set[str],
    status: dict[str, tuple[str, str, str | None]] | None,
    out: _Out,
) -> None:
    atype = a.association_type.rsplit(":", 1)[-1]
    source = docs.get(a.source)
    if source is None and (a.source in local or a.source in resolved):  # else: ASSOC-unresolved
        out.add("REL-source-not-new-document", a.id, value=a.source, type=atype)
    tgt = a.target
    if tgt in local:
        # A signature may sign a document of the same submission; every other relationship
        # points at something already registered (TF-3 4.2.2.2).
        if a.association_type in _NEEDS_REGISTERED_TARGET or local[tgt] != DOCUMENT_ENTRY:
            out.add("REL-target-not-registered", a.id, value=tgt, type=atype)
        return
    if tgt not in resolved:
        out.add("REL-target-not-registered", a.id, value=tgt or "(empty)", type=atype)
        return
    if status is None:  # no registry to ask: its status and patient are unknown
        return
    st = status.get(tgt)
    if st is None or st[2] != DOCUMENT_ENTRY:  # registered, but an association/folder/set
        out.add("REL-target-not-registered", a.id, value=tgt, type=atype)
        return
    target_status, target_pid, _kind = st
    target_status = v.normalize_status(target_status)
    if target_status == _DEPRECATED:
        out.add("REL-target-deprecated", a.id, value=tgt, type=atype)
    elif target_status != _APPROVED:
        out.add("REL-target-not-approved", a.id, value=tgt, type=atype,
                status=target_status.rsplit(":", 1)[-1])
    if source is not None and source.patient_id and target_pid and target_pid != source.patient_id:
        out.add("PID-mismatch-relationship", a.id, type=atype, target=tgt, value=target_pid,
                expected=source.patient_id)


def check_storage_limits(sub: m.Submission, ctx: ValidationContext) -> list[Violation]:
    """Only the LIMIT-* rules: what a repository checks before handing metadata to a remote registry."""
    out = _Out(ctx)
    for rule_id, obj_id, fields in check_limits(_objects(sub), ctx.limits or {}):
        out.add(rule_id, obj_id, **fields)
    return out.items


def validate_submission(sub: m.Submission, ctx: ValidationContext) -> list[m.RegistryError]:
    """Every violation as a RegistryError (Error severity); [] when the submission is valid."""
    return [vi.to_error(ctx.home_community_id) for vi in check_submission(sub, ctx)]
