"""The fixed vocabulary of XDS.b / XCA metadata: namespaces, UUIDs, URNs and error codes.

Everything here comes from ITI TF-3 (section 4.2 and 4.1.12) and ebRS 3.0. Keeping it in one
module means the rest of the code names things (``DOC_CLASS_CODE``) instead of repeating
UUIDs that are easy to mistype and impossible to read.
"""

from __future__ import annotations

from enum import StrEnum

# --- XML namespaces ------------------------------------------------------------------------
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
XOP = "http://www.w3.org/2004/08/xop/include"
NSMAP = {"rim": RIM, "rs": RS, "query": QUERY, "lcm": LCM, "xdsb": XDSB}


# --- objectType ----------------------------------------------------------------------------
STABLE_DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
ON_DEMAND_DOCUMENT_ENTRY = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
DOCUMENT_ENTRY_TYPES = (STABLE_DOCUMENT_ENTRY, ON_DEMAND_DOCUMENT_ENTRY)
REGISTRY_PACKAGE_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage"
ASSOCIATION_TYPE_OBJECT = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association"
CLASSIFICATION_TYPE_OBJECT = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
EXTERNAL_IDENTIFIER_TYPE_OBJECT = (
    "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"
)

# --- RegistryPackage classification nodes ---------------------------------------------------
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
FOLDER_NODE = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"

# --- DocumentEntry classification schemes ---------------------------------------------------
DOC_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DOC_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DOC_CONFIDENTIALITY_CODE = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DOC_EVENT_CODE = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DOC_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DOC_HEALTHCARE_FACILITY_TYPE_CODE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DOC_PRACTICE_SETTING_CODE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DOC_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DOC_LIMITED_METADATA = "urn:uuid:ab9b591b-83ab-4d03-8f5d-f93b1fb92e85"
# DocumentEntry external identifiers
DOC_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DOC_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"

# --- SubmissionSet ---------------------------------------------------------------------------
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE_CODE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_LIMITED_METADATA = "urn:uuid:5003a9db-8d8d-49e6-bf0c-990e34ac7707"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"

# --- Folder ----------------------------------------------------------------------------------
FOLDER_CODE_LIST = "urn:uuid:1ba97051-7806-41a8-a48b-8fce7af683c5"
FOLDER_LIMITED_METADATA = "urn:uuid:2c144a76-29a9-4b7c-af54-b25409fe7d03"
FOLDER_PATIENT_ID = "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a"
FOLDER_UNIQUE_ID = "urn:uuid:75df8f67-9973-4fbe-a900-df66cefecc5a"

# Human-readable names the ExternalIdentifier/Classification <Name> carries on output.
IDENTIFIER_NAMES = {
    DOC_PATIENT_ID: "XDSDocumentEntry.patientId",
    DOC_UNIQUE_ID: "XDSDocumentEntry.uniqueId",
    SS_PATIENT_ID: "XDSSubmissionSet.patientId",
    SS_SOURCE_ID: "XDSSubmissionSet.sourceId",
    SS_UNIQUE_ID: "XDSSubmissionSet.uniqueId",
    FOLDER_PATIENT_ID: "XDSFolder.patientId",
    FOLDER_UNIQUE_ID: "XDSFolder.uniqueId",
}


class Status(StrEnum):
    """availabilityStatus values; queries may also use the short names."""

    APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
    DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
    SUBMITTED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Submitted"


class AssociationType(StrEnum):
    HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
    RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
    XFRM = "urn:ihe:iti:2007:AssociationType:XFRM"
    APND = "urn:ihe:iti:2007:AssociationType:APND"
    XFRM_RPLC = "urn:ihe:iti:2007:AssociationType:XFRM_RPLC"
    SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
    IS_SNAPSHOT_OF = "urn:ihe:iti:2010:AssociationType:IsSnapshotOf"


#: Document relationships (ITI TF-3 4.2.2.2); all of these need an existing Approved target.
RELATIONSHIP_TYPES = frozenset(
    {
        AssociationType.RPLC,
        AssociationType.XFRM,
        AssociationType.APND,
        AssociationType.XFRM_RPLC,
        AssociationType.SIGNS,
        AssociationType.IS_SNAPSHOT_OF,
    }
)
#: Relationships whose target becomes Deprecated when the submission is accepted.
REPLACING_TYPES = frozenset({AssociationType.RPLC, AssociationType.XFRM_RPLC})


class ResponseStatus(StrEnum):
    SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
    FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
    PARTIAL_SUCCESS = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"


#: Accepted on input as a synonym of ResponseStatus.PARTIAL_SUCCESS.
OASIS_PARTIAL_SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:PartialSuccess"

SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
SEVERITY_WARNING = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning"


