"""Read NIST XDS Toolkit testplans: the step model and the test/section layout NIST runs.

A NIST testkit is a tree of tests. A test folder with an ``index.idx`` is a multi-section test: NIST
runs the sections listed there, in that order, and nothing else (a stray top-level ``testplan.xml``
or an unlisted section folder is not part of the test). A folder with only a ``testplan.xml`` is a
single-section test. :func:`find_tests` gives tests that way; :func:`iter_tests` still yields every
testplan found (readers that check the whole corpus want that).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from .common import _local, _text, parse_xml

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
    "IGQTransaction": "IGQ",
    "IGRTransaction": "IGR",
    "MPQTransaction": "MPQ",
    "XDRProvideAndRegisterTransaction": "XDR",
}


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


@dataclass(frozen=True)
class Assert:
    """One ``<Assertions>/<Assert>``: an XPath 1.0 expression over the test log that must be true.

    ``unsupported`` says why the harness cannot evaluate it (a ``process`` attribute or nested
    validations: NIST runs Java code for those), so it is reported, never silently passed.
    """

    id: str
    xpath: str
    desc: str = ""
    unsupported: str = ""


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
    #: ``<Assertions>``: the checks and the DataRef files they read (``THIS`` = this section's log).
    asserts: list[Assert] = field(default_factory=list)
    data_refs: list[str] = field(default_factory=list)
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
        return self.transaction in ("StoredQuery", "XCQ", "IGQ", "MPQ")

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
    if step_el.find("NewPatientId") is not None:  # NIST allocates a fresh patient id from this step on
        step.options["NewPatientId"] = True
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
        elif tag == "Assertions":
            _parse_assertions(step, child)
    return step


def _parse_assertions(step: NistStep, el: etree._Element) -> None:
    for child in el:
        tag = _local(child)
        if tag == "DataRef":
            step.data_refs.append(f"{child.get('file', '')} as {child.get('as', '')}")
        elif tag == "Assert":
            unsupported = ""
            if child.get("process"):
                unsupported = f"process={child.get('process')!r} runs NIST Java code"
            elif any(isinstance(c.tag, str) for c in child):
                unsupported = "nested validations run NIST Java code"
            step.asserts.append(Assert(child.get("id", ""), " ".join((child.text or "").split()),
                                       child.get("desc", ""), unsupported))


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



@dataclass
class Section:
    """One section of a test as NIST runs it; ``problem`` when it cannot be read (listed but absent)."""

    name: str
    directory: Path
    steps: list[NistStep] = field(default_factory=list)
    problem: str = ""


@dataclass
class NistTest:
    """A NIST test: its sections in run order, and what NIST would not run (``ignored``)."""

    id: str
    directory: Path
    sections: list[Section] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def steps(self) -> list[NistStep]:
        return [s for section in self.sections for s in section.steps]


def _index_names(index: Path) -> list[str]:
    names = []
    for line in index.read_text(errors="replace").splitlines():
        name = line.strip()
        if name and not name.startswith("#"):
            names.append(name)
    return names


def _section(test_id: str, name: str, directory: Path) -> Section:
    section = Section(name, directory)
    if not (directory / "testplan.xml").is_file():
        section.problem = f"index.idx lists section {name!r}, which has no testplan.xml in this testkit"
        return section
    try:
        section.steps = load_testplan(directory)
    except (etree.XMLSyntaxError, ValueError) as exc:
        section.problem = f"testplan.xml of section {name!r} cannot be read: {exc}"
        return section
    for step in section.steps:  # the id later steps' UseId/UseReport refer to
        step.test_id = f"{test_id}/{name}" if name else test_id
    return section


def load_test(test_dir: Path) -> NistTest:
    """One test folder the way NIST runs it: the ``index.idx`` sections in order, else the single testplan."""
    test = NistTest(test_dir.name, test_dir)
    index = test_dir / "index.idx"
    if not index.is_file():
        test.sections.append(_section(test.id, "", test_dir))
        return test
    names = _index_names(index)
    test.sections = [_section(test.id, n, test_dir / n) for n in names]
    if (test_dir / "testplan.xml").is_file():
        test.ignored.append("testplan.xml at the top of the test (index.idx names the sections)")
    for sub in sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name not in names):
        if (sub / "testplan.xml").is_file():
            test.ignored.append(f"section {sub.name} (not listed in index.idx)")
    return test


def find_tests(root: Path) -> list[NistTest]:
    """The tests under ``root`` (a test folder, a ``tests/`` folder or a whole checkout), NIST's way.

    A folder with ``index.idx`` or ``testplan.xml`` is a test; any other folder is a collection
    whose sub-folders are searched, in name order.
    """
    if (root / "index.idx").is_file() or (root / "testplan.xml").is_file():
        return [load_test(root)]
    found: list[NistTest] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found.extend(find_tests(sub))
    return found
