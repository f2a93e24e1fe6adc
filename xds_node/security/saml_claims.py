"""Reading a verified SAML assertion into the claims the verifier acts on: structure checked, every
XSPA attribute exactly once with one value, the holder-of-key key. Only ever given the element
the signature verifier returned as signed (see :mod:`xds_node.security.xmldsig`).
"""

from __future__ import annotations

import binascii
import functools
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml.etree import _Element

from .principal import CodedValue
from .saml_issue import (
    ATTR_HOME_COMMUNITY_ID,
    ATTR_NPI,
    ATTR_ORGANIZATION,
    ATTR_ORGANIZATION_ID,
    ATTR_PURPOSE_OF_USE,
    ATTR_RESOURCE_ID,
    ATTR_ROLE,
    ATTR_SUBJECT_ID,
    CM_HOLDER_OF_KEY,
    HL7,
    _q,
)
from .trust import normalize_hcid
from .wss import DS, SecurityFault, b64decode_strict, parse_datetime, text_of

#: Certificates we look at in an assertion's KeyInfo; more is refused, not searched.
MAX_KEYINFO_CERTS = 8
#: Largest base64 certificate we decode from KeyInfo.
MAX_CERT_B64 = 16_384
#: Holder-of-key RSA key sizes accepted (small is weak, huge is a CPU sink).
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192

_PURPOSE_TAGS = (f"{{{HL7}}}PurposeOfUse", f"{{{HL7}}}PurposeForUse")  # the latter: older NHIN specs


# --- inbound: parsed claims -----------------------------------------------------------------
@dataclass(frozen=True)
class _Claims:
    """Everything we use from a verified assertion, read from the verified signed copy only."""

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


#: Longest base64 modulus + exponent remembered (an 8192-bit modulus is ~1,400 characters).
_MEMO_MAX_KEY_TEXT = 2048


@functools.lru_cache(maxsize=256)
def _rsa_key_value(modulus: str, exponent: str) -> rsa.RSAPublicKey:
    """An RSAKeyValue's key, remembered by its text: a partner's holder-of-key key is its
    organisation key, the same in every assertion, and building the key object each time was
    a visible part of a fully verified request. Failures raise and are not remembered."""
    n = int.from_bytes(b64decode_strict(modulus), "big")
    e = int.from_bytes(b64decode_strict(exponent), "big")
    return _rsa_key(n, e)


def _holder_key(key_info: _Element) -> rsa.RSAPublicKey:
    """RSAKeyValue and/or one X509Certificate; when both are given they must agree."""
    kvs = key_info.findall(f"{{{DS}}}KeyValue/{{{DS}}}RSAKeyValue")
    certs = key_info.findall(f"{{{DS}}}X509Data/{{{DS}}}X509Certificate")
    if len(kvs) > 1 or len(certs) > 1 or not (kvs or certs):
        raise _bad_token("holder-of-key key not acceptable")
    keys: list[rsa.RSAPublicKey] = []
    try:
        if kvs:
            modulus = text_of(kvs[0].find(f"{{{DS}}}Modulus"))
            exponent = text_of(kvs[0].find(f"{{{DS}}}Exponent"))
            if len(modulus) + len(exponent) <= _MEMO_MAX_KEY_TEXT:
                keys.append(_rsa_key_value(modulus, exponent))
            else:
                keys.append(_rsa_key_value.__wrapped__(modulus, exponent))
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
