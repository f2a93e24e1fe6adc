"""Issuing SAML 2.0 assertions for our initiating gateway (NHIN Authorization Framework, XSPA/XUA
attributes), and the names both directions share. Verifying inbound assertions is
:mod:`xds_node.security.saml`, which re-exports everything here.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree
from lxml.etree import _Element
from signxml import XMLSigner

from .principal import CodedValue
from .trust import normalize_hcid, to_certificate
from .wss import DS, EXC_C14N, SAML2, _private_key, format_datetime, utcnow

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


def _q(local: str) -> str:
    return f"{{{SAML2}}}{local}"


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
