"""Trusted partners: who they are, which exact certificates they sign with, where their endpoints are.

Trust is *pinned*: a signature is trusted only when made with a certificate listed here (matched by
SHA-256 fingerprint of the DER bytes). No chain building happens, so a partner's CA issuing a
certificate to someone else grants that someone nothing, and no chain can loop or grow.

The partners file is TOML::

    [[partner]]
    name = "Example VA"
    # member communities signing with this partner's certificate (Carequality / eHealth Exchange
    # implementers serve many); the first is the partner's own. The older single
    # ``home_community_id = "..."`` is still read.
    communities = ["urn:oid:2.16.840.1.113883.4.349", "urn:oid:2.16.840.1.113883.4.349.1"]
    # SAML Issuer names accepted besides the signing certificate's subject DN (optional)
    issuers = ["CN=VA SAML issuer,O=VA"]
    certificates = ["certs/va.pem"]        # file paths (relative to this file) or inline PEM
    allow_sha1 = false
    retrieve_batch_size = 50
    timeout = 30.0
    proxy = "http://proxy.example:3128"    # optional: reach this partner through it ("direct": never a proxy)
    [partner.endpoints]
    ITI-38 = "https://va.example/xca/query"
    [partner.options]
    anything = "kept for other modules"

A running node follows the file: :meth:`TrustStore.watching` re-reads it when its stat signature
changes (see :mod:`xds_node.security.filewatch`), so every worker picks up an edit on its next
request and a broken file keeps the last good partners.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from .filewatch import WatchedFile, atomic_write

_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PARTNER_KEYS = {
    "name",
    "home_community_id",
    "communities",
    "issuers",
    "certificates",
    "endpoints",
    "allow_sha1",
    "retrieve_batch_size",
    "timeout",
    "options",
    "proxy",
}

CertLike = x509.Certificate | bytes | str


_OID_RE = re.compile(r"[0-2](\.(0|[1-9][0-9]{0,30})){1,63}")


def normalize_hcid(hcid: str) -> str:
    """``urn:oid:1.2.3`` and ``1.2.3`` name the same community; compare in the ``urn:oid:`` form."""
    hcid = hcid.strip()
    if hcid.lower().startswith("urn:oid:"):
        hcid = hcid[8:]
    return f"urn:oid:{hcid}"


def valid_hcid(hcid: str) -> str:
    """:func:`normalize_hcid`, refusing anything that is not an ISO OID (ValueError)."""
    norm = normalize_hcid(hcid)
    if not _OID_RE.fullmatch(norm[8:]):
        raise ValueError(f"not a community OID: {hcid.strip()[:80]!r} (expected urn:oid:1.2.3...)")
    return norm


_DN_TYPE_RE = re.compile(r"(?:^|\s*(?<!\\)([,+]))\s*([A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)\s*=\s*")


def valid_proxy(value: Any, partner: str = "") -> str | None:
    """A partner's ``proxy``: None, ``"direct"``, or an http(s) URL naming a host (and port), with
    optional credentials; nothing else (no path, query or fragment). The message of a refusal never
    repeats credentials."""
    if value is None or value == "":
        return None
    who = f"partner {partner!r}: " if partner else ""
    if not isinstance(value, str):
        raise ValueError(f"{who}proxy must be a URL string")
    value = value.strip()
    if value.lower() == "direct":
        return "direct"
    shown = re.sub(r"//[^/@]*@", "//***@", value)
    try:
        u = urlsplit(value)
        u.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"{who}proxy {shown!r} is not a valid URL") from None
    if u.scheme.lower() not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query \
            or u.fragment or any(c in value for c in " \t\r\n"):
        raise ValueError(f"{who}proxy {shown!r} must be http://host:port or https://host:port "
                         "(optionally user:password@), or \"direct\"")
    return value


_DnKey = tuple[frozenset[tuple[str, str]], ...]
#: Issuer names longer than this are parsed every time instead of remembered (bounds the memo).
_MEMO_MAX_NAME = 1024


def _dn_key(name: str) -> _DnKey | None:
    """:func:`_parse_dn_key`, remembered: partners send the same few Issuer names on every request,
    and parsing one (regex + RFC 4514 parser) cost ~0.1 ms, 5 % of a verified request."""
    if len(name) > _MEMO_MAX_NAME:
        return _parse_dn_key(name)
    return _memo_dn_key(name)


def _parse_dn_key(name: str) -> _DnKey | None:
    """A DN in comparable form: RDNs in order, each a set of (OID, value casefolded with inner
    whitespace collapsed), per RFC 4517 caseIgnoreMatch; None when ``name`` is not an RFC 4514 DN."""
    # RFC 4514 types are case-insensitive and stacks put spaces after commas: normalise both first
    text = _DN_TYPE_RE.sub(lambda m: f"{m.group(1) or ''}{m.group(2).upper()}=", name.strip())
    try:
        parsed = x509.Name.from_rfc4514_string(text, {"E": x509.NameOID.EMAIL_ADDRESS,
                                                      "EMAILADDRESS": x509.NameOID.EMAIL_ADDRESS})
    except (ValueError, TypeError):
        return None
    if not parsed.rdns:
        return None
    return tuple(frozenset((a.oid.dotted_string, " ".join(str(a.value).split()).casefold()) for a in rdn)
                 for rdn in parsed.rdns)


_memo_dn_key = functools.lru_cache(maxsize=4096)(_parse_dn_key)


def same_name(a: str, b: str) -> bool:
    """Issuer names compared as DNs when both are DNs (``CN=x, O=y`` equals ``cn=X,o=Y``), exactly
    otherwise (an entity URI or OID issuer)."""
    ka, kb = _dn_key(a), _dn_key(b)
    if ka is not None and kb is not None:
        return ka == kb
    return a.strip() == b.strip()


@functools.lru_cache(maxsize=1024)
def cert_subject_key(cert: x509.Certificate) -> _DnKey | None:
    """The certificate subject in :func:`_dn_key` form (remembered per certificate: certificates are
    immutable and compare by their DER bytes)."""
    return _dn_key(cert.subject.rfc4514_string())


def to_certificate(cert: CertLike) -> x509.Certificate:
    """Accept a certificate object, PEM text/bytes or DER bytes."""
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.encode("ascii") if isinstance(cert, str) else bytes(cert)
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def fingerprint(cert: CertLike) -> str:
    """Lower-case hex SHA-256 over the certificate's DER encoding: the pin."""
    if isinstance(cert, x509.Certificate):
        return _cert_fingerprint(cert)
    return to_certificate(cert).fingerprint(hashes.SHA256()).hex()


