"""Build a step's request (placeholders, UseId/UseReport, fresh ids) and remember what it produced.

A runner does, per step::

    body = prepare_request(step, ctx)      # substituted, ids assigned, ebRS 2.1 converted
    response = send(body)                  # the caller's business
    record_result(step, ctx, body, response)

``record_result`` remembers what later steps ask for (assigned UUIDs / uniqueIds / patient ids,
``Report`` values), keyed the way testplans refer to them.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lxml import etree

from xds_node.ebxml import vocabulary as v

from .common import (
    _OBJECT_TAGS,
    _PLACEHOLDER,
    _R,
    _REFERENCE_ATTRS,
    PATIENT_ID_SCHEMES,
    RIM21,
    RS21,
    UNIQUE_ID_SCHEMES,
    UnresolvedReference,
    _local,
    _parser,
    _text,
    parse_xml,
)
from .convert import _new_id, convert_v2_to_v3
from .reader import NistStep, UseId, UseReport


def _hl7_now(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y%m%d%H%M%S")


def new_oid() -> str:
    """A fresh globally unique OID (ISO/IEC 9834-8 UUID arc, no registration needed)."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class Context:
    """What a test run has learned so far; later steps' UseId/UseReport resolve against it.

    ``assigned[(test_key, step)][section][symbolic id]`` holds AssignedUuids/AssignedUids/
    AssignedPatientId; ``reports[(test_key, step, name)]`` holds Report values (test_key is
    ``test/section`` or just ``test``). ``values`` holds plain placeholders (``$now$``, patient ids).
    """

    values: dict[str, str] = field(default_factory=dict)
    id_map: dict[str, str] = field(default_factory=dict)
    reports: dict[tuple[str, str, str], str] = field(default_factory=dict)
    assigned: dict[tuple[str, str], dict[str, dict[str, str]]] = field(default_factory=dict)
    assigning_authorities: dict[str, str] = field(default_factory=dict)
    default_assigning_authority: str = "1.3.6.1.4.1.21367.13.20.1000"
    pending: dict[tuple[str, str], dict[str, dict[str, str]]] = field(default_factory=dict)

    def patient(self, symbol: str = "$patientid$") -> str:
        """The patient id behind ``symbol``, made up (fresh, unique) on first use."""
        if symbol not in self.values:
            aa = self.assigning_authorities.get(symbol, self.default_assigning_authority)
            self.values[symbol] = f"{secrets.token_hex(6).upper()}^^^&{aa}&ISO"
        return self.values[symbol]

    def lookup_id(self, test_key: str, use: UseId) -> str:
        key = (test_key, use.step)
        try:
            return self.assigned[key][use.section][use.id]
        except KeyError:
            raise UnresolvedReference(
                f"no {use.section} value for {use.id!r} from step {use.step!r} of {test_key!r}",
                test_key=test_key, step=use.step, what=f"{use.section} {use.id!r}",
            ) from None

    def lookup_report(self, test_key: str, step: str, name: str) -> str:
        value = self.reports.get((test_key, step, name))
        if value is None:
            raise UnresolvedReference(f"no report {name!r} from step {step!r} of {test_key!r}",
                                      test_key=test_key, step=step, what=f"report {name!r}")
        if value.startswith("@patient:"):
            return self.patient(value.removeprefix("@patient:"))
        return value


def _step_key(step: NistStep) -> tuple[str, str]:
    return (step.test_id, step.step_id)


def _resolve_testdir(step: NistStep, testdir: str | None) -> str:
    """A UseId ``testdir`` as a test key; a bare name is a sibling section of the same test."""
    if not testdir:
        return step.test_id
    testdir = testdir.strip().rstrip("/")
    if "/" not in testdir:
        return f"{step.test}/{testdir}" if step.section else testdir
    here = step.test_id if step.section else step.test
    parts = posixpath.normpath(posixpath.join("ROOT", here, testdir)).split("/")
    parts = [p for p in parts if p and p != "ROOT"]
    return "/".join(parts[-2:]) if len(parts) >= 2 else parts[-1]


