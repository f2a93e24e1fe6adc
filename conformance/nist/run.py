"""``--nist-testkit DIR``: run NIST XDS Toolkit tests as NIST runs them, over HTTP, and judge them.

:mod:`conformance.nist.reader` finds the tests (the sections ``index.idx`` lists, in order, and
only those); :mod:`conformance.nist.request` prepares bodies; this module sends them to the
target's endpoints with the harness's transport (:mod:`conformance.runner`; imports flow from here
to there, never back) and judges the answers against each step's ExpectedStatus /
ExpectedErrorCode / ExpectedContents / ``<Assertions>``. One NIST test is one case.

Each test gets its own fresh patient (``NewPatientId`` gives a step a new one), as NIST does, so
no test's documents change another's counts. What the harness cannot do it says instead of
passing: a skipped step names the input it lacked (test data of a test the checkout does not
have, or of a step that failed or was skipped; a report value; a patient identity feed; a
signing key) and a step for an endpoint the target does not offer says so.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from lxml import etree

from xds_node.ebxml import vocabulary as v
from xds_node.soap.fault import SoapFault
from xds_node.soap.mtom import Attachment

from ..cases import ROLES
from ..runner import (
    XOP_INCLUDE,
    CaseResult,
    Exchange,
    Observed,
    Runner,
    RunResult,
    StepResult,
    _is_unsupported,
    observe,
    post_raw,
    send,
)
from ..security import build_header
from .assertions import SectionLog, evaluate
from .reader import NistStep, NistTest, find_tests
from .request import (
    Context,
    UnresolvedReference,
    _embedded_submission,
    _literal_ids,
    document_map,
    http_request_body,
    linkage,
    prepare_request,
    record_result,
)
from .seed import seed_context, seed_plan

__all__ = ["DISPATCH", "NistRun", "judge_nist", "run_nist", "run_nist_async"]

X = f"{{{v.XDSB}}}"
#: ITI-51 Multi-Patient Stored Query (ITI TF-2a 3.51): the registry endpoint, its own action.
ITI51_ACTION = "urn:ihe:iti:2009:MultiPatientStoredQuery"

#: NIST transaction -> (our transaction name, endpoint role, action, MTOM, secured)
DISPATCH = {
    "StoredQuery": ("ITI-18", "registry", v.Action.ITI18, False, False),
    "Register": ("ITI-42", "registry", v.Action.ITI42, False, False),
    "ProvideAndRegister": ("ITI-41", "repository", v.Action.ITI41, True, False),
    "Retrieve": ("ITI-43", "repository", v.Action.ITI43, True, False),
    "XCQ": ("ITI-38", "xca_query", v.Action.ITI38, False, True),
    "XCR": ("ITI-39", "xca_retrieve", v.Action.ITI39, True, True),
    "Xcpd": ("ITI-55", "xcpd", v.Action.ITI55, False, True),
    # the initiating gateway: our internal clients' ITI-18/ITI-43 fanned out to the communities
    "IGQ": ("ITI-18", "ig_registry", v.Action.ITI18, False, False),
    "IGR": ("ITI-43", "ig_repository", v.Action.ITI43, True, False),
    "MPQ": ("ITI-51", "registry", ITI51_ACTION, False, False),
    # eHealth Exchange Document Submission: a partner's ITI-41 push, under WS-Security/SAML
    "XDR": ("ITI-41", "xdr", v.Action.ITI41, True, True),
}
#: Roles the suites do not use, with the path a node laid out like ours offers them at.
EXTRA_PATHS = {"xdr": "/xdr"}
PROVIDES = frozenset({"ProvideAndRegister", "XDR"})
RETRIEVES = frozenset({"Retrieve", "XCR", "IGR"})
HTTP_ROLES = {"pr.b": "repository", "r.b": "registry", "sq.b": "registry", "ret.b": "repository"}
#: A step that prepares the target rather than checking it; skipping it blocks nothing by itself.
PRECONDITION = "precondition, not a check"

#: NIST's named content patterns, as object counts.
PATTERNS = {
    "SSwithOneDoc": {"SubmissionSets": 1, "ExtrinsicObject": 1},
    "SSwithTwoDoc": {"SubmissionSets": 1, "ExtrinsicObject": 2},
    "SSwithOneDocOneFol": {"SubmissionSets": 1, "ExtrinsicObject": 1, "Folders": 1},
    "SSwithTwoDocOneFol": {"SubmissionSets": 1, "ExtrinsicObject": 2, "Folders": 1},
}
KIND_NAMES = {"ObjectRefs": "ObjectRef", "Documents": "ExtrinsicObject", "Associations": "Association",
              "SubmissionSets": "SubmissionSets", "Folders": "Folders"}


def judge_nist(step: NistStep, body: etree._Element | None, obs: Observed) -> list[str]:
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
    if step.transaction in RETRIEVES and exp.status == "Success" and body is not None:
        out.extend(_check_retrieve(step, body, obs))
    return out


def _check_retrieve(step: NistStep, body: etree._Element, obs: Observed) -> list[str]:
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


def _provide_body(step: NistStep, ctx: Context) -> tuple[etree._Element, list[Attachment]]:
    sor = prepare_request(step, ctx)
    root = etree.Element(X + "ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": v.XDSB})
    root.append(sor)
    attachments = []
    for i, (doc_id, path) in enumerate(document_map(step, ctx).items()):
        el = etree.SubElement(root, X + "Document", id=doc_id)
        cid = f"doc{i}@nist.conformance"
        etree.SubElement(el, XOP_INCLUDE).set("href", f"cid:{cid}")
        attachments.append(Attachment(cid, "application/octet-stream", data=path.read_bytes()))
    return root, attachments


class NistRun:
    """One run of NIST tests against ``runner``'s target, sharing what steps produce across tests."""

    def __init__(self, runner: Runner, http: httpx.AsyncClient):
        self.runner = runner
        self.http = http
        self.ctx = seed_context()
        self.literal_uids: dict[str, str] = {}  # uniqueId sent as is by a captured (Http) body -> its step
        self.reused: dict[tuple[str, str], str] = {}  # steps whose captured body reuses such uniqueIds
        #: (test key, step id) -> what happened to it, for the reasons of skips that depend on it
        self.status: dict[tuple[str, str], str] = {}
        self.known_tests: set[str] = set()
        repo = runner.variables.get("repository_id")
        if repo:
            self.ctx.values["$repositoryUniqueId$"] = repo

    async def run(self, root: Path, result: RunResult, *, seed: bool) -> None:
        if seed:
            steps = [s.to_step() for s in seed_plan()]
            await self._case(result, "seed", "registry seed standing in for NIST tests 12346/12374",
                             [("", steps)], [])
        if (root / "tests").is_dir():
            # a checkout: the tests first, then the test-data folders, as a NIST user would
            others = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "tests")
            tests = [t for d in (root / "tests", *others) for t in find_tests(d)]
        else:
            tests = find_tests(root)
        self.known_tests = {t.id for t in tests}
        for test in tests:
            await self._test(result, test)

    async def _test(self, result: RunResult, test: NistTest) -> None:
        # each test its own patient, as NIST feeds each test a fresh one; NewPatientId makes another
        patient, fresh = f"$patientid:{test.id}$", 0
        for step in test.steps:
            if step.options.get("NewPatientId"):
                fresh += 1
                patient = f"$patientid:{test.id}:{fresh}$"
            step.options["patient"] = patient
        sections = [(s.name, s.steps) for s in test.sections if not s.problem]
        problems = [StepResult(s.name, "", "", skipped=s.problem) for s in test.sections if s.problem]
        title = _title(test.steps) + (f"; not run, as NIST: {', '.join(test.ignored)}" if test.ignored else "")
        await self._case(result, test.id, title, sections, problems)

    async def _case(self, result: RunResult, case_id: str, title: str,
                    sections: list[tuple[str, list[NistStep]]], problems: list[StepResult]) -> None:
        self.runner.progress("start", _Named(case_id, title))
        cr = CaseResult(case_id, title, required=True, suite=result.suite)
        start = time.monotonic()
        cr.steps.extend(problems)
        for name, steps in sections:
            log = SectionLog(steps[0].test_id if steps else case_id)
            for step in steps:
                try:
                    sr = await self._step(step, log)
                except Exception as exc:  # never let one step end the run
                    sr = StepResult(step.step_id, step.transaction, "",
                                    failures=[f"harness error: {type(exc).__name__}: {exc}"])
                sr.id = f"{name}/{step.step_id}" if name else step.step_id
                cr.steps.append(sr)
                self.status[(step.test_id, step.step_id)] = _status_words(sr)
        _judge_case(cr, self.reused, sections)
        cr.seconds = time.monotonic() - start
        result.cases.append(cr)
        self.runner.progress("done", cr)

    def _url(self, role: str) -> str:
        target = self.runner.target
        if role in ROLES or role in target.paths:
            return target.url(role)
        return target.base_url.rstrip("/") + EXTRA_PATHS[role]

    def _missing(self, exc: UnresolvedReference) -> str:
        """Which input a step lacked, and why it is not there."""
        if not exc.test_key:
            return f"missing input: {exc}"
        test = exc.test_key.split("/", 1)[0]
        what = f"missing input: {exc.what} of test {exc.test_key} step {exc.step}"
        happened = self.status.get((exc.test_key, exc.step))
        if happened and happened != "passed":
            return f"{what}; that step {happened}"
        if happened == "passed":
            return f"{what}; that step passed but did not produce it"
        if test not in self.known_tests:
            kind = "a patient identity feed test" if "patientid" in exc.what.lower() else "test data"
            return f"{what}; test {test} ({kind}) is not in this testkit"
        return f"{what}; that step has not run before this one (not in index.idx, or listed later)"

    async def _step(self, step: NistStep, log: SectionLog) -> StepResult:
        sr = StepResult(step.step_id, step.transaction, "")
        if step.transaction == "PatientIdentityFeed":
            sr.skipped = ("patient identity feed (ITI-8/ITI-44) not sent: the harness has no feed sender; the "
                          f"target must accept {self.ctx.patient(str(step.options['patient']))} without one")
            sr.notes.append(PRECONDITION)
            return sr
        if step.transaction == "Null":
            return self._assertions_only(step, sr, log)
        if step.transaction == "Http":
            return await self._http_step(step, sr, log)
        if step.transaction not in DISPATCH:
            sr.skipped = f"{step.transaction or 'this'} transaction is not run by the harness"
            return sr
        name, role, action, mtom, secured = DISPATCH[step.transaction]
        sr.transaction, sr.role = name, role
        attachments: list[Attachment] = []
        try:
            if step.transaction in PROVIDES:
                body, attachments = _provide_body(step, self.ctx)
            else:
                body = prepare_request(step, self.ctx)
        except UnresolvedReference as exc:
            sr.skipped = self._missing(exc)
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
        url = self._url(role)
        ex = await send(self.http, url, action, body, headers=headers, attachments=attachments, mtom=mtom)
        return self._finish(step, sr, ex, body, log)

    def _assertions_only(self, step: NistStep, sr: StepResult, log: SectionLog) -> StepResult:
        if not step.asserts:
            sr.skipped = "NullTransaction without assertions: nothing to check"
            return sr
        log.add(step, None, None, "NullTransaction")
        self._check_assertions(step, sr, log)
        return sr

    def _check_assertions(self, step: NistStep, sr: StepResult, log: SectionLog) -> None:
        if not step.asserts:
            return
        outcome = evaluate(step, log, linkage(step, self.ctx))
        sr.failures.extend(outcome.failed)
        if outcome.passed:
            sr.notes.append(f"assertions passed: {', '.join(outcome.passed)}")
        if outcome.unevaluated and not sr.failures:
            sr.skipped = "; ".join(outcome.unevaluated)

    async def _http_step(self, step: NistStep, sr: StepResult, log: SectionLog) -> StepResult:
        content_type, data = http_request_body(step)
        submission = _embedded_submission(data)
        if submission is not None:
            uids = set(_literal_ids(submission)["AssignedUids"].values())
            again = sorted(uids & self.literal_uids.keys())
            if again:
                earlier = ", ".join(sorted({self.literal_uids[u] for u in again}))
                self.reused[(step.test_id, step.step_id)] = (
                    f"the captured body reuses uniqueId(s) {', '.join(again)} that the captured body of {earlier} "
                    "already submitted in this run (a SubmissionSet uniqueId is registered once: "
                    "XDSDuplicateUniqueIdInRegistry); NIST runs these tests against a fresh registry")
            for uid in uids:
                self.literal_uids.setdefault(uid, f"{step.test_id} step {step.step_id}")
        role = HTTP_ROLES.get(str(step.options.get("type", "pr.b")), "repository")
        sr.role = role
        action = v.Action.ITI41 if role == "repository" else v.Action.ITI42
        ex = await post_raw(self.http, self._url(role), action, data, content_type)
        return self._finish(step, sr, ex, submission, log)

    def _finish(self, step: NistStep, sr: StepResult, ex: Exchange, body: etree._Element | None,
                log: SectionLog) -> StepResult:
        sr.exchange = ex
        obs = observe(ex)
        sr.observed = obs.summary()
        if _is_unsupported(ex, obs):
            why = "HTTP 404" if ex.status == 404 else obs.fault_words()
            sr.skipped = f"endpoint not offered by the target: {ex.url} ({why})"
            return sr
        sr.failures = judge_nist(step, body if step.transaction != "Http" else None, obs)
        if "XDSUnknownPatientId" in obs.error_codes and step.transaction in (*PROVIDES, "Register", "Http"):
            sr.notes.append("needs a patient identity feed (ITI-8/ITI-44): the target does not know the test's "
                            "patient and the harness sends no feed")
        if sr.failures and "XDSUnknownPatientId" in step.expectation.error_codes:
            sr.notes.append("this negative expects the registry to refuse a patient no identity feed announced "
                            "(XDSUnknownPatientId); a target that accepts any patient (ours unless "
                            "require_known_patient) fails it")
        if step.transaction == "Http" and "XDSDuplicateUniqueIdInRegistry" in obs.error_codes:
            sr.notes.append("the captured body's uniqueIds are literal: a target that already received them (an "
                            "earlier run) refuses them again; run these tests against a fresh registry")
        if obs.payload is not None and obs.fault is None and not sr.failures:
            # a failed step produced nothing later steps may build on (they say so when they skip)
            record_result(step, self.ctx, body, obs.payload)
        instruction = etree.QName(step.instruction).localname if step.instruction is not None else "Transaction"
        log.add(step, body, obs.payload if obs.fault is None else None, instruction)
        if not sr.failures:  # NIST runs a step's assertions only when the step itself passed
            self._check_assertions(step, sr, log)
        return sr