@functools.lru_cache(maxsize=1024)
def _cert_fingerprint(cert: x509.Certificate) -> str:
    """Remembered per certificate object (pinned certificates are asked for on every request)."""
    return cert.fingerprint(hashes.SHA256()).hex()


#: Longest partner (or internal client) name: replay state is keyed by it in a 200-character column,
#: where a longer name would fail every group-commit round its messages joined.
MAX_PARTNER_NAME = 200


@dataclass
class Partner:
    """One trusted partner (a VA/DoD gateway, an HIE or implementer serving member communities).

    ``communities`` are every homeCommunityId this partner may speak for (its members);
    ``home_community_id`` is the first of them (routing and display use it where one is needed).
    ``issuers`` are SAML Issuer names accepted besides the signing certificate's subject DN.
    """

    name: str
    home_community_id: str = ""
    certificates: list[x509.Certificate] = field(default_factory=list)
    endpoints: dict[str, str] = field(default_factory=dict)
    allow_sha1: bool = False
    retrieve_batch_size: int = 50
    timeout: float = 30.0
    options: dict[str, Any] = field(default_factory=dict)
    communities: list[str] = field(default_factory=list)
    issuers: list[str] = field(default_factory=list)
    #: forward proxy for calls to this partner (``http(s)://[user:password@]host:port``), ``"direct"``
    #: for none whatever HTTPS_PROXY says, or None to follow the environment
    proxy: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("partner needs a name")
        if len(self.name) > MAX_PARTNER_NAME:  # replay_entry.partner and replay_partner.partner hold 200
            raise ValueError(f"partner name {self.name[:40]!r}... is longer than {MAX_PARTNER_NAME} characters")
        members: list[str] = []
        for c in ([self.home_community_id] if self.home_community_id else []) + list(self.communities):
            norm = valid_hcid(c)
            if norm not in members:
                members.append(norm)
        if not members:
            raise ValueError(f"partner {self.name!r} needs at least one community (homeCommunityId)")
        self.communities = members
        self.home_community_id = members[0]
        self.issuers = [str(i).strip() for i in self.issuers if str(i).strip()]
        self.certificates = [to_certificate(c) for c in self.certificates]
        self.proxy = valid_proxy(self.proxy, self.name)

    def accepts_community(self, hcid: str) -> bool:
        return normalize_hcid(hcid) in self.communities

    def accepts_issuer(self, issuer: str, signer: x509.Certificate | None) -> bool:
        """The Issuer is the signing certificate's subject (as a DN) or one listed for the partner."""
        if signer is not None:
            key = _dn_key(issuer)
            if key is not None and key == cert_subject_key(signer):
                return True
        return any(same_name(issuer, allowed) for allowed in self.issuers)

    @property
    def fingerprints(self) -> list[str]:
        return [fingerprint(c) for c in self.certificates]


