"""Internal clients: the organisation's own EHR, document sources and consumers (``clients.toml``).

They are the only callers of ``/xds/*`` and ``/ig/*`` besides anonymous loopback callers, and are
pinned the way partners are: by the exact SHA-256 fingerprint of each certificate they present, as
a TLS client certificate (mutual TLS) or as the signer of a SAML assertion. The file sits beside
``partners.toml``::

    [[client]]
    name = "ehr-boston"
    certificates = ["certs/ehr.pem"]      # file paths (relative to this file) or inline PEM

A client has no community of its own: it belongs to ours, so its assertions must carry our
homeCommunityId. Each client is exposed as a :class:`~xds_node.security.trust.Partner` so the same
:class:`~xds_node.security.saml.InboundVerifier` checks partners' and clients' assertions.

:class:`ClientDirectory` re-reads the file when it changes (a ``stat`` per lookup), so every worker
of a running node sees ``xds-node clients add|remove`` on its next request. A file that cannot be
read is treated as naming no client (fail closed) and logged.
"""

from __future__ import annotations

import logging
import os
import threading
import tomllib
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .trust import CertLike, Partner, _load_cert_entry, _toml_value, fingerprint

log = logging.getLogger(__name__)
_CLIENT_KEYS = {"name", "certificates"}


class ClientStore:
    """A fixed set of internal clients, indexed by name and by certificate fingerprint."""

    def __init__(self, home_community_id: str, clients: Iterable[Partner] = ()) -> None:
        self.home_community_id = home_community_id
        self._clients: dict[str, Partner] = {}
        self._by_fp: dict[str, Partner] = {}
        for c in clients:
            self._insert(c)

    @classmethod
    def load(cls, path: Path, home_community_id: str) -> ClientStore:
        path = Path(path)
        with path.open("rb") as fh:
            try:
                doc = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: not valid TOML: {exc}") from None
        unknown = set(doc) - {"client"}
        if unknown:
            raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
        store = cls(home_community_id)
        for raw in doc.get("client", []):
            extra = set(raw) - _CLIENT_KEYS
            if extra:
                raise ValueError(f"{path}: client {raw.get('name')!r}: unknown keys {sorted(extra)}")
            if not isinstance(raw.get("name"), str) or not raw["name"].strip():
                raise ValueError(f"{path}: every client needs a name")
            certs: list[x509.Certificate] = []
            for entry in raw.get("certificates", []):
                certs.extend(_load_cert_entry(entry, path.parent))
            store.add(raw["name"].strip(), certs)
        return store

    def add(self, name: str, certificates: Iterable[CertLike]) -> Partner:
        """Add a client; a name or certificate already used is an error (a pin names one client)."""
        client = Partner(name=name, home_community_id=self.home_community_id, certificates=list(certificates))
        if not client.certificates:
            raise ValueError(f"client {name!r}: at least one certificate is required")
        self._insert(client)
        return client

    def _insert(self, client: Partner) -> None:
        if client.name in self._clients:
            raise ValueError(f"client {client.name!r} already exists")
        fps = client.fingerprints
        taken = [fp for fp in fps if fp in self._by_fp]
        if taken or len(set(fps)) != len(fps):
            owner = self._by_fp[taken[0]].name if taken else client.name
            raise ValueError(f"client {client.name!r}: certificate already pinned for client {owner!r}")
        self._clients[client.name] = client
        for fp in fps:
            self._by_fp[fp] = client

    def remove(self, name: str) -> None:
        client = self._clients.pop(name, None)
        if client is None:
            raise KeyError(name)
        for fp in client.fingerprints:
            self._by_fp.pop(fp, None)

    # the TrustStore lookups InboundVerifier and the access policy use
    def partner_for_fingerprint(self, fp: str) -> Partner | None:
        return self._by_fp.get(fp.lower())

    def partner_for_certificate(self, cert: CertLike) -> Partner | None:
        return self.partner_for_fingerprint(fingerprint(cert))

    def partner_for_community(self, hcid: str) -> Partner | None:
        return None  # clients are never the target of an outbound call

    def partner(self, name: str) -> Partner | None:
        return self._clients.get(name)

    def partners(self) -> list[Partner]:
        return list(self._clients.values())

    def save(self, path: Path) -> None:
        """Write as TOML with the certificates inline (the file stands alone); atomically, so a
        running node never reads half a file."""
        out = ["# xds-node internal clients (certificates are pinned by exact match)", ""]
        for c in self._clients.values():
            out += ["[[client]]", f"name = {_toml_value(c.name)}", "certificates = ["]
            out += [f'"""\n{cert.public_bytes(Encoding.PEM).decode("ascii")}""",' for cert in c.certificates]
            out += ["]", ""]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("\n".join(out), encoding="utf-8")
        os.replace(tmp, path)


class ClientDirectory:
    """``clients.toml`` as every request sees it now: re-read whenever the file changes.

    Duck-types the lookups of :class:`~xds_node.security.trust.TrustStore`, so it can be handed to
    an :class:`~xds_node.security.saml.InboundVerifier` as its trust store.
    """

    def __init__(self, path: Path, home_community_id: str) -> None:
        self.path = Path(path)
        self.home_community_id = home_community_id
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._store = ClientStore(home_community_id)

    def current(self) -> ClientStore:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return self._store
        with self._lock:
            if stamp != self._stamp:
                store = ClientStore(self.home_community_id)
                if stamp is not None:
                    try:
                        store = ClientStore.load(self.path, self.home_community_id)
                    except Exception as exc:  # fail closed: a broken file admits nobody
                        log.error("clients file %s not usable, no internal client is admitted: %s", self.path, exc)
                self._store, self._stamp = store, stamp
            return self._store

    def partner_for_fingerprint(self, fp: str) -> Partner | None:
        return self.current().partner_for_fingerprint(fp)

    def partner_for_certificate(self, cert: CertLike) -> Partner | None:
        return self.current().partner_for_certificate(cert)

    def partner_for_community(self, hcid: str) -> Partner | None:
        return None

    def partner(self, name: str) -> Partner | None:
        return self.current().partner(name)

    def partners(self) -> list[Partner]:
        return self.current().partners()
