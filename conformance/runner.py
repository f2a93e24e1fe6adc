"""Run conformance suites against a target and judge every answer.

The harness talks to a *partner's* endpoint, so it treats every answer as untrusted and possibly
broken: a refused connection, a timeout, an HTML error page, a body that is not XML or a missing
MTOM part becomes a failed step with a plain-words reason, and the run goes on. Nothing a target
sends can crash the run (each step is fenced; anything unexpected becomes "harness error: ...").

Requests are written with the node's own envelope writer (:func:`xds_node.soap.envelope.build_request`,
the same code :class:`~xds_node.soap.client.SoapClient` uses) and answers read with its hardened
parser, but over a bare httpx client so the raw bytes of both directions can go into the reports.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from lxml import etree

from xds_node.ebxml import vocabulary as v
from xds_node.soap.envelope import SOAP_ENV, WSA, Attachment, SoapRequest, build_request, parse_envelope, parse_xml
from xds_node.soap.fault import SoapFault

from .cases import ROLES, Case, Expect, Step, Suite, UnknownVariable, substitute, substitute_any
from .security import Signer, build_header

__all__ = ["CaseResult", "Exchange", "Observed", "RunResult", "Runner", "Skip", "StepResult", "Target", "judge",
           "observe", "post_raw", "send"]

NS = {"rim": v.RIM, "rs": v.RS, "query": v.QUERY, "lcm": v.LCM, "xdsb": v.XDSB, "hl7": "urn:hl7-org:v3",
      "soap": SOAP_ENV, "wsa": WSA}
XOP_INCLUDE = "{http://www.w3.org/2004/08/xop/include}Include"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "wsdl" / "schema"
MAX_REPORT_BYTES = 256 * 1024
MAX_RESPONSE_BYTES = 64 << 20


class Skip(Exception):
    """The case cannot run here (missing option, endpoint not offered); not a failure."""


# ------------------------------------------------------------------------------------------------
# Target and transport
# ------------------------------------------------------------------------------------------------
@dataclass
class Target:
    """Where to send: a base URL plus a path per endpoint role (a full URL in ``paths`` wins)."""

    base_url: str
    paths: dict[str, str] = field(default_factory=lambda: dict(ROLES))
    verify: bool | str = True
    client_cert: tuple[str, str] | None = None  # mutual TLS
    timeout: float = 30.0

    def url(self, role: str) -> str:
        path = self.paths.get(role, ROLES[role])
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def ssl_verify(self) -> bool | ssl.SSLContext:
        if self.client_cert is None and not isinstance(self.verify, str):
            return self.verify
        ctx = ssl.create_default_context(cafile=self.verify if isinstance(self.verify, str) else None)
        if self.verify is False:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            ctx.load_cert_chain(*self.client_cert)
        return ctx


@dataclass
class Exchange:
    """One HTTP round trip, raw, for the reports."""

    url: str
    action: str
    request: bytes = b""
    request_content_type: str = ""
    status: int | None = None
    response_content_type: str = ""
    response: bytes = b""
    error: str | None = None  # transport-level problem in plain words
    seconds: float = 0.0


async def send(http: httpx.AsyncClient, url: str, action: str, body: etree._Element | bytes, *,
               headers: Iterable[etree._Element] = (), attachments: Iterable[Attachment] = (), mtom: bool = False,
               timeout: float | None = None) -> Exchange:
    payload, content_type, _ = build_request(action, body, to=url, headers=list(headers),
                                             attachments=list(attachments), mtom=mtom)
    data = payload if isinstance(payload, bytes) else b"".join(payload)
    return await post_raw(http, url, action, data, content_type, timeout=timeout)


async def post_raw(http: httpx.AsyncClient, url: str, action: str, data: bytes, content_type: str, *,
                   timeout: float | None = None) -> Exchange:
    ex = Exchange(url=url, action=action, request=data, request_content_type=content_type)
    start = time.monotonic()
    kwargs = {"timeout": timeout} if timeout else {}
    try:
        async with http.stream("POST", url, content=data, headers={"content-type": content_type}, **kwargs) as resp:
            ex.status = resp.status_code
            ex.response_content_type = resp.headers.get("content-type", "")
            chunks, total = [], 0
            async for chunk in resp.aiter_bytes():
                total += len(chunk)
                if total > MAX_RESPONSE_BYTES:
                    ex.error = f"the response is larger than {MAX_RESPONSE_BYTES} bytes; stopped reading"
                    break
                chunks.append(chunk)
            ex.response = b"".join(chunks)
    except httpx.TimeoutException:
        ex.error = f"no answer within {timeout or http.timeout.read} s (timeout)"
    except httpx.HTTPError as exc:
        ex.error = f"could not talk to {url}: {type(exc).__name__}: {exc}"
    ex.seconds = time.monotonic() - start
    return ex


# ------------------------------------------------------------------------------------------------
# What came back
# ------------------------------------------------------------------------------------------------
@dataclass
class Observed:
    """The parts of an answer the expectations look at."""

    message: SoapRequest | None = None
    payload: etree._Element | None = None
    problem: str | None = None  # why there is no usable SOAP message
    fault: SoapFault | None = None
    status: str | None = None  # short form: Success / Failure / PartialSuccess
    errors: list[tuple[str, str]] = field(default_factory=list)  # (code, context)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def error_codes(self) -> list[str]:
        return [c for c, _ in self.errors]

    def fault_words(self) -> str:
        f = self.fault
        if f is None:
            return ""
        subs = ", ".join(s.rsplit("}", 1)[-1] for s in f.subcodes)
        return f"a SOAP fault ({f.code}{' / ' + subs if subs else ''}): {f.reason}"

    def summary(self) -> str:
        if self.problem:
            return self.problem
        if self.fault is not None:
            return self.fault_words()
        parts = [f"status {self.status or '(none)'}"]
        if self.errors:
            parts.append("errors " + ", ".join(f"{c}" + (f" ({t[:120]})" if t else "") for c, t in self.errors[:5]))
        shown = {k: n for k, n in self.counts.items() if n}
        if shown:
            parts.append(", ".join(f"{n} {k}" for k, n in shown.items()))
        return "; ".join(parts)


def _short_status(value: str | None) -> str | None:
    return value.rsplit(":", 1)[-1] if value else None


def observe(ex: Exchange) -> Observed:
    """Parse an exchange's answer without ever raising."""
    obs = Observed()
    if ex.error and not ex.response:
        obs.problem = ex.error
        return obs
    if not ex.response:
        obs.problem = f"HTTP {ex.status} with an empty body"
        return obs
    try:
        msg = parse_envelope(ex.response, ex.response_content_type, require_action=False)
    except SoapFault as exc:
        head = ex.response[:80].decode("utf-8", "replace").replace("\n", " ")
        obs.problem = (f"HTTP {ex.status}, Content-Type {ex.response_content_type or '(none)'}: not a usable SOAP 1.2 "
                       f"message ({exc.reason}); body starts {head!r}")
        return obs
    except Exception as exc:  # a broken MIME package and the like
        obs.problem = f"HTTP {ex.status}: the answer could not be read ({type(exc).__name__}: {exc})"
        return obs
    obs.message, obs.payload = msg, msg.body
    if msg.body.tag == f"{{{SOAP_ENV}}}Fault":
        obs.fault = SoapFault.from_element(msg.body, http_status=ex.status)
        return obs
    payload = msg.body
    status_el = payload if payload.get("status") is not None else payload.find(f"{{{v.RS}}}RegistryResponse")
    obs.status = _short_status(status_el.get("status")) if status_el is not None else None
    obs.errors = [(e.get("errorCode", ""), e.get("codeContext", "")) for e in payload.iter(f"{{{v.RS}}}RegistryError")]
    counts: dict[str, int] = {}
    lst = payload.find(f"{{{v.RIM}}}RegistryObjectList")
    if lst is not None:
        for child in lst.iterchildren(etree.Element):
            local = etree.QName(child).localname
            counts[local] = counts.get(local, 0) + 1
            if local == "RegistryPackage":
                nodes = {c.get("classificationNode") for c in child.iter(f"{{{v.RIM}}}Classification")}
                kind = "SubmissionSets" if v.SUBMISSION_SET_NODE in nodes else "Folders"
                counts[kind] = counts.get(kind, 0) + 1
        # the ebRIM object list can also carry SubmissionSet/Folder classifications at top level
    counts["DocumentResponse"] = len(payload.findall(f"{{{v.XDSB}}}DocumentResponse"))
    counts["subject"] = len(payload.findall("hl7:controlActProcess/hl7:subject", NS))
    ack = payload.find("hl7:controlActProcess/hl7:queryAck/hl7:queryResponseCode", NS)
    if ack is not None:
        obs.status = obs.status or ack.get("code")
    obs.counts = counts
    return obs


