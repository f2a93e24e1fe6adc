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
    #: the per-request bookkeeping (audit trail, replay state); empty: database_url, except that an
    #: SQLite database keeps it in a file of its own beside it (<name>-audit.db), see README Benchmarks
    audit_database_url: str = ""
    #: A content-store temp file or orphan younger than this may belong to a request still running:
    #: `serve` at start and `xds-node fsck --repair` leave it alone.
    store_grace_seconds: int = 3600
    #: Upgrade the database schema at start (under a lock); false: refuse to start on an older schema.
    db_auto_upgrade: bool = True
    #: Where pushed documents' bytes (ITI-41, XDR) are kept: "database" (in the registration's own
    #: transaction; what lets hosts share nothing but the database URL), "folder" (content files in
    #: document_folder) or "auto": database on PostgreSQL, folder on SQLite.
    document_store: str = "auto"
    #: The folder store's directory (relative paths under data_dir); hosts sharing one folder store
    #: must share this folder too. Default: <data_dir>/documents.
    document_folder: Path | None = None

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = ""  # public URL prefix for WSDL soap:address; empty: http://host:port
    workers: int = 1
    max_body_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 256 * 1024  # request line + headers; more -> 431
    # request limits (README "Limits"); per worker process
    max_header_count: int = 100  # header fields in one request; more -> 431
    header_timeout_seconds: int = 10  # to send the request line and headers; then 408 / closed
    keep_alive_timeout_seconds: int = 30  # an idle keep-alive connection is closed after this
    body_idle_timeout_seconds: int = 15  # longest silence while a body arrives; then 408
    body_timeout_seconds: int = 300  # the whole body must arrive within this; then 408
    max_connections: int = 1000  # open connections; past it the longest-idle is closed, else 503
    body_spool_bytes: int = 1024 * 1024  # a body past this is spooled to <data_dir>/tmp, not RAM
    max_inflight_memory_bytes: int = 64 * 1024 * 1024  # bodies held in RAM; past it new bodies spool
    max_inflight_body_bytes: int = 2 * 1024 * 1024 * 1024  # bodies in RAM or spooled; past it 503
    max_xml_elements: int = 200_000  # elements in the SOAP XML; more -> Sender fault
    max_xml_depth: int = 100  # element nesting in the SOAP XML; deeper -> Sender fault
    max_xml_bytes: int = 64 * 1024 * 1024  # the SOAP XML part (MTOM attachments not included)
    #: Host header values (``name`` or ``name:port``) trusted for the WSDL soap:address when
    #: base_url is empty; any other Host gets http://host:port from these settings.
    server_names: list[str] = field(default_factory=list)
    #: OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's, all AEAD); TLS 1.2 is the floor.
    tls_ciphers: str = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5:!DSS:!SHA1"

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
    #: Deprecated alias: true means anonymous_loopback = false (logs a warning).
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

    #: Admit unauthenticated callers on /xds/* when they connect from a loopback address (the demo).
    anonymous_loopback: bool = True
    clients_file: Path | None = None  # internal clients (xds-node clients); default: <data_dir>/clients.toml
    #: Where partners' XDR pushes (/xdr) go: "repository" (registered here, marked as received from
    #: the partner) or a folder path (one directory per submission; relative paths under data_dir).
    xdr_destination: str = "repository"
    #: Folder for limited-metadata XDR pushes while xdr_destination = "repository" (the registry
    #: cannot hold them); empty: <data_dir>/xdr-inbox.
    xdr_inbox: str = ""

    # logs
    log_level: str = "info"  # debug, info, warning, error (`-v` means debug)
    log_format: str = "text"  # text, or json: one JSON object per line for log shippers
    access_log: bool = False  # one line per HTTP request (uvicorn's access log)

    # operations endpoints (/health, /ready, /metrics): loopback always; these networks too
    ops_allow: list[str] = field(default_factory=list)  # CIDRs of monitoring hosts, e.g. ["10.0.0.5/32"]

    # operator web console (xds_node.console): its own listener, never the partner-facing port
    console_enabled: bool = True  # `serve` and `demo` start the console process
    console_host: str = "127.0.0.1"
    console_port: int = 8081
    #: A console session ends after this many minutes without a request ...
    console_session_idle_minutes: int = 30
    #: ... and this many hours after login in any case.
    console_session_max_hours: int = 12
    #: Failed logins for one user name (or from one address, 4x this) within the lockout window
    #: lock further attempts until the window has passed.
    console_login_max_failures: int = 5
    console_lockout_minutes: int = 15
    #: Login through a trusted reverse proxy: the request header naming the (existing) console user,
    #: honoured only from the proxy addresses below (CIDRs); both empty: off.
    console_proxy_user_header: str = ""
    console_proxy_trusted: list[str] = field(default_factory=list)
    #: Largest scanned consent form accepted (bytes).
    console_upload_max_bytes: int = 10 * 1024 * 1024
    #: Host names the console answers to besides loopback and console_host (a name a browser uses
    #: to reach it, e.g. behind a reverse proxy); any other Host header gets a 400 (DNS rebinding)
    console_server_names: list[str] = field(default_factory=list)

    # C-CDA ingest (`xds-node load`): what the document header does not decide
    #: Which recordTarget id root becomes the XDS patient id (the affinity domain's assigning
    #: authority). Empty: the first id that is not a Social Security Number; an SSN never is.
    patient_id_root: str = ""
    #: healthcareFacilityTypeCode / practiceSettingCode when the document has none: CODE^SYSTEM^DISPLAY
    facility_type_code: str = "394777002^2.16.840.1.113883.6.96^Health Encounter Site"
    practice_setting_code: str = "408443003^2.16.840.1.113883.6.96^General medical practice"

    # free-form extras for later modules
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        url = self.database_url or f"sqlite:///{Path(self.data_dir) / 'registry.db'}"
        # the scheme Heroku-style tools and libpq users write; SQLAlchemy wants a dialect+driver
        for plain in ("postgres://", "postgresql://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain):]
        return url

    @property
    def documents_in_database(self) -> bool:
        """Whether pushed documents' bytes go to the database (``document_store``)."""
        if self.document_store == "auto":
            return self.db_url.startswith("postgresql")
        return self.document_store == "database"

    @property
    def document_folder_path(self) -> Path:
        """The folder store's directory (entries written there stay readable whatever the setting)."""
        return Path(self.data_dir) / Path(self.document_folder or "documents").expanduser()  # absolute wins

    @property
    def audit_db_url(self) -> str:
        """Where audit rows and replay entries go. On SQLite a file of its own: every commit to a
        file empties the page cache of every other connection to it, so a write per request in the
        registry's file made each query read its pages anew (FindDocuments cost twice the CPU)."""
        if self.audit_database_url:
            return Settings(database_url=self.audit_database_url).db_url
        main = self.db_url
        if main.startswith("sqlite") and "///" in main:
            path = main.split("///", 1)[1]
            if path and path != ":memory:" and "?" not in path:
                p = Path(path)
                return main.split("///", 1)[0] + "///" + str(p.with_name(p.stem + "-audit" + (p.suffix or ".db")))
        return main

    @property
    def console_hosts(self) -> list[str]:
        """Host header names the console answers to: loopback, its listen address when it is a
        specific one, and ``console_server_names``."""
        names = ["127.0.0.1", "localhost", "::1"]
        if self.console_host not in ("", "0.0.0.0", "::"):
            names.append(self.console_host)
        names += self.console_server_names
        hosts = []
        for name in names:
            name = name.strip().strip("[]").lower()
            hosts.append(f"[{name}]" if ":" in name else name)  # an IPv6 Host header keeps its brackets
        return list(dict.fromkeys(hosts))

    @property
    def public_url(self) -> str:
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def partners_path(self) -> Path:
        return Path(self.partners_file) if self.partners_file else Path(self.data_dir) / "partners.toml"

    @property
    def clients_path(self) -> Path:
        return Path(self.clients_file) if self.clients_file else self.partners_path.with_name("clients.toml")

    @property
    def admits_anonymous_loopback(self) -> bool:
        """anonymous_loopback, unless the deprecated secure_xds_endpoints turned it off."""
        return self.anonymous_loopback and not self.secure_xds_endpoints

    @property
    def keys_dir(self) -> Path:
        return Path(self.data_dir) / "keys"

    @property
    def xdr_folder(self) -> Path | None:
        """The folder partners' XDR pushes are written to, or None for the repository."""
        if self.xdr_destination.strip() == "repository":
            return None
        return Path(self.data_dir) / Path(self.xdr_destination).expanduser()  # absolute paths win

    @property
    def xdr_inbox_path(self) -> Path:
        """Where limited-metadata pushes go while xdr_destination = "repository"."""
        return Path(self.data_dir) / Path(self.xdr_inbox or "xdr-inbox").expanduser()

    @property
    def home_oid(self) -> str:
        """homeCommunityId without the ``urn:oid:`` prefix."""
        return self.home_community_id.removeprefix("urn:oid:")


class ConfigError(ValueError):
    """A setting that cannot be used, named with where it came from (file or variable)."""


#: Keys read from ``settings.extra`` by other modules (the initiating gateway's system user, see
#: transactions/ig.py); anything else not a Settings field is a mistake, most often a misspelling.
EXTRA_KEYS = frozenset({
    "ig_subject_id", "ig_organization", "ig_organization_id", "ig_role", "ig_purpose_of_use", "ig_npi",
    "ig_match_mode", "ig_signing_key", "ig_signing_cert", "ig_tls_verify", "ig_tls_ca_file",
    "ig_tls_client_cert", "ig_tls_client_key", "ig_spool_dir", "ig_max_connections",
})
_PATH_FIELDS = {"data_dir", "partners_file", "clients_file", "document_folder"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: Values that have the right type but cannot work: key -> (test, what is expected).
_RULES: dict[str, tuple[Any, str]] = {
    "port": (lambda v: 0 < v < 65536, "a TCP port, 1-65535"),
    "workers": (lambda v: v >= 1, "at least 1"),
    "audit_database_url": (lambda v: not v or str(v).startswith(("sqlite:", "postgres://", "postgresql")),
                           "empty, an sqlite:/// URL or a postgresql URL"),
    "xdr_destination": (lambda v: bool(str(v).strip()), '"repository" or a folder path'),
    "document_store": (lambda v: v in ("auto", "database", "folder"), "auto, database or folder"),
    "max_body_bytes": (lambda v: v > 0, "a positive number of bytes"),
    "max_header_bytes": (lambda v: v > 0, "a positive number of bytes"),
    "max_query_results": (lambda v: v >= 1, "at least 1"),
    "clock_skew_seconds": (lambda v: 0 <= v <= 3600, "0-3600 seconds"),
    "consent_mode": (lambda v: v in ("opt-in", "opt-out"), "'opt-in' or 'opt-out'"),
    "log_level": (lambda v: v in ("debug", "info", "warning", "error"), "debug, info, warning or error"),
    "log_format": (lambda v: v in ("text", "json"), "text or json"),
    "ops_allow": (lambda v: _are_networks(v), "IP networks in CIDR notation, e.g. [\"10.0.0.5/32\"]"),
    "console_port": (lambda v: 0 < v < 65536, "a TCP port, 1-65535"),
    "console_session_idle_minutes": (lambda v: 1 <= v <= 24 * 60, "1-1440 minutes"),
    "console_session_max_hours": (lambda v: 1 <= v <= 24 * 7, "1-168 hours"),
    "console_login_max_failures": (lambda v: 1 <= v <= 1000, "1-1000"),
    "console_lockout_minutes": (lambda v: 1 <= v <= 24 * 60, "1-1440 minutes"),
    "console_proxy_trusted": (lambda v: _are_networks(v), "IP networks in CIDR notation, e.g. [\"10.0.0.7/32\"]"),
    "console_proxy_user_header": (lambda v: not v or _is_header_name(v), "an HTTP header name such as X-Remote-User"),
    "console_upload_max_bytes": (lambda v: 1024 <= v <= 1 << 30, "1 KiB - 1 GiB"),
    "console_server_names": (lambda v: all(_is_host_pattern(x) for x in v),
                             'host names such as "console.example.org" or "*.example.org" (no port)'),
    "patient_id_root": (lambda v: not v or _is_oid(v), "an OID such as 2.16.840.1.113883.3.42.10001.100001.12"),
    "facility_type_code": (lambda v: _is_coded(v), "CODE^CODESYSTEM-OID^DISPLAY"),
    "practice_setting_code": (lambda v: _is_coded(v), "CODE^CODESYSTEM-OID^DISPLAY"),
}


def _is_oid(value: str) -> bool:
    import re

    return bool(re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", value)) and len(value) <= 64


def _are_networks(values: list[str]) -> bool:
    import ipaddress

    try:
        for value in values:
            ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return False
    return True


def _is_host_pattern(value: str) -> bool:
    """A DNS name or IP address, optionally with a leading ``*.`` (no port, no scheme)."""
    import ipaddress
    import re

    name = value.strip().lower().removeprefix("*.")
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        label = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        return bool(re.fullmatch(rf"(?=.{{1,253}}$){label}(\.{label})*", name))


def _is_header_name(value: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9-]{1,64}", value))


def _is_coded(value: str) -> bool:
    parts = value.split("^")
    return len(parts) == 3 and bool(parts[0].strip()) and _is_oid(parts[1].strip())


def _coerce(name: str, current: Any, raw: Any, where: str) -> Any:
    """Convert a TOML or environment value to the type of the field's default, or say why not."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {name} = {raw!r} is not valid: expected {expected}")

    from_env = isinstance(raw, str) and where.startswith("XDS_")
    if isinstance(current, bool):
        if isinstance(raw, bool):
            return raw
        if from_env and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise bad("true or false")
    if isinstance(current, int):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if from_env and raw.strip().lstrip("-").isdigit():
            return int(raw)
        raise bad("a whole number")
    if isinstance(current, Path) or name in _PATH_FIELDS:
        if raw in (None, ""):
            return None
        if not isinstance(raw, str):
            raise bad("a path")
        return Path(raw)
    if isinstance(current, list):
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            return list(raw)
        if isinstance(raw, str):
            return [x.strip() for x in raw.split(",") if x.strip()]
        raise bad("a list of strings")
    if isinstance(current, str) and not isinstance(raw, str):
        raise bad("a string")
    return raw


def _unknown(key: str, where: str, names: set[str]) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(key, sorted(names | EXTRA_KEYS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown setting {key!r}{hint}")


def _read_file(path: str | Path, names: set[str]) -> dict[str, Any]:
    where = str(path)
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"settings file {where} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {where}: {exc.strerror or exc}") from None
    node = doc.pop("node", {})
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: [node] must be a table")
    merged: dict[str, Any] = {}
    for table in (doc, node):  # keys at top level and under [node] both count
        for key, raw in table.items():
            key = key.replace("-", "_")
            if isinstance(raw, dict):
                raise ConfigError(f"{where}: unknown table [{key}] (settings go at top level or under [node])")
            if key not in names and key not in EXTRA_KEYS:
                raise _unknown(key, where, names)
            if key in merged:
                raise ConfigError(f"{where}: {key} is set twice (at top level and under [node])")
            merged[key] = raw
    return merged


def _check(settings: Settings, sources: dict[str, str]) -> None:
    for name, (ok, expected) in _RULES.items():
        value = getattr(settings, name)
        if not ok(value):
            where = sources.get(name, "default")
            raise ConfigError(f"{where}: {name} = {value!r} is not valid: expected {expected}")
    if bool(settings.console_proxy_user_header) != bool(settings.console_proxy_trusted):
        where = sources.get("console_proxy_user_header") or sources.get("console_proxy_trusted", "default")
        raise ConfigError(f"{where}: console_proxy_user_header and console_proxy_trusted go together "
                          "(the header is honoured only from the proxy addresses named)")


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, then the TOML file (``[node]`` table or top level), env, overrides.

    Every value is checked as it is read: an unknown key (a misspelling would otherwise leave the
    node running on a demo value), a wrong type or an impossible value is a :class:`ConfigError`
    naming the key and the file or variable it came from.
    """
    env = dict(os.environ if env is None else env)
    settings = Settings()
    names = {f.name for f in dataclasses.fields(Settings)} - {"extra"}
    sources: dict[str, str] = {}
    path = path or env.get("XDS_CONFIG")
    if path:
        for key, raw in _read_file(path, names).items():
            if key in names:
                setattr(settings, key, _coerce(key, getattr(Settings(), key), raw, str(path)))
                sources[key] = str(path)
            else:
                settings.extra[key] = raw
    for key in names:
        var = "XDS_" + key.upper()
        raw = env.get(var)
        if raw is not None:
            setattr(settings, key, _coerce(key, getattr(Settings(), key), raw, var))
            sources[key] = var
    for key, raw in overrides.items():
        if raw is not None:
            setattr(settings, key, raw)
            sources[key] = "command line"
    settings.data_dir = Path(settings.data_dir)
    _check(settings, sources)
    return settings


#: Environment variable carrying the complete effective settings from ``serve`` to its workers.
EFFECTIVE_ENV = "XDS_EFFECTIVE_SETTINGS"


def effective_json(settings: Settings) -> str:
    """Every setting as JSON, so worker processes run with exactly what the parent resolved."""
    import json

    data = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
    return json.dumps(data, default=str)


def from_effective_json(text: str) -> Settings:
    """The inverse of :func:`effective_json`."""
    import json

    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: val for k, val in data.items() if k in known})
    for name in _PATH_FIELDS:
        value = getattr(settings, name)
        if value is not None:
            setattr(settings, name, Path(value))
    return settings


def mask_url(url: str) -> str:
    """A database URL fit to print: the password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: print nothing that could be a secret
        return url.split("@", 1)[-1] if "@" in url else url


def require_data_dir(settings: Settings, *, init: bool = False) -> None:
    """Admin commands act on a node that exists: a missing data directory is an error, not a new node.

    Run from the wrong folder, ``./data`` would otherwise be created with an empty registry and
    the command would report success about a database the running node never reads.
    """
    data = Path(settings.data_dir)
    if data.is_dir() or init:
        import sys

        if sys.stderr.isatty():  # say which node a person is acting on; scripts get clean output
            print(f"xds-node: data directory {data.resolve()}", file=sys.stderr)
        return
    raise ConfigError(f"data directory {data.resolve()} does not exist: run where the node's data lives, "
                      f"pass --data-dir DIR or set XDS_DATA_DIR (--init creates a new node there)")
