"""The NIST testkit runner runs tests as NIST does: each rule over a small testkit written here.

Each test writes its own testplan folders (index.idx, testplan.xml, request files), runs them with
:func:`conformance.nist.run.run_nist` against our node in-process (or a recording fake target where
the test is about where a step is sent) and checks the verdict, including the reason of every skip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from lxml import etree

from conformance import nist
from conformance.nist.run import ITI51_ACTION, run_nist
from conformance.runner import Runner, Target
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v

ROOT = Path(__file__).resolve().parents[2]
SUBMISSION = (ROOT / "conformance" / "seeds" / "registry" / "12346-single_doc.xml").read_text()
FIND_DOCS = """<query:AdhocQueryRequest xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
 xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">
 <query:ResponseOption returnComposedObjects="true" returnType="LeafClass"/>
 <rim:AdhocQuery id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d">
  <rim:Slot name="$XDSDocumentEntryPatientId"><rim:ValueList><rim:Value>'$pid$'</rim:Value></rim:ValueList></rim:Slot>
  <rim:Slot name="$XDSDocumentEntryStatus"><rim:ValueList>
   <rim:Value>('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')</rim:Value></rim:ValueList></rim:Slot>
 </rim:AdhocQuery></query:AdhocQueryRequest>"""


def _submit_plan(step: str = "submit", extra: str = "") -> str:
    return f"""<TestPlan><TestStep id="{step}">{extra}<ExpectedStatus>Success</ExpectedStatus>
      <RegisterTransaction><XDSb/><AssignUuids/><MetadataFile>metadata.xml</MetadataFile></RegisterTransaction>
      </TestStep></TestPlan>"""


def _query_plan(count: int, *, step: str = "query", use: str = "", asserts: str = "") -> str:
    use = use or '<UseId testdir="../submit" id="SubmissionSet01" symbol="$pid$" step="submit" ' \
                  'section="AssignedPatientId"/>'
    return f"""<TestPlan><TestStep id="{step}"><ExpectedStatus>Success</ExpectedStatus>
      <StoredQueryTransaction><XDSb/>{use}<MetadataFile>query.xml</MetadataFile>
      <ExpectedContents><Documents count="{count}"/></ExpectedContents>{asserts}</StoredQueryTransaction>
      </TestStep></TestPlan>"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _submit_then_query(test: Path, count: int, asserts: str = "") -> None:
    _write(test, {"index.idx": "submit\nquery\n", "submit/testplan.xml": _submit_plan(),
                  "submit/metadata.xml": SUBMISSION, "query/testplan.xml": _query_plan(count, asserts=asserts),
                  "query/query.xml": FIND_DOCS})


@pytest.fixture
def run_on_node(tmp_path):
    """Run a testkit folder against a fresh in-process node; returns {case id: CaseResult}."""
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=tmp_path / "node"))

    def run(testkit: Path, **kwargs):
        runner = Runner(Target("http://testserver"), transport=httpx.ASGITransport(node.app()),
                        variables={"repository_id": node.settings.repository_unique_id})
        result = run_nist(runner, testkit, seed=False, **kwargs)
        return {c.id: c for c in result.cases}

    yield run
    node.close()


# --- index.idx ----------------------------------------------------------------------------------
def test_only_the_sections_index_idx_lists_run_in_its_order(tmp_path, run_on_node):
    """NIST runs the sections index.idx names, in that order, and nothing else: an unlisted section
    and a stale top-level testplan.xml (here both would fail) are not part of the test."""
    test = tmp_path / "kit" / "T1"
    _submit_then_query(test, 1)
    _write(test, {"testplan.xml": _query_plan(5, use=" "), "query.xml": FIND_DOCS,
                  "stale/testplan.xml": _query_plan(7), "stale/query.xml": FIND_DOCS})
    (found,) = nist.find_tests(tmp_path / "kit")
    assert [s.name for s in found.sections] == ["submit", "query"]
    assert found.ignored == ["testplan.xml at the top of the test (index.idx names the sections)",
                             "section stale (not listed in index.idx)"]
    case = run_on_node(tmp_path / "kit")["T1"]
    assert case.outcome == "passed", case.reason
    assert [s.id for s in case.steps] == ["submit/submit", "query/query"]
    assert "not listed in index.idx" in case.title


