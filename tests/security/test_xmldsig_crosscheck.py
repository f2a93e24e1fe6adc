"""The profile-limited assertion signature verifier (:mod:`xds_node.security.xmldsig`) against signxml,
an independent implementation: every sample both can judge must get the same verdict, and every
mutation (a byte flipped in SignedInfo, SignatureValue or the assertion, the signature moved, an
ID duplicated, the assertion wrapped) must be refused by both. Where ours is stricter than signxml
by design (the profile: no ds:Object, nothing but enveloped + exclusive C14N, IDs unique in the
whole document) the test says so and checks only ours.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import (
    DigestAlgorithm,
    SignatureConfiguration,
    SignatureMethod,
    XMLSigner,
    XMLVerifier,
)

from xds_node.security.keys import generate_demo_keys, load_key_and_cert
from xds_node.security.principal import NHIN_PURPOSE, SNOMED_CT, CodedValue
from xds_node.security.saml import RequesterContext, _LegacySigner, unsigned_assertion
from xds_node.security.wss import DS, SAML2, WSSE, WSU, SecurityFault, parse_xml, safe_parser
from xds_node.security.xmldsig import verify_assertion

SOAP = "http://www.w3.org/2003/05/soap-envelope"
EXC = "http://www.w3.org/2001/10/xml-exc-c14n#"
CTX = RequesterContext(subject_id="Dr. Jane Smith", organization="Partner A Hospital",
                       organization_id="urn:oid:1.3.6.1.4.1.21367.2026.9",
                       home_community_id="urn:oid:1.3.6.1.4.1.21367.2026.9.1",
                       role=CodedValue("112247003", SNOMED_CT, "Medical doctor"),
                       purpose_of_use=CodedValue("TREATMENT", NHIN_PURPOSE, "Treatment"), npi="1234567893")


def A(tag: str) -> str:
    return f"{{{SAML2}}}{tag}"


def _self_signed(key, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple]:
    d: Path = tmp_path_factory.mktemp("keys")
    out = {"rsa": load_key_and_cert(*generate_demo_keys(d, common_name="partner"))}
    for name, curve in (("p256", ec.SECP256R1()), ("p384", ec.SECP384R1())):
        k = ec.generate_private_key(curve)
        out[name] = (k, _self_signed(k, name))
    k = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    out["rsa3072"] = (k, _self_signed(k, "rsa3072"))
    return out


def signed_assertion(keys, kind: str = "rsa", *, sig: str = "rsa-sha256", digest: str = "sha256",
                     prefixes: list[str] | None = None, si_prefixes: list[str] | None = None,
                     default_ds: bool = False, pretty: bool = False, legacy: bool = False) -> etree._Element:
    """An assertion signed by signxml (its placeholder sits right after Issuer, where SAML wants the
    Signature). PrefixLists and a default-namespace Signature are written afterwards and signed
    again by :func:`_resign` (signxml writes no InclusiveNamespaces on an enveloped reference)."""
    key, cert = keys[kind]
    a = unsigned_assertion(CTX, keys["rsa"][1], issuer="CN=partner")
    if pretty:
        a = parse_xml(etree.tostring(a, pretty_print=True))
    signer = (_LegacySigner if legacy else XMLSigner)(signature_algorithm=sig, digest_algorithm=digest,
                                                      c14n_algorithm=EXC)
    a = signer.sign(a, key=key, cert=[cert])
    if default_ds:
        raw = etree.tostring(a).decode()
        head, rest = raw.split("<ds:Signature", 1)
        body, tail = rest.split("</ds:Signature>", 1)
        body = body.replace("<ds:", "<").replace("</ds:", "</")
        a = parse_xml(f'{head}<Signature xmlns="{DS}"{body}</Signature>{tail}'.encode())
    if prefixes or si_prefixes or default_ds:
        a = _resign(a, key, prefixes=prefixes, si_prefixes=si_prefixes)
    return a


def _resign(a: etree._Element, key, *, prefixes=None, si_prefixes=None, edit=None) -> etree._Element:
    """Set the PrefixLists (and apply ``edit`` to SignedInfo), then compute the digest and the
    RSA-SHA256 signature again, so that only a verifier's own rules can refuse the result."""
    a = parse_xml(etree.tostring(a))
    sig = a.find(f"{{{DS}}}Signature")
    si = sig.find(f"{{{DS}}}SignedInfo")
    ref = si.find(f"{{{DS}}}Reference")
    for method, plist in ((ref.find(f"{{{DS}}}Transforms")[-1], prefixes),
                          (si.find(f"{{{DS}}}CanonicalizationMethod"), si_prefixes)):
        for old in list(method):
            method.remove(old)
        if plist:
            etree.SubElement(method, f"{{{EXC}}}InclusiveNamespaces", PrefixList=" ".join(plist), nsmap={"ec": EXC})
    if edit is not None:
        edit(si)
    enveloped = copy.deepcopy(a)
    gone = enveloped.find(f"{{{DS}}}Signature")
    prev, tail, gone.tail = gone.getprevious(), gone.tail, None
    enveloped.remove(gone)
    prev.tail = (prev.tail or "") + (tail or "")
    digest = hashlib.sha256(etree.tostring(enveloped, method="c14n", exclusive=True,
                                           inclusive_ns_prefixes=prefixes)).digest()
    ref.find(f"{{{DS}}}DigestValue").text = base64.b64encode(digest).decode()
    value = key.sign(etree.tostring(si, method="c14n", exclusive=True, inclusive_ns_prefixes=si_prefixes),
                     padding.PKCS1v15(), hashes.SHA256())
    sig.find(f"{{{DS}}}SignatureValue").text = base64.b64encode(value).decode()
    return a


