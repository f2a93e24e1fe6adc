"""NIST XCA responding-gateway steps (12309-12312) replayed over HTTP with signed SAML.

They depend on NIST test 12318, which registers two text/plain documents for one patient; it is
not in the corpus, so the fixture provides the same data through ITI-41 and records what 12318
would have reported (entry UUIDs, uniqueIds, patient id, home, repositoryUniqueId).
(12307/12308 address an initiating gateway and run in the initiating-gateway tests.)
"""

from __future__ import annotations

import base64

import pytest
from lxml import etree

from conformance import nist
from tests import factories as f
from tests.corpus import CORPUS, assert_valid
from tests.registry.test_nist import judge
from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import key_template  # noqa: F401 (fixture)
from tests.soapkit import SoapTestClient
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml import xdsb

TESTS = CORPUS / "03-messages" / "nist-testkit" / "tests"
X = f"{{{v.XDSB}}}"
#: 12318's two documents: a small text/plain one and a bigger text/xml one (12312 checks both mime types)
CONTENTS = {"Document01": b"This is my document.\nIt is great!\n",
            "Document02": b"<doc>" + b"<p>A second, bigger document.</p>" * 400 + b"</doc>"}
MIME = {"Document01": "text/plain", "Document02": "text/xml"}


@pytest.fixture
def world(tmp_path, key_template):  # noqa: F811
    import shutil

    from xds_node.node import Node

    shutil.copytree(key_template, tmp_path, dirs_exist_ok=True)
    node = Node(load_settings(env={}, data_dir=tmp_path))
    client = SoapTestClient(app=node.app())
    pid = f.patient(12318)
    sub = f.submission(pid, 2)
    docs = {}
    for symbol, de in zip(CONTENTS, sub.documents, strict=True):
        de.hash = de.size = de.repository_unique_id = None
        de.mime_type = MIME[symbol]
        el = etree.Element(X + "Document", nsmap={"xdsb": v.XDSB})
        el.text = base64.b64encode(CONTENTS[symbol]).decode()
        docs[de.id] = el
    reply = client.call("/xds/repository", v.Action.ITI41, xdsb.write_provide_request(sub, docs))
    assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:800]
    node.consent_store.grant(pid, source="test")
    ctx = nist.Context()
    key = ("12318/init", "init")
    ctx.assigned[key] = {
        "AssignedUuids": {s: de.id for s, de in zip(CONTENTS, sub.documents, strict=True)},
        "AssignedUids": {s: de.unique_id for s, de in zip(CONTENTS, sub.documents, strict=True)},
        "AssignedPatientId": {"SubmissionSet01": pid},
    }
    home = node.settings.home_community_id
    ctx.reports[("12318/init", "init", "$testdata_home$")] = home
    for s, de in zip(CONTENTS, sub.documents, strict=True):
        ctx.reports[("12318/init", "init", f"{s}_uid")] = de.unique_id
    ctx.reports[("12318/query", "query", "repuid")] = node.settings.repository_unique_id
    yield node, client, ctx, Requester.demo_partner(node.settings.keys_dir)
    client.close()
    node.close()


def _steps():
    if not CORPUS.is_dir():
        return []
    out = []
    for n in ("12309", "12310", "12311", "12312"):
        for step in nist.iter_tests(TESTS / n):
            out.append(pytest.param(step, id=f"{step.test_id}:{step.step_id}"))
    return out


@pytest.mark.parametrize("step", _steps())
def test_nist_xca_step(world, step):
    node, client, ctx, requester = world
    body = nist.prepare_request(step, ctx)
    if step.transaction == "XCQ":
        reply = client.call("/xca/query", v.Action.ITI38, body, headers=[requester.header()])
        judge(step.expectation, reply)
        assert_valid(reply.body)
        home = node.settings.home_community_id
        objects = [*reply.objects("ExtrinsicObject"), *reply.objects("ObjectRef")]
        assert objects and all(o.get("home") == home for o in objects)
    else:
        assert step.transaction == "XCR"
        reply = client.call("/xca/retrieve", v.Action.ITI39, body, headers=[requester.header()], mtom=True)
        assert not reply.is_fault, reply.raw[:500]
        rr = reply.body.find(f"{{{v.RS}}}RegistryResponse")
        reply.body.set("status", rr.get("status"))
        judge(step.expectation, reply)
        if step.expectation.status == "Success":
            from tests.repository.test_provide_and_retrieve import documents_of

            got = documents_of(reply)
            assert sorted(got.values()) == sorted(CONTENTS[s] for s in CONTENTS
                                                  if ctx.assigned[("12318/init", "init")]["AssignedUids"][s] in got)
            assert got
            mimes = {d.findtext(X + "mimeType") for d in reply.body.iter(X + "DocumentResponse")}
            assert mimes == {step.options.get("ExpectedMimeType", "text/plain")}
