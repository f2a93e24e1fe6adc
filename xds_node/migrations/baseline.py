"""The schema of xds-node 0.1.0, the last release without migrations, frozen (revision 0001).

A migration must never import the live table modules: they describe the newest schema and keep
changing. This copy is what revision ``0001`` creates and what a database made by
``metadata.create_all`` under 0.1.0 is checked against before it is adopted.
Do not edit it; change the schema with a new revision instead.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# from xds_node/registry/tables.py
Table(
    "xds_document",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("unique_id", String(160), nullable=False),
    Column("lid", String(80)),
    Column("patient_id", String(256), nullable=False),
    Column("status", String(64), nullable=False),
    Column("object_type", String(64), nullable=False),
    Column("mime_type", String(128)),
    Column("hash", String(64)),
    Column("size", Integer),
    Column("repository_unique_id", String(64)),
    Column("creation_time", String(14)),
    Column("service_start_time", String(14)),
    Column("service_stop_time", String(14)),
    Column("rim", LargeBinary, nullable=False),
    Index("ix_xds_document_unique_id", "unique_id", unique=True),
    Index("ix_xds_document_patient_status", "patient_id", "status"),
)

# from xds_node/registry/tables.py
Table(
    "xds_submission_set",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("unique_id", String(160), nullable=False),
    Column("patient_id", String(256), nullable=False),
    Column("status", String(64), nullable=False),
    Column("source_id", String(160)),
    Column("submission_time", String(14)),
    Column("rim", LargeBinary, nullable=False),
    Index("ix_xds_ss_unique_id", "unique_id", unique=True),
    Index("ix_xds_ss_patient_status", "patient_id", "status"),
)

# from xds_node/registry/tables.py
Table(
    "xds_folder",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("unique_id", String(160), nullable=False),
    Column("patient_id", String(256), nullable=False),
    Column("status", String(64), nullable=False),
    Column("last_update_time", String(14)),
    Column("rim", LargeBinary, nullable=False),
    Index("ix_xds_folder_unique_id", "unique_id", unique=True),
    Index("ix_xds_folder_patient_status", "patient_id", "status"),
)

# from xds_node/registry/tables.py
Table(
    "xds_association",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("type", String(80), nullable=False),
    Column("source", String(80), nullable=False),
    Column("target", String(80), nullable=False),
    Column("status", String(64), nullable=False),
    Column("rim", LargeBinary, nullable=False),
    Index("ix_xds_assoc_source", "source", "type"),
    Index("ix_xds_assoc_target", "target", "type"),
)

# from xds_node/registry/tables.py
Table(
    "xds_code",
    metadata,
    Column("obj_id", String(80), nullable=False),
    Column("scheme", String(64), nullable=False),
    Column("key", String(300), nullable=False),
    Index("ix_xds_code_lookup", "scheme", "key", "obj_id"),
    Index("ix_xds_code_obj", "obj_id"),
)

# from xds_node/registry/tables.py
Table(
    "xds_author",
    metadata,
    Column("obj_id", String(80), nullable=False),
    Column("person", Text, nullable=False),
    Index("ix_xds_author_obj", "obj_id"),
)

# from xds_node/registry/tables.py
Table(
    "xds_reference_id",
    metadata,
    Column("doc_id", String(80), nullable=False),
    Column("value", String(400), nullable=False),
    Index("ix_xds_refid_value", "value", "doc_id"),
)

# from xds_node/registry/tables.py
Table(
    "xds_known_patient",
    metadata,
    Column("patient_id", String(256), primary_key=True),
)

# from xds_node/repository/tables.py
Table(
    "repo_document",
    metadata,
    Column("unique_id", String(160), primary_key=True),
    Column("repository_unique_id", String(64), nullable=False),
    Column("entry_uuid", String(80), nullable=False),
    #: which SourceSystem holds the bytes ("store" or "folder:<name>") and its locator there
    Column("source", String(120), nullable=False),
    Column("locator", Text, nullable=False),
    Column("mime_type", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha1", String(40), nullable=False),
    #: source file's st_mtime_ns when indexed: a cheap "changed behind our back?" check
    Column("mtime_ns", BigInteger),
    #: "current", "replaced" (a newer file version took over) or "removed" (gone at the source)
    Column("state", String(16), nullable=False, default="current"),
    Column("version", Integer, nullable=False, default=1),
    Index("ix_repo_document_locator", "source", "locator"),
)

# from xds_node/patients/tables.py
Table(
    "patient",
    metadata,
    Column("patient_id", String(256), primary_key=True),  # CX ext^^^&root&ISO
    Column("family", String(200)),
    Column("given", String(400)),  # given names joined with a space
    Column("family_norm", String(200), nullable=False, default=""),
    Column("given_norm", String(400), nullable=False, default=""),
    Column("gender", String(8)),
    Column("birth_date", String(8)),
    Column("source", String(200), nullable=False, default=""),
    Column("data", Text, nullable=False),  # JSON of the full Demographics
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Index("ix_patient_family_birth", "family_norm", "birth_date"),
    Index("ix_patient_birth", "birth_date"),
)

# from xds_node/patients/tables.py
Table(
    "patient_identifier",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(256), ForeignKey("patient.patient_id", ondelete="CASCADE"), nullable=False),
    Column("root", String(128), nullable=False),
    Column("extension", String(256), nullable=False),
    UniqueConstraint("root", "extension", name="uq_patient_identifier"),
    Index("ix_patient_identifier_patient", "patient_id"),
)

# from xds_node/patients/tables.py
Table(
    "patient_address",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(256), ForeignKey("patient.patient_id", ondelete="CASCADE"), nullable=False),
    Column("street", String(400)),  # street lines joined with ", "
    Column("city", String(200)),
    Column("state", String(100)),
    Column("postal_code", String(40)),
    Column("country", String(100)),
    Index("ix_patient_address_patient", "patient_id"),
    Index("ix_patient_address_postal", "postal_code"),
)

# from xds_node/patients/tables.py
Table(
    "patient_telecom",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(256), ForeignKey("patient.patient_id", ondelete="CASCADE"), nullable=False),
    Column("value", String(400), nullable=False),
    Column("digits", String(20), nullable=False, default=""),  # last 10 digits, for phone lookups
    Index("ix_patient_telecom_patient", "patient_id"),
    Index("ix_patient_telecom_digits", "digits"),
)

# from xds_node/patients/tables.py
Table(
    "patient_correlation",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("local_patient_id", String(256), nullable=False),
    Column("community_id", String(128), nullable=False),  # urn:oid:... of the partner
    Column("remote_patient_id", String(256), nullable=False),  # extension at the partner
    Column("remote_root", String(128), nullable=False),  # assigning authority OID at the partner
    Column("created", DateTime(timezone=True), nullable=False),
    Column("last_confirmed", DateTime(timezone=True), nullable=False),
    UniqueConstraint("local_patient_id", "community_id", name="uq_patient_correlation"),
    Index("ix_patient_correlation_remote", "community_id", "remote_patient_id"),
)

# from xds_node/audit/store.py
Table(
    "audit_event",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("time", DateTime, nullable=False),  # naive UTC
    Column("transaction", String(16), nullable=False),
    Column("action_code", String(1), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("partner_community", String(128), nullable=False, default=""),
    Column("partner_organization", String(256), nullable=False, default=""),
    Column("partner_organization_id", String(256), nullable=False, default=""),
    Column("user_subject_id", String(256), nullable=False, default=""),
    Column("user_role_code", String(64), nullable=False, default=""),
    Column("user_role_display", String(256), nullable=False, default=""),
    Column("purpose_of_use", String(64), nullable=False, default=""),
    Column("patient_id", String(256)),
    Column("document_ids", Text, nullable=False, default="[]"),  # JSON list
    Column("repository_unique_id", String(128)),
    Column("query_id", String(128)),
    Column("message_id", String(256), nullable=False, default=""),
    Column("remote_address", String(64), nullable=False, default=""),
    Column("endpoint", String(512), nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Index("ix_audit_event_time", "time"),
    Index("ix_audit_event_patient_time", "patient_id", "time"),
    Index("ix_audit_event_partner_time", "partner_community", "time"),
    Index("ix_audit_event_transaction_time", "transaction", "time"),
)

# from xds_node/security/consent.py
Table(
    "consent_directive",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(256), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("effective_from", DateTime, nullable=False),
    Column("effective_until", DateTime),
    Column("source", String(128), nullable=False),
    Column("recorded_by", String(256), nullable=False, default=""),
    Column("recorded_at", DateTime, nullable=False),
    Column("note", Text, nullable=False, default=""),
    #: JSON list of purpose-of-use codes the grant is limited to; NULL means any purpose.
    Column("purposes", Text),
    Index("ix_consent_patient_from", "patient_id", "effective_from"),
)