def _status_words(sr: StepResult) -> str:
    if sr.failures:
        return f"failed ({sr.failures[0]})"
    if sr.skipped:
        return f"was skipped ({sr.skipped})"
    return "passed"


def _judge_case(cr: CaseResult, reused: dict[tuple[str, str], str],
                sections: list[tuple[str, list[NistStep]]]) -> None:
    """A test passes when every step ran and passed; a skipped step (other than a precondition
    such as the patient feed) leaves it skipped with that step's reason, a failure fails it."""
    keys = {f"{name}/{s.step_id}" if name else s.step_id: (s.test_id, s.step_id)
            for name, steps in sections for s in steps}
    known_failures = []
    for sr in cr.steps:
        if not sr.failures:
            continue
        known = reused.get(keys.get(sr.id, ("", "")))
        if known:
            sr.notes.append("known: " + known)
            known_failures.append(f"{sr.id}: {known}")
        elif cr.outcome != "failed":
            cr.outcome, cr.reason = "failed", f"{sr.id}: {sr.failures[0]}"
    if cr.outcome == "failed":
        return
    blocking = [sr for sr in cr.steps if sr.skipped and PRECONDITION not in sr.notes]
    ran = [sr for sr in cr.steps if not sr.skipped]
    if blocking or not ran:
        cr.outcome = "skipped"
        shown = blocking or [sr for sr in cr.steps if sr.skipped]
        reasons = "; ".join(f"{sr.id}: {sr.skipped}" for sr in shown) or "nothing to run"
        passed = sum(1 for sr in ran if sr.passed)
        cr.reason = (f"{passed} of {len(cr.steps)} steps passed; " if passed else "") + reasons
    elif known_failures:
        cr.outcome, cr.reason = "xfail", "; ".join(known_failures)
    notes = [f"{sr.id}: {sr.skipped}" for sr in cr.steps if sr.skipped and PRECONDITION in sr.notes]
    if notes and cr.outcome == "passed":
        cr.reason = "not sent: " + "; ".join(notes)


class _Named:
    """What the progress callback shows for a NIST case (it reads ``id`` and ``title``)."""

    def __init__(self, id: str, title: str):
        self.id, self.title = id, title


def _title(steps: list[NistStep]) -> str:
    kinds = sorted({s.transaction for s in steps})
    return f"{len(steps)} step(s): {', '.join(kinds)}"


async def run_nist_async(runner: Runner, testkit: Path, *, seed: bool = True) -> RunResult:
    """Run the NIST tests under ``testkit`` (a checkout, its ``tests/`` or one test) against ``runner``'s target."""
    result = RunResult(suite=f"nist:{Path(testkit).name}", title=f"NIST testkit {testkit}",
                       target=runner.target.base_url)
    start = time.monotonic()
    async with runner.http_client() as http:
        await NistRun(runner, http).run(Path(testkit), result, seed=seed)
    result.seconds = time.monotonic() - start
    return result


def run_nist(runner: Runner, testkit: Path, *, seed: bool = True) -> RunResult:
    return asyncio.run(run_nist_async(runner, testkit, seed=seed))