def _load_cert_entry(entry: str, base: Path) -> list[x509.Certificate]:
    """An inline PEM (possibly several) or a path to a PEM/DER file relative to the partners file."""
    if "-----BEGIN" in entry:
        data = entry.encode("ascii")
    else:
        path = Path(entry)
        data = (path if path.is_absolute() else base / path).read_bytes()
    pems = _PEM_RE.findall(data)
    if pems:
        return [x509.load_pem_x509_certificate(p) for p in pems]
    return [x509.load_der_x509_certificate(data)]


class PartnerConflict(ValueError):
    """A partner that cannot be added beside the others (name, community or certificate taken)."""

    def __init__(self, message: str, existing: str) -> None:
        super().__init__(message)
        self.existing = existing


@dataclass(frozen=True)
class _Index:
    """One consistent, never-mutated view of the partners; swapped whole on every change."""

    partners: dict[str, Partner]
    by_fp: dict[str, Partner]
    by_hcid: dict[str, Partner]
    cert_by_fp: dict[str, x509.Certificate] = field(default_factory=dict)

    @classmethod
    def build(cls, partners: Iterable[Partner]) -> _Index:
        idx = cls({}, {}, {}, {})
        for p in partners:
            idx._add(p)
        return idx

    def _add(self, partner: Partner) -> None:
        if partner.name in self.partners:
            raise PartnerConflict(f"duplicate partner name {partner.name!r}", partner.name)
        for hcid in partner.communities:
            if hcid in self.by_hcid:
                owner = self.by_hcid[hcid].name
                raise PartnerConflict(f"community {hcid} already belongs to partner {owner!r}", owner)
        fps = partner.fingerprints
        if len(set(fps)) != len(fps):
            raise PartnerConflict(f"partner {partner.name!r}: certificate listed twice", partner.name)
        for fp in fps:
            if fp in self.by_fp:
                owner = self.by_fp[fp].name
                raise PartnerConflict(f"certificate {fp[:16]}… already pinned for partner {owner!r}", owner)
        self.partners[partner.name] = partner
        for hcid in partner.communities:
            self.by_hcid[hcid] = partner
        for fp, cert in zip(fps, partner.certificates, strict=True):
            self.by_fp[fp] = partner
            self.cert_by_fp[fp] = cert