_SCHEMA: etree.XMLSchema | None = None


def published_schema() -> etree.XMLSchema:
    """Our published message schemas (wsdl/schema), loaded once."""
    global _SCHEMA
    if _SCHEMA is None:
        imports = "".join(
            f'<xs:import namespace="{ns}" schemaLocation="{(SCHEMA_DIR / f).as_uri()}"/>'
            for ns, f in [(v.QUERY, "query.xsd"), (v.LCM, "lcm.xsd"), (v.XDSB, "xdsb.xsd"),
                          ("urn:hl7-org:v3", "hl7v3.xsd")])
        xs = "http://www.w3.org/2001/XMLSchema"
        wrapper = f'<xs:schema xmlns:xs="{xs}" targetNamespace="urn:t">{imports}</xs:schema>'
        _SCHEMA = etree.XMLSchema(etree.fromstring(wrapper.encode()))
    return _SCHEMA


def _norm_home(h: str | None) -> str:
    return (h or "").strip().removeprefix("urn:oid:")


def judge(expect: Expect, ex: Exchange, obs: Observed) -> list[str]:
    """Every expectation the answer misses, each as a sentence a partner's engineer can act on."""
    out: list[str] = []
    if expect.http_status is not None and ex.status != expect.http_status:
        out.append(f"expected HTTP {expect.http_status}, got {ex.status if ex.status is not None else 'no answer'}")
    if obs.problem:
        return [*out, obs.problem]
    returned = sum(obs.counts.get(k, 0) for k in ("ExtrinsicObject", "ObjectRef", "RegistryPackage",
                                                  "Association", "DocumentResponse", "subject"))
    if expect.refused:
        if obs.fault is None and not (obs.status in ("Failure", "AE", "NF") and returned == 0):
            out.append(f"expected the request to be refused (a SOAP fault, or a Failure returning nothing), "
                       f"but the target answered {obs.summary()}")
        return out
    if expect.withheld:
        if obs.fault is None and returned:
            out.append(f"expected nothing about this patient to be disclosed, but the target returned "
                       f"{returned} object(s): {obs.summary()}")
        return out
    if expect.fault:
        if obs.fault is None:
            out.append(f"expected a SOAP fault, got {obs.summary()}")
        elif isinstance(expect.fault, str):
            names = [obs.fault.code, *(s.rsplit("}", 1)[-1] for s in obs.fault.subcodes), *obs.fault.subcodes]
            if not any(expect.fault in n or n.endswith(expect.fault.split(":")[-1]) for n in names):
                out.append(f"expected a fault with {expect.fault}, got {obs.fault_words()}")
        return out
    if obs.fault is not None:
        return [*out, f"the target answered with {obs.fault_words()}"]
    if expect.status and obs.status not in expect.status:
        out.append(f"expected status {' or '.join(expect.status)}, got {obs.summary()}")
    for code in expect.error_codes:
        if code not in obs.error_codes:
            out.append(f"expected error code {code}, got {obs.error_codes or 'no errors'}")
    for kind, n in expect.counts.items():
        got = obs.counts.get(kind, 0)
        if got != int(n):
            out.append(f"expected {n} {kind}, got {got}")
    for kind, n in expect.min_counts.items():
        got = obs.counts.get(kind, 0)
        if got < int(n):
            out.append(f"expected at least {n} {kind}, got {got}")
    if expect.xcpd_code is not None:
        ack = obs.payload.find("hl7:controlActProcess/hl7:queryAck/hl7:queryResponseCode", NS)
        code = ack.get("code") if ack is not None else None
        if code != expect.xcpd_code:
            out.append(f"expected XCPD queryResponseCode {expect.xcpd_code}, got {code or 'none'}")
    if expect.schema_valid and obs.payload is not None:
        schema = published_schema()
        doc = _xop_reconstituted(obs)
        if not schema.validate(doc):
            first = schema.error_log[0] if schema.error_log else None
            out.append(f"the response does not validate against the published schema: "
                       f"{first.message if first else 'unknown error'}")
    if expect.home is not None and obs.payload is not None:
        out.extend(_check_home(expect.home, obs.payload))
    if expect.home_present and obs.payload is not None:
        out.extend(_check_home(None, obs.payload))
    if expect.mtom or expect.content_sha1 or expect.content_size:
        out.extend(_check_documents(expect, obs))
    return out


