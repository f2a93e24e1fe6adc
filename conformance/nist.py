"""Read NIST XDS Toolkit testplans and turn their request files into ebRS 3.0 bodies we can send.

A NIST testkit is a tree of ``testplan.xml`` files. Each ``TestStep`` names one transaction
(``StoredQueryTransaction``, ``RegisterTransaction`` ...), a request file with placeholders
(``$patient_id$``, ``$uid$``) and symbolic ids (``Document01``), where the placeholder values come
from (``UseId`` / ``UseReport`` pointing at earlier steps, possibly of other tests) and what the
response must look like (``ExpectedStatus``, ``ExpectedErrorCode``, ``ExpectedContents``).

This module is pure: it reads files and builds XML, it never sends anything. A runner does::

    ctx = Context()
    for step in steps:
        body = prepare_request(step, ctx)      # substituted, ids assigned, ebRS 2.1 converted
        response = send(body)                  # the caller's business
        record_result(step, ctx, body, response)

``record_result`` remembers what later steps ask for (assigned UUIDs / uniqueIds / patient ids,
``Report`` values), keyed the way testplans refer to them. Older NIST request files are ebRS 2.1
(XDS.a); :func:`convert_v2_to_v3` rewrites them as the toolkit does for ``<XDSb/>`` steps.

The registry seed that stands in for NIST's test-data tests (12346, 12374) is described by
``seeds/registry/seed.toml`` and read by :func:`seed_plan`.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lxml import etree

from xds_node import safexml
from xds_node.ebxml import vocabulary as v

__all__ = [
    "Context",
    "Expectation",
    "NistStep",
    "Report",
    "SeedStep",
    "UnresolvedReference",
    "UseId",
    "UseReport",
    "convert_v2_to_v3",
    "document_map",
    "http_request_body",
    "iter_tests",
    "load_testplan",
    "parse_xml",
    "prepare_request",
    "record_result",
    "seed_context",
    "seed_plan",
    "unresolved_placeholders",
]

RIM21 = "urn:oasis:names:tc:ebxml-regrep:rim:xsd:2.1"
RS21 = "urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1"
XML_NS = "http://www.w3.org/XML/1998/namespace"
_R = f"{{{v.RIM}}}"

SEED_DIR = Path(__file__).resolve().parent / "seeds" / "registry"
SEED_TOML = SEED_DIR / "seed.toml"

#: Testplan element -> our transaction name (the rest just lose their ``Transaction`` suffix).
TRANSACTIONS = {
    "StoredQueryTransaction": "StoredQuery",
    "RegisterTransaction": "Register",
    "ProvideAndRegisterTransaction": "ProvideAndRegister",
    "RetrieveTransaction": "Retrieve",
    "XCQTransaction": "XCQ",
    "XCRTransaction": "XCR",
    "XCPDTransaction": "Xcpd",
    "XcpdTransaction": "Xcpd",
    "PatientIdentityFeedTransaction": "PatientIdentityFeed",
    "NullTransaction": "Null",
    "HttpTransaction": "Http",
    "StsTransaction": "Sts",
    "RegisterODDETransaction": "RegisterODDE",
}

#: ebRS 2.1 used short association types; 3.0 uses URNs (ITI TF-3 4.2.2).
ASSOCIATION_TYPES_V2 = {
    "HasMember": v.AssociationType.HAS_MEMBER.value,
    "RPLC": v.AssociationType.RPLC.value,
    "XFRM": v.AssociationType.XFRM.value,
    "APND": v.AssociationType.APND.value,
    "XFRM_RPLC": v.AssociationType.XFRM_RPLC.value,
    "signs": v.AssociationType.SIGNS.value,
    "IsSnapshotOf": v.AssociationType.IS_SNAPSHOT_OF.value,
}

#: ExternalIdentifier schemes whose value is a uniqueId the runner must make fresh.
UNIQUE_ID_SCHEMES = frozenset({v.DOC_UNIQUE_ID, v.SS_UNIQUE_ID, v.FOLDER_UNIQUE_ID})
#: ExternalIdentifier schemes that carry the object's patient id.
PATIENT_ID_SCHEMES = frozenset({v.DOC_PATIENT_ID, v.SS_PATIENT_ID, v.FOLDER_PATIENT_ID})

_PLACEHOLDER = re.compile(r"\$[A-Za-z_][A-Za-z0-9_.\-]*\$")
_OBJECT_TAGS = ("ExtrinsicObject", "RegistryPackage", "Association", "Classification", "ExternalIdentifier")
_REFERENCE_ATTRS = ("classifiedObject", "sourceObject", "targetObject", "registryObject", "classificationNode")


class UnresolvedReference(LookupError):
    """A UseId/UseReport/placeholder points at a value no earlier step (or the seed) produced."""


# --------------------------------------------------------------------------------------------
# XML parsing
# --------------------------------------------------------------------------------------------
def _parser() -> etree.XMLParser:
    return safexml.parser()


def parse_xml(source: Path | bytes) -> etree._Element:
    """Parse a testkit file safely; testkits are third-party input, so no DTDs or entities."""
    data = source.read_bytes() if isinstance(source, Path) else source
    tree = etree.ElementTree(etree.fromstring(data, _parser()))
    if tree.docinfo.doctype:
        raise ValueError("DOCTYPE is not allowed in testkit files")
    return tree.getroot()


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _text(el: etree._Element | None) -> str:
    return " ".join((el.text or "").split()) if el is not None else ""


# --------------------------------------------------------------------------------------------
# Testplan model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UseId:
    """``<UseId>``: take an id another step assigned (section AssignedUuids/AssignedUids/AssignedPatientId)."""

    id: str
    symbol: str | None
    step: str
    section: str
    testdir: str | None = None


@dataclass(frozen=True)
class UseReport:
    """``<UseReport>``: take a named value another step reported; ``section`` is a sibling section."""

    report_name: str
    use_as: str
    section: str
    step: str
    test: str | None = None


@dataclass(frozen=True)
class Report:
    """``<Report>``: an XPath over this step's request (InputMetadata) or response (Result)."""

    name: str
    section: str
    xpath: str


