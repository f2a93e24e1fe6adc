"""WS-Security headers for the harness: a valid one, and the negatives a responding gateway must refuse.

Every negative starts from a *valid* header and breaks exactly one thing, so a partner that
refuses it refuses it for that reason (the suite's control case proves the valid header passes).
The builders use the node's own issuing code (:func:`xds_node.security.saml.unsigned_assertion`,
:func:`sign_assertion`, :func:`build_security_header`) and then edit the XML, which is what an
attacker or a broken client would do.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from xds_node.security.keys import generate_demo_keys, load_key_and_cert
from xds_node.security.saml import (
    ATTR_PURPOSE_OF_USE,
    ATTR_ROLE,
    ATTR_SUBJECT_ID,
    RequesterContext,
    sign_assertion,
    unsigned_assertion,
)
from xds_node.security.wss import DS, SAML2, WSSE, build_security_header, utcnow

__all__ = ["NEGATIVES", "Signer", "build_header", "stranger_keys"]

WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
NHIN_PURPOSE = "2.16.840.1.113883.3.18.7.1"
SNOMED = "2.16.840.1.113883.6.96"


@dataclass
class Signer:
    """Who the harness speaks for: the key/cert the partner pinned and the requester's attributes."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    requester: RequesterContext

    @property
    def issuer(self) -> str:
        return self.cert.subject.rfc4514_string()

    @classmethod
    def from_files(cls, key_path: Path, cert_path: Path, *, home_community_id: str,
                   organization: str = "xds-node conformance harness", subject: str = "Conformance Tester",
                   purpose: str = "TREATMENT", role: str = "112247003", audience: str | None = None) -> Signer:
        key, cert = load_key_and_cert(key_path, cert_path)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        org = str(cn[0].value) if cn else organization
        ctx = RequesterContext(
            subject_id=subject, organization=org, organization_id=home_community_id,
            home_community_id=home_community_id, role=(role, SNOMED, "Medical doctor"),
            purpose_of_use=(purpose, NHIN_PURPOSE, purpose.title()), audience=audience or None)
        return cls(key, cert, ctx)


_STRANGER: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None


