"""Composition root: builds the actors from settings and wires them to SOAP endpoints.

This is the only module that knows every part of the node. Endpoint paths:

====================  =====================================================
``/xds/registry``     ITI-18 Registry Stored Query, ITI-42 Register Document Set-b
                      ITI-51 Multi-Patient Stored Query (internal consumers only)
``/xds/repository``   ITI-41 Provide and Register Document Set-b, ITI-43 Retrieve Document Set
``/xca/query``        ITI-38 Cross Gateway Query (responding gateway)
``/xca/retrieve``     ITI-39 Cross Gateway Retrieve (responding gateway)
``/xcpd``             ITI-55 Cross Gateway Patient Discovery (responding gateway)
``/xdr``              ITI-41 pushed by partners (XDR Document Recipient; transactions.xdr)
``/ig/registry``      ITI-18 answered across every partner community (initiating gateway)
``/ig/repository``    ITI-43 fetched from partner communities (initiating gateway)
====================  =====================================================

One access policy (:mod:`xds_node.security.policy`) guards every endpoint: the gateway endpoints
admit only partners (WS-Security with a SAML assertion signed by a pinned partner, ``partners.toml``),
check patient consent and audit every call; ``/xds/*`` and ``/ig/*`` admit only internal clients
(``clients.toml``: pinned TLS client certificate or signed SAML) and, on ``/xds/*`` while
``anonymous_loopback`` is on, anonymous callers from loopback. Every internal read and write is audited.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from xds_node import bookkeeping, migrations, transactions
from xds_node.audit.store import AuditLog
from xds_node.config import Settings, load_settings
from xds_node.db import make_engine, make_read_engine
from xds_node.gateway.responding import Auditor, ConsentCheck, SecurityGate
from xds_node.paths import wsdl_dir
from xds_node.patients.index import PatientIndex
from xds_node.registry.service import Registry
from xds_node.registry.store import RegistryStore
from xds_node.repository.service import Repository
from xds_node.repository.sources import ContentStore
from xds_node.rounds import GroupCommit
from xds_node.security.clients import ClientDirectory
from xds_node.security.consent import ConsentPolicy, ConsentStore
from xds_node.security.policy import GATEWAY, INTERNAL_OR_LOOPBACK, AccessPolicy, describe
from xds_node.security.replay import DatabaseReplayStore
from xds_node.security.saml import InboundVerifier, SecurityPolicy
from xds_node.security.trust import TrustStore
from xds_node.soap.app import Endpoint, SoapApp
from xds_node.soap.limits import app_options
from xds_node.transactions import ig, iti18, iti38, iti39, iti41, iti42, iti43, iti51, iti55, xdr

log = logging.getLogger("xds_node")

REGISTRY_PATH = "/xds/registry"
REPOSITORY_PATH = "/xds/repository"
XCA_QUERY_PATH = "/xca/query"
XCA_RETRIEVE_PATH = "/xca/retrieve"
XCPD_PATH = "/xcpd"


class Node:
    """All actors of one xds-node process, built from one Settings object."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self.engine = make_engine(self.settings.db_url)
        migrations.upgrade(self.engine, auto=self.settings.db_auto_upgrade)  # under a lock: many workers may start
        transactions.INLINE_DB = self.engine.dialect.name == "sqlite"
        #: reads (stored queries, retrieve lookups, consent, patient lookups): autocommit and
        #: read-only on PostgreSQL, never used to write (db.make_read_engine)
        self.reader = make_read_engine(self.engine)
        #: audit trail and replay state: a file of their own on SQLite (Settings.audit_db_url)
        self.audit_engine = self.engine
        if self.settings.audit_db_url != self.settings.db_url:
            self.audit_engine = make_engine(self.settings.audit_db_url)
            migrations.upgrade(self.audit_engine, auto=self.settings.db_auto_upgrade)
            bookkeeping.adopt(self.engine, self.audit_engine)
            bookkeeping.refresh_statistics(self.audit_engine)
        self.registry_store = RegistryStore(self.engine, self.reader)
        self.registry = Registry(
            self.registry_store,
            require_known_patient=self.settings.require_known_patient,
            max_query_results=self.settings.max_query_results,
            home_community_id=self.settings.home_community_id,
        )
        self.content_store = ContentStore(self.settings.document_folder_path)
        self.repository = Repository(self.engine, self.content_store,
                                     repository_unique_id=self.settings.repository_unique_id, reader=self.reader,
                                     documents_in_database=self.settings.documents_in_database)
        self.patients = PatientIndex(self.engine, self.reader)
        self.consent_store = ConsentStore(self.engine, self.reader)
        self.consent = ConsentPolicy(self.consent_store, self.settings.consent_mode)
        self.audit = AuditLog(self.audit_engine, sinks=_audit_sinks(self.settings))
        self.trust = self._load_trust()
        self.replay = DatabaseReplayStore(self.audit_engine, quota=self.settings.replay_partner_quota,
                                          resend_window=self.settings.replay_resend_window_seconds,
                                          max_resends=self.settings.replay_max_resends,
                                          group=self._replay_rounds())
        self.verifier = InboundVerifier(self.trust, SecurityPolicy.from_settings(self.settings),
                                        replay_cache=self.replay)
        self.clients = ClientDirectory(self.settings.clients_path, self.settings.home_community_id)
        # internal clients' assertions share the replay table (entries keyed by the client's name)
        self.client_verifier = InboundVerifier(self.clients, SecurityPolicy.from_settings(self.settings),
                                               replay_cache=self.replay)
        if self.settings.secure_xds_endpoints:
            log.warning("secure_xds_endpoints is deprecated: it now means anonymous_loopback = false "
                        "(internal clients authenticate with clients.toml; see README, Trust model)")
        self.access = AccessPolicy(self.verifier, self.client_verifier,
                                   home_community_id=self.settings.home_community_id,
                                   organization=self.settings.organization_name,
                                   allowed_roles=self.settings.allowed_roles,
                                   anonymous_loopback=self.settings.admits_anonymous_loopback)

    def _load_trust(self) -> TrustStore:
        """The partners, followed as the file changes (every worker re-reads it; no restart)."""
        return TrustStore.watching(self.settings.partners_path)

    def endpoints(self) -> list[Endpoint]:
        wsdl = wsdl_dir()
        settings = self.settings
        home = settings.home_community_id
        if settings.insecure_no_gateway_security:
            log.warning("INSECURE: insecure_no_gateway_security is set; the gateway endpoints answer "
                        "ANY caller without WS-Security/SAML checks. Never use this with real patient data.")
            gate = []
        else:
            gate = [self.gate(GATEWAY)]
        xds_gate = [self.gate(INTERNAL_OR_LOOPBACK)]
        consent = ConsentCheck(self.consent)
        auditor = Auditor(self.audit)
        return [
            Endpoint(
                REGISTRY_PATH,
                {
                    iti18.ACTION: iti18.make_handler(self.registry, audit=auditor),
                    iti42.ACTION: iti42.make_handler(self.registry, audit=auditor),
                    iti51.ACTION: iti51.make_handler(self.registry, audit=auditor),  # internal consumers only
                },
                wsdl=wsdl / "registry.wsdl",
                before=list(xds_gate),
            ),
            Endpoint(
                REPOSITORY_PATH,
                {
                    iti41.ACTION: iti41.make_handler(self.repository, self.registry, on_registered=self.index_patient,
                                                     registry_url=settings.registry_url, audit=auditor),
                    iti43.ACTION: iti43.make_handler(self.repository, registry=self.registry, audit=auditor),
                },
                wsdl=wsdl / "repository.wsdl",
                before=list(xds_gate),
            ),
            Endpoint(
                XCA_QUERY_PATH,
                {iti38.ACTION: iti38.make_handler(self.registry, home=home, consent=consent, audit=auditor)},
                wsdl=wsdl / "xca-responding-gateway.wsdl",
                before=list(gate),
            ),
            Endpoint(
                XCA_RETRIEVE_PATH,
                {iti39.ACTION: iti39.make_handler(self.repository, self.registry, home=home, consent=consent,
                                                  audit=auditor)},
                wsdl=wsdl / "xca-responding-gateway.wsdl",
                before=list(gate),
            ),
            Endpoint(
                XCPD_PATH,
                {iti55.ACTION: iti55.make_handler(self.patients, settings, consent=consent, audit=auditor.iti55)},
                wsdl=wsdl / "xcpd-responding-gateway.wsdl",
                before=list(gate),
            ),
            Endpoint(
                xdr.XDR_PATH,  # partners only, like /xca/*: a push is a partner's write into our records
                dict.fromkeys(xdr.ACTIONS, xdr.make_handler(self.repository, self.registry,
                                                            xdr.Destination.from_settings(settings), audit=auditor,
                                                            registry_url=settings.registry_url)),
                wsdl=wsdl / "xdr.wsdl",
                before=list(gate),
            ),
            *ig.endpoints(self),
        ]

    def _replay_rounds(self) -> GroupCommit:
        """Replay admissions' group commit. On SQLite the audit trail's (one write lock: a round
        holding both takes it once); on PostgreSQL one of their own, so that an admission, which
        a request waits for before its handler runs, commits without waiting for the WAL flush an
        audit row needs (see DatabaseReplayStore)."""
        if self.audit_engine.dialect.name == "sqlite":
            return self.audit.group
        return GroupCommit(self.audit_engine)

    def gate(self, kinds: frozenset[str]) -> SecurityGate:
        """The access-policy hook for an endpoint admitting ``kinds`` (security.policy)."""
        return SecurityGate(self.access, self.audit, kinds=kinds)

    def app(self) -> SoapApp:
        """The ASGI app of a serving process (admin commands build a Node but never this)."""
        if not self.settings.partners_path.exists() and not self.settings.insecure_no_gateway_security:
            log.warning("no partners file at %s: the gateway endpoints will refuse every request "
                        "(create one with `xds-node keys init` or `xds-node partners add`)",
                        self.settings.partners_path)
        from xds_node import metrics, ops

        return SoapApp(metrics.instrument(self.endpoints()), on_error=_log_error, ops=ops.for_node(self),
                       **app_options(self.settings))

    def endpoint_urls(self) -> dict[str, str]:
        base = self.settings.public_url
        return {"registry (ITI-18, ITI-42)": base + REGISTRY_PATH,
                "repository (ITI-41, ITI-43)": base + REPOSITORY_PATH,
                "XCA query (ITI-38)": base + XCA_QUERY_PATH,
                "XCA retrieve (ITI-39)": base + XCA_RETRIEVE_PATH,
                "XCPD (ITI-55)": base + XCPD_PATH,
                "XDR document recipient (ITI-41)": base + xdr.XDR_PATH,
                "initiating gateway (ITI-18)": base + ig.IG_REGISTRY_PATH,
                "initiating gateway (ITI-43)": base + ig.IG_REPOSITORY_PATH}

    def access_lines(self) -> list[str]:
        """Who may call each endpoint, as printed at start (``serve``, ``demo``)."""
        return access_lines(self.settings)

    def folder_indexer(self, folder: Path):
        """An indexer for a source system's folder of C-CDA files (``xds-node load``)."""
        from xds_node.repository.ingest import FolderIndexer
        from xds_node.repository.sources import FolderSource

        return FolderIndexer(self.repository, self.registry, FolderSource(folder),
                             source_id=self.settings.registry_unique_id,
                             defaults=cda_defaults(self.settings),
                             on_registered=self.index_patient)

    def index_patient(self, data: bytes, entry, conn=None, *, source: str = "cda") -> None:
        """Feed the XCPD patient index from a registered C-CDA's recordTarget, under the same id
        (inside the caller's transaction when ``conn`` is given). A recordTarget may add a patient
        but never contradict one: differences are recorded, not applied (``patients show``).
        ``source`` says where the document came from (e.g. ``cda:<internal client>``)."""
        root = (entry.patient_id or "").partition("&")[2].partition("&")[0] or None
        self.patients.add_from_cda(data, source=source, prefer_root=root, conn=conn,
                                   document_unique_id=entry.unique_id or "", entry_uuid=entry.id or "")

    def close(self) -> None:
        self.audit.close()
        if self.reader is not self.engine:
            self.reader.dispose()
        self.engine.dispose()
        if self.audit_engine is not self.engine:
            self.audit_engine.dispose()


