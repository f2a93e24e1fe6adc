"""XCPD "query and feed": a partner may record its own id for one of our patients, but only for
the community it authenticated as (the verified homeCommunityId of its assertion), never for a
community it merely names in the HL7 body's sender element."""

from __future__ import annotations

from tests.responding.requester import Requester
from tests.responding.test_trust_boundary import Caller
from xds_node.admin import DEMO_PARTNER_HCID
from xds_node.ebxml import vocabulary as v
from xds_node.gateway.initiating import build_xcpd_query
from xds_node.patients.model import PatientId

OTHER_COMMUNITY = "urn:oid:1.2.3.777.1"  # another partner's community (not the caller's)


def _xcpd(node, pid: str, sender_community: str, remote: PatientId):
    demo = node.patients.get(pid).demographics
    return build_xcpd_query(demo, our_community=sender_community, partner_community=node.settings.home_community_id,
                            local_patient_id=remote)


def _code(reply) -> str:
    return reply.body.find(".//{urn:hl7-org:v3}queryAck/{urn:hl7-org:v3}queryResponseCode").get("code")


def test_a_partner_cannot_plant_a_correlation_for_another_community(world):
    node, granted, _revoked, _docs = world
    partner = Requester.demo_partner(node.settings.keys_dir)
    c = Caller(node.app())
    try:
        forged = _xcpd(node, granted, OTHER_COMMUNITY, PatientId("MALLORY-1", "1.2.3.777.1.5"))
        reply = c.call("/xcpd", v.Action.ITI55, forged, headers=[partner.header()])
        assert not reply.is_fault, reply.raw[:400]
        communities = {corr.community_id for corr in node.patients.correlations_for(granted)}
        assert OTHER_COMMUNITY not in communities  # our /ig/* queries for this veteran would go there
        # the partner's own community (the one its assertion verified) is still recorded
        own = _xcpd(node, granted, DEMO_PARTNER_HCID, PatientId("DEMO-42", "1.3.6.1.4.1.21367.2026.2.1.5"))
        reply = c.call("/xcpd", v.Action.ITI55, own, headers=[partner.header()])
        assert _code(reply) == "OK"
        (corr,) = node.patients.correlations_for(granted)
        assert corr.community_id == DEMO_PARTNER_HCID and corr.remote_cx.startswith("DEMO-42^")
    finally:
        c.close()


def test_an_oversized_initiator_patient_id_is_not_a_500(world_both):
    """The partner's own id for our patient (query-and-feed) is the partner's text: a value that
    does not fit the correlation table is answered (the match) without recording it, never a 500."""
    node, granted, _revoked, _docs = world_both
    partner = Requester.demo_partner(node.settings.keys_dir)
    c = Caller(node.app())
    try:
        for remote in (PatientId("X" * 5000, "1.3.6.1.4.1.21367.2026.2.1.5"), PatientId("R-1", "1." * 400 + "1")):
            reply = c.call("/xcpd", v.Action.ITI55, _xcpd(node, granted, DEMO_PARTNER_HCID, remote),
                           headers=[partner.header()])
            assert reply.http_status == 200 and _code(reply) == "OK", reply.raw[:300]
    finally:
        c.close()
    assert node.patients.correlations_for(granted) == []
    assert [e.outcome for e in node.audit.list(transaction="ITI-55")] == ["success", "success"]