@dataclass
class Expectation:
    """What the testplan says the response must be."""

    status: str = ""
    error_codes: list[str] = field(default_factory=list)
    #: ExpectedContents children: ``{"Documents": 2}``; elements without count map to True
    #: (``{"None": True}``, ``{"SSwithOneDocOneFol": True}``).
    contents: dict[str, int | bool] = field(default_factory=dict)
    assertions: str = ""


@dataclass
class NistStep:
    """One ``TestStep`` of a testplan, with everything needed to build and judge its request."""

    test_dir: Path
    test_id: str  # "11897/and" (test/section) or "12345" for single-section tests
    step_id: str
    transaction: str
    metadata_file: Path | None
    documents: dict[str, Path]
    expectation: Expectation
    use_ids: list[UseId]
    use_reports: list[UseReport]
    reports: list[Report] = field(default_factory=list)
    options: dict[str, str | bool] = field(default_factory=dict)
    element: etree._Element | None = None
    instruction: etree._Element | None = None

    @property
    def test(self) -> str:
        return self.test_id.split("/", 1)[0]

    @property
    def section(self) -> str:
        return self.test_id.split("/", 1)[1] if "/" in self.test_id else ""

    @property
    def is_query(self) -> bool:
        return self.transaction in ("StoredQuery", "XCQ")

    @property
    def inline_metadata(self) -> etree._Element | None:
        """``<Metadata>`` holding the request inline instead of a MetadataFile."""
        if self.instruction is None:
            return None
        for child in self.instruction:
            if _local(child) == "Metadata" and len(child):
                return child[0]
        return None


def _test_id(step_dir: Path, plan: etree._Element) -> str:
    declared = _text(plan.find("Test"))
    if "/" in declared:
        return f"{step_dir.parent.name}/{step_dir.name}"
    if declared:
        return step_dir.name
    # no <Test>: a section when a sibling directory is also a section of the same test
    siblings = [p for p in step_dir.parent.iterdir() if p.is_dir() and p != step_dir]
    if any((p / "testplan.xml").is_file() for p in siblings) and not (step_dir.parent / "testplan.xml").exists():
        return f"{step_dir.parent.name}/{step_dir.name}"
    return step_dir.name


def _expectation(step_el: etree._Element, instruction: etree._Element | None) -> Expectation:
    exp = Expectation(status=_text(step_el.find("ExpectedStatus")))
    for tag in ("ExpectedErrorCode", "ExpectedErrorMessage"):
        for el in step_el.iter(tag):
            if _text(el):
                exp.error_codes.append(_text(el))
    contents = instruction.find("ExpectedContents") if instruction is not None else None
    if contents is not None:
        for child in contents:
            if not isinstance(child.tag, str):
                continue
            count = child.get("count")
            exp.contents[child.tag] = int(count) if count is not None else True
    exp.assertions = "\n".join(_text(a) for a in step_el.iter("Assertion") if _text(a))
    return exp