def _report_key(step: NistStep, use: UseReport) -> str:
    test = use.test or step.test
    section = step.section if use.section == "THIS" else use.section
    return f"{test}/{section}" if section else test


# --------------------------------------------------------------------------------------------
# Building the request
# --------------------------------------------------------------------------------------------
def _substitute(root: etree._Element, mapping: dict[str, str]) -> None:
    """Replace each key by its value in every text node and attribute value."""
    if not mapping:
        return
    keys = sorted(mapping, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys))

    def fix(s: str | None) -> str | None:
        return pattern.sub(lambda m: mapping[m.group(0)], s) if s else s

    for el in root.iter():
        if isinstance(el.tag, str):
            for attr, value in el.attrib.items():
                new = fix(value)
                if new != value:
                    el.set(attr, new)
            el.text = fix(el.text)
        el.tail = fix(el.tail)


def _rename_ids(root: etree._Element, renames: dict[str, str]) -> None:
    """Apply id renames to ``id`` and to every attribute that references an object id."""
    if not renames:
        return
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for attr in ("id", *_REFERENCE_ATTRS):
            value = el.get(attr)
            if value in renames:
                el.set(attr, renames[value])


def _objects(root: etree._Element) -> list[etree._Element]:
    return [el for el in root.iter(*(_R + t for t in _OBJECT_TAGS))]


def _metadata_root(step: NistStep) -> etree._Element:
    inline = step.inline_metadata
    if inline is not None:
        return etree.fromstring(etree.tostring(inline), _parser())
    if step.metadata_file is None:
        raise ValueError(f"step {step.test_id}/{step.step_id} has no request file")
    return parse_xml(step.metadata_file)


def prepare_request(step: NistStep, ctx: Context, *, strict: bool = True) -> etree._Element:
    """The ebRS 3.0 body to send for ``step``, with every NIST placeholder resolved.

    Submissions: ebRS 2.1 converted; UseId/UseReport values substituted; patient ids set (unless
    ``NoPatientId``); symbolic ids replaced by fresh urn:uuids when ``AssignUuids``; uniqueIds
    replaced by fresh OIDs (NIST does this by default so a test can run twice; ``NoAssignUids``
    turns it off). Queries: placeholders and ``$now$``/``$lastyear$`` substituted.
    For ProvideAndRegister, :func:`document_map` gives the documents keyed by entry id.
    With ``strict`` an unresolved ``$name$`` placeholder raises :class:`UnresolvedReference`.
    """
    root = _metadata_root(step)
    if etree.QName(root).namespace in (RIM21, RS21):
        root = convert_v2_to_v3(root)

    mapping: dict[str, str] = {
        # To is exclusive in ITI-18 time ranges; one second ahead keeps "updated just now" inside
        "$now$": _hl7_now(timedelta(seconds=1)),
        "$lastyear$": _hl7_now(timedelta(days=-365)),
    }
    for key, value in ctx.values.items():
        if _PLACEHOLDER.fullmatch(key):
            mapping[key] = value
    patient_symbol = str(step.options.get("patient", "$patientid$"))
    if step.options.get("AltPatientId"):
        # NIST: a patient id made up for this run and never fed to the registry
        patient_symbol = f"$altpatient:{step.test_id}:{step.step_id}$"
    is_submission = _local(root) == "SubmitObjectsRequest"
    if is_submission and not step.options.get("NoPatientId"):
        mapping["$patientid$"] = ctx.patient(patient_symbol)
    for use in step.use_reports:
        if use.use_as:
            mapping[use.use_as] = ctx.lookup_report(_report_key(step, use), use.step, use.report_name)
    plain_ids: dict[str, str] = {}
    for use in step.use_ids:
        value = ctx.lookup_id(_resolve_testdir(step, use.testdir), use)
        if use.symbol:
            mapping[use.symbol] = value
        else:
            plain_ids[use.id] = value
    _substitute(root, mapping)
    _rename_ids(root, plain_ids)

    if is_submission:
        _prepare_submission(step, ctx, root, patient_symbol)
    if strict:
        missing = unresolved_placeholders(root)
        if missing:
            raise UnresolvedReference(f"{step.test_id}/{step.step_id}: unresolved {sorted(missing)}")
    return root