def _xop_reconstituted(obs: Observed) -> etree._Element:
    """A copy of the payload with each xop:Include replaced by its part as base64 (the XOP infoset)."""
    doc = etree.fromstring(etree.tostring(obs.payload))
    for include in list(doc.iter(XOP_INCLUDE)):
        parent = include.getparent()
        try:
            data = obs.message.binary(parent) if obs.message is not None else b""
        except SoapFault:
            data = b""
        parent.remove(include)
        parent.text = base64.b64encode(data).decode("ascii")
    return doc


def _check_home(home: str | None, payload: etree._Element) -> list[str]:
    """Objects whose home is not ``home`` (None: objects with no home at all)."""

    def wrong(got: str | None) -> bool:
        return not got if home is None else _norm_home(got) != _norm_home(home)

    out = []
    lst = payload.find(f"{{{v.RIM}}}RegistryObjectList")
    for obj in lst.iterchildren(etree.Element) if lst is not None else []:
        got = obj.get("home")
        if wrong(got):
            kind = etree.QName(obj).localname
            out.append(f"{kind} {obj.get('id')} carries home={got!r}; expected {home or 'a homeCommunityId'}")
    for dr in payload.findall(f"{{{v.XDSB}}}DocumentResponse"):
        got = dr.findtext(f"{{{v.XDSB}}}HomeCommunityId")
        if wrong(got):
            out.append(f"DocumentResponse {dr.findtext(f'{{{v.XDSB}}}DocumentUniqueId')} carries HomeCommunityId "
                       f"{got!r}; expected {home or 'a homeCommunityId'}")
    return out[:10]


