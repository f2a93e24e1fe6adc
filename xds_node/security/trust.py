"""Trusted partners: who they are, which exact certificates they sign with, where their endpoints are.

Trust is *pinned*: a signature is trusted only when made with a certificate listed here (matched by
SHA-256 fingerprint of the DER bytes). No chain building happens, so a partner's CA issuing a
certificate to someone else grants that someone nothing, and no chain can loop or grow.

The partners file is TOML::

    [[partner]]
    name = "Example VA"
    home_community_id = "urn:oid:2.16.840.1.113883.4.349"
    certificates = ["certs/va.pem"]        # file paths (relative to this file) or inline PEM
    allow_sha1 = false
    retrieve_batch_size = 50
    timeout = 30.0
    [partner.endpoints]
    ITI-38 = "https://va.example/xca/query"
    [partner.options]
    anything = "kept for other modules"
"""

from __future__ import annotations

import math
import re
import threading
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PARTNER_KEYS = {
    "name",
    "home_community_id",
    "certificates",
    "endpoints",
    "allow_sha1",
    "retrieve_batch_size",
    "timeout",
    "options",
}

CertLike = x509.Certificate | bytes | str


def normalize_hcid(hcid: str) -> str:
    """``urn:oid:1.2.3`` and ``1.2.3`` name the same community; compare in the ``urn:oid:`` form."""
    hcid = hcid.strip()
    if hcid.lower().startswith("urn:oid:"):
        hcid = hcid[8:]
    return f"urn:oid:{hcid}"


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
    return to_certificate(cert).fingerprint(hashes.SHA256()).hex()


@dataclass
class Partner:
    """One trusted partner community (a VA/DoD gateway, a hospital's HIE, ...)."""

    name: str
    home_community_id: str
    certificates: list[x509.Certificate] = field(default_factory=list)
    endpoints: dict[str, str] = field(default_factory=dict)
    allow_sha1: bool = False
    retrieve_batch_size: int = 50
    timeout: float = 30.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("partner needs a name")
        self.home_community_id = normalize_hcid(self.home_community_id)
        self.certificates = [to_certificate(c) for c in self.certificates]

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


class TrustStore:
    """The set of partners, indexed by certificate fingerprint and by homeCommunityId. Thread-safe."""

    def __init__(self, partners: Iterable[Partner] = ()) -> None:
        self._lock = threading.RLock()
        self._partners: dict[str, Partner] = {}
        self._by_fp: dict[str, Partner] = {}
        self._by_hcid: dict[str, Partner] = {}
        for p in partners:
            self.add(p)

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        path = Path(path)
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
        unknown = set(doc) - {"partner"}
        if unknown:
            raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
        store = cls()
        for raw in doc.get("partner", []):
            extra = set(raw) - _PARTNER_KEYS
            if extra:
                raise ValueError(f"{path}: partner {raw.get('name')!r}: unknown keys {sorted(extra)}")
            certs: list[x509.Certificate] = []
            for entry in raw.get("certificates", []):
                certs.extend(_load_cert_entry(entry, path.parent))
            store.add(
                Partner(
                    name=raw["name"],
                    home_community_id=raw["home_community_id"],
                    certificates=certs,
                    endpoints=dict(raw.get("endpoints", {})),
                    allow_sha1=bool(raw.get("allow_sha1", False)),
                    retrieve_batch_size=int(raw.get("retrieve_batch_size", 50)),
                    timeout=float(raw.get("timeout", 30.0)),
                    options=dict(raw.get("options", {})),
                )
            )
        return store

    def add(self, partner: Partner) -> None:
        """Add a partner; a name, community or certificate already claimed by another partner is an error,
        because pinning must map each certificate to exactly one partner."""
        with self._lock:
            if partner.name in self._partners:
                raise ValueError(f"duplicate partner name {partner.name!r}")
            if partner.home_community_id in self._by_hcid:
                raise ValueError(f"duplicate homeCommunityId {partner.home_community_id}")
            fps = partner.fingerprints
            if any(fp in self._by_fp for fp in fps) or len(set(fps)) != len(fps):
                raise ValueError(f"partner {partner.name!r}: certificate already pinned")
            self._partners[partner.name] = partner
            self._by_hcid[partner.home_community_id] = partner
            for fp in fps:
                self._by_fp[fp] = partner

    def remove(self, name: str) -> None:
        with self._lock:
            partner = self._partners.pop(name)
            self._by_hcid.pop(partner.home_community_id, None)
            for fp in partner.fingerprints:
                self._by_fp.pop(fp, None)

    def partner_for_certificate(self, cert: CertLike) -> Partner | None:
        """The partner that pinned exactly this certificate, or None."""
        return self.partner_for_fingerprint(fingerprint(cert))

    def partner_for_fingerprint(self, fp: str) -> Partner | None:
        with self._lock:
            return self._by_fp.get(fp.lower())

    def partner_for_community(self, hcid: str) -> Partner | None:
        with self._lock:
            return self._by_hcid.get(normalize_hcid(hcid))

    def partner(self, name: str) -> Partner | None:
        with self._lock:
            return self._partners.get(name)

    def partners(self) -> list[Partner]:
        with self._lock:
            return list(self._partners.values())

    def save(self, path: Path) -> None:
        """Write the store as TOML; certificates are written inline as PEM so the file stands alone."""
        out: list[str] = ["# xds-node trusted partners (certificates are pinned by exact match)", ""]
        for p in self.partners():
            out.append("[[partner]]")
            out.append(f"name = {_toml_value(p.name)}")
            out.append(f"home_community_id = {_toml_value(p.home_community_id)}")
            out.append(f"allow_sha1 = {_toml_value(p.allow_sha1)}")
            out.append(f"retrieve_batch_size = {_toml_value(p.retrieve_batch_size)}")
            out.append(f"timeout = {_toml_value(float(p.timeout))}")
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
        Path(path).write_text("\n".join(out), encoding="utf-8")


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