def cda_defaults(settings: Settings):
    """What C-CDA ingest fills in from settings (patient id root, facility, practice setting)."""
    from xds_node.cda import CdaDefaults
    from xds_node.ebxml.model import Code

    def coded(value: str) -> Code:
        code, system, display = (p.strip() for p in value.split("^"))
        return Code(code, system, display)

    return CdaDefaults(repository_unique_id=settings.repository_unique_id,
                       patient_id_root=settings.patient_id_root or None,
                       healthcare_facility_type_code=coded(settings.facility_type_code),
                       practice_setting_code=coded(settings.practice_setting_code))


def access_lines(settings: Settings) -> list[str]:
    """Who may call each endpoint under ``settings``: one line per endpoint, for the start banner."""
    from xds_node.security.policy import INTERNAL_ONLY

    gateway = None if settings.insecure_no_gateway_security else GATEWAY
    table = [(REGISTRY_PATH, INTERNAL_OR_LOOPBACK), (REPOSITORY_PATH, INTERNAL_OR_LOOPBACK),
             (XCA_QUERY_PATH, gateway), (XCA_RETRIEVE_PATH, gateway), (XCPD_PATH, gateway), (xdr.XDR_PATH, gateway),
             (ig.IG_REGISTRY_PATH, INTERNAL_ONLY), (ig.IG_REPOSITORY_PATH, INTERNAL_ONLY)]
    anonymous = settings.admits_anonymous_loopback
    return [f"  {path:16} {describe(kinds, anonymous_loopback=anonymous)}" for path, kinds in table]