def _check_documents(expect: Expect, obs: Observed) -> list[str]:
    out = []
    msg = obs.message
    if expect.mtom and not msg.mtom:
        out.append("the retrieve response is not MTOM (multipart/related with XOP)")
    docs = obs.payload.findall(f"{{{v.XDSB}}}DocumentResponse")
    if (expect.content_sha1 or expect.content_size) and not docs:
        out.append("no DocumentResponse to compare the content with")
    for dr in docs:
        uid = dr.findtext(f"{{{v.XDSB}}}DocumentUniqueId")
        el = dr.find(f"{{{v.XDSB}}}Document")
        if el is None:
            out.append(f"DocumentResponse {uid} has no Document element")
            continue
        include = el.find(XOP_INCLUDE)
        if expect.mtom and include is None:
            out.append(f"Document {uid} is inline base64, not an xop:Include to a MIME part")
        try:
            data = msg.binary(el)
        except SoapFault as exc:
            href = include.get("href") if include is not None else ""
            out.append(f"Document {uid}: {exc.reason} ({href})")
            continue
        if expect.content_sha1 and hashlib.sha1(data).hexdigest() != expect.content_sha1.lower():
            out.append(f"Document {uid}: SHA-1 {hashlib.sha1(data).hexdigest()} differs from the metadata hash "
                       f"{expect.content_sha1}")
        if expect.content_size and str(len(data)) != str(expect.content_size):
            out.append(f"Document {uid}: {len(data)} bytes, the metadata size says {expect.content_size}")
    return out


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    id: str
    transaction: str
    role: str
    exchange: Exchange | None = None
    failures: list[str] = field(default_factory=list)
    observed: str = ""
    skipped: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures and not self.skipped