def on_the_wire(assertion: etree._Element | bytes, *, body: bytes = b"<x:Q xmlns:x='urn:q'>x</x:Q>") -> bytes:
    """The assertion inside a SOAP envelope whose ancestors bind other prefixes (and ds as ``d``)."""
    raw = assertion if isinstance(assertion, bytes) else etree.tostring(assertion)
    return (f'<soap:Envelope xmlns:soap="{SOAP}" xmlns:d="{DS}" xmlns:u="{WSU}"><soap:Header>'
            f'<wsse:Security xmlns:wsse="{WSSE}">').encode() + raw + \
        b"</wsse:Security></soap:Header><soap:Body>" + body + b"</soap:Body></soap:Envelope>"


def the_assertion(wire: bytes) -> etree._Element:
    return parse_xml(wire).find(f"{{{SOAP}}}Header/{{{WSSE}}}Security/{A('Assertion')}")


_SIGNXML_METHODS = frozenset(SignatureMethod) - {SignatureMethod.RSA_SHA1}
_SIGNXML_DIGESTS = frozenset(DigestAlgorithm) - {DigestAlgorithm.SHA1}


def signxml_accepts(assertion: etree._Element, cert: x509.Certificate, *, allow_sha1: bool = False) -> bool:
    """signxml's verdict, configured as the node used it before: pinned certificate, the signature
    a child of the assertion, one reference, and only the element it returns as signed counts."""
    methods = _SIGNXML_METHODS | ({SignatureMethod.RSA_SHA1} if allow_sha1 else set())
    digests = _SIGNXML_DIGESTS | ({DigestAlgorithm.SHA1} if allow_sha1 else set())
    config = SignatureConfiguration(location="./", require_x509=True, expect_references=1,
                                    signature_methods=methods, digest_algorithms=digests)
    try:
        result = XMLVerifier().verify(assertion, x509_cert=cert, expect_config=config, parser=safe_parser())
    except Exception:
        return False
    signed = result.signed_xml
    return signed is not None and signed.tag == A("Assertion") and signed.get("ID") == assertion.get("ID")


def ours_accepts(assertion: etree._Element, cert: x509.Certificate, *, allow_sha1: bool = False) -> bool:
    try:
        verify_assertion(assertion, cert.public_key(), allow_sha1=allow_sha1)
    except SecurityFault:
        return False
    return True


def verdicts(wire: bytes, cert, **kw) -> tuple[bool, bool]:
    return ours_accepts(the_assertion(wire), cert, **kw), signxml_accepts(the_assertion(wire), cert, **kw)


