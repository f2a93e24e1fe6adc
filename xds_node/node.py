"""Composition root: builds the actors from settings and wires them to SOAP endpoints.

This is the only module that knows every part of the node. Endpoint paths:

====================  =====================================================
``/xds/registry``     ITI-18 Registry Stored Query, ITI-42 Register Document Set-b
``/xds/repository``   ITI-41 Provide and Register Document Set-b, ITI-43 Retrieve Document Set
====================  =====================================================
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from xds_node import transactions
from xds_node.config import Settings, load_settings
from xds_node.db import make_engine
from xds_node.registry.service import Registry
from xds_node.registry.store import RegistryStore
from xds_node.repository.service import Repository
from xds_node.repository.sources import ContentStore
from xds_node.soap.app import Endpoint, SoapApp
from xds_node.transactions import iti18, iti41, iti42, iti43

log = logging.getLogger("xds_node")

REGISTRY_PATH = "/xds/registry"
REPOSITORY_PATH = "/xds/repository"


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

    def endpoints(self) -> list[Endpoint]:
        wsdl = wsdl_dir()
        return [
            Endpoint(
                REGISTRY_PATH,
                {
                    iti18.ACTION: iti18.make_handler(self.registry),
                    iti42.ACTION: iti42.make_handler(self.registry),
                },
                wsdl=wsdl / "registry.wsdl",
            ),
            Endpoint(
                REPOSITORY_PATH,
                {
                    iti41.ACTION: iti41.make_handler(self.repository, self.registry),
                    iti43.ACTION: iti43.make_handler(self.repository),
                },
                wsdl=wsdl / "repository.wsdl",
            ),
        ]

    def app(self) -> SoapApp:
        return SoapApp(self.endpoints(), max_body_bytes=self.settings.max_body_bytes, on_error=_log_error)

    def endpoint_urls(self) -> dict[str, str]:
        base = self.settings.public_url
        return {"registry (ITI-18, ITI-42)": base + REGISTRY_PATH,
                "repository (ITI-41, ITI-43)": base + REPOSITORY_PATH}

    def folder_indexer(self, folder: Path):
        """An indexer for a source system's folder of C-CDA files (``xds-node load``)."""
        from xds_node.cda import CdaDefaults
        from xds_node.repository.ingest import FolderIndexer
        from xds_node.repository.sources import FolderSource

        return FolderIndexer(self.repository, self.registry, FolderSource(folder),
                             source_id=self.settings.registry_unique_id,
                             defaults=CdaDefaults(repository_unique_id=self.settings.repository_unique_id))

    def close(self) -> None:
        self.engine.dispose()


def _log_error(exc: BaseException, req) -> None:
    log.error("internal error handling %s: %r", getattr(req, "action", "?"), exc, exc_info=exc)


def create_app() -> SoapApp:
    """ASGI factory for ``uvicorn --factory xds_node.node:create_app`` (settings from XDS_* env)."""
    return Node().app()
