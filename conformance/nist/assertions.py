"""NIST ``<Assertions>``: XPath checks over the test log, evaluated the way the toolkit does, safely.

The toolkit keeps a log per section (``log.xml``): ``TestResults/TestStep[@id]/<XxxTransaction
step=id>`` holding the request (``InputMetadata``) and the answer (``Result``). An ``<Assert>`` is
an XPath 1.0 expression, with the step's UseId/UseReport values substituted into it, evaluated
over ``Data/output/<the log so far>`` (``<DataRef file="THIS" as="output"/>``); the step passes
when its string value is ``true``. :class:`SectionLog` builds that log from our exchanges and
:func:`evaluate` runs the checks.

Safety: testplans are third-party input. Expressions run in lxml's XPath 1.0 engine with no
extension functions and no EXSLT regular expressions, over a tree we built (no document() or
other I/O exists in XPath 1.0); an over-long expression is refused. An assertion we cannot
evaluate (a syntax error, a DataRef other than THIS, NIST's Java-backed ``process`` checks) comes
back as ``unevaluated`` with the reason, never as passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from xds_node.ebxml import vocabulary as v

from .reader import Assert, NistStep

__all__ = ["AssertionOutcome", "SectionLog", "evaluate"]

#: Prefixes NIST testplans use when they do not spell out namespace-uri() tests.
NAMESPACES = {"rim": v.RIM, "rs": v.RS, "query": v.QUERY, "lcm": v.LCM, "xdsb": v.XDSB, "hl7": "urn:hl7-org:v3",
              "xop": "http://www.w3.org/2004/08/xop/include"}
MAX_XPATH = 4000


class SectionLog:
    """The ``log.xml`` of one section, grown step by step in NIST's shape."""

    def __init__(self, test_id: str):
        self.root = etree.Element("TestResults", status="Pass")
        etree.SubElement(self.root, "Test").text = test_id

    def add(self, step: NistStep, request: etree._Element | None, response: etree._Element | None,
            instruction: str) -> None:
        """Record one step: ``TestStep[@id]/<instruction step=id>/{InputMetadata, Result}``."""
        ts = etree.SubElement(self.root, "TestStep", id=step.step_id)
        if step.expectation.status:
            etree.SubElement(ts, "ExpectedStatus").text = step.expectation.status
        out = etree.SubElement(ts, instruction, step=step.step_id)
        if request is not None:
            etree.SubElement(out, "InputMetadata").append(_copy(request))
        if response is not None:
            etree.SubElement(out, "Result").append(_copy(response))


def _copy(el: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(el))


@dataclass
class AssertionOutcome:
    """What the step's assertions came to: ``failed`` and ``unevaluated`` hold plain-words reasons."""

    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unevaluated: list[str] = field(default_factory=list)


def _string_value(result: object) -> str:
    """XPath 1.0 string() of an evaluation result (Jaxen's stringValueOf, which NIST compares)."""
    if isinstance(result, bool):
        return "true" if result else "false"
    if isinstance(result, float):
        return str(int(result)) if result.is_integer() else repr(result)
    if isinstance(result, list):
        if not result:
            return ""
        first = result[0]
        if isinstance(first, etree._Element):
            return "".join(first.itertext())
        return str(first)
    return str(result)


def _substitute(text: str, mapping: dict[str, str]) -> str:
    for key in sorted(mapping, key=len, reverse=True):
        text = text.replace(key, mapping[key])
    return text


def evaluate(step: NistStep, log: SectionLog, mapping: dict[str, str]) -> AssertionOutcome:
    """Each of ``step``'s ``<Assert>`` over ``log`` (which already holds this step), with ``mapping``
    (the step's UseId/UseReport values, NIST's "linkage") substituted into the expression first."""
    outcome = AssertionOutcome()
    refs = step.data_refs or ["THIS as output"]
    unknown = [r for r in refs if r != "THIS as output"]
    data = etree.Element("Data")
    etree.SubElement(data, "output").append(_copy(log.root))
    for check in step.asserts:
        name = check.id or check.desc or "(unnamed)"
        if unknown:
            outcome.unevaluated.append(f"assertion {name}: reads DataRef {', '.join(unknown)}, which the harness "
                                       "does not have (only THIS as output)")
            continue
        if check.unsupported:
            outcome.unevaluated.append(f"assertion {name}: {check.unsupported}")
            continue
        outcome_for(check, name, _substitute(check.xpath, mapping), data, outcome)
    return outcome


def outcome_for(check: Assert, name: str, xpath: str, data: etree._Element, outcome: AssertionOutcome) -> None:
    """Evaluate one expression; NIST's special ``equalsIgnoreCase`` form is honoured as it does."""
    if not xpath:
        outcome.unevaluated.append(f"assertion {name}: empty expression")
        return
    if len(xpath) > MAX_XPATH:
        outcome.unevaluated.append(f"assertion {name}: expression longer than {MAX_XPATH} characters")
        return
    if "equalsIgnoreCase" in xpath:
        parts = xpath.split("equalsIgnoreCase")
        if len(parts) == 2:
            xpath = f"{parts[0].lower()} = {parts[1].lower()}"
    unresolved = sorted({w for w in xpath.split("'") if w.startswith("$") and w.endswith("$") and len(w) > 2})
    if unresolved:
        outcome.unevaluated.append(f"assertion {name}: needs value(s) {', '.join(unresolved)} that no step produced")
        return
    try:
        compiled = etree.XPath(xpath, namespaces=NAMESPACES, regexp=False, smart_strings=False)
        result = compiled(etree.ElementTree(data).getroot())
    except (etree.XPathError, TypeError, ValueError) as exc:
        outcome.unevaluated.append(f"assertion {name}: the harness cannot evaluate {xpath!r} ({exc})")
        return
    value = _string_value(result)
    if value.lower() == "true":
        outcome.passed.append(name)
    else:
        words = f" ({check.desc})" if check.desc else ""
        outcome.failed.append(f"assertion {name}{words} is {value or 'empty'}: {xpath}")