# --- the same verdict on every good sample ------------------------------------------------------
SAMPLES = [
    dict(kind="rsa"),
    dict(kind="rsa", sig="rsa-sha384", digest="sha384"),
    dict(kind="rsa", sig="rsa-sha512", digest="sha512"),
    dict(kind="rsa3072", sig="rsa-sha256", digest="sha512"),
    dict(kind="p256", sig="ecdsa-sha256"),
    dict(kind="p384", sig="ecdsa-sha384", digest="sha384"),
    dict(kind="rsa", prefixes=["saml2", "xsi"]),
    dict(kind="rsa", prefixes=["#default", "saml2"]),
    dict(kind="rsa", default_ds=True),
    dict(kind="rsa", pretty=True),
]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_good_samples_accepted_by_both(keys, sample):
    a = signed_assertion(keys, **sample)
    cert = keys[sample["kind"]][1]
    assert verdicts(on_the_wire(a), cert) == (True, True)
    # and the result does not depend on where the assertion sits
    assert ours_accepts(parse_xml(etree.tostring(a)), cert)


@pytest.mark.parametrize("si_prefixes", [["ds", "saml2"], ["#default"]])
def test_signed_info_prefix_list_accepted(keys, si_prefixes):
    """InclusiveNamespaces under CanonicalizationMethod is legal XML Signature (WSS4J writes it);
    signxml's schema check refuses it (DocumentInvalid), so here ours stands alone: accepted, and
    refused once the SignedInfo's PrefixList no longer matches what was signed."""
    a = signed_assertion(keys, si_prefixes=si_prefixes)
    cert = keys["rsa"][1]
    assert ours_accepts(the_assertion(on_the_wire(a)), cert)
    assert not signxml_accepts(the_assertion(on_the_wire(a)), cert)
    a.find(f".//{{{EXC}}}InclusiveNamespaces").set("PrefixList", "xsi")
    assert not ours_accepts(the_assertion(on_the_wire(a)), cert)


def test_sha1_only_when_allowed_by_both(keys):
    a = signed_assertion(keys, sig="rsa-sha1", digest="sha1", legacy=True)
    cert = keys["rsa"][1]
    assert verdicts(on_the_wire(a), cert) == (False, False)
    assert verdicts(on_the_wire(a), cert, allow_sha1=True) == (True, True)


def test_comments_are_not_signed_for_either(keys):
    a = signed_assertion(keys)
    value = next(a.iter(A("AttributeValue")))
    value.insert(0, etree.Comment("a comment both must ignore"))
    assert verdicts(on_the_wire(a), keys["rsa"][1]) == (True, True)


def test_key_of_another_kind_or_signer_refused_by_both(keys):
    a = signed_assertion(keys, kind="p256", sig="ecdsa-sha256")
    for other in ("rsa", "p384"):
        assert verdicts(on_the_wire(a), keys[other][1]) == (False, False)


def test_the_verified_copy_is_the_signed_content(keys):
    a = signed_assertion(keys)
    result = verify_assertion(the_assertion(on_the_wire(a)), keys["rsa"][1].public_key())
    assert result.signed.find(f"{{{DS}}}Signature") is None
    assert result.signed.findtext(A("Issuer")) == "CN=partner"
    assert not result.used_sha1


# --- mutations: both refuse -------------------------------------------------------------------------
def _refused_by_both(wire: bytes, cert) -> None:
    assert verdicts(wire, cert) == (False, False)


def _flip(text: bytes, needle: bytes, offset: int = 0) -> bytes:
    at = text.index(needle) + offset
    ch = text[at:at + 1]
    new = b"B" if ch != b"B" else b"C"
    return text[:at] + new + text[at + 1:]


@pytest.mark.parametrize("needle,offset", [
    (b"<ds:DigestValue>", 20),                      # the digest
    (b'Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256', 50),  # the signature method
    (b"<ds:Reference URI=\"#", 22),                 # the reference
    (b"<ds:SignatureValue>", 25),                   # the signature value
    (b"CN=partner</", 3),                           # the Issuer's text
    (b'code="TREATMENT"', 7),                       # an attribute in the assertion
    (b"Dr. Jane Smith", 4),                         # an attribute value
])
def test_flipped_byte_refused_by_both(keys, needle, offset):
    wire = on_the_wire(signed_assertion(keys))
    assert verdicts(wire, keys["rsa"][1]) == (True, True)  # control
    _refused_by_both(_flip(wire, needle, offset), keys["rsa"][1])


def _move_signature(a: etree._Element, where: str) -> etree._Element:
    sig = a.find(f"{{{DS}}}Signature")
    a.remove(sig)
    if where == "end":
        a.append(sig)
    elif where == "subject":
        a.find(A("Subject")).append(sig)
    else:
        a.insert(0, sig)
    return a