@dataclass
class CaseResult:
    id: str
    title: str
    required: bool
    outcome: str = "passed"  # passed / failed / skipped / xfail
    reason: str = ""
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0
    suite: str = ""


@dataclass
class RunResult:
    suite: str
    title: str
    target: str
    cases: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(c.outcome == outcome for c in self.cases)

    @property
    def ok(self) -> bool:
        """True when every required case passed (skipped and known failures do not count)."""
        return not any(c.outcome == "failed" and c.required for c in self.cases)


Progress = Callable[[str, Any], None]  # ("start", Case) / ("done", CaseResult)


def _noop(_event: str, _obj: Any) -> None:
    return None


def _is_unsupported(ex: Exchange, obs: Observed) -> bool:
    if ex.status == 404:
        return True
    if obs.fault is not None:
        words = " ".join([obs.fault.reason, *obs.fault.subcodes])
        return any(w in words for w in ("ActionNotSupported", "EndpointUnavailable", "DestinationUnreachable"))
    return False


# ------------------------------------------------------------------------------------------------
# The runner
# ------------------------------------------------------------------------------------------------
class Runner:
    """Runs suites and NIST testkits against one target."""

    def __init__(self, target: Target, *, signer: Signer | None = None, variables: dict[str, str] | None = None,
                 progress: Progress = _noop, transport: httpx.AsyncBaseTransport | None = None,
                 client_signer: Signer | None = None, allow_writes: bool = True):
        self.target = target
        #: Cases that store documents in the target run only when allowed (the CLI asks first).
        self.allow_writes = allow_writes
        self.signer = signer
        #: Signs as one of the target's internal clients (security = "client"; /xds/*, /ig/*).
        self.client_signer = client_signer
        self.variables = dict(variables or {})
        self.progress = progress
        self._transport = transport
        self._wsdl_clients: dict[str, Any] = {}

    def http_client(self) -> httpx.AsyncClient:
        """An HTTP client for this target (TLS settings, timeout, the test transport if any)."""
        return httpx.AsyncClient(timeout=self.target.timeout, verify=self.target.ssl_verify(),
                                 transport=self._transport)

    # --- suites --------------------------------------------------------------------------------
    def run(self, suite: Suite, *, only: Iterable[str] = ()) -> RunResult:
        return asyncio.run(self.run_async(suite, only=only))

    async def run_async(self, suite: Suite, *, only: Iterable[str] = ()) -> RunResult:
        wanted = set(only)
        result = RunResult(suite=suite.name, title=suite.title, target=self.target.base_url)
        start = time.monotonic()
        async with self.http_client() as http:
            for case in suite.cases:
                if wanted and case.id not in wanted:
                    continue
                self.progress("start", case)
                cr = await self._run_case(http, suite, case)
                cr.suite = suite.name
                result.cases.append(cr)
                self.progress("done", cr)
        result.seconds = time.monotonic() - start
        return result

    async def _run_case(self, http: httpx.AsyncClient, suite: Suite, case: Case) -> CaseResult:
        cr = CaseResult(case.id, case.title, case.required)
        start = time.monotonic()
        values = dict(self.variables)
        try:
            for name, template in suite.vars.items():
                if name not in self.variables:
                    values[name] = substitute(template, values)
        except UnknownVariable as exc:
            cr.outcome, cr.reason = "skipped", str(exc)
            return cr
        headers: dict[str, etree._Element | None] = {}
        if case.writes and not self.allow_writes:
            cr.outcome, cr.reason = "skipped", "writes into the target (ITI-41/ITI-42): run with --allow-writes"
            return cr
        missing = [n for n in case.needs if not values.get(n)]
        if missing:
            cr.outcome, cr.reason = "skipped", "needs " + ", ".join(f"--var {n}=..." for n in missing)
            return cr
        for step in case.steps:
            if cr.outcome == "failed":
                cr.steps.append(StepResult(step.id, step.transaction, step.role,
                                           skipped="not run: an earlier step failed"))
                continue
            try:
                sr = await self._run_step(http, suite, case, step, values, headers)
            except Skip as exc:
                cr.outcome, cr.reason = "skipped", str(exc)
                cr.steps.append(StepResult(step.id, step.transaction, step.role, skipped=str(exc)))
                break
            except Exception as exc:  # the harness must survive anything
                sr = StepResult(step.id, step.transaction, step.role,
                                failures=[f"harness error: {type(exc).__name__}: {exc}"])
            cr.steps.append(sr)
            if sr.failures:
                cr.outcome = "failed"
                cr.reason = f"{step.id}: {sr.failures[0]}"
        cr.seconds = time.monotonic() - start
        return cr

    async def _run_step(self, http: httpx.AsyncClient, suite: Suite, case: Case, step: Step,
                        values: dict[str, str], headers: dict[str, etree._Element | None]) -> StepResult:
        sr = StepResult(step.id, step.transaction, step.role)
        url = self.target.url(step.role)
        try:
            for name, template in step.set.items():
                values[name] = substitute(template, values)
            attachments, documents = [], []
            for i, doc in enumerate(step.documents):
                data = substitute(doc["content"], values).encode()
                name = doc.get("name", f"doc{i + 1}")
                values[f"{name}_sha1"] = hashlib.sha1(data).hexdigest()
                values[f"{name}_size"] = str(len(data))
                cid = f"{name}-{i}@conformance.xds-node"
                attachments.append(Attachment(cid, doc.get("mime_type", "text/xml"), data=data))
                documents.append((substitute(doc["id"], values), cid))
            expect = Expect(**substitute_any(vars(step.expect), values))
        except UnknownVariable as exc:
            raise Skip(str(exc)) from None

        zeep_parsed = None
        if step.zeep is not None:
            body, zeep_parsed = await self._zeep_body(http, step, url, values)
            if zeep_parsed is not None:  # zeep sent and parsed it itself
                return self._zeep_result(sr, expect, url, step, zeep_parsed)
        else:
            text = suite.template_text(step.template) if step.template else step.request or ""
            try:
                body = parse_xml(substitute(text, values, escape=True).encode())
            except UnknownVariable as exc:
                raise Skip(str(exc)) from None
        if documents:
            body = _wrap_provide(body, documents)

        kind = step.security_kind()
        header = None
        if step.reuse_security:
            if step.reuse_security not in headers:
                raise ValueError(f"reuse_security names {step.reuse_security!r}, which sent no header")
            header = headers[step.reuse_security]
        elif kind == "client":
            # an internal client: its own signed assertion, or its TLS certificate alone (mutual TLS)
            if self.client_signer is not None:
                header = build_header("saml", self.client_signer)
            elif self.target.client_cert is None:
                raise Skip("needs an internal client's credentials: run with --client-key KEY --client-cert CERT "
                           "(pinned on the target with `xds-node clients add`) or --mtls-cert")
        elif kind != "none":
            if self.signer is None:
                raise Skip("needs a signing key: run with --sign-with KEY --cert CERT")
            header = build_header(kind, self.signer)
        headers[step.id] = header

        ex = await send(http, url, step.action, body, headers=[header] if header is not None else [],
                        attachments=attachments, mtom=step.mtom, timeout=step.timeout)
        sr.exchange = ex
        obs = observe(ex)
        sr.observed = obs.summary()
        if case.skip_if_unsupported and _is_unsupported(ex, obs):
            raise Skip(f"the target does not offer {step.role} at {url} "
                       f"({'HTTP 404' if ex.status == 404 else obs.fault_words()})")
        sr.failures = judge(expect, ex, obs)
        if not sr.failures:
            for name, xpath in step.save.items():
                value = _xpath(obs.payload, xpath)
                if value is None:
                    sr.failures.append(f"could not read {name} from the response ({xpath} matched nothing)")
                else:
                    values[name] = value
        return sr

    async def _zeep_body(self, http: httpx.AsyncClient, step: Step, url: str,
                         values: dict[str, str]) -> tuple[etree._Element, Any]:
        from .zeep_client import WsdlClient, check_wsdl

        spec = substitute_any(dict(step.zeep or {}), values)
        client = self._wsdl_clients.get(url)
        if client is None:
            resp = await http.get(url + "?wsdl")
            wsdl = check_wsdl(url, resp.status_code, resp.content)
            client = self._wsdl_clients[url] = WsdlClient(wsdl, url, verify=self.target.verify,
                                                          cert=self.target.client_cert, timeout=self.target.timeout)
        if spec.get("send") == "zeep":
            try:
                parsed = await asyncio.to_thread(client.call, spec["operation"], spec.get("args", {}))
            except Exception as exc:  # zeep's Fault / TransportError / parse errors
                parsed = (exc, b"", b"")
            return etree.Element("unused"), parsed
        return client.build_body(spec["operation"], spec.get("args", {})), None

    def _zeep_result(self, sr: StepResult, expect: Expect, url: str, step: Step, parsed: Any) -> StepResult:
        result, sent, received = parsed
        ex = Exchange(url=url, action=step.action, request=sent, response=received, status=200,
                      response_content_type="application/soap+xml")
        sr.exchange = ex
        if isinstance(result, Exception):
            ex.status = None
            ex.error = f"zeep could not complete the call: {type(result).__name__}: {result}"
            sr.failures = [ex.error]
            return sr
        obs = observe(ex)
        sr.observed = obs.summary()
        zeep_status = getattr(result, "status", None)
        sr.notes.append(f"zeep parsed the answer: status={zeep_status}")
        sr.failures = judge(expect, ex, obs)
        if zeep_status is None:
            sr.failures.append("zeep parsed the answer but found no status attribute in it")
        return sr


def _wrap_provide(body: etree._Element, documents: list[tuple[str, str]]) -> etree._Element:
    """ITI-41: wrap a SubmitObjectsRequest and add one xdsb:Document (xop:Include) per attachment."""
    if etree.QName(body).localname == "SubmitObjectsRequest":
        root = etree.Element(f"{{{v.XDSB}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": v.XDSB})
        root.append(body)
        body = root
    for entry_id, cid in documents:
        doc = etree.SubElement(body, f"{{{v.XDSB}}}Document", id=entry_id)
        etree.SubElement(doc, XOP_INCLUDE, nsmap={"xop": XOP_INCLUDE[1:].split("}")[0]}).set("href", f"cid:{cid}")
    return body


def _xpath(payload: etree._Element | None, xpath: str) -> str | None:
    if payload is None:
        return None
    try:
        found = payload.xpath(xpath, namespaces=NS)
    except etree.XPathError:
        return None
    if isinstance(found, list):
        if not found:
            return None
        first = found[0]
        return (first.text or "").strip() if isinstance(first, etree._Element) else str(first).strip()
    return str(found).strip() or None
