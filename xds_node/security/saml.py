"""SAML 2.0 assertions for eHealth Exchange (NHIN Authorization Framework, XSPA/XUA attributes):
verifying them for our responding gateway. Issuing them for our initiating gateway is
:mod:`.saml_issue` and reading a signed assertion's claims :mod:`.saml_claims`; both are re-exported
here, so ``from xds_node.security.saml import ...`` works for either direction.

Inbound, :class:`InboundVerifier` turns a ``wsse:Security`` header into a :class:`Principal` or
raises :class:`SecurityFault`. What it enforces, in order:

1. one ``wsu:Timestamp`` (Created < Expires, now inside it give or take the skew);
2. one ``saml2:Assertion``, signed (enveloped, exclusive C14N, RSA-SHA256/384/512 or ECDSA; SHA-1
   only for partners with ``allow_sha1``) with a certificate from its KeyInfo that a partner pinned
   exactly; :mod:`.xmldsig` verifies it with the *pinned* certificate under a strict profile (one
   reference, to the assertion's own unique ID; the signature right after Issuer) and from then on
   only the copy it returns, the bytes the digest covers, is read, so a decoy or moved assertion
   (signature wrapping) is never trusted;
3. Conditions, Audience, Issuer, NameID, holder-of-key SubjectConfirmation;
0. size first: an assertion larger than ``max_assertion_bytes`` or with more than
   ``max_saml_attributes`` attributes is refused before any signature work;
4. identity is the certificate's: the partner is the one whose pinned certificate verified the
   assertion signature; its Issuer must be that certificate's subject (compared as an RFC 4514 DN)
   or a name listed for the partner (``issuers``); its homeCommunityId must be one of the partner's
   member ``communities``. The XSPA attributes, each exactly once with one value; purpose of use
   allowed;
5. the message signature over the Timestamp, made with the holder-of-key key;
6. replay, in a store every worker shares (:class:`xds_node.security.replay.DatabaseReplayStore`).

Replay, and why not simply "assertion ID seen before": eHealth Exchange initiating gateways commonly
reuse one assertion for a whole user session (many messages), each message carrying a fresh
Timestamp signed with the holder-of-key key. So the replay key is the message signature (its
SignatureValue, unforgeable without the holder's private key) plus the (assertion ID, Timestamp
wsu:Id, Created) combination, remembered until the Timestamp expires, per partner. The Body is not
signed, so these keys are what ties a Security header to its message: the store also keeps the digest
of the whole request, and the same header with any other Body is refused. A byte-identical resend of
the whole message within the resend window is admitted as a resend (``Principal.resend``): the peer
lost our answer. The gateway transactions are read-only, so answering it means running the request
again, consent and audit included (audited as a resend); every other reuse is refused. A new message
under the same assertion is not a replay. ``SecurityPolicy.reject_assertion_reuse``
additionally refuses a second message under the same assertion ID, for deployments that want
one-assertion-per-message.

Caching: reused assertions would repeat the signature verification and the claims parsing. A
verified assertion's parsed claims are therefore cached, keyed by SHA-256 of its exclusive C14N (the
form its digest is computed over, with the whole Signature in it; comments are left out because
nothing here ever reads one) until its NotOnOrAfter, in a bounded LRU. Everything else runs on every
message: the assertion's ID unique in the document, Timestamp, assertion validity times, audience,
purpose, community, the holder-of-key signature over the Timestamp and replay. A cache hit also
re-checks that the signing certificate is still pinned, so removing a partner takes effect at once.
"""

from __future__ import annotations

import binascii
import contextlib
import functools
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml.etree import _Element
from sqlalchemy.exc import SQLAlchemyError