def _parse_step(step_dir: Path, test_id: str, step_el: etree._Element) -> NistStep:
    instruction = next(
        (c for c in step_el if isinstance(c.tag, str) and c.tag.endswith("Transaction")),
        None,
    )
    name = instruction.tag if instruction is not None else ""
    transaction = TRANSACTIONS.get(name, name.removesuffix("Transaction"))
    step = NistStep(
        test_dir=step_dir,
        test_id=test_id,
        step_id=step_el.get("id", ""),
        transaction=transaction,
        metadata_file=None,
        documents={},
        expectation=_expectation(step_el, instruction),
        use_ids=[],
        use_reports=[],
        element=step_el,
        instruction=instruction,
    )
    sq = _text(step_el.find("Rule/SQ"))
    if sq:
        step.options["sq"] = sq
    if step_el.find("AltPatientId") is not None:  # a TestStep-level flag in some testplans (11996)
        step.options["AltPatientId"] = True
    if instruction is None:
        return step
    for child in instruction:
        tag = child.tag if isinstance(child.tag, str) else ""
        if tag == "MetadataFile":
            step.metadata_file = step_dir / _text(child)
        elif tag == "Document":
            step.documents[child.get("id", "")] = step_dir / _text(child)
        elif tag == "UseId":
            step.use_ids.append(
                UseId(
                    id=child.get("id", ""),
                    symbol=child.get("symbol"),
                    step=child.get("step", ""),
                    section=child.get("section", ""),
                    testdir=child.get("testdir"),
                )
            )
        elif tag == "UseReport":
            step.use_reports.append(
                UseReport(
                    report_name=child.get("reportName", ""),
                    use_as=child.get("useAs", ""),
                    section=child.get("section", ""),
                    step=child.get("step", ""),
                    test=child.get("test"),
                )
            )
        elif tag == "Report":
            step.reports.append(Report(child.get("name", ""), child.get("section", ""), _text(child)))
        elif tag in ("XDSb", "XDSa", "AssignUuids", "NoPatientId", "AltPatientId", "NoMetadata", "SOAP11"):
            step.options[tag] = True
        elif tag == "NoAssignUids":
            step.options["NoAssignUids"] = child.get("id") or True
        elif tag in ("ParseMetadata", "PatientId", "BodyFile", "ExpectedMimeType"):
            step.options[tag] = _text(child)
        elif tag in ("HttpTransaction", "StsTransaction"):
            step.options.update({k: str(val) for k, val in child.attrib.items()})
    return step


def load_testplan(step_dir: Path) -> list[NistStep]:
    """All steps of ``step_dir/testplan.xml`` in file order."""
    plan = parse_xml(step_dir / "testplan.xml")
    test_id = _test_id(step_dir, plan)
    return [_parse_step(step_dir, test_id, el) for el in plan.iter("TestStep")]


def _ordered_sections(test_dir: Path) -> list[Path]:
    """Sections of a test in ``index.idx`` order (NIST runs them that way), others after, by name."""
    subdirs = sorted(p for p in test_dir.iterdir() if p.is_dir())
    index = test_dir / "index.idx"
    if not index.is_file():
        return subdirs
    names = [line.strip() for line in index.read_text(errors="replace").splitlines() if line.strip()]
    ordered = [test_dir / n for n in names if (test_dir / n).is_dir()]
    return ordered + [p for p in subdirs if p not in ordered]


def iter_tests(root: Path) -> Iterator[NistStep]:
    """Every step under a testkit checkout (``tests/``, ``testdata-*/``, ``examples/`` ...).

    Sections of one test come in ``index.idx`` order so that a test's submit precedes its eval.
    """

    def walk(directory: Path) -> Iterator[NistStep]:
        if (directory / "testplan.xml").is_file():
            yield from load_testplan(directory)
        for sub in _ordered_sections(directory):
            yield from walk(sub)

    yield from walk(root)


# --------------------------------------------------------------------------------------------
# ebRS 2.1 -> 3.0
# --------------------------------------------------------------------------------------------
def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _convert_strings(src: etree._Element, dst: etree._Element, tag: str) -> None:
    """Name/Description: copy LocalizedStrings (empty 2.1 ``<Description/>`` is dropped by caller)."""
    out = etree.SubElement(dst, _R + tag)
    for ls in src:
        if _local(ls) != "LocalizedString":
            continue
        new = etree.SubElement(out, _R + "LocalizedString")
        for attr in ("charset", f"{{{XML_NS}}}lang"):
            if ls.get(attr) is not None:
                new.set(attr, ls.get(attr))
        new.set("value", ls.get("value", ""))


