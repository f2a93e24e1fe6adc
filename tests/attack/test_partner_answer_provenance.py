"""Our initiating gateway and a partner that lies about where its answer comes from.

XCA answers carry ``home`` (objects) and ``HomeCommunityId`` (retrieved documents). A partner may
name any of its own member communities there, but not another partner's: otherwise a rogue partner's
documents reach our clinician labelled as, say, the DoD's, and our consumer's follow-up retrieve is
steered to that other community. The gateway's outbound HTTP goes to a scripted partner (the node's
real outbound client over an httpx mock transport), as in tests/gateway/test_gateway_unit.py.
"""

from __future__ import annotations

import uuid

import pytest

from tests.gateway.test_gateway_unit import (
    CTX,
    LOCAL,
    World,
    correlate,
    entries,
    hcid,
    retrieve_answer,
    run,
    soap,
)
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.security.keys import generate_demo_keys, load_key_and_cert

S = v.ResponseStatus


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return load_key_and_cert(*generate_demo_keys(tmp_path_factory.mktemp("ig-keys"), common_name="VA gateway"))


def _claims(home: str):
    def answer(msg):
        pid = rim.read_adhoc_query_request(msg.body).slots["$XDSDocumentEntryPatientId"][0][0].strip("'")
        return soap(v.Action.ITI38, rim.adhoc_query_response_bytes(S.SUCCESS, fragments=entries(pid, 2), home=home))
    return answer


def test_a_partner_cannot_answer_a_query_in_another_partners_name(keys, tmp_path):
    world = World(keys, {"rogue": _claims(hcid("dod")), "dod": _claims(hcid("dod"))}, tmp=tmp_path)
    correlate(world, ["rogue", "dod"])
    result = run(world.gw.query(LOCAL.cx, CTX))
    homes = sorted(o.get("home") for o in result.objects)
    assert homes == sorted([hcid("dod")] * 2 + [hcid("rogue")] * 2), homes


def test_a_partner_may_name_its_own_member_communities(keys, tmp_path):
    member = "urn:oid:1.3.6.1.4.1.21367.2026.7.9999.1"
    world = World(keys, {"hie": _claims(member)}, tmp=tmp_path,
                  options={"hie": {"communities": [hcid("hie"), member]}})
    correlate(world, ["hie"])
    result = run(world.gw.query(LOCAL.cx, CTX))
    assert {o.get("home") for o in result.objects} == {member}


def test_a_partner_cannot_return_documents_in_another_partners_name(keys, tmp_path):
    uid = f"2.25.{uuid.uuid4().int}"
    lying = retrieve_answer({uid: b"<ClinicalDocument/>"}, hcid("dod"), "1.2.3")  # claims the DoD's community
    world = World(keys, {"rogue": lying, "dod": lying}, tmp=tmp_path)
    result = run(world.gw.retrieve([xdsb.DocumentRequest("1.2.3", uid, hcid("rogue"))], CTX,
                                   spool_dir=tmp_path / "spool"))
    assert [d.home_community_id for d in result.documents] == [hcid("rogue")]


def test_a_partners_oversized_patient_id_is_not_stored_and_breaks_nothing(keys, tmp_path, backend):
    """XCPD discovery: a partner answering with a patient id too long for the correlation table
    (PostgreSQL raised StringDataRightTruncation out of `discover`) is reported, not stored."""
    from tests.conftest import _database_url
    from tests.gateway.test_gateway_unit import ALEX, xcpd_answer
    from xds_node.db import make_engine
    from xds_node.patients.index import PatientIndex
    from xds_node.patients.model import Patient

    url = _database_url(backend, tmp_path)
    engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    index = PatientIndex(engine)
    index.create_schema()
    index.add(Patient(LOCAL.cx, ALEX))
    huge = Patient("H" * 300 + "^^^&2.16.840.1.113883.3.1&ISO", ALEX)
    world = World(keys, {"big": xcpd_answer(huge)}, tmp=tmp_path, patients=index)
    try:
        result = run(world.gw.discover(ALEX, CTX, local_patient_id=LOCAL.cx))
        (m,) = result.matches
        assert not m.stored and "unusable patient id" in m.reason
        assert index.correlations_for(LOCAL.cx) == []
    finally:
        engine.dispose()
