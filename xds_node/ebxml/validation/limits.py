"""What the storage can hold, per metadata field: the lengths and integer ranges it accepts.

A value the database cannot store must be refused as metadata (XDSRegistryMetadataError naming
the field), never reach an INSERT that fails with a 500 on one backend and silently succeeds on
another. The bounds themselves are the storage's business (``registry.limits`` derives them from
the table columns); this module knows which model attribute feeds which metadata field, in the
form the store writes it (a coded value is stored as ``code^^codingScheme``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from xds_node.ebxml import model as m
from xds_node.ebxml.validation.base import ASSOCIATION, DOCUMENT_ENTRY, FOLDER, SUBMISSION_SET


@dataclass(frozen=True, slots=True)
class Bound:
    """The largest string (in characters) or the integer range one field may take."""

    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None

    def tighter(self, other: Bound) -> Bound:
        """The bound that satisfies both (a field stored in two columns fits the smaller)."""

        def pick(a: int | None, b: int | None, f: Callable[[int, int], int]) -> int | None:
            return b if a is None else a if b is None else f(a, b)

        return Bound(pick(self.max_length, other.max_length, min), pick(self.minimum, other.minimum, max),
                     pick(self.maximum, other.maximum, min))


#: (object kind, IHE attribute name) -> Bound
FieldLimits = Mapping[tuple[str, str], Bound]
Getter = Callable[[m.RegistryObject], Iterable[object]]


def _one(attr: str) -> Getter:
    return lambda o: (getattr(o, attr),)


def _code(attr: str) -> Getter:
    return lambda o: (c.key() for c in ([getattr(o, attr)] if getattr(o, attr) is not None else []))


def _codes(attr: str) -> Getter:
    return lambda o: (c.key() for c in getattr(o, attr))


def _authors(o: m.RegistryObject) -> Iterable[object]:
    return (a.person for a in getattr(o, "authors", ()))


_COMMON: dict[str, Getter] = {"entryUUID": _one("id"), "lid": _one("lid")}

#: Which values of a submitted object make up each metadata field, as the store writes them.
FIELD_VALUES: dict[tuple[str, str], Getter] = {
    **{(DOCUMENT_ENTRY, name): g for name, g in _COMMON.items()},
    (DOCUMENT_ENTRY, "uniqueId"): _one("unique_id"),
    (DOCUMENT_ENTRY, "patientId"): _one("patient_id"),
    (DOCUMENT_ENTRY, "mimeType"): _one("mime_type"),
    (DOCUMENT_ENTRY, "hash"): _one("hash"),
    (DOCUMENT_ENTRY, "size"): _one("size"),
    (DOCUMENT_ENTRY, "repositoryUniqueId"): _one("repository_unique_id"),
    (DOCUMENT_ENTRY, "creationTime"): _one("creation_time"),
    (DOCUMENT_ENTRY, "serviceStartTime"): _one("service_start_time"),
    (DOCUMENT_ENTRY, "serviceStopTime"): _one("service_stop_time"),
    (DOCUMENT_ENTRY, "classCode"): _code("class_code"),
    (DOCUMENT_ENTRY, "typeCode"): _code("type_code"),
    (DOCUMENT_ENTRY, "formatCode"): _code("format_code"),
    (DOCUMENT_ENTRY, "healthcareFacilityTypeCode"): _code("healthcare_facility_type_code"),
    (DOCUMENT_ENTRY, "practiceSettingCode"): _code("practice_setting_code"),
    (DOCUMENT_ENTRY, "confidentialityCode"): _codes("confidentiality_codes"),
    (DOCUMENT_ENTRY, "eventCodeList"): _codes("event_codes"),
    (DOCUMENT_ENTRY, "referenceIdList"): lambda o: o.reference_ids,
    (DOCUMENT_ENTRY, "author"): _authors,
    **{(SUBMISSION_SET, name): g for name, g in _COMMON.items()},
    (SUBMISSION_SET, "uniqueId"): _one("unique_id"),
    (SUBMISSION_SET, "sourceId"): _one("source_id"),
    (SUBMISSION_SET, "patientId"): _one("patient_id"),
    (SUBMISSION_SET, "submissionTime"): _one("submission_time"),
    (SUBMISSION_SET, "contentTypeCode"): _code("content_type_code"),
    (SUBMISSION_SET, "author"): _authors,
    **{(FOLDER, name): g for name, g in _COMMON.items()},
    (FOLDER, "uniqueId"): _one("unique_id"),
    (FOLDER, "patientId"): _one("patient_id"),
    (FOLDER, "lastUpdateTime"): _one("last_update_time"),
    (FOLDER, "codeList"): _codes("codes"),
    **{(ASSOCIATION, name): g for name, g in _COMMON.items()},
    (ASSOCIATION, "associationType"): _one("association_type"),
    (ASSOCIATION, "sourceObject"): _one("source"),
    (ASSOCIATION, "targetObject"): _one("target"),
}


def check_limits(objects: Iterable[tuple[str, m.RegistryObject]], limits: FieldLimits
                 ) -> Iterator[tuple[str, str | None, dict[str, object]]]:
    """(rule id, object id, message fields) for every value outside its field's bound."""
    by_kind: dict[str, list[tuple[str, Getter, Bound]]] = {}
    for (kind, attr), bound in limits.items():
        by_kind.setdefault(kind, []).append((attr, FIELD_VALUES[(kind, attr)], bound))
    for kind, obj in objects:
        for attr, values, bound in by_kind.get(kind, ()):
            for value in values(obj):
                if value is None:
                    continue
                if isinstance(value, str):
                    if bound.max_length is not None and len(value) > bound.max_length:
                        yield "LIMIT-length", obj.id, {"kind": kind, "attr": attr, "value": value,
                                                       "length": len(value), "max": bound.max_length}
                elif type(value) is int and (
                    (bound.minimum is not None and value < bound.minimum)
                    or (bound.maximum is not None and value > bound.maximum)
                ):
                    yield "LIMIT-range", obj.id, {"kind": kind, "attr": attr, "value": str(value),
                                                  "minimum": bound.minimum, "maximum": bound.maximum}