def _convert_slot(src: etree._Element, dst: etree._Element) -> None:
    slot = etree.SubElement(dst, _R + "Slot", name=src.get("name", ""))
    if src.get("slotType"):
        slot.set("slotType", src.get("slotType"))
    values = etree.SubElement(slot, _R + "ValueList")
    # by local name: some NIST files leave Slot/ValueList/Value unprefixed (no namespace)
    for value in src.iter():
        if _local(value) == "Value":
            etree.SubElement(values, _R + "Value").text = value.text or ""


_OBJECT_ATTRS = {
    "ExtrinsicObject": ("id", "home", "lid", "objectType", "status", "mimeType", "isOpaque"),
    "RegistryPackage": ("id", "home", "lid", "objectType", "status"),
    "Classification": ("id", "home", "lid", "objectType", "status", "classifiedObject",
                       "classificationScheme", "classificationNode", "nodeRepresentation"),
    "ExternalIdentifier": ("id", "home", "lid", "objectType", "status", "registryObject",
                           "identificationScheme", "value"),
    "Association": ("id", "home", "lid", "objectType", "status", "associationType", "sourceObject",
                    "targetObject"),
}  # fmt: skip


def _convert_object(src: etree._Element, parent_id: str | None = None) -> etree._Element:
    """One 2.1 RegistryObject -> 3.0: ids made explicit, children in the 3.0 sequence.

    3.0 wants Slot*, Name?, Description?, Classification*, ExternalIdentifier* (2.1 put Name
    first), every object to carry an ``id``, and ExternalIdentifier to name its ``registryObject``.
    """
    kind = _local(src)
    dst = etree.Element(_R + kind)
    for attr in _OBJECT_ATTRS.get(kind, ("id", "home", "lid", "objectType", "status")):
        if src.get(attr) is not None:
            dst.set(attr, src.get(attr))
    if kind == "Association":
        # older files spell the 2.0 attribute names; 3.0 uses sourceObject/targetObject
        for old, new in (("sourceObjectId", "sourceObject"), ("targetObjectId", "targetObject")):
            if src.get(old) is not None and dst.get(new) is None:
                dst.set(new, src.get(old))
        atype = src.get("associationType", "")
        if not atype.startswith("urn:"):
            atype = ASSOCIATION_TYPES_V2.get(atype, f"urn:oasis:names:tc:ebxml-regrep:AssociationType:{atype}")
        dst.set("associationType", atype)
    if kind == "ExternalIdentifier" and dst.get("registryObject") is None and parent_id:
        dst.set("registryObject", parent_id)
    if kind == "Classification" and dst.get("classifiedObject") is None and parent_id:
        dst.set("classifiedObject", parent_id)
    if dst.get("id") is None:
        dst.set("id", _new_id())
    # reorder attributes so id comes first (readability only)
    attrs = dict(dst.attrib)
    dst.attrib.clear()
    dst.set("id", attrs.pop("id"))
    for key, value in attrs.items():
        dst.set(key, value)

    children = [c for c in src if isinstance(c.tag, str)]
    for slot in (c for c in children if _local(c) == "Slot"):
        _convert_slot(slot, dst)
    for tag in ("Name", "Description"):
        for el in (c for c in children if _local(c) == tag):
            if any(_local(ls) == "LocalizedString" for ls in el):
                _convert_strings(el, dst, tag)
    for tag in ("Classification", "ExternalIdentifier"):
        for el in (c for c in children if _local(c) == tag):
            dst.append(_convert_object(el, dst.get("id")))
    return dst