from .principal import NHIN_PURPOSE, Principal
from .replay import MemoryReplayStore, ReplayKey, ReplayRefused, ReplayStore, ReplayUnavailable
from .saml_claims import (
    MAX_CERT_B64,
    MAX_KEYINFO_CERTS,
    _bad_token,
    _Claims,
    _parse_claims,
)
from .saml_issue import (  # the shared names and the issuing half, re-exported
    AC_X509,
    ATTR_HOME_COMMUNITY_ID,
    ATTR_NPI,
    ATTR_ORGANIZATION,
    ATTR_ORGANIZATION_ID,
    ATTR_PURPOSE_OF_USE,
    ATTR_RESOURCE_ID,
    ATTR_ROLE,
    ATTR_SUBJECT_ID,
    ATTRNAME_URI,
    CM_BEARER,
    CM_HOLDER_OF_KEY,
    CM_SENDER_VOUCHES,
    HL7,
    NAMEID_UNSPECIFIED,
    NAMEID_X509,
    XSI,
    RequesterContext,
    _LegacySigner,  # noqa: F401  (re-exported)
    _q,
    build_assertion,
    sign_assertion,
    unsigned_assertion,
)
from .trust import Partner, TrustStore, fingerprint
from .wss import (
    DS,
    WSSE,
    PublicKey,
    ReplayCache,
    SecurityFault,
    Timestamp,
    b64decode_strict,
    check_timestamp,
    read_timestamp,
    utcnow,
    verify_message_signature,
)
from .xmldsig import exc_c14n, key_info_certificates, reference_prefixes, unique_id, verify_assertion

__all__ = [
    "AC_X509",
    "ATTRNAME_URI",
    "ATTR_HOME_COMMUNITY_ID",
    "ATTR_NPI",
    "ATTR_ORGANIZATION",
    "ATTR_ORGANIZATION_ID",
    "ATTR_PURPOSE_OF_USE",
    "ATTR_RESOURCE_ID",
    "ATTR_ROLE",
    "ATTR_SUBJECT_ID",
    "CM_BEARER",
    "CM_HOLDER_OF_KEY",
    "CM_SENDER_VOUCHES",
    "HL7",
    "NAMEID_UNSPECIFIED",
    "NAMEID_X509",
    "XSI",
    "InboundVerifier",
    "RequesterContext",
    "SecurityFault",
    "SecurityPolicy",
    "build_assertion",
    "sign_assertion",
    "unsigned_assertion",
]

log = logging.getLogger(__name__)


# --- policy ----------------------------------------------------------------------------------
@dataclass
class SecurityPolicy:
    """What an inbound request must satisfy beyond a valid signature. Defaults are the strict ones."""

    allowed_purposes: frozenset[str] = frozenset({"TREATMENT"})
    #: Code systems a purpose-of-use code may come from (NHIN purpose by default).
    purpose_code_systems: frozenset[str] = frozenset({NHIN_PURPOSE})
    clock_skew: timedelta = timedelta(minutes=5)
    #: When set, the assertion must carry an AudienceRestriction naming it.
    audience: str | None = None
    #: False accepts bearer / sender-vouches assertions; the Timestamp must then be signed with the
    #: partner's pinned certificate (the sender vouches) instead of the holder-of-key key.
    require_holder_of_key: bool = True
    max_assertion_lifetime: timedelta | None = timedelta(hours=8)
    #: Timestamps that claim to stay valid longer than this are refused (they bloat the replay cache).
    max_timestamp_lifetime: timedelta | None = timedelta(hours=1)
    #: Refuse a second message carrying an assertion ID already seen (see the module docstring).
    reject_assertion_reuse: bool = False
    #: Largest assertion (exclusive C14N bytes) looked at; larger is refused before signature work.
    max_assertion_bytes: int = 64 * 1024
    #: Most saml2:Attribute elements an assertion may carry.
    max_saml_attributes: int = 64

    @classmethod
    def from_settings(cls, settings: Any) -> SecurityPolicy:
        """Build from :class:`xds_node.config.Settings` (allowed_purposes, clock_skew_seconds, audience,
        max_assertion_bytes, max_saml_attributes)."""
        return cls(
            allowed_purposes=frozenset(settings.allowed_purposes),
            clock_skew=timedelta(seconds=settings.clock_skew_seconds),
            audience=settings.audience or None,
            max_assertion_bytes=getattr(settings, "max_assertion_bytes", 64 * 1024),
            max_saml_attributes=getattr(settings, "max_saml_attributes", 64),
        )


@dataclass(frozen=True)
class _Verified:
    claims: _Claims
    fingerprint: str
    signer_key: PublicKey
    used_sha1: bool
    signer_cert: x509.Certificate | None = None


@functools.lru_cache(maxsize=256)
def _der_fingerprint(b64_der: str) -> str:
    """SHA-256 of a KeyInfo certificate, remembered by its base64 text (a partner sends the same
    certificate in every assertion; at most 256 x MAX_CERT_B64 characters are kept)."""
    return hashlib.sha256(b64decode_strict(b64_der)).hexdigest()


