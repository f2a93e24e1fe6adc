"""SAML 2.0 assertions for eHealth Exchange (NHIN Authorization Framework, XSPA/XUA attributes):
issuing them for our initiating gateway and verifying them for our responding gateway.

Inbound, :class:`InboundVerifier` turns a ``wsse:Security`` header into a :class:`Principal` or
raises :class:`SecurityFault`. What it enforces, in order:

1. one ``wsu:Timestamp`` (Created < Expires, now inside it give or take the skew);
2. one ``saml2:Assertion``, signed (enveloped, exclusive C14N, RSA-SHA256; SHA-1 only for partners
   with ``allow_sha1``) with a certificate from its KeyInfo that a partner pinned exactly; signxml
   verifies it with the *pinned* certificate and from then on only signxml's ``signed_xml`` is read,
   so a decoy or moved assertion (signature wrapping) is never trusted;
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

Caching: signature verification of the assertion (signxml: re-parsing, schema check, C14N, RSA)
dominates the cost of a request, and reused assertions make it repeat. A verified assertion's
parsed claims are therefore cached, keyed by SHA-256 of its exclusive C14N bytes (comments
included, so any byte that could matter changes the key) until its NotOnOrAfter, in a bounded LRU.
Everything else runs on every message: Timestamp, assertion validity times, audience, purpose,
community, the holder-of-key signature over the Timestamp and replay. A cache hit also re-checks that
the signing certificate is still pinned, so removing a partner takes effect at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree
from lxml.etree import _Element
from signxml import (
    DigestAlgorithm,
    InvalidCertificate,
    SignatureConfiguration,
    SignatureMethod,
    XMLSigner,
    XMLVerifier,
)

from .principal import NHIN_PURPOSE, CodedValue, Principal
from .replay import MemoryReplayStore, ReplayKey, ReplayRefused, ReplayStore
from .trust import Partner, TrustStore, fingerprint, normalize_hcid, to_certificate
from .wss import (
    DS,
    ENVELOPED,
    EXC_C14N,
    RSA_SHA1,
    SAML2,
    SHA1,
    STRONG_DIGESTS,
    STRONG_SIGNATURES,
    WSSE,
    ReplayCache,
    SecurityFault,
    Timestamp,
    _private_key,
    b64decode_strict,
    check_timestamp,
    format_datetime,
    parse_datetime,
    read_timestamp,
    safe_parser,
    text_of,
    utcnow,
    verify_message_signature,
)

__all__ = [
    "ATTR_HOME_COMMUNITY_ID",
    "ATTR_NPI",
    "ATTR_ORGANIZATION",
    "ATTR_ORGANIZATION_ID",
    "ATTR_PURPOSE_OF_USE",
    "ATTR_RESOURCE_ID",
    "ATTR_ROLE",
    "ATTR_SUBJECT_ID",
    "InboundVerifier",
    "RequesterContext",
    "SecurityFault",
    "SecurityPolicy",
    "build_assertion",
    "sign_assertion",
    "unsigned_assertion",
]

log = logging.getLogger(__name__)

XSI = "http://www.w3.org/2001/XMLSchema-instance"
HL7 = "urn:hl7-org:v3"

ATTR_SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
ATTR_ORGANIZATION = "urn:oasis:names:tc:xspa:1.0:subject:organization"
ATTR_ORGANIZATION_ID = "urn:oasis:names:tc:xspa:1.0:subject:organization-id"
ATTR_HOME_COMMUNITY_ID = "urn:nhin:names:saml:homeCommunityId"
ATTR_ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
ATTR_PURPOSE_OF_USE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
ATTR_NPI = "urn:oasis:names:tc:xspa:2.0:subject:npi"
ATTR_RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"

CM_HOLDER_OF_KEY = "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key"
CM_SENDER_VOUCHES = "urn:oasis:names:tc:SAML:2.0:cm:sender-vouches"
CM_BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
ATTRNAME_URI = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_X509 = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
AC_X509 = "urn:oasis:names:tc:SAML:2.0:ac:classes:X509"

#: Certificates we look at in an assertion's KeyInfo; more is refused, not searched.
MAX_KEYINFO_CERTS = 8
#: Largest base64 certificate we decode from KeyInfo.
MAX_CERT_B64 = 16_384
#: Holder-of-key RSA key sizes accepted (small is weak, huge is a CPU sink).
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192

_PURPOSE_TAGS = (f"{{{HL7}}}PurposeOfUse", f"{{{HL7}}}PurposeForUse")  # the latter: older NHIN specs


def _q(local: str) -> str:
    return f"{{{SAML2}}}{local}"


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


# --- outbound: issuing assertions -------------------------------------------------------------
@dataclass
class RequesterContext:
    """Who our initiating gateway is asking on behalf of: becomes the XSPA attributes."""

    subject_id: str
    organization: str
    organization_id: str
    home_community_id: str
    role: tuple[str, ...]  # (code, code_system[, display]) e.g. CodedValue
    purpose_of_use: tuple[str, ...]
    npi: str | None = None
    resource_id: str | None = None
    audience: str | None = None
    #: Subject NameID; defaults to subject_id.
    name_id: str | None = None


def _coded(value: tuple[str, ...]) -> CodedValue:
    return CodedValue(*value) if not isinstance(value, CodedValue) else value


def _b64int(n: int) -> str:
    return base64.b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).decode("ascii")


def unsigned_assertion(
    ctx: RequesterContext,
    holder_key: rsa.RSAPublicKey | x509.Certificate,
    *,
    issuer: str,
    lifetime: timedelta = timedelta(minutes=5),
    name_format: str = NAMEID_UNSPECIFIED,
    issuer_format: str = NAMEID_X509,
    now: datetime | None = None,
) -> _Element:
    """The assertion before signing (see :func:`build_assertion`); exposed so tests and tools can
    adjust it and then call :func:`sign_assertion`."""
    if isinstance(holder_key, x509.Certificate):
        holder_key = holder_key.public_key()  # type: ignore[assignment]
    if not isinstance(holder_key, rsa.RSAPublicKey):
        raise TypeError("holder-of-key must be an RSA key")
    now = now or utcnow()
    nsmap = {"saml2": SAML2, "ds": DS, "xsi": XSI}
    a = etree.Element(
        _q("Assertion"),
        {"ID": f"_{uuid.uuid4().hex}", "IssueInstant": format_datetime(now), "Version": "2.0"},
        nsmap=nsmap,
    )
    iss = etree.SubElement(a, _q("Issuer"), Format=issuer_format)
    iss.text = issuer
    etree.SubElement(a, f"{{{DS}}}Signature", Id="placeholder")

    subject = etree.SubElement(a, _q("Subject"))
    nid = etree.SubElement(subject, _q("NameID"), Format=name_format)
    nid.text = ctx.name_id or ctx.subject_id
    sc = etree.SubElement(subject, _q("SubjectConfirmation"), Method=CM_HOLDER_OF_KEY)
    scd = etree.SubElement(
        sc, _q("SubjectConfirmationData"), {f"{{{XSI}}}type": "saml2:KeyInfoConfirmationDataType"}
    )
    rsa_kv = etree.SubElement(
        etree.SubElement(etree.SubElement(scd, f"{{{DS}}}KeyInfo"), f"{{{DS}}}KeyValue"),
        f"{{{DS}}}RSAKeyValue",
    )
    numbers = holder_key.public_numbers()
    etree.SubElement(rsa_kv, f"{{{DS}}}Modulus").text = _b64int(numbers.n)
    etree.SubElement(rsa_kv, f"{{{DS}}}Exponent").text = _b64int(numbers.e)

    cond = etree.SubElement(
        a,
        _q("Conditions"),
        NotBefore=format_datetime(now),
        NotOnOrAfter=format_datetime(now + lifetime),
    )
    if ctx.audience:
        etree.SubElement(etree.SubElement(cond, _q("AudienceRestriction")), _q("Audience")).text = ctx.audience

    authn = etree.SubElement(a, _q("AuthnStatement"), AuthnInstant=format_datetime(now))
    ref = etree.SubElement(etree.SubElement(authn, _q("AuthnContext")), _q("AuthnContextClassRef"))
    ref.text = AC_X509

    stmt = etree.SubElement(a, _q("AttributeStatement"))

    def attribute(name: str) -> _Element:
        at = etree.SubElement(stmt, _q("Attribute"), Name=name, NameFormat=ATTRNAME_URI)
        return etree.SubElement(at, _q("AttributeValue"))

    attribute(ATTR_SUBJECT_ID).text = ctx.subject_id
    attribute(ATTR_ORGANIZATION).text = ctx.organization
    attribute(ATTR_ORGANIZATION_ID).text = ctx.organization_id
    attribute(ATTR_HOME_COMMUNITY_ID).text = normalize_hcid(ctx.home_community_id)
    for name, tag, value in (
        (ATTR_ROLE, "Role", _coded(ctx.role)),
        (ATTR_PURPOSE_OF_USE, "PurposeOfUse", _coded(ctx.purpose_of_use)),
    ):
        ce = etree.SubElement(attribute(name), f"{{{HL7}}}{tag}", nsmap={"hl7": HL7, "xsi": XSI})
        ce.set(f"{{{XSI}}}type", "hl7:CE")
        ce.set("code", value.code)
        ce.set("codeSystem", value.code_system)
        if value.display:
            ce.set("displayName", value.display)
    if ctx.npi:
        attribute(ATTR_NPI).text = ctx.npi
    if ctx.resource_id:
        attribute(ATTR_RESOURCE_ID).text = ctx.resource_id
    return a


class _LegacySigner(XMLSigner):
    """signxml refuses SHA-1 outright; a few legacy partners still need it, so we opt in per call."""

    def check_deprecated_methods(self) -> None:
        return None


def sign_assertion(
    assertion: _Element,
    key: rsa.RSAPrivateKey | bytes | str,
    cert: x509.Certificate | bytes | str,
    *,
    sha1: bool = False,
) -> _Element:
    """Enveloped signature (exclusive C14N) over the whole assertion, placed after Issuer as the
    SAML schema wants (a ``ds:Signature Id="placeholder"`` marks the spot; one is added if missing)."""
    if assertion.find(f"{{{DS}}}Signature[@Id='placeholder']") is None:
        issuer = assertion.find(_q("Issuer"))
        ph = etree.Element(f"{{{DS}}}Signature", Id="placeholder", nsmap={"ds": DS})
        if issuer is not None:
            issuer.addnext(ph)
        else:
            assertion.insert(0, ph)
    signer_cls = _LegacySigner if sha1 else XMLSigner
    signer = signer_cls(
        signature_algorithm="rsa-sha1" if sha1 else "rsa-sha256",
        digest_algorithm="sha1" if sha1 else "sha256",
        c14n_algorithm=EXC_C14N,
    )
    return signer.sign(assertion, key=_private_key(key), cert=[to_certificate(cert)])


def build_assertion(
    ctx: RequesterContext,
    key: rsa.RSAPrivateKey | bytes | str,
    cert: x509.Certificate | bytes | str,
    *,
    issuer: str,
    lifetime: timedelta = timedelta(minutes=5),
    sha1: bool = False,
    name_format: str = NAMEID_UNSPECIFIED,
    now: datetime | None = None,
) -> _Element:
    """A signed assertion whose holder-of-key key is ``cert``'s key, as eHealth Exchange gateways
    send it: the same organisation key signs the assertion and, per message, the Timestamp."""
    cert_obj = to_certificate(cert)
    a = unsigned_assertion(
        ctx, cert_obj, issuer=issuer, lifetime=lifetime, name_format=name_format, now=now
    )
    return sign_assertion(a, key, cert_obj, sha1=sha1)


# --- inbound: parsed claims -----------------------------------------------------------------
@dataclass(frozen=True)
class _Claims:
    """Everything we use from a verified assertion, read from signxml's ``signed_xml`` only."""

    assertion_id: str
    issuer: str
    name_id: str
    issue_instant: datetime
    not_before: datetime | None
    not_on_or_after: datetime
    audiences: tuple[tuple[str, ...], ...]
    methods: frozenset[str]
    hok_key: rsa.RSAPublicKey | None
    hok_not_on_or_after: datetime | None
    subject_id: str
    organization: str
    organization_id: str
    home_community_id: str
    role: CodedValue
    purpose_of_use: CodedValue
    npi: str | None
    resource_id: str | None


