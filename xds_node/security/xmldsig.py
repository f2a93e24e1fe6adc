"""A strict, profile-limited verifier for the enveloped XML signature of a SAML 2.0 assertion.

Why our own and not signxml per request: signxml is general (any reference, any transform chain,
schema check) and pays for it by re-serialising and re-parsing the whole document several times:
about 0.3 ms per assertion where the RSA verification is 15 us and the exclusive C14N another 15 us.
Why not python-xmlsec (libxmlsec1): it only imports when its wheel's libxml2 is the very one lxml
bundles, so every lxml upgrade would have to wait for a matching xmlsec wheel (or a source build of
both); and it is general too. This verifier accepts exactly the one shape SAML assertions are signed
in (SAML core 5.4, the eHealth Exchange / XUA profiles) and refuses everything else, so it has
little surface; signxml stays in the tests as an independent cross-check.

The profile:

- the ``ds:Signature`` is the assertion's second element child, right after ``saml2:Issuer``, and
  the assertion has no other ``ds:Signature`` child; the Signature holds ``SignedInfo``,
  ``SignatureValue`` and at most a ``KeyInfo`` (no ``ds:Object``: a classic wrapping hiding place);
- ``SignedInfo`` is ``CanonicalizationMethod`` (exclusive C14N without comments, optional
  ``InclusiveNamespaces``), ``SignatureMethod`` (RSA-SHA256/384/512 or ECDSA-SHA256/384/512;
  RSA-SHA1 only when the partner allows it) and exactly one ``Reference``;
- the Reference's URI is ``#`` + the assertion's ``ID``, and no other attribute named ID / Id / id
  (any namespace, wsu:Id and xml:id included) anywhere in the document carries that value;
- its transforms are exactly enveloped-signature then exclusive C14N (``InclusiveNamespaces
  PrefixList`` honoured); its digest SHA-256/384/512 (SHA-1 only when allowed);
- the key is the pinned certificate's, chosen by the caller: ``KeyInfo`` is never trusted.

The digest input is built from the element itself: its exclusive C14N (comments excluded), parsed
again, with the Signature removed (its tail text kept) and canonicalized once more. Exclusive C14N
renders an element's namespaces from its own output ancestors only, so removing the Signature
changes nothing else, and namespaces the PrefixList pulls in from above the assertion are already
declared on the canonical copy's root. That copy, exactly what the digest covers, is what the
caller reads claims from (like signxml's ``signed_xml``).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import threading
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree
from lxml.etree import _Element

from xds_node import safexml

from .wss import (
    DIGEST_HASHES,
    DS,
    EC,
    ENVELOPED,
    EXC_C14N,
    RSA_SHA1,
    SHA1,
    STRONG_DIGESTS,
    STRONG_SIGNATURES,
    SecurityFault,
    b64decode_strict,
    text_of,
    verify_signature_value,
)

_SIGNATURE = f"{{{DS}}}Signature"
_SIGNED_INFO = f"{{{DS}}}SignedInfo"
_SIGNATURE_VALUE = f"{{{DS}}}SignatureValue"
_KEY_INFO = f"{{{DS}}}KeyInfo"
_C14N_METHOD = f"{{{DS}}}CanonicalizationMethod"
_SIGNATURE_METHOD = f"{{{DS}}}SignatureMethod"
_REFERENCE = f"{{{DS}}}Reference"
_TRANSFORMS = f"{{{DS}}}Transforms"
_TRANSFORM = f"{{{DS}}}Transform"
_DIGEST_METHOD = f"{{{DS}}}DigestMethod"
_DIGEST_VALUE = f"{{{DS}}}DigestValue"
_INCLUSIVE = f"{{{EC}}}InclusiveNamespaces"

#: Attributes with a given value, anywhere in the document: one pass in libxml2, then the few hits
#: are checked in Python for the names an ID reference resolves by (SAML's ID, WS-Security's
#: wsu:Id, xml:id, the Id / id other stacks use), which is cheaper than asking XPath for each name.
_SAME_VALUE = etree.XPath("//@*[. = $v]")
_ID_NAMES = frozenset({"ID", "Id", "id"})
#: Longest PrefixList we read (a list of prefixes, not a document).
_MAX_PREFIX_LIST = 1024

_local = threading.local()


def _parser() -> etree.XMLParser:
    """One hardened parser per thread (lxml parsers are not thread-safe; making one costs ~5 us)."""
    p = getattr(_local, "parser", None)
    if p is None:
        p = _local.parser = safexml.parser(remove_comments=False, remove_blank_text=False)
    return p


@dataclass(frozen=True)
class Verified:
    """What a good signature tells the caller: the signed copy and the algorithms used."""

    signed: _Element
    signature_method: str
    digest_method: str

    @property
    def used_sha1(self) -> bool:
        return self.signature_method == RSA_SHA1 or self.digest_method == SHA1


def _invalid(reason: str = "assertion signature invalid") -> SecurityFault:
    return SecurityFault("wsse:FailedCheck", reason)


def _elements(parent: _Element) -> list[_Element]:
    """Element children only (comments and processing instructions are not part of the shape)."""
    return [c for c in parent if isinstance(c.tag, str)]


def _shape(parent: _Element, *tags: str, optional: int = 0) -> list[_Element]:
    """``parent``'s element children, which must be exactly ``tags`` (the last ``optional`` of them
    may be absent)."""
    children = _elements(parent)
    if not len(tags) - optional <= len(children) <= len(tags):
        raise _invalid()
    for child, tag in zip(children, tags, strict=False):
        if child.tag != tag:
            raise _invalid()
    return children


def prefix_list(parent: _Element) -> list[str] | None:
    """The ``InclusiveNamespaces PrefixList`` of a C14N method or transform element, which may have
    no other children. ``#default`` is passed through: libxml2's C14N knows it."""
    children = _elements(parent)
    if not children:
        return None
    if len(children) != 1 or children[0].tag != _INCLUSIVE:
        raise _invalid("exclusive C14N required")
    raw = children[0].get("PrefixList") or ""
    if len(raw) > _MAX_PREFIX_LIST:
        raise _invalid()
    return raw.split() or None


