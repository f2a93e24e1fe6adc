"""Node settings: built-in defaults, overridden by a TOML file, overridden by ``XDS_*`` variables.

One flat dataclass keeps every knob discoverable in one place (``xds-node config`` prints it).
Environment variables use the field name upper-cased with an ``XDS_`` prefix, for example
``XDS_DATABASE_URL`` or ``XDS_HOME_COMMUNITY_ID``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Demo identifiers under the 2.16.840.1.113883.3.72.5.9 (fictional test) arc; replace in production.
DEMO_HOME_COMMUNITY_ID = "urn:oid:1.3.6.1.4.1.21367.2026.1.1"
DEMO_REPOSITORY_ID = "1.3.6.1.4.1.21367.2026.1.2"
DEMO_REGISTRY_ID = "1.3.6.1.4.1.21367.2026.1.3"


@dataclass
class Settings:
    # identity of this node
    home_community_id: str = DEMO_HOME_COMMUNITY_ID
    registry_unique_id: str = DEMO_REGISTRY_ID
    repository_unique_id: str = DEMO_REPOSITORY_ID
    organization_name: str = "xds-node demo community"

    # storage
    data_dir: Path = Path("./data")
    database_url: str = ""  # empty: sqlite:///<data_dir>/registry.db

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = ""  # public URL prefix for WSDL soap:address; empty: http://host:port
    workers: int = 1
    max_body_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 256 * 1024

    #: When set, ITI-41 registers metadata with this remote registry (ITI-42 over SOAP) instead of
    #: the co-located one, e.g. "https://registry.example.org/xds/registry".
    registry_url: str = ""

    # registry behaviour
    #: When true, ITI-42 rejects patient ids the patient index does not know (XDSUnknownPatientId).
    require_known_patient: bool = False
    #: Upper bound on objects a single stored query may return (XDSTooManyResults past it).
    max_query_results: int = 5000

    # security (used by the gateway endpoints; see security/)
    #: Turns off WS-Security/SAML checks on the gateway endpoints. For lab use only: the node logs
    #: a warning at every start while it is set.
    insecure_no_gateway_security: bool = False
    #: Also require WS-Security/SAML on the XDS registry and repository endpoints.
    secure_xds_endpoints: bool = False
    #: Roles (SNOMED CT codes) allowed to query; empty allows any role the assertion carries.
    allowed_roles: list[str] = field(default_factory=list)
    device_oid: str = ""  # HL7v3 device id of this gateway (XCPD); default: the home community OID
    audit_syslog: str = ""  # "tcp://host:port" or "tls://host:port": send ATNA messages as RFC 5424 syslog
    clock_skew_seconds: int = 300
    partners_file: Path | None = None  # default: <data_dir>/partners.toml
    allowed_purposes: list[str] = field(default_factory=lambda: ["TREATMENT"])
    audience: str = ""
    consent_mode: str = "opt-in"  # or "opt-out"
    #: A byte-identical resend of a whole message from the same partner within this many seconds is
    #: answered again (the peer lost our answer); 0 refuses every reuse as a replay.
    replay_resend_window_seconds: int = 120
    #: Resends of one message answered within the window; more are refused as replays.
    replay_max_resends: int = 3
    #: Replay entries (about two per message, kept until the message's Timestamp expires) one partner
    #: may hold; past it that partner alone is refused ("replay quota exceeded").
    replay_partner_quota: int = 200_000
    #: Largest SAML assertion (bytes, exclusive C14N) checked; larger is refused before signature work.
    max_assertion_bytes: int = 64 * 1024
    #: Most SAML attributes an assertion may carry.
    max_saml_attributes: int = 64

    # free-form extras for later modules
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'registry.db'}"

    @property
    def public_url(self) -> str:
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def partners_path(self) -> Path:
        return Path(self.partners_file) if self.partners_file else Path(self.data_dir) / "partners.toml"

    @property
    def keys_dir(self) -> Path:
        return Path(self.data_dir) / "keys"

    @property
    def home_oid(self) -> str:
        """homeCommunityId without the ``urn:oid:`` prefix."""
        return self.home_community_id.removeprefix("urn:oid:")


def _coerce(name: str, current: Any, raw: Any) -> Any:
    """Convert a TOML or environment value to the type of the field's default."""
    if isinstance(current, bool):
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, Path) or name in {"data_dir", "partners_file"}:
        return Path(raw) if raw not in (None, "") else None
    if isinstance(current, list):
        return list(raw) if isinstance(raw, list) else [x.strip() for x in str(raw).split(",") if x.strip()]
    return raw


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, then the TOML file (``[node]`` table or top level), env, overrides."""
    env = dict(os.environ if env is None else env)
    settings = Settings()
    names = {f.name for f in dataclasses.fields(Settings)}
    path = path or env.get("XDS_CONFIG")
    if path:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
        doc = doc.get("node", doc)
        for key, raw in doc.items():
            key = key.replace("-", "_")
            if key in names:
                setattr(settings, key, _coerce(key, getattr(settings, key), raw))
            else:
                settings.extra[key] = raw
    for key in names:
        raw = env.get("XDS_" + key.upper())
        if raw is not None:
            setattr(settings, key, _coerce(key, getattr(settings, key), raw))
    for key, raw in overrides.items():
        if raw is not None:
            setattr(settings, key, raw)
    settings.data_dir = Path(settings.data_dir)
    return settings
