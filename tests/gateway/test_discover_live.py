"""``xds-node discover`` (the CLI in a subprocess) against a real responding node E (``xds-node
serve`` on 127.0.0.1, behind a proxy that keeps what E received).

E holds two patients close to ours: "Alex Testpatient" (our Alex's address and phone, E's own MRN)
and "Alexis Testpatient" (same birth date, no address). Name, birth date and gender alone score
them 0.90 and 0.80: too close to call, so E answers AE with PatientAddressRequested and
PatientTelecomRequested; with our address and phone Alex scores 1.00 and is a match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from tests.conftest import LiveNode
from tests.gateway.proxy import Proxy
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.node import Node
from xds_node.patients.hl7v3 import parse_prpa_in201305
from xds_node.patients.model import Address, Demographics, Patient, PatientId
from xds_node.security.keys import generate_demo_keys
from xds_node.soap.envelope import parse_envelope

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
ALEX_CDA = ROOT / "sample_documents" / "alex-testpatient" / "ccd-2024.xml"
ALEX_ID = "VET0001^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"
EDIPI = PatientId("1234567890", "2.16.840.1.113883.3.42.10001.100001.12")  # Alex's other identifier
OURS = "urn:oid:1.3.6.1.4.1.21367.2026.9.1"
E_HCID = "urn:oid:1.3.6.1.4.1.21367.2026.9.50"
E_ROOT = "1.3.6.1.4.1.21367.2026.9.50.1"
HOME = Address(street=["12 Imaginary Lane"], city="Testville", state="OH", postal_code="45999", country="US")
PHONE = "tel:+1-555-010-1001"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("xcpd-e")
    ours, e_dir = root / "ours", root / "E"
    key, cert = generate_demo_keys(ours / "keys", common_name="VA initiating gateway")
    key.replace(ours / "keys" / "node.key.pem")
    cert.replace(ours / "keys" / "node.cert.pem")

    e = Node(load_settings(env={}, data_dir=e_dir, home_community_id=E_HCID, organization_name="Community E"))
    try:
        for mrn, given, addresses, telecoms in (("E-100", "Alex", [HOME], [PHONE]), ("E-200", "Alexis", [], [])):
            pid = f"{mrn}^^^&{E_ROOT}&ISO"
            e.patients.add(Patient(pid, Demographics(given=[given], family="Testpatient", gender="M",
                                                     birth_date="19780412", addresses=addresses,
                                                     telecoms=telecoms)))
            e.consent_store.grant(pid, source="test")
    finally:
        e.close()
    (e_dir / "partners.toml").write_text(
        f'[[partner]]\nname = "va"\nhome_community_id = "{OURS}"\n'
        f'certificates = ["{ours / "keys" / "node.cert.pem"}"]\n', encoding="utf-8")
    node_e = LiveNode(e_dir, extra_env={"XDS_HOME_COMMUNITY_ID": E_HCID})
    proxy = Proxy(node_e.port)
    (ours / "partners.toml").write_text(
        f'[[partner]]\nname = "community-E"\nhome_community_id = "{E_HCID}"\ntimeout = 10.0\n'
        f'[partner.endpoints]\nxcpd = "{proxy.url}/xcpd"\n', encoding="utf-8")
    node = Node(load_settings(env={}, data_dir=ours, home_community_id=OURS, organization_name="VA test"))
    try:
        node.patients.add_from_cda(ALEX_CDA.read_bytes())
        alex = node.patients.get(ALEX_ID)
        node.patients.add(replace(alex, demographics=replace(alex.demographics,
                                                             ids=[*alex.demographics.ids, EDIPI])))
        node.consent_store.grant(ALEX_ID, source="test")
    finally:
        node.close()
    try:
        yield {"ours": ours, "proxy": proxy, "e": e_dir}
    finally:
        proxy.stop()
        node_e.stop()


def cli(world, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDS_HOME_COMMUNITY_ID": OURS}
    return subprocess.run([sys.executable, "-m", "xds_node.cli", *args, "--data-dir", str(world["ours"])],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def received(world, since: int) -> list[Demographics]:
    """The demographics of each XCPD query E received after the first ``since`` requests."""
    out = []
    for action, body in world["proxy"].bodies[since:]:
        if action == v.Action.ITI55:
            msg = parse_envelope(body, "application/soap+xml", require_action=False)
            out.append(parse_prpa_in201305(etree.fromstring(etree.tostring(msg.body))).demographics)
    return out


def correlations(world) -> dict[str, str]:
    node = Node(load_settings(env={}, data_dir=world["ours"], home_community_id=OURS))
    try:
        return {c.community_id: c.remote_cx for c in node.patients.correlations_for(ALEX_ID)}
    finally:
        node.close()


def test_discover_patient_sends_our_stored_address_phone_and_identifiers(world):
    before = len(world["proxy"].bodies)
    done = cli(world, "discover", "--patient", ALEX_ID, "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    [sent] = received(world, before)  # one query: with the address and phone E matches at once
    assert (sent.family, sent.given, sent.gender, sent.birth_date) == ("Testpatient", ["Alex", "Q"], "M", "19780412")
    assert sent.addresses == [HOME] and sent.telecoms == [PHONE]
    assert set(sent.ids) == {PatientId("VET0001", "1.3.6.1.4.1.21367.2026.1.9"), EDIPI}
    result = json.loads(done.stdout)
    assert [(m["remote_patient_id"], m["stored"]) for m in result["matches"]] == [(f"E-100^^^&{E_ROOT}&ISO", True)]
    assert result["partners"][0]["calls"] == 1 and result["partners"][0]["retry"] == ""


def test_typed_values_override_the_stored_ones(world):
    before = len(world["proxy"].bodies)
    done = cli(world, "discover", "--patient", ALEX_ID, "--phone", "tel:+1-555-999-0000", "--given", "Alexander",
               "--json")
    assert done.returncode in (0, 2), (done.stdout, done.stderr)
    first = received(world, before)[0]
    assert first.telecoms == ["tel:+1-555-999-0000"] and first.given == ["Alexander"]
    assert first.addresses == [HOME] and first.family == "Testpatient"  # the rest still comes from our index


def test_an_ambiguous_answer_asking_for_address_and_phone_is_asked_once_more(world):
    # typed demographics only: Alex is matched in our index, the first query carries no address
    before = len(world["proxy"].bodies)
    done = cli(world, "discover", "--family", "Testpatient", "--given", "Alex", "--birth-date", "1978-04-12",
               "--gender", "M", "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    first, second = received(world, before)  # exactly one retry
    assert first.addresses == [] and first.telecoms == []
    assert second.addresses == [HOME] and second.telecoms == [PHONE]
    result = json.loads(done.stdout)
    [out] = result["partners"]
    assert (out["state"], out["calls"], out["detail"]) == ("answered", 2, "match")
    assert out["retry"] == ("second query with addresses, telecoms: the partner requested "
                            "PatientAddressRequested, PatientTelecomRequested")
    assert result["local_patient_id"] == ALEX_ID and result["status"] == "Success"
    assert [(m["remote_patient_id"], m["stored"]) for m in result["matches"]] == [(f"E-100^^^&{E_ROOT}&ISO", True)]
    assert correlations(world)[E_HCID] == f"E-100^^^&{E_ROOT}&ISO"


def test_unknown_local_patient_without_demographics_is_one_line_and_sends_nothing(world):
    before = len(world["proxy"].bodies)
    nobody = "NOBODY^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"
    done = cli(world, "discover", "--patient", nobody, "--family", "Nobody")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"discover: {nobody} is not in our patient index: give --birth-date, --gender "
        "(or add the patient with `xds-node patients add`)"]
    done = cli(world, "discover", "--family", "Testpatient")  # no --patient: the typed values are all there is
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "discover: --birth-date, --gender required (or --patient for a patient of our index)")
    assert len(world["proxy"].bodies) == before