def _valid_at(cert: x509.Certificate, now: datetime) -> bool:
    """The pinned certificate's own validity period holds ``now`` (pinning does not outlive it)."""
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


# --- inbound: the verifier --------------------------------------------------------------------
@dataclass
class _CacheStats:
    hits: int = 0
    misses: int = 0


@dataclass
class _AssertionCache:
    """Bounded LRU of verified assertions, each kept until its own expiry. Thread-safe."""

    max_entries: int = 1024
    _data: OrderedDict[str, tuple[datetime, _Verified]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: str, now: datetime) -> _Verified | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            if item[0] <= now:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return item[1]

    def put(self, key: str, expires: datetime, value: _Verified) -> None:
        with self._lock:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A refusal is logged and raised as it is. Replay state that cannot be written (the database
    is down or full) is :class:`ReplayUnavailable`: the caller's message may be fine, so it is told
    to retry (a 503), not that its security header is wrong. Any other error becomes a short, safe
    refusal (an internal error's text could leak paths or data) and is logged in full."""
    try:
        yield
    except SecurityFault as fault:
        log.info("inbound security refused: %s", fault)
        raise
    except (ReplayUnavailable, SQLAlchemyError) as exc:
        log.error("replay state unavailable: message not admitted (%s)", exc)
        raise ReplayUnavailable("replay state unavailable") from exc
    except Exception:
        log.exception("inbound security check failed unexpectedly")
        raise SecurityFault("wsse:InvalidSecurity", "security header not acceptable") from None


class Checked:
    """A message that passed every check but replay: admitting it records its replay keys."""

    __slots__ = ("_digest", "_keys", "_now", "_partner", "_store", "principal")

    def __init__(self, principal: Principal, store: ReplayStore | ReplayCache, partner: str,
                 keys: list[ReplayKey], request_digest: str | None, now: datetime) -> None:
        self.principal = principal
        self._store, self._partner, self._keys, self._digest, self._now = store, partner, keys, request_digest, now

    def admit(self) -> Principal:
        """Record the replay keys in their own transaction; the requester, or :class:`SecurityFault`."""
        with _refusals(), _replays():
            return self._principal(self._store.admit(self._partner, self._keys, self._digest, self._now))

    async def admit_async(self) -> Principal:
        """:meth:`admit` through the store's group commit when it has one (the request path)."""
        admit_async = getattr(self._store, "admit_async", None)
        if admit_async is None:
            return self.admit()
        with _refusals(), _replays():
            return self._principal(await admit_async(self._partner, self._keys, self._digest, self._now))

    def _principal(self, resend: bool) -> Principal:
        return replace(self.principal, resend=True) if resend else self.principal


@contextlib.contextmanager
def _replays() -> Iterator[None]:
    """The store's refusal ("replayed", "replay quota exceeded") as the SecurityFault partners get."""
    try:
        yield
    except ReplayRefused as refused:
        raise SecurityFault("wsse:FailedAuthentication", refused.reason) from None


class InboundVerifier:
    """Verifies the ``wsse:Security`` header of inbound requests (see the module docstring)."""

    def __init__(
        self,
        trust: TrustStore,
        policy: SecurityPolicy | None = None,
        *,
        replay_cache: ReplayStore | ReplayCache | None = None,
        clock: Callable[[], datetime] = utcnow,
        cache_size: int = 1024,
    ) -> None:
        """``replay_cache``: where replay keys live; a node passes a
        :class:`~xds_node.security.replay.DatabaseReplayStore` (shared by every worker). The default,
        one process's memory, is for tools and unit tests."""
        self.trust = trust
        self.policy = policy or SecurityPolicy()
        self.clock = clock
        self.replay_cache: ReplayStore | ReplayCache = (
            replay_cache if replay_cache is not None else MemoryReplayStore())
        self._cache = _AssertionCache(max_entries=cache_size)
        self.cache_stats = _CacheStats()

    def verify(self, security_header: _Element, envelope: _Element | None = None, *,
               request_digest: str | None = None) -> Principal:
        """Return the requester, or raise :class:`SecurityFault` with a short, safe reason.

        ``request_digest`` is the SHA-256 of the whole request as received
        (:attr:`xds_node.soap.envelope.SoapRequest.raw_digest`); without it no message is ever
        taken for a resend, so every reuse of a Security header is refused."""
        return self.check(security_header, envelope, request_digest=request_digest).admit()

    def check(self, security_header: _Element, envelope: _Element | None = None, *,
              request_digest: str | None = None) -> Checked:
        """Every check but replay: the caller admits the result (:meth:`Checked.admit` or, on the
        request path, :meth:`Checked.admit_async`, which shares a group-commit round) once its
        own checks (role, TLS binding) have passed too."""
        with _refusals():
            return self._check(security_header, envelope, request_digest)

    # -- steps --
    def _check(self, security: _Element, envelope: _Element | None, request_digest: str | None) -> Checked:
        if not isinstance(security.tag, str) or security.tag != f"{{{WSSE}}}Security":
            raise SecurityFault("wsse:InvalidSecurity", "Security header missing")
        policy = self.policy
        now = self.clock()
        ts = read_timestamp(security)
        check_timestamp(ts, now, policy.clock_skew, policy.max_timestamp_lifetime)

        assertions = list(security.iter(_q("Assertion")))
        if len(assertions) != 1 or assertions[0].getparent() is not security:
            raise SecurityFault("wsse:InvalidSecurity", "expected one assertion")
        if sum(1 for _ in assertions[0].iter(_q("Attribute"))) > policy.max_saml_attributes:
            raise _bad_token("too many attributes")
        verified, partner = self._verified_assertion(assertions[0], now)
        claims = verified.claims
        self._check_claims(claims, partner, now, verified.signer_cert)

        key = claims.hok_key if claims.hok_key is not None else verified.signer_key
        root = envelope if envelope is not None else security.getroottree().getroot()
        msg = verify_message_signature(security, root, ts, key, allow_sha1=partner.allow_sha1)
        if msg.token_ref != claims.assertion_id:
            raise SecurityFault("wsse:SecurityTokenUnavailable", "signing token not found")

        principal = Principal(
            subject_id=claims.subject_id,
            organization=claims.organization,
            organization_id=claims.organization_id,
            home_community_id=claims.home_community_id,
            role=claims.role,
            purpose_of_use=claims.purpose_of_use,
            npi=claims.npi,
            resource_id=claims.resource_id,
            partner=partner.name,
            assertion_id=claims.assertion_id,
            issuer=claims.issuer,
            name_id=claims.name_id,
            not_on_or_after=claims.not_on_or_after,
        )
        return Checked(principal, self.replay_cache, partner.name, self._replay_keys(claims, ts, msg.signature_value),
                       request_digest, now)

    def _verified_assertion(self, assertion: _Element, now: datetime) -> tuple[_Verified, Partner]:
        prefixes = reference_prefixes(assertion)
        canonical = exc_c14n(assertion, prefixes)
        if len(canonical) > self.policy.max_assertion_bytes:
            raise _bad_token("assertion too large")
        cache_key = hashlib.sha256(canonical).hexdigest()
        hit = self._cache.get(cache_key, now)
        if hit is not None:
            if not unique_id(assertion):  # another element claims its ID (a miss checks it in verify_assertion)
                raise SecurityFault("wsse:FailedCheck", "assertion signature invalid")
            partner = self.trust.partner_for_fingerprint(hit.fingerprint)
            if partner is not None and (partner.allow_sha1 or not hit.used_sha1):
                self.cache_stats.hits += 1
                return hit, partner
        self.cache_stats.misses += 1
        verified, partner = self._verify_assertion_signature(assertion, now, (prefixes, canonical))
        expires = verified.claims.not_on_or_after + self.policy.clock_skew
        if expires > now:
            self._cache.put(cache_key, expires, verified)
        return verified, partner

    def _verify_assertion_signature(self, assertion: _Element, now: datetime,
                                    canonical: tuple[list[str] | None, bytes] | None = None,
                                    ) -> tuple[_Verified, Partner]:
        sigs = assertion.findall(f"{{{DS}}}Signature")
        if not sigs:
            raise _bad_token("assertion not signed")
        if len(sigs) > 1:
            raise _bad_token("assertion malformed")
        first = next((c for c in assertion if isinstance(c.tag, str)), None)
        if first is None or first.tag != _q("Issuer"):  # SAML core: Issuer first, the Signature next
            raise _bad_token("assertion issuer missing")
        # The signing certificate: only a hint for which pinned certificate to verify with.
        certs = key_info_certificates(sigs[0])
        if not certs:
            raise _bad_token("signing certificate missing")
        if len(certs) > MAX_KEYINFO_CERTS:
            raise _bad_token("too many certificates")
        partner = pinned = None
        for raw in certs:
            if len(raw) > MAX_CERT_B64:
                raise _bad_token("signing certificate not acceptable")
            try:
                fp = _der_fingerprint(raw)
            except (binascii.Error, ValueError):
                raise _bad_token("signing certificate not acceptable") from None
            partner = self.trust.partner_for_fingerprint(fp)
            if partner is not None:
                # (fingerprints of pinned certificates are remembered: no hashing per request)
                pinned = next((pc for pc in partner.certificates if fingerprint(pc) == fp), None)
                break
        if partner is None or pinned is None:
            raise SecurityFault("wsse:FailedAuthentication", "unknown signer")
        if not _valid_at(pinned, now):
            raise SecurityFault("wsse:FailedAuthentication", "signing certificate not valid")
        signer_key = pinned.public_key()
        if not isinstance(signer_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise SecurityFault("wsse:FailedAuthentication", "signing certificate not valid")
        # The profile-limited verifier (see :mod:`.xmldsig`): from here on only its signed copy counts.
        result = verify_assertion(assertion, signer_key, allow_sha1=partner.allow_sha1, canonical=canonical)
        signed = result.signed
        if signed.tag != _q("Assertion") or signed.get("ID") != assertion.get("ID"):
            raise SecurityFault("wsse:FailedCheck", "assertion signature invalid")
        claims = _parse_claims(signed)
        return _Verified(claims, fingerprint(pinned), signer_key, result.used_sha1, pinned), partner

    def _check_claims(self, c: _Claims, partner: Partner, now: datetime,
                      signer: x509.Certificate | None = None) -> None:
        policy, skew = self.policy, self.policy.clock_skew
        if not partner.accepts_issuer(c.issuer, signer):
            raise SecurityFault("wsse:FailedAuthentication", "issuer is not the signer")
        if now >= c.not_on_or_after + skew or (
            c.hok_not_on_or_after is not None and now >= c.hok_not_on_or_after + skew
        ):
            raise _bad_token("assertion expired")
        if (c.not_before is not None and now < c.not_before - skew) or now < c.issue_instant - skew:
            raise _bad_token("assertion not yet valid")
        start = c.not_before or c.issue_instant
        if c.not_on_or_after <= start:
            raise _bad_token("assertion malformed")
        if policy.max_assertion_lifetime is not None and c.not_on_or_after - start > policy.max_assertion_lifetime:
            raise _bad_token("assertion lifetime too long")
        if policy.audience is not None and (
            not c.audiences or any(policy.audience not in group for group in c.audiences)
        ):
            raise SecurityFault("wsse:FailedAuthentication", "audience not accepted")
        if c.hok_key is None:
            if policy.require_holder_of_key:
                raise _bad_token("holder-of-key confirmation required")
            if not c.methods & {CM_BEARER, CM_SENDER_VOUCHES}:
                raise _bad_token("subject confirmation missing")
        if (
            c.purpose_of_use.code not in policy.allowed_purposes
            or c.purpose_of_use.code_system not in policy.purpose_code_systems
        ):
            raise SecurityFault("wsse:FailedAuthentication", "purpose of use not permitted")
        if not partner.accepts_community(c.home_community_id):
            raise SecurityFault("wsse:FailedAuthentication", "home community not accepted")

    def _replay_keys(self, c: _Claims, ts: Timestamp, signature_value: bytes) -> list[ReplayKey]:
        """The message's replay keys (see the module docstring)."""
        ts_until = ts.expires + self.policy.clock_skew
        keys = [
            ReplayKey(f"sig:{hashlib.sha256(signature_value).hexdigest()}", ts_until),
            ReplayKey(f"ts:{c.assertion_id}|{ts.id}|{ts.created.isoformat()}", ts_until),
        ]
        if self.policy.reject_assertion_reuse:
            keys.append(ReplayKey(f"assertion:{c.assertion_id}", c.not_on_or_after + self.policy.clock_skew))
        return keys
