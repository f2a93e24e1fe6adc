"""What a Document Recipient (XDR, ITI-41 point to point) accepts: the rule set as data.

Two differences from an XDS Provide and Register, both decided here and nowhere else:

* **Limited metadata** (ITI TF-3 4.2.3.2.29 / 4.1.x, the "XDR MS" column of the TF-3 4.3.1
  optionality tables, ``urn:ihe:iti:2010:limitedMetadata``): an object flagged with the
  limitedMetadata classification comes from a Metadata-Limited Document Source and may leave out
  what that column makes R2 (required if known) or O. :data:`LIMITED_USAGE` is that column for the
  attributes XDS requires; every ``*-required-*`` rule of an attribute it relaxes, and the
  ``LIMITED-metadata`` rule that refuses the flag in an XDS register, is lifted *for flagged
  objects only*. Every other rule (formats, patient consistency, associations) still applies.
  /xds/repository never consults this module, so limited metadata stays refused there.
* **A partner adds, never changes** (:data:`XDR_RULES`): a push may only link objects it brings
  itself. A replacement, addendum, transform or signature of, or a HasMember into, something
  already registered here would let another organisation deprecate or re-file our own clinicians'
  records; such pushes are refused whole.
"""

from __future__ import annotations

from xds_node.ebxml import model as m
from xds_node.ebxml.validation.base import (
    ASSOCIATION,
    DOCUMENT_ENTRY,
    META,
    SUBMISSION_SET,
    Rule,
    Violation,
)
from xds_node.ebxml.validation.catalogue import RULES_BY_ID
from xds_node.ebxml.validation.engine import ValidationContext, _objects, check_submission
from xds_node.ebxml.validation.formats import _show

LIMITED_REFERENCE = "ITI TF-3 4.3.1 tables, column XDR MS (Metadata-Limited Document Source)"

#: Usage in the XDR MS column of the attributes XDS requires (R): R stays required, R2/O do not.
LIMITED_USAGE: dict[str, dict[str, str]] = {
    DOCUMENT_ENTRY: {
        "patientId": "R2", "uniqueId": "R", "creationTime": "R2", "languageCode": "R2", "mimeType": "R",
        "sourcePatientId": "R2", "classCode": "R2", "typeCode": "R2", "formatCode": "R2",
        "healthcareFacilityTypeCode": "R2", "practiceSettingCode": "R2", "confidentialityCode": "R2",
    },
    SUBMISSION_SET: {
        "uniqueId": "R", "sourceId": "R", "patientId": "R2", "submissionTime": "R", "contentTypeCode": "R2",
    },
}

_PREFIX = {DOCUMENT_ENTRY: "DE", SUBMISSION_SET: "SS"}

#: Catalogue rules lifted for an object flagged limitedMetadata (derived from LIMITED_USAGE).
RELAXED_FOR_LIMITED: frozenset[str] = frozenset(
    {f"{_PREFIX[kind]}-required-{name}" for kind, table in LIMITED_USAGE.items()
     for name, usage in table.items() if usage != "R"} | {"LIMITED-metadata"})

_unknown = sorted(RELAXED_FOR_LIMITED - RULES_BY_ID.keys())
if _unknown:  # the catalogue renamed a rule: fail at import, never silently stop relaxing it
    raise RuntimeError(f"limited-metadata rule set names rules the catalogue lacks: {_unknown}")

#: Rules only a Document Recipient applies to a partner's push.
XDR_RULES: tuple[Rule, ...] = (
    Rule("XDR-foreign-reference", META,
         "Association {obj}: {end} {value} is not in this submission; a partner's push may only link the "
         "objects it brings (no replacement, addendum, transform or signature of, nor membership in, "
         "what is registered here)",
         (ASSOCIATION,), reference="ITI TF-2b 3.41 (Document Recipient); xds-node trust model"),
)
XDR_RULES_BY_ID = {r.id: r for r in XDR_RULES}

#: The error codes a Document Recipient reports (it is not a registry: TF-3 Table 4.2.4.1-2).
_RECIPIENT_CODES = {META: "XDSRepositoryMetadataError"}


def is_limited(sub: m.Submission) -> bool:
    """True when any object of the submission carries the limitedMetadata flag."""
    return any(getattr(o, "limited_metadata", False) for _, o in _objects(sub))


def check_push(sub: m.Submission, *, limits=None) -> list[Violation]:
    """Every violation of the XDR rule set in a partner's push ([] when acceptable).

    Runs the ITI-41 catalogue as a Document Recipient would (no registry at hand), lifts the
    relaxed rules for flagged objects, then adds the recipient's own rules.
    """
    ctx = ValidationContext(transaction="ITI-41", actor="repository", limits=limits)
    limited = {o.id for _, o in _objects(sub) if getattr(o, "limited_metadata", False)}
    found = [vi for vi in check_submission(sub, ctx)
             if not (vi.object_id in limited and vi.rule.id in RELAXED_FOR_LIMITED)]
    local = {o.id for _, o in _objects(sub) if o.id}
    rule = XDR_RULES_BY_ID["XDR-foreign-reference"]
    for a in sub.associations:
        for end, ref in (("sourceObject", a.source), ("targetObject", a.target)):
            if ref and ref not in local:
                found.append(Violation(rule, _RECIPIENT_CODES.get(rule.code, rule.code), a.id,
                                       rule.message.format(obj=_show(a.id or ""), end=end, value=_show(ref))))
    return found


def describe_limited() -> list[tuple[str, str, str]]:
    """(object kind, attribute, XDR MS usage) rows for the docs."""
    return [(kind, name, usage) for kind, table in LIMITED_USAGE.items() for name, usage in table.items()]
