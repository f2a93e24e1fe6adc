"""``xds-node send --partner NAME FILE...`` (issue 12): our C-CDA pushed to a partner's XDR Document
Recipient, end to end over HTTP. The partner is our own node (a real ``xds-node serve`` process)
pinned as the loopback partner ``this-node`` with an ``xdr`` endpoint, so both sides are ours and
both are checked: what left (consent, signature, audit) and what arrived (stored, marked, audited).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, LiveNode, free_port
from tests.responding.test_responding_gateway import key_template  # noqa: F401
from tests.responding.test_xdr import RECEIVED_FROM, get_documents, slot_values
from tests.soapkit import SoapTestClient
from xds_node.admin import DEMO_PARTNER_HCID, DEMO_PARTNER_NAME, SELF_PARTNER_NAME
from xds_node.cda import extract_metadata
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.node import cda_defaults
from xds_node.security.keys import load_key_and_cert
from xds_node.security.trust import Partner, TrustStore

SAMPLES = ROOT / "sample_documents"
CONSENTED = SAMPLES / "jordan-samplecase" / "referral-note-neurology-2021.xml"
NOT_CONSENTED = SAMPLES / "morgan-exampleton" / "lab-report-2023.xml"

pytestmark = pytest.mark.server


def entry_of(path: Path, settings):
    return extract_metadata(path.read_bytes(), defaults=cda_defaults(settings))


@pytest.fixture
def loopback(tmp_path, key_template):  # noqa: F811
    """Our node, serving, with itself pinned as partner ``this-node`` (xdr endpoint = its /xdr) and
    consent granted for one sample veteran only."""
    from xds_node.node import Node

    shutil.copytree(key_template, tmp_path, dirs_exist_ok=True)
    settings = load_settings(env={}, data_dir=tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    keys = settings.keys_dir
    TrustStore([
        Partner(name=DEMO_PARTNER_NAME, home_community_id=DEMO_PARTNER_HCID,
                certificates=[load_key_and_cert(keys / "demo-partner.key.pem", keys / "demo-partner.cert.pem")[1]]),
        Partner(name=SELF_PARTNER_NAME, home_community_id=settings.home_community_id,
                certificates=[load_key_and_cert(keys / "node.key.pem", keys / "node.cert.pem")[1]],
                endpoints={"xdr": base + "/xdr"}),
    ]).save(settings.partners_path)
    node = Node(settings)
    node.consent_store.grant(entry_of(CONSENTED, settings).patient_id, source="paper form")
    node.close()
    live = LiveNode(tmp_path, port=port)
    yield settings, live
    live.stop()


def send(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xds_node.cli", "send", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_send_pushes_a_consented_document_end_to_end(loopback):
    """The document arrives signed (the /xdr gate admitted us as partner this-node), is registered
    and marked as received from this-node, and both directions are audited."""
    from xds_node.node import Node

    settings, live = loopback
    run = send(settings.data_dir, "--partner", SELF_PARTNER_NAME, str(CONSENTED))
    assert run.returncode == 0, run.stdout + run.stderr
    entry = entry_of(CONSENTED, settings)
    assert run.stdout.strip() == f"{CONSENTED}: OK {entry.unique_id}"

    node = Node(settings)
    try:
        events = node.audit.list(transaction="ITI-41")
        sent = [e for e in events if e.direction == "outbound"]
        assert sorted(e.outcome for e in sent) == ["attempt", "success"]  # the intent commits before sending
        outbound = [e for e in sent if e.outcome != "attempt"]
        inbound = [e for e in events if e.direction == "inbound" and e.endpoint == "/xdr"]
        assert [e.outcome for e in outbound] == ["success"] and outbound[0].document_ids == [entry.unique_id]
        assert outbound[0].patient_id == entry.patient_id and outbound[0].partner_organization == SELF_PARTNER_NAME
        assert [e.outcome for e in inbound] == ["success"] and inbound[0].caller_kind == "partner"
        doc_uuid = _uuid_of(node, entry.unique_id)
    finally:
        node.close()
    client = SoapTestClient(base_url=live.url)
    try:
        found = client.call("/xds/registry", v.Action.ITI18, get_documents(doc_uuid))
    finally:
        client.close()
    (obj,) = found.objects("ExtrinsicObject")
    assert slot_values(obj, RECEIVED_FROM)[:2] == [settings.home_community_id, SELF_PARTNER_NAME]


def _uuid_of(node, unique_id: str) -> str:
    from sqlalchemy import select

    from xds_node.registry.tables import documents

    with node.engine.connect() as conn:
        return conn.execute(select(documents.c.id).where(documents.c.unique_id == unique_id)).scalar_one()


def test_send_refuses_a_patient_without_consent(loopback):
    """A disclosure needs consent (ConsentPolicy.decide): nothing is sent for the other veteran, the
    line says REFUSED and why, the refusal is audited, and the exit code says only some were sent."""
    from xds_node.node import Node

    settings, _live = loopback
    run = send(settings.data_dir, "--partner", SELF_PARTNER_NAME, str(NOT_CONSENTED), str(CONSENTED))
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{NOT_CONSENTED}: REFUSED" in run.stderr and "has not opted in" in run.stderr
    assert f"{CONSENTED}: OK" in run.stdout
    refused = entry_of(NOT_CONSENTED, settings)
    node = Node(settings)
    try:
        events = node.audit.list(transaction="ITI-41")
        denied = [e for e in events if e.direction == "outbound" and e.outcome == "denied"]
        assert [e.patient_id for e in denied] == [refused.patient_id]
        arrived = [e for e in events if e.direction == "inbound" and e.endpoint == "/xdr"]
        assert len(arrived) == 1 and refused.patient_id not in [e.patient_id for e in arrived]
    finally:
        node.close()

    only = send(settings.data_dir, "--partner", SELF_PARTNER_NAME, str(NOT_CONSENTED))
    assert only.returncode == 2


def test_send_needs_a_partner_with_an_xdr_endpoint(loopback):
    settings, _live = loopback
    assert send(settings.data_dir, "--partner", "nobody", str(CONSENTED)).returncode == 2
    run = send(settings.data_dir, "--partner", DEMO_PARTNER_NAME, str(CONSENTED))
    assert run.returncode == 2 and "no `xdr` endpoint" in run.stderr