def test_a_section_listed_but_absent_is_a_named_skip(tmp_path, run_on_node):
    test = tmp_path / "kit" / "T1"
    _submit_then_query(test, 1)
    (test / "index.idx").write_text("submit\nquery\ngone\n")
    case = run_on_node(tmp_path / "kit")["T1"]
    assert case.outcome == "skipped"
    assert "index.idx lists section 'gone', which has no testplan.xml" in case.reason


# --- patients -------------------------------------------------------------------------------------
def test_each_test_gets_its_own_patient(tmp_path, run_on_node):
    """Two tests each register one document and count their patient's documents: with one patient
    shared by all tests the second would see 2."""
    for name in ("A", "B"):
        _submit_then_query(tmp_path / "kit" / name, 1)
    cases = run_on_node(tmp_path / "kit")
    assert {k: c.outcome for k, c in cases.items()} == {"A": "passed", "B": "passed"}, \
        {k: c.reason for k, c in cases.items()}


def test_new_patient_id_gives_the_step_a_fresh_patient(tmp_path, run_on_node):
    """``<NewPatientId/>`` (NIST: a new id from the allocator for this step on): the second submit's
    documents belong to a patient of their own, so each patient has exactly one document."""
    test = tmp_path / "kit" / "T"
    _submit_then_query(test, 1)
    (test / "index.idx").write_text("submit\nsubmit2\nquery\nquery2\n")
    _write(test, {"submit2/testplan.xml": _submit_plan("submit", "<NewPatientId/>"),
                  "submit2/metadata.xml": SUBMISSION,
                  "query2/testplan.xml": _query_plan(1, use='<UseId testdir="../submit2" id="SubmissionSet01" '
                                                            'symbol="$pid$" step="submit" '
                                                            'section="AssignedPatientId"/>'),
                  "query2/query.xml": FIND_DOCS})
    steps = nist.find_tests(tmp_path / "kit")[0].steps
    assert [s.options.get("NewPatientId", False) for s in steps] == [False, True, False, False]
    case = run_on_node(tmp_path / "kit")["T"]
    assert case.outcome == "passed", case.reason
    bodies = [etree.fromstring(s.exchange.request.split(b"\r\n\r\n", 1)[-1]) if b"--" in s.exchange.request[:4]
              else etree.fromstring(s.exchange.request) for s in case.steps[:2]]
    pids = [b.find(f".//{{{v.RIM}}}ExternalIdentifier[@identificationScheme='{v.SS_PATIENT_ID}']").get("value")
            for b in bodies]
    assert pids[0] != pids[1]


def test_patient_feed_step_is_named_not_hidden(tmp_path, run_on_node):
    """The harness sends no HL7 patient feed; the step says so and the patient it needed, and the test
    is judged on the steps that ran (our node accepts any patient unless require_known_patient)."""
    test = tmp_path / "kit" / "T"
    _submit_then_query(test, 1)
    (test / "index.idx").write_text("feed\nsubmit\nquery\n")
    _write(test, {"feed/testplan.xml": """<TestPlan><TestStep id="register_new_patient_id">
        <ExpectedStatus>Success</ExpectedStatus><PatientIdentityFeedTransaction><XDSb/><NoMetadata/>
        </PatientIdentityFeedTransaction></TestStep></TestPlan>"""})
    case = run_on_node(tmp_path / "kit")["T"]
    assert case.outcome == "passed"
    assert "patient identity feed (ITI-8/ITI-44) not sent" in case.reason
    assert "^^^&" in case.steps[0].skipped