@dataclass(frozen=True)
class _Verified:
    claims: _Claims
    fingerprint: str
    signer_key: rsa.RSAPublicKey
    used_sha1: bool
    signer_cert: x509.Certificate | None = None


def _bad_token(reason: str) -> SecurityFault:
    return SecurityFault("wsse:InvalidSecurityToken", reason)


def _time_attr(el: _Element, name: str, *, required: bool) -> datetime | None:
    raw = el.get(name)
    if raw is None:
        if required:
            raise _bad_token("assertion incomplete")
        return None
    try:
        return parse_datetime(raw)
    except ValueError:
        raise _bad_token("assertion malformed") from None


def _rsa_key(n: int, e: int) -> rsa.RSAPublicKey:
    if not (MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS) or e < 3 or e.bit_length() > 64:
        raise _bad_token("holder-of-key key not acceptable")
    return rsa.RSAPublicNumbers(e, n).public_key()


def _holder_key(key_info: _Element) -> rsa.RSAPublicKey:
    """RSAKeyValue and/or one X509Certificate; when both are given they must agree."""
    kvs = key_info.findall(f"{{{DS}}}KeyValue/{{{DS}}}RSAKeyValue")
    certs = key_info.findall(f"{{{DS}}}X509Data/{{{DS}}}X509Certificate")
    if len(kvs) > 1 or len(certs) > 1 or not (kvs or certs):
        raise _bad_token("holder-of-key key not acceptable")
    keys: list[rsa.RSAPublicKey] = []
    try:
        if kvs:
            n = int.from_bytes(b64decode_strict(text_of(kvs[0].find(f"{{{DS}}}Modulus"))), "big")
            e = int.from_bytes(b64decode_strict(text_of(kvs[0].find(f"{{{DS}}}Exponent"))), "big")
            keys.append(_rsa_key(n, e))
        if certs:
            raw = text_of(certs[0])
            if len(raw) > MAX_CERT_B64:
                raise _bad_token("holder-of-key key not acceptable")
            pub = x509.load_der_x509_certificate(b64decode_strict(raw)).public_key()
            if not isinstance(pub, rsa.RSAPublicKey):
                raise _bad_token("holder-of-key key not acceptable")
            keys.append(_rsa_key(pub.public_numbers().n, pub.public_numbers().e))
    except (binascii.Error, ValueError):
        raise _bad_token("holder-of-key key not acceptable") from None
    if len(keys) == 2 and keys[0].public_numbers() != keys[1].public_numbers():
        raise _bad_token("holder-of-key key not acceptable")
    return keys[0]