def _audit_sinks(settings: Settings) -> list:
    """The optional ATNA syslog sink from ``audit_syslog = "tcp://host:port"`` (or ``tls://``)."""
    if not settings.audit_syslog:
        return []
    import ssl
    from urllib.parse import urlsplit

    from xds_node.audit.syslog import SyslogSink

    url = urlsplit(settings.audit_syslog)
    if url.scheme not in ("tcp", "tls") or not url.hostname or not url.port:
        raise ValueError(f"audit_syslog must be tcp://host:port or tls://host:port, not {settings.audit_syslog!r}")
    tls = ssl.create_default_context() if url.scheme == "tls" else None
    return [SyslogSink(url.hostname, url.port, tls=tls)]


def _log_error(exc: BaseException, req) -> None:
    log.error("internal error handling %s: %r", getattr(req, "action", "?"), exc, exc_info=exc)


def tune_gc() -> None:
    """Move startup objects out of the collector's sight and collect young objects less often.

    A request allocates thousands of short-lived objects; with default thresholds the cyclic GC
    runs many times a second and its full passes over a large heap show up as tail latency.
    Reference counting frees almost everything we allocate anyway.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def create_app() -> SoapApp:
    """ASGI factory for ``uvicorn --factory xds_node.node:create_app``.

    ``serve --workers N`` passes its effective settings in XDS_EFFECTIVE_SETTINGS; without it (a
    plain uvicorn command line) settings come from XDS_CONFIG / XDS_* as usual.
    """
    from xds_node.config import EFFECTIVE_ENV, from_effective_json
    from xds_node.logs import setup_logging

    raw = os.environ.get(EFFECTIVE_ENV)
    settings = from_effective_json(raw) if raw else load_settings()
    setup_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    app = Node(settings).app()
    tune_gc()
    return app
