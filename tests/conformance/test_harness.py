"""The harness itself: suites load, a broken partner never crashes a run, reports and CLI work."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from lxml import etree

from conformance import commands, report
from conformance.cases import ROLES, Expect, UnknownVariable, list_suites, load_suite, substitute
from conformance.nist.run import run_nist
from conformance.runner import Runner, Target, judge, observe
from conformance.security import NEGATIVES
from tests.corpus import CORPUS
from xds_node.config import load_settings
from xds_node.soap.envelope import SoapResponse, serialize_response

TESTKIT = CORPUS / "03-messages" / "nist-testkit"

FIND = """<query:AdhocQueryResponse xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
 xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
 status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"><rim:RegistryObjectList>
 <rim:ObjectRef id="urn:uuid:1"/></rim:RegistryObjectList></query:AdhocQueryResponse>"""
RETRIEVE = """<xdsb:RetrieveDocumentSetResponse xmlns:xdsb="urn:ihe:iti:xds-b:2007"
 xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"><rs:RegistryResponse
 status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"/><xdsb:DocumentResponse>
 <xdsb:RepositoryUniqueId>1.2</xdsb:RepositoryUniqueId><xdsb:DocumentUniqueId>1.2.3</xdsb:DocumentUniqueId>
 <xdsb:mimeType>text/xml</xdsb:mimeType><xdsb:Document><xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include"
 href="cid:gone@example"/></xdsb:Document></xdsb:DocumentResponse></xdsb:RetrieveDocumentSetResponse>"""


def misbehaving_app(mode: dict[str, str]):
    """A tiny ASGI partner that answers every POST in the way ``mode["how"]`` says."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        how = mode["how"]
        status, ctype, body = 200, "application/soap+xml", b""
        if how == "html":
            ctype, body = "text/html", b"<html><body>Bad gateway</body></html>"
        elif how == "garbage":
            body = b"\x00\x01 this is not XML at all"
        elif how == "500":
            status, ctype, body = 500, "text/plain", b"Internal Server Error"
        elif how == "missing-part":
            payload, ctype = serialize_response(SoapResponse("urn:x", etree.fromstring(RETRIEVE), mtom=True),
                                                relates_to=None)
            body = payload if isinstance(payload, bytes) else b"".join(payload)
        elif how == "ok":
            payload, ctype = serialize_response(SoapResponse("urn:x", etree.fromstring(FIND)), relates_to=None)
            body = payload
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype.encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def _suite(tmp_path: Path) -> Path:
    path = tmp_path / "partner.toml"
    path.write_text('''
[suite]
name = "broken-partner"
[[case]]
id = "query"
title = "a query"
[[case.step]]
transaction = "ITI-18"
template = "find.xml"
expect = { status = "Success", counts = { ObjectRef = 1 } }
[[case]]
id = "retrieve"
title = "a retrieve"
[[case.step]]
transaction = "ITI-43"
request = "<xdsb:RetrieveDocumentSetRequest xmlns:xdsb='urn:ihe:iti:xds-b:2007'/>"
expect = { status = "Success", mtom = true }
[[case]]
id = "after"
title = "a case after the broken ones still runs"
[[case.step]]
transaction = "ITI-18"
template = "find.xml"
expect = { status = "Success" }
''')
    (tmp_path / "find.xml").write_bytes((Path(__file__).resolve().parents[2] / "conformance" / "suites" / "templates"
                                         / "find_documents.xml").read_bytes())
    return path


@pytest.mark.parametrize(("how", "words"), [
    ("html", "not a usable SOAP 1.2 message"),
    ("garbage", "not a usable SOAP 1.2 message"),
    ("500", "HTTP 500"),
])
def test_broken_answers_are_failed_cases_and_the_run_goes_on(tmp_path, how, words):
    mode = {"how": how}
    runner = Runner(Target("http://partner.test", timeout=0.3), transport=httpx.ASGITransport(misbehaving_app(mode)),
                    variables={"patient": "1^^^&1.2&ISO", "return_type": "LeafClass"})
    result = runner.run(load_suite(_suite(tmp_path)))
    assert [c.outcome for c in result.cases] == ["failed", "failed", "failed"]
    for case in result.cases:
        assert words in case.reason, case.reason
        assert case.steps[0].exchange is not None and case.steps[0].exchange.request
    assert not result.ok


