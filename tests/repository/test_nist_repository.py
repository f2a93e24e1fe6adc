"""NIST XDS Toolkit repository tests in the corpus, replayed step by step over HTTP."""

from __future__ import annotations

import pytest
from lxml import etree

from conformance import nist
from tests.corpus import CORPUS
from tests.registry.test_nist import judge
from tests.soapkit import SoapTestClient
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.soap.mtom import Attachment

TESTS = CORPUS / "03-messages" / "nist-testkit" / "tests"
NEGATIVE = CORPUS / "05-negative" / "nist-testkit" / "tests"
CASES = [TESTS / n for n in ("11966", "11979", "12000", "12021", "12029")] + \
        [NEGATIVE / n for n in ("11983", "11986", "12369")]
X = f"{{{v.XDSB}}}"


def provide_body(step, ctx):
    sor = nist.prepare_request(step, ctx)
    docs = nist.document_map(step, ctx)
    root = etree.Element(X + "ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": v.XDSB})
    root.append(sor)
    attachments = []
    for i, (doc_id, path) in enumerate(docs.items()):
        el = etree.SubElement(root, X + "Document", id=doc_id)
        cid = f"doc{i}@nist.test"
        etree.SubElement(el, "{http://www.w3.org/2004/08/xop/include}Include").set("href", f"cid:{cid}")
        attachments.append(Attachment(cid, "application/octet-stream", data=path.read_bytes()))
    return root, attachments


def run_test(node, client, ctx, test_dir) -> list[tuple[str, str]]:
    """Run every step of one NIST test in order; returns the failures (step, reason)."""
    failures = []
    for step in nist.iter_tests(test_dir):
        label = f"{step.test_id}:{step.step_id}"
        if step.transaction == "PatientIdentityFeed":
            node.registry_store.add_patients([ctx.patient()])
            continue
        if step.transaction == "ProvideAndRegister":
            body, attachments = provide_body(step, ctx)
            reply = client.call("/xds/repository", v.Action.ITI41, body, attachments=attachments, mtom=True)
        elif step.transaction == "Register":
            body = nist.prepare_request(step, ctx)
            reply = client.call("/xds/registry", v.Action.ITI42, body)
        elif step.transaction == "StoredQuery":
            body = nist.prepare_request(step, ctx)
            reply = client.call("/xds/registry", v.Action.ITI18, body)
        elif step.transaction == "Retrieve":
            body = nist.prepare_request(step, ctx)
            reply = client.call("/xds/repository", v.Action.ITI43, body, mtom=True)
            rr = reply.body.find(f"{{{v.RS}}}RegistryResponse") if not reply.is_fault else None
            if rr is not None:
                reply.body.set("status", rr.get("status"))
        else:
            failures.append((label, f"transaction {step.transaction} not replayed"))
            continue
        try:
            judge(step.expectation, reply)
            if step.transaction == "Retrieve" and step.expectation.status == "Success":
                asked = len(body.findall(X + "DocumentRequest"))
                got = reply.body.findall(X + "DocumentResponse")
                assert len(got) == asked, (asked, len(got))
                assert all(d.find(X + "Document") is not None for d in got)
        except AssertionError as exc:
            failures.append((label, str(exc)[:500]))
        nist.record_result(step, ctx, body, reply.body)
    return failures


@pytest.mark.parametrize("test_dir", CASES if CORPUS.is_dir() else [], ids=lambda p: p.name)
def test_nist_repository_test(tmp_path, test_dir):
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=tmp_path, require_known_patient=True))
    client = SoapTestClient(app=node.app())
    ctx = nist.seed_context()
    ctx.values["$repositoryUniqueId$"] = node.settings.repository_unique_id
    node.registry_store.add_patients([ctx.patient()])
    try:
        assert run_test(node, client, ctx, test_dir) == []
    finally:
        client.close()
        node.close()