def stranger_keys() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A key pair nobody pinned (made once per process) for the unknown-signer negative."""
    global _STRANGER
    if _STRANGER is None:
        with tempfile.TemporaryDirectory() as d:
            _STRANGER = load_key_and_cert(*generate_demo_keys(Path(d), common_name="Unknown Signer"))
    return _STRANGER


def _a(local: str) -> str:
    return f"{{{SAML2}}}{local}"


def _attribute(assertion: etree._Element, name: str) -> etree._Element:
    return next(at for at in assertion.iter(_a("Attribute")) if at.get("Name") == name)


def _header(signer: Signer, *, ctx: RequesterContext | None = None, now: datetime | None = None,
            lifetime: timedelta = timedelta(minutes=5), mutate: Callable[[etree._Element], None] | None = None,
            sign: bool = True, keys: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None) -> etree._Element:
    key, cert = keys or (signer.key, signer.cert)
    a = unsigned_assertion(ctx or signer.requester, cert, issuer=signer.issuer, lifetime=lifetime, now=now)
    if mutate is not None:
        mutate(a)
    if sign:
        a = sign_assertion(a, key, cert)
    else:
        a.remove(a.find(f"{{{DS}}}Signature"))
    return build_security_header(a, key, cert)  # the Timestamp is always fresh


def _valid(s: Signer) -> etree._Element:
    return _header(s)


def _expired(s: Signer) -> etree._Element:
    return _header(s, now=utcnow() - timedelta(hours=2))


def _not_yet_valid(s: Signer) -> etree._Element:
    return _header(s, now=utcnow() + timedelta(hours=2))


def _unsigned(s: Signer) -> etree._Element:
    return _header(s, sign=False)


def _tampered(s: Signer) -> etree._Element:
    h = _header(s)
    _attribute(h.find(_a("Assertion")), ATTR_SUBJECT_ID).find(_a("AttributeValue")).text = "Mallory Intruder"
    return h


def _wrapped(s: Signer) -> etree._Element:
    """XSW: a forged assertion (same ID, changed subject) in place, the signed original under its Advice."""
    h = _header(s)
    original = h.find(_a("Assertion"))
    forged = copy.deepcopy(original)
    forged.remove(forged.find(f"{{{DS}}}Signature"))
    _attribute(forged, ATTR_SUBJECT_ID).find(_a("AttributeValue")).text = "Mallory Intruder"
    forged.find(_a("Issuer")).addnext(copy.deepcopy(original.find(f"{{{DS}}}Signature")))
    h.replace(original, forged)
    etree.SubElement(forged, _a("Advice")).append(original)
    return h


def _unknown_signer(s: Signer) -> etree._Element:
    return _header(s, keys=stranger_keys())


def _drop_attribute(name: str) -> Callable[[etree._Element], None]:
    def mutate(a: etree._Element) -> None:
        at = _attribute(a, name)
        at.getparent().remove(at)

    return mutate


def _double_attribute(name: str) -> Callable[[etree._Element], None]:
    def mutate(a: etree._Element) -> None:
        at = _attribute(a, name)
        at.addnext(copy.deepcopy(at))

    return mutate


def _missing_subject(s: Signer) -> etree._Element:
    return _header(s, mutate=_drop_attribute(ATTR_SUBJECT_ID))


def _missing_purpose(s: Signer) -> etree._Element:
    return _header(s, mutate=_drop_attribute(ATTR_PURPOSE_OF_USE))


def _doubled_role(s: Signer) -> etree._Element:
    return _header(s, mutate=_double_attribute(ATTR_ROLE))


def _doubled_purpose(s: Signer) -> etree._Element:
    return _header(s, mutate=_double_attribute(ATTR_PURPOSE_OF_USE))


def _disallowed_purpose(s: Signer) -> etree._Element:
    return _header(s, ctx=replace(s.requester, purpose_of_use=("MARKETING", NHIN_PURPOSE, "Marketing")))


def _unknown_audience(s: Signer) -> etree._Element:
    return _header(s, ctx=replace(s.requester, audience="urn:example:not-this-gateway"))


def _issuer_mismatch(s: Signer) -> etree._Element:
    """Validly signed with the pinned key, but the Issuer names somebody else (another DN)."""
    def mutate(a: etree._Element) -> None:
        a.find(_a("Issuer")).text = "CN=Another Organisation,O=Elsewhere,C=US"

    return _header(s, mutate=mutate)


def _missing_timestamp(s: Signer) -> etree._Element:
    h = _header(s)
    ts = h.find(f"{{{WSU}}}Timestamp")
    h.remove(ts)
    return h


#: Security negatives by name (the ``security`` value of a step); each must be refused.
NEGATIVES: dict[str, Callable[[Signer], etree._Element]] = {
    "expired": _expired,
    "not_yet_valid": _not_yet_valid,
    "unsigned": _unsigned,
    "tampered": _tampered,
    "wrapped": _wrapped,
    "unknown_signer": _unknown_signer,
    "issuer_mismatch": _issuer_mismatch,
    "missing_subject_id": _missing_subject,
    "missing_purpose_of_use": _missing_purpose,
    "doubled_role": _doubled_role,
    "doubled_purpose_of_use": _doubled_purpose,
    "disallowed_purpose": _disallowed_purpose,
    "unknown_audience": _unknown_audience,
    "missing_timestamp": _missing_timestamp,
}


def build_header(kind: str, signer: Signer) -> etree._Element | None:
    """The ``wsse:Security`` element for ``kind``: "saml" (valid), "none"/"missing" (no header) or a negative."""
    if kind in ("none", "missing"):
        return None
    if kind == "saml":
        return _valid(signer)
    try:
        return NEGATIVES[kind](signer)
    except KeyError:
        raise ValueError(f"unknown security kind {kind!r} (saml, none, {', '.join(NEGATIVES)})") from None


def is_security_header(el: etree._Element) -> bool:
    return el.tag == f"{{{WSSE}}}Security"