def test_unknown_patient_failure_says_a_feed_is_needed(tmp_path):
    """Against a registry that requires known patients, the submit fails (XDSUnknownPatientId) and the
    step notes that a patient identity feed is what is missing."""
    from xds_node.node import Node

    _submit_then_query(tmp_path / "kit" / "T", 1)
    node = Node(load_settings(env={}, data_dir=tmp_path / "node", require_known_patient=True))
    try:
        runner = Runner(Target("http://testserver"), transport=httpx.ASGITransport(node.app()),
                        variables={"repository_id": node.settings.repository_unique_id})
        case = run_nist(runner, tmp_path / "kit", seed=False).cases[0]
    finally:
        node.close()
    assert case.outcome == "failed"
    assert "XDSUnknownPatientId" in case.reason
    assert any("needs a patient identity feed" in n for n in case.steps[0].notes)
    assert "missing input: AssignedPatientId 'SubmissionSet01' of test T/submit step submit; that step failed" \
        in case.steps[1].skipped


# --- assertions -----------------------------------------------------------------------------------
COUNT = """<Assertions><DataRef file="THIS" as="output"/>
  <Assert id="DocCount" desc="documents">count(//StoredQueryTransaction[@step="query"]/Result/*[local-name()=
  'AdhocQueryResponse']/*[local-name()='RegistryObjectList']/*[local-name()='ExtrinsicObject']) = {n}</Assert>
  </Assertions>"""


def test_assertions_are_evaluated_over_the_log(tmp_path, run_on_node):
    """An ``<Assert>`` that holds passes (and says so); one that does not fails the step, even when
    ExpectedContents alone would have passed."""
    _submit_then_query(tmp_path / "kit" / "Good", 1, COUNT.format(n=1))
    _submit_then_query(tmp_path / "kit" / "Bad", 1, COUNT.format(n=2))
    cases = run_on_node(tmp_path / "kit")
    assert cases["Good"].outcome == "passed", cases["Good"].reason
    assert "assertions passed: DocCount" in cases["Good"].steps[1].notes
    assert cases["Bad"].outcome == "failed"
    assert "assertion DocCount (documents) is false" in cases["Bad"].reason


def test_assertions_get_the_steps_linkage_values(tmp_path, run_on_node):
    """NIST substitutes a step's UseId/UseReport values into its assertions: ``'$pid$'`` here is the
    patient the submit step assigned, and the answer's DocumentEntry must carry it."""
    check = ("<Assertions><DataRef file=\"THIS\" as=\"output\"/><Assert id=\"pid\">//Result//*[local-name()="
             f"'ExternalIdentifier'][@identificationScheme='{v.DOC_PATIENT_ID}']/@value = '$pid$'</Assert>"
             "</Assertions>")
    _submit_then_query(tmp_path / "kit" / "T", 1, check)
    case = run_on_node(tmp_path / "kit")["T"]
    assert case.outcome == "passed", case.reason
    assert "assertions passed: pid" in case.steps[1].notes


def test_null_transaction_assertion_reads_earlier_steps(tmp_path, run_on_node):
    """11902/uuid's shape: a NullTransaction step whose assertion reads the previous step's Result."""
    test = tmp_path / "kit" / "T"
    _submit_then_query(test, 1)
    (test / "query" / "testplan.xml").write_text(_query_plan(1).replace("</TestPlan>", f"""
      <TestStep id="verify"><NullTransaction><Assertions><DataRef file="THIS" as="output"/>
      <Assert id="approved">//*[local-name()='ExtrinsicObject']/@status = '{v.Status.APPROVED}'</Assert>
      </Assertions></NullTransaction></TestStep></TestPlan>"""))
    case = run_on_node(tmp_path / "kit")["T"]
    assert case.outcome == "passed", case.reason
    assert case.steps[-1].id == "query/verify" and "assertions passed: approved" in case.steps[-1].notes
    (test / "query" / "testplan.xml").write_text(
        (test / "query" / "testplan.xml").read_text().replace(v.Status.APPROVED, v.Status.DEPRECATED))
    case = run_on_node(tmp_path / "kit")["T"]
    assert case.outcome == "failed" and "assertion approved is false" in case.reason


