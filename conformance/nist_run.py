"""``--nist-testkit DIR``: run NIST XDS Toolkit test folders as they are, over HTTP, and judge them.

:mod:`conformance.nist` reads testplans and prepares bodies (placeholders, UseId/UseReport,
ebRS 2.1 conversion); this module sends them to the target's endpoints and judges the answers
against each step's ExpectedStatus / ExpectedErrorCode / ExpectedContents, generalizing what
``tests/registry/test_nist.py`` does in-process. Each NIST test section is one case.

What it cannot do, it says instead of failing: a PatientIdentityFeed step (HL7v2, out of band) is
reported as a note, a step whose UseId/UseReport points at a test the checkout lacks is skipped
with the missing reference, and a transaction the harness does not speak (STS, ODDE) is skipped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from lxml import etree

from xds_node.ebxml import vocabulary as v
from xds_node.soap.fault import SoapFault
from xds_node.soap.mtom import Attachment

from . import nist
from .runner import (
    XOP_INCLUDE,
    CaseResult,
    Exchange,
    Observed,
    RunResult,
    StepResult,
    observe,
    post_raw,
    send,
)
from .security import build_header

if TYPE_CHECKING:
    from .runner import Runner

X = f"{{{v.XDSB}}}"

#: NIST transaction -> (our transaction name, endpoint role, action, MTOM, secured)
DISPATCH = {
    "StoredQuery": ("ITI-18", "registry", v.Action.ITI18, False, False),
    "Register": ("ITI-42", "registry", v.Action.ITI42, False, False),
    "ProvideAndRegister": ("ITI-41", "repository", v.Action.ITI41, True, False),
    "Retrieve": ("ITI-43", "repository", v.Action.ITI43, True, False),
    "XCQ": ("ITI-38", "xca_query", v.Action.ITI38, False, True),
    "XCR": ("ITI-39", "xca_retrieve", v.Action.ITI39, True, True),
    "Xcpd": ("ITI-55", "xcpd", v.Action.ITI55, False, True),
}
HTTP_ROLES = {"pr.b": "repository", "r.b": "registry", "sq.b": "registry", "ret.b": "repository"}

#: Steps whose expectation no correct registry can meet (see conformance/seeds/registry/README.md).
NOT_REPRODUCIBLE = {
    ("11897/no_matching_classcode", "no_matching_classcode"):
        "expects Failure for a valid query that matches nothing; its own readme says it must return nothing",
}

#: NIST's named content patterns, as object counts.
PATTERNS = {
    "SSwithOneDoc": {"SubmissionSets": 1, "ExtrinsicObject": 1},
    "SSwithTwoDoc": {"SubmissionSets": 1, "ExtrinsicObject": 2},
    "SSwithOneDocOneFol": {"SubmissionSets": 1, "ExtrinsicObject": 1, "Folders": 1},
    "SSwithTwoDocOneFol": {"SubmissionSets": 1, "ExtrinsicObject": 2, "Folders": 1},
}
KIND_NAMES = {"ObjectRefs": "ObjectRef", "Documents": "ExtrinsicObject", "Associations": "Association",
              "SubmissionSets": "SubmissionSets", "Folders": "Folders"}


def judge_nist(step: nist.NistStep, body: etree._Element | None, obs: Observed) -> list[str]:
    """The testplan's expectations (ExpectedStatus/ErrorCode/Contents, retrieved documents) in plain words."""
    if obs.problem:
        return [obs.problem]
    if obs.fault is not None:
        return [f"the target answered with {obs.fault_words()}"]
    exp = step.expectation
    out: list[str] = []
    if step.transaction == "Xcpd":
        return out  # NIST judges XCPD by assertions over HL7 we do not evaluate; an HL7 answer suffices
    if exp.status and obs.status != exp.status:
        out.append(f"expected status {exp.status}, got {obs.summary()}")
    for code in exp.error_codes:
        if code not in obs.error_codes:
            out.append(f"expected error code {code}, got {obs.error_codes or 'no errors'}")
    counts = obs.counts
    for key, value in exp.contents.items():
        if key == "None":
            total = sum(counts.get(k, 0) for k in ("ExtrinsicObject", "ObjectRef", "RegistryPackage", "Association"))
            if total:
                out.append(f"expected no objects, got {total}")
        elif key in KIND_NAMES and value is not True:
            got = counts.get(KIND_NAMES[key], 0)
            if got != value:
                out.append(f"expected {value} {key}, got {got}")
        elif key in PATTERNS:
            for kind, n in PATTERNS[key].items():
                if counts.get(kind, 0) != n:
                    out.append(f"{key}: expected {n} {kind}, got {counts.get(kind, 0)}")
        elif key == "DocApp":
            docs = obs.payload.findall(f"{{{v.RIM}}}RegistryObjectList/{{{v.RIM}}}ExtrinsicObject")
            if not docs or any(d.get("status") != v.Status.APPROVED for d in docs):
                out.append("DocApp: expected Approved DocumentEntries")
    if step.transaction in ("Retrieve", "XCR") and exp.status == "Success" and body is not None:
        out.extend(_check_retrieve(step, body, obs))
    return out