def _parse_partners(path: Path) -> list[Partner]:
    with path.open("rb") as fh:
        doc = tomllib.load(fh)
    unknown = set(doc) - {"partner"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    partners: list[Partner] = []
    for raw in doc.get("partner", []):
        extra = set(raw) - _PARTNER_KEYS
        if extra:
            raise ValueError(f"{path}: partner {raw.get('name')!r}: unknown keys {sorted(extra)}")
        certs: list[x509.Certificate] = []
        for entry in raw.get("certificates", []):
            certs.extend(_load_cert_entry(entry, path.parent))
        communities = raw.get("communities", [])
        issuers = raw.get("issuers", [])
        if not isinstance(communities, list) or not isinstance(issuers, list):
            raise ValueError(f"{path}: partner {raw.get('name')!r}: communities and issuers are lists")
        try:
            partners.append(Partner(
                name=raw["name"],
                home_community_id=raw.get("home_community_id", ""),
                communities=[str(c) for c in communities],
                issuers=[str(i) for i in issuers],
                certificates=certs,
                endpoints=dict(raw.get("endpoints", {})),
                allow_sha1=bool(raw.get("allow_sha1", False)),
                retrieve_batch_size=int(raw.get("retrieve_batch_size", 50)),
                timeout=float(raw.get("timeout", 30.0)),
                options=dict(raw.get("options", {})),
                proxy=raw.get("proxy"),
            ))
        except KeyError as exc:
            raise ValueError(f"{path}: a partner lacks {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return partners


class TrustStore:
    """The set of partners, indexed by certificate fingerprint and by every member homeCommunityId.

    Thread-safe: lookups read one immutable index that :meth:`add`/:meth:`remove` (or, for a store
    made with :meth:`watching`, a change of the file) replace in one assignment.
    """

    def __init__(self, partners: Iterable[Partner] = ()) -> None:
        self._lock = threading.RLock()
        self._index = _Index.build(partners)
        self._watch: WatchedFile[_Index] | None = None

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        """Read a partners file once (ValueError/OSError when it is broken)."""
        path = Path(path)
        try:
            return cls(_parse_partners(path))
        except PartnerConflict as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def watching(cls, path: Path) -> TrustStore:
        """A store that follows ``path``: each lookup checks the file's stat signature (one
        ``stat`` call) and re-reads it when it changed, so a partner added, replaced or removed
        by ``xds-node partners`` (or an editor) holds for the next request in every worker.
        A missing file means no partners; a broken one keeps the last good set and logs an error."""
        store = cls()

        def load(p: Path) -> _Index:
            return cls.load(p)._index

        store._watch = WatchedFile(Path(path), load, empty=lambda: _Index.build(()), what="partners file")
        store._watch.prime()  # a broken file at start stops the start
        return store

    @property
    def path(self) -> Path | None:
        return self._watch.path if self._watch is not None else None

    def _idx(self) -> _Index:
        return self._watch.get() if self._watch is not None else self._index

    def add(self, partner: Partner) -> None:
        """Add a partner; a name, community or certificate already claimed by another partner is a
        :class:`PartnerConflict`, because pinning must map each certificate to exactly one partner."""
        self._mutate(lambda ps: [*ps, partner])

    def remove(self, name: str) -> None:
        """Remove a partner (KeyError when there is none by that name)."""
        if name not in self._idx().partners:
            raise KeyError(name)
        self._mutate(lambda ps: [p for p in ps if p.name != name])

    def replace(self, partner: Partner) -> None:
        """Put ``partner`` in place of the partner with the same name (KeyError when there is none)."""
        if partner.name not in self._idx().partners:
            raise KeyError(partner.name)
        self._mutate(lambda ps: [partner if p.name == partner.name else p for p in ps])

    def _mutate(self, change) -> None:
        if self._watch is not None:
            raise TypeError("this store follows its file: change the file (xds-node partners ...)")
        with self._lock:
            self._index = _Index.build(change(list(self._index.partners.values())))

    def partner_for_certificate(self, cert: CertLike) -> Partner | None:
        """The partner that pinned exactly this certificate, or None."""
        return self.partner_for_fingerprint(fingerprint(cert))

    def partner_for_fingerprint(self, fp: str) -> Partner | None:
        return self._idx().by_fp.get(fp.lower())

    def certificate_for_fingerprint(self, fp: str) -> x509.Certificate | None:
        """The pinned certificate with this fingerprint, or None."""
        return self._idx().cert_by_fp.get(fp.lower())

    def partner_for_community(self, hcid: str) -> Partner | None:
        """The partner that speaks for this community (any of its members), or None."""
        return self._idx().by_hcid.get(normalize_hcid(hcid))

    def partner(self, name: str) -> Partner | None:
        return self._idx().partners.get(name)

    def partners(self) -> list[Partner]:
        return list(self._idx().partners.values())

    def save(self, path: Path) -> None:
        """Write the store as TOML (atomically: a temporary file renamed over the old one, so a
        running node never reads half a file); certificates inline as PEM so the file stands alone."""
        out: list[str] = ["# xds-node trusted partners (certificates are pinned by exact match)", ""]
        for p in self.partners():
            out.append("[[partner]]")
            out.append(f"name = {_toml_value(p.name)}")
            out.append(f"communities = {_toml_value(list(p.communities))}")
            if p.issuers:
                out.append(f"issuers = {_toml_value(list(p.issuers))}")
            out.append(f"allow_sha1 = {_toml_value(p.allow_sha1)}")
            out.append(f"retrieve_batch_size = {_toml_value(p.retrieve_batch_size)}")
            out.append(f"timeout = {_toml_value(float(p.timeout))}")
            if p.proxy:
                out.append(f"proxy = {_toml_value(p.proxy)}")
            out.append("certificates = [")
            for c in p.certificates:
                pem = c.public_bytes(Encoding.PEM).decode("ascii")
                out.append(f'"""\n{pem}""",')
            out.append("]")
            for table, values in (("endpoints", p.endpoints), ("options", p.options)):
                out.append(f"[partner.{table}]")
                for k, v in values.items():
                    out.append(f"{_toml_key(k)} = {_toml_value(v)}")
            out.append("")
        atomic_write(Path(path), "\n".join(out).encode("utf-8"))


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_str(s: str) -> str:
    parts = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            parts.append('\\"')
        elif ch == "\\":
            parts.append("\\\\")
        elif ch == "\n":
            parts.append("\\n")
        elif ch == "\t":
            parts.append("\\t")
        elif o < 0x20 or o == 0x7F:
            parts.append(f"\\u{o:04X}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _toml_value(v: Any) -> str:
    """The small TOML subset partner files need: strings, bools, numbers, lists and inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("non-finite float in partners file")
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
