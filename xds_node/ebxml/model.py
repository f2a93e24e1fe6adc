"""The XDS metadata domain model: plain dataclasses with no XML in them.

The wire format (ebRIM 3.0) lives in :mod:`xds_node.ebxml.rim`; everything else in the node
(validation, the registry, the C-CDA extractor, the gateways) speaks these objects. Fields keep
the HL7 v2 encoded strings XDS uses (CX, XCN, XON, XTN) as text: they are compared and indexed
as text, and parsing them is left to the few places that need their parts.

Anything the model has no named field for (an extra Slot, Classification or ExternalIdentifier)
is kept in ``extra_*`` so that a parse/write round trip loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xds_node.ebxml import vocabulary as v


@dataclass(slots=True)
class LocalizedString:
    value: str
    lang: str | None = None
    charset: str | None = None


@dataclass(slots=True)
class Slot:
    name: str
    values: list[str] = field(default_factory=list)
    slot_type: str | None = None


@dataclass(slots=True)
class Code:
    """A coded value: ``nodeRepresentation`` + ``codingScheme`` slot + display name."""

    code: str
    scheme: str
    display: str | None = None
    id: str | None = None  # the Classification's own id, kept for round trips

    def key(self) -> str:
        """``code^^scheme``: the form stored queries match against (ITI TF-2a 3.18.4.1.2.3.4)."""
        return f"{self.code}^^{self.scheme}"


@dataclass(slots=True)
class Author:
    person: str | None = None  # XCN
    institutions: list[str] = field(default_factory=list)  # XON
    roles: list[str] = field(default_factory=list)
    specialties: list[str] = field(default_factory=list)
    telecoms: list[str] = field(default_factory=list)  # XTN
    id: str | None = None
    extra_slots: list[Slot] = field(default_factory=list)


@dataclass(slots=True)
class Classification:
    """A Classification the model has no named field for (kept verbatim)."""

    scheme: str | None = None
    node: str | None = None  # classificationNode (for internal classifications)
    node_representation: str | None = None
    classified_object: str | None = None
    id: str | None = None
    name: list[LocalizedString] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)


@dataclass(slots=True)
class ExternalIdentifier:
    scheme: str
    value: str
    id: str | None = None
    registry_object: str | None = None
    name: list[LocalizedString] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class RegistryObject:
    """Common attributes of every registry object (ebRIM 3.0 RegistryObjectType)."""

    id: str  # entryUUID, or a symbolic id before registration
    lid: str | None = None
    home: str | None = None
    status: str | None = None
    object_type: str | None = None
    version_name: str | None = None
    title: list[LocalizedString] = field(default_factory=list)
    comments: list[LocalizedString] = field(default_factory=list)
    extra_slots: list[Slot] = field(default_factory=list)
    extra_classifications: list[Classification] = field(default_factory=list)
    extra_identifiers: list[ExternalIdentifier] = field(default_factory=list)

    @property
    def title_text(self) -> str | None:
        return self.title[0].value if self.title else None

    def slot(self, name: str) -> Slot | None:
        return next((s for s in self.extra_slots if s.name == name), None)


@dataclass(slots=True, kw_only=True)
class DocumentEntry(RegistryObject):
    object_type: str | None = v.STABLE_DOCUMENT_ENTRY
    mime_type: str | None = None
    unique_id: str | None = None
    patient_id: str | None = None
    unique_id_ident_id: str | None = None
    patient_id_ident_id: str | None = None
    creation_time: str | None = None
    hash: str | None = None
    size: int | None = None
    language_code: str | None = None
    legal_authenticator: str | None = None
    repository_unique_id: str | None = None
    service_start_time: str | None = None
    service_stop_time: str | None = None
    source_patient_id: str | None = None
    source_patient_info: list[str] = field(default_factory=list)
    uri: str | None = None
    document_availability: str | None = None
    reference_ids: list[str] = field(default_factory=list)
    authors: list[Author] = field(default_factory=list)
    class_code: Code | None = None
    type_code: Code | None = None
    format_code: Code | None = None
    healthcare_facility_type_code: Code | None = None
    practice_setting_code: Code | None = None
    confidentiality_codes: list[Code] = field(default_factory=list)
    event_codes: list[Code] = field(default_factory=list)
    limited_metadata: bool = False

    @property
    def on_demand(self) -> bool:
        return self.object_type == v.ON_DEMAND_DOCUMENT_ENTRY


@dataclass(slots=True, kw_only=True)
class SubmissionSet(RegistryObject):
    unique_id: str | None = None
    source_id: str | None = None
    patient_id: str | None = None
    unique_id_ident_id: str | None = None
    source_id_ident_id: str | None = None
    patient_id_ident_id: str | None = None
    submission_time: str | None = None
    content_type_code: Code | None = None
    authors: list[Author] = field(default_factory=list)
    intended_recipients: list[str] = field(default_factory=list)
    limited_metadata: bool = False
    node_classification_id: str | None = None


@dataclass(slots=True, kw_only=True)
class Folder(RegistryObject):
    unique_id: str | None = None
    patient_id: str | None = None
    unique_id_ident_id: str | None = None
    patient_id_ident_id: str | None = None
    last_update_time: str | None = None
    codes: list[Code] = field(default_factory=list)
    limited_metadata: bool = False
    node_classification_id: str | None = None


@dataclass(slots=True, kw_only=True)
class Association(RegistryObject):
    association_type: str
    source: str
    target: str
    submission_set_status: str | None = None  # "Original" / "Reference" on HasMember
    original_status: str | None = None  # Update-style status changes (kept, not acted on)
    new_status: str | None = None


@dataclass(slots=True)
class ObjectRef:
    id: str
    home: str | None = None


@dataclass(slots=True)
class Submission:
    """One SubmitObjectsRequest: what ITI-42 registers and ITI-41 carries."""

    submission_set: SubmissionSet | None = None
    documents: list[DocumentEntry] = field(default_factory=list)
    folders: list[Folder] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)
    object_refs: list[ObjectRef] = field(default_factory=list)
    # Other registry objects / classifications we do not model, kept for round trips.
    extra_objects: list[Classification] = field(default_factory=list)

    def objects(self) -> list[RegistryObject]:
        out: list[RegistryObject] = []
        if self.submission_set is not None:
            out.append(self.submission_set)
        out.extend(self.documents)
        out.extend(self.folders)
        out.extend(self.associations)
        return out


@dataclass(slots=True)
class RegistryError:
    code: str
    context: str
    severity: str = v.SEVERITY_ERROR
    location: str | None = None
    code_context: str | None = None  # defaults to ``context`` on the wire

    @property
    def is_error(self) -> bool:
        return self.severity == v.SEVERITY_ERROR


@dataclass(slots=True)
class RegistryResponse:
    status: str = v.ResponseStatus.SUCCESS
    errors: list[RegistryError] = field(default_factory=list)
    request_id: str | None = None

    @classmethod
    def from_errors(cls, errors: list[RegistryError], *, partial: bool = False) -> RegistryResponse:
        """Failure if any error has Error severity (PartialSuccess when ``partial``), else Success."""
        if any(e.is_error for e in errors):
            status = v.ResponseStatus.PARTIAL_SUCCESS if partial else v.ResponseStatus.FAILURE
        else:
            status = v.ResponseStatus.SUCCESS
        return cls(status=status, errors=list(errors))


#: What a query can return: full objects (LeafClass) or references.
QueryResult = DocumentEntry | SubmissionSet | Folder | Association | ObjectRef


@dataclass(slots=True)
class StoredQuery:
    """An AdhocQuery request: query id plus raw slot values (parsed by ebxml.query)."""

    query_id: str
    return_type: str = "LeafClass"  # or "ObjectRef"
    return_composed_objects: bool = True
    home: str | None = None
    #: slot name -> one list of raw Value texts per occurrence (repeated slots AND together)
    slots: dict[str, list[list[str]]] = field(default_factory=dict)
    request_id: str | None = None
