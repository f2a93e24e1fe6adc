"""A partner's side of the wire for tests: keys, a requester context, signed WS-Security headers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from lxml import etree

from xds_node.admin import DEMO_PARTNER_HCID
from xds_node.security.keys import load_key_and_cert
from xds_node.security.saml import RequesterContext, sign_assertion, unsigned_assertion
from xds_node.security.wss import build_security_header

TREATMENT = ("TREATMENT", "2.16.840.1.113883.3.18.7.1", "Treatment")
DOCTOR = ("112247003", "2.16.840.1.113883.6.96", "Medical doctor")


@dataclass
class Requester:
    key: object
    cert: object
    ctx: RequesterContext

    @classmethod
    def demo_partner(cls, keys_dir) -> Requester:
        key, cert = load_key_and_cert(keys_dir / "demo-partner.key.pem", keys_dir / "demo-partner.cert.pem")
        ctx = RequesterContext(subject_id="Dr. Demo Clinician", organization="Demo Partner Hospital",
                               organization_id="urn:oid:1.3.6.1.4.1.21367.2026.2", home_community_id=DEMO_PARTNER_HCID,
                               role=DOCTOR, purpose_of_use=TREATMENT)
        return cls(key, cert, ctx)

    def header(self, *, mutate: Callable[[etree._Element], None] | None = None, now: datetime | None = None,
               lifetime: timedelta = timedelta(minutes=5), unsigned: bool = False, **ctx_changes) -> etree._Element:
        """A fresh wsse:Security header; ``mutate`` edits the assertion before it is signed."""
        now = now or datetime.now(UTC)
        ctx = replace(self.ctx, **ctx_changes) if ctx_changes else self.ctx
        a = unsigned_assertion(ctx, self.cert, issuer="CN=xds-node demo partner", now=now, lifetime=lifetime)
        if mutate:
            mutate(a)
        if not unsigned:
            a = sign_assertion(a, self.key, self.cert)
        return build_security_header(a, self.key, self.cert, now=now)