def _check_retrieve(step: nist.NistStep, body: etree._Element, obs: Observed) -> list[str]:
    out = []
    asked = len(body.findall(X + "DocumentRequest"))
    got = obs.payload.findall(X + "DocumentResponse")
    if len(got) != asked:
        out.append(f"asked for {asked} document(s), got {len(got)}")
    references = {}
    for ref in step.instruction.iter("ReferenceDocument") if step.instruction is not None else []:
        path = (step.test_dir / (ref.text or "").strip()).resolve()
        if path.is_file():
            references[ref.get("uid", "")] = path.read_bytes()
    for dr in got:
        uid = dr.findtext(X + "DocumentUniqueId")
        el = dr.find(X + "Document")
        if el is None:
            out.append(f"DocumentResponse {uid} has no Document")
            continue
        try:
            data = obs.message.binary(el)
        except SoapFault as exc:
            href = el.find(XOP_INCLUDE).get("href") if el.find(XOP_INCLUDE) is not None else ""
            out.append(f"Document {uid}: {exc.reason} ({href})")
            continue
        if len(references) == 1 and len(got) == 1:
            (expected,) = references.values()
            if data != expected:
                out.append(f"Document {uid}: {len(data)} bytes differ from the testkit's reference document "
                           f"({len(expected)} bytes)")
    return out


def _provide_body(step: nist.NistStep, ctx: nist.Context) -> tuple[etree._Element, list[Attachment]]:
    sor = nist.prepare_request(step, ctx)
    root = etree.Element(X + "ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": v.XDSB})
    root.append(sor)
    attachments = []
    for i, (doc_id, path) in enumerate(nist.document_map(step, ctx).items()):
        el = etree.SubElement(root, X + "Document", id=doc_id)
        cid = f"doc{i}@nist.conformance"
        etree.SubElement(el, XOP_INCLUDE).set("href", f"cid:{cid}")
        attachments.append(Attachment(cid, "application/octet-stream", data=path.read_bytes()))
    return root, attachments