def test_signature_moved_below_the_assertion_refused_by_both(keys):
    _refused_by_both(on_the_wire(_move_signature(signed_assertion(keys), "subject")), keys["rsa"][1])


@pytest.mark.parametrize("where", ["end", "first"])
def test_signature_moved_among_the_children_refused(keys, where):
    """The enveloped transform removes the Signature wherever it sits, so XML Signature itself (and
    signxml) accepts it anywhere among the assertion's children; the profile wants it after Issuer."""
    wire = on_the_wire(_move_signature(signed_assertion(keys), where))
    assert verdicts(wire, keys["rsa"][1]) == (False, True)


def test_whitespace_added_inside_the_assertion_refused_by_both(keys):
    a = signed_assertion(keys)
    a.find(A("Subject")).tail = "\n  "
    _refused_by_both(on_the_wire(a), keys["rsa"][1])


def test_duplicate_id_inside_the_signature_refused_by_both(keys):
    """KeyInfo is outside what the digest covers; an element there claiming the assertion's ID
    makes the reference ambiguous."""
    a = signed_assertion(keys)
    etree.SubElement(a.find(f"{{{DS}}}Signature/{{{DS}}}KeyInfo"), "{urn:x}Decoy", ID=a.get("ID"))
    _refused_by_both(on_the_wire(a), keys["rsa"][1])


def test_wrapped_assertion_refused_by_both(keys):
    """XSW: a forged assertion in place carrying the signature, the signed original in its Advice;
    and the other way round (the signed original with a forged one in its Advice)."""
    original = signed_assertion(keys)
    forged = copy.deepcopy(original)
    forged.remove(forged.find(f"{{{DS}}}Signature"))
    next(forged.iter(A("AttributeValue"))).text = "Mallory"
    forged.set("ID", "_forged")
    forged.find(A("Issuer")).addnext(copy.deepcopy(original.find(f"{{{DS}}}Signature")))
    etree.SubElement(forged, A("Advice")).append(copy.deepcopy(original))
    _refused_by_both(on_the_wire(forged), keys["rsa"][1])
    forged.set("ID", original.get("ID"))  # same ID as the wrapped original: ambiguous
    _refused_by_both(on_the_wire(forged), keys["rsa"][1])
    carrier = copy.deepcopy(original)
    etree.SubElement(carrier, A("Advice")).append(forged)
    _refused_by_both(on_the_wire(carrier), keys["rsa"][1])


def test_random_byte_flips_get_the_same_verdict(keys):
    """Fuzz: a byte flipped anywhere in the signed parts (the assertion, SignedInfo, SignatureValue;
    KeyInfo is only a hint to both) of a message that still parses: both refuse, always together."""
    cert = keys["rsa"][1]
    wire = on_the_wire(signed_assertion(keys, prefixes=["saml2"]))
    start = wire.index(b"<saml2:Assertion")
    end = wire.index(b"</saml2:Assertion>") + len(b"</saml2:Assertion>")
    key_info = (wire.index(b"<ds:KeyInfo>"), wire.index(b"</ds:KeyInfo>") + len(b"</ds:KeyInfo>"))
    rng = random.Random(1414)
    judged = 0
    for _ in range(600):
        at = rng.randrange(start, end)
        if key_info[0] <= at < key_info[1]:
            continue
        new = bytes([rng.choice(b"ABCabc019+/=_-. \n\"'<>&:#")])
        if new == wire[at:at + 1]:
            continue
        mutated = wire[:at] + new + wire[at + 1:]
        try:
            a = the_assertion(mutated)
        except (etree.XMLSyntaxError, ValueError):
            continue
        if a is None:
            continue
        ours, theirs = verdicts(mutated, cert)
        assert ours == theirs, (at, new, mutated[at - 40:at + 40])
        assert not ours, (at, new, mutated[at - 40:at + 40])
        judged += 1
    assert judged > 100


# --- where the profile is stricter than signxml (ours only) ---------------------------------------

def test_duplicate_id_anywhere_in_the_document_refused(keys):
    """signxml sees only the assertion's subtree; we refuse an ID claimed twice anywhere."""
    a = signed_assertion(keys)
    for attr in ("ID", "Id", f"{{{WSU}}}Id"):
        wire = on_the_wire(a, body=etree.tostring(etree.Element("{urn:x}Decoy", {attr: a.get("ID")})))
        assert verdicts(wire, keys["rsa"][1]) == (False, True)


