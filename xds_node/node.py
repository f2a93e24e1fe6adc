"""Composition root: builds the actors from settings and wires them to SOAP endpoints.

This is the only module that knows every part of the node. Endpoint paths:

====================  =====================================================
``/xds/registry``     ITI-18 Registry Stored Query, ITI-42 Register Document Set-b
``/xds/repository``   ITI-41 Provide and Register Document Set-b, ITI-43 Retrieve Document Set
``/xca/query``        ITI-38 Cross Gateway Query (responding gateway)
``/xca/retrieve``     ITI-39 Cross Gateway Retrieve (responding gateway)
``/xcpd``             ITI-55 Cross Gateway Patient Discovery (responding gateway)
``/ig/registry``      ITI-18 answered across every partner community (initiating gateway)
``/ig/repository``    ITI-43 fetched from partner communities (initiating gateway)
====================  =====================================================

The gateway endpoints require WS-Security with a SAML assertion signed by a pinned partner
(``partners.toml``), check patient consent and audit every call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from xds_node import transactions
from xds_node.audit.store import AuditLog
from xds_node.config import Settings, load_settings
from xds_node.db import make_engine
from xds_node.gateway.responding import Auditor, ConsentCheck, SecurityGate
from xds_node.patients.index import PatientIndex
from xds_node.registry.service import Registry
from xds_node.registry.store import RegistryStore
from xds_node.repository.service import Repository
from xds_node.repository.sources import ContentStore
from xds_node.security.consent import ConsentPolicy, ConsentStore
from xds_node.security.replay import DatabaseReplayStore
from xds_node.security.saml import InboundVerifier, SecurityPolicy
from xds_node.security.trust import TrustStore
from xds_node.soap.app import Endpoint, SoapApp
from xds_node.transactions import ig, iti18, iti38, iti39, iti41, iti42, iti43, iti55

log = logging.getLogger("xds_node")

REGISTRY_PATH = "/xds/registry"
REPOSITORY_PATH = "/xds/repository"
XCA_QUERY_PATH = "/xca/query"
XCA_RETRIEVE_PATH = "/xca/retrieve"
XCPD_PATH = "/xcpd"


def wsdl_dir() -> Path:
    """Where our published WSDLs live: ``XDS_WSDL_DIR`` or the ``wsdl/`` folder of the checkout."""
    env = os.environ.get("XDS_WSDL_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "wsdl"


class Node:
    """All actors of one xds-node process, built from one Settings object."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        self.engine = make_engine(self.settings.db_url)
        transactions.INLINE_DB = self.engine.dialect.name == "sqlite"
        self.registry_store = RegistryStore(self.engine)
        self.registry_store.create_schema()
        self.registry = Registry(
            self.registry_store,
            require_known_patient=self.settings.require_known_patient,
            max_query_results=self.settings.max_query_results,
            home_community_id=self.settings.home_community_id,
        )
        self.content_store = ContentStore(Path(self.settings.data_dir) / "documents")
        self.repository = Repository(self.engine, self.content_store,
                                     repository_unique_id=self.settings.repository_unique_id)
        self.patients = PatientIndex(self.engine)
        self.patients.create_schema()
        self.consent_store = ConsentStore(self.engine)
        self.consent_store.create_schema()
        self.consent = ConsentPolicy(self.consent_store, self.settings.consent_mode)
        self.audit = AuditLog(self.engine, sinks=_audit_sinks(self.settings))
        self.audit.create_schema()
        self.trust = self._load_trust()
        self.replay = DatabaseReplayStore(self.engine, quota=self.settings.replay_partner_quota,
                                          resend_window=self.settings.replay_resend_window_seconds,
                                          max_resends=self.settings.replay_max_resends)
        self.replay.create_schema()
        self.verifier = InboundVerifier(self.trust, SecurityPolicy.from_settings(self.settings),
                                        replay_cache=self.replay)

    def _load_trust(self) -> TrustStore:
        """The partners, followed as the file changes (every worker re-reads it; no restart)."""
        path = self.settings.partners_path
        if path.exists():
            return TrustStore.watching(path)
        log.warning("no partners file at %s: the gateway endpoints will refuse every request "
                    "(create one with `xds-node keys init` or `xds-node partners add`)", path)
        return TrustStore.watching(path)

    def endpoints(self) -> list[Endpoint]:
        wsdl = wsdl_dir()
        settings = self.settings
        home = settings.home_community_id
        if settings.insecure_no_gateway_security:
            log.warning("INSECURE: insecure_no_gateway_security is set; the gateway endpoints answer "
                        "ANY caller without WS-Security/SAML checks. Never use this with real patient data.")
            gate = []
        else:
            gate = [SecurityGate(self.verifier, self.audit, allowed_roles=frozenset(settings.allowed_roles))]
        xds_gate = gate if settings.secure_xds_endpoints else []
        consent = ConsentCheck(self.consent)
        auditor = Auditor(self.audit)
        return [
            Endpoint(
                REGISTRY_PATH,
                {
                    iti18.ACTION: iti18.make_handler(self.registry),
                    iti42.ACTION: iti42.make_handler(self.registry),
                },
                wsdl=wsdl / "registry.wsdl",
                before=list(xds_gate),
            ),
            Endpoint(
                REPOSITORY_PATH,
                {
                    iti41.ACTION: iti41.make_handler(self.repository, self.registry, on_registered=self.index_patient,
                                                     registry_url=settings.registry_url),
                    iti43.ACTION: iti43.make_handler(self.repository),
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
            *ig.endpoints(self, before=list(xds_gate)),
        ]

    def app(self) -> SoapApp:
        return SoapApp(self.endpoints(), max_body_bytes=self.settings.max_body_bytes, on_error=_log_error)

    def endpoint_urls(self) -> dict[str, str]:
        base = self.settings.public_url
        return {"registry (ITI-18, ITI-42)": base + REGISTRY_PATH,
                "repository (ITI-41, ITI-43)": base + REPOSITORY_PATH,
                "XCA query (ITI-38)": base + XCA_QUERY_PATH,
                "XCA retrieve (ITI-39)": base + XCA_RETRIEVE_PATH,
                "XCPD (ITI-55)": base + XCPD_PATH,
                "initiating gateway (ITI-18)": base + ig.IG_REGISTRY_PATH,
                "initiating gateway (ITI-43)": base + ig.IG_REPOSITORY_PATH}

    def folder_indexer(self, folder: Path):
        """An indexer for a source system's folder of C-CDA files (``xds-node load``)."""
        from xds_node.cda import CdaDefaults
        from xds_node.repository.ingest import FolderIndexer
        from xds_node.repository.sources import FolderSource

        return FolderIndexer(self.repository, self.registry, FolderSource(folder),
                             source_id=self.settings.registry_unique_id,
                             defaults=CdaDefaults(repository_unique_id=self.settings.repository_unique_id),
                             on_registered=self.index_patient)

    def index_patient(self, data: bytes, entry, conn=None) -> None:
        """Feed the XCPD patient index from a registered C-CDA's recordTarget, under the same id
        (inside the caller's transaction when ``conn`` is given)."""
        root = (entry.patient_id or "").partition("&")[2].partition("&")[0] or None
        self.patients.add_from_cda(data, source="cda", prefer_root=root, conn=conn)

    def close(self) -> None:
        self.audit.close()
        self.engine.dispose()


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
    """ASGI factory for ``uvicorn --factory xds_node.node:create_app`` (settings from XDS_* env)."""
    app = Node().app()
    tune_gc()
    return app
