"""Every internal action, ITI-51 included, refuses the callers it must refuse: anonymous from
another host, a partner's signed assertion, a partner's TLS certificate; and each refusal is an
audited denial that names the transaction."""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding

from tests import factories as f
from tests.attack.test_audit_fails_closed_everywhere import _multi_patient
from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import find_documents
from tests.responding.test_trust_boundary import Caller, register_request, retrieve_request
from xds_node.ebxml import vocabulary as v
from xds_node.security.keys import load_key_and_cert


def test_internal_actions_refuse_outsiders_and_partners(world):
    node, granted, revoked, docs = world
    keys = node.settings.keys_dir
    partner = Requester.demo_partner(keys)
    _k, pcert = load_key_and_cert(keys / "demo-partner.key.pem", keys / "demo-partner.cert.pem")
    everyone = [p for p in (granted, revoked)]
    actions = [("/xds/registry", v.Action.ITI51, lambda: _multi_patient(everyone)),
               ("/xds/registry", v.Action.ITI51, lambda: _multi_patient([])),
               ("/xds/registry", v.Action.ITI18, lambda: find_documents(granted)),
               ("/xds/registry", v.Action.ITI42, lambda: register_request(f.patient(990))),
               ("/xds/repository", v.Action.ITI43, lambda: retrieve_request(node, docs[granted])),
               ("/ig/registry", v.Action.ITI18, lambda: find_documents(granted)),
               ("/ig/repository", v.Action.ITI43, lambda: retrieve_request(node, docs[granted]))]
    callers = [("anonymous outsider", Caller(node.app()), lambda: []),
               ("partner SAML", Caller(node.app()), lambda: [partner.header()]),
               ("partner TLS", Caller(node.app(), client_cert=pcert.public_bytes(Encoding.DER)), lambda: []),
               ("partner TLS + SAML", Caller(node.app(), client_cert=pcert.public_bytes(Encoding.DER)),
                lambda: [partner.header()])]
    before = node.registry_store.count("doc")
    try:
        for who, caller, headers in callers:
            for path, action, body in actions:
                reply = caller.call(path, action, body(), headers=headers())
                where = (who, path, action.rsplit(":", 1)[-1])
                assert reply.is_fault and reply.fault_code.endswith("Sender") and reply.http_status == 400, where
                assert not any(u.encode() in reply.raw for p in everyone for u in docs[p]), where
                assert b"VET" not in reply.raw, where
    finally:
        for _, caller, _ in callers:
            caller.close()
    assert node.registry_store.count("doc") == before
    denied = node.audit.list(outcome="denied")
    assert len(denied) == len(callers) * len(actions)
    assert sum(e.transaction == "ITI-51" for e in denied) == 2 * len(callers)
    assert not node.audit.list(outcome="success")