def test_object_inside_the_signature_refused(keys):
    a = signed_assertion(keys)
    etree.SubElement(a.find(f"{{{DS}}}Signature"), f"{{{DS}}}Object").text = "anything"
    assert not ours_accepts(the_assertion(on_the_wire(a)), keys["rsa"][1])


@pytest.mark.parametrize("change", ["no-enveloped", "extra-transform", "swapped", "two-references",
                                    "uri-elsewhere", "with-comments"])
def test_signed_info_outside_the_profile_refused(keys, change):
    key, cert = keys["rsa"]
    a = signed_assertion(keys)

    def mutate(si):
        ref = si.find(f"{{{DS}}}Reference")
        transforms = ref.find(f"{{{DS}}}Transforms")
        if change == "no-enveloped":
            transforms.remove(transforms[0])
        elif change == "extra-transform":
            etree.SubElement(transforms, f"{{{DS}}}Transform", Algorithm=EXC)
        elif change == "swapped":
            transforms.append(transforms[0])
        elif change == "two-references":
            si.append(copy.deepcopy(ref))
        elif change == "uri-elsewhere":
            ref.set("URI", "")
        else:
            si.find(f"{{{DS}}}CanonicalizationMethod").set("Algorithm", EXC + "WithComments")

    wire = on_the_wire(_resign(a, key, edit=mutate))
    assert not ours_accepts(the_assertion(wire), cert)


def test_ecdsa_signature_value_of_the_wrong_size_refused(keys):
    cert = keys["p256"][1]
    a = signed_assertion(keys, kind="p256", sig="ecdsa-sha256")
    sv = a.find(f"{{{DS}}}Signature/{{{DS}}}SignatureValue")
    sv.text = base64.b64encode(b"\x00" + base64.b64decode(sv.text)).decode()
    assert verdicts(on_the_wire(a), cert) == (False, False)


# --- through the inbound verifier ----------------------------------------------------------------
def _inbound(keys, partner_cert, assertion):
    from xds_node.security.saml import InboundVerifier, SecurityPolicy
    from xds_node.security.trust import Partner, TrustStore
    from xds_node.security.wss import build_security_header

    trust = TrustStore([Partner("Partner A", CTX.home_community_id, [partner_cert], issuers=["CN=partner"])])
    verifier = InboundVerifier(trust, SecurityPolicy())
    rsa_key, rsa_cert = keys["rsa"]  # the holder-of-key key signs each message's Timestamp

    def send(body: bytes = b"<x:Q xmlns:x='urn:q'>x</x:Q>"):
        header = etree.tostring(build_security_header(assertion, rsa_key, rsa_cert))
        head, rest = on_the_wire(b"").split(b"<wsse:Security", 1)
        env = parse_xml(head + header + rest.split(b"</wsse:Security>", 1)[1].replace(
            b"<x:Q xmlns:x='urn:q'>x</x:Q>", body))
        return verifier.verify(env.find(f"{{{SOAP}}}Header/{{{WSSE}}}Security"), env)

    return verifier, send


def test_ecdsa_signed_assertion_from_a_partner_pinned_with_an_ec_certificate(keys):
    a = signed_assertion(keys, kind="p256", sig="ecdsa-sha256")
    verifier, send = _inbound(keys, keys["p256"][1], a)
    assert send().partner == "Partner A"
    assert send().partner == "Partner A" and verifier.cache_stats.hits == 1
    _, send_to_rsa_partner = _inbound(keys, keys["rsa"][1], a)
    with pytest.raises(SecurityFault):  # the KeyInfo names the EC certificate: nobody pinned it there
        send_to_rsa_partner()


def test_duplicate_id_in_the_body_refused_on_a_cache_hit_too(keys):
    a = signed_assertion(keys)
    verifier, send = _inbound(keys, keys["rsa"][1], a)
    assert send().partner == "Partner A"
    assert send().partner == "Partner A" and verifier.cache_stats.hits == 1
    with pytest.raises(SecurityFault) as info:
        send(etree.tostring(etree.Element("{urn:x}Decoy", ID=a.get("ID"))))
    assert info.value.code == "wsse:FailedCheck"
