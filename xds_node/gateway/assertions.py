"""Signed SAML assertions for outbound calls, reused per requester and partner audience.

Signing an assertion (C14N + RSA) costs more than everything else in a partner call, so one is
signed per (requester, audience, algorithm, NameFormat) and reused until shortly before it
expires; each message still carries its own freshly signed Timestamp
(:func:`xds_node.security.wss.security_header_bytes`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree
from lxml.etree import _Element

from xds_node.security.saml import ATTRNAME_URI, RequesterContext, sign_assertion, unsigned_assertion
from xds_node.security.wss import SAML2, utcnow

__all__ = ["AssertionCache"]


@dataclass
class _Cached:
    assertion: _Element
    renew_at: datetime
    #: the assertion serialized once, spliced as bytes into every message's header
    xml: bytes = b""


class AssertionCache:
    """Signed assertions reused per (requester, audience, algorithm, NameFormat) for their lifetime.

    An assertion is renewed ``margin`` before it expires so a slow partner never receives one that
    runs out while the message travels. ``signed`` / ``reused`` count for the benchmark.
    """

    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate, *, issuer: str,
                 lifetime: timedelta = timedelta(minutes=30), margin: timedelta = timedelta(minutes=2),
                 max_entries: int = 1024) -> None:
        self.key = key
        self.cert = cert
        self.issuer = issuer
        self.lifetime = lifetime
        self.margin = min(margin, lifetime / 2)
        self.max_entries = max_entries
        self._cache: dict[tuple, _Cached] = {}
        self.signed = 0
        self.reused = 0
        self.sign_seconds = 0.0

    def get(self, ctx: RequesterContext, *, audience: str | None = None, sha1: bool = False,
            name_format: str = ATTRNAME_URI, now: datetime | None = None) -> _Element:
        return self._entry(ctx, audience=audience, sha1=sha1, name_format=name_format, now=now).assertion

    def get_serialized(self, ctx: RequesterContext, *, audience: str | None = None, sha1: bool = False,
                       name_format: str = ATTRNAME_URI, now: datetime | None = None) -> tuple[str, bytes]:
        """(assertion ID, its bytes): what a template-built Security header needs, serialized once."""
        entry = self._entry(ctx, audience=audience, sha1=sha1, name_format=name_format, now=now)
        if not entry.xml:
            entry.xml = etree.tostring(entry.assertion, with_tail=False)
        return entry.assertion.get("ID") or "", entry.xml

    def _entry(self, ctx: RequesterContext, *, audience: str | None, sha1: bool, name_format: str,
               now: datetime | None) -> _Cached:
        now = now or utcnow()
        # a flat key (dataclasses.astuple deep-copies, which costs more than the lookup it serves)
        key = (ctx.subject_id, ctx.organization, ctx.organization_id, ctx.home_community_id, tuple(ctx.role),
               tuple(ctx.purpose_of_use), ctx.npi, ctx.resource_id, ctx.audience, ctx.name_id,
               audience, sha1, name_format)
        hit = self._cache.get(key)
        if hit is not None and now < hit.renew_at:
            self.reused += 1
            return hit
        started = time.perf_counter()
        if audience and ctx.audience != audience:
            ctx = replace(ctx, audience=audience)
        a = unsigned_assertion(ctx, self.cert, issuer=self.issuer, lifetime=self.lifetime, now=now)
        if name_format != ATTRNAME_URI:
            for attr in a.iter(f"{{{SAML2}}}Attribute"):
                attr.set("NameFormat", name_format)
        a = sign_assertion(a, self.key, self.cert, sha1=sha1)
        self.sign_seconds += time.perf_counter() - started
        self.signed += 1
        if len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if now < v.renew_at}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        entry = self._cache[key] = _Cached(a, now + self.lifetime - self.margin)
        return entry