def exc_c14n(el: _Element, prefixes: list[str] | None) -> bytes:
    return etree.tostring(el, method="c14n", exclusive=True, with_comments=False, inclusive_ns_prefixes=prefixes)


def enveloped_form(assertion: _Element, prefixes: list[str] | None,
                   whole: bytes | None = None) -> tuple[bytes, _Element]:
    """The assertion as the enveloped-signature + exclusive C14N transforms see it: the canonical
    bytes and the parsed copy they are the canonical form of (its one ``ds:Signature`` child gone).
    ``whole``: ``exc_c14n(assertion, prefixes)`` when the caller has it already."""
    copy = etree.fromstring(whole if whole is not None else exc_c14n(assertion, prefixes), parser=_parser())
    sigs = copy.findall(_SIGNATURE)
    if len(sigs) != 1:
        raise _invalid()
    sig = sigs[0]
    tail, sig.tail = sig.tail, None
    prev = sig.getprevious()
    copy.remove(sig)
    if tail:  # enveloped-signature removes the element only: the text after it stays
        if prev is not None:
            prev.tail = (prev.tail or "") + tail
        else:
            copy.text = (copy.text or "") + tail
    return exc_c14n(copy, prefixes), copy


def unique_id(element: _Element) -> bool:
    """True when ``element``'s ``ID`` is carried by no other ID-like attribute in its document."""
    ident = element.get("ID")
    if not ident:
        return False
    hits = _SAME_VALUE(element.getroottree().getroot(), v=ident)
    return sum(1 for h in hits if h.attrname.rpartition("}")[2] in _ID_NAMES) == 1


