"""The resend window is not a way around consent or replay: a byte-identical resend is answered
anew (consent read again), and any other reuse of the Security header is refused."""

from __future__ import annotations

from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import find_documents
from tests.responding.test_trust_boundary import Caller, get_all
from xds_node.ebxml import vocabulary as v
from xds_node.soap.envelope import build_request


def _bytes(body, header) -> tuple[bytes, str]:
    """One message (build_request gives each a fresh wsa:MessageID)."""
    payload, ct, _ = build_request(v.Action.ITI38, body, to="http://testserver/xca/query", headers=[header])
    return payload if isinstance(payload, bytes) else b"".join(payload), ct


def test_a_resend_after_revocation_discloses_nothing(world):
    node, granted, _revoked, docs = world
    partner = Requester.demo_partner(node.settings.keys_dir)
    c = Caller(node.app())
    try:
        data, ct = _bytes(find_documents(granted), partner.header())
        first = c.post_raw("/xca/query", data, ct)
        assert first.status == v.ResponseStatus.SUCCESS and first.objects("ExtrinsicObject")
        node.consent_store.revoke(granted, source="online")
        again = c.post_raw("/xca/query", data, ct)  # the peer "lost" our answer and resends
        assert not again.is_fault and again.error_codes == [v.ErrorCode.UNKNOWN_PATIENT_ID]
        assert not again.objects("ExtrinsicObject") and not any(u.encode() in again.raw for u in docs[granted])
    finally:
        c.close()
    rows = node.audit.list(transaction="ITI-38")
    assert sorted(e.outcome for e in rows) == ["failure", "success"]
    assert any("resend" in e.reason and "withheld" in e.reason for e in rows)


def test_the_same_header_with_a_new_message_id_or_another_query_is_refused(world):
    node, granted, revoked, _docs = world
    node.consent_store.grant(revoked, source="online")  # both may be disclosed: only replay can refuse
    partner = Requester.demo_partner(node.settings.keys_dir)
    header = partner.header()
    c = Caller(node.app())
    try:
        data, ct = _bytes(find_documents(granted), header)
        assert c.post_raw("/xca/query", data, ct).status == v.ResponseStatus.SUCCESS
        for body in (find_documents(granted), find_documents(revoked), get_all(granted)):
            other, ct = _bytes(body, header)  # same query with a new MessageID, another patient, another query
            reply = c.post_raw("/xca/query", other, ct)
            assert reply.is_fault and b"replayed" in reply.raw, reply.raw[:300]
            assert not reply.objects("ExtrinsicObject")
        # resends are bounded too (default three), then the same bytes are a replay
        assert [c.post_raw("/xca/query", data, ct).is_fault for _ in range(4)] == [False, False, False, True]
    finally:
        c.close()
