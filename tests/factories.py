"""Valid XDS metadata built from the domain model, with knobs for the cases tests need."""

from __future__ import annotations

import hashlib
import itertools

from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import (
    Association,
    Author,
    Code,
    DocumentEntry,
    Folder,
    LocalizedString,
    Submission,
    SubmissionSet,
)
from xds_node.ebxml.validation import assign_uuids

_seq = itertools.count(1)
OID_ROOT = "1.3.6.1.4.1.21367.2026.99"


def patient(n: int = 1) -> str:
    return f"PAT{n:05d}^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"


def uid() -> str:
    return f"{OID_ROOT}.{next(_seq)}"


def document(pid: str, sym: str = "Document01", *, content: bytes | None = None, **overrides) -> DocumentEntry:
    content = content if content is not None else f"document {sym} {uid()}".encode()
    de = DocumentEntry(
        id=sym,
        mime_type="text/xml",
        unique_id=uid(),
        patient_id=pid,
        creation_time="20240115103000",
        hash=hashlib.sha1(content).hexdigest(),
        size=len(content),
        language_code="en-US",
        repository_unique_id="1.3.6.1.4.1.21367.2026.1.2",
        service_start_time="20240115090000",
        service_stop_time="20240115100000",
        source_patient_id=pid,
        source_patient_info=["PID-3|" + pid, "PID-5|Testpatient^Alpha^^^", "PID-7|19700101", "PID-8|M"],
        authors=[Author(person="^Ford^Harrison^^^Dr^^^&1.2.3&ISO", institutions=["Demo VA Medical Center"],
                        roles=["Attending"], specialties=["Internal Medicine"])],
        class_code=Code("11488-4", "2.16.840.1.113883.6.1", "Consultation note"),
        type_code=Code("34133-9", "2.16.840.1.113883.6.1", "Summary of episode note"),
        format_code=Code("urn:hl7-org:sdwg:ccda-structuredBody:2.1", "1.3.6.1.4.1.19376.1.2.3", "C-CDA R2.1"),
        healthcare_facility_type_code=Code("394777002", "2.16.840.1.113883.6.96", "Health Encounter Site"),
        practice_setting_code=Code("408443003", "2.16.840.1.113883.6.96", "General medical practice"),
        confidentiality_codes=[Code("N", "2.16.840.1.113883.5.25", "Normal")],
        event_codes=[],
        title=[LocalizedString("Test document " + sym)],
    )
    for key, value in overrides.items():
        setattr(de, key, value)
    return de


def submission_set(pid: str, sym: str = "SubmissionSet01", **overrides) -> SubmissionSet:
    ss = SubmissionSet(
        id=sym,
        unique_id=uid(),
        source_id="1.3.6.1.4.1.21367.2026.1.50",
        patient_id=pid,
        submission_time="20240115110000",
        content_type_code=Code("34133-9", "2.16.840.1.113883.6.1", "Summary of episode note"),
        authors=[Author(person="^Ford^Harrison^^^Dr", institutions=["Demo VA Medical Center"])],
    )
    for key, value in overrides.items():
        setattr(ss, key, value)
    return ss


def folder(pid: str, sym: str = "Folder01", **overrides) -> Folder:
    fd = Folder(id=sym, unique_id=uid(), patient_id=pid,
                codes=[Code("Referrals", "1.3.6.1.4.1.21367.100.1", "Referrals")],
                title=[LocalizedString("Folder " + sym)])
    for key, value in overrides.items():
        setattr(fd, key, value)
    return fd


def has_member(source: str, target: str, sym: str | None = None, status: str | None = "Original") -> Association:
    return Association(id=sym or f"Assoc-{next(_seq)}", association_type=v.AssociationType.HAS_MEMBER,
                       source=source, target=target, submission_set_status=status)


def relation(kind: str, source: str, target: str) -> Association:
    return Association(id=f"Assoc-{next(_seq)}", association_type=kind, source=source, target=target)


def submission(pid: str, n_docs: int = 1, *, with_folder: bool = False, uuids: bool = True,
               **doc_overrides) -> Submission:
    """A valid submission; with ``uuids`` the ids are real UUIDs (as most sources send them),
    so the test can refer to what it registered; otherwise they stay symbolic (Document01)."""
    sub = _submission(pid, n_docs, with_folder=with_folder, **doc_overrides)
    if uuids:
        assign_uuids(sub)
    return sub


def _submission(pid: str, n_docs: int = 1, *, with_folder: bool = False, **doc_overrides) -> Submission:
    ss = submission_set(pid)
    docs = [document(pid, f"Document{i + 1:02d}", **doc_overrides) for i in range(n_docs)]
    assocs = [has_member(ss.id, d.id) for d in docs]
    folders = []
    if with_folder:
        fd = folder(pid)
        folders.append(fd)
        assocs.append(has_member(ss.id, fd.id, status=None))
        for d in docs:
            inner = has_member(fd.id, d.id, status=None)
            assocs.append(inner)
            assocs.append(has_member(ss.id, inner.id, status=None))
    return Submission(submission_set=ss, documents=docs, folders=folders, associations=assocs)