def _prepare_submission(step: NistStep, ctx: Context, root: etree._Element, patient_symbol: str) -> None:
    objects = _objects(root)
    uuids: dict[str, str] = {}
    if step.options.get("AssignUuids"):
        for obj in objects:
            old = obj.get("id", "")
            if old and not old.startswith("urn:uuid:"):
                uuids[old] = _new_id()
        _rename_ids(root, uuids)
    for obj in objects:
        # ids that were uuids already (or were just made so) are what later steps ask for;
        # symbolic ids left to the registry cannot be known here
        if _local(obj) in ("ExtrinsicObject", "RegistryPackage", "Association"):
            current = obj.get("id", "")
            if current.startswith("urn:uuid:"):
                uuids.setdefault(_symbol_of(obj, uuids), current)

    reverse = {new: old for old, new in uuids.items()}
    no_uid = step.options.get("NoAssignUids")
    uids: dict[str, str] = {}
    patients: dict[str, str] = {}
    for ext in root.iter(_R + "ExternalIdentifier"):
        scheme = ext.get("identificationScheme")
        parent = ext.getparent()
        owner_id = ext.get("registryObject") or (parent.get("id", "") if parent is not None else "")
        owner = reverse.get(owner_id, owner_id)
        if scheme in UNIQUE_ID_SCHEMES:
            if no_uid is not True and no_uid != owner:
                ext.set("value", new_oid())
            uids[owner] = ext.get("value", "")
        elif scheme in PATIENT_ID_SCHEMES:
            if not step.options.get("NoPatientId"):
                ext.set("value", ctx.patient(patient_symbol))
            patients[owner] = ext.get("value", "")
    ctx.pending[_step_key(step)] = {
        "AssignedUuids": uuids,
        "AssignedUids": uids,
        "AssignedPatientId": patients,
    }


def _symbol_of(obj: etree._Element, uuids: dict[str, str]) -> str:
    current = obj.get("id", "")
    for old, new in uuids.items():
        if new == current:
            return old
    return current


def linkage(step: NistStep, ctx: Context) -> dict[str, str]:
    """The step's UseId/UseReport values by symbol (NIST's "linkage"), as far as they resolve.

    NIST substitutes these into a step's ``<Assert>`` expressions too (``... = '$home$'``).
    """
    mapping: dict[str, str] = {}
    for use in step.use_reports:
        if use.use_as:
            try:
                mapping[use.use_as] = ctx.lookup_report(_report_key(step, use), use.step, use.report_name)
            except UnresolvedReference:
                continue
    for use in step.use_ids:
        if use.symbol:
            try:
                mapping[use.symbol] = ctx.lookup_id(_resolve_testdir(step, use.testdir), use)
            except UnresolvedReference:
                continue
    return mapping


def unresolved_placeholders(root: etree._Element) -> set[str]:
    """``$name$`` tokens still present (stored-query parameter names like ``$XDSFolderStatus`` don't count)."""
    found: set[str] = set()
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for text in (el.text, *el.attrib.values()):
            if text:
                found.update(_PLACEHOLDER.findall(text))
    return found


def document_map(step: NistStep, ctx: Context) -> dict[str, Path]:
    """ProvideAndRegister documents keyed by the entry id used in the prepared request."""
    uuids = ctx.pending.get(_step_key(step), {}).get("AssignedUuids") or ctx.assigned.get(
        _step_key(step), {}
    ).get("AssignedUuids", {})
    return {uuids.get(sym, sym): path for sym, path in step.documents.items()}


