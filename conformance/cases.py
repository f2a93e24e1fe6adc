"""Conformance cases as data: the model, the TOML loader and the ``${name}`` substitution.

A suite file (``conformance/suites/<name>.toml``) holds cases; a case is a list of steps; a step is
one SOAP exchange: which transaction, against which endpoint role, what request (an XML template
with ``${name}`` placeholders, a zeep-built body, or a named builder), which values to carry on,
and what the response must look like. Keeping cases as data means a partner-specific suite is a
new TOML file, not new code, and the same runner judges every suite the same way.

Values: ``${name}`` is looked up in the case's variables (run options such as ``home`` or
``patient``, then values set or saved by earlier steps). ``${new_uuid}`` and ``${new_oid}`` give a
fresh value at every occurrence (``${new_id}``: 12 hex digits, for patient ids).
A step's ``set`` table defines values once per step (so
``doc_uid = "${new_oid}"`` can be used in the request and checked later).
"""

from __future__ import annotations

import re
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xds_node.ebxml import vocabulary as v

__all__ = [
    "ROLES",
    "SUITES_DIR",
    "TRANSACTIONS",
    "Case",
    "Expect",
    "Step",
    "Suite",
    "UnknownVariable",
    "list_suites",
    "load_suite",
    "new_oid",
    "substitute",
    "xml_escape",
]

SUITES_DIR = Path(__file__).resolve().parent / "suites"

#: Transactions that store documents or metadata in the target.
WRITING_TRANSACTIONS = frozenset({"ITI-41", "ITI-42", "XDR"})

#: Endpoint roles and their default paths on a node laid out like ours (overridable per run).
ROLES: dict[str, str] = {
    "registry": "/xds/registry",
    "repository": "/xds/repository",
    "xca_query": "/xca/query",
    "xca_retrieve": "/xca/retrieve",
    "xcpd": "/xcpd",
    "xdr": "/xdr",
    "ig_registry": "/ig/registry",
    "ig_repository": "/ig/repository",
}


@dataclass(frozen=True)
class Transaction:
    action: str
    role: str
    mtom: bool = False  # the request is sent as MTOM (and the response is expected as MTOM)
    secured: bool = False  # gateway transactions carry WS-Security + SAML by default


TRANSACTIONS: dict[str, Transaction] = {
    "ITI-18": Transaction(v.Action.ITI18, "registry"),
    "ITI-42": Transaction(v.Action.ITI42, "registry"),
    "ITI-51": Transaction(v.Action.ITI51, "registry"),  # internal consumers: the registry endpoint only
    "ITI-41": Transaction(v.Action.ITI41, "repository", mtom=True),
    "ITI-43": Transaction(v.Action.ITI43, "repository", mtom=True),
    "ITI-38": Transaction(v.Action.ITI38, "xca_query", secured=True),
    "ITI-39": Transaction(v.Action.ITI39, "xca_retrieve", mtom=True, secured=True),
    "ITI-55": Transaction(v.Action.ITI55, "xcpd", secured=True),
    # ITI-41 pushed point to point to a partner's XDR Document Recipient (signed like XCA)
    "XDR": Transaction(v.Action.ITI41, "xdr", mtom=True, secured=True),
}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")


class UnknownVariable(KeyError):
    """A ``${name}`` with no value: the case needs a run option (``--var name=...``) or an earlier step."""

    def __str__(self) -> str:
        return f"no value for ${{{self.args[0]}}} (give it with --var {self.args[0]}=... or from an earlier step)"


def new_oid() -> str:
    """A fresh OID under the UUID arc (2.25), so no OID registration is needed."""
    return f"2.25.{uuid.uuid4().int}"


def xml_escape(value: str) -> str:
    """Escape for XML text and double-quoted attributes (patient ids carry ``&``)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def substitute(text: str, values: Mapping[str, str], *, escape: bool = False) -> str:
    """Replace every ``${name}``; ``escape`` XML-escapes the inserted values (for XML templates)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "new_uuid":
            value = f"urn:uuid:{uuid.uuid4()}"
        elif name == "new_oid":
            value = new_oid()
        elif name == "new_id":
            value = uuid.uuid4().hex[:12].upper()
        elif name in values:
            value = str(values[name])
        else:
            raise UnknownVariable(name)
        return xml_escape(value) if escape else value

    return _VAR.sub(one, text)


def substitute_any(value: Any, values: Mapping[str, str]) -> Any:
    """:func:`substitute` through strings nested in lists and tables (zeep arguments, expectations)."""
    if isinstance(value, str):
        return substitute(value, values)
    if isinstance(value, list):
        return [substitute_any(x, values) for x in value]
    if isinstance(value, dict):
        return {k: substitute_any(x, values) for k, x in value.items()}
    return value


