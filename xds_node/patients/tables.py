"""Patient index tables (SQLAlchemy Core), registered on the node's shared ``metadata``.

The full :class:`~xds_node.patients.model.Demographics` is kept as JSON in ``patient.data``; the
other columns exist only so that candidate pre-selection is an index lookup: normalized family
name + birth date, birth date alone, identifiers, postal code and phone digits. Matching itself
happens in Python over at most a few dozen candidates.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from xds_node.db import metadata

__all__ = [
    "patient",
    "patient_address",
    "patient_correlation",
    "patient_discrepancy",
    "patient_identifier",
    "patient_telecom",
    "patient_version",
]

patient = Table(
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

#: Append-only history of each patient's demographics: every change to ``patient`` (which holds the
#: current version, the one matching uses) is also written here with where it came from. Not a
#: foreign key of ``patient``: the history outlives ``PatientIndex.remove``.
patient_version = Table(
    "patient_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(256), nullable=False),
    Column("version", Integer, nullable=False),  # 1, 2, ... per patient
    Column("source", String(200), nullable=False),  # what: "cli", an import file name, "cda", ...
    Column("actor", String(400), nullable=False, default=""),  # who: operator, or the document's uniqueId
    Column("recorded", DateTime(timezone=True), nullable=False),
    Column("data", Text, nullable=False),  # JSON of the full Demographics of this version
    UniqueConstraint("patient_id", "version", name="uq_patient_version"),
)

#: A registered document whose recordTarget contradicts the index for the same patient id. The
#: document does not change how the patient is matched; the difference waits here for a human.
patient_discrepancy = Table(
    "patient_discrepancy",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(256), nullable=False),
    Column("document_unique_id", String(256), nullable=False, default=""),
    Column("entry_uuid", String(64), nullable=False, default=""),
    Column("field", String(32), nullable=False),  # family, given, gender, birth_date
    Column("indexed_value", String(400), nullable=False, default=""),
    Column("document_value", String(400), nullable=False, default=""),
    Column("source", String(200), nullable=False, default=""),
    Column("recorded", DateTime(timezone=True), nullable=False),
    Index("ix_patient_discrepancy_patient", "patient_id"),
)

patient_identifier = Table(
    "patient_identifier",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(256), ForeignKey("patient.patient_id", ondelete="CASCADE"), nullable=False),
    Column("root", String(128), nullable=False),
    Column("extension", String(256), nullable=False),
    UniqueConstraint("root", "extension", name="uq_patient_identifier"),
    Index("ix_patient_identifier_patient", "patient_id"),
    Index("ix_patient_identifier_extension", "extension"),  # console search by an id without its root
)

patient_address = Table(
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

patient_telecom = Table(
    "patient_telecom",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(256), ForeignKey("patient.patient_id", ondelete="CASCADE"), nullable=False),
    Column("value", String(400), nullable=False),
    Column("digits", String(20), nullable=False, default=""),  # last 10 digits, for phone lookups
    Index("ix_patient_telecom_patient", "patient_id"),
    Index("ix_patient_telecom_digits", "digits"),
)

#: Initiating-gateway memory of which remote patient a partner community matched to one of ours,
#: so later ITI-38/39 calls skip a fresh ITI-55 (IHE XCPD "correlation" caching).
patient_correlation = Table(
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