def http_request_body(step: NistStep) -> tuple[str, bytes]:
    """An ``HttpTransaction`` step's raw request: (Content-Type header, body bytes).

    These steps (MTOM/XOP tests) send a captured MIME body as is; ids in it are literal, so
    :func:`record_result` reads them from the body instead of assigning new ones.
    """
    body_file = step.options.get("BodyFile")
    if not body_file:
        raise ValueError(f"step {step.test_id}/{step.step_id} has no BodyFile")
    headers = _text(step.instruction.find("Headers")) if step.instruction is not None else ""
    content_type = headers.split(":", 1)[1].strip() if headers.lower().startswith("content-type:") else ""
    return content_type, (step.test_dir / str(body_file)).read_bytes()


def _embedded_submission(body: bytes) -> etree._Element | None:
    """The SubmitObjectsRequest inside a captured SOAP/MIME body, if there is one."""
    start = body.find(b"<")
    while start != -1:
        end = body.find(b"Envelope>", start)
        if end == -1:
            return None
        try:
            envelope = parse_xml(body[start : end + len("Envelope>")])
        except (etree.XMLSyntaxError, ValueError):
            start = body.find(b"<", start + 1)
            continue
        return next(envelope.iter(f"{{{v.LCM}}}SubmitObjectsRequest"), None)
    return None


def _literal_ids(root: etree._Element) -> dict[str, dict[str, str]]:
    """Ids/uniqueIds/patient ids of a submission sent as is (nothing assigned by us)."""
    uuids = {o.get("id", ""): o.get("id", "") for o in _objects(root) if o.get("id")}
    uids: dict[str, str] = {}
    patients: dict[str, str] = {}
    for ext in root.iter(_R + "ExternalIdentifier"):
        parent = ext.getparent()
        owner = ext.get("registryObject") or (parent.get("id", "") if parent is not None else "")
        if ext.get("identificationScheme") in UNIQUE_ID_SCHEMES:
            uids[owner] = ext.get("value", "")
        elif ext.get("identificationScheme") in PATIENT_ID_SCHEMES:
            patients[owner] = ext.get("value", "")
    return {"AssignedUuids": uuids, "AssignedUids": uids, "AssignedPatientId": patients}


# --------------------------------------------------------------------------------------------
# After the response
# --------------------------------------------------------------------------------------------
def _xpath_value(doc: etree._Element | None, xpath: str) -> str | None:
    if doc is None or not xpath:
        return None
    try:
        result = doc.xpath(xpath)
    except etree.XPathError:
        return None
    if isinstance(result, list):
        if not result:
            return None
        first = result[0]
        if isinstance(first, etree._Element):
            return (first.text or "").strip()
        return str(first).strip()
    return str(result).strip()


def record_result(
    step: NistStep,
    ctx: Context,
    request_elem: etree._Element | None,
    response_elem: etree._Element | None,
) -> None:
    """Remember what this step produced so later UseId/UseReport can find it.

    Assigned ids become ``ctx.assigned[(test_id, step_id)]`` plus NIST's automatic reports
    ``<symbol>_uuid`` / ``<symbol>_uid``; each ``<Report>`` is evaluated over the request
    (InputMetadata) or the response (Result). Call it only when the step succeeded.
    """
    key = _step_key(step)
    sections = ctx.pending.pop(key, None)
    if sections is None and step.transaction == "Http" and step.options.get("BodyFile"):
        submission = _embedded_submission(http_request_body(step)[1])
        if submission is not None:
            sections = _literal_ids(submission)
    if sections is not None:
        ctx.assigned[key] = sections
        for symbol, value in sections["AssignedUuids"].items():
            ctx.reports[(*key, f"{symbol}_uuid")] = value
            ctx.id_map[symbol] = value
        for symbol, value in sections["AssignedUids"].items():
            ctx.reports[(*key, f"{symbol}_uid")] = value
    for report in step.reports:
        source = request_elem if report.section == "InputMetadata" else response_elem
        value = _xpath_value(source, report.xpath)
        if value is not None:
            ctx.reports[(*key, report.name)] = value

