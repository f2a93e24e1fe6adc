"""Submission rewrites the registry applies once a submission is valid: UUIDs for symbolic ids, deprecations."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from xds_node.ebxml import model as m
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.validation.fields import _DE_CODES
from xds_node.ebxml.validation.formats import _is_uuid_id


def deprecations(sub: m.Submission) -> list[str]:
    """entryUUIDs the registry must set to Deprecated when ``sub`` is accepted (RPLC, XFRM_RPLC).

    The store applies it inside the registering transaction (TF-3 4.2.2.2).
    """
    seen: dict[str, None] = {}
    for a in sub.associations:
        if a.association_type in v.REPLACING_TYPES and a.target:
            seen.setdefault(a.target, None)
    return list(seen)


# --- symbolic ids -----------------------------------------------------------------------------------
def assign_uuids(sub: m.Submission) -> dict[str, str]:
    """Replace symbolic ids (anything not ``urn:uuid:``) with fresh UUIDs everywhere they occur.

    Document Sources may name new objects ``Document01``; the registry stores UUIDs (ebRS 3.0
    SubmitObjectsRequest id replacement). Declared ids are mapped, then every reference (association
    ends, classifiedObject, registryObject, lid, ObjectRefs) is rewritten through the same map.
    Real UUIDs are left alone, so a second call changes nothing. Returns symbolic -> UUID.
    """
    mapping: dict[str, str] = {}

    def declare(ident: str | None) -> str | None:
        if ident is None:
            return None
        if not ident:  # ebRS 2.1-style association without id: give it one of its own
            return uuid.uuid4().urn
        if _is_uuid_id(ident):
            return ident
        new = mapping.get(ident)
        if new is None:
            new = mapping[ident] = uuid.uuid4().urn
        return new

    ss = sub.submission_set
    objs: list[m.RegistryObject] = [*([ss] if ss is not None else []), *sub.documents, *sub.folders,
                                    *sub.associations]
    for o in objs:
        o.id = declare(o.id)  # type: ignore[assignment]
        for c in o.extra_classifications:
            c.id = declare(c.id)
        for e in o.extra_identifiers:
            e.id = declare(e.id)
        for attr in ("unique_id_ident_id", "patient_id_ident_id", "source_id_ident_id",
                     "node_classification_id"):
            if hasattr(o, attr):
                setattr(o, attr, declare(getattr(o, attr)))
        for code in _codes_of(o):
            code.id = declare(code.id)
        for author in getattr(o, "authors", ()):
            author.id = declare(author.id)
    for c in sub.extra_objects:
        c.id = declare(c.id)

    def ref(ident: str | None) -> str | None:
        return mapping.get(ident, ident) if ident else ident

    for o in objs:
        o.lid = ref(o.lid)
        for c in o.extra_classifications:
            c.classified_object = ref(c.classified_object)
        for e in o.extra_identifiers:
            e.registry_object = ref(e.registry_object)
        if isinstance(o, m.Association):
            o.source = ref(o.source) or o.source
            o.target = ref(o.target) or o.target
    for c in sub.extra_objects:
        c.classified_object = ref(c.classified_object)
    for r in sub.object_refs:
        r.id = ref(r.id) or r.id
    return mapping


def _codes_of(o: m.RegistryObject) -> Iterator[m.Code]:
    if isinstance(o, m.DocumentEntry):
        for attr, _ in _DE_CODES:
            code = getattr(o, attr)
            if code is not None:
                yield code
        yield from o.confidentiality_codes
        yield from o.event_codes
    elif isinstance(o, m.SubmissionSet):
        if o.content_type_code is not None:
            yield o.content_type_code
    elif isinstance(o, m.Folder):
        yield from o.codes