class ErrorCode(StrEnum):
    """IHE error codes (ITI TF-3 Table 4.2.4.1-2) plus the ebRS ones we emit."""

    REGISTRY_ERROR = "XDSRegistryError"
    REGISTRY_BUSY = "XDSRegistryBusy"
    REGISTRY_OUT_OF_RESOURCES = "XDSRegistryOutOfResources"
    REGISTRY_METADATA_ERROR = "XDSRegistryMetadataError"
    REGISTRY_DUPLICATE_UNIQUE_ID = "XDSRegistryDuplicateUniqueIdInMessage"
    REPOSITORY_ERROR = "XDSRepositoryError"
    REPOSITORY_METADATA_ERROR = "XDSRepositoryMetadataError"
    REPOSITORY_BUSY = "XDSRepositoryBusy"
    REPOSITORY_DUPLICATE_UNIQUE_ID = "XDSRepositoryDuplicateUniqueIdInMessage"
    MISSING_DOCUMENT = "XDSMissingDocument"
    MISSING_DOCUMENT_METADATA = "XDSMissingDocumentMetadata"
    NON_IDENTICAL_HASH = "XDSNonIdenticalHash"
    NON_IDENTICAL_SIZE = "XDSNonIdenticalSize"
    DUPLICATE_UNIQUE_ID = "XDSDuplicateUniqueIdInRegistry"
    PATIENT_ID_DOES_NOT_MATCH = "XDSPatientIdDoesNotMatch"
    UNKNOWN_PATIENT_ID = "XDSUnknownPatientId"
    UNKNOWN_REPOSITORY_ID = "XDSUnknownRepositoryId"
    DOCUMENT_UNIQUE_ID_ERROR = "XDSDocumentUniqueIdError"
    UNKNOWN_COMMUNITY = "XDSUnknownCommunity"
    MISSING_HOME_COMMUNITY_ID = "XDSMissingHomeCommunityId"
    UNAVAILABLE_COMMUNITY = "XDSUnavailableCommunity"
    RESULT_NOT_SINGLE_PATIENT = "XDSResultNotSinglePatient"
    TOO_MANY_RESULTS = "XDSTooManyResults"
    STORED_QUERY_MISSING_PARAM = "XDSStoredQueryMissingParam"
    STORED_QUERY_PARAM_NUMBER = "XDSStoredQueryParamNumber"
    UNKNOWN_STORED_QUERY = "XDSUnknownStoredQuery"
    EXTRA_METADATA_NOT_SAVED = "XDSExtraMetadataNotSaved"
    REPLACE_FAILED = "XDSReplaceFailed"
    INVALID_REQUEST = "urn:oasis:names:tc:ebxml-regrep:ErrorCode:InvalidRequest"
    UNRESOLVED_REFERENCE = "urn:oasis:names:tc:ebxml-regrep:ErrorCode:UnresolvedReferenceException"


# --- Stored query ids (ITI TF-2a 3.18.4.1.2.3.7) ----------------------------------------------
class StoredQueryId(StrEnum):
    FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
    FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
    FIND_FOLDERS = "urn:uuid:958f3006-baad-4929-a4de-ff1114824431"
    GET_ALL = "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3"
    GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
    GET_FOLDERS = "urn:uuid:5737b14c-8a1a-4539-b659-e03a34a5e1e4"
    GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
    GET_DOCUMENTS_AND_ASSOCIATIONS = "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a"
    GET_SUBMISSION_SETS = "urn:uuid:51224314-5390-4169-9b91-b1980040715a"
    GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
    GET_FOLDER_AND_CONTENTS = "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7"
    GET_FOLDERS_FOR_DOCUMENT = "urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578"
    GET_RELATED_DOCUMENTS = "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6"
    FIND_DOCUMENTS_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
    # ITI-51 Multi-Patient Stored Query (ITI TF-2b 3.51.4.1.2.3); never accepted by ITI-18/38
    FIND_DOCUMENTS_FOR_MULTIPLE_PATIENTS = "urn:uuid:3d1bdb10-39a2-11de-89c2-2f44d94eaa9f"
    FIND_FOLDERS_FOR_MULTIPLE_PATIENTS = "urn:uuid:50d3f5ac-39a2-11de-a1ca-b366239e58df"


# --- SOAP actions -------------------------------------------------------------------------------
class Action(StrEnum):
    ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
    ITI38 = "urn:ihe:iti:2007:CrossGatewayQuery"
    ITI39 = "urn:ihe:iti:2007:CrossGatewayRetrieve"
    ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
    ITI42 = "urn:ihe:iti:2007:RegisterDocumentSet-b"
    ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
    ITI51 = "urn:ihe:iti:2009:MultiPatientStoredQuery"
    ITI55 = "urn:hl7-org:v3:PRPA_IN201305UV02:CrossGatewayPatientDiscovery"
    ITI55_RESPONSE = "urn:hl7-org:v3:PRPA_IN201306UV02:CrossGatewayPatientDiscovery"


def response_action(action: str) -> str:
    """Response wsa:Action for a request action (XDS/XCA append ``Response``; XCPD differs)."""
    if action == Action.ITI55:
        return Action.ITI55_RESPONSE
    return action + "Response"


def normalize_status(value: str) -> str:
    """Map a short or foreign status name onto the canonical URN (queries may send either)."""
    if value == OASIS_PARTIAL_SUCCESS:
        return ResponseStatus.PARTIAL_SUCCESS
    if value.startswith("urn:"):
        return value
    for status in Status:
        if status.value.rsplit(":", 1)[1] == value:
            return status.value
    return value