@dataclass
class Expect:
    """What a response must be. Every field is optional; unset means "not checked"."""

    #: Allowed statuses, short form (Success, Failure, PartialSuccess); any of them passes.
    status: list[str] = field(default_factory=list)
    #: Error codes that must each appear in the RegistryErrorList.
    error_codes: list[str] = field(default_factory=list)
    #: True: a SOAP fault is required; a string: a fault whose code or a subcode contains it.
    fault: bool | str | None = None
    #: The request must be refused: a SOAP fault, or a Failure that returns nothing.
    refused: bool = False
    #: No patient data may come back: a SOAP fault, or any status with no object, document or subject
    #: (consent withheld answers look like an unknown patient, so both forms are accepted).
    withheld: bool = False
    #: Exact counts: ExtrinsicObject, ObjectRef, RegistryPackage, Association, DocumentResponse, subject.
    counts: dict[str, int] = field(default_factory=dict)
    min_counts: dict[str, int] = field(default_factory=dict)
    #: The response payload must validate against our published schemas (wsdl/schema).
    schema_valid: bool = False
    #: Every returned object (and DocumentResponse) must carry this homeCommunityId.
    home: str | None = None
    #: Every returned object (and DocumentResponse) must carry some homeCommunityId (XCA answers).
    home_present: bool = False
    #: The response must be MTOM, and every Document must resolve to its MIME part.
    mtom: bool = False
    #: Retrieved content (each Document, or the one named by content_document) must match.
    content_sha1: str | None = None
    content_size: str | None = None
    #: XCPD queryResponseCode (OK, NF, AE, QE).
    xcpd_code: str | None = None
    #: HTTP status of the answer.
    http_status: int | None = None

    @classmethod
    def from_toml(cls, raw: Mapping[str, Any]) -> Expect:
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown expectation(s): {sorted(unknown)}")
        data = dict(raw)
        status = data.get("status", [])
        data["status"] = [status] if isinstance(status, str) else list(status)
        return cls(**data)


@dataclass
class Step:
    """One SOAP exchange of a case."""

    id: str
    transaction: str
    role: str
    #: XML template file (relative to the suite file) or inline ``request`` text; ``${}`` substituted.
    template: str | None = None
    request: str | None = None
    #: Build the body with zeep from the endpoint's published WSDL: {operation, args}.
    zeep: dict[str, Any] | None = None
    #: "saml" (a valid header), "none", "client" (as an internal client of the target), or a security
    #: negative (see conformance.security.NEGATIVES).
    security: str | None = None
    #: Send the very same wsse:Security header as this earlier step (replay).
    reuse_security: str | None = None
    #: Documents for ITI-41: [{id, content, name, mime_type}]; their SHA-1 and size become the
    #: variables ``<name>_sha1`` / ``<name>_size`` before the template is filled in.
    documents: list[dict[str, str]] = field(default_factory=list)
    set: dict[str, str] = field(default_factory=dict)
    #: Values to carry on: {name: XPath over the response payload} (prefixes rim, rs, query, xdsb, hl7).
    save: dict[str, str] = field(default_factory=dict)
    expect: Expect = field(default_factory=Expect)
    timeout: float | None = None

    @property
    def action(self) -> str:
        return TRANSACTIONS[self.transaction].action

    @property
    def mtom(self) -> bool:
        return TRANSACTIONS[self.transaction].mtom

    def security_kind(self) -> str:
        if self.security:
            return self.security
        secured = TRANSACTIONS[self.transaction].secured or self.role.startswith(("xca", "xcpd"))
        return "saml" if secured else "none"


@dataclass
class Case:
    id: str
    title: str
    steps: list[Step]
    required: bool = True
    description: str = ""
    #: Skip (not fail) when the target does not offer the endpoint (HTTP 404 / ActionNotSupported).
    skip_if_unsupported: bool = False
    #: Run options this case needs (``--var``); missing ones skip the case with a clear reason.
    needs: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        """Does the case store something in the target (ITI-41 / ITI-42)? Skipped unless allowed."""
        return any(step.transaction in WRITING_TRANSACTIONS for step in self.steps)


@dataclass
class Suite:
    name: str
    title: str
    cases: list[Case]
    path: Path | None = None
    description: str = ""
    #: Default variables (a run's --var overrides them).
    vars: dict[str, str] = field(default_factory=dict)

    def template_text(self, name: str) -> str:
        base = self.path.parent if self.path else SUITES_DIR
        return (base / name).read_text(encoding="utf-8")


def _step(raw: Mapping[str, Any], index: int, suite: str) -> Step:
    raw = dict(raw)
    transaction = raw.pop("transaction")
    if transaction not in TRANSACTIONS:
        raise ValueError(f"{suite}: unknown transaction {transaction!r} (one of {sorted(TRANSACTIONS)})")
    role = raw.pop("role", TRANSACTIONS[transaction].role)
    if role not in ROLES:
        raise ValueError(f"{suite}: unknown role {role!r} (one of {sorted(ROLES)})")
    expect = Expect.from_toml(raw.pop("expect", {}))
    step = Step(id=raw.pop("id", f"step{index + 1}"), transaction=transaction, role=role, expect=expect, **raw)
    if sum(x is not None for x in (step.template, step.request, step.zeep)) != 1:
        raise ValueError(f"{suite}: step {step.id} needs exactly one of template, request, zeep")
    return step


def load_suite(path_or_name: str | Path) -> Suite:
    """A suite by name (``registry``) or by path to a TOML file."""
    path = Path(path_or_name)
    if not path.suffix:
        path = SUITES_DIR / f"{path_or_name}.toml"
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    head = data.get("suite", {})
    name = head.get("name", path.stem)
    cases = []
    seen: set[str] = set()
    for raw in data.get("case", []):
        raw = dict(raw)
        steps = [_step(s, i, name) for i, s in enumerate(raw.pop("step", []))]
        if not steps:
            raise ValueError(f"{name}: case {raw.get('id')} has no steps")
        case = Case(steps=steps, **raw)
        if case.id in seen:
            raise ValueError(f"{name}: duplicate case id {case.id}")
        seen.add(case.id)
        cases.append(case)
    return Suite(name=name, title=head.get("title", name), description=head.get("description", ""),
                 cases=cases, path=path, vars={k: str(x) for k, x in head.get("vars", {}).items()})


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))