@pytest.mark.parametrize(("assert_xml", "words"), [
    ('<Assert id="broken">count(//*[ = 1</Assert>', "the harness cannot evaluate"),
    ('<Assert id="java" process="validateSomething"/>', "runs NIST Java code"),
    ('<Assert id="unknown">//Result/@home = \'$home$\'</Assert>', "needs value(s) $home$"),
])
def test_an_assertion_that_cannot_be_evaluated_is_never_passed(tmp_path, run_on_node, assert_xml, words):
    asserts = f'<Assertions><DataRef file="THIS" as="output"/>{assert_xml}</Assertions>'
    _submit_then_query(tmp_path / "kit" / "T", 1, asserts)
    case = run_on_node(tmp_path / "kit")["T"]
    assert case.outcome == "skipped"
    assert words in case.steps[1].skipped and words in case.reason


def test_assertion_engine_has_no_extensions():
    """Third-party XPath runs without EXSLT regexps or other extensions (nothing beyond XPath 1.0)."""
    from conformance.nist.assertions import SectionLog, evaluate

    step = nist.NistStep(Path("."), "T", "s", "Null", None, {}, nist.Expectation(), [], [],
                         asserts=[nist.reader.Assert("re", "re:test('a', 'a')"),
                                  nist.reader.Assert("ok", "1 = 1")])
    out = evaluate(step, SectionLog("T"), {})
    assert out.passed == ["ok"]
    assert len(out.unevaluated) == 1 and "re:test" in out.unevaluated[0]


# --- dispatch -------------------------------------------------------------------------------------
RESPONSE = f"""<query:AdhocQueryResponse xmlns:query="{v.QUERY}" xmlns:rim="{v.RIM}"
 status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"><rim:RegistryObjectList/>
 </query:AdhocQueryResponse>"""


def _recording_target(seen: list[tuple[str, str]]):
    """A target that records (path, action) and offers every endpoint but /xdr."""
    from xds_node.soap.envelope import SoapResponse, serialize_response

    async def app(scope, receive, send):
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        action = etree.fromstring(body.split(b"\r\n\r\n", 1)[-1].split(b"\r\n--", 1)[0]) \
            if body.startswith(b"--") else etree.fromstring(body)
        seen.append((scope["path"], action.findtext(".//{http://www.w3.org/2005/08/addressing}Action")))
        if scope["path"] == "/xdr":
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        payload, ctype = serialize_response(SoapResponse("urn:x", etree.fromstring(RESPONSE)), relates_to=None)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype.encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


