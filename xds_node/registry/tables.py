"""Registry schema (SQLAlchemy Core).

Each registry object is stored twice over: the columns stored queries filter on, and ``rim``, the
object's ebRIM 3.0 XML as the registry will return it. A LeafClass query therefore never rebuilds
XML from a dozen joined tables; it filters on indexed columns and splices the stored fragments.
The model stays the source of truth: ``rim`` is rendered from it at registration (and again when
the object's status changes).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, String, Table, Text

from xds_node.db import metadata

ID = 80  # urn:uuid:... is 45 chars; leave room for foreign registries' ids

documents = Table(
    "xds_document",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("unique_id", String(160), nullable=False),
    Column("lid", String(ID)),
    Column("patient_id", String(256), nullable=False),
    Column("status", String(64), nullable=False),
    Column("object_type", String(64), nullable=False),
    Column("mime_type", String(128)),
    Column("hash", String(64)),
    Column("size", BigInteger),  # documents past 2 GiB exist (imaging, scans)
    Column("repository_unique_id", String(64)),
    Column("creation_time", String(14)),
    Column("service_start_time", String(14)),
    Column("service_stop_time", String(14)),
    Column("rim", LargeBinary, nullable=False),
    # not unique: an identical resubmission is a second entry with the same uniqueId (see below)
    Index("ix_xds_document_unique_id", "unique_id"),
    Index("ix_xds_document_patient_status", "patient_id", "status"),
)

#: What each DocumentEntry uniqueId stands for: the SHA-1 of the document (an On-Demand entry's own
#: entryUUID, which no other entry can match) and the patient. Several entries may share a uniqueId
#: when the document is the same: XDSDuplicateUniqueIdInRegistry "cannot be thrown for
#: DocumentEntry", a different hash is XDSNonIdenticalHash (ITI TF-3 Table 4.2.4.1-2). The primary
#: key makes that hold for submissions racing each other: each registration claims its uniqueIds
#: here in its own transaction (``RegistryStore.register``), so of two with different content only
#: the first commits.
document_unique_ids = Table(
    "xds_document_uid",
    metadata,
    Column("unique_id", String(160), primary_key=True),
    Column("fingerprint", String(ID), nullable=False),
    Column("patient_id", String(256), nullable=False),
)

submission_sets = Table(
    "xds_submission_set",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("unique_id", String(160), nullable=False),
    Column("patient_id", String(256), nullable=False),
    Column("status", String(64), nullable=False),
    Column("source_id", String(160)),
    Column("submission_time", String(14)),
    Column("rim", LargeBinary, nullable=False),
    Index("ix_xds_ss_unique_id", "unique_id", unique=True),
    Index("ix_xds_ss_patient_status", "patient_id", "status"),
)

folders = Table(
    "xds_folder",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("unique_id", String(160), nullable=False),
    Column("patient_id", String(256), nullable=False),
    Column("status", String(64), nullable=False),
    Column("last_update_time", String(14)),
    Column("rim", LargeBinary, nullable=False),
    Index("ix_xds_folder_unique_id", "unique_id", unique=True),
    Index("ix_xds_folder_patient_status", "patient_id", "status"),
)

associations = Table(
    "xds_association",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("type", String(80), nullable=False),
    Column("source", String(ID), nullable=False),
    Column("target", String(ID), nullable=False),
    Column("status", String(64), nullable=False),
    Column("rim", LargeBinary, nullable=False),
    Index("ix_xds_assoc_source", "source", "type"),
    Index("ix_xds_assoc_target", "target", "type"),
)

#: Coded values of documents (class, type, format, ...), submission sets (contentType) and
#: folders (codeList), keyed by classification scheme; ``key`` is ``code^^scheme``.
codes = Table(
    "xds_code",
    metadata,
    Column("obj_id", String(ID), nullable=False),
    Column("scheme", String(64), nullable=False),
    Column("key", String(300), nullable=False),
    Index("ix_xds_code_lookup", "scheme", "key", "obj_id"),
    Index("ix_xds_code_obj", "obj_id"),
)

authors = Table(
    "xds_author",
    metadata,
    Column("obj_id", String(ID), nullable=False),
    Column("person", Text, nullable=False),
    Index("ix_xds_author_obj", "obj_id"),
)

reference_ids = Table(
    "xds_reference_id",
    metadata,
    Column("doc_id", String(ID), nullable=False),
    Column("value", String(400), nullable=False),
    Index("ix_xds_refid_value", "value", "doc_id"),
)

#: Patient identity feed: ids the registry knows (used when require_known_patient is on).
patients = Table(
    "xds_known_patient",
    metadata,
    Column("patient_id", String(256), primary_key=True),
)