def convert_v2_to_v3(elem: etree._Element, *, keep_object_refs: bool = False) -> etree._Element:
    """ebRS 2.1 SubmitObjectsRequest / LeafRegistryObjectList -> ebRS 3.0 equivalents.

    2.1 lists the classification schemes it uses as ObjectRefs; a 3.0 registry knows them, so
    they are dropped unless ``keep_object_refs``. 3.0 input is returned as a copy, unchanged.
    """
    ns = etree.QName(elem).namespace
    kind = _local(elem)
    if ns not in (RIM21, RS21):
        return etree.fromstring(etree.tostring(elem), _parser())
    if kind == "AdhocQueryRequest":
        raise ValueError("ebRS 2.1 AdhocQueryRequest is an SQL query; it has no 3.0 stored-query form")
    if kind == "SubmitObjectsRequest":
        root = etree.Element(f"{{{v.LCM}}}SubmitObjectsRequest", nsmap={"lcm": v.LCM, "rim": v.RIM})
        lists = [c for c in elem if _local(c) == "LeafRegistryObjectList"]
        out_list = etree.SubElement(root, _R + "RegistryObjectList")
        for lst in lists:
            _convert_list(lst, out_list, keep_object_refs)
        return root
    if kind in ("LeafRegistryObjectList", "RegistryObjectList"):
        out_list = etree.Element(_R + "RegistryObjectList", nsmap={"rim": v.RIM})
        _convert_list(elem, out_list, keep_object_refs)
        return out_list
    if kind in _OBJECT_ATTRS:
        return _convert_object(elem)
    raise ValueError(f"do not know how to convert ebRS 2.1 {kind}")


def _convert_list(src: etree._Element, dst: etree._Element, keep_object_refs: bool) -> None:
    for child in src:
        kind = _local(child)
        if not kind:
            continue
        if kind == "ObjectRef":
            if keep_object_refs:
                etree.SubElement(dst, _R + "ObjectRef", id=child.get("id", ""))
            continue
        dst.append(_convert_object(child))


# --------------------------------------------------------------------------------------------
# Context: values produced by earlier steps
# --------------------------------------------------------------------------------------------
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
                f"no {use.section} value for {use.id!r} from step {use.step!r} of {test_key!r}"
            ) from None

    def lookup_report(self, test_key: str, step: str, name: str) -> str:
        value = self.reports.get((test_key, step, name))
        if value is None:
            raise UnresolvedReference(f"no report {name!r} from step {step!r} of {test_key!r}")
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


# --------------------------------------------------------------------------------------------
# Registry seed
# --------------------------------------------------------------------------------------------
@dataclass
class SeedStep:
    """One submission of our registry seed, standing in for a NIST test-data step."""

    file: Path
    test: str
    section: str
    step: str
    patient: str
    provides: str = ""
    transaction: str = "Register"
    use_ids: list[UseId] = field(default_factory=list)

    @property
    def test_id(self) -> str:
        return f"{self.test}/{self.section}" if self.section else self.test

    def to_step(self) -> NistStep:
        """The seed step as a testplan step, so prepare_request/record_result handle it."""
        return NistStep(
            test_dir=self.file.parent,
            test_id=self.test_id,
            step_id=self.step,
            transaction=self.transaction,
            metadata_file=self.file,
            documents={},
            expectation=Expectation(status="Success"),
            use_ids=list(self.use_ids),
            use_reports=[],
            options={"XDSb": True, "AssignUuids": True, "patient": self.patient},
        )


def _load_seed(path: Path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def seed_plan(path: Path = SEED_TOML) -> list[SeedStep]:
    """The seed submissions in the order they must be sent."""
    data = _load_seed(path)
    steps = []
    for raw in data.get("step", []):
        seed = SeedStep(
            file=path.parent / raw["file"],
            test=raw["test"],
            section=raw.get("section", ""),
            step=raw["step"],
            patient=raw.get("patient", "$patientid$"),
            provides=raw.get("provides", ""),
            transaction=raw.get("transaction", "Register"),
        )
        for use in raw.get("use_id", []):
            same_test = use.get("test", seed.test) == seed.test
            testdir = f"../{use['section']}" if same_test else f"../../{use['test']}/{use['section']}"
            seed.use_ids.append(UseId(use["id"], use.get("symbol"), use["step"], use["kind"], testdir))
        steps.append(seed)
    return steps


def seed_context(path: Path = SEED_TOML, ctx: Context | None = None) -> Context:
    """A Context preloaded with the seed's fixed values, patient authorities and external reports.

    Existing values in ``ctx`` win, so a caller can pin patient ids or the repository id.
    """
    data = _load_seed(path)
    ctx = ctx or Context()
    for key, value in data.get("values", {}).items():
        ctx.values.setdefault(key, str(value))
    for symbol, spec in data.get("patients", {}).items():
        if isinstance(spec, dict) and "assigning_authority" in spec:
            ctx.assigning_authorities.setdefault(symbol, spec["assigning_authority"])
    for rep in data.get("report", []):
        test_key = f"{rep['test']}/{rep['section']}" if rep.get("section") else rep["test"]
        ctx.reports.setdefault((test_key, rep["step"], rep["name"]), str(rep["value"]))
    return ctx
