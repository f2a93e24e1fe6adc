"""A partner's signed ITI-38 over HTTP against a live node (demo-partner's key, a fresh assertion
per request): did the answer disclose any document of the patient?"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.responding.requester import Requester
from tests.responding.test_responding_gateway import find_documents
from tests.soapkit import _parse
from xds_node.ebxml import vocabulary as v
from xds_node.soap.envelope import build_request


def partner_iti38(url: str, keys_dir: Path, patient: str):
    requester = Requester.demo_partner(keys_dir)
    payload, ct, _ = build_request(v.Action.ITI38, find_documents(patient), to=url + "/xca/query",
                                   headers=[requester.header()])
    if not isinstance(payload, bytes):
        payload = b"".join(payload)
    with httpx.Client(timeout=60) as client:
        reply = _parse(client.post(url + "/xca/query", content=payload, headers={"Content-Type": ct}))
    assert reply.http_status == 200 and not reply.is_fault, reply.raw[:600]
    return reply


def disclosed(url: str, keys_dir: Path, patient: str) -> int:
    """How many documents a partner's ITI-38 for ``patient`` got back (0: refused as unknown)."""
    reply = partner_iti38(url, keys_dir, patient)
    found = reply.objects("ExtrinsicObject")
    if not found:
        assert reply.error_codes == [v.ErrorCode.UNKNOWN_PATIENT_ID], reply.raw[:600]
    return len(found)