def test_a_partner_that_never_answers_times_out(tmp_path):
    """A listening socket that never accepts: the TCP connect succeeds, the answer never comes."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        runner = Runner(Target(url, timeout=0.3), variables={"patient": "1^^^&1.2&ISO", "return_type": "LeafClass"})
        result = runner.run(load_suite(_suite(tmp_path)))
    assert [c.outcome for c in result.cases] == ["failed", "failed", "failed"]
    assert all("timeout" in c.reason for c in result.cases), [c.reason for c in result.cases]


def test_missing_mtom_part_is_reported_and_a_good_answer_passes(tmp_path):
    mode = {"how": "missing-part"}
    progress = []
    runner = Runner(Target("http://partner.test"), transport=httpx.ASGITransport(misbehaving_app(mode)),
                    variables={"patient": "1^^^&1.2&ISO", "return_type": "LeafClass"},
                    progress=lambda event, obj: progress.append((event, obj.id)))
    result = runner.run(load_suite(_suite(tmp_path)), only=["retrieve"])
    (case,) = result.cases
    assert case.outcome == "failed"
    assert "missing MIME part" in case.reason and "cid:gone@example" in case.reason
    assert progress == [("start", "retrieve"), ("done", "retrieve")]
    mode["how"] = "ok"
    result = runner.run(load_suite(_suite(tmp_path)), only=["query", "after"])
    assert [c.outcome for c in result.cases] == ["passed", "passed"] and result.ok


def test_unreachable_target_is_a_failed_case(tmp_path):
    runner = Runner(Target("http://127.0.0.1:9", timeout=2),
                    variables={"patient": "1^^^&1.2&ISO", "return_type": "LeafClass"})
    result = runner.run(load_suite(_suite(tmp_path)), only=["after"])
    assert result.cases[0].outcome == "failed"
    assert "could not talk to http://127.0.0.1:9/xds/registry" in result.cases[0].reason


def test_bundled_suites_load_and_cover_the_transactions():
    assert set(list_suites()) == {"registry", "repository", "responding_gateway", "initiating_gateway", "security",
                                  "xdr"}
    transactions = {s.transaction for n in list_suites() for c in load_suite(n).cases for s in c.steps}
    assert transactions == {"ITI-18", "ITI-38", "ITI-39", "ITI-41", "ITI-42", "ITI-43", "ITI-51", "ITI-55", "XDR"}
    xdr = load_suite("xdr")
    assert {s.role for c in xdr.cases for s in c.steps if s.transaction == "XDR"} == {"xdr"}
    assert all(c.writes for c in xdr.cases)  # pushes store documents: run only with --allow-writes
    security = load_suite("security")
    kinds = {s.security for c in security.cases for s in c.steps}
    assert set(NEGATIVES) | {"none", "saml"} <= kinds
    assert any(s.reuse_security for c in security.cases for s in c.steps)  # replay
    roles = {s.role for c in load_suite("initiating_gateway").cases for s in c.steps}
    assert roles == {"ig_registry", "ig_repository"}


def test_substitution_escapes_xml_and_names_missing_values():
    assert substitute("<v>${p}</v>", {"p": "1^^^&1.2&ISO"}, escape=True) == "<v>1^^^&amp;1.2&amp;ISO</v>"
    a, b = substitute("${new_oid} ${new_oid}", {}).split()
    assert a != b and a.startswith("2.25.")
    with pytest.raises(UnknownVariable, match="--var home="):
        substitute("${home}", {})


def test_bad_suite_files_are_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[case]]\nid = "x"\ntitle = "x"\n[[case.step]]\ntransaction = "ITI-99"\nrequest = "<a/>"\n')
    with pytest.raises(ValueError, match="unknown transaction"):
        load_suite(bad)
    bad.write_text('[[case]]\nid = "x"\ntitle = "x"\n[[case.step]]\ntransaction = "ITI-18"\n'
                   'request = "<a/>"\nexpect = { stauts = "Success" }\n')
    with pytest.raises(ValueError, match="stauts"):
        load_suite(bad)


def test_judge_speaks_plainly():
    from conformance.runner import Exchange

    ex = Exchange(url="u", action="a", status=200, response_content_type="application/soap+xml",
                  response=serialize_response(SoapResponse("urn:x", etree.fromstring(FIND)), relates_to=None)[0])
    obs = observe(ex)
    failures = judge(Expect(status=["Failure"], error_codes=["XDSUnknownPatientId"], counts={"ObjectRef": 2},
                            home="urn:oid:1.2.3"), ex, obs)
    assert failures == [
        "expected status Failure, got status Success; 1 ObjectRef",
        "expected error code XDSUnknownPatientId, got no errors",
        "expected 2 ObjectRef, got 1",
        "ObjectRef urn:uuid:1 carries home=None; expected urn:oid:1.2.3",
    ]
    assert judge(Expect(refused=True), ex, obs)[0].startswith("expected the request to be refused")


def test_reports_are_written(tmp_path):
    mode = {"how": "garbage"}
    runner = Runner(Target("http://partner.test"), transport=httpx.ASGITransport(misbehaving_app(mode)),
                    variables={"patient": "1^^^&1.2&ISO", "return_type": "LeafClass"})
    result = runner.run(load_suite(_suite(tmp_path)), only=["query"])
    junit = etree.parse(str(report.write_junit([result], tmp_path / "r.xml"))).getroot()
    case = junit.find("testsuite/testcase")
    assert case.get("name") == "query" and "not a usable SOAP" in case.find("failure").get("message")
    page = report.write_html([result], tmp_path / "r.html").read_text()
    assert "<link" not in page and "<script" not in page  # self-contained
    assert "AdhocQueryRequest" in page  # the request is shown
    assert "this is not XML at all" in page  # and the response
    assert "not a usable SOAP 1.2 message" in page  # and the failed expectation


def test_cli_options_build_the_target_and_exit_status(tmp_path, monkeypatch, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    commands.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["conformance", "run", "--target", "https://partner.example", "--registry-path",
                              "/XDS/Reg", "--xca-query-path", "https://other.example/q", "--var", "home=urn:oid:1",
                              "--suite", "registry"])
    runner = commands.build_runner(args)
    assert runner.target.url("registry") == "https://partner.example/XDS/Reg"
    assert runner.target.url("xca_query") == "https://other.example/q"
    assert runner.target.url("repository") == "https://partner.example" + ROLES["repository"]
    assert runner.variables == {"home": "urn:oid:1"}
    assert runner.allow_writes is False  # the CLI never stores test documents in a partner unasked

    args = parser.parse_args(["conformance", "run", "--target", "http://127.0.0.1:9", "--suite", str(_suite(tmp_path)),
                              "--case", "after", "--timeout", "2", "--quiet", "--junit", str(tmp_path / "j.xml"),
                              "--html", str(tmp_path / "h.html"), "--var", "patient=1^^^&1.2&ISO",
                              "--var", "return_type=LeafClass"])
    assert args.func(args) == 1
    assert (tmp_path / "j.xml").is_file() and (tmp_path / "h.html").is_file()


def test_cases_that_write_are_skipped_unless_allowed():
    from conformance.runner import Runner, Target

    suite = load_suite("repository")
    writing = [c for c in suite.cases if c.writes]
    assert writing
    result = Runner(Target("http://127.0.0.1:9", timeout=0.5), allow_writes=False).run(
        suite, only=[writing[0].id])
    case = result.cases[0]
    assert case.outcome == "skipped" and "--allow-writes" in case.reason


@pytest.mark.skipif(not TESTKIT.is_dir(), reason="corpus not available")
def test_nist_testkit_against_our_node_in_process(tmp_path):
    """The corpus's NIST tests folder, run as-is (seed first) against an in-process node."""
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=tmp_path))
    try:
        runner = Runner(Target("http://testserver"), transport=httpx.ASGITransport(node.app()),
                        variables={"repository_id": node.settings.repository_unique_id})
        result = run_nist(runner, TESTKIT / "tests")
    finally:
        node.close()
    outcomes = {c.id: c.outcome for c in result.cases}
    failed = {c.id: c.reason for c in result.cases if c.outcome == "failed"}
    assert failed == {}
    assert result.ok
    assert outcomes["seed"] == "passed"
    # one case per NIST test, its sections from index.idx only: 11897/no_matching_classcode is not listed
    cases = {c.id: c for c in result.cases}
    assert "no_matching_classcode" not in {s.id.split("/")[0] for s in cases["11897"].steps}
    assert "not listed in index.idx" in cases["11897"].title
    # every registry/repository test of the checkout passes, with its assertions evaluated
    xds = ["11897", "11898", "11899", "11901", "11902", "11903", "11904", "11905", "11906", "11907", "11908",
           "11909", "11966", "11979", "12000", "12021", "12029", "PnrNoXop"]
    assert {t: outcomes[t] for t in xds} == dict.fromkeys(xds, "passed")
    verify = next(s for s in cases["11902"].steps if s.id == "uuid/verify_availabilityStatus")
    assert verify.passed and "assertions passed: availabilityStatus" in verify.notes
    # the captured PnrXop/Xop body repeats the SubmissionSet uniqueId PnrNoXop's body already registered
    assert outcomes["PnrXop"] == "xfail" and "PnrNoXop/submit" in cases["PnrXop"].reason
    # tests that need data the checkout lacks are skipped with the missing input named, never failed
    skipped = {c.id: c.reason for c in result.cases if c.outcome == "skipped"}
    for test in ("12307", "12308", "12309", "12310", "12311", "12312"):
        assert "test 12318 (test data) is not in this testkit" in skipped[test], skipped[test]
    assert "signing key" in skipped["15500"] and "request file missing" in skipped["15500"]
    # the patient feed is a precondition the harness does not send; it says so
    assert "patient identity feed (ITI-8/ITI-44) not sent" in cases["PnrNoXop"].reason
    json.dumps(outcomes)  # plain data