def test_igq_igr_mpq_and_xdr_steps_go_to_their_endpoints(tmp_path):
    """IGQ -> /ig/registry (ITI-18), IGR -> /ig/repository (ITI-43), MPQ -> the registry with the ITI-51
    action, XDR -> /xdr (ITI-41); a target without /xdr gets "endpoint not offered", a skip."""
    from conformance.security import Signer
    from xds_node.security.keys import generate_demo_keys

    plan = """<TestPlan><TestStep id="{id}"><ExpectedStatus>Success</ExpectedStatus><{tx}><XDSb/>
      <MetadataFile>{file}</MetadataFile>{docs}</{tx}></TestStep></TestPlan>"""
    retrieve = (f'<xdsb:RetrieveDocumentSetRequest xmlns:xdsb="{v.XDSB}"><xdsb:DocumentRequest>'
                "<xdsb:HomeCommunityId>urn:oid:1.2</xdsb:HomeCommunityId><xdsb:RepositoryUniqueId>1.2"
                "</xdsb:RepositoryUniqueId><xdsb:DocumentUniqueId>1.2.3</xdsb:DocumentUniqueId>"
                "</xdsb:DocumentRequest></xdsb:RetrieveDocumentSetRequest>")
    mpq = FIND_DOCS.replace("'$pid$'", "'A^^^&amp;1.2&amp;ISO'")
    for name, tx, file, body, docs in [
        ("igq", "IGQTransaction", "q.xml", mpq, ""), ("igr", "IGRTransaction", "r.xml", retrieve, ""),
        ("mpq", "MPQTransaction", "q.xml", mpq, ""),
        ("xdr", "XDRProvideAndRegisterTransaction", "metadata.xml", SUBMISSION,
         '<Document id="Document01">doc.txt</Document>'),
    ]:
        _write(tmp_path / "kit" / name, {"testplan.xml": plan.format(id=name, tx=tx, file=file, docs=docs),
                                         file: body, "doc.txt": "hello"})
    key, cert = generate_demo_keys(tmp_path / "keys", common_name="harness")
    seen: list[tuple[str, str]] = []
    runner = Runner(Target("http://target"), transport=httpx.ASGITransport(_recording_target(seen)),
                    signer=Signer.from_files(key, cert, home_community_id="urn:oid:1.2.3"))
    cases = {c.id: c for c in run_nist(runner, tmp_path / "kit", seed=False).cases}
    assert seen == [("/ig/registry", v.Action.ITI18), ("/ig/repository", v.Action.ITI43),
                    ("/xds/registry", ITI51_ACTION), ("/xdr", v.Action.ITI41)]
    assert cases["mpq"].steps[0].transaction == "ITI-51"
    assert cases["xdr"].outcome == "skipped"
    assert cases["xdr"].reason.startswith("xdr: endpoint not offered by the target: http://target/xdr (HTTP 404)")


def test_secured_steps_without_a_key_say_so(tmp_path, run_on_node):
    _write(tmp_path / "kit" / "x", {"testplan.xml": """<TestPlan><TestStep id="xdr"><ExpectedStatus>Success
      </ExpectedStatus><XDRProvideAndRegisterTransaction><XDSb/><MetadataFile>m.xml</MetadataFile>
      </XDRProvideAndRegisterTransaction></TestStep></TestPlan>""", "m.xml": SUBMISSION})
    case = run_on_node(tmp_path / "kit")["x"]
    assert case.outcome == "skipped" and "needs a signing key" in case.reason


# --- missing inputs -------------------------------------------------------------------------------
def test_every_skip_names_the_missing_input(tmp_path, run_on_node):
    """A step lacking an input says which one and why: another test's data the checkout lacks, a
    report value, or a step of this test that failed."""
    kit = tmp_path / "kit"
    _write(kit / "other", {"testplan.xml": _query_plan(0, use='<UseId testdir="../../99999/init" id="Document01" '
                                                                'symbol="$pid$" step="init" '
                                                                'section="AssignedUuids"/>'),
                           "query.xml": FIND_DOCS})
    _write(kit / "report", {"testplan.xml": _query_plan(0, use='<UseReport test="15817x" section="pif" '
                                                                 'step="step" reportName="$patientid$" '
                                                                 'useAs="$pid$"/>'),
                            "query.xml": FIND_DOCS})
    _submit_then_query(kit / "failed", 1)
    plan = kit / "failed" / "submit" / "testplan.xml"  # the submit succeeds, but the plan expects Failure
    plan.write_text(plan.read_text().replace("<ExpectedStatus>Success", "<ExpectedStatus>Failure"))
    cases = run_on_node(kit)
    assert cases["other"].reason == ("query: missing input: AssignedUuids 'Document01' of test 99999/init step "
                                     "init; test 99999 (test data) is not in this testkit")
    assert "report '$patientid$' of test 15817x/pif step step; test 15817x (a patient identity feed test)" \
        in cases["report"].reason
    assert cases["failed"].outcome == "failed"
    assert "that step failed (" in cases["failed"].steps[1].skipped


def test_runner_does_not_import_the_nist_runner():
    """Imports flow one way: conformance.nist.run uses conformance.runner, never the reverse."""
    code = "import sys, conformance.runner, conformance.commands; print('conformance.nist.run' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