class NistRun:
    def __init__(self, runner: Runner, http: httpx.AsyncClient):
        self.runner = runner
        self.http = http
        self.ctx = nist.seed_context()
        self.literal_uids: set[str] = set()  # uniqueIds sent as is by captured (Http) bodies
        self.reused: dict[tuple[str, str], str] = {}  # steps whose captured body reuses such uniqueIds
        repo = runner.variables.get("repository_id")
        if repo:
            self.ctx.values["$repositoryUniqueId$"] = repo

    async def run(self, root: Path, result: RunResult, *, seed: bool) -> None:
        if seed:
            await self._case(result, "seed", "registry seed standing in for NIST tests 12346/12374",
                             [s.to_step() for s in nist.seed_plan()])
        if (root / "tests").is_dir():
            # a checkout: the tests first, so test data registered later cannot change their counts
            others = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "tests")
            steps = [s for d in (root / "tests", *others) for s in nist.iter_tests(d)]
        else:
            steps = list(nist.iter_tests(root))
        for step in steps:
            # NIST feeds each test-data test its own patient; sharing the seed's patient would add
            # their documents to what the stored-query tests count
            parts = step.test_dir.relative_to(root).parts if step.test_dir.is_relative_to(root) else ()
            if any(p.startswith("testdata") or p == "examples" for p in (root.name, *parts)):
                step.options.setdefault("patient", f"$patientid:{step.test}$")
        groups: dict[str, list[nist.NistStep]] = {}
        for step in steps:
            groups.setdefault(step.test_id, []).append(step)
        for test_id, group in groups.items():
            await self._case(result, test_id, _title(group), group)

    async def _case(self, result: RunResult, case_id: str, title: str, steps: list[nist.NistStep]) -> None:
        self.runner.progress("start", _Named(case_id, title))
        cr = CaseResult(case_id, title, required=True, suite=result.suite)
        start = time.monotonic()
        for step in steps:
            try:
                sr = await self._step(step)
            except Exception as exc:  # never let one step end the run
                sr = StepResult(step.step_id, step.transaction, "", failures=[f"harness error: "
                                                                            f"{type(exc).__name__}: {exc}"])
            cr.steps.append(sr)
            known = NOT_REPRODUCIBLE.get((step.test_id, step.step_id)) or self.reused.get((step.test_id, step.step_id))
            if sr.failures and known:
                sr.notes.append("known: " + known)
                if cr.outcome == "passed":
                    cr.outcome, cr.reason = "xfail", known
            elif sr.failures:
                cr.outcome, cr.reason = "failed", f"{step.step_id}: {sr.failures[0]}"
        ran = [s for s in cr.steps if not s.skipped]
        if not ran and cr.outcome == "passed":
            cr.outcome = "skipped"
            cr.reason = next((s.skipped for s in cr.steps if s.skipped), "nothing to run")
        cr.seconds = time.monotonic() - start
        result.cases.append(cr)
        self.runner.progress("done", cr)

    async def _step(self, step: nist.NistStep) -> StepResult:
        sr = StepResult(step.step_id, step.transaction, "")
        if step.transaction == "PatientIdentityFeed":
            sr.skipped = (f"patient identity feed is out of band: the target must know {self.ctx.patient()}")
            return sr
        if step.transaction == "Http":
            return await self._http_step(step, sr)
        if step.transaction not in DISPATCH:
            sr.skipped = f"{step.transaction or 'this'} transaction is not run by the harness"
            return sr
        name, role, action, mtom, secured = DISPATCH[step.transaction]
        sr.transaction, sr.role = name, role
        attachments: list[Attachment] = []
        try:
            if step.transaction == "ProvideAndRegister":
                body, attachments = _provide_body(step, self.ctx)
            else:
                body = nist.prepare_request(step, self.ctx)
        except nist.UnresolvedReference as exc:
            sr.skipped = f"needs a value this testkit does not produce: {exc}"
            return sr
        except FileNotFoundError as exc:
            sr.skipped = f"request file missing from the testkit: {exc.filename}"
            return sr
        headers = []
        if secured:
            if self.runner.signer is None:
                sr.skipped = "needs a signing key: run with --sign-with KEY --cert CERT"
                return sr
            headers = [build_header("saml", self.runner.signer)]
        url = self.runner.target.url(role)
        ex = await send(self.http, url, action, body, headers=headers, attachments=attachments, mtom=mtom)
        return self._finish(step, sr, ex, body)

    async def _http_step(self, step: nist.NistStep, sr: StepResult) -> StepResult:
        content_type, data = nist.http_request_body(step)
        submission = nist._embedded_submission(data)
        if submission is not None:
            uids = set(nist._literal_ids(submission)["AssignedUids"].values())
            again = sorted(uids & self.literal_uids)
            if again:
                self.reused[(step.test_id, step.step_id)] = (
                    f"the captured body reuses uniqueId(s) {', '.join(again)} that an earlier captured body of this "
                    "run already submitted; NIST runs these tests against a fresh registry")
            self.literal_uids |= uids
        role = HTTP_ROLES.get(str(step.options.get("type", "pr.b")), "repository")
        sr.role = role
        action = v.Action.ITI41 if role == "repository" else v.Action.ITI42
        ex = await post_raw(self.http, self.runner.target.url(role), action, data, content_type)
        return self._finish(step, sr, ex, None)

    def _finish(self, step: nist.NistStep, sr: StepResult, ex: Exchange, body: etree._Element | None) -> StepResult:
        sr.exchange = ex
        obs = observe(ex)
        sr.observed = obs.summary()
        sr.failures = judge_nist(step, body, obs)
        if obs.payload is not None and obs.fault is None:
            nist.record_result(step, self.ctx, body, obs.payload)
        return sr


class _Named:
    """What the progress callback shows for a NIST case (it reads ``id`` and ``title``)."""

    def __init__(self, id: str, title: str):
        self.id, self.title = id, title


def _title(steps: list[nist.NistStep]) -> str:
    kinds = sorted({s.transaction for s in steps})
    return f"{len(steps)} step(s): {', '.join(kinds)}"