def reference_prefixes(assertion: _Element) -> list[str] | None:
    """The PrefixList of the assertion's reference transform, looked up leniently (None when the
    signature is not where the profile puts it): what its canonical form for a cache key uses, so
    that the same bytes can feed the digest when the signature is checked."""
    for incl in assertion.iterfind(f"{_SIGNATURE}/{_SIGNED_INFO}/{_REFERENCE}/{_TRANSFORMS}/{_TRANSFORM}/{_INCLUSIVE}"):
        raw = incl.get("PrefixList") or ""
        return (raw.split() or None) if len(raw) <= _MAX_PREFIX_LIST else None
    return None


def verify_assertion(
    assertion: _Element,
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    allow_sha1: bool = False,
    canonical: tuple[list[str] | None, bytes] | None = None,
) -> Verified:
    """Check ``assertion``'s enveloped signature against ``key`` (the pinned certificate's) under the
    profile above; :class:`SecurityFault` (``wsse:FailedCheck``) when anything differs.

    ``canonical``: the assertion's exclusive C14N (comments excluded) with the given PrefixList,
    already computed by the caller; used when that PrefixList is the reference's."""
    ident = assertion.get("ID")
    if not ident:
        raise _invalid()
    children = _elements(assertion)
    if len(children) < 2 or children[1].tag != _SIGNATURE or len(assertion.findall(_SIGNATURE)) != 1:
        raise _invalid()
    sig = children[1]
    signed_info, value_el = _shape(sig, _SIGNED_INFO, _SIGNATURE_VALUE, _KEY_INFO, optional=1)[:2]
    c14n_method, sig_method, reference = _shape(signed_info, _C14N_METHOD, _SIGNATURE_METHOD, _REFERENCE)
    if c14n_method.get("Algorithm") != EXC_C14N:
        raise _invalid("exclusive C14N required")
    si_prefixes = prefix_list(c14n_method)
    sig_alg = sig_method.get("Algorithm") or ""
    allowed_sigs = STRONG_SIGNATURES | ({RSA_SHA1} if allow_sha1 else frozenset())
    allowed_digests = STRONG_DIGESTS | ({SHA1} if allow_sha1 else frozenset())
    if sig_alg not in allowed_sigs or _elements(sig_method):
        raise _invalid("signature algorithm not allowed")

    transforms, digest_method, digest_value = _shape(reference, _TRANSFORMS, _DIGEST_METHOD, _DIGEST_VALUE)
    digest_alg = digest_method.get("Algorithm") or ""
    if digest_alg not in allowed_digests or _elements(digest_method):
        raise _invalid("signature algorithm not allowed")
    if reference.get("URI") != f"#{ident}":
        raise _invalid()
    steps = _elements(transforms)
    if [t.tag for t in steps] != [_TRANSFORM, _TRANSFORM] or steps[0].get("Algorithm") != ENVELOPED \
            or _elements(steps[0]) or steps[1].get("Algorithm") != EXC_C14N:
        raise _invalid("exclusive C14N required")
    ref_prefixes = prefix_list(steps[1])
    if not unique_id(assertion):
        raise _invalid()

    try:
        expected = b64decode_strict(text_of(digest_value))
        signature_value = b64decode_strict(text_of(value_el))
    except (binascii.Error, ValueError):
        raise _invalid() from None
    whole = canonical[1] if canonical is not None and canonical[0] == ref_prefixes else None
    digest_input, signed = enveloped_form(assertion, ref_prefixes, whole)
    if not hmac.compare_digest(expected, hashlib.new(DIGEST_HASHES[digest_alg], digest_input).digest()):
        raise _invalid()
    if not verify_signature_value(key, sig_alg, signature_value, exc_c14n(signed_info, si_prefixes)):
        raise _invalid()
    return Verified(signed, sig_alg, digest_alg)


def key_info_certificates(signature: _Element) -> list[str]:
    """The base64 texts of ``KeyInfo/X509Data/X509Certificate``: a hint for which pinned
    certificate to try, never a source of trust."""
    return [text_of(c) for c in signature.findall(f"{_KEY_INFO}/{{{DS}}}X509Data/{{{DS}}}X509Certificate")]