def _parse_claims(a: _Element) -> _Claims:
    """Read and structurally validate a (signed) assertion. Policy checks come later, per message."""
    if a.tag != _q("Assertion") or a.get("Version") != "2.0" or not a.get("ID"):
        raise _bad_token("not a SAML 2.0 assertion")
    issue_instant = _time_attr(a, "IssueInstant", required=True)
    issuers = a.findall(_q("Issuer"))
    if len(issuers) != 1 or not text_of(issuers[0]):
        raise _bad_token("assertion issuer missing")
    subjects = a.findall(_q("Subject"))
    if len(subjects) != 1:
        raise _bad_token("assertion subject missing")
    name_ids = subjects[0].findall(_q("NameID"))
    if len(name_ids) != 1 or not text_of(name_ids[0]):
        raise _bad_token("assertion subject missing")
    confirmations = subjects[0].findall(_q("SubjectConfirmation"))
    methods = frozenset(c.get("Method") or "" for c in confirmations)
    hok = [c for c in confirmations if c.get("Method") == CM_HOLDER_OF_KEY]
    hok_key = hok_noa = None
    if len(hok) > 1:
        raise _bad_token("ambiguous subject confirmation")
    if hok:
        data = hok[0].findall(_q("SubjectConfirmationData"))
        key_infos = data[0].findall(f"{{{DS}}}KeyInfo") if len(data) == 1 else []
        if len(key_infos) != 1:
            raise _bad_token("holder-of-key key missing")
        hok_key = _holder_key(key_infos[0])
        hok_noa = _time_attr(data[0], "NotOnOrAfter", required=False)
    conditions = a.findall(_q("Conditions"))
    if len(conditions) != 1:
        raise _bad_token("assertion conditions missing")
    cond = conditions[0]
    audiences = tuple(
        tuple(text_of(aud) for aud in ar.findall(_q("Audience")))
        for ar in cond.findall(_q("AudienceRestriction"))
    )

    attrs: dict[str, list[_Element]] = {}
    for stmt in a.findall(_q("AttributeStatement")):
        for at in stmt.findall(_q("Attribute")):
            attrs.setdefault(at.get("Name") or "", []).append(at)

    def value(name: str, required: bool = True) -> _Element | None:
        found = attrs.get(name, [])
        if not found:
            if required:
                raise _bad_token("required attribute missing")
            return None
        values = found[0].findall(_q("AttributeValue"))
        if len(found) > 1 or len(values) != 1:
            raise _bad_token("attribute must have exactly one value")
        return values[0]

    def string(name: str, required: bool = True) -> str | None:
        v = value(name, required)
        if v is None:
            return None
        if len(v) and any(isinstance(c.tag, str) for c in v):
            raise _bad_token("attribute value malformed")
        s = text_of(v)
        if not s:
            raise _bad_token("required attribute missing")
        return s

    def coded(name: str, tags: tuple[str, ...]) -> CodedValue:
        v = value(name)
        assert v is not None
        children = [c for c in v if isinstance(c.tag, str)]
        if len(children) != 1 or children[0].tag not in tags:
            raise _bad_token("attribute value malformed")
        ce = children[0]
        code, system = (ce.get("code") or "").strip(), (ce.get("codeSystem") or "").strip()
        if not code or not system:
            raise _bad_token("attribute value malformed")
        return CodedValue(code, system, (ce.get("displayName") or "").strip())

    return _Claims(
        assertion_id=a.get("ID") or "",
        issuer=text_of(issuers[0]),
        name_id=text_of(name_ids[0]),
        issue_instant=issue_instant,  # type: ignore[arg-type]
        not_before=_time_attr(cond, "NotBefore", required=False),
        not_on_or_after=_time_attr(cond, "NotOnOrAfter", required=True),  # type: ignore[arg-type]
        audiences=audiences,
        methods=methods,
        hok_key=hok_key,
        hok_not_on_or_after=hok_noa,
        subject_id=string(ATTR_SUBJECT_ID) or "",
        organization=string(ATTR_ORGANIZATION) or "",
        organization_id=string(ATTR_ORGANIZATION_ID) or "",
        home_community_id=normalize_hcid(string(ATTR_HOME_COMMUNITY_ID) or ""),
        role=coded(ATTR_ROLE, (f"{{{HL7}}}Role",)),
        purpose_of_use=coded(ATTR_PURPOSE_OF_USE, _PURPOSE_TAGS),
        npi=string(ATTR_NPI, required=False),
        resource_id=string(ATTR_RESOURCE_ID, required=False),
    )


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
        try:
            return self._verify(security_header, envelope, request_digest)
        except SecurityFault as fault:
            log.info("inbound security refused: %s", fault)
            raise
        except Exception:
            # Never let an internal error become a fault text (it could leak paths or data).
            log.exception("inbound security check failed unexpectedly")
            raise SecurityFault("wsse:InvalidSecurity", "security header not acceptable") from None

    # -- steps --
    def _verify(self, security: _Element, envelope: _Element | None, request_digest: str | None) -> Principal:
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

        resend = self._check_replay(claims, ts, msg.signature_value, partner, now, request_digest)
        return Principal(
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
            resend=resend,
        )

    def _verified_assertion(self, assertion: _Element, now: datetime) -> tuple[_Verified, Partner]:
        canonical = etree.tostring(assertion, method="c14n", exclusive=True, with_comments=True)
        if len(canonical) > self.policy.max_assertion_bytes:
            raise _bad_token("assertion too large")
        cache_key = hashlib.sha256(canonical).hexdigest()
        hit = self._cache.get(cache_key, now)
        if hit is not None:
            partner = self.trust.partner_for_fingerprint(hit.fingerprint)
            if partner is not None and (partner.allow_sha1 or not hit.used_sha1):
                self.cache_stats.hits += 1
                return hit, partner
        self.cache_stats.misses += 1
        verified, partner = self._verify_assertion_signature(assertion, now)
        expires = verified.claims.not_on_or_after + self.policy.clock_skew
        if expires > now:
            self._cache.put(cache_key, expires, verified)
        return verified, partner

    def _verify_assertion_signature(self, assertion: _Element, now: datetime) -> tuple[_Verified, Partner]:
        sigs = assertion.findall(f"{{{DS}}}Signature")
        if not sigs:
            raise _bad_token("assertion not signed")
        if len(sigs) > 1:
            raise _bad_token("assertion malformed")
        sig = sigs[0]
        # The signing certificate: only a hint for which pinned certificate to verify with.
        certs = sig.findall(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate")
        if not certs:
            raise _bad_token("signing certificate missing")
        if len(certs) > MAX_KEYINFO_CERTS:
            raise _bad_token("too many certificates")
        partner = pinned = None
        for c in certs:
            raw = text_of(c)
            if len(raw) > MAX_CERT_B64:
                raise _bad_token("signing certificate not acceptable")
            try:
                fp = hashlib.sha256(b64decode_strict(raw)).hexdigest()
            except (binascii.Error, ValueError):
                raise _bad_token("signing certificate not acceptable") from None
            partner = self.trust.partner_for_fingerprint(fp)
            if partner is not None:
                pinned = next(pc for pc in partner.certificates if fingerprint(pc) == fp)
                break
        if partner is None or pinned is None:
            raise SecurityFault("wsse:FailedAuthentication", "unknown signer")

        # Algorithm policy, checked up front for a precise fault (signxml enforces it again).
        sig_methods = set(STRONG_SIGNATURES) | ({RSA_SHA1} if partner.allow_sha1 else set())
        digests = set(STRONG_DIGESTS) | ({SHA1} if partner.allow_sha1 else set())
        si = sig.find(f"{{{DS}}}SignedInfo")
        if si is None:
            raise SecurityFault("wsse:FailedCheck", "assertion signature invalid")
        c14n = si.findall(f"{{{DS}}}CanonicalizationMethod")
        if len(c14n) != 1 or c14n[0].get("Algorithm") != EXC_C14N:
            raise SecurityFault("wsse:FailedCheck", "exclusive C14N required")
        methods = [m.get("Algorithm") for m in si.findall(f"{{{DS}}}SignatureMethod")]
        refs = si.findall(f"{{{DS}}}Reference")
        if len(methods) != 1 or len(refs) != 1:
            raise SecurityFault("wsse:FailedCheck", "assertion signature invalid")
        ref = refs[0]
        digest_algs = [d.get("Algorithm") for d in ref.findall(f"{{{DS}}}DigestMethod")]
        if methods[0] not in sig_methods or len(digest_algs) != 1 or digest_algs[0] not in digests:
            raise SecurityFault("wsse:FailedCheck", "signature algorithm not allowed")
        if ref.get("URI") != f"#{assertion.get('ID')}":
            raise SecurityFault("wsse:FailedCheck", "assertion signature invalid")
        transforms = [t.get("Algorithm") for t in ref.findall(f"{{{DS}}}Transforms/{{{DS}}}Transform")]
        if EXC_C14N not in transforms or not set(transforms) <= {ENVELOPED, EXC_C14N}:
            raise SecurityFault("wsse:FailedCheck", "exclusive C14N required")

        config = SignatureConfiguration(
            location="./",
            require_x509=True,
            expect_references=1,
            signature_methods=frozenset(SignatureMethod(m) for m in sig_methods),
            digest_algorithms=frozenset(DigestAlgorithm(d) for d in digests),
            verification_time=now,
        )
        try:
            result: Any = XMLVerifier().verify(
                assertion, x509_cert=pinned, expect_config=config, parser=safe_parser()
            )
        except InvalidCertificate:
            raise SecurityFault("wsse:FailedAuthentication", "signing certificate not valid") from None
        except Exception:
            raise SecurityFault("wsse:FailedCheck", "assertion signature invalid") from None
        signed = result.signed_xml
        # From here on only the signed bytes count: the element signxml hands back.
        if signed is None or signed.tag != _q("Assertion") or signed.get("ID") != assertion.get("ID"):
            raise SecurityFault("wsse:FailedCheck", "assertion signature invalid")
        claims = _parse_claims(signed)
        signer_key = pinned.public_key()
        if not isinstance(signer_key, rsa.RSAPublicKey):
            raise SecurityFault("wsse:FailedAuthentication", "signing certificate not valid")
        used_sha1 = methods[0] == RSA_SHA1 or digest_algs[0] == SHA1
        return _Verified(claims, fingerprint(pinned), signer_key, used_sha1, pinned), partner

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

    def _check_replay(
        self, c: _Claims, ts: Timestamp, signature_value: bytes, partner: Partner, now: datetime,
        request_digest: str | None = None,
    ) -> bool:
        """Record the message's replay keys for its partner; True for an admitted resend."""
        skew = self.policy.clock_skew
        ts_until = ts.expires + skew
        keys = [
            ReplayKey(f"sig:{hashlib.sha256(signature_value).hexdigest()}", ts_until),
            ReplayKey(f"ts:{c.assertion_id}|{ts.id}|{ts.created.isoformat()}", ts_until),
        ]
        if self.policy.reject_assertion_reuse:
            keys.append(ReplayKey(f"assertion:{c.assertion_id}", c.not_on_or_after + skew))
        try:
            return self.replay_cache.admit(partner.name, keys, request_digest, now)
        except ReplayRefused as refused:
            raise SecurityFault("wsse:FailedAuthentication", refused.reason) from None
