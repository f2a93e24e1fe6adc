"""The XCPD patient index and documents: a document registered under a *new* patient id whose
recordTarget copies a veteran's demographics must not take the veteran out of discovery.

It did: the index accepted the newcomer (documents may create patients), matching then found two
equally good candidates, and because the veteran consented the answer was AE/AnswerNotAvailable.
Now only an authenticated internal client's documents feed the index (the issue: demographics come
from `patients add|import` and from documents registered by trusted internal clients); the
anonymous loopback caller's are registered but never shape matching."""

from __future__ import annotations

import uuid

from tests.patients.test_patients_trust import VET_ROOT, sample, xcpd_request
from tests.repository.test_provide_and_retrieve import provide
from tests.responding.requester import Requester
from tests.responding.test_trust_boundary import Caller
from xds_node.cda import extract_metadata
from xds_node.ebxml import vocabulary as v
from xds_node.patients.index import demographics_from_cda
from xds_node.patients.model import cx
from xds_node.repository.ingest import submission_for

H = "{urn:hl7-org:v3}"


def _xcpd(c, partner, demo) -> tuple[str, list[str]]:
    reply = c.call("/xcpd", v.Action.ITI55, xcpd_request(demo), headers=[partner.header()])
    code = reply.body.find(f".//{H}queryAck/{H}queryResponseCode").get("code")
    return code, [i.get("extension") for i in reply.body.iter(f"{H}id") if i.getparent().tag == f"{H}patient"]


def test_a_clone_under_a_new_id_does_not_hide_the_veteran(world):
    node, _granted, _revoked, _docs = world
    node.consent_store.grant(cx("VET0002", VET_ROOT), source="paper form")
    original = sample("VET0002")
    _, real = demographics_from_cda(original)
    partner = Requester.demo_partner(node.settings.keys_dir)
    outside, local = Caller(node.app()), Caller(node.app(), address="127.0.0.1")
    try:
        assert _xcpd(outside, partner, real) == ("OK", ["VET0002"])
        clone = original.replace(b'extension="VET0002"', b'extension="VET0666"')
        entry = extract_metadata(clone, source_name="clone.xml")
        entry.id = f"Document-{uuid.uuid4().hex}"
        entry.unique_id = f"2.25.{uuid.uuid4().int}"
        reply = provide(local, submission_for(entry, source_id="1.3.6.1.4.1.21367.2026.1.77"), {entry.id: clone})
        assert reply.body.get("status") == v.ResponseStatus.SUCCESS, reply.raw[-800:]
        assert _xcpd(outside, partner, real) == ("OK", ["VET0002"])
    finally:
        outside.close()
        local.close()
